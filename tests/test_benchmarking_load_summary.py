"""A timeline's figures (pss_keras.benchmarking.load_summary): per phase,
meeting the objective, the best fixed tier, means over repeats. No server."""

import collections

import numpy as np
import pytest

from pss_keras.benchmarking import load_summary
from pss_keras.benchmarking.load_test import Phase, Request

PHASES3 = [Phase("p0", 1, 1), Phase("p1", 1, 1), Phase("empty", 1, 1)]
TOP1 = {"s": 0.5, "l": 0.8}


def _requests():
    """Phase 0: within, over, within, failed (fast). Phase 1: within, at
    the objective (within), over. Phase 2: none. Objective 10 ms."""
    return [
        Request(0.1, 0, "s", latency_ms=5.0, send_lag_ms=0.1),
        Request(0.2, 0, "l", latency_ms=12.0, send_lag_ms=0.4),
        Request(0.3, 0, "l", latency_ms=8.0, send_lag_ms=0.2),
        Request(0.4, 0, "s", latency_ms=3.0, send_lag_ms=0.3, error="boom"),
        Request(1.1, 1, "l", latency_ms=9.0, send_lag_ms=1.0),
        Request(1.2, 1, "l", latency_ms=10.0, send_lag_ms=2.0),
        Request(1.5, 1, "s", latency_ms=11.0, send_lag_ms=3.0),
    ]


def test_summarize_per_phase_figures():
    requests = _requests()
    summary = load_summary.summarize(requests, PHASES3, objective_ms=10.0, top1=TOP1)
    p0, p1, empty = summary["phases"]
    assert p0["name"] == "p0" and p0["requests"] == 4 and p0["errors"] == 1
    assert p0["within_objective"] == 0.5  # the failed one is a miss, fast as it was
    assert p0["mean_top1"] == pytest.approx((0.5 + 0.8 + 0.8 + 0.0) / 4)  # failure: 0 credit
    # Credited only within the objective, the late l (12 ms) counts as wrong.
    assert p0["mean_top1_in_time"] == pytest.approx((0.5 + 0.0 + 0.8 + 0.0) / 4)
    assert p0["switches"] == 2  # s -> l, l -> l, l -> s
    assert p0["tiers"] == {"s": 2, "l": 2}
    lat0 = [5.0, 12.0, 8.0, 3.0]  # the failure's elapsed time included
    for q in (50, 95, 99):
        assert p0[f"p{q}_ms"] == pytest.approx(np.percentile(lat0, q))
    assert p0["p50_ms"] == pytest.approx(6.5)
    assert p0["send_lag_p99_ms"] == pytest.approx(np.percentile([0.1, 0.4, 0.2, 0.3], 99))

    assert p1["requests"] == 3 and p1["errors"] == 0
    assert p1["within_objective"] == pytest.approx(2 / 3)  # 10.0 <= 10.0 is within
    assert p1["mean_top1"] == pytest.approx((0.8 + 0.8 + 0.5) / 3)
    assert p1["mean_top1_in_time"] == pytest.approx((0.8 + 0.8 + 0.0) / 3)
    assert p1["switches"] == 1 and p1["tiers"] == {"l": 2, "s": 1}
    assert p1["p99_ms"] == pytest.approx(np.percentile([9.0, 10.0, 11.0], 99))

    assert empty == {
        "name": "empty", "requests": 0, "errors": 0, "within_objective": None,
        "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_top1": None,
        "mean_top1_in_time": None, "switches": 0, "tiers": {}, "send_lag_p99_ms": None, "queue_p99_ms": None,
    }  # fmt: skip
    assert summary["overall"] == {
        "requests": 7,
        "within_objective": pytest.approx(4 / 7),
        "mean_top1": pytest.approx((0.5 + 0.8 + 0.8 + 0.0 + 0.8 + 0.8 + 0.5) / 7),
        "mean_top1_in_time": pytest.approx((0.5 + 0.8 + 0.8 + 0.8) / 7),
    }


