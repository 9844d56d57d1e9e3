"""The architecture plan: which layers a MobileNet subnet has, as data.

MobileNetV1 and MobileNetV2 are written here once, as the paper's compact
tables (`ARCH_SPECS`: base channels per stage and one row per block), and one
builder, `plan`, expands a table into typed blocks and layers: kernel,
stride, expansion, residual and the channels of every layer in terms of the
subnet's stage channels. Every part of the package that needs the structure
iterates this plan instead of restating it: the FLOPs and parameter counter
(`walk`), the supernet's layers and forward pass, `extract_subnet` and the
keras.applications weight import.

Stage 0 is the stem conv (3x3, stride 2). Each block writes the channels of
its ``out_stage``. Channel counts are ``make_divisible(base * width_scale *
mult)``.

Pure Python and NumPy (no TensorFlow): the sampler counts FLOPs of millions of
configs through `walk`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to the nearest multiple of ``divisor``.

    Never returns less than ``min_value`` (default ``divisor``) nor less than
    90% of ``value``: the MobileNet convention the method uses.
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def make_divisible_np(values: np.ndarray, divisor: int = 8) -> np.ndarray:
    """Vectorized `make_divisible` over an array of values (int64 result)."""
    values = np.asarray(values, dtype=np.float64)
    rounded = np.maximum(divisor, np.floor(values + divisor / 2) // divisor * divisor)
    rounded = np.where(rounded < 0.9 * values, rounded + divisor, rounded)
    return rounded.astype(np.int64)


# --------------------------------------------------------------------------
# The paper's tables.


@dataclasses.dataclass(frozen=True)
class DepthwiseSeparableSpec:
    """MobileNetV1 table row: 3x3 depthwise (keeps width) then 1x1 pointwise."""

    stride: int
    out_stage: int


@dataclasses.dataclass(frozen=True)
class InvertedResidualSpec:
    """MobileNetV2 table row: [1x1 expand], 3x3 depthwise, 1x1 linear project."""

    expansion: int
    stride: int
    out_stage: int


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One architecture: base channels per stage and the block table.

    ``head_stage`` (MobileNetV2's 1x1 conv to 1280) is a stage whose width
    never switches: the reference keeps it at full width, so its multiplier
    has no effect.
    """

    name: str
    base_channels: tuple[int, ...]
    blocks: tuple[DepthwiseSeparableSpec | InvertedResidualSpec, ...]
    head_stage: int | None = None

    @property
    def num_stages(self) -> int:
        return len(self.base_channels)


def _mbv1_blocks():
    # The stride of each of the 13 depthwise-separable blocks; block i writes stage i.
    strides = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
    return tuple(DepthwiseSeparableSpec(s, i + 1) for i, s in enumerate(strides))


def _mbv2_blocks():
    # (expansion t, first stride s, repeats n) per stage, as in the paper.
    table = ((1, 1, 1), (6, 2, 2), (6, 2, 3), (6, 2, 4), (6, 1, 3), (6, 2, 3), (6, 1, 1))
    blocks = []
    for stage, (t, s, n) in enumerate(table, start=1):
        for i in range(n):
            blocks.append(InvertedResidualSpec(t, s if i == 0 else 1, stage))
    return tuple(blocks)


ARCH_SPECS = {
    "mobilenet_v1": ArchSpec(
        name="mobilenet_v1",
        base_channels=(32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024),
        blocks=_mbv1_blocks(),
    ),
    "mobilenet_v2": ArchSpec(
        name="mobilenet_v2",
        base_channels=(32, 16, 24, 32, 64, 96, 160, 320, 1280),
        blocks=_mbv2_blocks(),
        head_stage=8,
    ),
}


def stage_channels(config, width_scale: float = 1.0) -> tuple[int, ...]:
    """Channel count of every stage of ``config`` (a `specs.SubnetConfig`).

    ``make_divisible(base * width_scale * mult, 8)``; the head stage of
    MobileNetV2 keeps its full width whatever its multiplier (as in the
    reference implementation).
    """
    arch = ARCH_SPECS[config.model_name]
    channels = []
    for stage, (base, mult) in enumerate(zip(arch.base_channels, config.stage_width_mults)):
        if stage == arch.head_stage:
            mult = 1.0
        channels.append(make_divisible(base * width_scale * mult))
    return tuple(channels)


