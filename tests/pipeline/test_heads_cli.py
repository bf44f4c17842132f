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


@pytest.fixture(scope="module")
def every_head(tiny_store, tmp_path_factory) -> dict[str, Path]:
    """Every registered head trained for 2 epochs on the tiny store, through the CLI (the
    referring heads need a referring store: tests/pipeline/test_referring_cli.py)."""
    from vidattn import tasks
    from vidattn.registry import HEADS

    root = tmp_path_factory.mktemp("every")
    runs = {}
    for name in (n for n in HEADS if tasks.for_head(n).NAME == "classify"):
        out = root / name
        r = CliRunner().invoke(main, ["train-head", name, "--store", tiny_store, "--out",
                                      str(out), "--epochs", "2", "--crop-t", "2",
                                      "--device", "cpu"])
        assert r.exit_code == 0, (name, r.output)
        runs[name] = out
    return runs


def test_every_head_evaluates_and_explains(every_head, tmp_path):
    from vidattn.tasks.rundir import load_run

    for name, run_dir in every_head.items():
        r = CliRunner().invoke(main, ["evaluate", str(run_dir), "--device", "cpu"])
        assert r.exit_code == 0 and "test mAP:" in r.output, (name, r.output)
        head, _ = load_run(run_dir)
        out = tmp_path / f"{name}.png"
        r = CliRunner().invoke(main, ["explain", str(run_dir), "test_clap_00", "--out",
                                      str(out), "--device", "cpu"])
        if head.map_names:
            assert r.exit_code == 0, (name, r.output)
            assert out.is_file() and out.with_suffix(".gif").is_file()
            saved = json.loads((run_dir / "eval-test.json").read_text())
            assert saved["localization"]["map"] == head.map_names[0]
            assert 0.0 <= saved["localization"]["mass_share"] <= 1.0
        else:
            assert r.exit_code == 1 and "no attention maps" in r.output, name


def test_compare_writes_one_row_per_run(every_head, tmp_path):
    import pandas as pd

    out = tmp_path / "table"
    r = CliRunner().invoke(main, ["compare", *map(str, every_head.values()), "--out", str(out),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out.with_suffix(".csv"))
    assert table.method.tolist() == list(every_head)
    assert table.mAP.between(0, 1).all() and (table.params > 0).all()
    md = out.with_suffix(".md").read_text()
    assert md.count("\n") == len(every_head) + 2 and "| actx | rgb |" in md


def test_late_fusion_averages_two_runs(every_head):
    a, b = every_head["actx"], every_head["avgpool"]
    r = CliRunner().invoke(main, ["evaluate", str(a), str(b), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    fused = json.loads((a / "eval-test-fusion.json").read_text())
    assert fused["head"] == "actx(rgb)+avgpool(rgb)" and 0 <= fused["mAP"] <= 1


def test_mfr_student_mimics_teacher(every_head, tiny_store, tmp_path):
    out = tmp_path / "student"
    r = CliRunner().invoke(main, ["train-head", "w3", "--store", tiny_store, "--out", str(out),
                                  "--epochs", "2", "--crop-t", "2", "--device", "cpu",
                                  "--teacher", str(every_head["w3"])])
    assert r.exit_code == 0, r.output
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert all(h["L_fm"] > 0 for h in history)
    # a teacher of another architecture is refused
    r = CliRunner().invoke(main, ["train-head", "w3", "--store", tiny_store, "--out",
                                  str(tmp_path / "bad"), "--epochs", "1", "--device", "cpu",
                                  "--teacher", str(every_head["cbam"])])
    assert r.exit_code == 1 and "same architecture" in r.output


def test_training_is_reproducible_for_a_seed(tiny_store, tmp_path):
    from vidattn.pipeline.train import TrainConfig, run

    runs = [run(TrainConfig(head="actx", store=tiny_store, out=str(tmp_path / f"r{i}"),
                            epochs=2, crop_t=2, seed=3, device="cpu")) for i in range(2)]
    assert runs[0]["history"] == runs[1]["history"]
    assert runs[0]["test"] == runs[1]["test"]
    other = run(TrainConfig(head="actx", store=tiny_store, out=str(tmp_path / "r2"), epochs=2,
                            crop_t=2, seed=4, device="cpu"))
    assert other["history"] != runs[0]["history"]


def test_variant_config_is_saved_as_used(every_head):
    cfg = json.loads((every_head["actx-nosatt"] / "config.json").read_text())
    assert cfg["head_config"]["use_satt"] is False
    cfg = json.loads((every_head["cbam"] / "config.json").read_text())
    assert cfg["head_config"]["temporal"] is False
