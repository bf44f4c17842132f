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

