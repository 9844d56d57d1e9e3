"""The job directory's contract (pss_keras.jobs.directory)."""

import dataclasses
import json
import os
import re

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


def _job_with_tiers(tmp_path, tiers):
    """A folder with only a retained_subnets.json (what --subnet reads)."""
    job = tmp_path / "source"
    job.mkdir()
    (job / jobs.RETAINED).write_text(
        json.dumps([{"name": name, "config": c.to_dict()} for name, c in tiers.items()])
    )
    return str(job)


def test_with_subnet_a_tier_of_the_init_job_or_a_subnet(tmp_path):
    """``--subnet``: a tier of the --init_from job (named after it), or a
    subnet of the run's space (RES:m1,...,mN; one multiplier for all)."""
    from conftest import tiny_train_config

    from pss_keras.supernet.specs import SearchSpace, SubnetConfig

    tier = SubnetConfig("mobilenet_v1", 24, (0.8,) * 13 + (0.9,))
    job = _job_with_tiers(tmp_path, {"flops_0p5m": tier, "largest": tier})
    base = tiny_train_config(tmp_path / "job", "unused", init_from=job)
    config = jobs.with_subnet(base, "flops_0p5m")
    assert (config.subnet, config.subnet_name) == (tier, "flops_0p5m")
    assert jobs.with_subnet(base, "largest").subnet == tier  # a tier before the keyword
    config = jobs.with_subnet(base, "32:" + ",".join(["0.75"] * 14))
    assert (config.subnet.resolution, config.subnet_name) == (32, "")
    assert jobs.with_subnet(base, "16:1").subnet == SubnetConfig("mobilenet_v1", 16, (1.0,) * 14)
    scratch = tiny_train_config(tmp_path / "job", "unused")
    largest = SearchSpace(**scratch.space_kwargs(10)).largest()
    assert jobs.with_subnet(scratch, "max").subnet == largest


@pytest.mark.parametrize(
    "value, init, message",
    [
        (
            "flops_9m",
            True,
            r"--subnet=flops_9m is not a tier of .*source \(its tiers: flops_0p5m, flops_1m\); "
            r"or give a subnet as RES:m1,...,mN \(a resolution and one width multiplier per "
            r"stage, or one for all\)\.",
        ),
        (
            "flops_9m",
            False,
            r"--subnet=flops_9m is not a subnet, and a tier name needs --init_from=JOB \(the "
            r"finished job that has it\); or give a subnet as RES:m1,",
        ),
        (
            "24:0.8,0.8",
            False,
            r"--subnet '24:0.8,0.8' could not be read: stage_width_mults has 2 values but "
            r"mobilenet_v1 has 14 stages\.",
        ),
        ("20:0.8", False, r"--subnet=20:0.8: resolution=20 is not on this supernet's grid 16..32"),
        ("24:1.5", False, r"--subnet=24:1.5: stage_width_mults\[0\]=1.5 is outside the width"),
        (
            "flops_1m",
            True,
            r"--subnet=flops_1m: the tier of .*source is not in this run's space: resolution=64 "
            r"is not on this supernet's grid 16..32 step 8\. Give the job's --model_name",
        ),
    ],
)
def test_with_subnet_bad_values_in_one_line(tmp_path, value, init, message):
    from conftest import _one_line, tiny_train_config

    from pss_keras.supernet.specs import SubnetConfig

    tiers = {
        "flops_0p5m": SubnetConfig("mobilenet_v1", 24, (0.8,) * 14),
        "flops_1m": SubnetConfig("mobilenet_v1", 64, (1.0,) * 14),
    }
    job = _job_with_tiers(tmp_path, tiers) if init else ""
    config = tiny_train_config(tmp_path / "job", "unused", init_from=job)
    with pytest.raises(ValueError) as caught:
        jobs.with_subnet(config, value)
    assert re.fullmatch(message + ".*", _one_line(caught.value)), str(caught.value)


def test_with_subnet_refuses_retain_bounds(tmp_path):
    from conftest import tiny_train_config

    config = tiny_train_config(tmp_path / "job", "unused", retain_bounds=True)
    with pytest.raises(ValueError, match=r"^--subnet=max trains one subnet .* leave it out\.$"):
        jobs.with_subnet(config, "max")
