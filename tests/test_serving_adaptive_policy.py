"""AdaptiveTierPolicy (pss_keras.serving.adaptive_policy) on injected latencies
and an injected clock (no wall time), and driving a real client under
simulated load."""

import collections
import dataclasses
import threading

import numpy as np
import pytest
import tensorflow as tf
from serving_fixtures import _images, _SimulatedClock

from pss_keras import serving

pytest_plugins = ["serving_fixtures"]


def _tier(name, cost_ms, top1, mflops=None):
    return serving.Tier(name, "flops", 0, mflops or cost_ms, 0, 64, top1, cost_ms)


# Cheapest first; each more accurate than the one before.
TIERS = [_tier("a", 1.0, 0.70), _tier("b", 2.0, 0.75), _tier("c", 3.0, 0.80), _tier("d", 4.0, 0.85)]


def _feed(policy, latency, requests):
    """Sends ``requests`` requests; ``latency(tier name) -> ms``. Returns the
    tiers used."""
    used = []
    for _ in range(requests):
        name = policy.tier.name
        used.append(name)
        policy.observe(latency(name), name)
    return used


def test_the_objective_is_on_a_percentile_of_a_full_window():
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, percentile=95)
    assert policy.window == 20 and policy.tier.name == "d"
    for _ in range(18):
        policy.observe(4.0)
    policy.observe(100.0)  # one miss in 20: p95 = 4 + 0.05 x 96 = 8.8 < 10
    assert policy.estimate_ms("d") is None  # 19 requests: no estimate yet
    policy.observe(4.0)
    assert policy.estimate_ms("d") == pytest.approx(np.percentile([4.0] * 19 + [100.0], 95))
    assert policy.tier.name == "d" and policy.switches == 0
    policy.observe(100.0)  # two misses in the last 20: p95 = 100 > 10 -> down
    assert policy.switches == 1
    # p95 of the ratios latency / cost is 25 (100 / 4): every tier's estimate
    # (25 x cost) is above headroom x objective, so it lands on the cheapest.
    assert policy.tier.name == "a"
    # A median objective would not have moved: 18 of 20 requests took 4 ms.
    median = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, percentile=50, window=20)
    _feed(median, lambda _: 4.0, 18)
    median.observe(100.0)
    median.observe(100.0)
    assert median.tier.name == "d"


def test_window_must_hold_enough_requests_for_its_percentile():
    assert serving.AdaptiveTierPolicy(TIERS, 10, percentile=99).window == 100
    assert serving.AdaptiveTierPolicy(TIERS, 10, percentile=50).window == 2
    with pytest.raises(ValueError, match=r"window=5 is too short for a p95 objective: .* 20 "):
        serving.AdaptiveTierPolicy(TIERS, 10, window=5)
    with pytest.raises(ValueError, match="percentile must be in"):
        serving.AdaptiveTierPolicy(TIERS, 10, percentile=100)
    with pytest.raises(ValueError, match="objective_ms must be positive"):
        serving.AdaptiveTierPolicy(TIERS, 0)
    with pytest.raises(ValueError, match="headroom must be in"):
        serving.AdaptiveTierPolicy(TIERS, 10, headroom=1.0)
    with pytest.raises(ValueError, match="No tiers"):
        serving.AdaptiveTierPolicy([], 10)


def test_steps_down_as_far_as_the_load_demands_and_climbs_one_tier_per_hold():
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, headroom=0.7)
    cost = {t.name: t.latency_ms for t in TIERS}
    used = _feed(policy, lambda n: 3 * cost[n], 20)  # 3x load: d takes 12 ms > 10
    # Two misses of a p95 window of 20 decide before it is full. Estimates
    # 3 x cost: c 9 ms meets the objective but not the headroom (7 ms); b
    # 6 ms does.
    assert used == ["d"] * 2 + ["b"] * 18 and policy.tier.name == "b"
    used = _feed(policy, lambda n: 3 * cost[n], 200)  # steady: stays
    assert set(used) == {"b"} and policy.switches == 1
    used = _feed(policy, lambda n: cost[n], 60)  # load gone
    # The window slides: after 19 unloaded requests its p95 (1.1) puts d
    # (4.4 ms) within the headroom: straight up to it.
    assert used == ["b"] * 19 + ["d"] * 41 and policy.switches == 2
    # Between headroom and objective nothing moves (hysteresis): d at 2x
    # load is 8 ms (meets the objective, not the headroom).
    used = _feed(policy, lambda n: 2 * cost[n], 100)
    assert set(used) == {"d"} and policy.switches == 2
    # Up needs a hold after the last move, and goes only as far as fits:
    # at 2x load from a, c (6 ms) is within the headroom, d (8 ms) is not.
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, start="a")
    used = _feed(policy, lambda n: 2 * cost[n], 60)
    assert used == ["a"] * 20 + ["c"] * 40 and policy.switches == 1


