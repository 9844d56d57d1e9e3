"""pss_keras.training.selection: the end-of-run choice of tiers (protocols,
the sandwich bounds), re-run on the shared trained job."""

import os

import pytest

from pss_keras.data import pipelines as data
from pss_keras.jobs import directory as jobs
from pss_keras.training import driver as training


def test_retain_bounds_adds_the_smallest_and_largest_subnets(job_copy):
    """evaluate_job(bounds=True): the pools' tiers unchanged, the space's
    smallest subnet first and its largest last, calibrated and evaluated
    like any tier; without it (the run's setting) they are gone again."""
    config, summary = job_copy
    again = training.evaluate_job(config.job_dir, progress=False, bounds=True)
    pools = [(e["name"], e["config"], e["top1"]) for e in summary["retained"]]
    assert [(e["name"], e["config"], e["top1"]) for e in again[1:-1]] == pools
    smallest, largest = again[0], again[-1]
    stages = len(smallest["config"]["stage_width_mults"])
    lo, hi = config.resolution_range
    assert (smallest["name"], largest["name"]) == ("smallest", "largest")
    assert smallest["config"]["resolution"] == lo and largest["config"]["resolution"] == hi
    assert smallest["config"]["stage_width_mults"] == [config.width_range[0]] * stages
    assert largest["config"]["stage_width_mults"] == [config.width_range[1]] * stages
    assert smallest["mflops"] < min(e["mflops"] for e in again[1:-1])
    assert largest["mflops"] > max(e["mflops"] for e in again[1:-1])
    for tier in (smallest, largest):
        assert tier["selected_on"] == "sandwich" and tier["pool_score"] is None
        assert tier["target"] == round(tier["mflops"], 3) and 0 <= tier["top1"] <= 1
        assert os.path.isfile(os.path.join(config.job_dir, tier["bn_stats"]))
        (only,) = tier["candidates"]
        assert (only["config"], only["top1"], only["pool_score"]) == (
            tier["config"], tier["top1"], None,
        )  # fmt: skip
    job = jobs.Job(config.job_dir)  # what export reads
    assert [t.name for t in job.retained] == [e["name"] for e in again]
    assert [e["name"] for e in jobs.read_retained(config.job_dir)] == [e["name"] for e in again]
    plain = training.evaluate_job(config.job_dir, progress=False)  # the run's: no bounds
    assert [(e["name"], e["config"], e["top1"]) for e in plain] == pools


def _check_choice(retained, chosen_on):
    for tier in retained:
        candidates = tier["candidates"]
        assert 1 <= len(candidates) <= 2  # topk=2
        for c in candidates:
            assert {"config", "pool_score", "minival_top1", "top1", "top5"} <= set(c)
        best = max(candidates, key=lambda c: c[chosen_on])
        assert tier["config"] == best["config"] and tier["top1"] == best["top1"]
        assert tier["minival_top1"] == best["minival_top1"]


def test_selection_protocols_record_every_candidate(job_copy, monkeypatch):
    """Default: each tier is its pool's best top-k candidate on minival;
    val_best_of_topk (the reference's protocol): the best on validation.
    Both record every candidate's minival and validation accuracy. The
    calibration batches are read once for the whole selection."""
    config, summary = job_copy
    _check_choice(summary["retained"], "minival_top1")
    assert {t["selected_on"] for t in summary["retained"]} == {"minival"}
    reads = []
    original = data.Pipelines.train_epoch
    monkeypatch.setattr(
        data.Pipelines, "train_epoch", lambda self, e: reads.append(e) or original(self, e)
    )
    again = training.evaluate_job(config.job_dir, progress=False, selection="val_best_of_topk")
    assert reads == [0]
    _check_choice(again, "top1")
    assert {t["selected_on"] for t in again} == {"validation"}
    with pytest.raises(ValueError, match="selection='best' is unknown"):
        training.evaluate_job(config.job_dir, progress=False, selection="best")


def test_retain_single_is_one_calibrated_tier_with_its_predicted_latency(job_copy):
    """The one tier of a subnet trained alone (here: the shared job's
    supernet): calibrated and evaluated as every tier, named by its MFLOPs
    unless named, ``selected_on`` single, its latency under each table."""
    from latency_helpers import synthetic_table

    from pss_keras.cost.flops import count_mflops
    from pss_keras.supernet import specs
    from pss_keras.training.selection import retain_single, single_tier_name

    config, _ = job_copy
    job = jobs.Job(config.job_dir)
    space = job.supernet.space
    subnet = specs.SubnetConfig("mobilenet_v1", 24, (0.8,) * 14)
    table = synthetic_table(space)
    pipelines = data.Pipelines(config.data)
    (tier,) = retain_single(
        job.supernet, subnet, "", pipelines, config.job_dir, {"latency_cpu": table}, 2
    )
    mflops = count_mflops(subnet, 10, 0.25)
    assert (
        tier["name"]
        == single_tier_name(mflops)
        == "flops_" + f"{round(mflops, 2):g}".replace(".", "p") + "m"
    )
    assert (tier["metric_type"], tier["target"], tier["selected_on"]) == (
        "flops", round(mflops, 3), "single",
    )  # fmt: skip
    predicted = table.metric_fn()(space, *specs.configs_to_arrays([subnet]))[0]
    assert tier["predicted_us"] == {"latency_cpu": round(float(predicted), 3)}
    assert 0 <= tier["minival_top1"] <= 1 and 0 <= tier["top1"] <= tier["top5"] <= 1
    assert [t.name for t in jobs.Job(config.job_dir).retained] == [tier["name"]]
    (named,) = retain_single(job.supernet, subnet, "mine", pipelines, config.job_dir, {}, 2)
    assert named["name"] == "mine" and named["predicted_us"] == {}
    assert named["top1"] == tier["top1"]  # the same calibration batches, the same figures
    assert single_tier_name(320.0) == "flops_320m" and single_tier_name(12.344) == "flops_12p34m"
