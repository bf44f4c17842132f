"""train-head -> evaluate -> explain through the CLI on the tiny store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vidattn.cli import main


@pytest.fixture(scope="module")
def actx_run(tiny_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "actx"
    r = CliRunner().invoke(main, ["train-head", "actx", "--store", tiny_store, "--out", str(out),
                                  "--epochs", "4", "--crop-t", "2", "--device", "cpu",
                                  "-o", "rho=25", "-o", "gamma=8"])
    assert r.exit_code == 0, r.output
    assert "test mAP:" in r.output and "curves:" in r.output
    return out


def test_run_dir_contents(actx_run):
    for name in ("config.json", "model.safetensors", "metrics.json", "curves.png"):
        assert (actx_run / name).is_file(), name
    config = json.loads((actx_run / "config.json").read_text())
    assert config["head_config"]["rho"] == 25.0 and config["head_config"]["gamma"] == 8.0
    metrics = json.loads((actx_run / "metrics.json").read_text())
    assert len(metrics["history"]) == 4 and 1 <= metrics["selected_epoch"] <= 4
    assert {"L_c", "L_s", "L_d"} <= set(metrics["history"][0])
    assert 0.0 <= metrics["test"]["mAP"] <= 1.0 and metrics["test"]["n"] == 4


def test_evaluate_prints_per_class_table(actx_run):
    r = CliRunner().invoke(main, ["evaluate", str(actx_run), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for cls in ("wave", "walk", "jump", "clap"):
        assert f"| {cls} |" in r.output
    saved = json.loads((actx_run / "eval-test.json").read_text())
    metrics = json.loads((actx_run / "metrics.json").read_text())
    assert saved["mAP"] == pytest.approx(metrics["test"]["mAP"])  # same weights, same maps


def test_explain_draws_frames_and_maps(actx_run, tmp_path):
    out = tmp_path / "explain.png"
    r = CliRunner().invoke(main, ["explain", str(actx_run), "test_walk_00", "--out", str(out),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 200
    assert img.std() > 20  # real frames and heat maps, not a blank canvas


def test_train_head_list_and_unknown_option(tiny_store, tmp_path):
    r = CliRunner().invoke(main, ["train-head", "--list"])
    assert r.exit_code == 0 and "actx" in r.output and "avgpool" in r.output
    r = CliRunner().invoke(main, ["train-head", "actx", "--store", tiny_store, "--out",
                                  str(tmp_path / "x"), "-o", "nope=1"])
    assert r.exit_code == 1 and "unknown option 'nope'" in r.output


def test_explain_refuses_head_without_maps(tiny_store, tmp_path):
    out = tmp_path / "avg"
    r = CliRunner().invoke(main, ["train-head", "avgpool", "--store", tiny_store, "--out",
                                  str(out), "--epochs", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["explain", str(out), "test_walk_00"])
    assert r.exit_code == 1 and "no attention maps" in r.output


def test_classify_the_real_clip():
    from conftest import SHARED_DATA

    video = SHARED_DATA / "activitynet_walking_the_dog.mp4"
    if not video.is_file():
        pytest.skip(f"needs the shared ActivityNet clip at {video}")
    r = CliRunner().invoke(main, ["classify", str(video), "--start", "2", "--end", "5",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].endswith("walking the dog")
