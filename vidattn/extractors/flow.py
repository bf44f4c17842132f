"""Dense optical flow between consecutive video frames, and its I3D flow-stream encoding.

``compute_flow`` turns a clip of RGB frames into per-pair flow fields with OpenCV:

* ``"tvl1"`` -- Dual TV-L1 (Zach, Pock & Bischof 2007) with OpenCV's default parameters.
  This is the flow I3D's flow stream was trained on, so it is the default.  It is slow
  (order of a second per 224x224 pair), so frame pairs are spread over worker processes,
  one pair per task so that a costly pair (a scene cut) does not hold up one process.
* ``"dis"`` -- DIS (Kroeger et al. 2016), MEDIUM preset: an opt-in fast approximation,
  two orders of magnitude cheaper but not the distribution I3D was trained on.
* ``"tvl1-torch"`` -- the same TV-L1, re-implemented in PyTorch and batched over frame
  pairs (:mod:`vidattn.extractors.tvl1_torch`); it runs on CPU or CUDA and is the default
  on CUDA.  It agrees with OpenCV's to a mean end-point error of 0.04 px on real video
  (tests and BENCHMARKS.md).

``flow_to_input`` then clips and rescales flow the way Carreira & Zisserman prepared
the Kinetics flow stream: values truncated to [-20, 20] pixels and mapped to [-1, 1],
optionally through the uint8 (JPEG-era) quantisation of the original pipeline.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

import numpy as np

from vidattn.cpus import cpu_budget

if TYPE_CHECKING:
    import cv2

__all__ = ["AVAILABLE_METHODS", "compute_flow", "flow_to_input", "shutdown_workers"]

#: Methods ``compute_flow`` accepts.
AVAILABLE_METHODS: tuple[str, ...] = ("tvl1", "tvl1-torch", "dis")

# The worker processes, kept from one call to the next (an extraction calls once per chunk
# of a clip): (owner pid, workers, pool).  A new worker first re-runs the caller's main
# module: CPython 3.11's forkserver never preloads it (it looks for a "main_path" key that
# spawn's preparation data does not have), so a script that imports torch at its top paid
# about 0.9 s per worker on every call: on 8 TV-L1 pairs, 1.66x on 2 cores instead of 1.90x.
_POOL: tuple[int, int, ProcessPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()
_STOP_AT_EXIT: int | None = None  # the pid that registered shutdown_workers for its exit


def default_method(device: str = "cpu") -> str:
    """TV-L1 either way: OpenCV's on the CPU, the batched PyTorch one on CUDA."""
    return "tvl1-torch" if str(device).startswith("cuda") else "tvl1"


def _check_frames(frames: np.ndarray) -> np.ndarray:
    """Validate a clip and return it as a C-contiguous array.

    frames: (N, H, W, 3) uint8 RGB with N >= 2.
    """
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (N, H, W, 3), got {frames.shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"flow needs at least 2 frames, got N={frames.shape[0]}")
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"frames must have a non-empty image, got {frames.shape}")
    return np.ascontiguousarray(frames)


