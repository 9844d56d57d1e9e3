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
    result = _run("scripts/profile_subnet.py", "--model_name=mobilenet_v1", "--subnet=max")
    assert result.returncode == 0, result.stderr
    assert "MFLOPs: 568.79" in result.stdout
    assert "block_13_pointwise" in result.stdout and "4,231,976" in result.stdout
    result = _run("scripts/profile_subnet.py", "--model=mobilenet_v2", "--subnet=min")
    assert "MFLOPs: 69.15" in result.stdout


def test_profile_subnet_rejects_bad_subnet_in_one_line():
    result = _run("scripts/profile_subnet.py", "--model_name=mobilenet_v2", "--subnet=300:1")
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
    # The machine it ran on, under the table and in the JSON (issue #14).
    # The flags parser itself is tested on fixed cpuinfo texts (test_timing.py).
    from pss_keras.utils import machine

    assert data["machine"]["cores"] == os.cpu_count()
    assert (data["machine"]["cpu_model"], data["machine"]["isa"]) == machine.cpu_model_and_isa()
    assert f"machine: {data['machine']['description']}" in result.stdout


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_job_writes_both_plots(trained_job, tmp_path):
    config, summary = trained_job
    result = _run("scripts/plot_job.py", f"--job_dir={config.job_dir}", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _is_png(tmp_path / "tiers.png") and _is_png(tmp_path / "pool_scores.png")
    result = _run("scripts/plot_job.py", f"--job_dir={tmp_path / 'none'}")
    assert result.returncode == 1
    assert "retained_subnets.json is missing: not a finished PSS job directory" in result.stderr


def test_plot_job_of_one_subnet_alone_plots_its_tier(trained_job, tmp_path):
    """A job that trained one subnet alone has no pools: its tier is
    plotted and the pool scores are skipped, saying why."""
    _, summary = trained_job
    job = tmp_path / "job"
    job.mkdir()
    tier = dict(summary["retained"][0], selected_on="single", pool_score=None)
    (job / "retained_subnets.json").write_text(json.dumps([tier]))
    result = _run("scripts/plot_job.py", f"--job_dir={job}", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _is_png(tmp_path / "tiers.png") and not (tmp_path / "pool_scores.png").exists()
    assert "(one subnet trained alone: no pools, no pool scores to plot)" in result.stdout


def test_compare_sampling_trains_both_arms_and_writes_results(tiny_image_folder, tmp_path):
    """The study script at test scale: two arms on the same data and seed;
    the uniform arm never samples from its pools (p_space 1.0)."""
    result = _run(
        "scripts/compare_sampling.py",
        "--name=tiny",
        f"--job_root={tmp_path / 'jobs'}",
        f"--output_dir={tmp_path / 'results'}",
        f"--dataset={tiny_image_folder}",
        "--width_scale=0.25",
        "--resolution_range=16,32",
        "--flops_targets=0.2,0.8,0.3",
        "--epochs=1",
        "--batch_size=16",
        "--minival_examples=20",
        "--gen_map_num=3000",
        "--pool_size=3",
        "--valid_topk=2",
        "--warmup_epochs=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert set(record["arms"]) == {"pss", "uniform"}
    assert record["arms"]["uniform"]["p_space"] == [1.0, 1.0]
    assert record["arms"]["pss"]["p_space"] == [1.0, 0.01]
    for arm in record["arms"].values():
        assert arm["tiers"] and all(0 <= t["top1"] <= 1 for t in arm["tiers"])
    assert "cores" in record["machine"]["description"] and "isa" in record["machine"]
    assert f"machine: {record['machine']['description']}" in result.stdout
    assert _is_png(tmp_path / "results" / "tiny.png")
    saved = json.loads((tmp_path / "jobs" / "uniform" / "run_config.json").read_text())
    assert saved["p_space"] == [1.0, 1.0]
