"""Standalone subnets: a plain Keras functional model per subnet config.

`extract_subnet` slices the supernet's weights to one config and builds an
ordinary `keras.Model` of exactly that shape (Conv2D, DepthwiseConv2D,
BatchNormalization or BN folded into the convs, Dense), with a fixed input
resolution. It is what TFLite conversion and the standalone export use.

The same code builds the model with Keras 3 (default) or, for
quantization-aware training with tensorflow-model-optimization, with tf_keras
(``keras_module=tf_keras``): both have the same layer API.
"""

from __future__ import annotations

import keras
import numpy as np

from pss_keras import flops, specs
from pss_keras.data import MEAN_RGB, STDDEV_RGB
from pss_keras.supernet import BatchNormStats, Supernet


def _fold(kernel, gamma, beta, mean, variance, epsilon, depthwise):
    scale = gamma / np.sqrt(variance + epsilon)
    if depthwise:  # [k, k, c, 1]
        kernel = kernel * scale[None, None, :, None]
    else:  # [k, k, c_in, c_out]
        kernel = kernel * scale
    return kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)


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

    K = keras_module
    arch = supernet.arch
    eps = supernet.bn_epsilon
    rows = {
        row.name: row for row in flops.profile(config, supernet.num_classes, supernet.width_scale)
    }

    def conv_bn(x, layer_name, relu=True):
        row = rows[layer_name]
        source = supernet.get_layer_by_name(layer_name)
        bn = supernet.get_layer_by_name(f"{layer_name}_bn")
        depthwise = row.kind == "depthwise"
        if depthwise:
            kernel = source.kernel.numpy()[:, :, : row.c_in, :]
        else:
            kernel = source.kernel.numpy()[:, :, : row.c_in, : row.c_out]
        c = row.c_out
        gamma, beta = bn.gamma.numpy()[:c], bn.beta.numpy()[:c]
        mean, variance = (np.asarray(s, np.float32) for s in bn_stats[f"{layer_name}_bn"])
        common = dict(kernel_size=row.kernel, strides=row.stride, padding="same", name=layer_name)
        if fold_bn:
            kernel, bias = _fold(kernel, gamma, beta, mean, variance, eps, depthwise)
            if depthwise:
                layer = K.layers.DepthwiseConv2D(use_bias=True, **common)
            else:
                layer = K.layers.Conv2D(row.c_out, use_bias=True, **common)
            x = layer(x)
            layer.set_weights([kernel, bias])
        else:
            if depthwise:
                layer = K.layers.DepthwiseConv2D(use_bias=False, **common)
            else:
                layer = K.layers.Conv2D(row.c_out, use_bias=False, **common)
            x = layer(x)
            layer.set_weights([kernel])
            bn_layer = K.layers.BatchNormalization(epsilon=eps, name=f"{layer_name}_bn")
            x = bn_layer(x)
            bn_layer.set_weights([gamma, beta, mean, variance])
        if relu:
            x = K.layers.ReLU(max_value=6.0, name=f"{layer_name}_relu")(x)
        return x

    inputs = K.Input((config.resolution, config.resolution, 3), name="images")
    x = inputs
    if pixel_input:
        # (x / 255 - mean) / std  ==  x * (1 / (255 std)) - mean / std
        scale = 1.0 / (255.0 * np.asarray(STDDEV_RGB, np.float64))
        offset = -np.asarray(MEAN_RGB, np.float64) / np.asarray(STDDEV_RGB, np.float64)
        normalize = K.layers.DepthwiseConv2D(1, use_bias=True, name="normalize")
        x = normalize(x)
        normalize.set_weights(
            [scale.reshape(1, 1, 3, 1).astype(np.float32), offset.astype(np.float32)]
        )
    x = conv_bn(x, "stem_conv")
    in_stage = 0
    for i, block in enumerate(arch.blocks, start=1):
        if isinstance(block, specs.DepthwiseSeparableSpec):
            x = conv_bn(x, f"block_{i}_depthwise")
            x = conv_bn(x, f"block_{i}_pointwise")
        else:
            shortcut = x
            if block.expansion != 1:
                x = conv_bn(x, f"block_{i}_expand")
            x = conv_bn(x, f"block_{i}_depthwise")
            x = conv_bn(x, f"block_{i}_project", relu=False)
            if block.stride == 1 and block.out_stage == in_stage:
                x = K.layers.Add(name=f"block_{i}_add")([shortcut, x])
        in_stage = block.out_stage
    if arch.head_stage is not None:
        x = conv_bn(x, "head_conv")
    x = K.layers.GlobalAveragePooling2D(name="pool")(x)
    row = rows["classifier"]
    dense = K.layers.Dense(supernet.num_classes, name="classifier")
    outputs = dense(x)
    source = supernet.get_layer_by_name("classifier")
    dense.set_weights([source.kernel.numpy()[: row.c_in], source.bias.numpy()])
    model_name = name or config.name.replace(",", "_").replace(".", "p")
    return K.Model(inputs, outputs, name=model_name)
