"""The machine record every benchmark and latency table names."""

import io
import os

import pytest

from pss_keras.utils import machine


@pytest.mark.parametrize(
    "flags, isa",
    [
        ("fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8",
         ["AVX2", "AVX512F", "AVX512-VNNI", "AVX512-BF16", "AMX"]),
        ("fpu sse avx2", ["AVX2", "no AMX"]),
    ],
)  # fmt: skip
def test_cpu_model_and_isa_reads_the_flags_that_change_kernels(monkeypatch, flags, isa):
    cpuinfo = f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n"
    monkeypatch.setattr(machine, "open", lambda path: io.StringIO(cpuinfo), raising=False)
    assert machine.cpu_model_and_isa() == ("Test CPU 9000", isa)


def test_a_tables_device_and_a_benchmarks_machine_read_the_cpu_once(monkeypatch):
    """One reading of the CPU: a latency table's device record has the
    fields it always had, from the same values as a benchmark's record."""
    cpuinfo = "model name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f amx_tile\n"
    monkeypatch.setattr(machine, "open", lambda path: io.StringIO(cpuinfo), raising=False)
    device = machine.device_record(threads=2, gpu=None)
    assert device == {
        "cpu_model": "Test CPU 9000",
        "isa": ["AVX2", "AVX512F", "AMX"],
        "cores": os.cpu_count(),
        "threads": 2,
        "gpu": None,
    }
    assert machine.describe_device(device) == "Test CPU 9000 (AVX2, AVX512F, AMX), 2 thread(s)"
    assert machine.cpu_record() == {k: device[k] for k in ("cpu_model", "isa", "cores")}