def test_dominated_tiers_are_never_chosen():
    tiers = [
        _tier("small", 1.0, 0.80),
        _tier("costly_worse", 2.0, 0.79),  # dominated by small
        _tier("same_top1", 2.5, 0.80),  # no more accurate than small: dominated
        _tier("big", 3.0, 0.85),
        _tier("big_twin", 3.0, 0.85, mflops=9.0),  # equal cost and top-1, more MFLOPs
    ]
    kept, dominated = serving.dominant_tiers(tiers, "measured")
    assert [t.name for t in kept] == ["small", "big"]
    assert [t.name for t in dominated] == ["costly_worse", "same_top1", "big_twin"]
    policy = serving.AdaptiveTierPolicy(tiers, objective_ms=10, latency_source="measured")
    assert [t.name for t in policy.tiers] == ["small", "big"]
    cost = {t.name: t.latency_ms for t in tiers}
    used = []
    for load in (4, 1, 2.5, 1, 6, 1):  # loads that would suit every tier in turn
        used += _feed(policy, lambda n, load=load: load * cost[n], 100)
    assert set(used) == {"small", "big"}
    with pytest.raises(ValueError, match=r"start='costly_worse': it is dominated"):
        serving.AdaptiveTierPolicy(tiers, objective_ms=10, start="costly_worse")
    # The earlier order was by MFLOPs alone: quickstart's flops_3p2m (0.907)
    # sits above flops_2p4m (0.920) and must never be chosen.
    quick = [
        _tier("flops_0p8m", 1.0, 0.80, 0.8),
        _tier("flops_2p4m", 1.5, 0.920, 2.4),
        _tier("flops_3p2m", 1.6, 0.907, 3.2),
    ]
    names = [t.name for t in serving.AdaptiveTierPolicy(quick, objective_ms=10).tiers]
    assert names == ["flops_0p8m", "flops_2p4m"]


def test_metadata_tiers_are_refused():
    tiers = [serving.Tier("x", None, None, None, None, None, None, None)]
    with pytest.raises(serving.ServingError, match="^AdaptiveTierPolicy needs each tier's"):
        serving.AdaptiveTierPolicy(tiers, objective_ms=10)


def test_failed_probes_back_off_and_bound_the_switches_of_a_steady_phase():
    """A tier slower than its cost says (d: 4 ms idle, 12 ms now) fails
    every probe; each failure doubles the hold, so a steady phase of N
    requests switches at most `max_steady_switches(N)` times."""
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, start="c")
    cost = {t.name: t.latency_ms for t in TIERS}

    def latency(name):
        return 12.0 if name == "d" else cost[name]

    requests = 3000
    used = _feed(policy, latency, requests)
    bound = policy.max_steady_switches(requests)
    assert 2 <= policy.switches <= bound
    assert policy.switches % 2 == 0  # every probe came back to c, never below
    assert set(used) == {"c", "d"}
    # Each probe waited twice as long as the one before; each lasted 2
    # requests (two misses put d's p95 over the objective).
    runs = [len(g) for _, g in _groups(used)]
    assert runs[0:-1:2] == [20, 40, 80, 160, 320, 640, 1280] and set(runs[1::2]) == {2}
    assert policy.hold == policy.max_hold == 64 * 20  # doubled up to its cap
    assert bound == 2 * 7  # holds 20, 40, ..., 1280 fit in 3000 requests: 7 probes
    # A probe that holds (as long as the hold it waited) resets the
    # back-off: the next probe comes after the hold left (1280 - 446
    # requests at c), d now meets, and 1280 requests later the hold is back.
    used = _feed(policy, lambda n: cost[n], 1280 - 446 + 1280)
    assert used.index("d") == 1280 - 446 and policy.hold == policy.max_hold
    _feed(policy, lambda n: cost[n], 1)
    assert policy.tier.name == "d" and policy.hold == policy.base_hold


