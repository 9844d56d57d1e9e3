"""The studies' rig (scripts/compare_sampling.py, compare_standalone.py):
Imagenette unpacked once, timed resumable runs, and the accounting of one
supernet against N separate models.

`scripts/compare_standalone.py` trains a PSS supernet, picks four of its
retained tiers across the cost range, and scores four arms per tier:

* ``inherited``: the tier as the supernet serves it (calibrated batch norm,
  no training of its own);
* ``standalone_equal_epochs``: the tier's subnet trained alone from scratch
  for the supernet's epochs, plain cross-entropy;
* ``standalone_equal_compute``: the same, for the epochs that the
  supernet's training FLOPs divided by the number of tiers it serves buy
  this one subnet (`equal_compute_epochs`);
* ``finetuned``: the inherited tier trained alone for a few more epochs.

Costs are counted in training FLOPs: a forward and a backward pass of a
subnet over one image count ``PASSES`` forward passes (the backward pass
computes gradients for activations and for weights, about two forwards),
and a PSS step trains three subnets (the largest, one prioritized
candidate, the smallest: `supernet_image_mflops`). Batch-norm calibration
and evaluation are left out of every arm alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ARMS = ("inherited", "standalone_equal_epochs", "standalone_equal_compute", "finetuned")
# Forward + backward of one image, in forward passes.
PASSES = 3
COST_RULE = (
    "training FLOPs = 3 x forward multiply-adds (as the method counts FLOPs) x images x epochs; "
    "a PSS step trains the largest, the smallest and one candidate (on average the mean of the "
    "FLOPs targets); inherited tiers carry the supernet's cost divided by the tiers it serves; "
    "calibration and evaluation are not counted"
)


def pick_tiers(retained: Sequence[dict], count: int = 4) -> list[dict]:
    """``count`` tiers spread over the cost range: the cheapest, the
    costliest, and between them the tiers whose MFLOPs are nearest to equal
    steps of the range (for four: ~1/3 and ~2/3 of the way).

    Args:
        retained: a job's retained tiers (``name``, ``mflops``).
        count: how many (at least 2, at most ``len(retained)``).

    Returns:
        The chosen tiers, cheapest first, each once.

    Raises:
        ValueError: fewer tiers than ``count``, or ``count`` below 2.
    """
    tiers = sorted(retained, key=lambda t: float(t["mflops"]))
    if count < 2 or len(tiers) < count:
        raise ValueError(
            f"Cannot pick {count} tiers from {len(tiers)} retained ones: the study needs at "
            "least 2 and at most as many as the job retained."
        )
    low, high = float(tiers[0]["mflops"]), float(tiers[-1]["mflops"])
    chosen: list[dict] = []
    for i in range(count):
        goal = low + (high - low) * i / (count - 1)
        left = [t for t in tiers if all(t is not c for c in chosen)]
        chosen.append(min(left, key=lambda t: abs(float(t["mflops"]) - goal)))
    return sorted(chosen, key=lambda t: float(t["mflops"]))


def supernet_image_mflops(largest: float, smallest: float, targets: Sequence[float]) -> float:
    """Forward MFLOPs a PSS step spends on one image: the largest and the
    smallest subnet, and one candidate whose FLOPs round to a target drawn
    uniformly from ``targets`` (on average, their mean)."""
    if not targets:
        raise ValueError("The supernet has no FLOPs targets to average its candidate over.")
    return float(largest) + float(smallest) + sum(targets) / len(targets)


def training_flops(image_mflops: float, images_per_epoch: int, epochs: float) -> float:
    """Training FLOPs of ``epochs`` epochs: ``PASSES`` forward passes of
    ``image_mflops`` per image."""
    return PASSES * float(image_mflops) * 1e6 * int(images_per_epoch) * float(epochs)


def equal_compute_epochs(
    supernet_epochs: float, supernet_mflops: float, tiers_served: int, tier_mflops: float
) -> int:
    """Epochs of one subnet alone that cost the supernet's training FLOPs
    divided by the ``tiers_served`` tiers it serves, rounded to a whole
    epoch (at least 1): ``epochs * supernet_mflops / (tiers * tier_mflops)``.

    Args:
        supernet_epochs: the supernet's epochs.
        supernet_mflops: `supernet_image_mflops`.
        tiers_served: how many tiers the supernet's export serves.
        tier_mflops: the subnet's forward MFLOPs.
    """
    if tiers_served < 1 or tier_mflops <= 0:
        raise ValueError(
            f"Equal compute needs at least one tier served and a positive cost (got "
            f"{tiers_served} tiers, {tier_mflops} MFLOPs)."
        )
    share = supernet_epochs * supernet_mflops / (tiers_served * tier_mflops)
    return max(1, int(math.floor(share + 0.5)))


def break_even_tiers(supernet_flops: float, standalone_flops: Sequence[float]) -> float:
    """How many tiers a supernet must serve to cost less than separate
    models: the supernet's training FLOPs over the mean training FLOPs of
    one standalone model (``standalone_flops``, one per tier)."""
    if not standalone_flops:
        raise ValueError("No standalone model to compare the supernet's cost with.")
    return float(supernet_flops) / (sum(standalone_flops) / len(standalone_flops))


def imagenette_folder(tar_path: str, cache_dir: str) -> str:
    """The Imagenette folder (``train/``, ``val/``) under ``cache_dir``,
    unpacked from ``tar_path`` the first time (into a hidden folder renamed
    into place, so an interrupted unpack is never taken for the data).

    Raises:
        ValueError: neither the folder nor the tar exists.
    """
    import os
    import shutil
    import tarfile

    folder = os.path.join(cache_dir, "imagenette2")
    if os.path.isdir(os.path.join(folder, "val")):
        return folder
    if not os.path.exists(tar_path):
        raise ValueError(f"No --dataset given and {tar_path} is missing; pass --dataset=FOLDER.")
    staging = os.path.join(cache_dir, ".imagenette2.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    with tarfile.open(tar_path) as tar:
        tar.extractall(staging, filter="data")
    os.replace(os.path.join(staging, "imagenette2"), folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def train_timed(config) -> tuple[list[dict], float]:
    """Trains ``config`` (a `pss_keras.jobs.config.TrainConfig`) unless its
    job already retained its tiers; resumes an interrupted run. The wall
    time spent over every attempt, interrupted ones included, is kept in
    the job's ``study_seconds.json``.

    Returns:
        The job's retained tiers and the seconds its training took.
    """
    import json
    import os
    import time

    from pss_keras.jobs import directory as jobs
    from pss_keras.training import driver
    from pss_keras.utils.fileio import atomic_write_json

    clock = os.path.join(config.job_dir, "study_seconds.json")
    spent = 0.0
    if os.path.exists(clock):
        with open(clock) as f:
            spent = float(json.load(f)["seconds"])
    if not os.path.exists(os.path.join(config.job_dir, jobs.RETAINED)):
        start = time.perf_counter()
        try:
            driver.train(config)
        finally:  # an interrupted attempt's time counts too (the resume goes on from it)
            spent += time.perf_counter() - start
            if os.path.isdir(config.job_dir):
                atomic_write_json(clock, {"seconds": spent})
    return jobs.read_retained(config.job_dir), spent


def count(space, config) -> float:
    """Forward MFLOPs of ``config`` in ``space`` (its classes and width scale)."""
    from pss_keras.cost import flops

    return flops.count_mflops(config, space.num_classes, space.width_scale)


def flops_targets(config) -> tuple[float, ...]:
    """The FLOPs targets of a run's pools (`pss_keras.jobs.config.TrainConfig`)."""
    from pss_keras.training.pools import TargetGrid

    if not config.flops_targets:
        raise ValueError("The supernet run has no FLOPs targets; the study compares FLOPs tiers.")
    return TargetGrid("flops", *config.flops_targets).targets