def test_summarize_tighter_objective_and_unknown_tier():
    requests = _requests()
    tight = load_summary.summarize(requests, PHASES3, objective_ms=5.0, top1=TOP1)
    assert [row["within_objective"] for row in tight["phases"][:2]] == [0.25, 0.0]
    assert tight["overall"]["within_objective"] == pytest.approx(1 / 7)
    empty = load_summary.summarize([], PHASES3, objective_ms=5.0, top1=TOP1)
    assert empty["overall"] == {
        "requests": 0, "within_objective": None, "mean_top1": None, "mean_top1_in_time": None,
    }  # fmt: skip
    with pytest.raises(KeyError):
        load_summary.summarize(requests, PHASES3, objective_ms=5.0, top1={"s": 0.5})


def _summary(*within):
    return {"phases": [{"within_objective": w} for w in within]}


def test_meets_needs_99_percent_within():
    summary = _summary(1.0, 0.99, 0.9899, None, 0.0)
    assert [load_summary.meets(summary, i) for i in range(5)] == [True, True, False, False, False]
    assert load_summary.MEETS == 0.99


Tier = collections.namedtuple("Tier", "name top1")
TIERS = [Tier("small", 0.5), Tier("mid", 0.7), Tier("large", 0.8), Tier("huge", 0.9)]


class Calibration:
    """A fake ``run`` for best_fixed_tier: canned summaries, every call recorded."""

    def __init__(self, summaries):
        self.summaries, self.calls = summaries, []

    def __call__(self, name, needed):
        self.calls.append((name, needed))
        return self.summaries[name]


def test_best_fixed_tier_ignores_phases_the_cheapest_misses():
    run = Calibration({
        # The cheapest meets phases 0 and 1, misses phase 2 (so phase 2 is ignored).
        "small": _summary(1.0, 0.995, 0.5),
        "mid": _summary(1.0, 0.99, 0.1),  # meets 0 and 1: fits
        "large": _summary(1.0, 0.98, 1.0),  # misses phase 1: out, however good in phase 2
        "huge": _summary(0.9, 1.0, 1.0),  # misses phase 0: out
    })  # fmt: skip
    best, summaries = load_summary.best_fixed_tier(TIERS, run)
    assert best == "mid"
    # The cheapest first (no phases to meet yet), then the most accurate first,
    # each told the phases it must meet; none runs twice.
    assert run.calls == [("small", None), ("huge", [0, 1]), ("large", [0, 1]), ("mid", [0, 1])]
    assert summaries == {n: run.summaries[n] for n in ("small", "huge", "large", "mid")}
    # Once "large" meets phase 1 it is the most accurate that fits, and "mid"
    # is never run.
    run = Calibration(dict(run.summaries, large=_summary(1.0, 0.99, 0.0)))
    best, summaries = load_summary.best_fixed_tier(TIERS, run)
    assert best == "large" and "mid" not in summaries
    assert [name for name, _ in run.calls] == ["small", "huge", "large"]
    # The order after the cheapest does not matter: accuracy decides.
    shuffled = [TIERS[0], TIERS[2], TIERS[3], TIERS[1]]
    assert load_summary.best_fixed_tier(shuffled, Calibration(run.summaries))[0] == "large"


def test_best_fixed_tier_falls_back_to_the_cheapest():
    run = Calibration({
        "small": _summary(1.0, 1.0),
        "mid": _summary(0.98, 1.0),
        "large": _summary(1.0, 0.5),
        "huge": _summary(None, 1.0),  # a phase without requests (a run ended early) does not meet
    })  # fmt: skip
    best, summaries = load_summary.best_fixed_tier(TIERS, run)
    assert best == "small" and set(summaries) == {"small", "mid", "large", "huge"}
    assert run.calls[-1] == ("mid", [0, 1]) and len(run.calls) == 4
    # A cheapest tier that meets no phase constrains nothing: the most accurate wins.
    run = Calibration({name: _summary(0.0, 0.0) for name in ("small", "mid", "large", "huge")})
    assert load_summary.best_fixed_tier(TIERS, run)[0] == "huge"
    assert run.calls == [("small", None), ("huge", [])]