def _groups(used):
    out = []
    for name in used:
        if out and out[-1][0] == name:
            out[-1][1].append(name)
        else:
            out.append((name, [name]))
    return out


def test_a_settled_policy_does_not_switch_while_its_estimate_holds():
    rng = np.random.default_rng(0)
    cost = {t.name: t.latency_ms for t in TIERS}
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10)
    for load in (1.0, 2.0, 3.0, 1.5):
        _feed(policy, lambda n, load=load: load * cost[n] * rng.uniform(0.9, 1.1), 40)
        settled = policy.switches
        used = _feed(policy, lambda n, load=load: load * cost[n] * rng.uniform(0.9, 1.1), 1000)
        assert policy.switches == settled and len(set(used)) == 1
        # Settled on a tier that meets the objective, below one that would
        # not be within the headroom (0.7 x 10 ms) even at its fastest.
        i = [t.name for t in TIERS].index(used[0])
        assert 1.1 * load * TIERS[i].latency_ms <= 10
        assert i == len(TIERS) - 1 or 0.9 * load * TIERS[i + 1].latency_ms > 7
    assert policy.switches == 2  # d (1x, 2x), b (3x), straight back to d (1.5x)


def test_late_answers_of_a_failed_probe_do_not_push_it_lower():
    """Requests overlap: answers of the probed tier arrive after the policy
    has left it. They are recorded but not taken as load."""
    cost = {t.name: t.latency_ms for t in TIERS}
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, start="c")
    _feed(policy, lambda n: cost[n], 20)
    assert policy.tier.name == "d"  # the probe
    policy.observe(30.0, "d")
    policy.observe(30.0, "d")  # p95 over the window: 30 / 4 x 4 > 10: back to c
    assert policy.tier.name == "c"
    for _ in range(5):
        policy.observe(30.0, "d")  # late answers of the probe
    assert policy.tier.name == "c" and policy.history[-1] == ("d", 30.0)
    # The probe's own requests are forgotten: the estimate is the other
    # tiers' again (ratio 1), and it stays so.
    assert policy.estimate_ms("c") == pytest.approx(3.0)
    _feed(policy, lambda n: cost[n], 20)
    assert policy.estimate_ms("c") == pytest.approx(3.0) and policy.tier.name == "c"
    with pytest.raises(ValueError, match="Unknown tier 'zz'"):
        policy.observe(1.0, "zz")


def test_safe_to_share_between_threads():
    cost = {t.name: t.latency_ms for t in TIERS}
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10)
    errors = []

    def worker(load):
        try:
            for _ in range(500):
                name = policy.tier.name
                policy.observe(load * cost[name], name)
        except Exception as e:  # pragma: no cover - the assertion reports it
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(1 + i % 3,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(policy.history) == 4000
    counts = collections.Counter(name for name, _ in policy.history)
    assert sum(counts.values()) == 4000 and set(counts) <= set(cost)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_predict_times_requests_with_the_injected_clock():
    clock, sent = _Clock(), []

    class Client:
        def predict(self, images, tier):
            sent.append(tier)
            clock.now += 0.025 if tier == "d" else 0.002  # d takes 25 ms, the rest 2 ms
            return {"tier": tier}

    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, clock=clock)
    for _ in range(2):  # two misses: the window of 20 could only miss
        outputs, tier, ms = policy.predict(Client(), None)
        assert (outputs, tier.name, ms) == ({"tier": "d"}, "d", pytest.approx(25))
        clock.now += 100  # time between requests is not a request's latency
    # p95 of 25 / 4 = 6.25 x cost: only a (6.25 ms) is within 0.7 x 10 ms.
    assert policy.tier.name == "a" and sent == ["d"] * 2
    _, tier, ms = policy.predict(Client(), None)
    assert (tier.name, ms) == ("a", pytest.approx(2))


