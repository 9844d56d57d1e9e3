"""The shared timing helper: the median and the machine every benchmark names."""

import io
import json
import os

import pytest

from pss_keras.utils import machine as machine_lib
from pss_keras.utils import timing


def test_median_ms_times_every_repeat_after_the_warm_up(monkeypatch):
    """Two untimed warm-up calls (100 s each on the fake clock), then three
    timed ones of 5, 1 and 3 ms: the median is 3 ms."""
    clock, seconds = [0.0], [100.0, 100.0, 0.005, 0.001, 0.003]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def work():
        clock[0] += seconds.pop(0)

    assert timing.median_ms(work, repeats=3, warmup=2) == pytest.approx(3.0)
    assert seconds == []


def test_write_benchmark_prints_and_records_the_machine(tmp_path, capsys, monkeypatch):
    """Issue #14: every benchmark prints the machine with its table and
    records it in its JSON (CPU model, cores, ISA flags, GPUs)."""
    cpuinfo = "model name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f\n"
    monkeypatch.setattr(machine_lib, "open", lambda path: io.StringIO(cpuinfo), raising=False)
    monkeypatch.setattr(machine_lib, "gpu_names", lambda: ["Test GPU A", "Test GPU B"])
    path = tmp_path / "bench.json"
    print("subnet  ms\nmax     1.0")  # a benchmark's table
    record = timing.write_benchmark(str(path), {"rows": [{"ms": 1.0}]})
    machine = record["machine"]
    assert json.loads(path.read_text()) == record and record["rows"] == [{"ms": 1.0}]
    assert set(machine) == {
        "description", "cpu_model", "cores", "isa", "gpus", "platform", "tensorflow"
    }  # fmt: skip
    assert machine["cores"] == os.cpu_count()
    assert machine["gpus"] == ["Test GPU A", "Test GPU B"]
    assert (machine["cpu_model"], machine["isa"]) == (
        "Test CPU 9000",
        ["AVX2", "AVX512F", "no AMX"],
    )
    assert machine["description"] == (
        f"Test CPU 9000, {os.cpu_count()} cores (AVX2, AVX512F, no AMX); "
        "GPU: Test GPU A, Test GPU B"
    )
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"machine: {machine['description']}",
        f"wrote {path}",
    ]
