"""pss_keras.training.divergence: the divergence guard (no silent bad run),
and scripts/train.py stopping a diverging run."""

import logging
import os

import pytest
from conftest import tiny_train_flags
from training_helpers import CLASSES, LIMIT, _feed, _warnings

from pss_keras.jobs import directory as jobs
from pss_keras.training.divergence import DivergenceError, DivergenceGuard


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