def test_more_load_right_after_a_step_up_is_not_a_failed_probe():
    """The load jumps 5x just after the policy climbed to d: it returns to
    c (the step a probe would take), but c's next requests miss too, so it
    goes on down at once instead of waiting for a full window."""
    cost = {t.name: t.latency_ms for t in TIERS}
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, start="c")
    _feed(policy, lambda n: cost[n], 20)
    assert policy.tier.name == "d"
    _feed(policy, lambda n: cost[n], 15)
    used = _feed(policy, lambda n: 5 * cost[n], 60)
    misses = sum(5 * cost[n] > 10 for n in used)
    assert used[:2] == ["d", "d"] and used[-1] == "a" and misses <= 6
    assert policy.hold == policy.base_hold  # a load-driven step down resets the back-off


def test_failures_and_odd_latencies():
    # Fast failures count as misses: they push the policy down, not up.
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, start="b")
    for _ in range(40):
        policy.observe(0.5, policy.tier, failed=True)
    assert policy.tier.name == "a"
    # Infinite latencies (a caller's timeouts) are large, not NaN in the percentile.
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10)
    _feed(policy, lambda n: 4.0, 18)
    policy.observe(float("inf"))  # 1000 x the objective: the p95 of 20 misses whatever follows
    assert policy.tier.name == "a" and policy.history[-1] == ("d", 10_000.0)
    for bad in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="latency_ms must be a duration"):
            policy.observe(bad)
    with pytest.raises(ValueError, match="Unknown tier 'zz'"):
        policy.estimate_ms("zz")
    # The history keeps the last ``history`` observations.
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, history=30)
    _feed(policy, lambda n: 1.0, 100)
    assert len(policy.history) == 30


def test_backlog_sends_a_queued_request_to_a_cheaper_tier_without_moving_the_policy():
    """With ``backlog``, a request chosen while others are in flight gets the
    most accurate tier whose wait behind them fits: margin x median slowdown x
    (cost in flight + its cost) <= objective."""
    clock = _Clock()
    policy = serving.AdaptiveTierPolicy(
        TIERS, objective_ms=10, percentile=95, clock=clock, backlog=1.5
    )
    _feed(policy, lambda name: 2.0, 20)  # d (4 ms) answers in 2 ms: slowdown 0.5
    assert policy.tier.name == "d" and policy.switches == 0
    # Nothing in flight: d. Then 1.5 x 0.5 x (4 + cost) <= 10 needs cost <= 9.3: d again;
    # with 8 ms ahead, cost <= 5.3: d; with 12 ahead, cost <= 1.3: a.
    assert [policy.choose().name for _ in range(4)] == ["d", "d", "d", "a"]
    assert policy.shed == 1 and policy.tier.name == "d" and policy.switches == 0
    # Answers clear the backlog: each observe removes that tier's oldest request.
    for name, ms in (("d", 2.0), ("d", 2.0), ("d", 2.0), ("a", 0.5)):
        policy.observe(ms, name)
    assert policy.choose().name == "d" and policy.shed == 1
    assert [policy.choose().name for _ in range(3)] == ["d", "d", "a"] and policy.shed == 2
    # A request never observed stops counting after 1000 x the objective (10 s).
    clock.now += 11.0
    assert policy.choose().name == "d" and policy.shed == 2
    # Without backlog every request gets the current tier.
    plain = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, percentile=95, clock=clock)
    _feed(plain, lambda name: 2.0, 20)
    assert {plain.choose().name for _ in range(10)} == {"d"} and plain.shed == 0
    with pytest.raises(ValueError, match="backlog must be positive"):
        serving.AdaptiveTierPolicy(TIERS, objective_ms=10, backlog=0)


