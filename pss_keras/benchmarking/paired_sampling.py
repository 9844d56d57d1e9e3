"""PSS vs uniform sampling with equal search: one seed pair.

`scripts/compare_sampling_paired.py` trains two supernets per seed, the
same seed for both (same initial weights, data order, augmentation,
minival and sampler map): arm ``pss`` (the method) and arm ``uniform``
(every candidate from the conditional sampler, p_space fixed at 1.0). Then
every band (a FLOPs target: the subnets whose rounded MFLOPs equal it) is
searched with the same budget, ``count`` subnets calibrated and scored on
minival and validation per candidate set:

* ``pss``: the top ``count`` of the pss arm's pool (by pool score);
* ``uniform_pool``: the top ``count`` of the uniform arm's pool;
* ``uniform_random``: ``count`` different random subnets of the band from
  the uniform arm's conditional sampler (seeded by the pair's seed and the
  band), as a plain sandwich-rule user would search.

Each set's chosen subnet is its best on minival (`choose`). Cross
evaluation scores each arm's chosen subnets inside the other arm's
supernet: with the four accuracies of a band, the difference of the arms
splits exactly into a *weights* part (the same subnets, in one supernet vs
the other: "trained more") and a *selection* part (one supernet, pss's
subnet vs the baseline's: "selected better"; `decomposition`). Matched
FLOPs (`matched_flops`): each set's chosen subnets form a curve of
validation top-1 against log MFLOPs, interpolated linearly at the band
targets both curves span (no extrapolation: targets outside either curve's
MFLOPs range are left out and listed); the mean of pss minus the baseline
at those points is the pair's ``matched_flops_difference`` (`PRIMARY`
baseline; `BASELINES` both reported).

`evaluate_pair` works on duck-typed benches (`pss_keras.training.subnet_bench.SubnetBench`
in the script, fakes in tests) and skips whatever the pair's record
already holds, saving after every step, so an interrupted evaluation
resumes where it stopped.
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
from collections.abc import Callable, Sequence

import numpy as np

from pss_keras.benchmarking.subnet_spread import draw_distinct

SETS = ("pss", "uniform_pool", "uniform_random")
ARM_OF = {"pss": "pss", "uniform_pool": "uniform", "uniform_random": "uniform"}
# The comparison the decision rule is applied to, fixed before any pair ran:
# uniform sampling searched as a user without pools would search it.
PRIMARY = "uniform_random"
BASELINES = ("uniform_random", "uniform_pool")
# (key, the set whose chosen subnets, the arm whose supernet scores them).
CROSS = (
    ("pss_in_uniform", "pss", "uniform"),
    ("uniform_random_in_pss", "uniform_random", "pss"),
    ("uniform_pool_in_pss", "uniform_pool", "pss"),
)
# The only settings in which the two arms of a pair may differ.
ARM_SETTINGS = ("job_dir", "p_space")


def check_paired(pss: dict, uniform: dict) -> None:
    """Refuses two arms' settings (``TrainConfig.to_dict()``) that differ
    in more than `ARM_SETTINGS`: the seed, data, space and recipe must be
    the same for a pair.

    Raises:
        ValueError: naming the settings that differ.
    """
    keys = sorted(k for k in set(pss) | set(uniform) if pss.get(k) != uniform.get(k))
    other = [k for k in keys if k not in ARM_SETTINGS]
    if other:
        raise ValueError(f"The arms of a pair differ in {other}; only {ARM_SETTINGS} may differ.")


def choose(rows: Sequence[dict]) -> dict:
    """The best row on minival (the first of equals, as the end-of-run selection)."""
    if not rows:
        raise ValueError("No candidate to choose from.")
    return max(rows, key=lambda row: row["minival_top1"])


def candidate_set(rows: Sequence[dict]) -> dict:
    """A band's candidate set: every row and the chosen one."""
    return {"num_candidates": len(rows), "candidates": list(rows), "chosen": choose(rows)}


def seed_entry(record: dict, seed: int) -> dict:
    """The pair of ``seed`` in ``record["seeds"]`` (created empty if new; seeds kept in order)."""
    for entry in record["seeds"]:
        if entry["seed"] == seed:
            return entry
    entry = {"seed": seed, "commands": [], "machine": {}, "arms": {}, "bands": [],
             "cross_evaluation": [], "matched_flops": {}, "matched_flops_difference": None}  # fmt: skip
    record["seeds"] = sorted([*record["seeds"], entry], key=lambda e: e["seed"])
    return entry


