"""Standalone subnets: a plain Keras functional model per subnet config.

`extract_subnet` slices the supernet's weights to one config and builds an
ordinary `keras.Model` of exactly that shape (Conv2D, DepthwiseConv2D,
BatchNormalization or BN folded into the convs, Dense), with a fixed input
resolution. It is what TFLite conversion and the standalone export use.
The supernet's padding and batch-norm epsilon carry over: a
``"symmetric"``-padded conv is a ZeroPadding2D and a "valid" conv (which
every converter and tfmot take), a 'same' one a "same" conv.

The same code builds the model with Keras 3 (default) or, for
quantization-aware training with tensorflow-model-optimization, with tf_keras
(``keras_module=tf_keras``): both have the same layer API.
"""

from __future__ import annotations

import keras
import numpy as np

from pss_keras.data.preprocessing import MEAN_RGB, STDDEV_RGB
from pss_keras.supernet import blocks, specs
from pss_keras.supernet.model import BatchNormStats, Supernet


def bn_scale_bias(gamma, beta, mean, variance, epsilon):
    """Inference batch norm as ``x * scale + bias`` (what folding multiplies
    into a kernel and adds after it): float32 ``(scale, bias)``."""
    scale = gamma / np.sqrt(variance + epsilon)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _fold(kernel, gamma, beta, mean, variance, epsilon, depthwise):
    scale, bias = bn_scale_bias(gamma, beta, mean, variance, epsilon)
    if depthwise:  # [k, k, c, 1]
        kernel = kernel * scale[None, None, :, None]
    else:  # [k, k, c_in, c_out]
        kernel = kernel * scale
    return kernel.astype(np.float32), bias


def extract_subnet(
    supernet: Supernet,
    config: specs.SubnetConfig,
    bn_stats: BatchNormStats | None = None,
    fold_bn: bool = False,
    name: str | None = None,
    pixel_input: bool = False,
    keras_module=keras,
) -> keras.Model:
    """Builds the standalone Keras model of one subnet.

    Args:
        supernet: the trained supernet.
        config: a subnet of ``supernet.space``.
        bn_stats: ``{bn_layer_name: (mean, variance)}`` for this subnet, as
            computed by post-BN calibration; ``None`` uses the supernet's
            stored moving statistics sliced to the subnet's widths.
        fold_bn: fold each batch norm into the preceding conv (conv gets a
            bias; no BatchNormalization layers). Faster, and what TFLite
            would do anyway.
        name: model name (default: the config's name, sanitized).
        pixel_input: the model takes RGB pixel values in [0, 255] and its
            first layer (``normalize``, a 1x1 depthwise convolution with
            bias, which every converter and tfmot support) applies the
            ImageNet mean/std normalization. For TFLite, where the app feeds
            camera pixels.
        keras_module: ``keras`` (Keras 3) or ``tf_keras``.

    Returns:
        A functional model taking float images
        [batch, resolution, resolution, 3] (normalized as for the supernet,
        or pixels with ``pixel_input``) and returning logits
        [batch, num_classes]. Its outputs equal the supernet's with
        ``config`` active and the same statistics.

    Raises:
        ValueError: if ``config`` is not in the supernet's space or
            ``bn_stats`` misses a layer or has the wrong widths.
    """
    supernet.space.validate(config)
    bn_stats = checked_bn_stats(supernet, config, bn_stats)
    K = keras_module
    widths = layer_widths(supernet, config)
    inputs = K.Input((config.resolution, config.resolution, 3), name="images")
    x = _pixel_normalization(K, inputs) if pixel_input else inputs
    for block in blocks.plan(config.model_name):
        shortcut = x
        for spec in block.layers:
            c_in, c_out = widths[spec.name]
            if spec.kind == "pool":
                x = K.layers.GlobalAveragePooling2D(name=spec.name)(x)
            elif spec.kind == "dense":
                x = _classifier(K, x, supernet, spec, c_in)
            else:
                x = _conv_bn(K, x, supernet, spec, c_in, c_out, bn_stats, fold_bn)
        if block.residual:
            x = K.layers.Add(name=f"{block.name}_add")([shortcut, x])
    model_name = name or config.name.replace(",", "_").replace(".", "p")
    return K.Model(inputs, x, name=model_name)


