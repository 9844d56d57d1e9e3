import keras
import numpy as np
import pytest
import tensorflow as tf

from pss_keras.supernet import layers
from pss_keras.supernet.model import Supernet


def _x(rng, c, size=8):
    return rng.normal(size=(2, size, size, c)).astype("float32")


@pytest.mark.parametrize("strides", [1, 2])
def test_conv_uses_the_first_channels_of_its_kernel(rng, strides):
    conv = layers.SwitchableConv2D(16, 3, strides=strides, use_bias=True)
    conv.build((None, None, None, 12))
    conv.bias.assign(rng.normal(size=16).astype("float32"))
    x = _x(rng, 5, size=9)
    y = conv(x, out_channels=tf.constant(7))
    assert tuple(y.shape) == (2, 5 if strides == 2 else 9, 5 if strides == 2 else 9, 7)
    kernel = conv.kernel.numpy()[:, :, :5, :7]
    expected = tf.nn.conv2d(x, kernel, strides, "SAME") + conv.bias.numpy()[:7]
    np.testing.assert_allclose(y, expected, atol=1e-6)
    # Full width when out_channels is omitted.
    assert conv(_x(rng, 12)).shape[-1] == 16


def test_conv_output_shape_and_config_round_trip():
    conv = layers.SwitchableConv2D(16, 3, strides=2, name="c")
    assert conv.compute_output_shape((None, 9, 9, 4)) == (None, 5, 5, 16)
    clone = layers.SwitchableConv2D.from_config(conv.get_config())
    assert (clone.filters, clone.kernel_size, clone.strides, clone.name) == (16, 3, 2, "c")


def test_depthwise_follows_input_width(rng):
    dw = layers.SwitchableDepthwiseConv2D(3, strides=2)
    dw.build((None, None, None, 12))
    x = _x(rng, 5)
    y = dw(x)
    assert tuple(y.shape) == (2, 4, 4, 5)
    expected = keras.ops.depthwise_conv(x, dw.kernel.numpy()[:, :, :5, :], 2, "same")
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_batch_norm_training_inference_and_supplied_stats(rng):
    bn = layers.SwitchableBatchNormalization(epsilon=1e-3)
    bn.build((None, None, None, 12))
    x = _x(rng, 5) * 3.0 + 2.0
    # Non-trivial running statistics, far from the batch's (mean 2, variance
    # 9): a training call that used them, or moved them towards the batch
    # moments (Keras's momentum update), would show below.
    mm = rng.normal(size=12).astype("float32")
    mv = rng.uniform(0.5, 2, size=12).astype("float32")
    bn.moving_mean.assign(mm)
    bn.moving_variance.assign(mv)
    # Training: batch statistics of the 5 channels, unit gamma, zero beta.
    y = bn(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    # PSS-Net keeps no running statistics: training leaves them untouched.
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mm)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), mv)
    # Inference: the first 5 moving statistics.
    bn.gamma.assign(rng.uniform(0.5, 2, size=12).astype("float32"))
    g, b = bn.gamma.numpy()[:5], bn.beta.numpy()[:5]
    expected = (x - mm[:5]) / np.sqrt(mv[:5] + 1e-3) * g + b
    np.testing.assert_allclose(bn(x, training=False), expected, rtol=1e-5, atol=1e-5)
    # Supplied statistics win over the stored ones at inference.
    sm, sv = np.ones(5, "float32"), np.full(5, 4.0, "float32")
    expected = (x - 1.0) / np.sqrt(4.0 + 1e-3) * g + b
    np.testing.assert_allclose(
        bn(x, training=False, stats=(sm, sv)), expected, rtol=1e-5, atol=1e-5
    )


def test_dense_accepts_any_input_prefix(rng):
    dense = layers.SwitchableDense(4)
    dense.build((None, 10))
    x = rng.normal(size=(3, 6)).astype("float32")
    expected = x @ dense.kernel.numpy()[:6] + dense.bias.numpy()
    np.testing.assert_allclose(dense(x), expected, atol=1e-6)
    assert dense(rng.normal(size=(3, 10)).astype("float32")).shape == (3, 4)


@pytest.mark.parametrize("model_name", ["mobilenet_v1", "mobilenet_v2"])
def test_depthwise_kernels_start_at_the_reference_scale(model_name):
    """He-normal over PyTorch's fan-out of a depthwise weight, 9 * C (C the
    full channel count): std sqrt(2 / (9 C)); Keras's own fan-out (9) would
    be sqrt(C) times larger."""
    net = Supernet(model_name)
    depthwise = [
        layer
        for layer in net.switchable_layers
        if isinstance(layer, layers.SwitchableDepthwiseConv2D)
    ]
    assert len(depthwise) >= 13
    for layer in depthwise:
        kernel = layer.kernel.numpy()
        expected = np.sqrt(2.0 / (9 * kernel.shape[2]))
        assert abs(kernel.std() / expected - 1) < 0.15, (layer.name, kernel.std(), expected)


