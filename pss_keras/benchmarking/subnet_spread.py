"""Is there anything to prioritize? The subnet-spread study's statistics.

`scripts/subnet_spread.py` trains one supernet with uniform sampling, then
draws random subnets for every FLOPs target (a *band*: the subnets whose
rounded MFLOPs equal the target, as one pool holds) from the run's
conditional sampler and measures each one: top-1 on minival and on the
validation split after post-BN calibration, and the pools' own score, the
negative cross-entropy of training batches forwarded with batch statistics
(as `pss_keras.training.trainer.PSSTrainer` scores its candidate), on one
fixed batch (``score_1``) and averaged over ten (``score_10``).

Prioritized sampling can only pay off if a band's subnets differ: this
module turns the measurements into the answer, with no TensorFlow:

* `best_minus_median`: how far the band's best subnet (validation top-1)
  lies above its median, in points: what a perfect selection gains over a
  random pick;
* `kendall_tau` (tau-b, ties counted): whether the cheap signals rank the
  band's subnets as the validation split does (minival, the one-batch and
  the ten-batch score; and MFLOPs, the part of the spread the band's own
  width explains);
* `summarize` and `verdict`: the rule of the study (``most`` bands: more
  than half): best minus median <= `LITTLE` point in most bands means
  there is little to prioritize here and the comparison of samplers needs
  a wider space; >= `ENOUGH` points in most bands means there is.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

# Best minus median (validation top-1 points) at or below which a band has little to prioritize.
LITTLE = 1.0
# ... and at or above which it has enough for a comparison of samplers.
ENOUGH = 2.0
# What each Kendall tau of a band compares with the validation top-1.
TAU_SIGNALS = {
    "minival_vs_val": "minival_top1",
    "score_1_batch_vs_val": "score_1",
    "score_10_batches_vs_val": "score_10",
    "mflops_vs_val": "mflops",
}
UNITS = {
    "minival_top1, val_top1, val_top5": "fraction of images",
    "best_minus_median, best_val_top1, median_val_top1": "percentage points",
    "score_1, score_10": "negative cross-entropy (nats; higher is better, as the pools store it)",
    "mflops": "millions of multiply-adds",
}


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired sequences (ties in either counted as
    in scipy.stats.kendalltau's default): ``(concordant - discordant) /
    sqrt((pairs - ties_x) * (pairs - ties_y))``, O(n^2).

    Returns:
        A value in [-1, 1]; NaN when every value of ``x`` or of ``y`` is
        equal (no ranking to compare).

    Raises:
        ValueError: sequences of different lengths or fewer than 2 pairs.
    """
    if len(x) != len(y):
        raise ValueError(f"Kendall tau needs paired values: {len(x)} and {len(y)} given.")
    n = len(x)
    if n < 2:
        raise ValueError(f"Kendall tau needs at least 2 pairs, got {n}.")
    score = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = _sign(float(x[i]) - float(x[j]))
            dy = _sign(float(y[i]) - float(y[j]))
            ties_x += dx == 0
            ties_y += dy == 0
            score += dx * dy
    pairs = n * (n - 1) // 2
    denominator = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return score / denominator if denominator else math.nan


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def best_minus_median(values: Sequence[float]) -> float:
    """The largest value minus the median (in the values' own unit).

    Raises:
        ValueError: fewer than 2 values (a band of one subnet has no spread).
    """
    if len(values) < 2:
        raise ValueError(f"Best minus median needs at least 2 subnets, got {len(values)}.")
    return max(values) - statistics.median(values)


