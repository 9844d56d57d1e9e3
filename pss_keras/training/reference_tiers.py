"""The tiers of an official PSS-Net checkpoint, as its authors report them.

`plan_tiers` takes each non-empty pool's best-scored subnet (its top k kept
as candidates) plus the search space's smallest and largest, the subnets
the reference evaluates at the end of training; `check_pool_flops` holds
every FLOPs pool subnet to the count the reference recorded; `class_names`
names a 1000-class head's outputs by ImageNet wnid in TFDS imagenet2012's
order. No TensorFlow model is built here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pss_keras.cost import flops
from pss_keras.supernet import specs
from pss_keras.supernet.reference_checkpoint import ReferenceCheckpointError
from pss_keras.training.pools import TargetGrid

# `RetainedTier.selected_on` of a tier the reference's pool score chose.
SELECTED_ON_POOL = "pool_score"
# The reference counts FLOPs with a 1000-class head whatever the file's.
REFERENCE_FLOPS_CLASSES = 1000
FLOPS_TOLERANCE_M = 0.01
# The paper's FLOPs targets (MFLOPs), for a file without FLOPs pools.
DEFAULT_FLOPS_TARGETS = {"mobilenet_v1": (110.0, 570.0, 10.0), "mobilenet_v2": (70.0, 300.0, 10.0)}


def imagenet_class_names() -> list[str]:
    """ImageNet's 1000 wnids in TFDS imagenet2012's label order (sorted, as an
    image folder sorts them), from the file TFDS ships."""
    import tensorflow_datasets as tfds

    path = tfds.core.tfds_path("datasets/imagenet2012/labels.txt")
    return path.read_text().split()


def class_names(num_classes: int) -> list[str]:
    """ImageNet's wnids for a 1000-class head, else ``class_<i>``."""
    if num_classes == REFERENCE_FLOPS_CLASSES:
        return imagenet_class_names()
    return [f"class_{i}" for i in range(num_classes)]


def check_pool_flops(pools: dict, source: str) -> None:
    """Every FLOPs pool subnet's MFLOPs (ours, with a 1000-class head) equals
    the ``infer_metric`` the reference recorded, to `FLOPS_TOLERANCE_M`.

    Raises:
        ReferenceCheckpointError: naming the first subnet that differs.
    """
    for target, entries in pools.get("flops", {}).items():
        for config, _, recorded in entries:
            ours = flops.count_mflops(config, REFERENCE_FLOPS_CLASSES, 1.0)
            theirs = float(recorded.get("infer_metric", math.nan))
            if not abs(ours - theirs) <= FLOPS_TOLERANCE_M:
                raise ReferenceCheckpointError(
                    f"{source}: subnet {config.to_dict()} of the flops {target} pool counts "
                    f"{ours:.3f} MFLOPs here, the file records {theirs}: not this architecture."
                )


def target_grid(metric_type: str, targets) -> TargetGrid:
    """The regular grid of a reference ``infer_metric_target_list`` entry."""
    values = sorted({float(t) for t in targets})
    steps = np.diff(values) if len(values) > 1 else np.array([1.0])
    step = float(steps.min())
    if not np.allclose(steps / step, np.round(steps / step)):
        raise ReferenceCheckpointError(
            f"the {metric_type} targets {values[:4]}... are not on a regular grid."
        )
    return TargetGrid(metric_type, values[0], values[-1], step)


@dataclasses.dataclass
class PlannedTier:
    """A tier to write: its record's fields before statistics and accuracy."""

    name: str
    config: specs.SubnetConfig
    metric_type: str
    target: float
    pool_score: float | None
    selected_on: str
    candidates: tuple = ()


def plan_tiers(pools: dict, grids: dict, space: specs.SearchSpace, topk: int) -> list[PlannedTier]:
    """Each non-empty pool's best-scored subnet (its top ``topk`` kept as
    candidates), then the space's smallest and largest unless a pool's tier
    is that subnet: the reference's reported tiers."""
    out = []
    for metric_type, targets in pools.items():
        grid = grids[metric_type]
        for target, entries in sorted(targets.items(), key=lambda item: float(item[0])):
            if not entries:
                continue
            config, score, _ = entries[0]
            out.append(
                PlannedTier(
                    name=grid.name(grid.index(float(target))),
                    config=config,
                    metric_type=metric_type,
                    target=float(target),
                    pool_score=score,
                    selected_on=SELECTED_ON_POOL,
                    candidates=tuple(
                        {"config": c.to_dict(), "pool_score": s} for c, s, _ in entries[:topk]
                    ),
                )
            )
    have = {t.config for t in out}
    for name, config in (("smallest", space.smallest()), ("largest", space.largest())):
        if config not in have:
            mflops = flops.count_mflops(config, space.num_classes, space.width_scale)
            bound = PlannedTier(name, config, "flops", round(mflops, 3), None, "sandwich")
            out = [bound, *out] if name == "smallest" else [*out, bound]
    return out


def describe(retained) -> str:
    """The imported tiers as a table (``n/a``: not measured)."""

    def number(value, spec):
        return format(value, spec) if value is not None and math.isfinite(value) else "n/a"

    types = sorted({m for t in retained for m in t.predicted_us})
    lines = [
        f"{'tier':<22}{'res':>5}{'MFLOPs':>9}{'params':>11}{'pool score':>12}{'top1':>7}"
        + "".join(f"{m + ' us':>16}" for m in types)
    ]
    for t in retained:
        lines.append(
            f"{t.name:<22}{t.resolution:>5}{t.mflops:>9.2f}{t.params:>11,}"
            f"{number(t.pool_score, '.3f'):>12}{number(t.top1, '.3f'):>7}"
            + "".join(f"{t.predicted_us[m]:>16.1f}" for m in types)
        )
    return "\n".join(lines)
