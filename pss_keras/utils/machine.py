"""The machine a figure was measured on: one record, read once.

Every benchmark's JSON (`machine_record`, via
`pss_keras.utils.timing.write_benchmark`) and every latency table
(`device_record`) describe their machine from the same reading of the CPU
(`cpu_record`: model, the ISA flags that change kernels, cores) and the
GPUs TensorFlow sees. CPU figures differ between Intel Xeons with AMX and
AMD EPYCs with or without AVX-512, so no figure goes without it.
"""

from __future__ import annotations

import os

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


def cpu_record() -> dict:
    """``{"cpu_model", "isa", "cores"}``: the CPU part of every machine
    record (a benchmark's `machine_record`, a latency table's `device_record`)."""
    model, isa = cpu_model_and_isa()
    return {"cpu_model": model, "isa": isa, "cores": os.cpu_count()}


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
    import platform

    import tensorflow as tf

    cpu = cpu_record()
    gpus = gpu_names()
    description = f"{cpu['cpu_model']}, {cpu['cores']} cores ({', '.join(cpu['isa'])})"
    description += "; GPU: " + (", ".join(gpus) if gpus else "none")
    return {
        "description": description,
        **cpu,
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


def device_record(threads: int | None = None, gpu: str | None = None) -> dict:
    """The device a latency table is measured on: `cpu_record`, the threads
    used and the GPU (a table's ``device``: the JSON fields it has always had)."""
    cpu = cpu_record()
    return {
        "cpu_model": cpu["cpu_model"],
        "isa": cpu["isa"],
        "cores": cpu["cores"],
        "threads": threads,
        "gpu": gpu,
    }


def describe_device(device: dict) -> str:
    """One line for a table's ``device`` record."""
    text = f"{device.get('cpu_model')} ({', '.join(device.get('isa') or [])})"
    if device.get("threads"):
        text += f", {device['threads']} thread(s)"
    if device.get("gpu"):
        text += f", GPU {device['gpu']}"
    return text
