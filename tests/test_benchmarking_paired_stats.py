"""Paired differences: Student's t, the confidence interval, the study's
decision rule, the pairs to decide and the pairs for 80 % power."""

import math

import pytest

from pss_keras.benchmarking import paired_stats as stats


@pytest.fixture(autouse=True)
def _independent_random_state():
    """Overrides conftest's seeding fixture, which imports TensorFlow: these
    tests use no random state and stay TF-free and fast."""
    yield


# -- Student's t ------------------------------------------------------------------
@pytest.mark.parametrize(
    "df, expected",
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706), (9, 2.2622),
     (10, 2.2281), (30, 2.0423)],
)  # fmt: skip
def test_t_quantile_matches_the_table_at_975(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_other_levels_symmetry_and_the_normal_limit():
    assert stats.t_quantile(0.8, 7) == pytest.approx(0.8960, abs=1e-4)
    assert stats.t_quantile(0.8, 9) == pytest.approx(0.8834, abs=1e-4)
    assert stats.t_quantile(0.995, 3) == pytest.approx(5.8409, abs=1e-4)
    assert stats.t_quantile(0.025, 4) == pytest.approx(-stats.t_quantile(0.975, 4))
    assert stats.t_quantile(0.5, 6) == 0.0
    assert stats.t_quantile(0.975, 100_000) == pytest.approx(1.95996, abs=1e-4)
    assert stats.t_cdf(0.0, 3) == pytest.approx(0.5)
    assert stats.t_cdf(stats.t_quantile(0.9, 2.5), 2.5) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="p must lie in"):
        stats.t_quantile(1.0, 3)


# -- the interval ------------------------------------------------------------------
def test_mean_interval_on_known_data():
    # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764: half-width 2.7764 * 1.5811 / sqrt(5) = 1.9632.
    out = stats.mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert out["n"] == 5 and out["mean"] == pytest.approx(3.0)
    assert out["sd"] == pytest.approx(math.sqrt(2.5))
    assert out["half_width"] == pytest.approx(1.9632, abs=1e-4)
    assert (out["low"], out["high"]) == pytest.approx((1.0368, 4.9632), abs=1e-4)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        stats.mean_interval([1.0])


# -- the decision rule -------------------------------------------------------------
@pytest.mark.parametrize(
    "low, high, mean, verdict",
    [
        (0.2, 1.8, 1.0, stats.HELPS),
        (0.1, 0.7, 0.4, stats.INCONCLUSIVE),  # above 0, but the mean is under 0.5
        (0.0, 2.0, 1.0, stats.INCONCLUSIVE),  # touching 0 is not above it
        (-0.3, 0.4, 0.05, stats.NO_EFFECT_HERE),
        (-0.5, 0.5, 0.0, stats.NO_EFFECT_HERE),  # within +-0.5, ends included
        (-0.6, 0.4, -0.1, stats.INCONCLUSIVE),
        (-2.0, -1.0, -1.5, stats.INCONCLUSIVE),  # uniform ahead: the rule has no such outcome
    ],
)
def test_rule(low, high, mean, verdict):
    assert stats.rule(low, high, mean) == verdict


def test_decide_helps_and_no_effect():
    assert stats.decide([1.0, 1.2, 0.9, 1.1])["verdict"] == stats.HELPS
    out = stats.decide([0.1, -0.1, 0.05, -0.05, 0.0])
    assert out["verdict"] == stats.NO_EFFECT_HERE and out["pairs_to_decide"] is None


def test_decide_inconclusive_says_how_many_pairs_would_decide():
    # mean 1, sd 2: the interval lies above 0 once t(n - 1) * 2 / sqrt(n) < 1:
    # n = 18 gives 2.1098 * 2 / 4.2426 = 0.995, n = 17 gives 2.1199 * 2 / 4.1231 = 1.028.
    out = stats.decide([3.0, -1.0, 1.0])
    assert out["verdict"] == stats.INCONCLUSIVE
    assert out["low"] == pytest.approx(1 - 4.3027 * 2 / math.sqrt(3), abs=1e-3)
    assert out["pairs_to_decide"] == 18


def test_pairs_to_decide_for_no_effect_and_never():
    # mean 0, sd 1: within +-0.5 once t(n - 1) / sqrt(n) <= 0.5: again 18.
    assert stats.pairs_to_decide(0.0, 1.0) == 18
    assert stats.pairs_to_decide(-0.7, 1.0) is None  # no outcome for uniform ahead
    assert stats.pairs_to_decide(0.49, 1.0) is None  # more than 10,000 pairs
    assert stats.pairs_to_decide(1.0, 0.0) == 2


def test_decide_with_fewer_than_two_pairs_is_pending():
    out = stats.decide([0.7])
    assert out["verdict"].startswith("pending: 1 pair") and out["mean"] == pytest.approx(0.7)
    assert stats.decide([])["mean"] is None


# -- power -------------------------------------------------------------------------
def test_pairs_for_power_against_a_hand_computation():
    # sd = effect: normal (1.95996 + 0.84162)^2 = 7.85 -> 8. With t: n = 10 gives
    # (2.2622 + 0.8834)^2 = 9.89 <= 10; n = 9 gives (2.3060 + 0.8889)^2 = 10.21 > 9.
    assert stats.pairs_for_power_normal(1.0) == 8
    assert stats.pairs_for_power(1.0) == 10
    # sd = 2: n = 34 gives (2.0345 + 0.8527)^2 * 4 = 33.34 <= 34; n = 33: 33.40 > 33.
    assert stats.pairs_for_power_normal(2.0) == 32
    assert stats.pairs_for_power(2.0) == 34
    assert stats.pairs_for_power(0.5, effect=0.5) == 10  # only the ratio counts
    assert stats.pairs_for_power(0.0) == 2
    with pytest.raises(ValueError, match="positive effect"):
        stats.pairs_for_power(1.0, effect=0.0)
