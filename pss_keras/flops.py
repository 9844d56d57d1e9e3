"""FLOPs and parameter counts of subnets, exactly as the method counts them.

Multiply-adds, in millions: per conv ``out_h * out_w * (c_out / groups) * k *
k * c_in``, plus the global average pool (``h * w * c``) and the classifier
(``c_in * classes``). Batch norm, activations and the resize are not counted.
Convolutions use 'same' padding, so a stride-2 conv maps ``n`` to
``ceil(n / 2)`` pixels, as the reference's padding=1 convs do.

Everything here is plain Python/NumPy: `count_mflops` is called for every
candidate the conditional sampler draws, and `count_mflops_np` counts a whole
batch of configs at once.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from pss_keras import specs

# Channel references of a plan layer: ("stage", i, factor) means
# stage_channels[i] * factor; ("input", 3) the RGB input; ("classes",) the
# classifier outputs.


@dataclasses.dataclass(frozen=True)
class PlanLayer:
    """One counted layer of an architecture, independent of the subnet."""

    name: str
    kind: str  # "conv" | "depthwise" | "pool" | "dense"
    kernel: int
    stride: int
    c_in: tuple
    c_out: tuple


@functools.cache
def layer_plan(model_name: str) -> tuple[PlanLayer, ...]:
    """The counted layers of ``model_name`` in order, with stable names.

    The names are the supernet's layer names (``stem_conv``,
    ``block_3_depthwise``, ``block_3_pointwise`` / ``block_3_project``,
    ``head_conv``, ``classifier``).
    """
    arch = specs.ARCH_SPECS[model_name]
    plan: list[PlanLayer] = [PlanLayer("stem_conv", "conv", 3, 2, ("input", 3), ("stage", 0, 1))]
    in_stage = 0
    for i, block in enumerate(arch.blocks, start=1):
        c_in = ("stage", in_stage, 1)
        if isinstance(block, specs.DepthwiseSeparableSpec):
            plan.append(PlanLayer(f"block_{i}_depthwise", "depthwise", 3, block.stride, c_in, c_in))
            plan.append(
                PlanLayer(f"block_{i}_pointwise", "conv", 1, 1, c_in, ("stage", block.out_stage, 1))
            )
        else:
            hidden = ("stage", in_stage, block.expansion)
            if block.expansion != 1:
                plan.append(PlanLayer(f"block_{i}_expand", "conv", 1, 1, c_in, hidden))
            plan.append(
                PlanLayer(f"block_{i}_depthwise", "depthwise", 3, block.stride, hidden, hidden)
            )
            plan.append(
                PlanLayer(f"block_{i}_project", "conv", 1, 1, hidden, ("stage", block.out_stage, 1))
            )
        in_stage = block.out_stage
    if arch.head_stage is not None:
        plan.append(
            PlanLayer(
                "head_conv", "conv", 1, 1, ("stage", in_stage, 1), ("stage", arch.head_stage, 1)
            )
        )
        in_stage = arch.head_stage
    plan.append(PlanLayer("pool", "pool", 0, 1, ("stage", in_stage, 1), ("stage", in_stage, 1)))
    plan.append(PlanLayer("classifier", "dense", 0, 1, ("stage", in_stage, 1), ("classes",)))
    return tuple(plan)


def _resolve(ref, channels, num_classes):
    if ref[0] == "stage":
        return channels[ref[1]] * ref[2]
    if ref[0] == "input":
        return ref[1]
    return num_classes


def _walk(model_name, resolution, channels, num_classes):
    """Yields (layer, in_size, out_size, c_in, c_out) for every plan layer.

    Works on Python ints and, elementwise, on NumPy arrays alike: ``channels``
    is indexable by stage and may hold arrays of shape [n].
    """
    size = resolution
    for layer in layer_plan(model_name):
        c_in = _resolve(layer.c_in, channels, num_classes)
        c_out = _resolve(layer.c_out, channels, num_classes)
        out = (size - 1) // layer.stride + 1
        yield layer, size, out, c_in, c_out
        size = out


def _layer_macs(layer, in_size, out_size, c_in, c_out):
    if layer.kind == "conv":
        return out_size * out_size * c_out * layer.kernel * layer.kernel * c_in
    if layer.kind == "depthwise":
        return out_size * out_size * layer.kernel * layer.kernel * c_in
    if layer.kind == "pool":
        return in_size * in_size * c_in
    return c_in * c_out


def _layer_params(layer, c_in, c_out):
    """Trainable parameters: kernel, plus BN gamma/beta or the dense bias."""
    if layer.kind == "conv":
        return layer.kernel * layer.kernel * c_in * c_out + 2 * c_out
    if layer.kind == "depthwise":
        return layer.kernel * layer.kernel * c_in + 2 * c_out
    if layer.kind == "dense":
        return c_in * c_out + c_out
    return 0


def count_mflops(
    config: specs.SubnetConfig, num_classes: int = 1000, width_scale: float = 1.0
) -> float:
    """Multiply-adds of ``config`` in millions, counted as the method counts.

    Args:
        config: the subnet.
        num_classes: classifier outputs.
        width_scale: global width scale of the supernet (1.0: MobileNet).

    Returns:
        MFLOPs as a float, e.g. 568.79... for the largest MobileNetV1.
    """
    channels = specs.stage_channels(config, width_scale)
    total = 0
    for layer, in_size, out_size, c_in, c_out in _walk(
        config.model_name, config.resolution, channels, num_classes
    ):
        total += _layer_macs(layer, in_size, out_size, c_in, c_out)
    return total / 1e6


def count_mflops_np(
    model_name: str,
    resolutions: np.ndarray,
    mults: np.ndarray,
    num_classes: int = 1000,
    width_scale: float = 1.0,
) -> np.ndarray:
    """Vectorized `count_mflops` over many configs.

    Args:
        model_name: architecture of every config.
        resolutions: int array [n].
        mults: float array [n, num_stages].

    Returns:
        float64 array [n] of MFLOPs.
    """
    resolutions = np.asarray(resolutions, dtype=np.int64)
    channels = specs.stage_channels_np(model_name, mults, width_scale).T  # [S, n]
    total = np.zeros(resolutions.shape, dtype=np.int64)
    for layer, in_size, out_size, c_in, c_out in _walk(
        model_name, resolutions, channels, num_classes
    ):
        total = total + _layer_macs(layer, in_size, out_size, c_in, c_out)
    return total / 1e6


def count_params(
    config: specs.SubnetConfig, num_classes: int = 1000, width_scale: float = 1.0
) -> int:
    """Trainable parameters of the standalone subnet (conv/dense weights,
    dense bias, BN scale and offset; BN moving statistics not included)."""
    channels = specs.stage_channels(config, width_scale)
    return int(
        sum(
            _layer_params(layer, c_in, c_out)
            for layer, _, _, c_in, c_out in _walk(
                config.model_name, config.resolution, channels, num_classes
            )
        )
    )


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """One row of `profile`: a layer's shape and cost in a given subnet."""

    name: str
    kind: str
    kernel: int
    stride: int
    in_size: int
    out_size: int
    c_in: int
    c_out: int
    mflops: float
    params: int


