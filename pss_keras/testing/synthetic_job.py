"""A job directory with random weights and N tiers across the FLOPs range,
for benchmarks and tests that need no training.

`write` builds what a finished training leaves (`pss_keras.jobs.directory`' layout:
run config, classes, supernet weights, retained tiers with their batch-norm
statistics) without training or data: the supernet keeps its random
initial weights, every tier random batch-norm statistics (so that folding
them into the convolutions is real work, as after calibration) and made-up
accuracy. `pss_keras.export.saved_model` and `pss_keras.tflite.converter` take it as they take a
trained job, so serving and conversion can be measured anywhere; the
predictions are meaningless, and latencies describe a model of that size,
not a trained one.

This is training-side code (it builds a `Supernet` and a `TrainConfig`):
deployment modules never import it; benchmarks and tests call it, then
deploy the job.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

from pss_keras.cost import flops
from pss_keras.jobs import directory as jobs
from pss_keras.jobs import tiers as tiers_lib
from pss_keras.jobs.config import DataConfig, TrainConfig
from pss_keras.supernet import specs
from pss_keras.supernet.model import Supernet


def write(
    job_dir: str,
    model_name: str = "mobilenet_v1",
    width_scale: float = 0.25,
    resolution_range: tuple[int, int] = (16, 32),
    tiers: int = 3,
    num_classes: int = 10,
    seed: int = 0,
    padding: str = "same",
    bn_epsilon: float = 1e-3,
) -> list[tiers_lib.RetainedTier]:
    """Writes a finished-looking job with random weights into ``job_dir``.

    The tiers span the FLOPs range from the smallest subnet to the largest:
    along a path through the search space (resolution from the smallest to
    the largest on the grid, stage width multipliers from the smallest to
    the largest, earlier or later stages first), the distinct subnets are listed and
    ``tiers`` of them taken at even steps, the first and the last included.
    Each is named by its MFLOPs (``flops_12p34m``), gets random batch-norm
    statistics and a made-up top-1 from 0.1 (smallest) to 0.9 (largest).

    Args:
        job_dir: the job directory (created; must not hold a job).
        model_name: ``mobilenet_v1`` or ``mobilenet_v2``.
        width_scale: the supernet's global width scale (1.0: MobileNet).
        resolution_range: (min, max) input resolution, a multiple of 8 apart;
            the export's input size is the max.
        tiers: how many tiers (at least 1).
        num_classes: classifier outputs (classes ``class_0`` ...).
        seed: Keras's random seed for the weights.
        padding, bn_epsilon: the architecture's (`TrainConfig`'s fields),
            recorded in the run configuration.

    Returns:
        The retained tiers written, smallest first.

    Raises:
        ValueError: for a bad setting, or more tiers than the path has
            distinct subnets (fewer tiers, or a wider range); nothing is
            written then.
    """
    if tiers < 1:
        raise ValueError(f"tiers={tiers} must be at least 1.")
    if os.path.exists(os.path.join(job_dir, jobs.RETAINED)):
        raise ValueError(f"{job_dir} already holds a job; give an empty directory.")
    keras.utils.set_random_seed(seed)
    config, space = _config_and_space(
        job_dir, model_name, width_scale, resolution_range, num_classes
    )
    config = dataclasses.replace(config, padding=padding, bn_epsilon=bn_epsilon)
    subnets = _subnets_along_path(space, tiers, num_classes, width_scale)
    os.makedirs(job_dir, exist_ok=True)
    jobs.write_run_config(job_dir, config)
    jobs.write_classes(job_dir, [f"class_{i}" for i in range(num_classes)])
    net = Supernet(**config.supernet_kwargs(num_classes))
    net.save_weights(os.path.join(job_dir, jobs.WEIGHTS))
    retained = []
    for i, entry in enumerate(subnets):
        fraction, rng = i / max(1, tiers - 1), np.random.default_rng([seed, i])
        retained.append(_random_tier(job_dir, net, entry, fraction, rng, num_classes, width_scale))
    jobs.write_retained(job_dir, retained)
    return retained


def _config_and_space(job_dir, model_name, width_scale, resolution_range, num_classes):
    """The run configuration `write` records, and its search space."""
    config = TrainConfig(
        job_dir=job_dir,
        data=DataConfig(image_size=int(resolution_range[1])),
        model_name=model_name,
        width_scale=width_scale,
        resolution_range=tuple(int(r) for r in resolution_range),
    )
    space = specs.SearchSpace(
        model_name, config.resolution_range, config.resolution_step, config.width_range,
        width_scale, num_classes,
    )  # fmt: skip
    return config, space


def _random_tier(
    job_dir, net, entry, fraction, rng, num_classes, width_scale
) -> tiers_lib.RetainedTier:
    """One tier of `write`: ``entry`` is ``(name, subnet, mflops)``; random
    batch-norm statistics from ``rng`` (saved in ``job_dir``), a made-up
    top-1 at ``fraction`` of the way from 0.1 to 0.9."""
    name, subnet, mflops = entry
    stats = {
        layer: (
            rng.normal(0.0, 0.1, c).astype(np.float32),
            rng.uniform(0.5, 1.5, c).astype(np.float32),
        )
        for layer, c in net.bn_channels(subnet).items()
    }
    return tiers_lib.RetainedTier(
        name=name,
        config=subnet,
        metric_type="flops",
        target=round(mflops, 2),
        mflops=mflops,
        params=flops.count_params(subnet, num_classes, width_scale),
        top1=0.1 + 0.8 * fraction,
        top5=0.5,
        minival_top1=0.1 + 0.8 * fraction,
        pool_score=0.0,
        bn_stats=jobs.save_bn_stats(job_dir, name, stats),
    )


def _subnets_along_path(space, tiers, num_classes, width_scale):
    """``tiers`` distinct ``(name, subnet, mflops)``, smallest first."""
    (r_min, r_max), (w_min, w_max), step = (
        space.resolution_range,
        space.width_range,
        space.resolution_step,
    )
    last = max(1, space.num_stages - 1)

    def named(subnet):
        mflops = flops.count_mflops(subnet, num_classes, width_scale)
        return f"flops_{round(mflops, 2):g}m".replace(".", "p"), subnet, mflops

    # The ends first, so that whatever collides with them keeps them.
    found = {entry[0]: entry for entry in map(named, (space.smallest(), space.largest()))}
    grid = np.linspace(0.0, 1.0, 40 * max(1, tiers))
    for fraction, order in [(f, o) for f in grid for o in (1, -1)]:
        resolution = r_min + round(fraction * (r_max - r_min) / step) * step
        # Earlier (or later) stages widen first, so that neighbouring subnets
        # differ in their channels too (one multiplier for all would round
        # many neighbours to the same widths).
        mults = tuple(
            round(
                w_min + (w_max - w_min) * min(1.0, max(0.0, 2 * fraction - s / last)),
                specs.MULT_DECIMALS,
            )
            for s in range(space.num_stages)[::order]
        )
        entry = named(space.validate(specs.SubnetConfig(space.model_name, resolution, mults)))
        found.setdefault(entry[0], entry)
    distinct = sorted(found.values(), key=lambda t: t[2])
    if tiers > len(distinct):
        raise ValueError(
            f"tiers={tiers}: this search space has {len(distinct)} distinct subnets along the "
            "path; use fewer tiers or a wider range."
        )
    picks = np.round(np.linspace(0, len(distinct) - 1, tiers)).astype(int)
    return [distinct[i] for i in picks]
