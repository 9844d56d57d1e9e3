"""A run's settings (pss_keras.jobs.config.TrainConfig): the learning rate
that follows the global batch, its warm-up, what a resume compares, the
metric types' ranges and tables. (MetricTargets: test_jobs_targets.py.)"""

import dataclasses
import json

import pytest
from conftest import tiny_train_config
from training_helpers import _config

from pss_keras.jobs.config import AUTO_WARMUP_EPOCHS, DERIVED, TrainConfig


def test_lr_in_use_follows_the_global_batch(tmp_path):
    scaled = _config(tmp_path, batch_size=32, lr=0.3, lr_batch_size=1024)
    assert scaled.lr_in_use == pytest.approx(0.3 * 32 / 1024)
    assert "0.3 for a batch of 1,024 -> 0.009375 at the global batch 32" in scaled.describe_lr()
    # lr_batch_size=0: the rate as given, whatever the batch.
    given = _config(tmp_path, batch_size=32, lr=0.3, lr_batch_size=0)
    assert given.lr_in_use == 0.3
    assert "as given" in given.describe_lr()
    # The batch equal to lr_batch_size: the rate unchanged.
    assert _config(tmp_path, batch_size=64, lr=0.2, lr_batch_size=64).lr_in_use == pytest.approx(
        0.2
    )


@pytest.mark.parametrize(
    "lr_batch_size, epochs, warmup_epochs, expected",
    [
        (4, 100, None, AUTO_WARMUP_EPOCHS),  # scaled up 4x: the rule's 5 epochs
        (4, 6, None, 3.0),  # ... at most half the run
        (64, 100, None, 0.0),  # scaled down: no warm-up
        (0, 100, None, 0.0),  # as given: no warm-up
        (16, 100, None, 0.0),  # the same batch: not scaled up
        (4, 100, 2.5, 2.5),  # set: kept
        (64, 100, 1.0, 1.0),
    ],
)
def test_warmup_in_use(tmp_path, lr_batch_size, epochs, warmup_epochs, expected):
    config = _config(
        tmp_path, lr=0.1, lr_batch_size=lr_batch_size, epochs=epochs, warmup_epochs=warmup_epochs
    )
    assert config.warmup_in_use == expected
    config.validate()


def test_validate_refuses_a_negative_lr_batch_size(tmp_path):
    with pytest.raises(ValueError, match="lr_batch_size=-1 must be 0 or more"):
        _config(tmp_path, lr_batch_size=-1).validate()


def test_to_dict_records_the_rate_in_use_and_round_trips(tmp_path):
    config = _config(tmp_path, batch_size=32, lr=0.3, lr_batch_size=1024, warmup_epochs=None)
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["lr"] == 0.3 and saved["lr_batch_size"] == 1024
    assert saved["lr_in_use"] == pytest.approx(0.009375)
    assert saved["warmup_epochs_in_use"] == 0.0
    assert saved["warmup_epochs"] is None
    assert saved["data"]["val_fraction"] == 0.1
    again = TrainConfig.from_dict(saved)
    assert again == config
    assert not {f.name for f in dataclasses.fields(TrainConfig)} & set(DERIVED)
    assert config.resume_conflicts(saved) == []


def test_resume_compares_the_rates_in_use(tmp_path):
    literal = _config(tmp_path, batch_size=32, lr=0.009375, lr_batch_size=0)
    ruled = _config(tmp_path, batch_size=32, lr=0.3, lr_batch_size=1024)
    # The same rate, spelled either way: no conflict, both ways round.
    assert ruled.resume_conflicts(json.loads(json.dumps(literal.to_dict()))) == []
    assert literal.resume_conflicts(json.loads(json.dumps(ruled.to_dict()))) == []
    # Another rate: named as the rate in use.
    other = _config(tmp_path, batch_size=32, lr=0.3, lr_batch_size=512)
    conflicts = other.resume_conflicts(json.loads(json.dumps(ruled.to_dict())))
    assert conflicts == ["lr in use 0.009375 -> 0.01875"]
    # The same lr for another batch (the rule then gives another rate).
    bigger = _config(tmp_path, batch_size=64, lr=0.3, lr_batch_size=1024)
    conflicts = bigger.resume_conflicts(json.loads(json.dumps(ruled.to_dict())))
    assert "lr in use 0.009375 -> 0.01875" in conflicts and "batch_size" in conflicts


