"""The run plan: the run header, the dry run (`pss_keras.training.run_plan`) and
``scripts/train.py --dry_run``."""

import dataclasses
import os
import re

import pytest
from conftest import tiny_train_config, tiny_train_flags

from pss_keras.cost.flops import count_mflops
from pss_keras.jobs import directory as jobs
from pss_keras.supernet import specs
from pss_keras.training import run_plan, sampling
from pss_keras.training.dry_run import dry_run
from pss_keras.training.pools import TargetGrid
from pss_keras.training.preflight import build_maps, prioritized_sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_LUTS = os.path.join(ROOT, "..", "shared", "data", "reference_luts")
STATUSES = (run_plan.REACHED, run_plan.LARGEST_ONLY, run_plan.SMALLEST_ONLY, run_plan.NOT_REACHED)


@pytest.mark.parametrize(
    "values, unit, expected",
    [
        ([520, 530, 540, 560], "M", "520..540, 560 M"),
        ([], "M", "none"),
        ([570], "M", "570 M"),
        ([110, 120], "M", "110..120 M"),
        ([28000, 29000, 30000, 31000], "us", "28,000..31,000 us"),
        ([70, 80, 100, 120, 130], "us", "70..80, 100, 120..130 us"),
        ([1.5, 2.0, 2.5, 4.0], "us", "1.5..2.5, 4 us"),
    ],
)
def test_format_values_runs(values, unit, expected):
    assert run_plan.format_values(values, unit) == expected


def _space(config):
    return specs.SearchSpace(**config.space_kwargs(1))


def _flops_bounds(config):
    space = _space(config)
    return count_mflops(space.smallest(), 1, config.width_scale), count_mflops(
        space.largest(), 1, config.width_scale
    )


def _beyond_config(job_dir, folder):
    """The tiny run, its FLOPs grid extended 3 steps beyond the largest subnet."""
    config = tiny_train_config(job_dir, folder)
    start, stop, step = config.flops_targets
    return dataclasses.replace(config, flops_targets=(start, stop + 3 * step, step))


def test_dry_run_marks_targets_and_counts_the_data(tiny_image_folder, tmp_path):
    from pss_keras.data import pipelines as data

    config = _beyond_config(tmp_path / "job", tiny_image_folder)
    plan, problem = dry_run(config)
    assert problem == ""
    assert not os.path.exists(config.job_dir)  # nothing written

    # The map: as the conditional sampler of the same seed reaches it.
    (report,) = plan.maps
    grid = TargetGrid("flops", *config.flops_targets)
    conditional = sampling.ConditionalSampler.build(
        _space(config), grid, num_samples=config.num_map_samples, seed=config.seed
    )
    assert (report.metric_type, report.source, report.num_samples) == ("flops", "counted", 3000)
    assert [t.value for t in report.targets] == list(grid.targets)
    assert [t.name for t in report.targets] == [grid.name(k) for k in range(grid.num_targets)]
    largest = _space(config).largest()
    for k, target in enumerate(report.targets):
        if k not in conditional.distributions:
            expected = run_plan.NOT_REACHED
        elif k in conditional.extreme_only:
            expected = (
                run_plan.LARGEST_ONLY
                if conditional.extreme_only[k] == largest
                else run_plan.SMALLEST_ONLY
            )
        else:
            expected = run_plan.REACHED
        assert target.status == expected, (k, target)
    # The 3 targets beyond the largest subnet's FLOPs (by more than half a step): no pool.
    _, hi = _flops_bounds(config)
    beyond = [t for t in report.targets if t.value > hi + grid.step / 2]
    assert len(beyond) == 3
    assert all(t.status == run_plan.NOT_REACHED for t in beyond)
    assert report.num_reached == len(conditional.distributions) == len(report.targets) - 3
    assert report.values(run_plan.NOT_REACHED) == [t.value for t in beyond]
    assert report.summary().startswith(f"flops: {report.num_reached} of 6 targets reached (not: ")

    # The data: counted from the index as the pipelines count it.
    pipelines = data.Pipelines(config.data)
    counts = plan.data
    assert plan.data_error == "" and counts.checked is False
    assert counts.num_train == pipelines.num_train_records
    assert counts.num_minival == pipelines.source.num_train - pipelines.num_train_records
    assert counts.num_validation == pipelines.source.num_validation == 60
    assert (
        counts.class_names == tuple(pipelines.source.class_names) and len(counts.class_names) == 10
    )
    assert plan.steps_per_epoch == counts.num_train // config.data.batch_size
    assert (plan.strategy, plan.replicas, plan.resume) == ("default strategy", 1, "new run")

    header = plan.header()
    assert header[0] == f"job dir       {config.job_dir} (new run)"
    (data_line,) = [line for line in header if line.startswith("data ")]
    assert f"{counts.num_train:,} train + {counts.num_minival:,} minival" in data_line
    assert f"{counts.num_validation:,} validation; 10 classes" in data_line
    report_lines = plan.dry_run_report()
    assert report_lines[0] == "Run header:"
    assert f"  {'not reached:':<22}{run_plan.format_values(report.values('not reached'), 'M')}" in (
        report_lines
    )  # fmt: skip
    assert not os.path.exists(config.job_dir)