def test_before_a_full_window_the_policy_steps_down_once_the_window_could_only_miss():
    """A p95 window of 20 allows one miss: the second miss at the start
    decides at once. The window's p95 is then at least that of the ratios
    1, 1, 1, 3, 3 and 15 instant requests (index 18.05 of the sorted 20:
    3), so d's estimate is 12 > 10, and it lands on the most accurate tier
    with 3 x cost <= 0.7 x 10: b."""
    policy = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, percentile=95)
    _feed(policy, lambda name: 4.0, 3)
    policy.observe(12.0)
    assert policy.tier.name == "d" and policy.switches == 0  # one miss: the window may hold
    policy.observe(12.0)
    assert policy.tier.name == "b" and policy.switches == 1
    # A window of 30 allows more: p95 sits at index 27.55 of 30, so with two
    # misses (and 28 requests counted instant) it is 1 + 0.55 x 2 = 2.1 (8.4 ms
    # at d, within); the third miss makes it 3 (12 ms): down, to b again.
    wide = serving.AdaptiveTierPolicy(TIERS, objective_ms=10, percentile=95, window=30)
    _feed(wide, lambda name: 4.0, 3)
    wide.observe(12.0)
    wide.observe(12.0)
    assert wide.tier.name == "d" and wide.switches == 0
    wide.observe(12.0)
    assert wide.tier.name == "b" and wide.switches == 1


def test_a_burst_absorbed_by_the_backlog_check_does_not_move_the_policy():
    """Three requests at once on a FIFO server at slowdown 1: d, then b (the
    second: 1.5 x (4 + 4) = 12 > 10 for d, 1.5 x (4 + 2) = 9 for b) and a
    (the third: 1.5 x (6 + 2) = 12 > 10 for b, 1.5 x (6 + 1) = 10.5 for a, the
    cheapest: none fits). Each
    enters the window as the request of d it stands for: b (6 ms) as
    (6 + 1 x (4 - 2)) / 4 = 2, a (7 ms) as (7 + 1 x (4 - 1)) / 4 = 2.5, so d's
    p95 estimate stays under the objective. Over their own costs (3 and 7)
    the wait behind the burst would read as load: 3.2 x 4 = 12.8 > 10, and
    the policy would step down."""
    policy = serving.AdaptiveTierPolicy(
        TIERS, objective_ms=10, percentile=95, clock=_Clock(), backlog=1.5
    )
    _feed(policy, lambda name: 4.0, 20)  # slowdown 1 at d
    assert [policy.choose().name for _ in range(3)] == ["d", "b", "a"] and policy.shed == 2
    for name, ms in (("d", 4.0), ("b", 6.0), ("a", 7.0)):  # FIFO: each waits for the ones before
        policy.observe(ms, name)
    assert policy.tier.name == "d" and policy.switches == 0
    window = [1.0] * 17 + [1.0, 2.0, 2.5]
    assert policy.estimate_ms("d") == pytest.approx(4 * np.percentile(window, 95))
    # A request observed without `choose` (or not shed) counts over its own cost.
    policy.observe(4.0 * 3, "c")
    assert policy.estimate_ms("d") == pytest.approx(4 * np.percentile(window[1:] + [4.0], 95))


def test_queueing_keeps_the_policy_off_tiers_that_would_load_the_server_past_one():
    """Same latencies (1.5 x each tier's cost), two request rates: at 10 per
    second every tier fits and the policy climbs to d; at 200 per second d
    would load the server past 1 (0.2 / ms x 1.5 x 4 ms = 1.2) and c nearly
    so, and it stops at b: (1 - 0.3) / (1 - 0.6) x 1.5 x 2 ms = 5.25 <= 7 from a,
    while c from b is (1 - 0.6) / (1 - 0.9) x 1.5 x 3 ms = 18 > 7."""

    def climb(per_second):
        clock = _Clock()
        policy = serving.AdaptiveTierPolicy(
            TIERS, objective_ms=10, percentile=95, clock=clock, start="a", queueing=True
        )
        for _ in range(200):
            clock.now += 1 / per_second
            name = policy.tier.name
            policy.observe(1.5 * {"a": 1, "b": 2, "c": 3, "d": 4}[name], name)
        return policy

    slow, fast = climb(10), climb(200)
    assert slow.tier.name == "d"
    assert fast.tier.name == "b" and fast.switches == 1
    assert fast.estimate_ms("d") == float("inf")
    # From b (load 0.6): b as measured, c with its queueing (load 0.9).
    assert fast.estimate_ms("b") == pytest.approx(1.5 * 2)
    assert fast.estimate_ms("c") == pytest.approx(1.5 * 3 * (1 - 0.6) / (1 - 0.9), rel=1e-6)
    # Without queueing the same fast client climbs to d.
    clock = _Clock()
    plain = serving.AdaptiveTierPolicy(
        TIERS, objective_ms=10, percentile=95, clock=clock, start="a"
    )
    for _ in range(200):
        clock.now += 1 / 200
        plain.observe(1.5 * {"a": 1, "b": 2, "c": 3, "d": 4}[plain.tier.name])
    assert plain.tier.name == "d"


