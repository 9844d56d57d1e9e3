"""Across seed pairs: resuming the record, the summary and its verdict,
the power plan from the subnet-spread study, the table and the plot."""

import math

import pytest

from pss_keras.benchmarking import paired_stats as stats
from pss_keras.benchmarking import paired_summary as summary


@pytest.fixture(autouse=True)
def _independent_random_state():
    """Overrides conftest's seeding fixture, which imports TensorFlow: these
    tests use their own seeded generators and stay TF-free and fast."""
    yield


def _chosen(mflops, top1):
    return {"chosen": {"mflops": mflops, "val_top1": top1}}


def _pair(seed, random_diff, pool_diff, shift=0.0):
    """A finished pair: two bands, the given matched-FLOPs means."""
    bands = [
        {"target": 5.0, "name": "flops_5m", "pss": _chosen(6.0, 0.70 + shift),
         "uniform_pool": _chosen(6.5, 0.69), "uniform_random": _chosen(5.5, 0.68)},
        {"target": 13.0, "name": "flops_13m", "pss": _chosen(14.0, 0.80 + shift),
         "uniform_pool": _chosen(13.5, 0.79), "uniform_random": _chosen(14.5, 0.78)},
    ]  # fmt: skip
    return {
        "seed": seed,
        "arms": {"pss": {"wall_seconds": 2400.0}, "uniform": {"wall_seconds": 2300.0}},
        "bands": bands,
        "matched_flops": {
            "uniform_random": {"mean": random_diff},
            "uniform_pool": {"mean": pool_diff},
        },
        "cross_summary": {
            base: {"total": 1.0, "weights": 0.75, "selection": 0.25}
            for base in ("uniform_random", "uniform_pool")
        },
    }


def test_start_record_resumes_only_the_same_settings():
    settings = {"training": {"width_range": (0.5, 1.0), "job_dir": "a"}, "candidates_per_band": 10}
    assert summary.start_record(None, settings) == {"settings": settings, "seeds": []}
    previous = {"settings": {"training": {"width_range": [0.5, 1.0], "job_dir": "b"},
                             "candidates_per_band": 10}, "seeds": [{"seed": 0}]}  # fmt: skip
    assert summary.start_record(previous, settings)["seeds"] == [{"seed": 0}]
    other = dict(settings, candidates_per_band=5)
    with pytest.raises(ValueError, match="1 pair\\(s\\) made with other settings"):
        summary.start_record(previous, other)


def test_summary_applies_the_rule_to_the_primary_baseline():
    record = {"seeds": [_pair(0, 1.0, 0.2), _pair(1, 1.2, -0.1), _pair(2, 0.9, 0.0),
                        _pair(3, 1.1, 0.1)]}  # fmt: skip
    out = summary.summarize(record)
    assert out["baseline"] == "uniform_random" and out["n"] == 4
    assert out["verdict"] == stats.HELPS
    assert out["differences"] == {"0": 1.0, "1": 1.2, "2": 0.9, "3": 1.1}
    assert out["mean"] == pytest.approx(1.05)
    assert out["by_baseline"]["uniform_pool"]["verdict"] == stats.NO_EFFECT_HERE
    # SD 0.129: 2 pairs need (12.71 + 1.38)^2 * 0.129^2 = 3.3 > 2; 3 need 0.48.
    assert out["pairs_for_1_point_at_80_power"] == 3
    assert out["cross_evaluation"]["uniform_random"] == {"total": 1.0, "weights": 0.75,
                                                         "selection": 0.25}  # fmt: skip
    sentence = summary.verdict_sentence(out)
    assert sentence.startswith("PSS helps: pss - uniform_random at matched FLOPs +1.05 points")
    assert "4 pairs" in sentence


def test_summary_with_one_pair_is_pending_and_skips_pairs_without_a_difference():
    incomplete = _pair(1, None, None)
    out = summary.summarize({"seeds": [_pair(0, 0.4, 0.3), incomplete]})
    assert out["n"] == 1 and out["verdict"].startswith("pending")
    assert out["pairs_for_1_point_at_80_power"] is None
    assert summary.verdict_sentence(out) == out["verdict"]


def test_an_inconclusive_verdict_names_the_pairs_that_would_decide():
    out = summary.summarize({"seeds": [_pair(0, 3.0, 0), _pair(1, -1.0, 0), _pair(2, 1.0, 0)]})
    assert out["verdict"] == stats.INCONCLUSIVE and out["pairs_to_decide"] == 18
    assert "about 18 pairs would decide" in summary.verdict_sentence(out)
    behind = summary.summarize({"seeds": [_pair(0, -1.0, 0), _pair(1, -2.0, 0)]})
    assert "no number of pairs decides" in summary.verdict_sentence(behind)


def test_per_band_gives_mean_lowest_and_highest_across_pairs():
    record = {"seeds": [_pair(0, 1.0, 0.0, shift=0.0), _pair(1, 1.0, 0.0, shift=0.02)]}
    cells = summary.per_band(record)["pss"]
    assert [c["name"] for c in cells] == ["flops_5m", "flops_13m"]
    assert cells[0]["pairs"] == 2 and cells[0]["mflops"] == pytest.approx(6.0)
    assert (cells[0]["min"], cells[0]["mean"], cells[0]["max"]) == pytest.approx((70, 71, 72))


def _spread_band(name, top1, minival=None):
    minival = minival or top1
    return {"name": name, "subnets": [{"minival_top1": m, "val_top1": v}
                                      for m, v in zip(minival, top1)]}  # fmt: skip


def test_selection_sd_from_the_spread_study():
    # All ten candidates of a band of ten: the same choice every time.
    assert summary.selection_sd([_spread_band("a", [0.5 + 0.01 * i for i in range(10)])]) == 0.0
    # One of two subnets (50 % or 52 %) at random: variance 1 point^2 per arm,
    # so the pair's difference has SD sqrt(2 * 1) / 1 band.
    sd = summary.selection_sd([_spread_band("a", [0.50, 0.52])], count=1, draws=4000)
    assert sd == pytest.approx(math.sqrt(2), rel=0.05)
    # Two such bands: sqrt(2 * 2) / 2 = 1.
    two = summary.selection_sd([_spread_band("a", [0.50, 0.52])] * 2, count=1, draws=4000)
    assert two == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match="fewer than 10"):
        summary.selection_sd([_spread_band("a", [0.5, 0.6])])


def test_power_plan_asks_for_at_least_three_pairs():
    plan = summary.power_plan({"bands": [_spread_band("a", [0.5 + 0.01 * i for i in range(10)])]})
    assert plan["selection_sd"] == 0.0 and plan["pairs_for_1_point_at_80_power"] == 2
    assert plan["pairs"] == summary.MIN_PAIRS


def test_table_and_plot(tmp_path):
    record = {"seeds": [_pair(0, 1.0, 0.2), _pair(1, 0.6, -0.3), _pair(2, None, None)]}
    record["summary"] = summary.summarize(record)
    table = summary.format_table(record)
    assert "+1.00" in table and "flops_13m" in table and "verdict: " in table
    path = summary.plot(record, str(tmp_path / "paired.png"), title="test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
