"""A user's own data and settings: the learning rate that follows the global
batch, the divergence guard (no silent bad run), the image folder checked
before the first step (and a train-only folder split, the split kept by the
job) and the run header."""

import dataclasses
import json
import logging
import math
import os
import shutil

import pytest
from conftest import tiny_train_config, tiny_train_flags

from pss_keras.data import pipelines as data
from pss_keras.jobs import directory as jobs
from pss_keras.jobs.config import AUTO_WARMUP_EPOCHS, DERIVED, TrainConfig
from pss_keras.training import driver as training
from pss_keras.training.callbacks import PSSCallback
from pss_keras.training.divergence import DivergenceError, DivergenceGuard
from pss_keras.training.trainer import build_optimizer

CLASSES = 10
LIMIT = 10 * math.log(CLASSES)  # the guard's limit for 10 classes (23.03)


def _config(tmp_path, batch_size=16, **overrides):
    config = tiny_train_config(tmp_path / "job", "synthetic_shapes", **overrides)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=batch_size))


# --- The learning rate follows the global batch --------------------------------------------


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


def test_build_optimizer_warms_up_to_the_rate_in_use(tmp_path):
    steps = 10
    config = _config(tmp_path, lr=0.3, lr_batch_size=4, epochs=20, warmup_epochs=None)
    assert config.lr_in_use == pytest.approx(1.2) and config.warmup_in_use == 5
    optimizer = build_optimizer(config, steps)

    def lr_at(step):
        optimizer.iterations.assign(step)
        return float(optimizer.learning_rate)

    assert lr_at(0) == 0.0
    assert lr_at(25) == pytest.approx(0.6, rel=1e-5)  # linear, halfway through 50 steps
    assert lr_at(50) == pytest.approx(1.2, rel=1e-5)  # the peak: the rate in use, not lr
    assert lr_at(125) == pytest.approx(0.6, rel=1e-5)  # cosine, halfway after the warm-up
    assert lr_at(200) == pytest.approx(0.0, abs=1e-6)
    # Scaled down: no warm-up, the first step at the rate in use.
    down = build_optimizer(_config(tmp_path, lr=0.3, lr_batch_size=64, warmup_epochs=None), steps)
    down.iterations.assign(0)
    assert float(down.learning_rate) == pytest.approx(0.075, rel=1e-6)


# --- DivergenceGuard -------------------------------------------------------------------------


def _feed(guard, losses, lr=0.05):
    for i, loss in enumerate(losses):
        guard.on_train_batch_end(i, {"largest_score": -loss, "lr": lr})


def test_guard_stops_at_a_non_finite_loss():
    guard = DivergenceGuard(CLASSES, steps_per_epoch=100)
    _feed(guard, [2.0] * 6)
    with pytest.raises(DivergenceError) as info:
        _feed(guard, [float("nan")], lr=0.25)
    message = str(info.value)
    assert message.startswith("Training diverged at step 7: ")
    assert "nan" in message and "is not finite" in message
    assert "at lr 0.25 in use" in message
    assert "\n" not in message
    # An infinite loss too.
    with pytest.raises(DivergenceError, match="at step 1: .*inf is not finite"):
        _feed(DivergenceGuard(CLASSES), [float("inf")])


def test_guard_names_the_lr_hint():
    guard = DivergenceGuard(CLASSES, lr_hint="--lr 0.3 for a batch of 1,024")
    with pytest.raises(
        DivergenceError, match=r"at lr 0\.05 in use \(--lr 0\.3 for a batch of 1,024\)"
    ):
        _feed(guard, [float("nan")])


def test_guard_tolerates_a_streak_shorter_than_its_patience():
    guard = DivergenceGuard(CLASSES, steps_per_epoch=1000)
    _feed(guard, [2.0] * 3)
    _feed(guard, [LIMIT + 1] * 19)
    assert guard.suspect_since == 4 and guard.streak == 19
    _feed(guard, [LIMIT - 1])  # below the limit: the streak ends
    assert guard.suspect_since is None and guard.streak == 0
    # A new streak counts from its own first step: 19 more do not stop it either.
    _feed(guard, [LIMIT + 1] * 19)
    assert guard.suspect_since == 24


