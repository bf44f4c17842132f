"""The one timer of the benchmarks: a warm-up call, then the median of ``repeats`` calls."""

from __future__ import annotations

import statistics
import time


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