def test_resume_of_a_run_saved_before_the_batch_rule(tmp_path):
    config = _config(tmp_path, lr=0.1, lr_batch_size=0)
    saved = json.loads(json.dumps(config.to_dict()))
    for key in ("lr_batch_size", *DERIVED):
        del saved[key]
    del saved["data"]["val_fraction"]
    assert config.resume_conflicts(saved) == []
    # What it checks still counts: another literal rate conflicts.
    assert _config(tmp_path, lr=0.2, lr_batch_size=0).resume_conflicts(saved) == [
        "lr in use 0.1 -> 0.2"
    ]
    # ... and so does the rule's auto warm-up when the rate it resolves to is scaled up.
    warm = _config(tmp_path, lr=0.025, lr_batch_size=4, warmup_epochs=None, epochs=20)
    assert warm.lr_in_use == pytest.approx(0.1)
    assert warm.resume_conflicts(saved) == ["warm-up epochs 0 -> 5"]


def test_an_old_job_resumed_with_the_new_flag_default_is_told_what_to_pass(tmp_path):
    old = _config(tmp_path, batch_size=32, lr=0.3, lr_batch_size=0)
    saved = json.loads(json.dumps(old.to_dict()))
    for key in ("lr_batch_size", *DERIVED):
        del saved[key]
    new = _config(tmp_path, batch_size=32, lr=0.3, lr_batch_size=1024)  # the flag's default
    assert new.resume_conflicts(saved) == [
        "lr in use 0.3 -> 0.009375 (this job predates --lr_batch_size: pass --lr_batch_size=0)"
    ]
    # A saved key this version does not know is not a traceback (nor a conflict).
    assert old.resume_conflicts({**saved, "lr_batch_size": 0, "from_the_future": 1}) == []


def test_the_auto_warm_up_may_follow_a_longer_resumed_run(tmp_path):
    short = _config(tmp_path, lr=0.4, lr_batch_size=4, warmup_epochs=None, epochs=6)
    assert short.warmup_in_use == 3  # half the run
    longer = dataclasses.replace(short, epochs=40)
    assert longer.warmup_in_use == AUTO_WARMUP_EPOCHS
    assert longer.resume_conflicts(json.loads(json.dumps(short.to_dict()))) == []


def test_val_fraction_outside_0_1_is_refused(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(ValueError, match=r"val_fraction=1.5 must be in \[0, 1\)"):
        dataclasses.replace(
            config, data=dataclasses.replace(config.data, val_fraction=1.5)
        ).validate()


def test_config_metric_types_need_a_range_and_a_table_each(tmp_path):
    base = tiny_train_config(tmp_path / "j", "unused")
    ok = dataclasses.replace(
        base, metric_types=("flops", "latency_cpu"), latency_targets=((20.0, 60.0, 10.0),),
        lut_paths=("L.json",),
    )  # fmt: skip
    assert [m for m, _, _ in ok.target_ranges()] == ["flops", "latency_cpu"]
    assert ok.target_ranges()[1] == ("latency_cpu", (20.0, 60.0, 10.0), "L.json")
    for changes, message in [
        (dict(metric_types=("latency_cpu",)), "need one target range and one look-up table"),
        (dict(metric_types=("flops", "flops")), "at most once"),
        (dict(metric_types=("latency_npu",)), "at most once"),
        (
            dict(metric_types=("latency_cpu",), latency_targets=((60.0, 20.0, 10.0),),
                 lut_paths=("L.json",)),
            "latency_cpu target range 60..20 step 10 is empty",
        ),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(base, **changes).validate()
    # A run_config.json written before latency pools existed reads as FLOPs only.
    old = base.to_dict()
    for key in ("metric_types", "latency_targets", "lut_paths"):
        del old[key]
    assert base.__class__.from_dict(old).target_ranges()[0][0] == "flops"


def test_the_architectures_numerics_are_recorded_and_round_trip(tmp_path):
    """padding and bn_epsilon: in run_config.json, in what builds the
    supernet (not in the search space's arguments), compared on resume."""
    config = _config(tmp_path, padding="symmetric", bn_epsilon=1e-5)
    config.validate()
    saved = json.loads(json.dumps(config.to_dict()))
    assert (saved["padding"], saved["bn_epsilon"]) == ("symmetric", 1e-5)
    assert TrainConfig.from_dict(saved) == config
    kwargs = config.supernet_kwargs(10)
    assert (kwargs["padding"], kwargs["bn_epsilon"]) == ("symmetric", 1e-5)
    assert kwargs == {**config.space_kwargs(10), "padding": "symmetric", "bn_epsilon": 1e-5}
    assert config.resume_conflicts(saved) == []
    assert _config(tmp_path).resume_conflicts(saved) == ["bn_epsilon", "padding"]


def test_a_run_config_without_them_is_todays_architecture(tmp_path):
    """Jobs written before the fields existed (e.g. pss_keras 0.1's) read as
    'same' padding and BN epsilon 1e-3, and resume with today's defaults."""
    today = _config(tmp_path)
    saved = json.loads(json.dumps(today.to_dict()))
    del saved["padding"], saved["bn_epsilon"]
    old = TrainConfig.from_dict(saved)
    assert (old.padding, old.bn_epsilon) == ("same", 1e-3) and old == today
    assert today.resume_conflicts(saved) == []
    assert _config(tmp_path, padding="symmetric").resume_conflicts(saved) == ["padding"]


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(padding="valid"), r"padding='valid' is unknown; use one of \('same', 'symmetric'\)"),
        (dict(bn_epsilon=0.0), r"bn_epsilon=0.0 must be in \(0, 1\)"),
        (dict(bn_epsilon=float("nan")), r"bn_epsilon=nan must be in \(0, 1\)"),
    ],
)
def test_an_unknown_padding_or_bad_epsilon_is_refused(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **changes).validate()