def test_guard_stops_after_patience_steps_above_the_limit():
    guard = DivergenceGuard(CLASSES, steps_per_epoch=1000)
    _feed(guard, [2.0] * 5)
    _feed(guard, [LIMIT + 1] * 19)
    with pytest.raises(DivergenceError) as info:
        _feed(guard, [LIMIT + 1])
    message = str(info.value)
    assert message.startswith("Training diverged at step 25: ")
    assert "for 20 steps in a row, since step 6" in message
    assert "at lr 0.05 in use" in message


def test_guard_first_step_offsets_the_step_numbers():
    guard = DivergenceGuard(CLASSES, first_step=300, steps_per_epoch=100)
    _feed(guard, [LIMIT + 5] * 3)
    assert guard.suspect_since == 301
    with pytest.raises(DivergenceError, match="at step 304: .*not finite"):
        _feed(guard, [float("nan")])
    resumed = DivergenceGuard(CLASSES, first_step=300, steps_per_epoch=100)
    _feed(resumed, [LIMIT + 5] * 19)
    with pytest.raises(DivergenceError, match="at step 320: .*since step 301"):
        _feed(resumed, [LIMIT + 5])


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_guard_warns_of_a_spike_once_an_epoch(caplog):
    guard = DivergenceGuard(CLASSES, steps_per_epoch=60)
    with caplog.at_level(logging.WARNING):
        _feed(guard, [1.0] * 50)  # the baseline: median 1.0
        assert guard.warnings == 0
        _feed(guard, [2.9])  # below 3 x 1.0
        assert guard.warnings == 0 and _warnings(caplog) == []
        _feed(guard, [4.0])  # step 52: above 3 x the median (below 3 x ln(10) = 6.9)
        assert guard.warnings == 1
        (message,) = _warnings(caplog)
        assert message.startswith("Step 52: ") and "median of the first 50 steps" in message
        assert "lr 0.05" in message
        _feed(guard, [5.0] * 8)  # steps 53..60: the same epoch, no more warnings
        assert guard.warnings == 1 and len(_warnings(caplog)) == 1
        _feed(guard, [1.0, 5.0])  # step 62: the next epoch warns again
        assert guard.warnings == 2
        assert _warnings(caplog)[-1].startswith("Step 62: ")
    assert guard.suspect_since is None  # a spike is not a divergence


def test_guard_warns_of_a_spike_above_chance_before_its_baseline(caplog):
    guard = DivergenceGuard(CLASSES, steps_per_epoch=100)
    with caplog.at_level(logging.WARNING):
        _feed(guard, [2.3, 6.0])  # 6.0 < 3 x ln(10) = 6.91: no warning
        assert guard.warnings == 0
        _feed(guard, [7.5])  # step 3
    assert guard.warnings == 1
    (message,) = _warnings(caplog)
    assert message.startswith("Step 3: ") and "ln(classes)" in message


class _FakeSampler:
    pool_size = 3

    def pool_summary(self):
        return [{"name": "flops_1", "fill": 1, "best_score": None}]


class _FakeCheckpointer:
    def __init__(self):
        self.saved = []

    def save(self, epoch):
        self.saved.append(epoch)


def test_no_checkpoint_while_the_guard_suspects_the_run(caplog):
    guard = DivergenceGuard(CLASSES, steps_per_epoch=5)
    checkpointer = _FakeCheckpointer()
    callback = PSSCallback(
        trainer=None, sampler=_FakeSampler(), checkpointer=checkpointer, guard=guard
    )
    _feed(guard, [2.0] * 5)
    callback.on_epoch_end(0)
    assert checkpointer.saved == [1]
    _feed(guard, [2.0, 2.0] + [LIMIT + 1] * 3)  # a streak since step 8 runs at the epoch end
    assert guard.suspect_since == 8
    with caplog.at_level(logging.WARNING):
        callback.on_epoch_end(1)
    assert checkpointer.saved == [1]
    assert any(
        "No checkpoint after epoch 2" in m and "since step 8" in m for m in _warnings(caplog)
    )
    _feed(guard, [2.0] * 5)  # the streak ended: checkpoints again
    callback.on_epoch_end(2)
    assert checkpointer.saved == [1, 3]


