"""How many cores this process may use, and how many it should keep busy.

``os.cpu_count()`` counts the machine's cores.  A process often has fewer: a batch system
pins it to its allocation (CPU affinity), a container caps its CPU time (a cgroup quota),
and a dask worker started by :mod:`vidattn.cluster` is one of several on the node, with
``OMP_NUM_THREADS=1`` (one worker a core).  Starting a process per machine core there
oversubscribes the allocation and holds memory in processes that only take turns.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "quota period" in microseconds, or "max"


def usable_cores(cpu_max: Path = CPU_MAX) -> int:
    """The cores this process may run on: its CPU affinity (a batch system's allocation),
    less where its cgroup's CPU quota (``cpu_max``; a container's limit) allows fewer."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        pass
    return max(1, n)


def thread_budget(environ: Mapping[str, str] | None = None) -> int | None:
    """The thread count ``OMP_NUM_THREADS`` gives this process (its first level, as
    OpenMP reads "4,2"), or None where it is unset or not a positive int."""
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    try:
        n = int(value.split(",")[0])
    except ValueError:
        return None
    return n if n > 0 else None


def cpu_budget(environ: Mapping[str, str] | None = None, cpu_max: Path = CPU_MAX) -> int:
    """The cores this process should keep busy: :func:`usable_cores`, or fewer where
    :func:`thread_budget` says so (a vidattn dask worker: 1)."""
    n = usable_cores(cpu_max)
    budget = thread_budget(environ)
    return n if budget is None else min(n, budget)