class _SimulatedLoad:
    """Wraps a transport: every request still reaches the server, and then
    the clock advances by that tier's cost alone times ``load`` (the requests
    a saturated server would be serving at once)."""

    def __init__(self, transport, clock, cost_ms):
        self.transport, self.clock, self.cost_ms = transport, clock, cost_ms
        self.load, self.sent = 1, []

    def predict(self, signature, inputs):
        outputs = self.transport.predict(signature, inputs)
        if signature in self.cost_ms:
            self.sent.append(signature)
            self.clock.now += self.cost_ms[signature] * self.load / 1000
        return outputs

    def close(self):
        self.transport.close()


def test_adaptive_policy_under_load(client, served):
    """The policy driving a real client: under 8x load every tier misses the
    objective, so after two misses (a p95 window of 20 could only miss) it
    jumps straight to the cheapest; without load every tier meets it with
    headroom, so once the loaded requests have left the window (and a hold
    has passed) it goes straight back to the largest. The requests reach the server; only their latency
    is simulated (a clock that advances by tier cost x load), so the outcome
    does not depend on the machine's speed."""
    _, _, loaded = served
    tiers = client.tiers()
    # Alone, 10 ms (cheapest) to 20 ms (largest): below headroom x objective
    # (0.7 x 60 = 42 ms). Under 8x load, 80 to 160 ms: above the objective.
    n = len(tiers)
    cost = {t.name: 10 + 10 * i / (n - 1) for i, t in enumerate(tiers)}
    clock = _SimulatedClock()
    load = _SimulatedLoad(client.transport, clock, cost)
    policy_client = serving.PSSClient(load)
    # Accuracy rising with cost, so that no tier is dominated (the tiny job's
    # own top-1 may tie at chance).
    simulated = [
        dataclasses.replace(t, latency_ms=cost[t.name], top1=0.5 + i / 100)
        for i, t in enumerate(policy_client.tiers())
    ]
    policy = serving.AdaptiveTierPolicy(
        simulated, objective_ms=60, latency_source="measured", clock=clock
    )
    kept = policy.tiers
    assert [t.name for t in kept] == [t.name for t in tiers] and n >= 2 and policy.window == 20
    images = _images((1, 32, 32, 3))
    expected = {
        t.name: loaded.signatures[t.name](images=tf.constant(images))["logits"].numpy()
        for t in tiers
    }

    def run(requests):
        for _ in range(requests):
            outputs, tier, ms = policy.predict(policy_client, images)
            np.testing.assert_allclose(outputs["logits"], expected[tier.name], atol=1e-5)
            assert ms == pytest.approx(cost[tier.name] * load.load)

    load.load = 8
    run(20)
    assert policy.tier == kept[0] and policy.switches == 1
    load.load = 1
    # 19 unloaded requests at the cheapest (until a single loaded one is left
    # in the window), then straight up to the largest, which stays.
    run(40)
    assert policy.tier == kept[-1] and policy.switches == 2
    loaded = [kept[-1].name] * 2 + [kept[0].name] * 18
    unloaded = [kept[0].name] * 19 + [kept[-1].name] * 21
    assert [name for name, _ in policy.history] == loaded + unloaded
    assert load.sent == loaded + unloaded  # the tier the policy chose is the one requested
    assert [ms for _, ms in policy.history] == pytest.approx(
        [cost[name] * 8 for name in loaded] + [cost[name] for name in unloaded]
    )
