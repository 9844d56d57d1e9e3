"""The subnet-spread study's statistics: Kendall tau, best minus median,
band records, the verdict, resuming a record, distinct draws."""

import math
import random

import pytest

from pss_keras.benchmarking import subnet_spread as study


@pytest.fixture(autouse=True)
def _independent_random_state():
    """Overrides conftest's seeding fixture, which imports TensorFlow: these
    tests use their own seeded generators and stay TF-free and fast."""
    yield


def _row(val, minival=None, score_1=0.0, score_10=0.0, mflops=10.0, i=0):
    return {
        "config": {"resolution": 32 + 8 * i},
        "mflops": mflops,
        "minival_top1": val if minival is None else minival,
        "val_top1": val,
        "score_1": score_1,
        "score_10": score_10,
    }


# -- Kendall tau -----------------------------------------------------------------
def test_kendall_tau_perfect_and_reversed():
    assert study.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert study.kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)


def test_kendall_tau_counts_ties_as_tau_b():
    # x has one tied pair, y none: 5 concordant, 0 discordant of 6 pairs,
    # tau-b = 5 / sqrt((6 - 1) * 6).
    assert study.kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    # A pair tied in both counts in neither numerator nor the untied pairs.
    assert study.kendall_tau([1, 1, 2], [5, 5, 6]) == pytest.approx(1.0)
    # One discordant pair of three: (2 - 1) / 3.
    assert study.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_kendall_tau_is_nan_without_a_ranking():
    assert math.isnan(study.kendall_tau([1, 2, 3], [7, 7, 7]))


def test_kendall_tau_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for n in (2, 5, 30):
        # Coarse values, so that ties occur in both sequences.
        x = [rng.randint(0, 6) for _ in range(n)]
        y = [xi + rng.randint(-3, 3) for xi in x]
        expected = scipy_stats.kendalltau(x, y).statistic
        got = study.kendall_tau(x, y)
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_kendall_tau_refuses_bad_input():
    with pytest.raises(ValueError, match="paired values: 3 and 2"):
        study.kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2 pairs, got 1"):
        study.kendall_tau([1], [1])


# -- best minus median -------------------------------------------------------------
def test_best_minus_median():
    assert study.best_minus_median([80.0, 81.0, 85.0]) == pytest.approx(4.0)
    assert study.best_minus_median([80.0, 81.0, 82.0, 90.0]) == pytest.approx(8.5)
    assert study.best_minus_median([70.0, 70.0]) == 0.0
    with pytest.raises(ValueError, match="at least 2 subnets, got 1"):
        study.best_minus_median([80.0])


# -- one band ----------------------------------------------------------------------
def test_band_statistics():
    rows = [
        _row(0.80, minival=0.79, score_1=-1.0, score_10=-1.1, mflops=20.5, i=0),
        _row(0.82, minival=0.83, score_1=-0.9, score_10=-1.0, mflops=21.0, i=1),
        _row(0.85, minival=0.81, score_1=-1.2, score_10=-0.9, mflops=19.8, i=2),
    ]
    band = study.band_statistics(21.0, "flops_21m", rows)
    assert band["target"] == 21.0 and band["name"] == "flops_21m"
    assert band["num_subnets"] == 3
    assert band["mflops_range"] == [19.8, 21.0]
    assert band["best_val_top1"] == pytest.approx(85.0)
    assert band["median_val_top1"] == pytest.approx(82.0)
    assert band["best_minus_median"] == pytest.approx(3.0)
    assert band["kendall_tau"] == {
        "minival_vs_val": pytest.approx(1 / 3, abs=1e-4),
        "score_1_batch_vs_val": pytest.approx(-1 / 3, abs=1e-4),
        "score_10_batches_vs_val": pytest.approx(1.0),
        "mflops_vs_val": pytest.approx(-1 / 3, abs=1e-4),
    }
    assert band["subnets"] == rows


def test_band_statistics_leaves_an_undefined_tau_empty():
    rows = [_row(0.8, score_1=-1.0, i=0), _row(0.9, score_1=-1.0, i=1)]
    band = study.band_statistics(5.0, "flops_5m", rows)
    assert band["kendall_tau"]["score_1_batch_vs_val"] is None  # every score equal
    assert band["kendall_tau"]["minival_vs_val"] == pytest.approx(1.0)


def test_band_statistics_refuses_bad_input():
    with pytest.raises(ValueError, match="has 1 subnet"):
        study.band_statistics(5.0, "flops_5m", [_row(0.8)])
    incomplete = [_row(0.8, i=0), _row(0.9, i=1)]
    del incomplete[1]["score_10"]
    with pytest.raises(ValueError, match=r"lacks \['score_10'\]"):
        study.band_statistics(5.0, "flops_5m", incomplete)


