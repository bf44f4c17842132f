"""Tests for vidattn.extractors.flow: OpenCV TV-L1 / DIS flow and the I3D flow encoding."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vidattn.extractors.flow import (
    AVAILABLE_METHODS,
    compute_flow,
    flow_to_input,
    shutdown_workers,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
VIDEO = SHARED_DATA / "activitynet_walking_the_dog.mp4"

# Known translation of the synthetic pair: content moves 3 px right and 2 px up.
DX, DY = 3, -2


def _texture(h: int, w: int, sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    """(h, w) uint8 smooth random texture: white noise blurred with a Gaussian in Fourier space.

    Blurring by FFT makes the texture periodic, so np.roll shifts it without a seam and
    every pixel, edges included, has an exact ground-truth displacement.
    """
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    gauss = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * gauss))
    # Stretch to most of the uint8 range: flow needs contrast, not the exact distribution.
    smooth = (smooth - smooth.mean()) / smooth.std()
    return np.clip(128 + 40 * smooth, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shifted_pair() -> np.ndarray:
    """(2, 64, 64, 3) uint8 RGB: frame 1 is frame 0 translated by (DX, DY) pixels."""
    gray = _texture(64, 64)
    # np.roll by +DX along x and +DY along y puts frame0[y, x] at frame1[y + DY, x + DX].
    moved = np.roll(gray, shift=(DY, DX), axis=(0, 1))
    frames = np.stack([gray, moved])
    return np.repeat(frames[..., None], 3, axis=-1)


@pytest.mark.parametrize("method", AVAILABLE_METHODS)
def test_recovers_known_translation(shifted_pair: np.ndarray, method: str) -> None:
    flow = compute_flow(shifted_pair, method=method, workers=1)
    assert flow.shape == (1, 64, 64, 2)
    assert flow.dtype == np.float32
    # Central crop: the pyramid and the regulariser are least reliable at the border.
    core = flow[0, 16:48, 16:48]
    med = np.median(core.reshape(-1, 2), axis=0)
    # Channel 0 is x, channel 1 is y; a swapped or negated convention fails here.
    assert abs(med[0] - DX) < 0.3, med
    assert abs(med[1] - DY) < 0.3, med
    epe = np.linalg.norm(core - np.array([DX, DY], dtype=np.float32), axis=-1).mean()
    assert epe < 0.5, epe


def test_flow_per_pair_and_zero_motion(shifted_pair: np.ndarray) -> None:
    """N frames give N - 1 flows, in order; a repeated frame gives ~zero flow."""
    frames = np.concatenate([shifted_pair, shifted_pair[1:]])  # f0, f1, f1
    flow = compute_flow(frames, method="dis")
    assert flow.shape == (2, 64, 64, 2)
    assert np.median(flow[0, 16:48, 16:48, 0]) == pytest.approx(DX, abs=0.3)
    assert np.abs(flow[1]).max() < 0.1


def test_multiprocess_equals_in_process() -> None:
    """workers=2 (pairs handed to forkserver/spawn processes) is bit-identical to 1."""
    rng = np.random.default_rng(1)
    base = _texture(48, 64, seed=3)
    # Five frames drifting by different random shifts: four one-pair tasks over 2 processes.
    frames = [base]
    for _ in range(4):
        frames.append(np.roll(frames[-1], shift=tuple(rng.integers(-2, 3, size=2)), axis=(0, 1)))
    clip = np.repeat(np.stack(frames)[..., None], 3, axis=-1)
    serial = compute_flow(clip, method="tvl1", workers=1)
    parallel = compute_flow(clip, method="tvl1", workers=2)
    assert parallel.shape == serial.shape == (4, 48, 64, 2)
    assert np.array_equal(parallel, serial)


def test_pool_gets_tvl1_one_pair_at_a_time(monkeypatch) -> None:
    """TV-L1 pairs are separate tasks, so the next free process takes the next pair and a
    slow pair (a scene cut costs ~6x) does not leave the other process idle; DIS, cheap per
    pair, goes in a few chunks per process.  Run here by an inline stand-in for the pool,
    which is kept for the next call with the same count."""
    from concurrent.futures import Future

    import vidattn.extractors.flow as flow_mod

    sent: list = []

    class Inline:
        def __init__(self, max_workers: int, **_) -> None:
            sent.append(("workers", max_workers))

        def submit(self, fn, gray: np.ndarray, method: str) -> Future:
            sent.append(len(gray) - 1)
            done: Future = Future()
            done.set_result(fn(gray, method))
            return done

        def shutdown(self, wait: bool = True) -> None:
            sent.append(("shutdown", wait))

    clip = np.repeat(np.stack([np.roll(_texture(32, 32, seed=4), k, axis=1)
                               for k in range(5)])[..., None], 3, axis=-1)
    serial = compute_flow(clip, method="tvl1", workers=1)
    shutdown_workers()  # a real pool kept by an earlier test
    monkeypatch.setattr(flow_mod, "ProcessPoolExecutor", Inline)
    try:
        assert np.array_equal(compute_flow(clip, method="tvl1", workers=2), serial)
        assert sent == [("workers", 2), 1, 1, 1, 1]
        sent.clear()
        long_clip = np.concatenate([clip] * 5)  # 24 pairs
        assert compute_flow(long_clip, method="dis", workers=2).shape[0] == 24
        assert len(sent) == 8 and sum(sent) == 24  # the same pool: no new one
        sent.clear()
        compute_flow(clip[:3], method="tvl1", workers=3)  # another count: a new pool
        assert sent == [("shutdown", False), ("workers", 3), 1, 1]
    finally:
        shutdown_workers()


def test_tvl1_takes_as_many_processes_as_this_process_has_cores(monkeypatch) -> None:
    """Without ``workers``, TV-L1 uses the process's CPU budget, not the machine's cores: a
    dask worker of vidattn's cluster (OMP_NUM_THREADS=1) computes in its own process, and
    a container's 3-core quota on a 16-core machine gives 3 processes."""
    import vidattn.cpus as cpus
    import vidattn.extractors.flow as flow_mod

    started: list[int] = []

    class Counted:
        def __init__(self, max_workers: int, **_) -> None:
            started.append(max_workers)

        def submit(self, fn, gray: np.ndarray, method: str):
            from concurrent.futures import Future

            done: Future = Future()
            done.set_result(fn(gray, method))
            return done

        def shutdown(self, wait: bool = True) -> None:
            pass

    clip = np.repeat(np.stack([np.roll(_texture(32, 32, seed=5), k, axis=1)
                               for k in range(6)])[..., None], 3, axis=-1)
    serial = compute_flow(clip, method="tvl1", workers=1)
    shutdown_workers()
    monkeypatch.setattr(flow_mod, "ProcessPoolExecutor", Counted)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    import cv2

    threads, chunk = [], flow_mod._flow_chunk
    monkeypatch.setattr(flow_mod, "_flow_chunk",
                        lambda *a: threads.append(cv2.getNumThreads()) or chunk(*a))
    before = cv2.getNumThreads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert np.array_equal(compute_flow(clip, method="tvl1"), serial)
        assert started == []  # in this process: no pool
        assert threads == [1] and cv2.getNumThreads() == before  # one OpenCV thread
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(cpus, "usable_cores", lambda cpu_max=None: 3)  # a quota
        assert np.array_equal(compute_flow(clip, method="tvl1"), serial)
        assert started == [3]
        assert flow_mod._resolve_workers(None, "dis") == 1  # DIS: parallel only when asked
    finally:
        shutdown_workers()


