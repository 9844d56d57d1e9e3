"""The command-line entry points, run as a user runs them."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )


def test_profile_subnet_prints_reference_mflops():
    result = _run("scripts/profile_subnet.py", "--model=mobilenet_v1", "--subnet=max")
    assert result.returncode == 0, result.stderr
    assert "MFLOPs: 568.79" in result.stdout
    assert "block_13_pointwise" in result.stdout and "4,231,976" in result.stdout
    result = _run("scripts/profile_subnet.py", "--model=mobilenet_v2", "--subnet=min")
    assert "MFLOPs: 69.15" in result.stdout


def test_profile_subnet_rejects_bad_subnet_in_one_line():
    result = _run("scripts/profile_subnet.py", "--model=mobilenet_v2", "--subnet=300:1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: resolution=300 is not on this supernet's grid 128..224 step 8."
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_benchmark_script_writes_a_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = _run(
        "benchmarks/benchmark_supernet.py",
        "--model=mobilenet_v2",
        "--width_scale=0.25",
        "--batch_size=2",
        "--repeats=1",
        "--warmup=0",
        f"--output={out}",
    )
    assert result.returncode == 0, result.stderr
    assert "train step ms" in result.stdout
    data = json.loads(out.read_text())
    assert [r["subnet"].split("-")[1] for r in data["rows"]] == ["r224", "r128"]
    assert data["traces"] == {"forward": 1, "train_step": 1}