def stage_channels_np(model_name: str, mults: np.ndarray, width_scale: float = 1.0) -> np.ndarray:
    """Vectorized `stage_channels`: mults [n, S] -> channels [n, S] (int64)."""
    arch = ARCH_SPECS[model_name]
    mults = np.array(mults, dtype=np.float64, ndmin=2)
    if arch.head_stage is not None:
        mults[:, arch.head_stage] = 1.0
    return make_divisible_np(np.asarray(arch.base_channels) * width_scale * mults)


# --------------------------------------------------------------------------
# Padding.

# How a k x k conv pads its input: "same" is TensorFlow's (at stride 2 on an
# even input only the bottom and right get the extra pixels); "symmetric"
# is PyTorch's ``padding=(k - 1) // 2`` on every side, then a VALID conv (the
# official PSS-Net's). Output sizes agree for the odd kernels of the plan:
# ``(size - 1) // stride + 1`` either way; the values differ at every
# stride-2 layer with an even input (and so every logit after it).
PADDINGS = ("same", "symmetric")


def explicit_pad(padding: str, kernel: int) -> int | None:
    """Pixels to add on every side before a VALID conv of ``kernel`` under
    ``padding``, or None for TensorFlow's 'same' padding.

    Raises:
        ValueError: for a padding not in `PADDINGS`.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r} is unknown; use one of {PADDINGS}.")
    return None if padding == "same" else (int(kernel) - 1) // 2


# --------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass(frozen=True)
class Channels:
    """A layer's width in terms of the subnet's stage channels.

    ``stage_channels[stage] * factor``, or, with ``stage=None``, a fixed
    width: ``fixed="rgb"`` (3, the input image) or ``"classes"``.
    """

    stage: int | None
    factor: int = 1
    fixed: str = ""


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One weight layer (with its batch norm, if it has one) or the pool.

    Attributes:
        name: stable layer name (``stem_conv``, ``block_3_depthwise``,
            ``block_3_pointwise`` / ``_expand`` / ``_project``,
            ``head_conv``, ``pool``, ``classifier``); checkpoints and the
            weight import rely on it.
        kind: ``"conv"``, ``"depthwise"``, ``"pool"`` or ``"dense"``.
        kernel: square kernel size (0 for the pool and the classifier).
        stride: spatial stride (padded as `PADDINGS` says).
        c_in, c_out: input and output widths.
        relu6: a ReLU6 follows (not after a linear project, the pool or
            the classifier).
        switch_out: the supernet slices the output width to the subnet's
            (false for depthwise convs, whose width follows the input, and
            for the full-width head conv).
    """

    name: str
    kind: str
    kernel: int
    stride: int
    c_in: Channels
    c_out: Channels
    relu6: bool = True
    switch_out: bool = True


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """A group of layers: the stem, one table block, the head or the top.

    Attributes:
        name: ``"stem"``, ``"block_3"``, ``"head"`` or ``"top"``.
        layers: the block's layers in order.
        stride: the block's spatial stride.
        expand: expansion of the hidden width (1: no expand conv).
        residual: the block's input is added to its output.
        in_stage: stage of the block's input (None for the image).
        out_stage: stage of the block's output.
    """

    name: str
    layers: tuple[LayerSpec, ...]
    stride: int = 1
    expand: int = 1
    residual: bool = False
    in_stage: int | None = None
    out_stage: int = 0


def _separable(name, row, in_stage):
    c_in, c_out = Channels(in_stage), Channels(row.out_stage)
    layers = (
        LayerSpec(f"{name}_depthwise", "depthwise", 3, row.stride, c_in, c_in, switch_out=False),
        LayerSpec(f"{name}_pointwise", "conv", 1, 1, c_in, c_out),
    )
    return BlockSpec(name, layers, row.stride, 1, False, in_stage, row.out_stage)