def layer_widths(supernet, config):
    """``{layer_name: (c_in, c_out)}`` of every layer of the plan in ``config``."""
    channels = blocks.stage_channels(config, supernet.width_scale)
    rows = blocks.walk(config.model_name, config.resolution, channels, supernet.num_classes)
    return {spec.name: (c_in, c_out) for spec, _, _, c_in, c_out in rows}


def checked_bn_stats(supernet, config, bn_stats):
    """``bn_stats``, or the supernet's sliced to ``config``; checks the widths."""
    widths = supernet.bn_channels(config)
    if bn_stats is None:
        bn_stats = supernet.get_bn_stats(config)
    missing = sorted(set(widths) - set(bn_stats))
    if missing:
        raise ValueError(
            f"bn_stats has no statistics for {missing[:3]}{'...' if len(missing) > 3 else ''}."
        )
    for bn_name, c in widths.items():
        shapes = tuple(np.shape(s) for s in bn_stats[bn_name])
        if shapes != ((c,), (c,)):
            raise ValueError(
                f"bn_stats[{bn_name!r}] has shapes {shapes}; subnet {config} needs ({c},) each."
            )
    return bn_stats


def _pixel_normalization(K, x):
    """A 1x1 depthwise conv with bias that maps pixels to normalized inputs."""
    # (x / 255 - mean) / std  ==  x * (1 / (255 std)) - mean / std
    scale = 1.0 / (255.0 * np.asarray(STDDEV_RGB, np.float64))
    offset = -np.asarray(MEAN_RGB, np.float64) / np.asarray(STDDEV_RGB, np.float64)
    normalize = K.layers.DepthwiseConv2D(1, use_bias=True, name="normalize")
    x = normalize(x)
    normalize.set_weights([scale.reshape(1, 1, 3, 1).astype(np.float32), offset.astype(np.float32)])
    return x


def _conv_bn(K, x, supernet, spec, c_in, c_out, bn_stats, fold_bn):
    """The conv of ``spec`` sliced to (c_in, c_out), its BN (or folded), ReLU6."""
    source = supernet.get_layer_by_name(spec.name)
    bn = supernet.get_layer_by_name(f"{spec.name}_bn")
    depthwise = spec.kind == "depthwise"
    if depthwise:
        kernel = source.kernel.numpy()[:, :, :c_in, :]
    else:
        kernel = source.kernel.numpy()[:, :, :c_in, :c_out]
    gamma, beta = bn.gamma.numpy()[:c_out], bn.beta.numpy()[:c_out]
    mean, variance = (np.asarray(s, np.float32) for s in bn_stats[f"{spec.name}_bn"])
    x, padding = keras_padding(K, x, spec, supernet.padding)
    common = dict(kernel_size=spec.kernel, strides=spec.stride, padding=padding, name=spec.name)
    if depthwise:
        layer = K.layers.DepthwiseConv2D(use_bias=bool(fold_bn), **common)
    else:
        layer = K.layers.Conv2D(c_out, use_bias=bool(fold_bn), **common)
    x = layer(x)
    if fold_bn:
        eps = supernet.bn_epsilon
        layer.set_weights(list(_fold(kernel, gamma, beta, mean, variance, eps, depthwise)))
    else:
        layer.set_weights([kernel])
        bn_layer = K.layers.BatchNormalization(epsilon=supernet.bn_epsilon, name=f"{spec.name}_bn")
        x = bn_layer(x)
        bn_layer.set_weights([gamma, beta, mean, variance])
    if spec.relu6:
        x = K.layers.ReLU(max_value=6.0, name=f"{spec.name}_relu")(x)
    return x


def keras_padding(K, x, spec, padding):
    """``(x, keras_padding)`` for the conv of ``spec`` under ``padding`` (one
    of `blocks.PADDINGS`): ``x`` and ``"same"``, or ``x`` through a
    ZeroPadding2D of ``(k - 1) // 2`` (named ``<layer>_pad``) and
    ``"valid"``."""
    pad = blocks.explicit_pad(padding, spec.kernel)
    if pad is None:
        return x, "same"
    if pad:
        x = K.layers.ZeroPadding2D(pad, name=f"{spec.name}_pad")(x)
    return x, "valid"


def _classifier(K, x, supernet, spec, c_in):
    """The classifier's Dense layer with the first ``c_in`` input rows."""
    dense = K.layers.Dense(supernet.num_classes, name=spec.name)
    x = dense(x)
    source = supernet.get_layer_by_name(spec.name)
    dense.set_weights([source.kernel.numpy()[:c_in], source.bias.numpy()])
    return x
