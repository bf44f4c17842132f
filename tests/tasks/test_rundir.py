"""The one run-directory reader and the task lookup (run dirs of every vintage open)."""

from __future__ import annotations

import json

import pytest

from vidattn import tasks
from vidattn.errors import one_line
from vidattn.registry import HEADS
from vidattn.tasks.rundir import RunDir

PROTOCOL = ("head_fields", "dataset", "loss", "predict", "summarize", "val_record",
            "selection_key", "run_fields", "evaluate", "format_table", "headline",
            "compare_row", "yardsticks", "explain", "score_check")


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_each_task_module_provides_the_protocol(name):
    task = tasks.get(name)
    assert task.NAME == name
    assert [f for f in PROTOCOL if not callable(getattr(task, f, None))] == []


def test_every_head_declares_a_task():
    from vidattn.registry import head_module

    for name in HEADS:
        assert getattr(head_module(name), "TASK", None) in tasks.TASKS, name
    assert tasks.for_head("actx").NAME == "classify"
    assert tasks.for_head("refatomnet-add").NAME == "refer"
    with pytest.raises(ValueError, match="unknown task"):
        tasks.get("segment")


def test_run_dirs_written_before_tasks_were_recorded_open(tmp_path):
    old_ref = {"head": "refatomnet", "referring": True, "stream": "rgb", "train": {}}
    old_cls = {"head": "w3", "stream": "flow", "train": {"teacher": "runs/w3"}}
    for name, config, task in (("r", old_ref, "refer"), ("c", old_cls, "classify"),
                               ("n", {**old_cls, "task": "classify"}, "classify")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        run = RunDir.open(tmp_path / name)
        assert run.task.NAME == task and run.metrics == {}
    assert RunDir.open(tmp_path / "c").label == "w3 +MFR"
    assert RunDir.open(tmp_path / "r").label == "refatomnet"


def test_bad_run_dirs_give_one_line_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: not a vidattn run directory"):
        RunDir.open(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        RunDir.open(tmp_path)


def test_key_errors_print_without_stray_quotes():
    assert one_line(KeyError("store: video 'x' is not in the manifest")) == (
        "store: video 'x' is not in the manifest")
    assert one_line(KeyError("a"), with_type=True) == "KeyError: a"


def test_probes_find_a_planted_signal_only_where_it_is():
    """The box-oracle probe's pooling reads the cells of the true box: a class signal
    planted there is found; the blind probe, averaging 16 cells, sees it diluted."""
    import numpy as np
    import torch

    from vidattn.data.maps import MemoryMaps
    from vidattn.metrics import auroc
    from vidattn.tasks.yardsticks import fit_probe, pooled

    rng = np.random.default_rng(0)
    n, d = 120, 1024
    y = rng.random(n) < 0.5
    maps, boxes = {}, []
    for i in range(n):
        m = torch.from_numpy(rng.standard_normal((d, 1, 4, 4)).astype(np.float32))
        r, c = int(rng.integers(4)), int(rng.integers(4))
        m[:4, 0, r, c] += 3.0 if y[i] else -3.0  # the signal sits in one cell: the box's
        maps[str(i)] = m
        boxes.append([c / 4 + 0.01, r / 4 + 0.01, (c + 1) / 4 - 0.01, (r + 1) / 4 - 0.01])

    class Rows:  # what pooled() reads of a dataset
        ids = [str(i) for i in range(n)]
        channels = d
    Rows.maps = MemoryMaps(maps)
    Rows.refer = type("R", (), {"boxes": np.array(boxes, np.float32)})
    aucs = {}
    for how in ("blind", "oracle"):
        x = pooled(Rows, how)
        x = (x - x[:80].mean(0)) / (x[:80].std(0) + 1e-6)
        lin = fit_probe(x[:80], y[:80, None].astype(np.float32))
        with torch.no_grad():
            s = lin(torch.from_numpy(x[80:]).float())[:, 0].numpy()
        aucs[how] = auroc(s, y[80:])
    assert aucs["oracle"] > 0.95 and aucs["oracle"] > aucs["blind"] + 0.1, aucs
