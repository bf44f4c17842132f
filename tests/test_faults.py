"""The fault cases of issue 7 ("never corrupt a store"), end to end, in one place.

Each case sets a fault up, runs extraction (seeded random I3D on the CPU, tiny clips at
``short_side=64``) and checks that the run reports it in one line naming the file and
loses nothing else.  Where each case of the issue is tested:

============================================  ============================================
corrupt file                                  test_a_bad_file_fails_alone[corrupt]; also
                                              tests/pipeline/test_extract.py::
                                              test_failed_video_is_recorded_and_the_rest_go_on
                                              (CLI exit code), tests/test_video.py::
                                              test_bad_files_raise_one_line[garbage]
truncated file                                test_a_bad_file_fails_alone[truncated]; also
                                              tests/test_video.py::test_bad_files_raise_one_line
zero-byte file                                test_a_bad_file_fails_alone[empty]; idem
file with no video stream (audio only)        test_a_bad_file_fails_alone[audio_only]; idem
clip shorter than the I3D window (1-3 frames) test_a_clip_of_a_few_frames_is_padded_to_one_step;
                                              the rule: tests/extractors/test_windowed.py::
                                              test_padding_rule_for_short_clips
variable frame rate                           test_a_variable_frame_rate_clip_is_stored; frame
                                              selection: tests/test_video.py::
                                              test_variable_frame_rate
very large resolution under a memory cap     test_a_4k_clip_is_extracted_under_a_memory_cap
NaN/Inf in features                           test_nan_features_are_rejected_never_stored;
                                              tests/stores/test_store.py::
                                              test_write_part_refuses_nan_and_writes_nothing
checksum mismatch on read                     test_corrupt_stored_bytes_raise_checksum_error;
                                              tests/stores/test_store.py::test_verify_detects_*,
                                              test_undecodable_stored_bytes_raise_checksum_*
changed extractor version                     test_a_changed_extractor_version_redoes_every_part;
                                              tests/stores/test_store.py::
                                              test_changed_extractor_version_invalidates_*
crash between store write and index write     test_a_crash_between_array_and_fragment_is_redone;
                                              tests/pipeline/test_extract.py::
                                              test_sigkill_then_resume_gives_identical_arrays
two runs at once                              test_two_runs_at_once_store_each_video_once;
                                              locks: tests/stores/test_store.py::
                                              test_write_part_waits_for_the_part_lock_*,
                                              test_a_stale_lock_is_broken, ...
disk full                                     test_disk_full_stops_the_run_cleanly_and_resumes;
                                              tests/stores/test_store.py::test_disk_full_*
hung decoder (timeout path)                   tests/pipeline/test_distributed.py; the decord
                                              guard: tests/test_video.py::test_decord_hang_*
worker killed mid-part                        tests/pipeline/test_distributed.py
empty detection set                           tests/pipeline/test_referring_cli.py::
                                              test_plain_sample_boxes_come_from_the_track
                                              (stored as padding); the head on all-masked
                                              rows: tests/heads/test_conformance.py and
                                              tests/heads/test_refatomnet.py
============================================  ============================================
"""

from __future__ import annotations

import contextlib
import errno
import math
import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import write_video

from vidattn.pipeline.extract import ExtractConfig, run
from vidattn.stores import ChecksumError, StoreError, open_store
from vidattn.stores.zarr_store import StoreNotice

