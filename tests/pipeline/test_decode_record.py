"""What extraction records of decoding: the decoder of every video, frames lost to damaged
data (kept when at least 90% remain), files changed since extraction, honest counts, and
version-2 stores read and upgraded in place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA, write_video

from vidattn.cli import main
from vidattn.pipeline.extract import ExtractConfig, run, summary
from vidattn.stores import open_store

CLIP = SHARED_DATA / "activitynet_walking_the_dog.mp4"
FAST = {"dataset": "folder", "i3d_rgb": "random", "short_side": 64, "crop": "64",
        "device": "cpu", "part_size": 2}


def _damage_middle(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:
        f.seek(dst.stat().st_size // 2)
        f.write(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    return dst


@pytest.fixture()
def damaged_root(tmp_path) -> Path:
    if not CLIP.is_file():
        pytest.skip("the shared ActivityNet clip is missing")
    root = tmp_path / "videos"
    _damage_middle(CLIP, root / "middle.mp4")
    write_video(root / "good.mp4", 24)
    return root


def test_damaged_middle_keeps_what_decodes_and_says_so(damaged_root, tmp_path):
    res = run(ExtractConfig(root=str(damaged_root), store=str(tmp_path / "s"), **FAST))
    assert not res.failures and res.n_extracted == 2 and res.n_partial == 1
    assert "(1 with frames lost to damaged data)" in summary(res)
    idx = open_store(tmp_path / "s").index("rgb").set_index("video_id")
    row = idx.loc["middle"]
    assert row.status == "done" and row.n_frames == 350  # 14 s at 25 fps: the axis is whole
    assert 0 < row.frames_lost <= 35  # at least 90% kept
    # decord breaks part way on this file: the whole video was redone with PyAV
    assert row.decoder == "pyav" and idx.loc["good", "frames_lost"] == 0
    assert idx.loc["good", "decoder"] in ("decord", "pyav")


def test_too_much_damage_fails_with_the_counts(tmp_path):
    if not CLIP.is_file():
        pytest.skip("the shared ActivityNet clip is missing")
    root = tmp_path / "videos"
    path = _damage_middle(CLIP, root / "wrecked.mp4")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for at in np.linspace(0.3, 0.9, 30):  # 30 damaged regions: about half the frames lost
        k = int(len(data) * at)
        data[k:k + 20_000] = rng.integers(0, 256, 20_000, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    write_video(root / "good.mp4", 24)
    res = run(ExtractConfig(root=str(root), store=str(tmp_path / "s"), **FAST))
    err = dict(res.failures)["wrecked"]
    assert "lost to damaged data" in err and "--keep-partial" in err and str(path) in err


def test_rotated_video_is_recorded_as_decoded_by_pyav(tmp_path):
    import av

    root = tmp_path / "videos"
    root.mkdir()
    with av.open(str(root / "phone.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(90)
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), 10 * i, np.uint8))
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    write_video(root / "plain.mp4", 24)
    cfg = ExtractConfig(root=str(root), store=str(tmp_path / "s"), **{**FAST, "crop": "full"})
    assert not run(cfg).failures
    s = open_store(tmp_path / "s")
    idx = s.index("rgb").set_index("video_id")
    assert idx.loc["phone", "decoder"] == "pyav"
    # portrait after turning: 64 x 96 stored becomes 96 x 64 shown, so the map is taller
    assert idx.loc["phone", "h"] > idx.loc["phone", "w"]
    assert idx.loc["plain", "h"] < idx.loc["plain", "w"]
    assert s.provenance("rgb")["decoding"]["display_matrix"].startswith("applied")


def test_a_changed_file_is_extracted_again(tmp_path):
    root = tmp_path / "videos"
    for name in ("a", "b", "c"):
        write_video(root / f"{name}.mp4", 24)
    cfg = ExtractConfig(root=str(root), store=str(tmp_path / "s"), **FAST)
    first = run(cfg)
    assert first.n_extracted == 3
    before = open_store(tmp_path / "s").index("rgb").set_index("video_id")
    write_video(root / "b.mp4", 40)  # same name, new content
    again = run(cfg)
    assert any("changed on disk" in n and "b" in n for n in again.notices)
    after = open_store(tmp_path / "s").index("rgb").set_index("video_id")
    assert after.loc["b", "n_frames"] == 40 and before.loc["b", "n_frames"] == 24
    # only b's part is redone (part size 2: a and b share one), c is left alone
    assert again.n_extracted == 2 and again.n_skipped == 1
    assert after.loc["c", "checksum"] == before.loc["c", "checksum"]
    assert not run(cfg).notices  # the stamps now match


def test_summary_counts_each_video_once(tmp_path):
    root = tmp_path / "videos"
    for i in range(6):
        write_video(root / f"ok{i}.mp4", 24)
    (root / "bad0.mp4").write_bytes(b"not a video" * 100)
    (root / "bad1.mp4").write_bytes(b"")
    store = str(tmp_path / "s")
    args = ["extract", "--dataset", "folder", "--root", str(root), "--store", store,
            "--i3d-rgb", "random", "--short-side", "64", "--crop", "64", "--device", "cpu",
            "--part-size", "3"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert "8 planned: 6 extracted now, 0 already done, 2 failed now" in r.output
    r = CliRunner().invoke(main, args)
    assert "8 planned: 0 extracted now, 6 already done, 0 failed now, 2 failed before" in (
        r.output)


def test_a_version_2_store_is_read_and_upgraded(tmp_path):
    root = tmp_path / "videos"
    for name in ("a", "b", "c"):
        write_video(root / f"{name}.mp4", 24)
    store = tmp_path / "s"
    cfg = ExtractConfig(root=str(root), store=str(store), **FAST)
    run(cfg)
    # make it look like a version-2 store: no new index columns, version 2
    for frag in (store / "index" / "rgb").glob("part-*.parquet"):
        table = pq.read_table(frag)
        table = table.drop(["decoder", "frames_lost", "file_size", "file_mtime"])
        pq.write_table(table, frag)
    s = open_store(store, mode="a")
    s.update_attrs({"schema_version": 2})
    old = open_store(store)
    idx = old.index("rgb")
    assert idx.frames_lost.eq(0).all() and idx.decoder.isna().all()
    assert old.read("a").shape[-1] == 1024
    os.utime(root / "a.mp4")  # no stamps recorded: a touch does not redo anything
    res = run(cfg)
    assert res.n_extracted == 0 and res.n_skipped == 3
    assert open_store(store).group.attrs["schema_version"] == 3


def test_frames_lost_come_back_from_a_decoding_child(damaged_root):
    from vidattn.pipeline.subdecode import open_subclip
    from vidattn.video import DecodeConfig

    cfg = DecodeConfig(backend="pyav", fps=25.0, short_side=64, crop=64)
    with open_subclip(damaged_root / "middle.mp4", cfg, chunk_frames=64, timeout_s=60) as clip:
        n = sum(len(c) for c in clip.chunks())
    assert n == 350 and 0 < clip.frames_lost <= 35