# -- across bands ------------------------------------------------------------------
def _band(target, gap, tau=0.5):
    taus = {key: tau for key in study.TAU_SIGNALS}
    return {"target": target, "name": f"flops_{target:g}m", "best_minus_median": gap,
            "kendall_tau": taus, "num_subnets": 2, "mflops_range": [target - 1, target + 1],
            "best_val_top1": 80.0 + gap, "median_val_top1": 80.0, "subnets": []}  # fmt: skip


def test_verdict_follows_the_rule():
    assert study.verdict([0.5, 1.0, 0.8, 2.5]).startswith("little to prioritize")
    assert "3 of 4 bands" in study.verdict([0.5, 1.0, 0.8, 2.5])
    assert study.verdict([2.0, 3.0, 2.5, 0.2]).startswith("something to prioritize")
    # Half is not most: neither rule holds.
    assert study.verdict([0.5, 1.0, 2.5, 3.0]).startswith("borderline")
    assert study.verdict([1.5, 1.5, 1.5]).startswith("borderline")
    with pytest.raises(ValueError, match="No band"):
        study.verdict([])


def test_summarize_counts_bands():
    summary = study.summarize([_band(5, 0.4, 0.1), _band(13, 1.0, 0.3), _band(21, 2.2, 0.7)])
    assert summary["bands"] == 3
    assert summary["bands_within_1_point"] == 2
    assert summary["bands_at_least_2_points"] == 1
    assert summary["median_best_minus_median"] == pytest.approx(1.0)
    assert summary["median_kendall_tau"]["minival_vs_val"] == pytest.approx(0.3)
    assert summary["verdict"].startswith("little to prioritize")
    assert study.summarize([])["verdict"] == "no band evaluated yet"


def test_add_band_orders_replaces_and_summarizes():
    record = study.start_record(None, {"a": 1})
    study.add_band(record, _band(21, 3.0))
    study.add_band(record, _band(5, 0.5))
    study.add_band(record, _band(21, 2.0))  # measured again: replaces
    assert [b["target"] for b in record["bands"]] == [5, 21]
    assert record["bands"][1]["best_minus_median"] == 2.0
    assert record["summary"]["bands"] == 2
    assert study.done_targets(record) == {5.0, 21.0}
    table = study.format_table(record)
    assert "flops_5m" in table and table.splitlines()[-1].startswith("verdict: borderline")


# -- resuming ------------------------------------------------------------------------
def test_start_record_keeps_bands_of_the_same_settings():
    settings = {"training": {"range": [32, 128], "data": {"dataset": "/a/imagenette2"}}, "n": 30}
    previous = {"settings": settings, "bands": [_band(5, 0.5)], "name": "x"}
    # Another data path, and a tuple where the JSON read back has a list: the same study.
    moved = {"training": {"range": (32, 128), "data": {"dataset": "/b/imagenette2"}}, "n": 30}
    record = study.start_record(previous, moved)
    assert study.done_targets(record) == {5.0}
    assert record["settings"] == moved
    with pytest.raises(ValueError, match="1 band\\(s\\) measured with other settings"):
        study.start_record(previous, {**settings, "n": 10})
    assert study.start_record({"settings": {}, "bands": []}, settings)["bands"] == []


# -- drawing -------------------------------------------------------------------------
def test_draw_distinct_skips_repeats_and_gives_up():
    values = iter([3, 3, 1, 3, 2, 1])
    assert study.draw_distinct(lambda rng: next(values), 3, None) == [3, 1, 2]
    rng = random.Random(0)
    with pytest.raises(ValueError, match="Only 2 different subnets in 40 draws"):
        study.draw_distinct(lambda r: r.randint(0, 1), 3, rng, max_draws=40)
    with pytest.raises(ValueError, match="at least 2 subnets"):
        study.draw_distinct(lambda r: 0, 1, rng)


def test_draw_distinct_from_a_conditional_sampler_is_seeded():
    """Different subnets of the target, the same for the same seed."""
    np = pytest.importorskip("numpy")
    from pss_keras.cost import flops
    from pss_keras.supernet import specs
    from pss_keras.training.pools import TargetGrid
    from pss_keras.training.sampling import ConditionalSampler

    space = specs.SearchSpace("mobilenet_v1", (32, 64), 8, (0.5, 1.0), 0.25, 10)
    grid = TargetGrid("flops", 0.6, 2.4, 0.6)
    sampler = ConditionalSampler.build(space, grid, num_samples=2000, seed=0)
    k = sampler.trainable[1]

    def draw(seed):
        rng = np.random.default_rng([seed, k])
        return study.draw_distinct(lambda r: sampler.sample(k, r), 6, rng)

    configs = draw(0)
    assert len(set(configs)) == 6 and configs == draw(0) and configs != draw(1)
    for config in configs:
        assert grid.index(flops.count_mflops(config, 10, 0.25)) == k
