"""One tier's inference graph on the supernet's shared weights, BN folded.

A tier's subnet is fixed, so its graph can be fully static: every kernel is
a static slice of the supernet's full-width variable and every batch norm is
folded into it, as `extraction.extract_subnet(fold_bn=True)` does with
copies. The per-tier part of a fold is tiny: a scale per output channel
(multiplied into the kernel) and a bias, kept as constants (a few KB a
tier). Each layer is then conv + bias + ReLU6, which Grappler fuses into
one oneDNN kernel exactly as for a standalone model; the supernet's own
forward (dynamic widths, BN as separate multiply and add passes) runs
1.3-2.4x slower (docs/serving_speed.md).

Where a tier's folded kernels come from:

* ``materialize=True``: computed once, when the SavedModel is loaded (an
  initializer of a `FoldedKernel` resource, run by TF Serving and by
  ``tf.saved_model.load`` after the variables are restored), and held in
  memory per tier. On disk the weights are stored once; in memory each tier
  costs what its standalone copy would; requests run at standalone speed.
* ``materialize=False``: folded inside every request (slice and scale each
  kernel the tier uses). Memory holds one copy of the weights whatever the
  number of tiers; each request pays for reading and scaling its kernels,
  which shows at batch 1 on small tiers.
"""

from __future__ import annotations

import dataclasses
import uuid

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context
from tensorflow.python.ops import gen_resource_variable_ops

from pss_keras.supernet import blocks, extraction
from pss_keras.supernet.layers import pad_input
from pss_keras.supernet.model import resize_to


class FoldedKernel(tf.saved_model.experimental.TrackableResource):
    """A float32 tensor computed from other variables when the model loads.

    A variable handle that is not in the checkpoint: its value is rebuilt by
    ``compute`` (a function of the shared variables) in the SavedModel's
    initializer, which loaders run after restoring the variables (as for a
    lookup table). Created eagerly, it is computed at once.

    No destructor: a restored model's signatures stay usable after the
    loaded object itself is dropped (``tf.saved_model.load(p).signatures``,
    as for its variables), at the price that `tf.saved_model.load` of the
    same model again and again in one Python process keeps each load's
    kernels (a tier's weights per load). A server that loads into a
    `tf.compat.v1.Session` (TF Serving, `model_server`) frees them with it.
    """

    def __init__(self, compute, shape, name: str):
        self._compute = compute
        self._shape = tf.TensorShape(shape)
        # Distinct per tier and layer (an empty name would make every kernel
        # of a graph one variable) and per export (defensive: TF 2.21's
        # loaders give each model its own resources anyway); in eager mode
        # the handle is anonymous.
        self._shared_name = f"pss_folded_{name}_{uuid.uuid4().hex}"
        super().__init__()
        if tf.executing_eagerly():
            self._initialize()

    def _create_resource(self):
        shared_name = context.anonymous_name() if tf.executing_eagerly() else self._shared_name
        return gen_resource_variable_ops.var_handle_op(
            dtype=tf.float32, shape=self._shape, shared_name=shared_name
        )

    def _initialize(self):
        return gen_resource_variable_ops.assign_variable_op(self.resource_handle, self._compute())

    def read(self):
        value = gen_resource_variable_ops.read_variable_op(self.resource_handle, tf.float32)
        return tf.ensure_shape(value, self._shape)


@dataclasses.dataclass(frozen=True)
class _Layer:
    spec: blocks.LayerSpec
    kernel: object  # the supernet's full-width variable
    slices: tuple  # static slice of it
    scale: np.ndarray | None  # BN scale per output channel (None: dense)
    bias: object  # folded BN bias (np) or the classifier's bias variable

    @property
    def shape(self) -> tf.TensorShape:
        """The folded kernel's static shape (the slice of the full one)."""
        full = self.kernel.shape.as_list()
        slices = tuple(self.slices) + (slice(None),) * (len(full) - len(self.slices))
        return tf.TensorShape([len(range(*s.indices(n))) for s, n in zip(slices, full)])

    def folded_kernel(self):
        kernel = tf.convert_to_tensor(self.kernel)[self.slices]
        if self.scale is None:
            return kernel
        if self.spec.kind == "depthwise":  # [k, k, c, 1]
            return kernel * self.scale[None, None, :, None]
        return kernel * self.scale


