"""pss_keras.training.subnet_trainer: one subnet trained alone (its step,
weight decay, what it leaves untouched) and its checkpoint state."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pss_keras.supernet.model import Supernet
from pss_keras.supernet.specs import SubnetConfig
from pss_keras.training.subnet_trainer import SCORE, FixedSubnet, SubnetTrainer, build_teacher
from pss_keras.training.trainer import PSSTrainer
from pss_keras.utils import losses


def _net():
    return Supernet("mobilenet_v1", num_classes=10, width_scale=0.25, resolution_range=(16, 32))


SUBNET = SubnetConfig("mobilenet_v1", 24, (0.8,) * 14)


def test_the_loss_falls_on_a_fixed_batch_and_only_the_subnet_trains(rng):
    net = _net()
    trainer = SubnetTrainer(net, SUBNET, weight_decay=0.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    trainer.optimizer.build(trainer.trainable_variables)  # as the driver: the step traces once
    calls = []
    original = net._forward
    net._forward = lambda inputs, training, subnet, bn_stats, moments: (
        calls.append((training, subnet)) or original(inputs, training, subnet, bn_stats, moments)
    )
    before = {w.path: w.numpy() for w in net.trainable_weights}
    x = rng.normal(size=(16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 16).astype("int32")
    losses, scores = [], []
    for _ in range(20):
        logs = trainer.train_on_batch(x, y, return_dict=True)
        losses.append(logs["loss"])  # the running mean: reset_metrics below
        scores.append(-logs[SCORE])
        trainer.reset_metrics()
    assert losses == pytest.approx(scores, rel=1e-5)  # the step's own cross-entropy
    assert losses[-1] < 0.5 * losses[0], losses
    # One forward pass a step (traced once), the subnet's, BN in training mode.
    assert len(calls) == 1 and calls[0][0] is True
    np.testing.assert_array_equal(tf.get_static_value(calls[0][1]), net.space.encode(SUBNET))
    # Channels beyond the subnet's get no gradient (no weight decay here).
    widths = net.bn_channels(SUBNET)
    stem = net.get_layer_by_name("stem_conv").kernel
    c = widths["stem_conv_bn"]
    after = stem.numpy()
    assert not np.allclose(after[..., :c], before[stem.path][..., :c])
    np.testing.assert_array_equal(after[..., c:], before[stem.path][..., c:])


def test_weight_decay_is_the_pss_steps():
    net = _net()
    trainer, pss = SubnetTrainer(net, SUBNET), PSSTrainer(net)
    decayed = [v.path for v in net.trainable_weights if trainer.decayed(v)]
    assert decayed == [v.path for v in net.trainable_weights if pss.decayed(v)]
    assert "classifier/kernel" in decayed and "block_1_depthwise/kernel" not in decayed


def test_a_subnet_outside_the_space_is_refused():
    with pytest.raises(ValueError, match=r"resolution=40 is not on this supernet's grid 16..32"):
        SubnetTrainer(_net(), SubnetConfig("mobilenet_v1", 40, (1.0,) * 14))


def test_the_checkpoint_state_is_the_subnet():
    state = FixedSubnet(SUBNET)
    state.set_epoch(3)
    assert state.state_dict() == {"subnet": SUBNET.to_dict()}
    FixedSubnet(SUBNET).load_state_dict(state.state_dict())
    other = SubnetConfig("mobilenet_v1", 16, (0.8,) * 14)
    with pytest.raises(ValueError) as caught:
        FixedSubnet(other).load_state_dict(state.state_dict())
    assert str(caught.value) == (
        f"The checkpoint trained {SUBNET.name}, not {other.name}; resume with the same --subnet "
        "or use a new --job_dir."
    )
    with pytest.raises(ValueError, match=r"^The checkpoint is of a PSS run \(pools, no subnet\)"):
        FixedSubnet(SUBNET).load_state_dict({"pools": {}, "rng": 1})


def test_float16_scales_the_loss_and_keeps_float32_state(rng):
    """Under mixed_float16 the step goes through the LossScaleOptimizer as
    the PSS step does; variables and logits stay float32."""
    from pss_keras.training import driver as training

    with training.precision_scope("float16"):
        net = _net()
        trainer = SubnetTrainer(net, SUBNET)
        trainer.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=False)
        trainer.optimizer.build(trainer.trainable_variables)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert net.get_layer_by_name("stem_conv").compute_dtype == "float16"
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs[SCORE] == pytest.approx(-logs["loss"], rel=1e-6)
    assert {v.dtype for v in net.weights} == {"float32", "int32"}
    assert trainer(x[:2]).dtype == tf.float32


def test_distillation_follows_the_frozen_largest_subnet(rng):
    net, teacher = _net(), _net()
    x = rng.normal(size=(16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 16).astype("int32")
    for w in teacher.trainable_weights:  # a teacher unlike the student
        w.assign(w + rng.normal(scale=0.05, size=w.shape).astype("float32"))
    largest = teacher.space.encode(teacher.space.largest())
    soft = tf.nn.softmax(teacher(x, training=True, subnet=largest))
    expected = losses.kl_divergence(soft, net(x, training=True, subnet=net.space.encode(SUBNET)))
    frozen = {w.path: w.numpy() for w in teacher.weights}
    trainer = SubnetTrainer(net, SUBNET, weight_decay=0.0, teacher=teacher)
    assert not teacher.trainable and {v.path for v in trainer.trainable_variables} == {
        v.path for v in net.trainable_variables
    }
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    trainer.optimizer.build(trainer.trainable_variables)
    seen = []
    for _ in range(15):
        logs = trainer.train_on_batch(x, y, return_dict=True)
        seen.append(-logs[SCORE])
        trainer.reset_metrics()
    # The first step's loss is the KL divergence from the teacher's largest
    # subnet (batch statistics), not the cross-entropy with the labels.
    assert seen[0] == pytest.approx(float(expected), rel=1e-5)
    assert seen[-1] < 0.5 * seen[0], seen
    for w in teacher.weights:
        np.testing.assert_array_equal(w.numpy(), frozen[w.path], err_msg=w.path)


def test_a_teacher_of_another_class_count_is_refused():
    other = Supernet("mobilenet_v1", num_classes=5, width_scale=0.25, resolution_range=(16, 32))
    with pytest.raises(ValueError, match="The teacher has 5 classes and the subnet 10"):
        SubnetTrainer(_net(), SUBNET, teacher=other)


def test_build_teacher_refuses_what_is_no_matching_job(tmp_path):
    kwargs = {"model_name": "mobilenet_v1", "num_classes": 10, "width_scale": 0.25}
    with pytest.raises(ValueError, match=r"--init_from=.*no finished job \(it needs supernet"):
        build_teacher(kwargs, str(tmp_path))
    (tmp_path / "supernet.weights.h5").write_bytes(b"")
    (tmp_path / "classes.json").write_text('["a", "b", "c"]')
    with pytest.raises(ValueError, match="classifies 3 classes and this run's data 10"):
        build_teacher(kwargs, str(tmp_path))
