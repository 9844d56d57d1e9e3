"""One way to time things: warm-up, repeated wall-clock runs, the median.

Used by the export's per-tier latency, the TFLite runner and every script in
benchmarks/, so that every latency the project reports means the same; and
`write_benchmark`, which prints and records the machine it was measured on.
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


_ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX512F",
    "avx512_vnni": "AVX512-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_tile": "AMX",
}


def cpu_model_and_isa() -> tuple[str, list[str]]:
    """The CPU's model name and the ISA flags that change CPU kernels
    (AVX2, AVX-512 F/VNNI/BF16, AMX; ``no AMX`` when it has none)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    isa = [name for flag, name in _ISA_FLAGS.items() if flag in flags]
    if "amx_tile" not in flags:
        isa.append("no AMX")
    return model, isa


def gpu_names() -> list[str]:
    """The GPUs TensorFlow sees (imports TensorFlow)."""
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return names


def machine_record() -> dict:
    """The machine a measurement ran on, for benchmark JSON.

    Returns:
        ``{"description", "cpu_model", "cores", "isa", "gpus", "platform",
        "tensorflow"}``: ``isa`` lists the flags that change CPU kernels
        (AVX2, AVX512F, AVX512-VNNI, AVX512-BF16, AMX or ``no AMX``), ``gpus``
        the GPUs TensorFlow sees (imports TensorFlow), ``description`` all of
        it in one line (`machine_description`).
    """
    import os
    import platform

    import tensorflow as tf

    model, isa = cpu_model_and_isa()
    gpus = gpu_names()
    description = f"{model}, {os.cpu_count()} cores ({', '.join(isa)})"
    description += "; GPU: " + (", ".join(gpus) if gpus else "none")
    return {
        "description": description,
        "cpu_model": model,
        "cores": os.cpu_count(),
        "isa": isa,
        "gpus": gpus,
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
    }


def machine_description() -> str:
    """The machine a measurement ran on, in one line: CPU model, core count,
    the ISA flags that change CPU kernels (AVX2, AVX512F, AVX-512 VNNI/BF16,
    AMX), and the GPUs TensorFlow sees (imports TensorFlow for those)."""
    return machine_record()["description"]


def print_machine() -> dict:
    """Prints the ``machine: ...`` line under a measured table; returns the
    `machine_record` for the measurement's JSON."""
    machine = machine_record()
    print(f"machine: {machine['description']}")
    return machine


def write_benchmark(path: str, result: dict) -> dict:
    """Ends a benchmark: prints the machine line under its table and writes
    ``result`` with the machine record (``"machine"``) as JSON to ``path``.

    Every script in benchmarks/ (and the measuring scripts) ends through
    here, so every printed table and every JSON says where it was measured.

    Returns:
        What was written.
    """
    from pss_keras.utils.fileio import atomic_write_json

    record = {**result, "machine": print_machine()}
    atomic_write_json(path, record)
    print(f"wrote {path}")
    return record