@pytest.mark.slow
def test_train_script_stops_a_diverging_run(tiny_image_folder, tmp_path, run_script):
    job = tmp_path / "job"
    result = run_script(*tiny_train_flags(job, tiny_image_folder, epochs=3), "--lr=1e4")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Training diverged at step"), last
    assert " lr " in last and "in use" in last
    checkpoints = job / jobs.CHECKPOINTS
    assert not checkpoints.exists() or not [
        n for n in os.listdir(checkpoints) if not n.startswith(".")
    ], os.listdir(checkpoints)
    assert not (job / jobs.RETAINED).exists() and not (job / jobs.WEIGHTS).exists()


# --- at_chance ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "top1s, classes, expected",
    [
        ([0.1, 0.11, 0.09], 10, True),
        ([0.119, 0.081], 10, True),  # within the 0.02 margin
        ([0.121], 10, False),  # just outside
        ([0.079], 10, False),
        ([0.1, 0.1, 0.6], 10, False),  # one tier learned
        ([0.5], 2, True),
        ([0.53], 2, False),
        ([], 10, False),  # no tier: nothing to judge
    ],
)
def test_at_chance(top1s, classes, expected):
    retained = [{"top1": t} for t in top1s]
    assert training.at_chance(retained, classes) is expected


def test_at_chance_margin():
    assert training.at_chance([{"top1": 0.14}], 10, margin=0.05)
    assert not training.at_chance([{"top1": 0.14}], 10)


# --- A run on a train-only folder: its split kept; the run header --------------------------------


def _load(path, **kwargs):
    return data.load_source(data.DataConfig(dataset=str(path), image_size=32, **kwargs))


def _images(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".png"))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def split_job(tiny_image_folder, tmp_path_factory):
    """A one-epoch tiny run on a train-only folder, its rate set by the batch rule:
    (config, summary, folder, logged messages)."""
    root = tmp_path_factory.mktemp("own") / "train_only"
    shutil.copytree(os.path.join(tiny_image_folder, "train"), root / "train")
    config = tiny_train_config(
        tmp_path_factory.mktemp("own_job") / "job", str(root), epochs=1, lr=0.8, lr_batch_size=128
    )
    handler, logger = _Records(), logging.getLogger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        summary = training.train(config)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return config, summary, root, handler.messages


def _header_line(messages, key):
    lines = [m for m in messages if m.startswith(f"{key} ")]
    assert len(lines) == 1, (key, lines)
    return lines[0]


@pytest.mark.heavy  # trains a tiny run (module fixture)
def test_run_header_states_the_rate_in_use_and_the_data(split_job):
    config, summary, root, messages = split_job
    assert config.lr_in_use == pytest.approx(0.1)
    lr = _header_line(messages, "lr")
    assert lr.split()[1] == "0.1" and "peak in use" in lr
    assert "0.8 for a batch of 128 -> 0.1 at the global batch 16 (linear rule)" in lr
    assert "warm-up" not in lr  # scaled down: none
    # 160 images: 2 a class held out for validation, 20 of the rest for minival.
    data_line = _header_line(messages, "data")
    assert data_line == (
        f"data          {root}: 120 train + 20 minival (held out of train, chooses the tiers), "
        "20 validation; 10 classes"
    )
    classes = _header_line(messages, "classes")
    assert "disc 14" in classes and "dots 14" in classes
    assert _header_line(messages, "job dir").endswith("(new run)")
    assert "global 16" in _header_line(messages, "batch")
    assert _header_line(messages, "weights").startswith("weights       random initialization")
    # The header comes before the first epoch's report.
    first_epoch = next(i for i, m in enumerate(messages) if m.startswith("epoch 1:"))
    assert messages.index(lr) < first_epoch
    assert summary["num_classes"] == 10
    saved = json.load(open(os.path.join(config.job_dir, jobs.RUN_CONFIG)))
    assert saved["lr_in_use"] == pytest.approx(0.1) and saved["lr"] == 0.8