def _worker_pids() -> set[int]:
    import vidattn.extractors.flow as flow_mod

    assert flow_mod._POOL is not None
    return set(flow_mod._POOL[2]._processes)


def test_workers_are_kept_between_calls_and_replaced_when_one_dies() -> None:
    """The second call reuses the first call's processes (a new worker re-runs the
    caller's main module first, ~1 s for a script that imports torch); a worker killed
    between calls costs the next call a new pool, not its result; shutdown_workers ends
    them."""
    import os
    import signal
    import time

    clip = np.repeat(np.stack([np.roll(_texture(32, 32, seed=5), k, axis=0)
                               for k in range(4)])[..., None], 3, axis=-1)
    serial = compute_flow(clip, method="tvl1", workers=1)
    shutdown_workers()
    try:
        assert np.array_equal(compute_flow(clip, method="tvl1", workers=2), serial)
        first = _worker_pids()
        assert np.array_equal(compute_flow(clip, method="tvl1", workers=2), serial)
        assert _worker_pids() == first and len(first) == 2
        os.kill(next(iter(first)), signal.SIGKILL)
        time.sleep(0.2)  # the pool may or may not have noticed: the call copes either way
        assert np.array_equal(compute_flow(clip, method="tvl1", workers=2), serial)
        assert not _worker_pids() & first
    finally:
        kept = _worker_pids()
        shutdown_workers()
    for pid in kept:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_real_video_tvl1_vs_dis() -> None:
    if not VIDEO.is_file():
        pytest.skip(f"sample video not present: {VIDEO}")
    from vidattn.video import DecodeConfig, load_clip

    clip = load_clip(VIDEO, DecodeConfig(short_side=112, crop=112), 2.0, 2.2)
    frames = clip.frames[:3]
    assert frames.shape[0] == 3, frames.shape
    tvl1 = compute_flow(frames, method="tvl1", workers=1)
    dis = compute_flow(frames, method="dis")
    assert tvl1.shape == dis.shape == (2, 112, 112, 2)
    assert np.isfinite(tvl1).all() and np.isfinite(dis).all()
    epe = np.linalg.norm(tvl1 - dis, axis=-1).mean()
    assert np.isfinite(epe)
    # A dog and a person walk through the shot: some pixels must move visibly.
    assert (np.linalg.norm(tvl1, axis=-1) > 0.5).any()
    assert (np.linalg.norm(dis, axis=-1) > 0.5).any()