def _inverted_residual(name, row, in_stage):
    c_in, c_out = Channels(in_stage), Channels(row.out_stage)
    hidden = Channels(in_stage, row.expansion)
    layers = (
        LayerSpec(
            f"{name}_depthwise", "depthwise", 3, row.stride, hidden, hidden, switch_out=False
        ),
        LayerSpec(f"{name}_project", "conv", 1, 1, hidden, c_out, relu6=False),
    )
    if row.expansion != 1:
        layers = (LayerSpec(f"{name}_expand", "conv", 1, 1, c_in, hidden),) + layers
    residual = row.stride == 1 and row.out_stage == in_stage
    return BlockSpec(name, layers, row.stride, row.expansion, residual, in_stage, row.out_stage)


@functools.cache
def plan(model_name: str) -> tuple[BlockSpec, ...]:
    """The blocks of ``model_name`` in order: stem, table blocks, head, top.

    The one place that expands the tables: which blocks expand, which add
    a residual (stride 1 within a stage), the full-width head conv and the
    pool plus classifier. Cached: callers iterate the same tuple.
    """
    arch = ARCH_SPECS[model_name]
    stem = LayerSpec("stem_conv", "conv", 3, 2, Channels(None, fixed="rgb"), Channels(0))
    out = [BlockSpec("stem", (stem,), stride=2, out_stage=0)]
    in_stage = 0
    for i, row in enumerate(arch.blocks, start=1):
        if isinstance(row, DepthwiseSeparableSpec):
            out.append(_separable(f"block_{i}", row, in_stage))
        else:
            out.append(_inverted_residual(f"block_{i}", row, in_stage))
        in_stage = row.out_stage
    if arch.head_stage is not None:
        # The reference keeps the head conv at full width.
        c_in, c_out = Channels(in_stage), Channels(arch.head_stage)
        head = LayerSpec("head_conv", "conv", 1, 1, c_in, c_out, switch_out=False)
        out.append(BlockSpec("head", (head,), in_stage=in_stage, out_stage=arch.head_stage))
        in_stage = arch.head_stage
    c_in, classes = Channels(in_stage), Channels(None, fixed="classes")
    top = (
        LayerSpec("pool", "pool", 0, 1, c_in, c_in, relu6=False, switch_out=False),
        LayerSpec("classifier", "dense", 0, 1, c_in, classes, relu6=False, switch_out=False),
    )
    out.append(BlockSpec("top", top, in_stage=in_stage, out_stage=in_stage))
    return tuple(out)


@functools.cache
def layer_plan(model_name: str) -> tuple[LayerSpec, ...]:
    """Every layer of ``model_name`` in order (the blocks of `plan`, flattened)."""
    return tuple(layer for block in plan(model_name) for layer in block.layers)


def _resolve(ref: Channels, channels, num_classes):
    if ref.stage is not None:
        return channels[ref.stage] * ref.factor
    return 3 if ref.fixed == "rgb" else num_classes


def walk(model_name: str, resolution, channels, num_classes: int):
    """Yields ``(spec, in_size, out_size, c_in, c_out)`` for every layer.

    Works on Python ints and, elementwise, on NumPy arrays alike.

    Args:
        model_name: the architecture.
        resolution: input resolution (int, or an int array [n]).
        channels: the subnet's stage channels, indexable by stage (e.g.
            `stage_channels`; entries may be arrays [n]).
        num_classes: classifier outputs.

    Yields:
        The `LayerSpec`, its input and output spatial sizes (either of
        `PADDINGS`: ``(size - 1) // stride + 1``) and its input and output
        widths.
    """
    size = resolution
    for spec in layer_plan(model_name):
        out = (size - 1) // spec.stride + 1
        yield (
            spec,
            size,
            out,
            _resolve(spec.c_in, channels, num_classes),
            _resolve(spec.c_out, channels, num_classes),
        )
        size = out
