"""Extraction: store contents, resume, SIGKILL-resume, failures, provenance refusal."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vidattn.cli import main
from vidattn.pipeline.extract import ExtractConfig, run
from vidattn.stores import open_store


def test_store_holds_every_clip(tiny_sample, tiny_store):
    store = open_store(tiny_store)
    man = store.manifest()
    assert sorted(store.video_ids()) == sorted(man.video_id)
    m = store.read("train_wave_00")
    # 16 frames at 25 fps, 128 px full frame -> ceil(16/8) x ceil(128/32)^2 x 1024
    assert m.shape == (2, 4, 4, 1024) and m.dtype == np.float32
    assert np.isfinite(m).all() and m.min() >= 0  # Mixed_5c is post-ReLU
    prov = store.provenance("rgb")
    assert prov["weights"].startswith("deepmind-flax") and len(prov["weights_sha256"]) == 64
    assert prov["preprocessing"] == {"fps": 25.0, "short_side": 128, "crop": None,
                                     "scale": "[-1, 1]"}
    assert len(store.pairs()) == len(man) // 2
    assert store.boxes() is not None and store.classes == ["wave", "walk", "jump", "clap"]


def test_second_run_skips_done_videos(tiny_sample, tiny_store):
    res = run(ExtractConfig(root=str(tiny_sample), store=tiny_store, part_size=4, device="cpu"))
    assert res.n_extracted == 0 and res.n_skipped == res.n_videos == 24 and not res.failures


def _cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vidattn.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_then_resume_gives_identical_arrays(tiny_sample, tmp_path):
    args = ["extract", "--root", str(tiny_sample), "--part-size", "2", "--device", "cpu"]
    ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
    assert _cli([*args, "--store", ref]).wait(timeout=300) == 0

    proc = _cli([*args, "--store", killed])
    index = Path(killed) / "index" / "rgb"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(index.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(list(index.glob("part-*.parquet")))
    assert 2 <= n_done < 12, "the kill must land mid-run"
    # resumed with the decoder at the other priority: scheduling never changes a frame
    assert _cli([*args, "--store", killed, "--decode-priority", "low"]).wait(timeout=300) == 0

    a, b = open_store(ref), open_store(killed)
    assert sorted(a.video_ids()) == sorted(b.video_ids()) and len(a.video_ids()) == 24
    for vid in a.video_ids():
        assert np.array_equal(a.read(vid), b.read(vid, verify=True)), vid
    ia = a.index().sort_values("video_id").reset_index(drop=True)
    ib = b.index().sort_values("video_id").reset_index(drop=True)
    assert ia[["video_id", "part", "offset", "checksum"]].equals(
        ib[["video_id", "part", "offset", "checksum"]]
    )


def test_failed_video_is_recorded_and_the_rest_go_on(tiny_sample, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sample, broken)
    bad = broken / "videos" / "train_jump_01.mp4"
    bad.write_bytes(b"this is not an mp4 file" * 50)
    store = str(tmp_path / "store")
    result = CliRunner().invoke(main, ["extract", "--root", str(broken), "--store", store,
                                       "--part-size", "4", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "train_jump_01.mp4" in result.output
    s = open_store(store)
    idx = s.index("rgb").set_index("video_id")
    assert idx.at["train_jump_01", "status"] == "failed"
    assert "train_jump_01.mp4" in idx.at["train_jump_01", "error"]
    assert "\n" not in idx.at["train_jump_01", "error"]
    assert len(s.video_ids()) == 23
    # a re-run keeps the failure recorded and still exits non-zero; nothing else is redone
    again = run(ExtractConfig(root=str(broken), store=store, part_size=4, device="cpu"))
    assert again.n_extracted == 0 and [v for v, _ in again.failures] == ["train_jump_01"]


def test_append_with_other_weights_is_refused(tiny_sample, tiny_store):
    before = open_store(tiny_store).index()
    result = CliRunner().invoke(main, ["extract", "--root", str(tiny_sample), "--store",
                                       tiny_store, "--i3d-rgb", "random", "--device", "cpu"])
    assert result.exit_code == 1
    assert "refusing to append rgb features with different provenance" in result.output
    assert "weights_sha256" in result.output
    after = open_store(tiny_store).index()
    assert before.equals(after)


@pytest.mark.parametrize("crop", ["full", "96"])
def test_crop_option_changes_map_size(tiny_sample, tmp_path, crop):
    store = str(tmp_path / "s")
    run(ExtractConfig(root=str(tiny_sample), store=store, crop=crop, limit=2, device="cpu"))
    m = open_store(store).read("train_wave_00")
    assert m.shape[1:3] == ((4, 4) if crop == "full" else (3, 3))
    prep = open_store(store).provenance("rgb")["preprocessing"]
    # the resize rule is recorded only where there is a crop for it to make a difference
    assert prep.get("resize") == (None if crop == "full" else "crop region")


def test_a_store_refuses_frames_resized_by_the_other_rule(tiny_sample, tmp_path):
    store = str(tmp_path / "s")
    base = ["extract", "--root", str(tiny_sample), "--store", store, "--crop", "96",
            "--limit", "2", "--device", "cpu"]
    made = CliRunner().invoke(main, [*base, "--resize", "frame"])
    assert made.exit_code == 0, made.output
    # the whole-frame rule records what stores made before the option recorded
    assert "resize" not in open_store(store).provenance("rgb")["preprocessing"]
    before = open_store(store).index()
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 1
    assert "different provenance (preprocessing" in result.output
    assert '"resize": "crop region"' in result.output
    assert open_store(store).index().equals(before)


@pytest.mark.parametrize("bad", ["0", "two", "-3"])
def test_decode_procs_takes_auto_or_a_count(tiny_sample, tmp_path, bad):
    r = CliRunner().invoke(main, ["extract", "--root", str(tiny_sample), "--store",
                                  str(tmp_path / "s"), "--decode-procs", bad])
    assert r.exit_code == 2
    assert f"{bad!r} is neither 'auto' nor a whole number >= 1" in r.output
    assert not (tmp_path / "s").exists()  # refused before anything is written
