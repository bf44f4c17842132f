"""Run directories are safe (a finished run survives, SIGINT keeps the best epoch, one file
mode, write errors name the file) and training says when its data limits what it means."""

from __future__ import annotations

import errno
import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vidattn.cli import main
from vidattn.pipeline.evaluate import EvaluateConfig
from vidattn.pipeline.evaluate import run as evaluate
from vidattn.pipeline.train import TrainConfig, TrainingWarning, run
from vidattn.stores import open_store


def train_cli(store: str, out: Path, head: str = "avgpool", *extra: str):
    return CliRunner().invoke(main, ["train-head", head, "--store", store, "--out", str(out),
                                     "--epochs", "2", "--crop-t", "2", "--device", "cpu",
                                     *extra])


def test_a_finished_run_survives_a_second_train_head(tiny_store, tmp_path):
    out = tmp_path / "run"
    assert train_cli(tiny_store, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = train_cli(tiny_store, out, "actx")
    assert r.exit_code == 1 and "holds a finished avgpool run" in r.output
    assert "--overwrite" in r.output and len(r.output.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = train_cli(tiny_store, out, "actx", "--overwrite")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["head"] == "actx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging left behind
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors too


def test_sigint_keeps_the_best_epoch_so_far(tiny_store, tmp_path, monkeypatch):
    from vidattn.tasks import classify

    calls = []
    real = classify.loss

    def interrupt_third(*args, **kw):  # the tiny store's train split is one batch an epoch
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(classify, "loss", interrupt_third)
    out = tmp_path / "run"
    m = run(TrainConfig(head="actx", store=tiny_store, out=str(out), epochs=6, crop_t=2,
                        device="cpu"))
    assert m["interrupted"] and m["epochs_run"] == 2 and m["selected_epoch"] in (1, 2)
    assert "test" not in m and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["interrupted"] is True
    monkeypatch.setattr(classify, "loss", real)
    summary = evaluate(EvaluateConfig(str(out), device="cpu"))
    assert summary["interrupted"] and 0 <= summary["mAP"] <= 1
    r = CliRunner().invoke(main, ["compare", str(out), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0 and "actx (interrupted)" in r.output


def test_sigint_in_the_first_epoch_writes_nothing(tiny_store, tmp_path, monkeypatch):
    from vidattn.tasks import classify

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(classify, "loss", stop)
    with pytest.raises(KeyboardInterrupt):
        run(TrainConfig(head="avgpool", store=tiny_store, out=str(tmp_path / "run"),
                        epochs=2, device="cpu"))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_names_the_file_and_keeps_the_old_run(tiny_store, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "run"
    assert train_cli(tiny_store, out).exit_code == 0
    before = (out / "model.safetensors").read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    r = train_cli(tiny_store, out, "avgpool", "--overwrite")
    assert r.exit_code == 1
    assert "model.safetensors: disk full" in r.output
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def planted_store(path: Path, train_labels: list[int], test_labels: list[int],
                  val_labels: tuple = ()) -> str:
    """A tiny store written directly: 2 x 2 x 2 maps, 3 classes, no pairs."""
    store = open_store(path, mode="a")
    store.set_classes(["a", "b", "c"])
    rows = [(f"{s}{i}", s, k) for s, labels in (("train", train_labels), ("test", test_labels),
                                                ("val", val_labels))
            for i, k in enumerate(labels)]
    store.write_table("manifest", pd.DataFrame({
        "video_id": [r[0] for r in rows], "path": [f"{r[0]}.mp4" for r in rows],
        "split": [r[1] for r in rows], "labels": [[r[2]] for r in rows], "role": "action",
        "group": [r[0] for r in rows], "start_sec": None, "end_sec": None, "dataset": "p"}))
    rng = np.random.default_rng(0)
    store.write_part("rgb", 0, [{"video_id": r[0], "status": "done", "error": None,
                                 "n_frames": 16, "fps": 25.0} for r in rows],
                     {r[0]: rng.random((2, 2, 2, 1024), np.float32) for r in rows})
    return store.url


def test_training_that_cannot_mean_anything_is_refused(tmp_path):
    url = planted_store(tmp_path / "s", [0, 0, 0, 0], [0, 1])
    with pytest.raises(ValueError, match="train split has 1 class \\(a\\)"):
        run(TrainConfig(head="avgpool", store=url, out=str(tmp_path / "r"), epochs=1,
                        device="cpu"))
    assert not (tmp_path / "r").exists()


def test_limited_data_is_said_and_saved(tmp_path):
    url = planted_store(tmp_path / "s", [0, 1, 0, 1], [0, 1, 2])
    with pytest.warns(TrainingWarning) as caught:
        m = run(TrainConfig(head="actx", store=url, out=str(tmp_path / "r"), epochs=1,
                            crop_t=1, val_fraction=0.0, device="cpu"))
    said = [str(w.message) for w in caught]
    assert m["warnings"] == said and len(said) == 3
    assert "test classes never seen in training: c" in said[0]
    assert "no validation rows" in said[1]
    assert "no train clip has one" in said[2] and "L_c alone" in said[2]
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["warnings"] == said
    r = CliRunner().invoke(main, ["train-head", "avgpool", "--store", url, "--out",
                                  str(tmp_path / "r2"), "--epochs", "1", "--device", "cpu"])
    assert r.exit_code == 0 and "warning: test classes never seen in training: c" in r.output
