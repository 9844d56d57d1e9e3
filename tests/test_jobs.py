"""The job directory's contract (pss_keras.jobs.directory) and what deployment imports."""

import dataclasses
import json
import os

import pytest

from pss_keras import serving
from pss_keras.jobs import directory as jobs
from pss_keras.jobs import tiers as tiers_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_a_finished_job_is_required(tmp_path):
    with pytest.raises(ValueError, match="has no run_config.json: it needs a finished training"):
        jobs.Job(str(tmp_path))
    with pytest.raises(ValueError, match="is not a PSS job directory"):
        jobs.read_run_config(str(tmp_path))
