"""Distributed extraction: a dask run stores what an in-process run stores, survives a
worker killed mid-part; a hung decoder fails its video only; decoding in a child process
gives the frames of in-process decoding and the child never outlives its consumer."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import stalling_video

from vidattn.cluster import WORKER_CONFIG
from vidattn.pipeline.extract import ExtractConfig, run
from vidattn.pipeline.subdecode import open_subclip
from vidattn.stores import open_store
from vidattn.stores.schema import conform
from vidattn.video import DecodeConfig, VideoDecodeError, open_clip

FAST = {"part_size": 4, "device": "cpu", "i3d_rgb": "random", "short_side": 64}
DECODE = DecodeConfig(short_side=64, crop=None)


@pytest.fixture(scope="module")
def reference(tiny_sample, tmp_path_factory) -> str:
    """The tiny sample extracted in this process.  One torch thread, as in a dask worker
    (its nanny sets OMP_NUM_THREADS=1), so both sum in the same order: equal bit for bit."""
    store = str(tmp_path_factory.mktemp("ref") / "store")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run(ExtractConfig(root=str(tiny_sample), store=store, **FAST))
    finally:
        torch.set_num_threads(before)
    assert res.n_extracted == 24 and not res.failures
    return store


@pytest.fixture(scope="module")
def cluster():
    """A running 2-worker cluster, for runs given its ``scheduler`` address."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(WORKER_CONFIG), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as lc, Client(lc) as c:
        yield c


def assert_same_store(a_url: str, b_url: str) -> None:
    """Same index rows (the index holds no timings) and the same part arrays, byte for byte."""
    a, b = open_store(a_url), open_store(b_url)
    ia, ib = (s.index().sort_values(["stream", "video_id"]).reset_index(drop=True)
              for s in (a, b))
    pd.testing.assert_frame_equal(ia, ib)
    names = sorted(name for name, _ in a.group["features/rgb"].arrays())
    assert names == sorted(name for name, _ in b.group["features/rgb"].arrays())
    assert len(names) == 6
    for name in names:
        x, y = a.group[f"features/rgb/{name}"][:], b.group[f"features/rgb/{name}"][:]
        assert x.shape == y.shape and np.array_equal(x, y), name


def test_distributed_runs_decode_in_a_killable_child_by_default():
    assert ExtractConfig().decode_timeout() is None
    assert ExtractConfig(workers=2).decode_timeout() == 600.0
    assert ExtractConfig(scheduler="tcp://h:8786", decode_timeout_s=5).decode_timeout() == 5
    assert ExtractConfig(decode_timeout_s=5).decode_timeout() == 5  # in-process too
    assert ExtractConfig(workers=3, gpus_per_task=1).cluster_config().gpus_per_task == 1


def test_two_workers_store_what_one_process_stores(tiny_sample, reference, tmp_path, capfd):
    store = str(tmp_path / "store")
    res = run(ExtractConfig(root=str(tiny_sample), store=store, workers=2, **FAST))
    assert res.n_extracted == 24 and res.n_skipped == 0 and not res.failures
    assert "dask dashboard: http://" in capfd.readouterr().err
    assert_same_store(reference, store)


def _die_once(marker: str):
    """A worker plugin (test-only) that patches extraction in each worker so that the first
    worker to reach the second video of a part exits at once, as if OOM-killed.  The
    marker file, created atomically, makes that happen once per test."""
    from distributed import WorkerPlugin

    class DieOnce(WorkerPlugin):
        name = "vidattn-test-die-once"

        def setup(self, worker) -> None:
            from vidattn.pipeline import parts

            self.real, calls = parts.extract_video, []
            real = self.real

            def dying(*args, **kwargs):
                calls.append(args[1])
                if len(calls) == 2:  # one video of this worker's first part is done
                    try:
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        pass
                    else:
                        os._exit(1)
                return real(*args, **kwargs)

            parts.extract_video = dying

        def teardown(self, worker) -> None:
            from vidattn.pipeline import parts

            parts.extract_video = self.real

    return DieOnce()


def test_a_worker_killed_mid_part_is_replaced_and_its_part_redone(
        tiny_sample, reference, cluster, tmp_path):
    marker, store = tmp_path / "killed", str(tmp_path / "store")
    cluster.register_plugin(_die_once(str(marker)))
    try:
        res = run(ExtractConfig(root=str(tiny_sample), store=store,
                                scheduler=cluster.scheduler.address, **FAST))
    finally:
        cluster.unregister_worker_plugin("vidattn-test-die-once")
    assert marker.exists(), "a worker must have died mid-part"
    assert res.n_extracted == 24 and not res.failures
    assert_same_store(reference, store)


def _decoder_children() -> list[str]:
    return [p.name for p in mp.active_children() if p.name == "vidattn-decode"]


def _decoder_children_on(c) -> dict[str, list[str]]:
    """``_decoder_children()`` of every worker.  A nested function, which dask's pickler
    sends by value (one of this test module would have to be importable there)."""

    def probe() -> list[str]:
        import multiprocessing

        return [p.name for p in multiprocessing.active_children()
                if p.name == "vidattn-decode"]

    return c.run(probe)


