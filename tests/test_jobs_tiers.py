"""Tier records (pss_keras.jobs.tiers): the retained tiers' file, the served
tiers' table."""

import dataclasses
import json
import os

import pytest

from pss_keras import serving
from pss_keras.jobs import directory as jobs
from pss_keras.jobs import tiers as tiers_lib


def test_retained_tiers_round_trip_byte_for_byte(trained_job):
    config, summary = trained_job
    path = os.path.join(config.job_dir, jobs.RETAINED)
    with open(path) as f:
        text = f.read()
    tiers = [tiers_lib.RetainedTier.from_dict(r) for r in json.loads(text)]
    assert [t.name for t in tiers] == [e["name"] for e in summary["retained"]]
    again = json.dumps([t.to_dict() for t in tiers], indent=2, sort_keys=False) + "\n"
    assert again == text
    job = jobs.Job(config.job_dir)
    assert [t.mflops for t in job.retained] == sorted(t.mflops for t in tiers)
    assert job.retained[0].resolution == job.retained[0].config.resolution


def test_tier_table_covers_every_served_field():
    fields = [f.name for f in dataclasses.fields(tiers_lib.ServedTier)]
    assert [field for _, field, _ in tiers_lib.TIER_TABLE] == fields
    assert serving.Tier is tiers_lib.ServedTier
    outputs = {
        "names": [b"b", b"a"],
        "metric_types": [b"flops", b"flops"],
        "targets": [2.0, 1.0],
        "mflops": [2.1, 0.9],
        "params": [20, 10],
        "resolutions": [64, 32],
        "top1": [0.5, 0.7],
        "latency_ms": [3.0, 1.0],
    }
    tiers = tiers_lib.served_tiers_from_outputs(outputs)
    assert tiers[0] == tiers_lib.ServedTier("a", "flops", 1.0, 0.9, 10, 32, 0.7, 1.0)
    assert [t.name for t in tiers] == ["a", "b"]


def test_served_tiers_without_prediction_columns_still_load():
    """An export from before latency tables: the columns default."""
    outputs = {
        "names": [b"flops_1m"], "metric_types": [b"flops"], "targets": [1.0], "mflops": [1.0],
        "params": [10], "resolutions": [32], "top1": [0.5], "latency_ms": [2.0],
    }  # fmt: skip
    (tier,) = tiers_lib.served_tiers_from_outputs(outputs)
    assert tier.predicted_latency_ms is None and tier.latency_table == ""
    from pss_keras import serving

    assert serving.tier_latency_ms(tier, "auto") == 2.0
    with pytest.raises(serving.ServingError, match="has no predicted latency"):
        serving.tier_latency_ms(tier, "predicted")
