"""The one timing helper the benchmarks share."""

from __future__ import annotations

import statistics
import time


def median_time(action, repeat: int) -> tuple[float, object]:
    """Median wall time (s) of ``repeat`` calls of ``action`` and the last call's result."""
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result