def add_command(entry: dict, command: str) -> None:
    """Records a command that worked on the pair (each once, in order)."""
    if command not in entry["commands"]:
        entry["commands"].append(command)


def _band(entries: list, target: float, name: str) -> dict:
    """The record of band ``target`` in ``entries`` (created, kept in order)."""
    for band in entries:
        if band["target"] == target:
            return band
    band = {"target": target, "name": name}
    entries.append(band)
    entries.sort(key=lambda b: b["target"])
    return band


def evaluate_pair(
    entry: dict, benches: dict, count: int, seed: int, save: Callable[[], None]
) -> None:
    """Fills the pair's record with what it lacks: every band's candidate
    sets, then the cross evaluation, then `finish`; ``save()`` after each.

    Args:
        entry: the pair's record (`seed_entry`).
        benches: ``{"pss": bench, "uniform": bench}``, each with ``bands()``,
            ``pool_top(k, count)``, ``sample(k, rng)``, ``measure(config)``
            and ``pools_checkpoint`` (`pss_keras.training.subnet_bench.SubnetBench`).
        count: candidates per set (the equal search budget).
        seed: the pair's seed (of the random draws).

    Raises:
        ValueError: arms whose bands differ (not a pair).
    """
    bands = benches["pss"].bands()
    if benches["uniform"].bands() != bands:
        raise ValueError("The arms' samplers have other bands: they were not built alike.")
    for k, target, name in bands:
        band = _band(entry["bands"], target, name)
        for set_name in SETS:
            if set_name in band:
                continue
            band[set_name] = candidate_set(_candidates(set_name, benches, k, count, seed))
            logging.info("%s %s: chosen val top-1 %.3f", name, set_name,
                         band[set_name]["chosen"]["val_top1"])  # fmt: skip
            _note_pools(entry, benches, ARM_OF[set_name])
            save()
    for band in entry["bands"]:
        cross = _band(entry["cross_evaluation"], band["target"], band["name"])
        for key, source, arm in CROSS:
            if key not in cross:
                cross[key] = benches[arm].measure(band[source]["chosen"]["config"])
                save()
    finish(entry)
    save()


def _candidates(set_name: str, benches: dict, k: int, count: int, seed: int) -> list[dict]:
    """The measured candidates of one set of band ``k``."""
    bench = benches[ARM_OF[set_name]]
    if set_name == "uniform_random":
        rng = np.random.default_rng([seed, k])
        configs = draw_distinct(lambda r: bench.sample(k, r), count, rng)
        return [{**bench.measure(c), "draw": i} for i, c in enumerate(configs)]
    return [
        {**bench.measure(c), "pool_rank": i, "pool_score": score}
        for i, (c, score) in enumerate(bench.pool_top(k, count))
    ]


def _note_pools(entry: dict, benches: dict, arm: str) -> None:
    """Records which checkpoint an arm's pools were read from (warning when
    it is not the run's last epoch: the divergence guard skipped some)."""
    where = getattr(benches[arm], "pools_checkpoint", None)
    if where is None:
        return
    entry["arms"].setdefault(arm, {})["pools_checkpoint"] = where
    if where["epoch"] < where["run_epochs"] or where["step"]:
        logging.warning("The %s arm's pools come from %s, not the run's end (epoch %d of %d).",
                        arm, where["checkpoint"], where["epoch"], where["run_epochs"])  # fmt: skip


def log_interpolate(curve: Sequence[tuple[float, float]], mflops: float) -> float:
    """The value of ``curve`` (``(MFLOPs, value)`` points, MFLOPs
    increasing) at ``mflops``, linear in log MFLOPs between its points.

    Raises:
        ValueError: ``mflops`` outside the curve's range (no extrapolation).
    """
    xs = [math.log(m) for m, _ in curve]
    x = math.log(mflops)
    if not xs or not xs[0] <= x <= xs[-1]:
        raise ValueError(f"{mflops} MFLOPs lies outside the curve's range; no extrapolation.")
    i = bisect.bisect_left(xs, x)
    if xs[i] == x:
        return float(curve[i][1])
    w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return float(curve[i - 1][1] + w * (curve[i][1] - curve[i - 1][1]))


