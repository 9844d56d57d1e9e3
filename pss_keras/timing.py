"""One way to time things: warm-up, repeated wall-clock runs, the median.

Used by the export's per-tier latency, the TFLite runner and every script in
benchmarks/, so that every latency the project reports means the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    Args:
        fn: the work to time; it must block until the result exists (e.g.
            fetch a tensor with ``.numpy()``), or asynchronous devices time
            the launch only.
        repeats: timed calls (at least 1).
        warmup: untimed calls first (tracing, allocation, caches).
    """
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))
