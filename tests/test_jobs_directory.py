"""The job directory's contract (pss_keras.jobs.directory)."""

import dataclasses
import json
import os

import pytest

from pss_keras.jobs import directory as jobs
from pss_keras.training import driver as training


def test_a_finished_job_is_required(tmp_path):
    with pytest.raises(ValueError, match="has no run_config.json: it needs a finished training"):
        jobs.Job(str(tmp_path))
    with pytest.raises(ValueError, match="is not a PSS job directory"):
        jobs.read_run_config(str(tmp_path))


def test_resume_with_other_settings_is_refused(job_copy):
    config, _ = job_copy  # write_run_config rewrites run_config.json
    with pytest.raises(
        ValueError, match="holds a run with other settings \\(lr in use 0.1 -> 0.5\\)"
    ):
        training.train(dataclasses.replace(config, lr=0.5))
    with pytest.raises(ValueError, match="other settings \\(batch_size\\)"):
        jobs.write_run_config(
            config.job_dir,
            dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=8)),
        )
    # The data's location may move between runs (a new disk, another machine).
    jobs.write_run_config(
        config.job_dir,
        dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir="/elsewhere")),
    )
    with open(os.path.join(config.job_dir, "run_config.json")) as f:
        assert json.load(f)["data"]["data_dir"] == "/elsewhere"  # the new location is kept


def test_a_legacy_run_config_reads_as_todays_architecture():
    """tests/data/legacy_0_1's job (pss_keras 0.1) records no padding nor
    BN epsilon: it is read, and its supernet built, as 'same' and 1e-3."""
    legacy = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy_0_1", "job")
    with open(os.path.join(legacy, jobs.RUN_CONFIG)) as f:
        assert not {"padding", "bn_epsilon"} & set(json.load(f))
    config = jobs.read_run_config(legacy)
    assert (config.padding, config.bn_epsilon) == ("same", 1e-3)
    kwargs = config.supernet_kwargs(10)
    assert (kwargs["padding"], kwargs["bn_epsilon"]) == ("same", 1e-3)


def test_a_run_from_a_job_inherits_its_architecture(tmp_path):
    """``--init_from=JOB`` takes the job's padding and BN epsilon (an imported
    official checkpoint computes as PyTorch does); other sources add nothing."""
    from pss_keras.jobs.config import TrainConfig

    job = str(tmp_path / "imported")
    os.makedirs(job)
    config = TrainConfig(job_dir=job, padding="symmetric", bn_epsilon=1e-5)
    jobs.write_run_config(job, config)
    assert jobs.inherited_architecture(job) == {"padding": "symmetric", "bn_epsilon": 1e-5}
    assert jobs.inherited_architecture("") == {}
    assert jobs.inherited_architecture("imagenet") == {}
    assert jobs.inherited_architecture(str(tmp_path / "weights.h5")) == {}
    with pytest.raises(ValueError, match="is not a PSS job directory"):
        jobs.inherited_architecture(str(tmp_path))


def test_a_tier_without_statistics_is_refused_with_what_to_pass(tmp_path):
    tier = {"name": "flops_300m", "bn_stats": ""}
    with pytest.raises(ValueError) as caught:
        jobs.load_bn_stats(str(tmp_path), tier)
    message = str(caught.value)
    assert "Tier flops_300m" in message and "no calibrated batch-norm statistics" in message
    assert "--calibration_data=" in message and "\n" not in message