@pytest.mark.heavy  # trains a tiny run (module fixture)
def test_a_run_saves_the_split_of_a_train_only_folder(split_job):
    config, _, root, _ = split_job
    split = jobs.read_split(config.job_dir)
    assert split == _load(root, val_fraction=0.1, seed=config.data.seed).split
    assert len(split["validation"]) == 20 and len(split["train"]) == 140
    # The split records paths relative to the folder, so the folder may move.
    assert not any(os.path.isabs(r) for r in split["train"] + split["validation"])


@pytest.mark.heavy  # trains a tiny run (module fixture)
def test_evaluation_reads_the_jobs_split(split_job, monkeypatch, caplog):
    config, summary, root, _ = split_job
    seen = []

    class Spy(data.Pipelines):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.source)

    monkeypatch.setattr(data, "Pipelines", Spy)
    added = root / "train" / "disc" / "zz_added.png"
    shutil.copy(root / "train" / "disc" / _images(root / "train" / "disc")[0], added)
    try:
        with caplog.at_level(logging.WARNING):
            retained = training.evaluate_job(config.job_dir, progress=False)
    finally:
        os.remove(added)
    (source,) = seen
    assert source.split == jobs.read_split(config.job_dir)
    assert (source.num_train, source.num_validation) == (140, 20)
    assert any(
        "1 image(s) that the run's saved split does not list" in m for m in _warnings(caplog)
    )
    # The same tiers, the same top-1 on the same 20 validation images.
    assert [(t["name"], t["config"], t["top1"]) for t in retained] == [
        (t["name"], t["config"], t["top1"]) for t in summary["retained"]
    ]


@pytest.mark.heavy  # trains a tiny run (module fixture)
def test_evaluation_names_an_image_of_the_split_that_is_gone(split_job):
    config, _, root, _ = split_job
    gone = jobs.read_split(config.job_dir)["validation"][0]
    kept = root.parent / "kept.png"
    shutil.move(root / gone, kept)
    try:
        with pytest.raises(data.DatasetError, match="lacks 1 image") as info:
            training.evaluate_job(config.job_dir, progress=False)
    finally:
        shutil.move(kept, root / gone)
    assert gone in str(info.value)


def test_epoch_time_estimate_leaves_out_the_tracing_step(monkeypatch, caplog):
    from pss_keras.training import callbacks

    clock = iter([100.0, 102.0, 104.0, 106.0])  # after steps 1, 4 (3 steps of 2 s each)
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    estimate = callbacks.EpochTimeEstimate(steps_per_epoch=300, remaining_steps=600, steps=4)
    with caplog.at_level(logging.INFO):
        for batch in range(6):
            if batch == 3:
                monkeypatch.setattr(callbacks.time, "perf_counter", lambda: 106.0)
            estimate.on_train_batch_end(batch)
    assert estimate.estimate == pytest.approx(2.0)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("time ")]
    assert "2 s a step over steps 2..4" in line and "about 10.0 min an epoch (300 steps)" in line
    assert "19.9 min for the 596 steps left" in line


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


def test_a_signal_after_the_last_step_stops_at_the_fit_end():
    from pss_keras.training import preemption

    class Checkpointer:
        def latest(self):
            return "/j/checkpoints/epoch-0003"

    step = preemption.StepCheckpoint(Checkpointer(), steps_per_epoch=8, first_epoch=2)
    step.received = 15  # SIGTERM, e.g. during the last epoch's checkpoint or validation
    with pytest.raises(preemption.TrainingInterrupted) as caught:
        step.on_train_end()
    assert caught.value.checkpoint == "/j/checkpoints/epoch-0003"
    assert "at the end of epoch 3" in str(caught.value) and caught.value.exit_status == 143