def summarize(seeds: dict) -> dict:
    """Per arm and tier, over the seeds that ran it: mean top-1, its paired
    difference from the inherited tier (same seed), mean training FLOPs of
    the arm itself, and the supernet's break-even tier count.

    Args:
        seeds: ``{seed: {"arms": {arm: {tier: row}}, "supernet": {...}}}``.
    """
    rows: dict = {}
    for seed in seeds.values():
        inherited = seed.get("arms", {}).get("inherited", {})
        for arm, tiers in seed.get("arms", {}).items():
            for name, row in tiers.items():
                cell = rows.setdefault(arm, {}).setdefault(
                    name, {"mflops": row["mflops"], "top1": [], "vs_inherited": [], "flops": []}
                )
                cell["top1"].append(row["top1"])
                cell["flops"].append(row["own_training_flops"])
                if name in inherited:
                    cell["vs_inherited"].append(row["top1"] - inherited[name]["top1"])
    summary = {
        arm: {
            name: {
                "mflops": c["mflops"],
                "seeds": len(c["top1"]),
                "top1": _mean(c["top1"]),
                "top1_minus_inherited": _mean(c["vs_inherited"]),
                "own_training_flops": _mean(c["flops"]),
            }
            for name, c in tiers.items()
        }
        for arm, tiers in rows.items()
    }
    supernet = [s["supernet"]["training_flops"] for s in seeds.values() if "supernet" in s]
    alone = [c["own_training_flops"] for c in summary.get("standalone_equal_epochs", {}).values()]
    if supernet and alone:
        summary["break_even_tiers"] = round(break_even_tiers(_mean(supernet), alone), 2)
    return summary


def _mean(values) -> float | None:
    return float(sum(values) / len(values)) if values else None


def format_summary(summary: dict) -> str:
    """The summary as a table: one row per tier, top-1 (and its difference
    from the inherited tier) per arm."""
    arms = [a for a in ARMS if a in summary]
    names = sorted({n for a in arms for n in summary[a]}, key=lambda n: _tier_cost(summary, n))
    lines = [f"{'tier':<12}{'MFLOPs':>8}" + "".join(f"{a:>28}" for a in arms)]
    for name in names:
        line = f"{name:<12}{_tier_cost(summary, name):>8.1f}"
        for arm in arms:
            cell = summary[arm].get(name)
            if cell is None:
                line += f"{'-':>28}"
                continue
            diff = cell["top1_minus_inherited"]
            text = f"{100 * cell['top1']:.1f}" + (
                f" ({100 * diff:+.1f})" if diff is not None and arm != "inherited" else ""
            )
            line += f"{text + ' n=' + str(cell['seeds']):>28}"
        lines.append(line)
    if "break_even_tiers" in summary:
        lines.append(
            f"A supernet costs less than separate models (equal epochs) from "
            f"{summary['break_even_tiers']} tiers on."
        )
    return "\n".join(lines)


def _tier_cost(summary: dict, name: str) -> float:
    return next(t[name]["mflops"] for a, t in summary.items() if a in ARMS and name in t)


def plot(record: dict, path: str) -> str:
    """Top-1 vs MFLOPs, one line per arm (its mean over the seeds run)."""
    from pss_keras.utils import plots

    summary = record.get("summary", {})
    runs = {
        arm: [{"mflops": c["mflops"], "top1": c["top1"]} for c in summary[arm].values()]
        for arm in ARMS
        if summary.get(arm)
    }
    seeds = ", ".join(sorted(record.get("seeds", {})))
    return plots.plot_tiers(runs, path, title=f"{record.get('name', '')}: seeds {seeds}")