def test_one_subnet_alone_is_recorded_and_compared_on_resume(tmp_path):
    """``subnet`` (a run that trains one subnet alone): in run_config.json
    as the subnet's record, read back as a SubnetConfig, compared on resume
    (its tier's name is not)."""
    from pss_keras.supernet.specs import SubnetConfig

    subnet = SubnetConfig("mobilenet_v1", 24, (0.8,) * 14)
    config = _config(tmp_path, subnet=subnet, subnet_name="flops_1m")
    config.validate()
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["subnet"] == subnet.to_dict() and saved["subnet_name"] == "flops_1m"
    assert TrainConfig.from_dict(saved) == config
    assert dataclasses.replace(config, subnet_name="").resume_conflicts(saved) == []
    other = dataclasses.replace(subnet, resolution=32)
    assert _config(tmp_path, subnet=other).resume_conflicts(saved) == ["subnet"]
    assert _config(tmp_path).resume_conflicts(saved) == ["subnet"]  # PSS on its job: refused


def test_a_run_config_without_subnet_is_a_pss_run(tmp_path):
    """Jobs written before ``subnet`` existed read as PSS runs (None) and
    resume as such; a single-subnet run is refused on them."""
    from pss_keras.supernet.specs import SubnetConfig

    today = _config(tmp_path)
    saved = json.loads(json.dumps(today.to_dict()))
    del saved["subnet"], saved["subnet_name"]
    old = TrainConfig.from_dict(saved)
    assert old.subnet is None and old == today
    assert today.resume_conflicts(saved) == []
    subnet = SubnetConfig("mobilenet_v1", 24, (0.8,) * 14)
    assert _config(tmp_path, subnet=subnet).resume_conflicts(saved) == ["subnet"]


def test_distill_from_largest_needs_a_subnet_and_a_job(tmp_path):
    from pss_keras.supernet.specs import SubnetConfig

    subnet = SubnetConfig("mobilenet_v1", 24, (0.8,) * 14)
    for settings in ({}, {"subnet": subnet}, {"init_from": "jobs/a"}):
        with pytest.raises(ValueError, match="distils one subnet .* give both"):
            _config(tmp_path, distill_from_largest=True, **settings).validate()
    config = _config(tmp_path, subnet=subnet, init_from="jobs/a", distill_from_largest=True)
    config.validate()
    saved = json.loads(json.dumps(config.to_dict()))
    # Another loss on resume is refused; a run_config.json from before the
    # setting existed reads as plain cross-entropy.
    plain = dataclasses.replace(config, distill_from_largest=False)
    assert plain.resume_conflicts(saved) == ["distill_from_largest"]
    del saved["distill_from_largest"]
    assert plain.resume_conflicts(saved) == [] and TrainConfig.from_dict(saved) == plain
