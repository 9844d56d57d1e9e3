"""MobileNetV1 / MobileNetV2 supernets built from the architecture plan in `blocks`.

A `Supernet` holds the full-width weights of every layer. Which subnet runs
is explicit state, set through one method (`Supernet.set_active_subnet`), or
passed per call as an int32 code (``subnet=``) so that a training step can run
several subnets in one traced graph. Either way the widths and the resolution
are tensors inside the graph: switching subnets never retraces.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from pss_keras.cost import flops
from pss_keras.supernet import blocks, layers, specs

BatchNormStats = dict[str, tuple[np.ndarray, np.ndarray]]


def resize_to(images, resolution):
    """Bilinear resize of square images to ``resolution`` (a tensor is fine).

    Corners are aligned, as in the reference implementation's
    ``interpolate(..., align_corners=True)``; a resize to the input's own size
    is the identity.
    """
    size = tf.stack([resolution, resolution])
    resized = tf.raw_ops.ResizeBilinear(images=images, size=size, align_corners=True)
    return tf.cast(resized, images.dtype)


def _width(spec, channels):
    """The switched output width of ``spec`` (a tensor), or None to keep it."""
    if not spec.switch_out:
        return None
    width = channels[spec.c_out.stage]
    return width if spec.c_out.factor == 1 else width * spec.c_out.factor


@keras.saving.register_keras_serializable(package="pss_keras")
class Supernet(keras.Model):
    """A width- and resolution-switchable MobileNet.

    Args:
        model_name: ``"mobilenet_v1"`` or ``"mobilenet_v2"``.
        num_classes: classifier outputs.
        width_scale: global width scale (1.0 is MobileNet; e.g. 0.25 for tiny
            test and quickstart models).
        resolution_range: (min, max) subnet input resolution.
        resolution_step: grid step of the resolution.
        width_range: (min, max) of each stage's width multiplier.
        bn_epsilon: batch-norm epsilon (1e-3, as in keras.applications;
            the official PSS-Net's PyTorch supernets use 1e-5).
        padding: how every conv pads its input: ``"same"`` (TensorFlow's,
            as keras.applications) or ``"symmetric"`` (``(k - 1) // 2`` on
            every side, as the official PSS-Net's PyTorch convs); see
            `blocks.PADDINGS`.
        **kwargs: forwarded to `keras.Model` (e.g. ``name``).

    Call args:
        inputs: float images [batch, h, w, 3], already normalized, of any
            square size: they are resized to the subnet's resolution.
        training: batch statistics in batch norm when true.
        subnet: optional subnet to run instead of the active one: a
            `SubnetConfig` of this space or an int32 code from
            ``space.encode`` (which may be a graph tensor).
        bn_stats: optional ``{bn_layer_name: (mean, variance)}`` for the
            running subnet, used at inference instead of the stored moving
            statistics.

    Returns:
        Logits [batch, num_classes].
    """

    def __init__(
        self,
        model_name="mobilenet_v1",
        num_classes=1000,
        width_scale=1.0,
        resolution_range=(128, 224),
        resolution_step=8,
        width_range=(0.75, 1.0),
        bn_epsilon=1e-3,
        padding="same",
        **kwargs,
    ):
        kwargs.setdefault("name", f"{model_name}_supernet")
        super().__init__(**kwargs)
        self.model_name = model_name
        self.num_classes = int(num_classes)
        self.width_scale = float(width_scale)
        self.resolution_range = tuple(int(r) for r in resolution_range)
        self.resolution_step = int(resolution_step)
        self.width_range = tuple(float(w) for w in width_range)
        self.bn_epsilon = float(bn_epsilon)
        blocks.explicit_pad(padding, 3)  # an unknown padding fails here, naming the known
        self.padding = padding
        self.space = specs.SearchSpace(
            model_name=model_name,
            resolution_range=self.resolution_range,
            resolution_step=self.resolution_step,
            width_range=self.width_range,
            width_scale=self.width_scale,
            num_classes=self.num_classes,
        )

        # One weight layer (plus its batch norm) per layer of the plan, built at
        # full width so that every weight exists from the start.
        self._layers_by_name = {}
        largest = self.space.largest()
        channels = blocks.stage_channels(largest, self.width_scale)
        for spec, _, _, c_in, c_out in blocks.walk(
            model_name, largest.resolution, channels, self.num_classes
        ):
            if spec.kind != "pool":
                self._make_layer(spec, c_in, c_out)
        # Attribute tracking keeps the layers (and so the weights) in a stable
        # order: the plan's order.
        self.switchable_layers = list(self._layers_by_name.values())

        self.active_subnet_code = self.add_weight(
            name="active_subnet",
            shape=(1 + self.space.num_stages,),
            dtype="int32",
            initializer=keras.initializers.Constant(self.space.encode(self.space.largest())),
            trainable=False,
        )
        self._active = (self.space.largest(), self.space.encode(self.space.largest()))
        self.built = True

    def _make_layer(self, spec, c_in, c_out):
        """Creates and builds the full-width layer of ``spec``, then its BN."""
        if spec.kind == "conv":
            layer = layers.SwitchableConv2D(
                c_out, spec.kernel, strides=spec.stride, padding=self.padding, name=spec.name
            )
        elif spec.kind == "depthwise":
            layer = layers.SwitchableDepthwiseConv2D(
                spec.kernel, strides=spec.stride, padding=self.padding, name=spec.name
            )
        else:
            layer = layers.SwitchableDense(
                c_out,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                name=spec.name,
            )
        layer.build((None, None, None, c_in) if spec.kind != "dense" else (None, c_in))
        self._layers_by_name[spec.name] = layer
        if spec.kind != "dense":
            bn = layers.SwitchableBatchNormalization(
                epsilon=self.bn_epsilon, name=f"{spec.name}_bn"
            )
            bn.build((None, None, None, c_out))
            self._layers_by_name[bn.name] = bn

    # ------------------------------------------------------------------
    # The active subnet.

    def set_active_subnet(self, subnet):
        """Makes ``subnet`` (a `SubnetConfig` of this space, or its int32
        code) the one that runs when no ``subnet=`` is passed to the call.

        Raises:
            ValueError: if the config does not belong to this supernet's
                search space (naming the offending field).
        """
        if isinstance(subnet, specs.SubnetConfig):
            code = self.space.encode(subnet)
            self.active_subnet_code.assign(code)
            self._active = (subnet, code)
        else:
            self.active_subnet_code.assign(tf.cast(subnet, tf.int32))
            self._active = None

    @property
    def active_subnet(self) -> specs.SubnetConfig | None:
        """The active `SubnetConfig`, or None when it is only known as a code
        (set from a raw code, or restored from a checkpoint)."""
        if self._active is None:
            return None
        config, code = self._active
        return config if np.array_equal(self.active_subnet_code.numpy(), code) else None

    def _code(self, subnet):
        if subnet is None:
            return tf.convert_to_tensor(self.active_subnet_code)
        if isinstance(subnet, specs.SubnetConfig):
            return tf.constant(self.space.encode(subnet))
        return tf.cast(subnet, tf.int32)

    # ------------------------------------------------------------------
    # Forward pass.

    def _conv_bn(self, x, name, training, bn_stats, moments, out_channels=None, relu=True):
        layer = self._layers_by_name[name]
        x = layer(x) if out_channels is None else layer(x, out_channels=out_channels)
        bn_name = f"{name}_bn"
        stats = None if bn_stats is None else bn_stats.get(bn_name)
        bn = self._layers_by_name[bn_name]
        if moments is None:
            x = bn(x, training=training, stats=stats)
        else:
            x, moments[bn_name] = bn(x, training=training, stats=stats, return_moments=True)
        return tf.nn.relu6(x) if relu else x

    def call(self, inputs, training=False, subnet=None, bn_stats=None):
        return self._forward(inputs, training, subnet, bn_stats, None)

    def bn_moments(self, inputs, subnet=None):
        """Batch moments of every batch norm when ``subnet`` runs on ``inputs``.

        Returns:
            ``{bn_layer_name: (mean, variance)}`` of the batch (training-mode
            forward pass, no weights change). Post-BN calibration averages
            these over a few training batches.
        """
        moments = {}
        self._forward(inputs, True, subnet, None, moments)
        return moments

    def _forward(self, inputs, training, subnet, bn_stats, moments):
        code = self._code(subnet)
        resolution, channels = code[0], code[1:]
        x = resize_to(inputs, resolution)
        conv_bn = functools.partial(
            self._conv_bn, training=training, bn_stats=bn_stats, moments=moments
        )
        for block in blocks.plan(self.model_name):
            shortcut = x
            for spec in block.layers:
                if spec.kind == "pool":
                    x = keras.ops.mean(x, axis=(1, 2))
                elif spec.kind == "dense":
                    x = self._layers_by_name[spec.name](x)
                else:
                    x = conv_bn(x, spec.name, out_channels=_width(spec, channels), relu=spec.relu6)
            if block.residual:
                x = x + shortcut
        # Logits in float32 whatever the compute dtype (softmax, CE and KL
        # under mixed precision; a no-op otherwise).
        return tf.cast(x, tf.float32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    # ------------------------------------------------------------------
    # Batch-norm statistics per subnet.

    def get_layer_by_name(self, name):
        """The switchable layer called ``name`` (e.g. ``block_3_depthwise_bn``)."""
        try:
            return self._layers_by_name[name]
        except KeyError:
            raise ValueError(
                f"No layer named {name!r} in this supernet; layers are "
                f"{list(self._layers_by_name)}."
            ) from None

    def bn_channels(self, config: specs.SubnetConfig) -> dict[str, int]:
        """Width of every batch-norm layer when ``config`` runs."""
        return {
            f"{row.name}_bn": row.c_out
            for row in flops.profile(config, self.num_classes, self.width_scale)
            if row.kind in ("conv", "depthwise")
        }

    def get_bn_stats(self, config: specs.SubnetConfig | None = None) -> BatchNormStats:
        """The stored moving statistics sliced to ``config`` (default: active)."""
        config = self._require_config(config)
        out = {}
        for name, c in self.bn_channels(config).items():
            bn = self._layers_by_name[name]
            out[name] = (
                np.asarray(bn.moving_mean.numpy()[:c]),
                np.asarray(bn.moving_variance.numpy()[:c]),
            )
        return out

    def set_bn_stats(self, bn_stats: BatchNormStats) -> None:
        """Writes per-subnet statistics into the first channels of the moving
        statistics (the channels beyond them are left as they are)."""
        for name, (mean, variance) in bn_stats.items():
            bn = self.get_layer_by_name(name)
            c = int(np.shape(mean)[0])
            if np.shape(variance) != (c,) or c > bn.moving_mean.shape[0]:
                raise ValueError(
                    f"bn_stats[{name!r}] has shapes {np.shape(mean)} / {np.shape(variance)}; "
                    f"expected two vectors of equal length <= {bn.moving_mean.shape[0]}."
                )
            bn.moving_mean.assign(
                np.concatenate([np.asarray(mean, np.float32), bn.moving_mean.numpy()[c:]])
            )
            bn.moving_variance.assign(
                np.concatenate([np.asarray(variance, np.float32), bn.moving_variance.numpy()[c:]])
            )

    def _require_config(self, config):
        config = config if config is not None else self.active_subnet
        if config is None:
            raise ValueError(
                "The active subnet is only known as a code (set from a raw code or restored "
                "from a checkpoint); pass the SubnetConfig explicitly."
            )
        return self.space.validate(config)

    def get_config(self):
        config = super().get_config()
        config.update(
            model_name=self.model_name,
            num_classes=self.num_classes,
            width_scale=self.width_scale,
            resolution_range=list(self.resolution_range),
            resolution_step=self.resolution_step,
            width_range=list(self.width_range),
            bn_epsilon=self.bn_epsilon,
            padding=self.padding,
        )
        return config


def build_supernet(model_name="mobilenet_v1", **kwargs) -> Supernet:
    """Builds a `Supernet`; see its arguments."""
    return Supernet(model_name=model_name, **kwargs)