def test_dry_run_reports_a_missing_dataset(tmp_path):
    missing = str(tmp_path / "no_such_folder")
    config = tiny_train_config(tmp_path / "job", missing)
    plan, problem = dry_run(config)
    assert problem == ""
    assert plan.data is None and plan.steps_per_epoch is None
    assert missing in plan.data_error and plan.data_error.startswith("not opened: ")
    (data_line,) = [line for line in plan.header() if line.startswith("data ")]
    assert missing in data_line and "not opened" in data_line
    assert plan.maps[0].num_reached >= 1  # the rest is still shown
    assert not os.path.exists(config.job_dir)


@pytest.mark.parametrize("where", ["above", "below"])
def test_dry_run_states_why_a_run_would_not_start(tiny_image_folder, tmp_path, where):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    lo, hi = _flops_bounds(config)
    targets = (10 * hi, 11 * hi, hi / 10) if where == "above" else (lo / 10, lo / 2, lo / 20)
    config = dataclasses.replace(config, flops_targets=targets)
    plan, problem = dry_run(config)
    assert problem.startswith("No random subnet falls on the flops target grid"), problem
    assert plan.maps[0].num_reached == 0
    assert {t.status for t in plan.maps[0].targets} == {run_plan.NOT_REACHED}
    # The prioritized sampler's own message.
    space = _space(config)
    with pytest.raises(ValueError) as error:
        prioritized_sampler(config, build_maps(config, space, log=False))
    assert str(error.value) == problem
    assert not os.path.exists(config.job_dir)


def test_dry_run_refuses_a_job_dir_of_another_run(tiny_image_folder, tmp_path):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    os.makedirs(config.job_dir)
    jobs.write_run_config(config.job_dir, dataclasses.replace(config, pool_size=5))
    before = sorted(os.listdir(config.job_dir))
    with pytest.raises(ValueError, match=r"holds a run with other settings \(pool_size\)") as error:
        dry_run(config)
    assert config.job_dir in str(error.value) and len(str(error.value).splitlines()) == 1
    assert sorted(os.listdir(config.job_dir)) == before == [jobs.RUN_CONFIG]


def test_dry_run_of_a_resume_names_its_checkpoints(tiny_image_folder, tmp_path):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    os.makedirs(os.path.join(config.job_dir, jobs.CHECKPOINTS, "epoch-0001-step-000003"))
    with open(os.path.join(config.job_dir, jobs.CHECKPOINTS, "latest"), "w") as f:
        f.write("epoch-0001-step-000003\n")  # the pointer is not a checkpoint
    jobs.write_run_config(config.job_dir, dataclasses.replace(config, epochs=1))  # may change
    plan, problem = dry_run(config)
    assert problem == ""
    assert plan.resume == "resumes the run there; checkpoints: epoch-0001-step-000003"
    assert plan.header()[0] == f"job dir       {config.job_dir} ({plan.resume})"
    assert sorted(os.listdir(config.job_dir)) == sorted([jobs.RUN_CONFIG, jobs.CHECKPOINTS])


# ----------------------------------------------------------------------------
# scripts/train.py --dry_run


