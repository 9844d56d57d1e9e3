"""The shared timing helper: the median and the machine every benchmark names."""

import io
import json
import os

import pytest

from pss_keras import timing


def test_median_ms_times_every_repeat_after_the_warm_up():
    calls = []
    assert timing.median_ms(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5


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
    monkeypatch.setattr(timing, "open", lambda path: io.StringIO(cpuinfo), raising=False)
    assert timing.cpu_model_and_isa() == ("Test CPU 9000", isa)


def test_write_benchmark_prints_and_records_the_machine(tmp_path, capsys):
    """Issue #14: every benchmark prints the machine with its table and
    records it in its JSON (CPU model, cores, ISA flags, GPUs)."""
    path = tmp_path / "bench.json"
    print("subnet  ms\nmax     1.0")  # a benchmark's table
    record = timing.write_benchmark(str(path), {"rows": [{"ms": 1.0}]})
    machine = record["machine"]
    assert json.loads(path.read_text()) == record and record["rows"] == [{"ms": 1.0}]
    assert set(machine) == {
        "description", "cpu_model", "cores", "isa", "gpus", "platform", "tensorflow"
    }  # fmt: skip
    assert machine["cores"] == os.cpu_count() and machine["gpus"] == timing.gpu_names()
    assert (machine["cpu_model"], machine["isa"]) == timing.cpu_model_and_isa()
    assert machine["description"] == timing.machine_description()
    assert f"{os.cpu_count()} cores (" in machine["description"]
    assert "; GPU: " in machine["description"]
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"machine: {machine['description']}",
        f"wrote {path}",
    ]
