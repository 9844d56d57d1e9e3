"""One way to time things: warm-up, repeated wall-clock runs, the median.

Used by the export's per-tier latency, the TFLite runner and every script in
benchmarks/, so that every latency the project reports means the same; and
`write_benchmark`, which prints and records the machine it was measured on
(`pss_keras.utils.machine`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def median_ms(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] | None = None,
) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    Args:
        fn: the work to time; it must block until the result exists (e.g.
            fetch a tensor with ``.numpy()``), or asynchronous devices time
            the launch only.
        repeats: timed calls (at least 1).
        warmup: untimed calls first (tracing, allocation, caches).
        clock: a function returning seconds (default `time.perf_counter`),
            read just before and just after each timed call; tests pass a
            scripted clock so that no wall time is asserted.
    """
    clock = clock or time.perf_counter
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1000.0 * float(np.median(times))


def write_benchmark(path: str, result: dict) -> dict:
    """Ends a benchmark: prints the machine line under its table and writes
    ``result`` with the machine record (``"machine"``) as JSON to ``path``.

    Every script in benchmarks/ (and the measuring scripts) ends through
    here, so every printed table and every JSON says where it was measured.

    Returns:
        What was written.
    """
    from pss_keras.utils.fileio import atomic_write_json
    from pss_keras.utils.machine import print_machine

    record = {**result, "machine": print_machine()}
    atomic_write_json(path, record)
    print(f"wrote {path}")
    return record
