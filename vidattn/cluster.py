"""Dask clusters for extraction and re-scoring: a LocalCluster of N workers, or a scheduler
that already runs (``tcp://HOST:PORT``; SLURM via dask-jobqueue starts one).

Tasks are submitted with a bound on how many are in flight (the scheduler never holds the
whole archive's task graph), retried when a worker dies, and tagged ``resources={"GPU": n}``
when asked, so a GPU worker runs one task at a time.  Models are built once per worker
process (:func:`worker_cached`), not once per task.

Worker processes are started non-daemonic (:data:`WORKER_CONFIG`): a task may start
processes of its own (a video decoded in a killable child, OpenCV's TV-L1 pool), which
multiprocessing forbids a daemonic process.  Workers of an existing cluster need the same
setting where they are started: ``DASK_DISTRIBUTED__WORKER__DAEMON=False``, and run faster
without dask's ``MALLOC_TRIM_THRESHOLD_`` (see :data:`WORKER_CONFIG`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_CACHE: dict[Any, Any] = {}  # per process: each dask worker process has its own

# dask config under which LocalCluster workers are started (and restarted by their nanny).
# dask's nanny also sets MALLOC_TRIM_THRESHOLD_=65536 in each worker; glibc then hands every
# freed buffer over 128 KiB back to the kernel, and each map read or cast faults its pages in
# afresh: re-scoring read maps 2.5x slower in a worker than in this process (cProfile in a
# worker).  The statistical profiler is off too: its 10 ms stack samples take the GIL from
# the task.  The thread limits stay: one worker a core.
WORKER_CONFIG = {
    "distributed.worker.daemon": False,
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ": {
        "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1},
}


@dataclass(frozen=True)
class ClusterConfig:
    """workers: 0 = no dask (run in this process); N = a LocalCluster of N worker processes.
    scheduler: address of an existing cluster (overrides workers).  gpus_per_task: tag each
    task with resources={"GPU": n} (workers must be started with that resource).
    max_in_flight: tasks submitted but not finished (None = 2 per worker).  retries: how
    often a task is re-run after its worker died or it failed."""

    workers: int = 0
    scheduler: str | None = None
    threads_per_worker: int = 1
    gpus_per_task: int = 0
    max_in_flight: int | None = None
    retries: int = 2

    @property
    def enabled(self) -> bool:
        return bool(self.scheduler) or self.workers > 0


@contextmanager
def client(cfg: ClusterConfig) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cfg``, closed (with its LocalCluster) on exit.  The
    dashboard address goes to stderr."""
    import dask
    from distributed import Client, LocalCluster

    # Held for the cluster's whole life: a nanny reads it again when it restarts a worker.
    with dask.config.set(WORKER_CONFIG):
        if cfg.scheduler:
            c = Client(cfg.scheduler)
            cluster = None
        else:
            resources = {"GPU": cfg.gpus_per_task} if cfg.gpus_per_task else None
            cluster = LocalCluster(n_workers=cfg.workers,
                                   threads_per_worker=cfg.threads_per_worker, processes=True,
                                   resources=resources, dashboard_address=":0")
            c = Client(cluster)
        print(f"dask dashboard: {c.dashboard_link}", file=sys.stderr)
        try:
            yield c
        finally:
            c.close()
            if cluster is not None:
                cluster.close()


def run_tasks(c, fn: Callable, items: Iterable, cfg: ClusterConfig, *args,
              **kwargs) -> Iterator[tuple[Any, Any]]:
    """Run ``fn(item, *args, **kwargs)`` for every item on the cluster, at most
    ``max_in_flight`` at once; yield (item, result) as tasks finish.  A task's exception is
    raised here once its retries are spent, with a note naming its item.  A task whose
    worker died is re-run by the scheduler (up to ``distributed.scheduler.allowed-failures``
    deaths, then ``KilledWorker`` is raised here); ``retries`` counts exceptions instead."""
    from distributed import as_completed

    n_workers = max(1, len(c.scheduler_info().get("workers", {})))
    limit = cfg.max_in_flight or 2 * n_workers
    resources = {"GPU": cfg.gpus_per_task} if cfg.gpus_per_task else None
    pending = iter(items)
    owner: dict = {}

    def submit(item) -> Any:
        fut = c.submit(fn, item, *args, retries=cfg.retries, resources=resources,
                       pure=False, **kwargs)
        owner[fut.key] = item
        return fut

    running = as_completed()
    for item in pending:
        running.add(submit(item))
        if running.count() >= limit:
            break
    for fut in running:
        item = owner.pop(fut.key)
        try:
            result = fut.result()
        except Exception as e:
            e.add_note(f"in the task for {item!r}")
            raise
        nxt = next(pending, _DONE)
        if nxt is not _DONE:
            running.add(submit(nxt))
        yield item, result


_DONE = object()


def worker_cached(key, factory: Callable[[], Any]) -> Any:
    """``factory()`` once per process for ``key`` (e.g. an extractor built from its config)."""
    if key not in _CACHE:
        _CACHE[key] = factory()
    return _CACHE[key]