def matched_flops(
    pss: Sequence[tuple[float, float]], other: Sequence[tuple[float, float]], targets
) -> dict:
    """Two curves (``(MFLOPs, top-1 points)``) compared at equal cost.

    Returns:
        ``points`` (the ``targets`` inside both curves' MFLOPs ranges),
        ``pss`` and ``other`` (each interpolated there, `log_interpolate`),
        ``difference`` (pss - other), its ``mean`` (None without points),
        ``span`` (the common range) and ``skipped`` (targets outside it).
    """
    a, b = sorted(pss), sorted(other)
    if not a or not b:
        raise ValueError("Matched FLOPs needs both curves.")
    low, high = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
    points = [float(t) for t in sorted(targets) if low <= t <= high]
    at_a = [log_interpolate(a, t) for t in points]
    at_b = [log_interpolate(b, t) for t in points]
    difference = [x - y for x, y in zip(at_a, at_b)]
    return {
        "points": points,
        "pss": _rounded(at_a),
        "other": _rounded(at_b),
        "difference": _rounded(difference),
        "mean": round(statistics.fmean(difference), 4) if difference else None,
        "span": [round(low, 4), round(high, 4)] if low <= high else None,
        "skipped": [float(t) for t in sorted(targets) if not low <= t <= high],
    }


def _rounded(values) -> list[float]:
    return [round(v, 4) for v in values]


def decomposition(band: dict, cross: dict, baseline: str) -> dict:
    """One band's difference pss - ``baseline`` (validation top-1, points)
    split into ``weights`` (each chosen subnet in pss's supernet minus in
    the uniform one, averaged over the two subnets) and ``selection``
    (pss's subnet minus the baseline's, averaged over the two supernets);
    ``total`` = weights + selection exactly."""
    own_pss = 100 * band["pss"]["chosen"]["val_top1"]
    own_base = 100 * band[baseline]["chosen"]["val_top1"]
    pss_there = 100 * cross["pss_in_uniform"]["val_top1"]
    base_there = 100 * cross[f"{baseline}_in_pss"]["val_top1"]
    weights = ((own_pss - pss_there) + (base_there - own_base)) / 2
    selection = ((own_pss - base_there) + (pss_there - own_base)) / 2
    return {"total": round(own_pss - own_base, 4), "weights": round(weights, 4),
            "selection": round(selection, 4)}  # fmt: skip


def curve(entry: dict, set_name: str) -> list[tuple[float, float]]:
    """A set's chosen subnets as ``(MFLOPs, validation top-1 points)``, cheapest first."""
    return sorted(
        (float(b[set_name]["chosen"]["mflops"]), 100 * float(b[set_name]["chosen"]["val_top1"]))
        for b in entry["bands"]
        if set_name in b
    )


def complete(entry: dict) -> bool:
    """Whether the pair is evaluated to its end (`finish` found every
    band's sets and cross evaluation)."""
    return "cross_summary" in entry


def finish(entry: dict) -> None:
    """The pair's comparisons from its bands and cross evaluation, once
    complete: ``matched_flops`` per baseline, ``matched_flops_difference``
    (`PRIMARY`), each band's ``decomposition`` and its mean over bands."""
    bands = entry["bands"]
    if not bands or any(s not in b for b in bands for s in SETS):
        return
    targets = [b["target"] for b in bands]
    entry["matched_flops"] = {
        base: matched_flops(curve(entry, "pss"), curve(entry, base), targets) for base in BASELINES
    }
    entry["matched_flops_difference"] = entry["matched_flops"][PRIMARY]["mean"]
    crosses = {c["target"]: c for c in entry["cross_evaluation"]}
    if any(key not in crosses.get(b["target"], {}) for b in bands for key, _, _ in CROSS):
        return
    parts = {base: [] for base in BASELINES}
    for band in bands:
        cross = crosses[band["target"]]
        cross["decomposition"] = {base: decomposition(band, cross, base) for base in BASELINES}
        for base in BASELINES:
            parts[base].append(cross["decomposition"][base])
    entry["cross_summary"] = {
        base: {
            key: round(statistics.fmean(p[key] for p in rows), 4)
            for key in ("total", "weights", "selection")
        }
        for base, rows in parts.items()
    }