def test_train_script_dry_run(tiny_image_folder, tmp_path, run_script):
    job = tmp_path / "job"
    result = run_script(*tiny_train_flags(job, tiny_image_folder, epochs=1), "--dry_run")
    assert result.returncode == 0, result.stderr[-3000:]
    for text in ("Run header:", "reached:", "Dry run:"):
        assert text in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert f"Nothing was written under {job}." in result.stdout
    assert not job.exists()

    # A grid no subnet reaches: the report, then one error line, exit 1.
    flags = tiny_train_flags(job, tiny_image_folder, epochs=1)
    flags = [f for f in flags if not f.startswith("--infer_metric_target_")]
    result = run_script(
        *flags,
        "--infer_metric_target_range_starts=500",
        "--infer_metric_target_range_stops=600",
        "--infer_metric_target_steps=10",
        "--dry_run",
    )
    assert result.returncode == 1
    assert "Run header:" in result.stdout and "Dry run:" not in result.stdout
    assert "error: this run would not start: No random subnet falls on the flops" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not job.exists()


def test_train_script_dry_run_of_a_tier_fine_tuned_alone(trained_job, tmp_path, run_script):
    """``--init_from=JOB --subnet=TIER``: the header names the subnet and
    where it starts; no targets, no map."""
    source, summary = trained_job
    tier = summary["retained"][0]
    job = tmp_path / "job"
    result = run_script(
        *tiny_train_flags(job, source.data.dataset, epochs=1),
        f"--init_from={source.job_dir}",
        f"--subnet={tier['name']}",
        "--dry_run",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    subnet = specs.SubnetConfig.from_dict(tier["config"])
    assert (
        f"  subnet        one subnet alone: {subnet.name}, {tier['mflops']:,.2f} MFLOPs, from "
        f"{source.job_dir} tier {tier['name']}; plain cross-entropy, no pools\n"
    ) in result.stdout, result.stdout
    assert "targets" not in result.stdout and "map time" not in result.stdout
    assert f"Nothing was written under {job}." in result.stdout and not job.exists()


def _values(text: str, step: float) -> list[float]:
    """The grid values a `format_values` text lists (``none``: none)."""
    text = text.rsplit(" ", 1)[0] if text != "none" else ""
    values = []
    for run in filter(None, text.split(", ")):
        first, _, last = run.partition("..")
        first = float(first.replace(",", ""))
        last = float(last.replace(",", "")) if last else first
        count = round((last - first) / step) + 1
        values.extend(round(first + i * step, 6) for i in range(count))
    return values


def _parse_report(stdout: str, steps: dict) -> dict:
    """``{metric_type: (reached, of, {status: [values]})}`` of a dry run's report."""
    reports, current = {}, None
    for line in stdout.splitlines():
        match = re.match(r"^(\w+) targets \(.*\): (\d+) of (\d+) reached$", line)
        if match:
            current = match.group(1)
            reports[current] = (int(match.group(2)), int(match.group(3)), {})
            continue
        match = re.match(r"^  ([a-z ]+):\s+(\S.*)$", line)
        if current and match and match.group(1) in STATUSES:
            reports[current][2][match.group(1)] = _values(match.group(2), steps[current])
        elif not line.startswith("  "):
            current = None
    return reports


def test_mbv1_m_dry_run_with_the_reference_tables(tmp_path, run_script):
    """The issue's done-when: the paper's MBV1-M setting, the reference's
    tables: every target listed, the CPU targets above what mbv1_cpu.pkl
    predicts not reached, nothing written."""
    if not os.path.isdir(REFERENCE_LUTS):
        pytest.skip(
            f"{os.path.normpath(REFERENCE_LUTS)} is absent: the reference's .pkl tables are not "
            "in this checkout (they are in the PSS-Net repository's scripts/lut/)."
        )
    luts = os.path.normpath(REFERENCE_LUTS)
    job = tmp_path / "J"
    result = run_script(
        "scripts/train.py",
        "--flagfile=mbv1_m.flags",
        "--dataset=synthetic_shapes",
        f"--dataset_dir={tmp_path / 'data'}",
        f"--lut_dirs=None,{luts}/mbv1_gpu.pkl,{luts}/mbv1_cpu.pkl",
        "--dry_run",
        f"--job_dir={job}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert not job.exists()
    grids = {
        "flops": (110, 570, 10),
        "latency_gpu": (70, 240, 10),
        "latency_cpu": (10000, 31000, 1000),
    }
    reports = _parse_report(result.stdout, {m: g[2] for m, g in grids.items()})
    assert set(reports) == set(grids), result.stdout
    counts = {m: reports[m][1] for m in reports}
    assert counts == {"flops": 47, "latency_gpu": 18, "latency_cpu": 22}
    for metric_type, (start, stop, step) in grids.items():
        reached, of, by_status = reports[metric_type]
        listed = sorted(v for values in by_status.values() for v in values)
        assert listed == [float(v) for v in range(start, stop + 1, step)], metric_type
        assert reached == of - len(by_status[run_plan.NOT_REACHED])
    cpu_missing = reports["latency_cpu"][2][run_plan.NOT_REACHED]
    assert {29000.0, 30000.0, 31000.0} <= set(cpu_missing), cpu_missing
    # mbv1_cpu.pkl predicts at most ~24.6 ms for the largest subnet: nothing
    # reaches the published 30 ms. 10 ms is within its range.
    assert 10000.0 not in cpu_missing
    assert "Dry run: the settings would start a run" in result.stdout


# ----------------------------------------------------------------------------
# The header's figures and the dry run's map are the run's own.


def test_header_states_the_runs_flops(tiny_image_folder, tmp_path):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    plan, _ = dry_run(config)
    space = _space(config)
    (model_line,) = [line for line in plan.header() if line.startswith("model ")]
    largest = count_mflops(space.largest(), 10, config.width_scale)
    smallest = count_mflops(space.smallest(), 10, config.width_scale)
    assert f"largest subnet {largest:,.2f} MFLOPs, smallest {smallest:,.2f} MFLOPs" in model_line
    assert model_line.endswith(" MFLOPs")  # today's padding and BN epsilon go unsaid
    reference = dataclasses.replace(config, padding="symmetric", bn_epsilon=1e-5)
    (model_line,) = [line for line in dry_run(reference)[0].header() if line.startswith("model ")]
    assert model_line.endswith(" MFLOPs; symmetric padding, BN epsilon 1e-05")


def test_dry_run_map_is_the_runs_map(tiny_image_folder, tmp_path):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    run_space = specs.SearchSpace(**config.space_kwargs(10))  # as training.train builds it
    largest = count_mflops(run_space.largest(), 10, config.width_scale)
    # One target at the largest subnet's FLOPs, a grid step finer than the
    # classifier's share of them.
    config = dataclasses.replace(config, flops_targets=(largest, largest, 1e-4))
    plan, _ = dry_run(config)
    grid = TargetGrid("flops", *config.flops_targets)
    conditional = sampling.ConditionalSampler.build(
        run_space, grid, num_samples=config.num_map_samples, seed=config.seed
    )
    run_map = run_plan.MapReport.of(conditional, "counted", config.num_map_samples)
    assert [t.status for t in run_map.targets] == [run_plan.LARGEST_ONLY]
    assert [t.status for t in plan.maps[0].targets] == [t.status for t in run_map.targets]


def test_runs_of_targets_follow_the_grid_step():
    """Two unreached targets at the ends of a grid are not one run."""
    assert run_plan.format_values([70.0, 600.0], "M", 10.0) == "70, 600 M"
    assert run_plan.format_values([100.0, 130.0, 160.0], "M", 10.0) == "100, 130, 160 M"
    assert run_plan.format_values([520.0, 530.0, 540.0, 560.0], "M", 10.0) == "520..540, 560 M"


def test_dry_run_names_the_weights_and_refuses_a_missing_init_from(tiny_image_folder, tmp_path):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    plan, _ = dry_run(dataclasses.replace(config, init_from="imagenet"))
    (line,) = [x for x in plan.header() if x.startswith("weights")]
    assert "imported from imagenet at the run's start" in line
    with pytest.raises(ValueError, match="--init_from=.*nothing.h5 does not exist"):
        dry_run(dataclasses.replace(config, init_from=str(tmp_path / "nothing.h5")))
    assert not os.path.exists(config.job_dir)
