"""A timeline's figures: per phase and overall, over repeats, and the best fixed tier.

`summarize` gives each phase's requests within the objective, percentiles,
accuracy delivered and tier switches (a failed request is a miss and
delivers no accuracy). Accuracy is credited under two rules: ``mean_top1``
credits every answer, ``mean_top1_in_time`` only answers within the
objective (a late answer counts as wrong). `meets` says whether a phase
kept `MEETS` of its requests within the objective, `phase_missed` whether
it already cannot (for `pss_keras.benchmarking.load_test.run_timeline`'s
``stop_when``); `best_fixed_tier` is the best single tier a calibration
pass finds, `phase_oracle` the best tier of every phase (the bound a
policy that switches tiers can reach) and `gap_closed` a policy's place
between the two; `aggregate` averages repeated timelines.

Nothing here reads flags or imports training code.
"""

from __future__ import annotations

import math

import numpy as np

# Share of requests that must be within the objective for a phase to meet it.
MEETS = 0.99


def _percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def summarize(requests, phases, objective_ms: float, top1: dict) -> dict:
    """Per-phase and overall figures of one timeline.

    A failed request is a miss and delivers no accuracy (top-1 credit 0);
    its elapsed time enters the percentiles. ``switches``: changes of tier
    between consecutive requests of the phase, in send order.

    Returns:
        ``{"phases": [{"name", "requests", "errors", "within_objective",
        "p50_ms", "p95_ms", "p99_ms", "mean_top1", "mean_top1_in_time",
        "switches", "tiers" ({name: requests}), "send_lag_p99_ms",
        "queue_p99_ms"}], "overall": {"requests", "within_objective",
        "mean_top1", "mean_top1_in_time"}}``.
    """
    rows = []
    for i, phase in enumerate(phases):
        rs = [r for r in requests if r.phase == i]
        lat = [r.latency_ms for r in rs]
        ok = [r.error is None and r.latency_ms <= objective_ms for r in rs]
        credit = [0.0 if r.error is not None else top1[r.tier] for r in rs]
        in_time = [c if k else 0.0 for c, k in zip(credit, ok)]
        tiers = {}
        for r in rs:
            tiers[r.tier] = tiers.get(r.tier, 0) + 1
        rows.append(
            {
                "name": phase.name,
                "requests": len(rs),
                "errors": sum(r.error is not None for r in rs),
                "within_objective": float(np.mean(ok)) if rs else None,
                "p50_ms": _percentile(lat, 50),
                "p95_ms": _percentile(lat, 95),
                "p99_ms": _percentile(lat, 99),
                "mean_top1": float(np.mean(credit)) if rs else None,
                "mean_top1_in_time": float(np.mean(in_time)) if rs else None,
                "switches": sum(a.tier != b.tier for a, b in zip(rs, rs[1:])),
                "tiers": tiers,
                "send_lag_p99_ms": _percentile([r.send_lag_ms for r in rs], 99),
                "queue_p99_ms": _percentile([r.queue_ms for r in rs], 99),
            }
        )
    ok = [r.error is None and r.latency_ms <= objective_ms for r in requests]
    credit = [0.0 if r.error is not None else top1[r.tier] for r in requests]
    in_time = [c if k else 0.0 for c, k in zip(credit, ok)]
    return {
        "phases": rows,
        "overall": {
            "requests": len(requests),
            "within_objective": float(np.mean(ok)) if requests else None,
            "mean_top1": float(np.mean(credit)) if requests else None,
            "mean_top1_in_time": float(np.mean(in_time)) if requests else None,
        },
    }


def meets(summary: dict, phase: int) -> bool:
    """Whether a timeline kept >= 99 % of one phase's requests within the objective."""
    within = summary["phases"][phase]["within_objective"]
    return within is not None and within >= MEETS


def phase_missed(requests, phase: int, objective_ms: float, now: float) -> bool:
    """Whether a phase already certainly missed the objective (kept < 99 %
    within it) while some of its requests may still be in flight: failed
    requests, answers over the objective and requests in flight for longer
    than it are misses whatever the rest do. For `run_timeline`'s
    ``stop_when``."""
    rs = [r for r in requests if r.phase == phase]
    missed = sum(
        r.error is not None
        or (r.latency_ms > objective_ms if not math.isnan(r.latency_ms)
            else 1000 * (now - r.scheduled) > objective_ms)
        for r in rs
    )  # fmt: skip
    return bool(rs) and (len(rs) - missed) / len(rs) < MEETS


