"""A load timeline replayed on a modelled server: seconds of CPU instead of
the benchmark's hour, for developing a tier policy.

`benchmarks/adaptive_serving.py` drives a real server; its calibration
(every tier alone over the timeline) is what the model here is fitted to.
The model (`ServerModel`): one FIFO server thread, as the stand-in server
runs; a request of a tier whose idle latency is ``c`` ms keeps the server
busy for ``c * server_share * (1 + hog_factor * hogs) * lognormal(0,
sigma)`` (``hogs``: the phase's competing busy processes on the server's
CPU, each taking ``hog_factor`` of a fair share) and spends ``c * (1 -
server_share)`` outside it (transport, the client), in parallel with other
requests; ``hogs`` is the count of the phase in which the server starts the
request. Arrivals are the benchmark's own (`load_test.poisson_schedule`,
same seed, same schedule), each latency runs from the scheduled time, and a
policy's ``observe`` is called at each answer in the order answers arrive,
with its clock (`SimulatedClock`) at that moment.

What a simulation cannot show: a real machine's tail (interrupts, the
server's threads, garbage collection), a server with several threads, a
real client's lateness. A policy is judged by the real benchmark; the
simulation only says where to look.

Nothing here reads flags or imports training code.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools

import numpy as np

from pss_keras.benchmarking import load_summary, load_test


@dataclasses.dataclass(frozen=True)
class ServerModel:
    """How a modelled server turns a tier's idle latency into a latency under load.

    Attributes:
        server_share: share of a tier's idle latency spent in the server
            thread (the rest, transport and client, overlaps other requests).
        hog_factor: slowdown per competing busy process (1: a fair share).
        sigma: spread of a request's server time (lognormal, log scale).
    """

    # Defaults: fitted to docs/results/adaptive_serving.json's calibration.
    server_share: float = 1.0
    hog_factor: float = 0.9
    sigma: float = 0.1

    def __post_init__(self):
        if not 0 < self.server_share <= 1 or self.hog_factor < 0 or self.sigma < 0:
            raise ValueError(
                "ServerModel needs 0 < server_share <= 1, hog_factor >= 0 and sigma >= 0, got "
                f"{self.server_share}, {self.hog_factor}, {self.sigma}."
            )


class SimulatedClock:
    """Seconds of the simulated timeline (a policy's ``clock``)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate_timeline(
    phases, costs_ms: dict, choose, observe=None, clock=None, model=ServerModel(), seed=0
) -> list[load_test.Request]:
    """One timeline on the modelled server; returns every request, in send order.

    Args:
        phases: the `load_test.Phase` list.
        costs_ms: {tier name: idle latency in ms}.
        choose: ``choose() -> tier name or Tier``, called at each arrival.
        observe: ``observe(latency_ms, tier_name, failed=False)`` at each
            answer, in the order answers arrive.
        clock: the `SimulatedClock` the policy reads (set to each arrival's
            and each answer's time before ``choose`` / ``observe``).
        model: the `ServerModel`.
        seed: the arrival schedule's seed (as `load_test.run_timeline`);
            the server times' noise is drawn from it too.

    Raises:
        ValueError: a tier ``choose`` returns that ``costs_ms`` lacks.
    """
    clock = SimulatedClock() if clock is None else clock
    rng = np.random.default_rng([seed, 1])
    requests = [load_test.Request(t, i, "") for t, i in load_test.poisson_schedule(phases, seed)]
    answers, free = [], 0.0  # heap of (answer time, index); when the server is next free
    ends = np.cumsum([p.seconds for p in phases])

    def answer_until(t):
        while answers and answers[0][0] <= t:
            done, k = heapq.heappop(answers)
            clock.now = done
            r = requests[k]
            r.latency_ms = 1000 * (done - r.scheduled)
            if observe is not None:
                observe(r.latency_ms, r.tier, failed=False)

    for k, r in enumerate(requests):
        answer_until(r.scheduled)
        clock.now = r.scheduled
        chosen = choose()
        r.tier = getattr(chosen, "name", chosen)
        if r.tier not in costs_ms:
            raise ValueError(f"choose() gave {r.tier!r}, not one of {sorted(costs_ms)}.")
        r.send_lag_ms = r.queue_ms = 0.0
        cost = costs_ms[r.tier] / 1000
        start = max(free, r.scheduled)
        phase = phases[min(int(np.searchsorted(ends, start, side="right")), len(phases) - 1)]
        busy = cost * model.server_share * (1 + model.hog_factor * phase.hogs)
        free = start + busy * rng.lognormal(0.0, model.sigma)
        heapq.heappush(answers, (free + cost * (1 - model.server_share), k))
    answer_until(float("inf"))
    return requests