def test_flow_to_input_scaling_and_clipping() -> None:
    rng = np.random.default_rng(2)
    flow = rng.uniform(-50, 50, size=(3, 8, 10, 2)).astype(np.float32)
    flow[0, 0, 0] = (35.0, -35.0)  # beyond the bound on both sides
    flow[0, 0, 1] = (10.0, -5.0)  # inside: scaled, not clipped
    out = flow_to_input(flow, bound=20.0)
    assert out.shape == (2, 3, 8, 10)
    assert out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert out[:, 0, 0, 0].tolist() == [1.0, -1.0]
    np.testing.assert_allclose(out[:, 0, 0, 1], [0.5, -0.25])
    # Channel 0 is x everywhere, not just at the probes.
    np.testing.assert_allclose(out[0], np.clip(flow[..., 0], -20, 20) / 20, rtol=1e-6)


def test_flow_to_input_quantize_round_trip() -> None:
    rng = np.random.default_rng(4)
    flow = rng.uniform(-30, 30, size=(2, 16, 16, 2)).astype(np.float32)
    flow[0, 0, 0] = (0.0, 0.0)
    exact = flow_to_input(flow, bound=20.0)
    quant = flow_to_input(flow, bound=20.0, quantize=True)
    assert quant.shape == exact.shape and quant.dtype == np.float32
    assert quant.min() >= -1.0 and quant.max() <= 1.0
    assert np.abs(quant - exact).max() <= 1.0 / 127.5 + 1e-6
    # The documented bias: zero flow -> 127.5 -> rounds to 128 -> +1/255.
    np.testing.assert_allclose(quant[:, 0, 0, 0], 128 / 127.5 - 1, atol=1e-6)
    # Every value sits on the 256-level grid of the uint8 pipeline.
    levels = (quant + 1) * 127.5
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)


def test_flow_to_input_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        flow_to_input(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="bound"):
        flow_to_input(np.zeros((2, 4, 4, 2), np.float32), bound=0.0)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((1, 8, 8, 3), np.uint8), "at least 2 frames"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((2, 8, 8), np.uint8), r"\(N, H, W, 3\)"),
    ],
)
def test_compute_flow_rejects_bad_frames(frames: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_flow(frames, method="dis")


def test_compute_flow_rejects_bad_method_and_device(shifted_pair: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown flow method 'farneback'.*tvl1, tvl1-torch, dis"):
        compute_flow(shifted_pair, method="farneback")
    with pytest.raises(ValueError, match="CPU-only"):
        compute_flow(shifted_pair, method="dis", device="cuda")
    with pytest.raises(ValueError, match="CPU-only.*tvl1-torch"):
        compute_flow(shifted_pair, method="tvl1", device="cuda")
    with pytest.raises(ValueError, match="workers"):
        compute_flow(shifted_pair, method="tvl1", workers=0)


def _flow_in_child() -> None:
    clip = np.repeat(np.stack([np.roll(_texture(24, 24, seed=6), k, axis=1)
                               for k in range(3)])[..., None], 3, axis=-1)
    compute_flow(clip, method="tvl1", workers=2)


def test_a_child_process_with_kept_workers_exits() -> None:
    """A process started by multiprocessing (a dask worker, say) ends by joining its own
    children without running atexit handlers: the kept workers must be stopped first, or
    the join waits forever."""
    import multiprocessing as mp

    child = mp.get_context("spawn").Process(target=_flow_in_child)
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