def profile(
    config: specs.SubnetConfig, num_classes: int = 1000, width_scale: float = 1.0
) -> list[LayerProfile]:
    """Per-layer channels, spatial sizes, MFLOPs and parameters of ``config``."""
    channels = specs.stage_channels(config, width_scale)
    rows = []
    for layer, in_size, out_size, c_in, c_out in _walk(
        config.model_name, config.resolution, channels, num_classes
    ):
        rows.append(
            LayerProfile(
                name=layer.name,
                kind=layer.kind,
                kernel=layer.kernel,
                stride=layer.stride,
                in_size=in_size if layer.kind != "dense" else 1,
                out_size=out_size if layer.kind not in ("pool", "dense") else 1,
                c_in=int(c_in),
                c_out=int(c_out),
                mflops=_layer_macs(layer, in_size, out_size, c_in, c_out) / 1e6,
                params=_layer_params(layer, c_in, c_out),
            )
        )
    return rows


def format_profile(
    config: specs.SubnetConfig, num_classes: int = 1000, width_scale: float = 1.0
) -> str:
    """A printable per-layer table of ``config`` with its totals."""
    rows = profile(config, num_classes, width_scale)
    header = f"{'layer':<22}{'kind':<10}{'k':>2}{'s':>3}{'in':>5}{'out':>5}{'c_in':>7}{'c_out':>7}{'MFLOPs':>10}{'params':>10}"
    lines = [f"subnet: {config.name}", header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.name:<22}{r.kind:<10}{r.kernel or '-':>2}{r.stride:>3}{r.in_size:>5}"
            f"{r.out_size:>5}{r.c_in:>7}{r.c_out:>7}{r.mflops:>10.3f}{r.params:>10,}"
        )
    lines.append("-" * len(header))
    total_mflops = sum(r.mflops for r in rows)
    total_params = sum(r.params for r in rows)
    lines.append(f"{'total':<61}{total_mflops:>10.2f}{total_params:>10,}")
    lines.append(f"MFLOPs: {total_mflops:.2f}")
    lines.append(f"params: {total_params:,} ({total_params / 1e6:.2f} M)")
    return "\n".join(lines)