def test_a_hung_decoder_fails_its_video_and_the_part_is_stored(
        tiny_sample, reference, cluster, tmp_path):
    root = tmp_path / "sample"
    shutil.copytree(tiny_sample, root)
    stalling_video(root / "videos")
    manifest = pq.read_table(root / "manifest.parquet").to_pandas()
    hung = manifest.video_id[1]
    manifest.loc[1, "path"] = "videos/stall.m3u8"
    pq.write_table(conform("manifest", manifest), root / "manifest.parquet")
    store = str(tmp_path / "store")
    t0 = time.monotonic()
    # 3 s: a hang is caught quickly, a busy machine still opens the healthy videos in time
    res = run(ExtractConfig(root=str(root), store=store, limit=4, decode_timeout_s=3,
                            scheduler=cluster.scheduler.address, **FAST))
    assert time.monotonic() - t0 < 60
    assert [v for v, _ in res.failures] == [hung] and res.n_extracted == 3
    error = res.failures[0][1]
    assert "stall.m3u8" in error and "hung" in error and "within 3 s" in error
    s, ref = open_store(store), open_store(reference)
    idx = s.index("rgb").set_index("video_id")
    assert set(idx.part) == {0} and idx.at[hung, "status"] == "failed"
    for vid in manifest.video_id[:4]:
        if vid != hung:
            assert np.array_equal(s.read(vid, verify=True), ref.read(vid)), vid
    # the workers' decoding children are gone, the killed one included
    assert all(not names for names in _decoder_children_on(cluster).values())


def test_subdecode_gives_the_frames_of_in_process_decoding(tiny_sample):
    videos = sorted((tiny_sample / "videos").glob("*.mp4"))[:2]
    for path, segment in zip(videos, [(None, None), (0.2, 0.5)], strict=True):
        with open_clip(path, DECODE, *segment) as clip:
            want = list(clip.chunks(5))
        with open_subclip(path, DECODE, *segment, chunk_frames=5, timeout_s=30) as sub:
            got = list(sub.chunks())
        assert len(got) == len(want) >= 1
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
        assert (sub.fps, sub.backend, sub.src_size) == (clip.fps, clip.backend, clip.src_size)
        assert not sub.process.is_alive() and sub.process.exitcode == 0


def test_subdecode_child_is_killed_when_the_consumer_stops(tiny_sample):
    path = sorted((tiny_sample / "videos").glob("*.mp4"))[0]
    sub = open_subclip(path, DECODE, chunk_frames=2, timeout_s=30, depth=1)
    chunks = sub.chunks()
    assert next(chunks).shape == (2, 64, 64, 3)
    pid = sub.process.pid
    assert sub.process.is_alive()  # 8 chunks, a queue of 1: the child waits to send
    chunks.close()
    assert sub.process.exitcode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_subdecode_kills_a_hung_child_and_relays_errors(tmp_path):
    playlist = stalling_video(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(VideoDecodeError, match=r"stall\.m3u8: decoder hung.*within 1 s"):
        open_subclip(playlist, DECODE, timeout_s=1)
    assert time.monotonic() - t0 < 10 and not _decoder_children()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video\n" * 100)
    with pytest.raises(VideoDecodeError) as e:
        open_subclip(junk, DECODE, timeout_s=30)
    assert str(e.value).startswith(f"{junk}: ") and "\n" not in str(e.value)


def test_workers_keep_one_thread_but_not_dasks_malloc_trim():
    """vidattn's LocalCluster workers: one OpenMP thread each, glibc's own trim threshold
    (dask's 64 KiB one made every map read fault its pages in again), no profiler."""
    import dask

    from vidattn.cluster import ClusterConfig, client, run_tasks

    def environ(_) -> dict:  # a local function: sent by value, run in the worker
        import os

        return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}

    cfg = ClusterConfig(workers=1)
    with client(cfg) as c:
        (_, env), = run_tasks(c, environ, [0], cfg)
        profiled = c.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}
    assert list(profiled.values()) == [False]


def test_subdecode_refuses_clearly_in_a_daemonic_process(tiny_sample, monkeypatch):
    # how a dask worker started with the default config looks to multiprocessing
    monkeypatch.setitem(mp.current_process()._config, "daemon", True)
    path = sorted((tiny_sample / "videos").glob("*.mp4"))[0]
    with pytest.raises(RuntimeError, match="DASK_DISTRIBUTED__WORKER__DAEMON=False"):
        open_subclip(path, DECODE, timeout_s=30)


def test_cli_extracts_on_a_running_scheduler(tiny_sample, reference, cluster, tmp_path):
    """vidattn extract --scheduler ADDR: the CLI options reach the dask path."""
    from click.testing import CliRunner

    from vidattn.cli import main

    store = str(tmp_path / "store")
    r = CliRunner().invoke(main, ["extract", "--root", str(tiny_sample), "--store", store,
                                  "--i3d-rgb", "random", "--short-side", "64", "--device",
                                  "cpu", "--scheduler", cluster.scheduler.address,
                                  "--decode-timeout", "60", "--limit", "4"])
    assert r.exit_code == 0, r.output
    assert "4 extracted now" in r.output
    ref = open_store(reference)
    got = open_store(store)
    for vid in got.video_ids("rgb"):
        np.testing.assert_array_equal(got.read(vid), ref.read(vid))
