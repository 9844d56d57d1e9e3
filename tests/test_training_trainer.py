"""pss_keras.training.trainer: the sandwich step (three subnets, one pool),
weight decay, mixed precision, the optimizer's schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_train_config
from training_helpers import _config, _setup

from pss_keras.supernet import layers
from pss_keras.supernet.model import Supernet
from pss_keras.training import driver as training
from pss_keras.training.callbacks import PSSCallback
from pss_keras.training.trainer import PSSTrainer, build_optimizer


def test_train_step_runs_three_subnets_and_updates_one_pool(
    tiny_image_folder, tmp_path, monkeypatch
):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    pipelines, supernet, sampler, trainer = _setup(config)
    calls = []
    original = supernet._forward

    def spy(inputs, training, subnet, bn_stats, moments):
        calls.append(subnet)
        return original(inputs, training, subnet, bn_stats, moments)

    monkeypatch.setattr(supernet, "_forward", spy)
    traces = []
    original_step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda d: traces.append(1) or original_step(d))
    callback = PSSCallback(trainer, sampler)
    step_logs = []
    recorder = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: step_logs.append(
            {k: float(v) for k, v in logs.items()}
        )
    )
    trainer.fit(
        pipelines.train_epoch(0).take(1),
        epochs=1,
        steps_per_epoch=1,
        verbose=0,
        callbacks=[callback, recorder],
        shuffle=False,
    )
    # Three forward passes in the step: largest, candidate (a variable), smallest.
    assert len(calls) == 3
    static = tf.get_static_value
    np.testing.assert_array_equal(static(calls[0]), supernet.space.encode(supernet.space.largest()))
    assert calls[1] is trainer.candidate_code
    np.testing.assert_array_equal(
        static(calls[2]), supernet.space.encode(supernet.space.smallest())
    )
    filled = [key for key, pool in sampler.pools.items() if len(pool)]
    assert filled == [(callback.candidate.metric_type, callback.candidate.target_index)]
    pool = sampler.pools[filled[0]]
    logs = step_logs[0]
    assert pool.scores[callback.candidate.config] == pytest.approx(
        logs["candidate_score"], rel=1e-6
    )
    assert logs["cand_target"] == callback.candidate.target and logs["cand_from_pool"] == 0.0
    assert logs["p_space"] == 1.0 and logs["temperature"] == 1.0  # epoch 0 of the schedules
    for key in ("loss_max", "loss_candidate", "loss_min"):
        assert np.isfinite(logs[key]) and logs[key] >= 0
    # More steps and another fit() with other candidates: no retracing.
    for epoch in (1, 2):
        trainer.fit(
            pipelines.train_epoch(epoch),
            epochs=1,
            steps_per_epoch=pipelines.steps_per_epoch,
            verbose=0,
            callbacks=[callback],
            shuffle=False,
        )
    assert len(traces) == 1
    assert sum(len(p) for p in sampler.pools.values()) > 1


def test_weight_decay_only_on_conv_and_dense_kernels():
    net = Supernet("mobilenet_v2", num_classes=10, width_scale=0.25)
    trainer = PSSTrainer(net)
    decayed = {v.path for v in trainer.trainable_variables if trainer.decayed(v)}
    assert "block_2_expand/kernel" in decayed and "classifier/kernel" in decayed
    assert "block_2_depthwise/kernel" not in decayed
    assert not any(p.endswith(("gamma", "beta", "bias")) for p in decayed)
    n_conv = sum(
        isinstance(layer, (layers.SwitchableConv2D, layers.SwitchableDense))
        for layer in net.switchable_layers
    )
    assert len(decayed) == n_conv


def test_steps_per_execution_is_refused():
    trainer = PSSTrainer(
        Supernet("mobilenet_v1", num_classes=10, width_scale=0.25, resolution_range=(16, 32))
    )
    with pytest.raises(ValueError, match="steps_per_execution=4 is not supported"):
        trainer.compile(optimizer="sgd", steps_per_execution=4)


def _one_step_update(mixed_precision, x, y, weight_decay, optimizer, init=None):
    """One PSS step (plain SGD) under a dtype policy: the update of every
    decayed kernel, the step's logs, the trainer, the initial weights."""
    with training.precision_scope(mixed_precision):
        net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25, resolution_range=(16, 32))
        trainer = PSSTrainer(net, weight_decay=weight_decay)
        trainer.compile(optimizer=optimizer, jit_compile=False)
        trainer.optimizer.build(trainer.trainable_variables)
    if init is not None:
        for w, value in zip(net.trainable_weights, init):
            w.assign(value)
    before = [w.numpy() for w in net.trainable_weights]
    logs = trainer.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False).history
    update = np.concatenate(
        [
            (w.numpy() - b).ravel()
            for w, b in zip(net.trainable_weights, before)
            if trainer.decayed(w)
        ]
    )
    return update, logs, trainer, before


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_computes_low_keeps_float32_state(precision, rng):
    """Layers compute in the low precision; variables and logits stay
    float32; float16 gets a LossScaleOptimizer; the global policy is
    restored after the build; a step gives finite losses."""
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    _, logs, trainer, _ = _one_step_update(precision, x, y, 1e-4, keras.optimizers.SGD(0.1))
    net = trainer.supernet
    assert keras.config.dtype_policy().name == "float32"
    assert net.get_layer_by_name("stem_conv").compute_dtype == precision
    assert net.get_layer_by_name("stem_conv_bn").gamma.dtype == "float32"
    assert {v.dtype for v in net.weights} == {"float32", "int32"}  # int32: the subnet code
    assert net(x[:2]).dtype == tf.float32
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (
        precision == "float16"
    )
    assert all(np.isfinite(v[0]) for v in logs.values()), logs


def test_float16_loss_scaling_scales_the_weight_decay_term(rng):
    """Under loss scaling the gradients come out multiplied by the scale and
    the optimizer divides them back, so the L2 term added to them must be
    scaled too. With a decay strong enough to dominate the kernels' update,
    float16 (scale 64) and float32 updates agree within 5% (measured 0.7%);
    with the decay term left unscaled they differ by 98%."""
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    reference, _, _, init = _one_step_update("none", x, y, 100.0, keras.optimizers.SGD(0.001))
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.001), initial_scale=64.0)
    update, _, trainer, _ = _one_step_update("float16", x, y, 100.0, scaled, init)
    assert float(trainer.optimizer.dynamic_scale) == 64.0  # the step was applied, not skipped
    relative = np.linalg.norm(update - reference) / np.linalg.norm(reference)
    assert relative < 0.05, relative


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