# Seeded random weights and 64 px frames: fast on two CPU cores, the same in every process.
FAST = {"i3d_rgb": "random", "short_side": 64, "device": "cpu", "part_size": 4}
INDEX_COLS = ["video_id", "part", "offset", "t", "h", "w", "status", "checksum"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: tiny convolutions run fastest so, and idle OpenMP threads
    spinning on a busy machine would otherwise multiply the CPU time several times."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _lock_files(store: str | Path) -> list[Path]:
    return [p for p in (Path(store) / "locks").rglob("*") if p.is_file()]


def _assert_same_store(ref: str, got: str) -> None:
    """``got`` holds exactly ``ref``'s rows, plan and maps, each once, checksums valid."""
    a, b = open_store(ref), open_store(got)
    ib = b.index("rgb")
    assert not ib.video_id.duplicated().any(), "a video stored twice"
    ia = a.index("rgb").sort_values("video_id").reset_index(drop=True)
    ib = ib.sort_values("video_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(ia[INDEX_COLS], ib[INDEX_COLS])
    pd.testing.assert_frame_equal(a.plan(), b.plan())
    for vid in a.video_ids():
        np.testing.assert_array_equal(a.read(vid), b.read(vid, verify=True), err_msg=vid)
    assert _lock_files(got) == []


@pytest.fixture(scope="module")
def ref_store(tiny_sample, tmp_path_factory) -> str:
    """The tiny sample (24 clips, 6 parts of 4) extracted by one uninterrupted run."""
    store = str(tmp_path_factory.mktemp("faults") / "ref")
    res = run(ExtractConfig(root=str(tiny_sample), store=store, **FAST))
    assert res.n_extracted == 24 and not res.failures
    return store


# --------------------------------------------------------- bad inputs, one run for all
def _audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


VFR_MS = [40 if k % 2 == 0 else 80 for k in range(30)]  # how long each frame is shown


def _vfr(path: Path) -> None:
    """Frames alternately on screen for 40 and 80 ms: 1.8 s, 30 frames."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(np.cumsum([0, *VFR_MS[:-1]])):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * k, np.uint8))
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


# file -> what its one-line error must say besides the file's name
BAD = {"corrupt.mp4": "decode", "truncated.mp4": "", "empty.mp4": "empty",
       "audio_only.mp4": "no video stream"}
GOOD = ("good_a.mp4", "good_b.mp4")
SHORT = {"short_1.mp4": 1, "short_2.mp4": 2, "short_3.mp4": 3}


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    """One run over a folder holding every kind of bad input beside good clips; the
    extractor emits NaN for ``nan_clip``.  Returns (root, store, ExtractResult)."""
    import vidattn.pipeline.parts as parts

    root = tmp_path_factory.mktemp("faulty")
    write_video(root / "good_a.mp4", 16)
    write_video(root / "good_b.mp4", 24)
    write_video(root / "nan_clip.mp4", 16)
    for name, n in SHORT.items():
        write_video(root / name, n)
    rng = np.random.default_rng(0)
    (root / "corrupt.mp4").write_bytes(rng.integers(0, 256, 8192, np.uint8).tobytes())
    write_video(root / "whole.mp4", 24)
    (root / "truncated.mp4").write_bytes((root / "whole.mp4").read_bytes()[:-400])
    (root / "whole.mp4").unlink()  # the moov atom is at the end: cut, nothing decodes
    (root / "empty.mp4").write_bytes(b"")
    _audio_only(root / "audio_only.mp4")
    _vfr(root / "vfr.mkv")

    real = parts.extract_video

    def nan_for_one(extractor, path, *args, **kwargs):
        got, out = real(extractor, path, *args, **kwargs)
        if Path(path).stem == "nan_clip":
            out = {name: np.full_like(fmap, np.nan) for name, fmap in out.items()}
        return got, out

    store = str(tmp_path_factory.mktemp("stores") / "faulty")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parts, "extract_video", nan_for_one)
        res = run(ExtractConfig(dataset="folder", root=str(root), store=store, crop="full",
                                **FAST))
    return root, store, res


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_file_fails_alone(fault_run, name):
    root, store, res = fault_run
    vid = Path(name).stem
    errors = dict(res.failures)
    assert vid in errors, res.failures
    msg = errors[vid]
    assert str(root / name) in msg and "\n" not in msg and BAD[name] in msg
    row = open_store(store).index("rgb").set_index("video_id").loc[vid]
    assert row.status == "failed" and row.error == msg and row.offset == -1
    with pytest.raises(KeyError, match=vid):
        open_store(store).read(vid)


def test_nothing_else_is_lost(fault_run):
    _, store, res = fault_run
    s = open_store(store)
    failed = sorted(v for v, _ in res.failures)
    assert failed == sorted([Path(n).stem for n in BAD] + ["nan_clip"])
    stored = sorted(s.video_ids())
    assert stored == sorted([Path(n).stem for n in (*GOOD, *SHORT)] + ["vfr"])
    assert len(s.index("rgb")) == len(failed) + len(stored)  # one row each, every part done
    for vid in stored:
        m = s.read(vid, verify=True)
        assert np.isfinite(m).all() and m.shape[-1] == 1024
    assert _lock_files(store) == []


def test_nan_features_are_rejected_never_stored(fault_run):
    root, store, res = fault_run
    msg = dict(res.failures)["nan_clip"]
    assert str(root / "nan_clip.mp4") in msg and "NaN or Inf" in msg and "\n" not in msg
    row = open_store(store).index("rgb").set_index("video_id").loc["nan_clip"]
    assert row.status == "failed" and row.t == 0 and pd.isna(row.checksum)


@pytest.mark.parametrize("name", list(SHORT))
def test_a_clip_of_a_few_frames_is_padded_to_one_step(fault_run, name):
    _, store, _ = fault_run
    vid = Path(name).stem
    row = open_store(store).index("rgb").set_index("video_id").loc[vid]
    assert row.status == "done" and row.n_frames == SHORT[name]  # frames as decoded
    m = open_store(store).read(vid, verify=True)
    assert m.shape[0] == 1 and m.shape[1:] == (2, 3, 1024)  # 64 x 85 px -> 2 x 3


def test_a_variable_frame_rate_clip_is_stored(fault_run):
    _, store, _ = fault_run
    row = open_store(store).index("rgb").set_index("video_id").loc["vfr"]
    # 1.8 s at 25 fps is 45 frames; reading the 30 frames as constant-rate would give 30
    assert row.status == "done" and abs(int(row.n_frames) - 45) <= 1, row.n_frames
    assert open_store(store).read("vfr", verify=True).shape[0] == math.ceil(row.n_frames / 8)


# --------------------------------------------------------------- a 4K clip, memory cap
CAP_SCRIPT = """
import dataclasses, resource, sys
import numpy as np, torch
import vidattn.pipeline.extract as extract
import av, cv2, pyarrow.parquet, vidattn.video, vidattn.extractors.flow  # loaded before the cap

budget = int(sys.argv[3]) * 2**20
real = extract.decode_config
# PyAV, the streaming decoder: decord reads 32 source frames per batch (see the report)
extract.decode_config = lambda cfg, name: dataclasses.replace(real(cfg, name), backend="pyav")
torch.set_num_threads(1)
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + budget, vm + budget))
try:
    np.empty((int(sys.argv[4]), 2160, 3840, 3), np.uint8)
    sys.exit("the cap would hold the whole clip: it proves nothing")
