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


def machine_description() -> str:
    """The machine a measurement ran on, for benchmark tables: CPU model,
    core count, the ISA flags that change CPU kernels (AVX-512 VNNI/BF16,
    AMX), and the GPUs TensorFlow sees (imports TensorFlow for those)."""
    import os

    model, isa = cpu_model_and_isa()
    description = f"{model}, {os.cpu_count()} cores ({', '.join(isa)})"
    gpus = gpu_names()
    return description + "; GPU: " + (", ".join(gpus) if gpus else "none")
