"""FLOPs and parameter counts of subnets, exactly as the method counts them.

Multiply-adds, in millions: per conv ``out_h * out_w * (c_out / groups) * k *
k * c_in``, plus the global average pool (``h * w * c``) and the classifier
(``c_in * classes``). Batch norm, activations and the resize are not counted.
Convolutions use 'same' padding, so a stride-2 conv maps ``n`` to
``ceil(n / 2)`` pixels, as the reference's padding=1 convs do.

The layers counted are those of the architecture plan (`blocks.walk`).
Everything here is plain Python/NumPy: `count_mflops` is called for every
candidate the conditional sampler draws, and `count_mflops_np` counts a whole
batch of configs at once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pss_keras.supernet import blocks, specs


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
    channels = blocks.stage_channels(config, width_scale)
    total = 0
    for layer, in_size, out_size, c_in, c_out in blocks.walk(
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
    channels = blocks.stage_channels_np(model_name, mults, width_scale).T  # [S, n]
    total = np.zeros(resolutions.shape, dtype=np.int64)
    for layer, in_size, out_size, c_in, c_out in blocks.walk(
        model_name, resolutions, channels, num_classes
    ):
        total = total + _layer_macs(layer, in_size, out_size, c_in, c_out)
    return total / 1e6


def count_params(
    config: specs.SubnetConfig, num_classes: int = 1000, width_scale: float = 1.0
) -> int:
    """Trainable parameters of the standalone subnet (conv/dense weights,
    dense bias, BN scale and offset; BN moving statistics not included)."""
    channels = blocks.stage_channels(config, width_scale)
    return int(
        sum(
            _layer_params(layer, c_in, c_out)
            for layer, _, _, c_in, c_out in blocks.walk(
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
    channels = blocks.stage_channels(config, width_scale)
    rows = []
    for layer, in_size, out_size, c_in, c_out in blocks.walk(
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