def _timed(scheduled, phase, latency_ms=float("nan"), error=None):
    return Request(scheduled, phase, "t", latency_ms=latency_ms, error=error)


def test_phase_missed_counts_only_certain_misses():
    """100 requests in phase 0, objective 10 ms, now = 5.0 s: a miss is
    a failure, an answer over 10 ms, or a request in flight for more than
    10 ms; 99 % must be within, so 2 certain misses fail the phase."""
    ok = [_timed(1 + i / 100, 0, latency_ms=5.0) for i in range(98)]
    other = [_timed(0.5, 1, latency_ms=99.0)] * 5  # another phase's misses do not count
    # One answer over, one still in flight but only for 5 ms: not yet certain.
    rs = ok + [_timed(2.0, 0, latency_ms=10.5), _timed(4.995, 0)] + other
    assert not load_summary.phase_missed(rs, 0, 10.0, now=5.0)
    # 20 ms later the one in flight has taken 25 ms: a second certain miss.
    assert load_summary.phase_missed(rs, 0, 10.0, now=5.02)
    # A failure is a miss however fast it failed.
    rs = ok + [_timed(2.0, 0, latency_ms=10.5), _timed(3.0, 0, latency_ms=1.0, error="x")]
    assert load_summary.phase_missed(rs, 0, 10.0, now=5.0)
    # Exactly at the objective is within; a phase without requests is not missed.
    rs = ok + [_timed(2.0, 0, latency_ms=10.0), _timed(3.0, 0, latency_ms=10.5)]
    assert not load_summary.phase_missed(rs, 0, 10.0, now=5.0)
    assert not load_summary.phase_missed(other, 0, 10.0, now=5.0)


