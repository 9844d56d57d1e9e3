"""Width-switchable Keras layers.

Each layer holds the full-width weights and computes with the first ``k``
channels, where ``k`` comes from the input tensor's (dynamic) channel count
and, for the output side, from an ``out_channels`` call argument that may be a
scalar tensor. The weights are *sliced* (``kernel[..., :c_in, :c_out]``), not
masked, so a smaller subnet does proportionally less work, and because the
widths are tensors one traced graph serves every subnet.

These layers need the TensorFlow backend: they rely on convolutions whose
channel count is only known at run time, which TensorFlow supports on CPU and
GPU (not under XLA's static shapes: train them with ``jit_compile=False``).
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf

from pss_keras.supernet import blocks


def _channels(x):
    return tf.shape(x)[-1]


def pad_input(inputs, kernel_size: int, padding: str):
    """``(inputs, tf_padding)`` for a conv of ``kernel_size`` under
    ``padding`` (one of `blocks.PADDINGS`): the input as it is and
    ``"SAME"``, or, for ``"symmetric"``, the input zero-padded by
    ``(k - 1) // 2`` on every side and ``"VALID"`` (a `tf.pad`, which every
    device and converter runs).
    """
    pad = blocks.explicit_pad(padding, kernel_size)
    if pad is None:
        return inputs, "SAME"
    if pad:
        inputs = tf.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return inputs, "VALID"


def conv_kernel_initializer():
    """He-normal over fan-out, the reference's conv initialization."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def depthwise_kernel_initializer(kernel_size: int, channels: int):
    """He-normal over the reference's fan-out for a depthwise kernel.

    PyTorch counts a depthwise weight [C, 1, k, k] as fan_out = C * k * k
    (std sqrt(2 / (9 C)) for 3x3); Keras's VarianceScaling reads the
    [k, k, C, 1] kernel as fan_out = k * k, sqrt(C) times larger (5.7x at 32
    channels, 32x at 1024), which BN hides in the forward pass but which
    lowers the depthwise filters' effective learning rate by about C.
    """
    return keras.initializers.RandomNormal(
        stddev=math.sqrt(2.0 / (kernel_size * kernel_size * channels))
    )


