"""PSS vs uniform with equal search: across seed pairs.

Each pair (`pss_keras.benchmarking.paired_sampling`) gives one
``matched_flops_difference`` per baseline: pss minus the baseline's
validation top-1 at matched FLOPs, in points. `summarize` applies the
study's rule (`pss_keras.benchmarking.paired_stats.decide`) to the pairs'
differences against the primary baseline (``uniform_random``) and reports
the other beside it; per band it gives each candidate set's mean, lowest
and highest chosen accuracy across the pairs (the plot's bands).

The number of pairs is fixed before the first pair: `power_plan` estimates
one pair's SD from the subnet-spread study's measurements (the noise of
choosing the best of ``count`` random subnets on minival, the same in both
arms, averaged over the bands; seed-to-seed training noise is not in it,
so it is a lower bound) and the pairs a 1-point effect needs for 80 %
power (`pss_keras.benchmarking.paired_stats.pairs_for_power`, at least
`MIN_PAIRS`).
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from pss_keras.benchmarking import paired_stats as stats
from pss_keras.benchmarking.paired_sampling import BASELINES, PRIMARY, SETS
from pss_keras.benchmarking.subnet_spread import same_settings

MIN_PAIRS = 3
UNITS = {
    "minival_top1, val_top1, val_top5": "fraction of images",
    "matched_flops, matched_flops_difference, decomposition, summary": "percentage points",
    "mflops, points, span, target": "millions of multiply-adds",
    "pool_score": "negative cross-entropy (nats), the pool's smoothed score",
}


def start_record(previous: dict | None, settings: dict) -> dict:
    """The record to continue: ``previous`` (written by an earlier run)
    when it was made with the same ``settings`` (paths aside), else a fresh one.

    Raises:
        ValueError: ``previous`` holds pairs made with other settings.
    """
    if not previous or not previous.get("seeds"):
        return {"settings": settings, "seeds": []}
    if not same_settings(previous.get("settings"), settings):
        raise ValueError(
            f"The result file holds {len(previous['seeds'])} pair(s) made with other settings; "
            "use another --name (or remove the file) to start afresh."
        )
    return {**previous, "settings": settings, "seeds": list(previous["seeds"])}


def differences(record: dict, baseline: str = PRIMARY) -> dict[int, float]:
    """``{seed: matched-FLOPs difference}`` of the pairs that have one."""
    return {
        e["seed"]: e["matched_flops"][baseline]["mean"]
        for e in record["seeds"]
        if e.get("matched_flops", {}).get(baseline, {}).get("mean") is not None
    }


def _judged(values: dict) -> dict:
    """`paired_stats.decide` on the values, with the pairs a 1-point
    effect needs for 80 % power at their SD."""
    out = {"differences": {str(k): v for k, v in values.items()},
           **stats.decide(list(values.values()))}  # fmt: skip
    sd = out.get("sd")
    out["pairs_for_1_point_at_80_power"] = stats.pairs_for_power(sd) if sd is not None else None
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def per_band(record: dict) -> dict:
    """Per candidate set and band, across pairs: MFLOPs and validation
    top-1 (points) of the chosen subnet, mean, lowest and highest."""
    rows: dict = {}
    for entry in record["seeds"]:
        for band in entry["bands"]:
            for set_name in SETS:
                if set_name in band:
                    chosen = band[set_name]["chosen"]
                    cell = rows.setdefault(set_name, {}).setdefault(
                        band["target"], {"name": band["name"], "mflops": [], "top1": []}
                    )
                    cell["mflops"].append(float(chosen["mflops"]))
                    cell["top1"].append(100 * float(chosen["val_top1"]))
    return {
        set_name: [
            {
                "target": target,
                "name": c["name"],
                "pairs": len(c["top1"]),
                "mflops": round(statistics.fmean(c["mflops"]), 4),
                "mean": round(statistics.fmean(c["top1"]), 4),
                "min": round(min(c["top1"]), 4),
                "max": round(max(c["top1"]), 4),
            }
            for target, c in sorted(bands.items())
        ]
        for set_name, bands in rows.items()
    }


def summarize(record: dict) -> dict:
    """Across the pairs: the rule on the `PRIMARY` baseline's differences
    (its fields at the top level), every baseline's under ``by_baseline``,
    the cross evaluation's mean weights and selection parts, `per_band`."""
    by_baseline = {base: _judged(differences(record, base)) for base in BASELINES}
    cross = {}
    for base in BASELINES:
        parts = [e["cross_summary"][base] for e in record["seeds"] if "cross_summary" in e]
        if parts:
            cross[base] = {key: round(statistics.fmean(p[key] for p in parts), 4)
                           for key in ("total", "weights", "selection")}  # fmt: skip
    return {
        "baseline": PRIMARY,
        **by_baseline[PRIMARY],
        "by_baseline": by_baseline,
        "cross_evaluation": cross,
        "per_band": per_band(record),
    }