def _layers(supernet, config, bn_stats):
    """Per block: ``(residual, [_Layer])`` for ``config`` with BN folded."""
    widths = extraction.layer_widths(supernet, config)
    out = []
    for block in blocks.plan(config.model_name):
        layers = []
        for spec in block.layers:
            if spec.kind == "pool":
                layers.append(_Layer(spec, None, (), None, None))
                continue
            c_in, c_out = widths[spec.name]
            source = supernet.get_layer_by_name(spec.name)
            kernel = _tf_variable(source.kernel)
            if spec.kind == "dense":
                bias = _tf_variable(source.bias)
                layers.append(_Layer(spec, kernel, (slice(0, c_in),), None, bias))
                continue
            bn = supernet.get_layer_by_name(f"{spec.name}_bn")
            mean, variance = (np.asarray(s, np.float32) for s in bn_stats[f"{spec.name}_bn"])
            gamma, beta = bn.gamma.numpy()[:c_out], bn.beta.numpy()[:c_out]
            # The same float32 arithmetic as the standalone subnet's fold.
            scale, bias = extraction.bn_scale_bias(gamma, beta, mean, variance, supernet.bn_epsilon)
            c_last = slice(None) if spec.kind == "depthwise" else slice(0, c_out)
            slices = (slice(None), slice(None), slice(0, c_in), c_last)
            layers.append(_Layer(spec, kernel, slices, scale, bias))
        out.append((block.residual, layers))
    return out


class TierGraph(tf.Module):
    """``graph(x) -> logits`` of one subnet on the supernet's shared weights.

    Args:
        supernet: the trained supernet.
        config: the tier's subnet.
        bn_stats: its calibrated statistics ``{bn_layer: (mean, variance)}``.
        materialize: hold the folded kernels in memory (`FoldedKernel`s,
            computed at load) instead of folding in every call.
        name: the tier's name (names the resources).

    ``x``: normalized images [batch, h, w, 3] at any size; resized to the
    tier's resolution inside. The convs pad as the supernet's
    (``supernet.padding``) and the folds use its ``bn_epsilon``.
    """

    def __init__(self, supernet, config, bn_stats, materialize: bool, name: str):
        super().__init__(name=None)
        supernet.space.validate(config)
        bn_stats = extraction.checked_bn_stats(supernet, config, bn_stats)
        self.resolution = config.resolution
        self.padding = supernet.padding
        self._blocks = _layers(supernet, config, bn_stats)
        self.materialize = bool(materialize)
        # The supernet variables the graph (or its kernels) read: a saver
        # must track them (`export` adds them to its archive).
        layers = [layer for _, ls in self._blocks for layer in ls if layer.kernel is not None]
        self.sources = tuple(
            [layer.kernel for layer in layers]
            + [layer.bias for layer in layers if layer.spec.kind == "dense"]
        )
        self.kernels = {}
        if self.materialize:
            for _, layers in self._blocks:
                for layer in layers:
                    if layer.kernel is not None:
                        self.kernels[layer.spec.name] = FoldedKernel(
                            layer.folded_kernel, layer.shape, f"{name}_{layer.spec.name}"
                        )

    def _kernel(self, layer):
        if self.materialize:
            return self.kernels[layer.spec.name].read()
        return layer.folded_kernel()

    def __call__(self, x):
        x = resize_to(x, self.resolution)
        for residual, layers in self._blocks:
            shortcut = x
            for layer in layers:
                spec = layer.spec
                if spec.kind == "pool":
                    x = tf.reduce_mean(x, axis=(1, 2))
                    continue
                kernel = self._kernel(layer)
                if spec.kind == "dense":
                    x = tf.matmul(x, kernel) + tf.convert_to_tensor(layer.bias)
                    continue
                strides = (1, spec.stride, spec.stride, 1)
                x, padding = pad_input(x, spec.kernel, self.padding)
                if spec.kind == "depthwise":
                    x = tf.nn.depthwise_conv2d(x, kernel, strides, padding)
                else:
                    x = tf.nn.conv2d(x, kernel, strides, padding)
                x = tf.nn.bias_add(x, layer.bias)
                if spec.relu6:
                    x = tf.nn.relu6(x)
            if residual:
                x = x + shortcut
        return x


def _tf_variable(variable) -> tf.Variable:
    """The `tf.Variable` behind a Keras variable: what a graph captures, so
    what a saver must track for the loaded graph to find it restored."""
    value = variable.value if isinstance(variable, keras.Variable) else variable
    name = getattr(variable, "path", getattr(variable, "name", repr(variable)))
    if not isinstance(value, tf.Variable):
        raise TypeError(f"{name} is not backed by a tf.Variable ({type(value).__name__}).")
    if value.dtype != tf.float32:
        raise TypeError(
            f"{name} is {value.dtype.name}; shared-weight tiers need float32 variables "
            "(mixed precision keeps them float32), or export with mode='standalone'."
        )
    return value
