"""pss_keras.training.callbacks: validation and TensorBoard logs during a run,
no checkpoint while the divergence guard suspects the run, the epoch-time
estimate."""

import logging
import os

import pytest
from conftest import tiny_train_config
from training_helpers import CLASSES, LIMIT, _feed, _warnings, tensorboard_steps, tensorboard_values

from pss_keras.training import driver as training
from pss_keras.training.callbacks import PSSCallback
from pss_keras.training.divergence import DivergenceGuard


def test_validation_during_training_logs_the_curve(tiny_image_folder, tmp_path):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder, epochs=2, validate_every=1)
    training.train(config)
    # Epoch scalars are written although 8 steps an epoch is no multiple of
    # tensorboard_update_freq=50 (Keras 3.15 drops them then: every epoch
    # and pool scalar was missing from such runs).
    pss = tensorboard_steps(os.path.join(config.job_dir, "logs", "pss"))
    assert pss["pss/p_space"] == [1, 2], pss
    assert tensorboard_steps(os.path.join(config.job_dir, "logs", "train"))["epoch_loss_max"] == [
        0,
        1,
    ]
    # Keras's TensorBoard writes val_* epoch logs to logs/validation, unprefixed.
    logs = os.path.join(config.job_dir, "logs", "validation")
    steps = tensorboard_steps(logs)
    for name in ("largest", "smallest"):
        assert steps[f"epoch_{name}_top1"] == [0, 1]
        values = tensorboard_values(logs, f"epoch_{name}_top1")
        assert all(0 <= v <= 1 for v in values) and len(values) == 2


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


def test_tensorboards_private_step_counter_is_what_a_resume_continues(tmp_path):
    """ContinuedTensorBoard sets keras.callbacks.TensorBoard's private
    ``_global_train_batch`` (Keras has no public way to start its step axis
    elsewhere): a Keras that renames it fails here, by name, instead of a
    resumed run quietly logging from step 1 again."""
    import keras

    from pss_keras.training.callbacks import ContinuedTensorBoard

    plain = keras.callbacks.TensorBoard(str(tmp_path / "plain"))
    plain.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    plain.on_train_begin()
    assert getattr(plain, "_global_train_batch", None) == 0, (
        f"keras {keras.__version__}'s TensorBoard no longer counts steps in "
        "_global_train_batch: update ContinuedTensorBoard.on_train_begin"
    )
    plain.on_train_end()
    continued = ContinuedTensorBoard(str(tmp_path / "continued"), first_step=40)
    continued.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    continued.on_train_begin()
    continued.on_train_batch_begin(0)
    assert continued._global_train_batch == 41  # the first step logged is step 41
    continued.on_train_end()