def test_aggregate_means_spreads_and_summed_tiers():
    first = load_summary.summarize(_requests(), PHASES3[:2], objective_ms=10.0, top1=TOP1)
    second_requests = [
        Request(0.1, 0, "l", latency_ms=20.0, send_lag_ms=0.5),
        Request(0.5, 0, "l", latency_ms=4.0, send_lag_ms=0.1),
        Request(1.5, 1, "s", latency_ms=1.0, send_lag_ms=0.2),
    ]
    second = load_summary.summarize(second_requests, PHASES3[:2], objective_ms=10.0, top1=TOP1)
    out = load_summary.aggregate([first, second])
    assert out["repeats"] == 2
    p0, p1 = out["phases"]
    assert p0["name"] == "p0" and "name_spread" not in p0
    assert p0["requests"] == 3.0 and p0["requests_spread"] == [2.0, 4.0]
    assert p0["within_objective"] == pytest.approx(0.5)
    assert p0["within_objective_spread"] == [0.5, 0.5]
    assert p0["p99_ms"] == pytest.approx(
        (np.percentile([5, 12, 8, 3], 99) + np.percentile([20, 4], 99)) / 2
    )
    assert p0["p99_ms_spread"] == pytest.approx(
        [np.percentile([5, 12, 8, 3], 99), np.percentile([20, 4], 99)]
    )
    assert p0["mean_top1"] == pytest.approx((0.525 + 0.8) / 2)
    assert p0["mean_top1_spread"] == pytest.approx([0.525, 0.8])
    assert p0["switches"] == 1.0 and p0["switches_spread"] == [0.0, 2.0]
    assert p0["errors"] == 0.5 and p0["errors_spread"] == [0.0, 1.0]
    assert p0["tiers"] == {"s": 2, "l": 4}  # summed, not averaged
    assert "tiers_spread" not in p0
    assert p1["tiers"] == {"l": 2, "s": 2}
    assert p1["within_objective"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert p1["within_objective_spread"] == pytest.approx([2 / 3, 1.0])
    overall = out["overall"]
    assert overall["requests"] == 5.0 and overall["requests_spread"] == [3.0, 7.0]
    assert overall["within_objective"] == pytest.approx((4 / 7 + 2 / 3) / 2)
    assert overall["within_objective_spread"] == pytest.approx([4 / 7, 2 / 3])
    assert overall["mean_top1"] == pytest.approx((4.2 / 7 + 2.1 / 3) / 2)
    # One run: its own figures, spreads of zero width.
    single = load_summary.aggregate([first])
    assert single["repeats"] == 1
    assert single["overall"]["within_objective_spread"] == pytest.approx([4 / 7, 4 / 7])


def test_aggregate_of_a_phase_empty_in_one_repeat_is_order_independent():
    phases = [Phase("a", 1, 1)]
    answered = load_summary.summarize([Request(0.1, 0, "s", 5.0, 0.1)], phases, 10.0, TOP1)
    empty = load_summary.summarize([], phases, 10.0, TOP1)
    one, other = (
        load_summary.aggregate([answered, empty]),
        load_summary.aggregate([empty, answered]),
    )
    assert one["phases"][0]["within_objective"] == other["phases"][0]["within_objective"]
    assert one["phases"][0]["within_objective"] == 1.0
    assert one["phases"][0]["within_objective_spread"] == [1.0, 1.0]
    both_empty = load_summary.aggregate([empty, empty])["phases"][0]
    assert both_empty["within_objective"] is None and both_empty["within_objective_spread"] is None


Tier = collections.namedtuple("Tier", "name top1")


def _tier_summary(*phases):
    """``summarize``-like: per phase (within_objective, mean_top1_in_time)."""
    return {
        "phases": [
            {"name": f"p{i}", "within_objective": w, "mean_top1_in_time": c}
            for i, (w, c) in enumerate(phases)
        ]
    }


def test_phase_oracle_takes_the_most_accurate_tier_that_held_each_phase():
    tiers = [Tier("small", 0.6), Tier("mid", 0.7), Tier("large", 0.8)]
    summaries = {
        "small": _tier_summary((1.0, 0.6), (1.0, 0.6), (0.995, 0.597), (0.9, 0.54)),
        "mid": _tier_summary((1.0, 0.7), (0.995, 0.6965), (0.95, 0.665), (0.8, 0.56)),
        "large": _tier_summary((0.999, 0.7992), (0.9, 0.72), (None, None), (0.5, 0.4)),
    }
    oracle = load_summary.phase_oracle(summaries, tiers, weights=[1, 1, 1, 1])
    assert [(r["tier"], r["top1"]) for r in oracle["phases"]] == [
        ("large", 0.8), ("mid", 0.7), ("small", 0.6),
        (None, None),  # no tier held: the best in-time credit any tier earned
    ]  # fmt: skip
    # large's 0.72 in phase 1 is higher, but large missed the objective there.
    credits = [r["mean_top1_in_time"] for r in oracle["phases"]]
    assert credits == [0.7992, 0.6965, 0.597, 0.56]
    assert oracle["overall"]["mean_top1_in_time"] == pytest.approx(np.mean(credits))
    weighted = load_summary.phase_oracle(summaries, tiers, weights=[3, 1, 0, 0])
    assert weighted["overall"]["mean_top1_in_time"] == pytest.approx((3 * 0.7992 + 0.6965) / 4)


def test_phase_oracle_without_any_run_of_a_phase_has_no_overall():
    summaries = {"small": _tier_summary((1.0, 0.6), (None, None))}
    oracle = load_summary.phase_oracle(summaries, [Tier("small", 0.6)], weights=[1, 1])
    assert oracle["phases"][1] == {
        "name": "p1", "tier": None, "top1": None, "mean_top1_in_time": None,
    }  # fmt: skip
    assert oracle["overall"]["mean_top1_in_time"] is None


def test_gap_closed_is_the_place_between_best_fixed_and_the_oracle():
    assert load_summary.gap_closed(0.65, 0.60, 0.70) == pytest.approx(0.5)
    assert load_summary.gap_closed(0.70, 0.60, 0.70) == pytest.approx(1.0)
    assert load_summary.gap_closed(0.55, 0.60, 0.70) == pytest.approx(-0.5)  # below best_fixed
    assert load_summary.gap_closed(0.65, 0.70, 0.70) is None  # no gap to close
    assert load_summary.gap_closed(0.65, 0.60, None) is None