def draw_distinct(sample: Callable[[object], object], count: int, rng, max_draws: int = 0) -> list:
    """``count`` different subnets from ``sample(rng)`` (e.g. a conditional
    sampler's ``sample(target, rng)``), in the order first drawn; a repeat
    is drawn again, so no subnet counts twice in a band's statistics.

    Args:
        sample: draws one hashable subnet config from ``rng``.
        count: how many (at least 2).
        rng: the generator ``sample`` draws from (seeded by the caller).
        max_draws: draws allowed before giving up (0: ``20 * count``).

    Raises:
        ValueError: ``count`` below 2, or fewer distinct subnets in
            ``max_draws`` draws (the band holds too few).
    """
    if count < 2:
        raise ValueError(f"A band needs at least 2 subnets to compare, got {count}.")
    limit = max_draws or 20 * count
    chosen: dict = {}
    for _ in range(limit):
        config = sample(rng)
        chosen.setdefault(config, None)
        if len(chosen) == count:
            return list(chosen)
    raise ValueError(
        f"Only {len(chosen)} different subnets in {limit} draws; the band holds too few "
        f"for {count}: ask for fewer."
    )


def band_statistics(target: float, name: str, subnets: Sequence[dict]) -> dict:
    """One band's record: its subnets and what they say.

    Args:
        target: the band's FLOPs target (MFLOPs).
        name: its tier name (``flops_21m``).
        subnets: one row per subnet: ``config``, ``mflops``,
            ``minival_top1``, ``val_top1`` (fractions), ``score_1``,
            ``score_10`` (negative cross-entropy).

    Returns:
        ``target``, ``name``, ``num_subnets``, ``mflops_range``,
        ``best_val_top1``, ``median_val_top1``, ``best_minus_median``
        (points), ``kendall_tau`` (`TAU_SIGNALS` against the validation
        top-1; None where undefined) and the ``subnets``.

    Raises:
        ValueError: fewer than 2 subnets, or a row missing a measurement.
    """
    if len(subnets) < 2:
        raise ValueError(f"Band {name} has {len(subnets)} subnet(s); its statistics need 2.")
    needed = {"config", "mflops", "val_top1", *TAU_SIGNALS.values()}
    for row in subnets:
        if needed - set(row):
            raise ValueError(f"A subnet of band {name} lacks {sorted(needed - set(row))}.")
    val = [100.0 * float(row["val_top1"]) for row in subnets]
    taus = {}
    for key, signal in TAU_SIGNALS.items():
        tau = kendall_tau([float(row[signal]) for row in subnets], val)
        taus[key] = None if math.isnan(tau) else round(tau, 4)
    mflops = [float(row["mflops"]) for row in subnets]
    return {
        "target": float(target),
        "name": name,
        "num_subnets": len(subnets),
        "mflops_range": [round(min(mflops), 3), round(max(mflops), 3)],
        "best_val_top1": round(max(val), 3),
        "median_val_top1": round(statistics.median(val), 3),
        "best_minus_median": round(best_minus_median(val), 3),
        "kendall_tau": taus,
        "subnets": list(subnets),
    }


def verdict(gaps: Sequence[float]) -> str:
    """The study's rule on the bands' best-minus-median gaps (points)."""
    if not gaps:
        raise ValueError("No band was evaluated: nothing to judge.")
    n = len(gaps)
    little = sum(g <= LITTLE for g in gaps)
    enough = sum(g >= ENOUGH for g in gaps)
    if little > n / 2:
        return (
            f"little to prioritize: best minus median <= {LITTLE:g} point in {little} of {n} "
            f"bands; compare samplers in a space where it is >= {ENOUGH:g}-3 points"
        )
    if enough > n / 2:
        return (
            f"something to prioritize: best minus median >= {ENOUGH:g} points in {enough} of "
            f"{n} bands"
        )
    return (
        f"borderline: best minus median <= {LITTLE:g} point in {little} and >= {ENOUGH:g} "
        f"points in {enough} of {n} bands; a comparison of samplers wants >= {ENOUGH:g}-3"
    )


def summarize(bands: Sequence[dict]) -> dict:
    """Across bands (`band_statistics` records): how many, how many have
    best minus median <= `LITTLE` and >= `ENOUGH` points, its median, the
    median of each Kendall tau, and the `verdict`."""
    gaps = [float(b["best_minus_median"]) for b in bands]
    taus = {}
    for key in TAU_SIGNALS:
        values = [b["kendall_tau"][key] for b in bands if b["kendall_tau"][key] is not None]
        taus[key] = round(statistics.median(values), 4) if values else None
    return {
        "bands": len(bands),
        "bands_within_1_point": sum(g <= LITTLE for g in gaps),
        "bands_at_least_2_points": sum(g >= ENOUGH for g in gaps),
        "median_best_minus_median": round(statistics.median(gaps), 3) if gaps else None,
        "median_kendall_tau": taus,
        "verdict": verdict(gaps) if gaps else "no band evaluated yet",
    }