def best_fixed_tier(tiers, run) -> tuple[str, dict]:
    """The most accurate tier that meets the objective in every phase where
    the cheapest tier does, found running as few tiers as it can.

    The cheapest tier runs first (the phases where it meets are the ones
    every tier must meet); then the others, most accurate first, until one
    meets in all of those phases. The cheapest when none does.

    Args:
        tiers: cheapest first, with ``name`` and ``top1``.
        run: ``run(name, needed) -> summary`` (`summarize` of a timeline on
            that tier alone); ``needed``: the phases it must meet (None for
            the cheapest). It may end a timeline once a needed phase is
            missed (`phase_missed`): the phases not run have no requests,
            and do not meet.

    Returns:
        ``(name, {name: summary of every tier that ran})``.
    """
    cheapest = tiers[0].name
    summaries = {cheapest: run(cheapest, None)}
    phases = range(len(summaries[cheapest]["phases"]))
    needed = [i for i in phases if meets(summaries[cheapest], i)]
    for t in sorted(tiers, key=lambda t: t.top1, reverse=True):
        if t.name not in summaries:
            summaries[t.name] = run(t.name, needed)
        if all(meets(summaries[t.name], i) for i in needed):
            return t.name, summaries
    return cheapest, summaries  # not reached: the cheapest meets its own phases


def phase_oracle(summaries: dict, tiers, weights) -> dict:
    """The best a policy that knew each phase's load could do: per phase,
    the most accurate tier that met the objective there (`meets`), and the
    top-1 it delivered there, credited only within the objective.

    Args:
        summaries: ``{tier name: summarize() of that tier alone}`` over the
            same phases (a full calibration: a phase a tier did not run
            has no requests and does not count as met).
        tiers: with ``name`` and ``top1``.
        weights: requests per phase of the timeline the oracle is compared
            on, for its overall figure.

    Returns:
        ``{"phases": [{"name", "tier", "top1", "mean_top1_in_time"}],
        "overall": {"mean_top1_in_time"}}``. A phase no tier met has tier
        None and the best in-time credit any tier earned there; the overall
        figure is None when no tier ran some phase.
    """
    by_accuracy = sorted(tiers, key=lambda t: t.top1, reverse=True)
    phases = next(iter(summaries.values()))["phases"]
    rows = []
    for i, phase in enumerate(phases):
        held = [t for t in by_accuracy if t.name in summaries and meets(summaries[t.name], i)]
        ran = [summaries[n]["phases"][i]["mean_top1_in_time"] for n in summaries]
        ran = [v for v in ran if v is not None]
        if held:
            best = held[0]
            credit = summaries[best.name]["phases"][i]["mean_top1_in_time"]
        else:
            best, credit = None, (max(ran) if ran else None)
        rows.append({
            "name": phase["name"], "tier": best.name if best else None,
            "top1": best.top1 if best else None, "mean_top1_in_time": credit,
        })  # fmt: skip
    credits = [r["mean_top1_in_time"] for r in rows]
    overall = None
    if all(c is not None for c in credits) and sum(weights) > 0:
        overall = float(np.average(credits, weights=weights))
    return {"phases": rows, "overall": {"mean_top1_in_time": overall}}


def gap_closed(policy: float, best_fixed: float, oracle: float) -> float | None:
    """A policy's place between the best fixed tier (0) and the per-phase
    oracle (1): ``(policy - best_fixed) / (oracle - best_fixed)``; None
    when the oracle is no better than the best fixed tier (no gap)."""
    if oracle is None or best_fixed is None or policy is None or oracle <= best_fixed:
        return None
    return float((policy - best_fixed) / (oracle - best_fixed))


def aggregate(runs: list[dict]) -> dict:
    """Means over repeated `summarize` results, with [min, max] spreads.

    Every numeric field ``x`` becomes the mean, beside ``x_spread``, over
    the repeats that have it (a phase without requests has None figures;
    None when no repeat has it); ``tiers`` sums the requests per tier over
    the repeats.
    """
    numeric = ("requests", "errors", "within_objective", "p50_ms", "p95_ms", "p99_ms",
               "mean_top1", "mean_top1_in_time", "switches", "send_lag_p99_ms",
               "queue_p99_ms")  # fmt: skip

    def merge(rows):
        out = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if key == "tiers":
                total = {}
                for v in values:
                    for name, n in v.items():
                        total[name] = total.get(name, 0) + n
                out[key] = total
            elif key in numeric:
                values = [v for v in values if v is not None]
                out[key] = float(np.mean(values)) if values else None
                out[f"{key}_spread"] = [float(min(values)), float(max(values))] if values else None
            else:
                out[key] = values[0]
        return out

    return {
        "phases": [merge([r["phases"][i] for r in runs]) for i in range(len(runs[0]["phases"]))],
        "overall": merge([r["overall"] for r in runs]),
        "repeats": len(runs),
    }
