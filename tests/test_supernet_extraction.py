import keras
import numpy as np
import pytest
from conftest import random_bn_stats

from pss_keras.cost import flops
from pss_keras.supernet import extraction
from pss_keras.supernet.specs import SubnetConfig

PLAIN = (
    keras.layers.InputLayer,
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Add,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.Dense,
)


@pytest.mark.parametrize("model", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_extracted_subnet_equals_supernet(tiny_supernets, model, fold_bn, rng, py_rng):
    net = tiny_supernets[model]
    space = net.space
    configs = [
        space.smallest(),
        space.largest(),
        SubnetConfig(model, 56, space.random(py_rng).stage_width_mults),
    ]
    for config in configs:
        stats = random_bn_stats(net, config, rng)
        x = rng.uniform(-1, 1, (3, config.resolution, config.resolution, 3)).astype("float32")
        expected = net(x, subnet=config, bn_stats=stats).numpy()
        sub = extraction.extract_subnet(net, config, stats, fold_bn=fold_bn)
        np.testing.assert_allclose(sub(x).numpy(), expected, atol=1e-5, rtol=0)
        assert sub.input_shape == (None, config.resolution, config.resolution, 3)
        assert all(isinstance(layer, PLAIN) for layer in sub.layers)
        has_bn = any(isinstance(layer, keras.layers.BatchNormalization) for layer in sub.layers)
        assert has_bn != fold_bn
        n_trainable = sum(int(np.prod(w.shape)) for w in sub.trainable_weights)
        if not fold_bn:
            assert n_trainable == flops.count_params(config, net.num_classes, net.width_scale)


def test_extraction_defaults_to_stored_statistics(tiny_supernets, rng, py_rng):
    net = tiny_supernets["mobilenet_v2"]
    config = net.space.random(py_rng)
    x = rng.uniform(-1, 1, (2, config.resolution, config.resolution, 3)).astype("float32")
    sub = extraction.extract_subnet(net, config)
    np.testing.assert_allclose(sub(x), net(x, subnet=config), atol=1e-5, rtol=0)


def test_extraction_errors(tiny_supernets, rng):
    net = tiny_supernets["mobilenet_v1"]
    config = net.space.smallest()
    with pytest.raises(ValueError, match="resolution=224"):
        extraction.extract_subnet(net, SubnetConfig("mobilenet_v1", 224, (1.0,) * 14))
    stats = random_bn_stats(net, config, rng)
    del stats["block_3_depthwise_bn"]
    with pytest.raises(ValueError, match="no statistics for .*block_3_depthwise_bn"):
        extraction.extract_subnet(net, config, stats)
    wrong = random_bn_stats(net, net.space.largest(), rng)
    with pytest.raises(
        ValueError,
        match=r"bn_stats\['block_1_pointwise_bn'\] has shapes \(\(32,\), \(32,\)\).*needs \(24,\)",
    ):
        extraction.extract_subnet(net, config, wrong)


@pytest.mark.parametrize("model", ["mobilenet_v1", "mobilenet_v2"])
def test_pixel_input_and_tf_keras_build_equal_the_supernet(tiny_supernets, model, rng, py_rng):
    import tensorflow as tf
    import tf_keras

    from pss_keras.data import preprocessing as data

    net = tiny_supernets[model]
    config = net.space.random(py_rng)
    stats = random_bn_stats(net, config, rng)
    r = config.resolution
    pixels = rng.uniform(0, 255, (2, r, r, 3)).astype("float32")
    expected = net(data.normalize(pixels / 255.0), subnet=config, bn_stats=stats).numpy()
    sub = extraction.extract_subnet(net, config, stats, fold_bn=True, pixel_input=True)
    assert sub.layers[1].name == "normalize"
    np.testing.assert_allclose(sub(pixels).numpy(), expected, atol=1e-5, rtol=0)
    legacy = extraction.extract_subnet(
        net, config, stats, fold_bn=True, pixel_input=True, keras_module=tf_keras
    )
    assert isinstance(legacy, tf_keras.Model) and not isinstance(legacy, keras.Model)
    np.testing.assert_allclose(legacy(tf.constant(pixels)).numpy(), expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def reference_numerics_supernets():
    """Tiny supernets with the official PSS-Net's numerics: symmetric
    padding, BN epsilon 1e-5."""
    from conftest import TINY

    from pss_keras.supernet.model import Supernet

    keras.utils.set_random_seed(5)
    return {
        name: Supernet(name, **TINY, padding="symmetric", bn_epsilon=1e-5)
        for name in ("mobilenet_v1", "mobilenet_v2")
    }


@pytest.mark.parametrize("model", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_a_symmetric_padded_subnet_equals_its_supernet(
    reference_numerics_supernets, model, fold_bn, rng, py_rng
):
    net = reference_numerics_supernets[model]
    space = net.space
    for config in (
        space.smallest(),
        SubnetConfig(model, 48, space.random(py_rng).stage_width_mults),
    ):
        stats = random_bn_stats(net, config, rng)
        x = rng.uniform(-1, 1, (3, config.resolution, config.resolution, 3)).astype("float32")
        expected = net(x, subnet=config, bn_stats=stats).numpy()
        sub = extraction.extract_subnet(net, config, stats, fold_bn=fold_bn)
        np.testing.assert_allclose(sub(x).numpy(), expected, atol=1e-5, rtol=0)
        assert all(isinstance(layer, PLAIN + (keras.layers.ZeroPadding2D,)) for layer in sub.layers)
        convs = [
            layer
            for layer in sub.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
        ]
        pads = {layer.name for layer in sub.layers if isinstance(layer, keras.layers.ZeroPadding2D)}
        assert {layer.padding for layer in convs} == {"valid"}
        # One pad before every 3x3 conv, none before a 1x1.
        assert pads == {f"{layer.name}_pad" for layer in convs if layer.kernel_size == (3, 3)}
        bns = [layer for layer in sub.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert {layer.epsilon for layer in bns} == (set() if fold_bn else {1e-5})


def test_a_symmetric_padded_subnet_converts_to_tflite_and_builds_in_tf_keras(
    reference_numerics_supernets, rng
):
    """The ZeroPadding2D + 'valid' form converts (TFLite) and builds with
    tf_keras (quantization-aware training), giving the supernet's logits."""
    import tensorflow as tf
    import tf_keras

    from pss_keras.data import preprocessing as data
    from pss_keras.tflite.model_conversion import convert_model
    from pss_keras.tflite.runner import TFLiteRunner

    net = reference_numerics_supernets["mobilenet_v2"]
    config = net.space.smallest()
    stats = random_bn_stats(net, config, rng)
    pixels = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = net(data.normalize(pixels / 255.0), subnet=config, bn_stats=stats).numpy()
    sub = extraction.extract_subnet(net, config, stats, fold_bn=True, pixel_input=True)
    runner = TFLiteRunner(model_content=convert_model(sub, 32))
    np.testing.assert_allclose(runner(pixels), expected, atol=1e-4 * np.abs(expected).max(), rtol=0)
    legacy = extraction.extract_subnet(
        net, config, stats, fold_bn=True, pixel_input=True, keras_module=tf_keras
    )
    np.testing.assert_allclose(legacy(tf.constant(pixels)).numpy(), expected, atol=1e-5, rtol=0)