# -- padding --------------------------------------------------------------------
def _reference_conv(x, kernel, stride, depthwise):
    """PyTorch's ``Conv2d(k, stride, padding=(k - 1) // 2)`` in NumPy
    (float64): zeros on every side, then a strided cross-correlation."""
    k = kernel.shape[0]
    p = (k - 1) // 2
    x = np.pad(x.astype(np.float64), [(0, 0), (p, p), (p, p), (0, 0)])
    out = (x.shape[1] - k) // stride + 1
    y = np.zeros((x.shape[0], out, out, x.shape[3] if depthwise else kernel.shape[3]))
    for i in range(out):
        for j in range(out):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            if depthwise:
                y[:, i, j] = np.einsum("bhwc,hwc->bc", patch, kernel[..., 0])
            else:
                y[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return y


@pytest.mark.parametrize("depthwise, kernel_size", [(False, 3), (False, 1), (True, 3)])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("size", [7, 8])
def test_symmetric_padding_is_pytorchs(rng, depthwise, kernel_size, strides, size):
    """(k - 1) // 2 zeros on every side, at stride 1 and 2, odd and even
    inputs; TensorFlow's 'SAME' differs only at stride 2 on an even input
    (its extra row and column go to the bottom and right)."""
    if depthwise:
        layer = layers.SwitchableDepthwiseConv2D(kernel_size, strides, padding="symmetric")
    else:
        layer = layers.SwitchableConv2D(16, kernel_size, strides, padding="symmetric")
    layer.build((None, None, None, 12))
    x = _x(rng, 5, size=size)
    y = layer(x) if depthwise else layer(x, out_channels=7)
    kernel = layer.kernel.numpy()[:, :, :5, :] if depthwise else layer.kernel.numpy()[:, :, :5, :7]
    expected = _reference_conv(x, kernel, strides, depthwise)
    assert y.shape == expected.shape
    assert tuple(y.shape[1:3]) == layer.compute_output_shape((None, size, size, 5))[1:3]
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=0)
    same = layers.pad_input(x, kernel_size, "same")[1]
    conv = tf.nn.depthwise_conv2d if depthwise else tf.nn.conv2d
    tf_same = conv(x, kernel, (1, strides, strides, 1), same)
    differs = strides == 2 and size % 2 == 0 and kernel_size > 1
    assert np.allclose(tf_same, expected, atol=1e-5, rtol=0) != differs


@pytest.mark.parametrize("depthwise", [False, True])
def test_default_padding_is_tensorflows_same_bit_for_bit(rng, depthwise):
    """The default is the code path the layers had before padding was an
    argument: the same op on the same operands, so the same bits."""
    layer = (
        layers.SwitchableDepthwiseConv2D(3, 2) if depthwise else layers.SwitchableConv2D(8, 3, 2)
    )
    layer.build((None, None, None, 6))
    assert layer.padding == "same"
    x = _x(rng, 6, size=8)
    if depthwise:
        before = tf.nn.depthwise_conv2d(x, layer.kernel, (1, 2, 2, 1), padding="SAME")
    else:
        before = tf.nn.conv2d(x, layer.kernel, strides=2, padding="SAME")
    np.testing.assert_array_equal(layer(x), before)


def test_padding_in_the_config_and_refused_when_unknown():
    conv = layers.SwitchableConv2D(16, 3, strides=2, padding="symmetric", name="c")
    assert layers.SwitchableConv2D.from_config(conv.get_config()).padding == "symmetric"
    dw = layers.SwitchableDepthwiseConv2D(3, padding="symmetric")
    assert layers.SwitchableDepthwiseConv2D.from_config(dw.get_config()).padding == "symmetric"
    old = {k: v for k, v in conv.get_config().items() if k != "padding"}  # saved before padding
    assert layers.SwitchableConv2D.from_config(old).padding == "same"
    with pytest.raises(ValueError, match=r"padding='valid' is unknown; use one of \('same', 'symm"):
        layers.SwitchableConv2D(16, 3, padding="valid")
    with pytest.raises(ValueError, match="padding='SAME' is unknown"):
        layers.SwitchableDepthwiseConv2D(3, padding="SAME")