except MemoryError:
    pass
res = extract.run(extract.ExtractConfig(dataset="folder", root=sys.argv[1], store=sys.argv[2],
                                        crop="full", i3d_rgb="random", short_side=64,
                                        device="cpu", part_size=4))
print("failures", res.failures, "extracted", res.n_extracted)
"""


def test_a_4k_clip_is_extracted_under_a_memory_cap(tmp_path):
    n = 32  # 32 frames of 3840 x 2160 RGB are 760 MiB, above the cap's 500 MiB
    root = tmp_path / "uhd"
    root.mkdir()
    y, x = np.mgrid[0:2160, 0:3840]
    base = ((x // 16 + y // 16) % 256).astype(np.uint8)
    with av.open(str(root / "uhd.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25),
                                options={"preset": "ultrafast", "threads": "2"})
        stream.width, stream.height, stream.pix_fmt = 3840, 2160, "yuv420p"
        for i in range(n):
            img = np.repeat(np.roll(base, 8 * i, axis=1)[..., None], 3, axis=2)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    write_video(root / "small.mp4", 16)
    store = tmp_path / "store"
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CAP_SCRIPT, str(root), str(store), "500",
                           str(n)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failures [] extracted 2" in proc.stdout, proc.stdout
    s = open_store(store)
    assert sorted(s.video_ids()) == ["small", "uhd"]
    row = s.index("rgb").set_index("video_id").loc["uhd"]
    assert row.n_frames == n and row.w > row.h  # 64 x 114 px -> 2 x 4
    assert s.read("uhd", verify=True).shape == (4, 2, 4, 1024)


# ---------------------------------------------------------------- stored bytes corrupt
@pytest.mark.parametrize("how", ["values", "bytes"])
def test_corrupt_stored_bytes_raise_checksum_error(ref_store, tmp_path, how):
    store = tmp_path / "copy"
    shutil.copytree(ref_store, store)
    idx = open_store(store).index("rgb")
    part1 = idx[idx.part == 1].sort_values("offset")
    victim = part1.iloc[-1]  # the last video of part 1
    if how == "values":  # valid zstd, other numbers: only the checksum can tell
        arr = zarr.open_array(str(store / "features" / "rgb" / "part-00001"), mode="r+")
        arr[victim.offset + 1, 5] = arr[victim.offset + 1, 5] + np.float16(1.0)
    else:  # a flipped byte in the compressed shard
        shard = store / "features" / "rgb" / "part-00001" / "c" / "0" / "0"
        raw = bytearray(shard.read_bytes())
        raw[len(raw) - 40] ^= 0xFF
        shard.write_bytes(bytes(raw))
    s = open_store(store)
    with pytest.raises(ChecksumError, match=f"'{victim.video_id}'") as err:
        s.read(victim.video_id, verify=True)
    assert "\n" not in str(err.value) and str(store) in str(err.value)
    for vid in idx.loc[idx.part != 1, "video_id"]:  # the other parts read as before
        np.testing.assert_array_equal(s.read(vid, verify=True), open_store(ref_store).read(vid))
    if how == "values":  # the other videos of the same part are intact too
        for vid in part1.video_id.iloc[:-1]:
            s.read(vid, verify=True)


# ---------------------------------------------------------- changed extractor version
def test_a_changed_extractor_version_redoes_every_part(tiny_sample, ref_store, tmp_path):
    store = str(tmp_path / "copy")
    shutil.copytree(ref_store, store)
    group = zarr.open_group(store, mode="a")
    prov = dict(group.attrs["provenance"])
    current = prov["rgb"]["extractor_version"]
    prov["rgb"] = {**prov["rgb"], "extractor_version": current - 1}  # an older extractor
    group.attrs["provenance"] = prov
    with pytest.warns(StoreNotice, match=r"extractor_version .*: 6 part\(s\) invalidated"):
        res = run(ExtractConfig(root=str(tiny_sample), store=store, **FAST))
    assert res.n_extracted == 24 and res.n_skipped == 0 and not res.failures
    assert open_store(store).provenance("rgb")["extractor_version"] == current
    _assert_same_store(ref_store, store)
    again = run(ExtractConfig(root=str(tiny_sample), store=store, **FAST))
    assert again.n_extracted == 0 and again.n_skipped == 24


# ------------------------------------------------------------ processes (spawned fresh)
def _extract_in_child(cfg: dict, barrier=None, die_before_fragment: int | None = None,
                      writes=None, computed=None) -> None:
    """Run extraction in a spawned process; optionally die like a SIGKILL (no cleanup)
    right after part ``die_before_fragment``'s array is written, before its fragment;
    ``writes``: a queue told (part, whether write_part wrote it) for every part;
    ``computed``: a queue told ("video", path) for every video decoded and run through
    the network, and ("result", n_extracted, n_skipped, n_videos) at the end."""
    import torch

    from vidattn.pipeline import parts
    from vidattn.stores.zarr_store import FeatureStore

    if computed is not None:
        real = parts.extract_video

        def counting(extractor, path, *args, **kwargs):
            computed.put(("video", str(path)))
            return real(extractor, path, *args, **kwargs)

        parts.extract_video = counting

    torch.set_num_threads(1)  # as in this process: see _one_thread
    if writes is not None:
        write_part = FeatureStore.write_part

        def reporting(self, stream, part, *args, **kwargs):
            wrote = write_part(self, stream, part, *args, **kwargs)
            writes.put((part, wrote))
            return wrote

        FeatureStore.write_part = reporting
    if die_before_fragment is not None:
        write_table = FeatureStore._write_table
        fragment = f"index/rgb/part-{die_before_fragment:05d}.parquet"

        def die_at_fragment(self, rel, table):
            if rel == fragment:
                os._exit(3)
            write_table(self, rel, table)

        FeatureStore._write_table = die_at_fragment
    if barrier is not None:
        barrier.wait(120)  # both runs start together: plan, claim and parts all race
    res = run(ExtractConfig(**cfg))
    if computed is not None:
        computed.put(("result", res.n_extracted, res.n_skipped, res.n_videos))


def test_a_crash_between_array_and_fragment_is_redone(tiny_sample, ref_store, tmp_path):
    store = tmp_path / "crashed"
    cfg = {"root": str(tiny_sample), "store": str(store), **FAST}
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_extract_in_child, args=(cfg, None, 2))
    proc.start()
    proc.join(300)
    assert proc.exitcode == 3
    # the array of part 2 is there, its fragment is not, its lock is left by a dead pid
    assert (store / "features" / "rgb" / "part-00002" / "c" / "0" / "0").is_file()
    assert open_store(store).done_parts("rgb") == {0, 1}
    assert sorted(p.name for p in _lock_files(store)) == ["part-00002.claim", "part-00002.lock"]
    res = run(ExtractConfig(**cfg))
    assert res.n_skipped == 8 and res.n_extracted == 16 and not res.failures
    _assert_same_store(ref_store, str(store))


def test_two_runs_at_once_store_each_video_once(tiny_sample, ref_store, tmp_path):
    store = tmp_path / "shared"
    cfg = {"root": str(tiny_sample), "store": str(store), **FAST}
    ctx = multiprocessing.get_context("spawn")
    barrier, writes, computed = ctx.Barrier(2), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_extract_in_child, args=(cfg, barrier, None, writes, computed))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    reports, told = [], []
    with contextlib.suppress(queue.Empty):
        while True:
            reports.append(writes.get(timeout=2))
    with contextlib.suppress(queue.Empty):
        while True:
            told.append(computed.get(timeout=2))
    # each part written by exactly one run, and computed by one run only: parts are
    # claimed before they are computed, so the two runs share the work
    assert sorted(part for part, wrote in reports if wrote) == list(range(6))
    videos = [m[1] for m in told if m[0] == "video"]
    assert len(videos) == len(set(videos)) == 24
    results = [m[1:] for m in told if m[0] == "result"]
    # each run's summary counts what it wrote; together, every video once
    assert len(results) == 2 and sum(r[0] for r in results) == 24
    assert all(r[0] + r[1] == r[2] == 24 for r in results)
    idx = open_store(store).index("rgb")
    assert len(idx) == 24 and idx.video_id.is_unique
    assert sorted(idx.video_id) == sorted(open_store(ref_store).index("rgb").video_id)
    _assert_same_store(ref_store, str(store))


# ---------------------------------------------------------------------------- disk full
def test_disk_full_stops_the_run_cleanly_and_resumes(tiny_sample, ref_store, tmp_path,
                                                     monkeypatch):
    import zarr.storage._local as zarr_local

    store = tmp_path / "full"
    cfg = ExtractConfig(root=str(tiny_sample), store=str(store), **FAST)
    put, hits = zarr_local._put, []

    def full_once(path, *args, **kwargs):  # zarr's lowest write: one shard file per part
        if not hits and "rgb/part-00003/c" in str(path):
            hits.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return put(path, *args, **kwargs)

    monkeypatch.setattr(zarr_local, "_put", full_once)
    with pytest.raises(StoreError) as err:
        run(cfg)
    msg = str(err.value)
    assert len(hits) == 1 and "\n" not in msg
    assert msg.startswith(str(store)) and "disk full" in msg and "rgb part 00003" in msg
    s = open_store(store)
    assert s.done_parts("rgb") == {0, 1, 2}
    assert not (store / "features" / "rgb" / "part-00003").exists()
    assert _lock_files(store) == [] and not list(store.rglob("*.tmp-*"))
    res = run(cfg)  # space freed: the run picks up at part 3
    assert res.n_skipped == 12 and res.n_extracted == 12
    _assert_same_store(ref_store, str(store))