def verdict_sentence(summary: dict) -> str:
    """The verdict in one sentence, with its numbers."""
    n, verdict = summary["n"], summary["verdict"]
    if n < 2:
        return verdict
    text = (
        f"{verdict}: pss - {summary['baseline']} at matched FLOPs {summary['mean']:+.2f} points "
        f"(95 % CI {summary['low']:+.2f} to {summary['high']:+.2f}, {n} pairs)"
    )
    if summary.get("pairs_to_decide"):
        text += f"; about {summary['pairs_to_decide']} pairs would decide at this mean and SD"
    elif verdict == stats.INCONCLUSIVE:
        text += "; no number of pairs decides at this mean (uniform ahead by >= 0.5 points)"
    return text


def selection_sd(bands: list[dict], count: int = 10, draws: int = 2000, seed: int = 0) -> float:
    """One pair's SD (points) of the matched-FLOPs difference that choosing
    alone causes, from the subnet-spread study's bands (each with
    ``subnets``: ``minival_top1``, ``val_top1``): per band the variance of
    the validation top-1 of the best-on-minival of ``count`` subnets drawn
    without replacement (``draws`` times), both arms choosing
    independently, the bands averaged: ``sqrt(2 * sum(var_b)) / bands``.

    Raises:
        ValueError: no band, or a band of fewer than ``count`` subnets.
    """
    if not bands:
        raise ValueError("No band of the subnet-spread study to estimate the SD from.")
    rng = np.random.default_rng(seed)
    variances = []
    for band in bands:
        subnets = band["subnets"]
        if len(subnets) < count:
            raise ValueError(f"Band {band['name']} has {len(subnets)} subnets, fewer than {count}.")
        minival = np.array([float(s["minival_top1"]) for s in subnets])
        val = 100 * np.array([float(s["val_top1"]) for s in subnets])
        picks = []
        for _ in range(draws):
            idx = rng.choice(len(subnets), size=count, replace=False)
            picks.append(val[idx[int(np.argmax(minival[idx]))]])
        variances.append(float(np.var(picks, ddof=1)))
    return math.sqrt(2 * sum(variances)) / len(variances)


def power_plan(spread: dict, count: int = 10, source: str = "") -> dict:
    """The number of pairs from the subnet-spread study's record
    (`selection_sd`, then `paired_stats.pairs_for_power`, at least `MIN_PAIRS`)."""
    sd = selection_sd(spread["bands"], count)
    return {
        "source": source,
        "selection_sd": round(sd, 4),
        "pairs_for_1_point_at_80_power": stats.pairs_for_power(sd),
        "pairs": max(MIN_PAIRS, stats.pairs_for_power(sd)),
        "note": "choosing noise alone (seed-to-seed training noise not included): a lower bound",
    }


def format_table(record: dict) -> str:
    """Per pair: training minutes, matched-FLOPs differences and the cross
    evaluation's parts; per band the sets' mean chosen accuracy; the verdict."""
    lines = [f"{'seed':<6}{'pss min':>9}{'unif min':>9}"
             + "".join(f"{'vs ' + b:>20}" for b in BASELINES)
             + f"{'weights':>9}{'selection':>11}"]  # fmt: skip
    for e in record["seeds"]:
        minutes = [e["arms"].get(a, {}).get("wall_seconds") for a in ("pss", "uniform")]
        row = f"{e['seed']:<6}" + "".join(
            f"{m / 60:>9.1f}" if m is not None else f"{'-':>9}" for m in minutes
        )
        for base in BASELINES:
            d = e.get("matched_flops", {}).get(base, {}).get("mean")
            row += f"{d:>+20.2f}" if d is not None else f"{'-':>20}"
        parts = e.get("cross_summary", {}).get(PRIMARY)
        row += (
            f"{parts['weights']:>+9.2f}{parts['selection']:>+11.2f}"
            if parts
            else f"{'-':>9}{'-':>11}"
        )
        lines.append(row)
    summary = record.get("summary") or summarize(record)
    cells = {(s, c["target"]): c for s, band in summary["per_band"].items() for c in band}
    names = {target: c["name"] for (_, target), c in cells.items()}
    if names:
        lines.append(f"{'band':<12}" + "".join(f"{s:>16}" for s in SETS))
        for target in sorted(names):
            row = f"{names[target]:<12}"
            for s in SETS:
                c = cells.get((s, target))
                row += f"{c['mean']:>11.2f} n={c['pairs']:<2}" if c else f"{'-':>16}"
            lines.append(row)
    lines.append(f"verdict: {verdict_sentence(summary)}")
    return "\n".join(lines)


def plot(record: dict, path: str, title: str = "") -> str:
    """Per-band accuracy of each set across pairs (mean, lowest to highest)
    and the pairs' matched-FLOPs differences with their 95 % intervals
    (`pss_keras.utils.plots.plot_paired_sampling`)."""
    from pss_keras.utils import plots

    summary = record.get("summary") or summarize(record)
    curves = {
        s: [(c["mflops"], c["mean"], c["min"], c["max"]) for c in cells]
        for s, cells in summary["per_band"].items()
    }
    diffs, intervals = {}, {}
    for base in BASELINES:
        judged = summary["by_baseline"][base]
        diffs[base] = [(int(k), v) for k, v in judged["differences"].items()]
        intervals[base] = (
            (judged["mean"], judged["low"], judged["high"]) if judged["n"] >= 2 else None
        )
    return plots.plot_paired_sampling(curves, diffs, intervals, path, title=title,
                                      margin=stats.NO_EFFECT)  # fmt: skip