def _to_gray(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, H, W) uint8 luma (ITU-R BT.601 weights, as OpenCV)."""
    import cv2  # here, not at the top: an RGB-only extraction never loads OpenCV

    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def _make_estimator(method: str) -> cv2.DenseOpticalFlow:
    """A fresh OpenCV dense-flow estimator for ``method`` (one of AVAILABLE_METHODS)."""
    import cv2

    if method == "tvl1":
        # OpenCV's defaults on purpose: tau 0.25, lambda 0.15, theta 0.3, 5 scales,
        # 5 warps, epsilon 0.01 -- the settings common I3D flow-extraction scripts used.
        return cv2.optflow.DualTVL1OpticalFlow_create()
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def _flow_chunk(gray: np.ndarray, method: str) -> np.ndarray:
    """Flow between each consecutive pair of a run of grayscale frames.

    gray: (M, H, W) uint8 with M >= 2. Returns (M - 1, H, W, 2) float32, flow[i] taking
    pixel p of gray[i] to p + flow[i][p] in gray[i + 1]; channel 0 is x, channel 1 is y.
    This is a module-level function so that spawned worker processes can import it.
    """
    estimator = _make_estimator(method)
    m, h, w = gray.shape
    out = np.empty((m - 1, h, w, 2), dtype=np.float32)
    for i in range(m - 1):
        # A fresh None flow each time: without OPTFLOW_USE_INITIAL_FLOW the estimator keeps
        # no state between calls, which is what makes chunked and whole-clip runs agree.
        out[i] = _make_flow(estimator, gray[i], gray[i + 1])
    return out


def _make_flow(estimator: cv2.DenseOpticalFlow, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """(H, W) uint8 prev, next -> (H, W, 2) float32 flow from prev to next."""
    return estimator.calc(prev, nxt, None)


def _flow_here(gray: np.ndarray, method: str, cores: int) -> np.ndarray:
    """:func:`_flow_chunk` in this process.  TV-L1 gets ``cores`` OpenCV threads for the
    call (OpenCV's own default is every core of the machine, which in a dask worker of one
    core's budget oversubscribes the node); DIS keeps OpenCV's setting."""
    if method != "tvl1":
        return _flow_chunk(gray, method)
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(cores)
    try:
        return _flow_chunk(gray, method)
    finally:
        cv2.setNumThreads(before)


def _worker_init() -> None:
    """Per-process setup: one OpenCV thread, since the processes are the parallelism.

    Without this every worker would also start cpu_count() OpenCV threads and the machine
    would be oversubscribed workers-fold.
    """
    import cv2

    cv2.setNumThreads(1)


def _chunk_bounds(n_pairs: int, n_chunks: int) -> list[tuple[int, int]]:
    """Split pair indices [0, n_pairs) into n_chunks contiguous, near-equal [start, stop)."""
    edges = np.linspace(0, n_pairs, n_chunks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _task_bounds(n_pairs: int, n_workers: int, method: str) -> list[tuple[int, int]]:
    """The [start, stop) pair ranges handed to the pool, which gives each to the next free
    process.  TV-L1 pairs differ in cost (on the benchmark clip 0.9-2.1 s of CPU, 6.0 s
    across a scene cut) and each costs far more than sending it, so every pair is its own
    task; with two halves that clip could not run more than 1.35x faster on 2 processes
    (measured, interleaved on 2 idle cores: 1.18x as halves, 1.70x a pair per task).
    DIS pairs take milliseconds, so they go in a few chunks per process."""
    if method == "tvl1":
        return [(i, i + 1) for i in range(n_pairs)]
    return _chunk_bounds(n_pairs, min(n_pairs, 4 * n_workers))


def _resolve_workers(workers: int | None, method: str) -> int:
    """How many processes to use (a call with fewer pairs starts fewer: they start on
    demand)."""
    if workers is None:
        # DIS costs milliseconds a pair, far less than starting a Python process, so it
        # only goes parallel when asked; TV-L1 is slow enough to use every core this
        # process is given (its allocation, its container's quota, a dask worker's one).
        workers = cpu_budget() if method == "tvl1" else 1
    check_workers(workers)
    return workers


def check_workers(workers, name: str = "workers") -> None:
    """Refuse a process count for the OpenCV methods that is not None or an int >= 1
    (ValueError naming ``name``)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {workers!r}")


def _check_method_device(method: str, device: str) -> None:
    """Reject unknown methods and devices a method cannot run on."""
    if method not in AVAILABLE_METHODS:
        raise ValueError(
            f"unknown flow method {method!r}; available methods: {', '.join(AVAILABLE_METHODS)}"
        )
    if method != "tvl1-torch" and str(device) != "cpu":
        raise ValueError(
            f"flow method {method!r} is CPU-only (OpenCV), got device={device!r}; "
            "use 'tvl1-torch' for the same TV-L1 on a GPU"
        )


def compute_flow(
    frames: np.ndarray,
    method: str | None = None,
    device: str = "cpu",
    workers: int | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Dense optical flow between consecutive frames.

    frames: (N, H, W, 3) uint8 RGB, N >= 2. Flow is computed on grayscale frames.
    method: ``"tvl1"`` (OpenCV Dual TV-L1, default parameters), ``"tvl1-torch"`` (the same
        in PyTorch, batched) or ``"dis"`` (OpenCV DIS, MEDIUM preset, the fast opt-in);
        None = :func:`default_method` of ``device``.
    device: ``"cpu"``, or a CUDA device for ``"tvl1-torch"`` (the OpenCV methods are
        CPU-only).
    batch_size: frame pairs per batch for ``"tvl1-torch"``.
    workers: OpenCV methods only: processes to spread frame pairs over. None means
        :func:`vidattn.cpus.cpu_budget` for tvl1 (the cores of this process's affinity and
        container quota, at most ``OMP_NUM_THREADS``: 1 in a vidattn dask worker) and 1
        for dis; 1 runs in this process (tvl1 there on ``workers`` OpenCV threads, as when
        the clip has one pair). The result does not depend on ``workers``.  Workers are
        started with forkserver/spawn, so a script that asks for more than one must guard
        its entry point with ``if __name__ == "__main__":`` (the children re-import the
        main module).  They are kept for the next call (the same count);
        :func:`shutdown_workers` stops them.

    Returns (N - 1, H, W, 2) float32 flow in pixels, channel 0 = x (right), 1 = y (down):
    flow[i] maps frame i to frame i + 1, i.e. frames[i] at p moves to p + flow[i][p] in
    frames[i + 1] (OpenCV's calcOpticalFlow convention, prev = frame i, next = frame i + 1).
    """
    method = default_method(device) if method is None else method
    _check_method_device(method, device)
    frames = _check_frames(frames)
    if method == "tvl1-torch":
        from vidattn.extractors.tvl1_torch import flow_clip

        if min(frames.shape[1:3]) < 16:
            raise ValueError(f"tvl1-torch needs frames of at least 16x16, got {frames.shape}")
        return flow_clip(frames, device=device, batch_size=batch_size)
    gray = _to_gray(frames)
    n_pairs = gray.shape[0] - 1
    n_workers = _resolve_workers(workers, method)
    if min(n_workers, n_pairs) == 1:
        return _flow_here(gray, method, n_workers)

    bounds = _task_bounds(n_pairs, min(n_workers, n_pairs), method)
    # Task [a, b) of pairs needs frames a .. b inclusive: neighbours share one frame.
    # Views, not copies: each is pickled only when the pool sends it.
    tasks = [(_flow_chunk, gray[a : b + 1], method) for a, b in bounds]
    try:
        return _run(n_workers, tasks)
    except BrokenProcessPool:  # a worker died, maybe while the kept pool waited: afresh, once
        return _run(n_workers, tasks)


def _run(n_workers: int, tasks: list[tuple]) -> np.ndarray:
    """``tasks`` (fn, *args) run on the kept pool, results joined in order.  The pool has
    the same count every call, whatever its pairs, so a short last chunk does not restart
    it."""
    futures = []
    try:
        pool = _pool(n_workers)
        futures = [pool.submit(*task) for task in tasks]
        return np.concatenate([f.result() for f in futures], axis=0)
    except BaseException as e:
        for f in futures:  # this call's tasks not started yet are not wanted any more
            f.cancel()
        if isinstance(e, BrokenProcessPool):  # its workers are gone: the next use starts anew
            shutdown_workers(wait=False)
        raise


def _pool(n_workers: int) -> ProcessPoolExecutor:
    """The kept pool of ``n_workers`` processes, started on first use (or again after a
    different count, a broken pool, :func:`shutdown_workers`, or in a forked child, which
    cannot use its parent's)."""
    global _POOL, _STOP_AT_EXIT
    with _POOL_LOCK:
        if _POOL is not None:
            pid, n, pool = _POOL
            if pid == os.getpid() and n == n_workers:
                return pool
            if pid == os.getpid():
                pool.shutdown(wait=False)  # work already queued by another thread finishes
            _POOL = None
        # "spawn"/"forkserver", never "fork": OpenCV keeps a thread pool alive once it has
        # run a parallel loop, and a forked child inherits the pool's locks but none of its
        # threads, so the child's first parallel call can wait forever on a lock no thread
        # will release.  forkserver forks from a clean single-threaded server (cheap); spawn
        # is the portable fallback where forkserver does not exist (Windows, macOS).
        names = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in names else "spawn")
        pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx,
                                   initializer=_worker_init)
        _POOL = (os.getpid(), n_workers, pool)
        if _STOP_AT_EXIT != os.getpid():
            # multiprocessing's exit (at interpreter exit, or at the end of a child process,
            # such as a dask worker, where atexit handlers never run) joins every child
            # process, and an idle worker never told to stop waits forever; finalizers run
            # before that join.  concurrent.futures' own stop runs only at threading's
            # shutdown, which cli.entry's fast exit and a child's exit skip.  Priority
            # above the pool's queues' (10): once closed they would not carry the stop.
            multiprocessing.util.Finalize(None, shutdown_workers, exitpriority=100)
            _STOP_AT_EXIT = os.getpid()
        return pool


def shutdown_workers(wait: bool = True) -> None:
    """Stop the processes ``compute_flow`` keeps for TV-L1, e.g. before a long phase
    without flow; the next call that needs them starts them again.  They also stop when
    this process exits.  Each holds about 50 MB, more where the caller's main module
    imports big packages (it re-runs it: 250 MB with torch).  wait: return only once they
    have exited."""
    global _POOL
    with _POOL_LOCK:
        kept, _POOL = _POOL, None
    if kept is not None and kept[0] == os.getpid():
        kept[2].shutdown(wait=wait)


def flow_to_input(flow: np.ndarray, bound: float = 20.0, quantize: bool = False) -> np.ndarray:
    """Encode flow for an I3D flow stream: clip to +-bound pixels and scale to [-1, 1].

    flow: (N, H, W, 2) float flow in pixels (x, y), as returned by ``compute_flow``.
    bound: truncation in pixels (Carreira & Zisserman used 20).
    quantize: reproduce the uint8 round trip of the original JPEG pipeline,
        ``q = round((clip(f, -b, b) + b) * 255 / (2 b))`` stored as uint8, read back as
        ``q / 127.5 - 1``. Rounding is numpy's (half to even). The step is 2 b / 255
        pixels, and the map is biased: zero flow lands on 127.5, which rounds to 128, so it
        comes back as 128 / 127.5 - 1 = +1/255 ~ +0.0039 rather than 0 (every value is off
        by at most half a step, 0.5 / 127.5).

    Returns (2, N, H, W) float32 in [-1, 1], channel 0 = x, channel 1 = y -- the
    channels-first (C, T, H, W) layout the I3D flow stream takes.
    """
    flow = np.asarray(flow)
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (N, H, W, 2), got {flow.shape}")
    if not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"flow must be a float array, got dtype {flow.dtype}")
    if not (np.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a positive finite number, got {bound!r}")
    b = np.float32(bound)
    clipped = np.clip(flow.astype(np.float32, copy=False), -b, b)
    if quantize:
        q = np.rint((clipped + b) * (np.float32(255.0) / (2 * b))).astype(np.uint8)
        scaled = q.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    else:
        scaled = clipped / b
    # Channels first: (N, H, W, 2) -> (2, N, H, W), contiguous for torch.from_numpy.
    return np.ascontiguousarray(np.moveaxis(scaled, -1, 0), dtype=np.float32)
