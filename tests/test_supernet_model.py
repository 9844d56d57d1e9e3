import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, random_bn_stats

from pss_keras.cost import flops
from pss_keras.supernet import layers
from pss_keras.supernet.model import Supernet, resize_to
from pss_keras.supernet.specs import SubnetConfig

MODELS = ("mobilenet_v1", "mobilenet_v2")


@pytest.mark.parametrize("model", MODELS)
def test_any_input_size_gives_logits(tiny_supernets, model, rng):
    net = tiny_supernets[model]
    for size in (64, 50, 97):
        x = rng.uniform(-1, 1, (2, size, size, 3)).astype("float32")
        assert tuple(net(x).shape) == (2, 10)


def test_resize_is_identity_at_same_size_and_bilinear_otherwise(rng):
    x = rng.normal(size=(1, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(resize_to(x, 16), x)
    small = resize_to(x, 9).numpy()
    assert small.shape == (1, 9, 9, 3)
    # Aligned corners: the corner pixels are kept exactly.
    np.testing.assert_allclose(small[0, 0, 0], x[0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(small[0, -1, -1], x[0, -1, -1], atol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_activations_are_really_sliced(tiny_supernets, model, rng, monkeypatch):
    """Every layer computes exactly the subnet's channels (no masks)."""
    net = tiny_supernets[model]
    config = net.space.smallest()
    seen = {}
    for layer in net.switchable_layers:
        if isinstance(layer, layers.SwitchableBatchNormalization):
            original = layer.call

            def spy(inputs, *args, _name=layer.name, _call=original, **kwargs):
                seen[_name] = (int(inputs.shape[-1]), int(inputs.shape[1]))
                return _call(inputs, *args, **kwargs)

            monkeypatch.setattr(layer, "call", spy)
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    net(x, subnet=config)
    profile = flops.profile(config, net.num_classes, net.width_scale)
    expected = {
        f"{r.name}_bn": (r.c_out, r.out_size) for r in profile if r.kind in ("conv", "depthwise")
    }
    assert seen == expected


@pytest.mark.parametrize("model", MODELS)
def test_one_trace_serves_every_subnet(tiny_supernets, model, rng, py_rng):
    net = tiny_supernets[model]
    x = rng.uniform(-1, 1, (4, 64, 64, 3)).astype("float32")
    y = rng.integers(0, 10, 4)

    @tf.function
    def train_grads(images, labels, code):
        with tf.GradientTape() as tape:
            logits = net(images, training=True, subnet=code)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            )
        return tape.gradient(loss, net.trainable_weights)

    @tf.function
    def infer(images):
        return net(images)  # reads the active subnet from its state

    space = net.space
    configs = [space.largest(), space.smallest(), space.random(py_rng), space.random(py_rng)]
    outputs = []
    try:
        for config in configs:
            grads = train_grads(x, y, net.space.encode(config))
            assert all(g is not None for g in grads)
            net.set_active_subnet(config)
            outputs.append(infer(x).numpy())
            np.testing.assert_allclose(outputs[-1], net(x, subnet=config), rtol=1e-5, atol=1e-6)
    finally:
        net.set_active_subnet(net.space.largest())  # the session fixture, as it was
    assert train_grads.experimental_get_tracing_count() == 1
    assert infer.experimental_get_tracing_count() == 1
    # the switch took effect (relative: an untrained net's logits are tiny)
    assert not np.allclose(outputs[0], outputs[1], rtol=1e-3, atol=0)


def test_gradients_touch_only_the_active_slice(tiny_supernets, rng):
    net = tiny_supernets["mobilenet_v1"]
    config = net.space.smallest()
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(net(x, training=True, subnet=config) ** 2)
    kernel = net.get_layer_by_name("block_5_pointwise").kernel
    grad = tape.gradient(loss, kernel).numpy()
    c_in, c_out = net.space.stage_channels(config)[4:6]
    assert np.abs(grad[:, :, :c_in, :c_out]).sum() > 0
    assert np.all(grad[:, :, c_in:, :] == 0) and np.all(grad[:, :, :, c_out:] == 0)


def test_config_of_another_space_raises(tiny_supernets):
    net = tiny_supernets["mobilenet_v1"]
    with pytest.raises(ValueError, match="resolution=224 is not on this supernet's grid 32..64"):
        net.set_active_subnet(SubnetConfig("mobilenet_v1", 224, (1.0,) * 14))
    with pytest.raises(ValueError, match="model_name"):
        net(
            np.zeros((1, 32, 32, 3), "float32"), subnet=SubnetConfig("mobilenet_v2", 32, (1.0,) * 9)
        )
    assert net.active_subnet == net.space.largest()  # unchanged after the failure


def test_bn_stats_supplied_equal_bn_stats_stored(rng, py_rng):
    net = Supernet("mobilenet_v2", **TINY)
    config = net.space.random(py_rng)
    net.set_active_subnet(config)
    stats = random_bn_stats(net, config, rng)
    x = rng.uniform(-1, 1, (2, 48, 48, 3)).astype("float32")
    default = net(x).numpy()
    supplied = net(x, bn_stats=stats).numpy()
    assert not np.allclose(default, supplied)
    net.set_bn_stats(stats)
    np.testing.assert_array_equal(net(x).numpy(), supplied)
    got = net.get_bn_stats(config)
    assert set(got) == set(stats)
    for name in stats:
        np.testing.assert_array_equal(got[name][0], stats[name][0])
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        net.set_bn_stats({"nope": (np.zeros(8), np.ones(8))})


def test_stable_weight_names_and_checkpoint_round_trip(tmp_path, rng, py_rng):
    keras.utils.set_random_seed(1)
    net = Supernet("mobilenet_v1", **TINY)
    paths = [w.path for w in net.weights]
    assert paths[1:6] == [
        "stem_conv/kernel",
        "stem_conv_bn/gamma",
        "stem_conv_bn/beta",
        "stem_conv_bn/moving_mean",
        "stem_conv_bn/moving_variance",
    ]
    assert "block_13_pointwise/kernel" in paths and paths[-2:] == [
        "classifier/kernel",
        "classifier/bias",
    ]
    config = net.space.random(py_rng)
    net.set_active_subnet(config)
    x = rng.uniform(-1, 1, (2, 40, 40, 3)).astype("float32")
    expected = net(x).numpy()
    path = str(tmp_path / "supernet.weights.h5")
    net.save_weights(path)
    keras.utils.set_random_seed(2)
    clone = Supernet.from_config(net.get_config())
    assert not np.allclose(clone(x).numpy(), expected, rtol=1e-3, atol=0)  # logits are tiny
    clone.load_weights(path)
    # The active subnet is part of the state (as a code: the config is not
    # recoverable from channel counts, so it is not claimed).
    np.testing.assert_array_equal(clone.active_subnet_code.numpy(), net.space.encode(config))
    assert clone.active_subnet is None and net.active_subnet == config
    with pytest.raises(ValueError, match="pass the SubnetConfig explicitly"):
        clone.get_bn_stats()
    np.testing.assert_allclose(clone(x).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_keras_format_round_trip(tmp_path, tiny_supernets, rng, py_rng):
    net = tiny_supernets["mobilenet_v2"]
    path = str(tmp_path / "supernet.keras")
    net.save(path)
    clone = keras.models.load_model(path)
    assert isinstance(clone, Supernet) and clone.space == net.space
    x = rng.uniform(-1, 1, (2, 48, 48, 3)).astype("float32")
    config = net.space.random(py_rng)
    np.testing.assert_allclose(clone(x, subnet=config), net(x, subnet=config), rtol=1e-6, atol=1e-6)


def test_trainable_parameter_count_of_the_full_supernet():
    net = Supernet("mobilenet_v2", **TINY)
    n = sum(int(np.prod(w.shape)) for w in net.trainable_weights)
    assert n == flops.count_params(net.space.largest(), 10, 0.5)


# -- padding and BN epsilon -------------------------------------------------------
def _reference_numerics(model):
    """A supernet of the official PSS-Net's numerics, with the weights of
    a default one (the layers are made in the same order either way)."""
    keras.utils.set_random_seed(3)
    default = Supernet(model, **TINY)
    keras.utils.set_random_seed(3)
    reference = Supernet(model, **TINY, padding="symmetric", bn_epsilon=1e-5)
    return default, reference


@pytest.mark.parametrize("model", MODELS)
def test_padding_and_bn_epsilon_reach_every_layer(model, rng):
    default, net = _reference_numerics(model)
    convs = [
        layer
        for layer in net.switchable_layers
        if isinstance(layer, (layers.SwitchableConv2D, layers.SwitchableDepthwiseConv2D))
    ]
    bns = [
        layer
        for layer in net.switchable_layers
        if isinstance(layer, layers.SwitchableBatchNormalization)
    ]
    assert convs and {layer.padding for layer in convs} == {"symmetric"}
    assert len(bns) == len(convs) and {layer.epsilon for layer in bns} == {1e-5}
    for a, b in zip(default.weights, net.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    config = net.space.smallest()  # 32 px: the stride-2 stem pads differently
    stats = random_bn_stats(net, config, rng)
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    ours, theirs = default(x, subnet=config, bn_stats=stats), net(x, subnet=config, bn_stats=stats)
    assert not np.allclose(ours, theirs, rtol=1e-3, atol=0)


def test_padding_and_bn_epsilon_in_the_config(rng):
    _, net = _reference_numerics("mobilenet_v1")
    config = net.get_config()
    assert (config["padding"], config["bn_epsilon"]) == ("symmetric", 1e-5)
    clone = Supernet.from_config(config)
    assert (clone.padding, clone.bn_epsilon) == ("symmetric", 1e-5)
    clone.set_weights(net.get_weights())
    x = rng.uniform(-1, 1, (2, 40, 40, 3)).astype("float32")
    np.testing.assert_array_equal(clone(x), net(x))
    # A config saved before these existed: today's architecture.
    old = {k: v for k, v in config.items() if k not in ("padding", "bn_epsilon")}
    assert (Supernet.from_config(old).padding, Supernet.from_config(old).bn_epsilon) == (
        "same",
        1e-3,
    )
    with pytest.raises(ValueError, match="padding='reflect' is unknown"):
        Supernet("mobilenet_v1", **TINY, padding="reflect")


def _old_conv_call(self, inputs, out_channels=None):
    """SwitchableConv2D.call before padding was an argument."""
    out_channels = self.filters if out_channels is None else out_channels
    kernel = self.kernel[:, :, : tf.shape(inputs)[-1], :out_channels]
    outputs = tf.nn.conv2d(inputs, kernel, strides=self.strides, padding="SAME")
    if self.use_bias:
        outputs = tf.nn.bias_add(outputs, self.bias[:out_channels])
    return outputs


def _old_depthwise_call(self, inputs):
    """SwitchableDepthwiseConv2D.call before padding was an argument."""
    kernel = self.kernel[:, :, : tf.shape(inputs)[-1], :]
    return tf.nn.depthwise_conv2d(
        inputs, kernel, strides=(1, self.strides, self.strides, 1), padding="SAME"
    )


@pytest.mark.parametrize("model", MODELS)
def test_a_default_supernet_computes_what_it_did(tiny_supernets, model, rng, py_rng, monkeypatch):
    """Today's runs: the same bits as the explicit 'SAME' convolutions
    (inference with per-subnet statistics, and training's batch moments)."""
    net = tiny_supernets[model]
    assert (net.padding, net.bn_epsilon) == ("same", 1e-3)
    config = net.space.random(py_rng)
    stats = random_bn_stats(net, config, rng)
    x = rng.uniform(-1, 1, (2, 48, 48, 3)).astype("float32")
    now = [net(x, subnet=config, bn_stats=stats), net(x, subnet=config, training=True)]
    monkeypatch.setattr(layers.SwitchableConv2D, "call", _old_conv_call)
    monkeypatch.setattr(layers.SwitchableDepthwiseConv2D, "call", _old_depthwise_call)
    before = [net(x, subnet=config, bn_stats=stats), net(x, subnet=config, training=True)]
    for a, b in zip(now, before):
        np.testing.assert_array_equal(a, b)