# Settings that name where things are, not what was measured: a resume may change them.
_PATHS = ("job_dir", "dataset", "data_dir")


def start_record(previous: dict | None, settings: dict) -> dict:
    """The study's record to continue: ``previous`` (a JSON written by an
    interrupted run) with its finished bands when it measured with the same
    ``settings`` (paths aside; tuples equal to the lists JSON gives back),
    else a fresh one.

    Raises:
        ValueError: ``previous`` holds bands measured with other settings
            (overwriting them would lose them: use another result name).
    """
    fresh = {"settings": settings, "bands": []}
    if not previous or not previous.get("bands"):
        return fresh
    if not same_settings(previous.get("settings"), settings):
        raise ValueError(
            f"The result file holds {len(previous['bands'])} band(s) measured with other "
            "settings; use another --name (or remove the file) to start afresh."
        )
    return {**previous, "settings": settings, "bands": list(previous["bands"])}


def same_settings(a, b) -> bool:
    """Whether two studies' settings are the same, paths aside (tuples
    equal to the lists JSON gives back)."""
    return _without_paths(a) == _without_paths(b)


def _without_paths(value):
    """``value`` as JSON gives it back (tuples as lists), paths left out."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k not in _PATHS}
    if isinstance(value, (list, tuple)):
        return [_without_paths(v) for v in value]
    return value


def add_band(record: dict, band: dict) -> None:
    """Puts ``band`` into ``record`` (replacing one of the same target),
    bands ordered by target, and refreshes the summary."""
    bands = [b for b in record["bands"] if b["target"] != band["target"]] + [band]
    record["bands"] = sorted(bands, key=lambda b: b["target"])
    record["summary"] = summarize(record["bands"])


def done_targets(record: dict) -> set[float]:
    """The targets whose band ``record`` already holds."""
    return {float(b["target"]) for b in record.get("bands", [])}


def format_table(record: dict) -> str:
    """One row per band: subnets, MFLOPs range, best and median validation
    top-1, their gap, and each Kendall tau; then the verdict."""
    short = {"minival_vs_val": "minival", "score_1_batch_vs_val": "score1",
             "score_10_batches_vs_val": "score10", "mflops_vs_val": "MFLOPs"}  # fmt: skip
    lines = [
        f"{'band':<12}{'n':>4}{'MFLOPs':>14}{'best':>8}{'median':>8}{'gap':>7}"
        + "".join(f"{'tau ' + short[k]:>13}" for k in TAU_SIGNALS)
    ]
    for b in record["bands"]:
        low, high = b["mflops_range"]
        row = (
            f"{b['name']:<12}{b['num_subnets']:>4}{f'{low:.2f}-{high:.2f}':>14}"
            f"{b['best_val_top1']:>8.1f}{b['median_val_top1']:>8.1f}{b['best_minus_median']:>7.1f}"
        )
        for key in TAU_SIGNALS:
            tau = b["kendall_tau"][key]
            row += f"{'-' if tau is None else f'{tau:+.2f}':>13}"
        lines.append(row)
    summary = record.get("summary") or summarize(record["bands"])
    lines.append(f"verdict: {summary['verdict']}")
    return "\n".join(lines)


def plot(record: dict, path: str, title: str = "") -> str:
    """Validation top-1 against MFLOPs of every measured subnet, one colour
    per band (`pss_keras.utils.plots.plot_subnet_spread`)."""
    from pss_keras.utils import plots

    bands = {
        b["name"]: [(float(s["mflops"]), 100.0 * float(s["val_top1"])) for s in b["subnets"]]
        for b in record["bands"]
    }
    return plots.plot_subnet_spread(bands, path, title=title)
