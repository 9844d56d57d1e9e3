"""The tier policies' shared base and MedianStepPolicy (pss_keras.serving.policies)."""

import time

import pytest
from serving_fixtures import _SimulatedClock

from pss_keras import serving


def _tiers(*mflops):
    return [serving.Tier(f"t{m}", "flops", m, m, 0, 32, 0.5 + m / 100, 1.0) for m in mflops]


def test_median_step_policy_steps_down_and_back_up():
    """The earlier policy (median of a few requests), kept for comparison."""
    policy = serving.MedianStepPolicy(_tiers(1, 2, 3), objective_ms=10, window=3, headroom=0.5)
    assert policy.tier.name == "t3"
    for _ in range(3):
        policy.observe(15)  # objective missed
    assert policy.tier.name == "t2"
    for _ in range(3):
        policy.observe(12)
    assert policy.tier.name == "t1"
    for _ in range(3):
        policy.observe(11)  # already the cheapest: stays
    assert policy.tier.name == "t1"
    policy.observe(2)
    assert policy.tier.name == "t1"  # median of the last 3 (11, 11, 2) still misses
    policy.observe(2)
    assert policy.tier.name == "t2"  # median 2 < headroom: back up, window cleared
    for _ in range(3):
        policy.observe(7)  # between headroom and objective: stay
    assert policy.tier.name == "t2" and policy.switches == 3
    with pytest.raises(ValueError, match="objective_ms must be positive"):
        serving.MedianStepPolicy(_tiers(1), objective_ms=0)


def test_median_step_policy_times_requests_with_its_clock():
    assert serving.MedianStepPolicy(_tiers(1), objective_ms=10).clock is time.perf_counter
    clock, sent = _SimulatedClock(), []

    class Client:
        def predict(self, images, tier):
            sent.append(tier)
            clock.now += 0.025  # each request takes 25 ms
            return {"tier": tier}

    policy = serving.MedianStepPolicy(_tiers(1, 2), objective_ms=10, window=1, clock=clock)
    outputs, tier, ms = policy.predict(Client(), None)
    assert (outputs, tier.name, ms) == ({"tier": "t2"}, "t2", pytest.approx(25))
    assert policy.history == [("t2", pytest.approx(25))] and policy.tier.name == "t1"
    clock.now += 100  # time between requests is not a request's latency
    _, tier, ms = policy.predict(Client(), None)
    assert (tier.name, ms) == ("t1", pytest.approx(25)) and sent == ["t2", "t1"]


def test_policies_take_tiers_without_top1_in_cost_order():
    """Tiers of a job without validation data (top-1 None in the tier table):
    both policies move between them by cost, none dominated."""
    tiers = [serving.Tier(f"t{m}", "flops", m, m, 0, 32, None, float(m)) for m in (3, 1, 2)]
    assert serving.MedianStepPolicy(tiers, objective_ms=10).tier.name == "t3"
    adaptive = serving.AdaptiveTierPolicy(tiers, objective_ms=10, latency_source="measured")
    assert [t.name for t in adaptive.tiers] == ["t1", "t2", "t3"] and adaptive.dominated == []
    assert adaptive.tier.name == "t3"
