"""pss_keras.testing.synthetic_job: tiny random jobs for the export and
serving tests."""

import os

import pytest

from pss_keras.jobs import directory as jobs
from pss_keras.testing import synthetic_job


def test_synthetic_job_tiers_are_distinct_and_span_the_space(tmp_path):
    retained = synthetic_job.write(str(tmp_path / "job"), "mobilenet_v2", 0.35, (32, 64), tiers=6)
    space = jobs.Job(str(tmp_path / "job")).supernet.space
    assert len({t.name for t in retained}) == 6
    assert [t.mflops for t in retained] == sorted(t.mflops for t in retained)
    assert retained[0].config == space.smallest() and retained[-1].config == space.largest()
    with pytest.raises(ValueError, match=r"tiers=500: this search space has \d+ distinct"):
        synthetic_job.write(str(tmp_path / "too_many"), "mobilenet_v1", 0.25, (16, 24), tiers=500)
    assert not os.path.exists(tmp_path / "too_many")  # nothing half written