def fixed_tier_shares(phases, costs_ms, objective_ms, model, seeds=(0,)) -> dict:
    """{tier: [share within the objective per phase]}, each tier alone,
    averaged over ``seeds``: a simulated calibration."""
    top1 = {n: 0.0 for n in costs_ms}
    shares = {}
    for name in costs_ms:
        runs = [
            load_summary.summarize(
                simulate_timeline(phases, costs_ms, lambda n=name: n, model=model, seed=seed),
                phases, objective_ms, top1,
            )
            for seed in seeds
        ]  # fmt: skip
        shares[name] = [row["within_objective"] for row in load_summary.aggregate(runs)["phases"]]
    return shares


def fit_server_model(measured: dict, phases, costs_ms, objective_ms, grid=None, seeds=(0, 1, 2)):
    """The `ServerModel` whose simulated calibration is closest to a real one.

    Args:
        measured: {tier: [share within the objective per phase, None for a
            phase not run]}: a benchmark's ``calibration.within_objective``.
        phases: the calibration's timeline.
        costs_ms: {tier: idle latency ms}, the tiers of ``measured``.
        objective_ms: the calibration's objective.
        grid: {field: values} to search (default: server_share 0.8..1,
            hog_factor 0.8..1, sigma 0.1..0.3).
        seeds: arrival schedules each candidate is simulated on.

    Returns:
        ``(model, rms)``: the best model and its root-mean-square error over
        the measured shares (a fraction).

    Raises:
        ValueError: when ``measured`` has no share to fit, or names a tier
            ``costs_ms`` lacks.
    """
    unknown = sorted(set(measured) - set(costs_ms))
    if unknown:
        raise ValueError(f"Calibrated tiers {unknown} have no idle latency in costs_ms.")
    if not any(v is not None for row in measured.values() for v in row):
        raise ValueError("The calibration has no within-objective share to fit the model to.")
    grid = grid or {
        "server_share": (0.8, 0.85, 0.9, 0.95, 1.0),
        "hog_factor": (0.8, 0.85, 0.9, 0.95, 1.0),
        "sigma": (0.1, 0.2, 0.3),
    }
    costs = {n: costs_ms[n] for n in measured}
    best = None
    for values in itertools.product(*grid.values()):
        model = ServerModel(**dict(zip(grid, values)))
        simulated = fixed_tier_shares(phases, costs, objective_ms, model, seeds)
        errors = [
            s - m
            for n, row in measured.items()
            for s, m in zip(simulated[n], row)
            if m is not None
        ]  # fmt: skip
        rms = float(np.sqrt(np.mean(np.square(errors))))
        if best is None or rms < best[1]:
            best = (model, rms)
    return best


def compare_policies(
    policies: dict, phases, tiers, objective_ms, model=ServerModel(), seeds=(0, 1, 2)
) -> dict:
    """Policies and the per-phase oracle on the modelled server, scored as
    the benchmark scores them.

    Args:
        policies: {name: ``make(clock) -> (choose, observe or None)``}.
        phases: the timeline.
        tiers: with ``name``, ``top1`` and ``latency_ms`` (the idle latency
            the server model scales), cheapest first.
        objective_ms: the latency objective.
        model: the `ServerModel`.
        seeds: one arrival schedule per repeat, the same for every policy.

    Returns:
        ``{"policies": {name: load_summary.aggregate(...) with
        overall.gap_closed}, "oracle": load_summary.phase_oracle(...),
        "best_fixed": name, "alone": {tier: load_summary.aggregate(...)}}``:
        the oracle and best_fixed from every tier alone on the same
        schedules.
    """
    costs = {t.name: t.latency_ms for t in tiers}
    top1 = {t.name: t.top1 for t in tiers}

    def run(make):
        runs = []
        for seed in seeds:
            clock = SimulatedClock()
            choose, observe = make(clock)
            requests = simulate_timeline(phases, costs, choose, observe, clock, model, seed)
            runs.append(load_summary.summarize(requests, phases, objective_ms, top1))
        return load_summary.aggregate(runs)

    alone = {t.name: run(lambda clock, n=t.name: ((lambda: n), None)) for t in tiers}
    best, _ = load_summary.best_fixed_tier(tiers, lambda name, needed: alone[name])
    weights = [p.rate * p.seconds for p in phases]
    oracle = load_summary.phase_oracle(alone, tiers, weights)
    results = {name: run(make) for name, make in policies.items()}
    for r in results.values():
        r["overall"]["gap_closed"] = load_summary.gap_closed(
            r["overall"]["mean_top1_in_time"],
            alone[best]["overall"]["mean_top1_in_time"],
            oracle["overall"]["mean_top1_in_time"],
        )
    return {"policies": results, "oracle": oracle, "best_fixed": best, "alone": alone}