@keras.saving.register_keras_serializable(package="pss_keras")
class SwitchableConv2D(keras.layers.Layer):
    """A 2D convolution over the first channels of its weights.

    Args:
        filters: maximum number of output channels (the kernel's width).
        kernel_size: square kernel size.
        strides: square stride.
        padding: ``"same"`` (TensorFlow's) or ``"symmetric"`` (``(k - 1) // 2``
            on every side, as PyTorch pads); see `blocks.PADDINGS`.
        use_bias: whether to add a (sliced) bias.
        kernel_initializer: initializer of the full kernel.
        **kwargs: forwarded to `keras.layers.Layer` (e.g. ``name``).

    Call args:
        inputs: [batch, h, w, c_in] with ``c_in`` up to the built input width.
        out_channels: number of output channels to compute (int or int32
            scalar tensor); ``None`` computes all ``filters``.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        use_bias=False,
        kernel_initializer=None,
        padding="same",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.use_bias = bool(use_bias)
        blocks.explicit_pad(padding, self.kernel_size)  # a bad one fails here
        self.padding = padding
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or conv_kernel_initializer()
        )

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, in_channels, self.filters),
            initializer=self.kernel_initializer,
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
            if self.use_bias
            else None
        )

    def compute_output_shape(self, input_shape):
        size = input_shape[1]
        out = None if size is None else (size - 1) // self.strides + 1
        return (input_shape[0], out, out, self.filters)

    def call(self, inputs, out_channels=None):
        out_channels = self.filters if out_channels is None else out_channels
        kernel = self.kernel[:, :, : _channels(inputs), :out_channels]
        inputs, padding = pad_input(inputs, self.kernel_size, self.padding)
        outputs = tf.nn.conv2d(inputs, kernel, strides=self.strides, padding=padding)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias[:out_channels])
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            padding=self.padding,
        )
        return config


@keras.saving.register_keras_serializable(package="pss_keras")
class SwitchableDepthwiseConv2D(keras.layers.Layer):
    """A depthwise conv whose width follows its input's.

    The kernel has the Keras `DepthwiseConv2D` layout
    [k, k, max_channels, 1]; a c-channel input uses its first c slices.
    ``padding`` is as `SwitchableConv2D`'s.
    """

    def __init__(self, kernel_size, strides=1, kernel_initializer=None, padding="same", **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        blocks.explicit_pad(padding, self.kernel_size)  # a bad one fails here
        self.padding = padding
        # None: the reference's He-normal over fan-out, set in build().
        self.kernel_initializer = (
            None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        )

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, channels, 1),
            initializer=self.kernel_initializer
            or depthwise_kernel_initializer(self.kernel_size, channels),
        )

    def compute_output_shape(self, input_shape):
        size = input_shape[1]
        out = None if size is None else (size - 1) // self.strides + 1
        return (input_shape[0], out, out, input_shape[-1])

    def call(self, inputs):
        kernel = self.kernel[:, :, : _channels(inputs), :]
        inputs, padding = pad_input(inputs, self.kernel_size, self.padding)
        return tf.nn.depthwise_conv2d(
            inputs, kernel, strides=(1, self.strides, self.strides, 1), padding=padding
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_size=self.kernel_size,
            strides=self.strides,
            kernel_initializer=None
            if self.kernel_initializer is None
            else keras.initializers.serialize(self.kernel_initializer),
            padding=self.padding,
        )
        return config


@keras.saving.register_keras_serializable(package="pss_keras")
class SwitchableBatchNormalization(keras.layers.Layer):
    """Batch norm with shared, sliced affine parameters.

    In training it normalizes with the batch statistics only (as PSS-Net
    does: the running statistics of a supernet are meaningless because every
    step mixes subnets). At inference it uses ``moving_mean`` /
    ``moving_variance`` sliced to the active width, unless statistics for the
    active subnet are passed in the call: post-BN calibration computes them
    per subnet, and an export bakes each subnet's own statistics into its
    signature while sharing the affine parameters.

    Call args:
        inputs: [..., c] with ``c`` up to the built width.
        training: batch statistics when true.
        stats: optional ``(mean, variance)`` of length ``c`` to use at
            inference instead of the stored moving statistics.
        return_moments: also return the ``(mean, variance)`` used (the batch
            moments in training); post-BN calibration averages them.
    """

    def __init__(self, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        # Never autocast: under mixed precision BN computes in float32.
        add = functools.partial(self.add_weight, shape=(channels,), autocast=False)
        self.gamma = add(name="gamma", initializer="ones")
        self.beta = add(name="beta", initializer="zeros")
        self.moving_mean = add(name="moving_mean", initializer="zeros", trainable=False)
        self.moving_variance = add(name="moving_variance", initializer="ones", trainable=False)

    def compute_output_shape(self, input_shape):
        return input_shape

    def batch_moments(self, inputs):
        """Mean and (biased) variance of ``inputs`` over all but the last axis."""
        axes = list(range(len(inputs.shape) - 1))
        return keras.ops.moments(inputs, axes=axes)

    def call(self, inputs, training=False, stats=None, return_moments=False):
        c = _channels(inputs)
        # Moments and normalization in float32 (float16/bfloat16 batch
        # moments lose precision and overflow); the output in the layer's
        # compute dtype. No-ops under the default float32 policy.
        compute_dtype = inputs.dtype
        inputs = tf.cast(inputs, tf.float32)
        if training:
            mean, variance = self.batch_moments(inputs)
        elif stats is not None:
            mean, variance = stats
        else:
            mean, variance = self.moving_mean[:c], self.moving_variance[:c]
        outputs = keras.ops.batch_normalization(
            inputs,
            mean,
            variance,
            axis=-1,
            offset=self.beta[:c],
            scale=self.gamma[:c],
            epsilon=self.epsilon,
        )
        outputs = tf.cast(outputs, compute_dtype)
        return (outputs, (mean, variance)) if return_moments else outputs

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="pss_keras")
class SwitchableDense(keras.layers.Dense):
    """A dense layer whose input width may be any prefix of the built one.

    The output width is fixed (the classes). Weights keep the names and
    layout of `keras.layers.Dense`.
    """

    def build(self, input_shape):
        super().build(input_shape)
        # Dense pins its input width; ours may be any prefix of it.
        self.input_spec = None

    def call(self, inputs):
        kernel = self.kernel[: _channels(inputs), :]
        outputs = tf.matmul(inputs, kernel)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return outputs
