"""`AdaptiveTierPolicy`: a latency objective held on a percentile of recent
requests, at the most accurate tier that meets it.

A sliding window of latency / cost describes the server's load whichever
tiers served it; steps down as far as the load demands, up after a hold,
with hysteresis between the two, back-off of failed probes, and optionally
queueing and backlog estimates. Never a dominated tier
(`pss_keras.serving.tiers.dominant_tiers`).
"""

from __future__ import annotations

import collections
import math
import threading
import time

import numpy as np

from pss_keras.serving.policies import TimedPolicy
from pss_keras.serving.tiers import Tier, dominant_tiers, tier_latency_ms


class AdaptiveTierPolicy(TimedPolicy):
    """Holds a latency objective on a percentile of recent requests, at the
    most accurate tier that meets it.

    Every observed latency is divided by the cost of the tier that served
    it (its idle latency, `tier_latency_ms`), so one sliding window of the
    last ``window`` requests describes how loaded the server is whichever
    tiers served them; the window's ``percentile`` of that ratio times a
    tier's cost estimates the tier's percentile latency right now.

    - **Down**, as soon as the current tier's estimate exceeds
      ``objective_ms`` (a full window is needed; at the start, before one,
      as soon as the window's percentile would miss even if every request
      still to come were instant: 2 misses of 100 for p99), to the most
      accurate tier whose estimate is within ``headroom * objective_ms``
      (the cheapest if none), several tiers at once if the load demands.
    - **Up**, when at least ``hold`` requests have passed since the last
      move: to the most accurate tier whose estimate is within ``headroom *
      objective_ms`` (not past a tier whose probe failed, see below). Up
      needs the estimate below the headroom, down needs it above the
      objective: between the two the policy stays (hysteresis).
    - **Back-off**: a step up undone while most of the probed tier's
      requests missed and the tier it left still meets the objective
      (judged on the other tiers' requests in the window) is a failed
      probe: the policy returns to the tier it left, forgets the
      probed tier's requests, and each failed probe in a row doubles
      ``hold`` (up to ``max_hold``). A probe that holds for two windows
      (and ``hold``) resets it, as does a load well below the last
      failure's (by the headroom). A step down with more load behind it
      (the tier left would miss too) is not a failed probe. While the probed
      tier is what fails, a steady phase of N requests sees at most
      `max_steady_switches` (N) switches, about ``2 * log2(N / hold)``, and
      none while the estimate is right to within a factor 1 / headroom.
    - **Queueing** (``queueing=True``): a tier's cost also decides how long
      requests queue for it. With this client's request rate (from
      ``clock``, over the window) and the window's median slowdown, each
      tier's utilization of the server is estimated, and its estimate is
      scaled by ``(1 - u_current) / (1 - u_tier)`` (an M/M/1 queue's
      growth): a step up to a tier that would load the server to 1 or more
      is never taken, and a step down lands higher when the cheaper tier
      also queues less. Off, an estimate is the window's ratio times the
      cost alone (the model above).
    - **Backlog** (``backlog=k``): `choose` gives a request the tier above
      unless the requests this client has in flight (chosen, not yet
      observed) would make it miss: if ``k`` x the window's median
      slowdown x (the in-flight requests' cost + the tier's cost) exceeds
      the objective, that request goes to the most accurate cheaper tier
      that fits (the cheapest if none), and ``shed`` counts it. The
      current tier does not move, so a burst of arrivals is absorbed
      without a switch of the policy. Such a request enters the window as
      the request of the current tier it stands for: its latency plus the
      two tiers' cost difference x the window's median slowdown, over the
      current tier's cost (its own cost would read its wait behind the
      burst as load, and a burst would push the policy down). Needs
      `choose` for every request (as `predict` does) and `observe` for each.
    - Failures count as at least twice the objective (``observe(...,
      failed=True)``); an infinite latency as 1000 x the objective; NaN
      is refused.
    - Dominated tiers (more cost, no more accuracy: `dominant_tiers`) are
      never chosen.
    - Safe to share between client threads: ``predict`` and ``observe``
      hold a lock; a latency is credited to the tier that served it, which
      may not be the current one once requests overlap. An answer is
      matched to the oldest request in flight on its tier (answers of one
      tier are taken to arrive in the order sent).

    Args:
        tiers: the served tiers (from the ``tiers`` signature).
        objective_ms: the latency objective.
        percentile: which percentile of the window must meet it (95 or 99
            as serving objectives are stated; 50 for a median).
        window: requests per estimate; at least ``100 / (100 - percentile)``
            (20 for p95, 100 for p99), so that the percentile is not just
            the window's largest value.
        headroom: fraction of the objective a tier's estimate must be below
            to be stepped up to (or landed on by a step down).
        hold: requests after a move before a step up (default ``window``).
        max_hold: the most ``hold`` grows to after failed probes (default
            ``64 * hold``).
        latency_source: the tiers' cost (see `tier_latency_ms`).
        start: tier name to start from (default: the most accurate).
        clock: what `predict` times requests with, and ``queueing``
            measures the request rate with: seconds (default
            `time.perf_counter`); tests pass a simulated clock.
        queueing: scale the estimates by each tier's queueing (above).
        backlog: margin on the predicted wait behind this client's
            requests in flight (above; 1.5 leaves room for the wait's
            spread); None: every request gets the current tier.
    """

    def __init__(
        self,
        tiers,
        objective_ms: float,
        percentile: float = 95.0,
        window: int | None = None,
        headroom: float = 0.7,
        hold: int | None = None,
        max_hold: int | None = None,
        latency_source: str = "auto",
        start: str | None = None,
        clock=time.perf_counter,
        history: int = 100_000,
        queueing: bool = False,
        backlog: float | None = None,
    ):
        tiers = self._checked(tiers, objective_ms, headroom, "AdaptiveTierPolicy")
        if backlog is not None and not backlog > 0:
            raise ValueError(f"backlog must be positive (or None: off), got {backlog}.")
        window = _window_for(percentile, window)
        self.tiers, self.dominated = dominant_tiers(tiers, latency_source)
        self._cost = {t.name: tier_latency_ms(t, latency_source) for t in tiers}
        if any(not c > 0 for c in self._cost.values()):
            raise ValueError(f"Every tier needs a positive latency to scale by, got {self._cost}.")
        names = [t.name for t in self.tiers]
        if start is not None and start not in names:
            why = "it is dominated" if start in self._cost else "it is not a tier"
            raise ValueError(f"start={start!r}: {why}; choose one of {names}.")
        self.index = names.index(start) if start else len(self.tiers) - 1
        self.objective_ms = float(objective_ms)
        self.percentile = float(percentile)
        self.window = window
        self.headroom = float(headroom)
        self.base_hold = window if hold is None else int(hold)
        self.max_hold = 64 * self.base_hold if max_hold is None else int(max_hold)
        self.hold = self.base_hold
        self.clock = clock
        self.switches = 0
        # (tier name, latency ms) of the last ``history`` observations.
        self.history = collections.deque(maxlen=history)
        self._ratios = collections.deque(maxlen=window)
        self._since_move = 0
        self._last_move = None
        self._failed_probes = 0
        self._probed_from = None
        self._failed_tier = None
        self._load_at_failure = None
        self._ready = False
        self.queueing = bool(queueing)
        self.backlog = None if backlog is None else float(backlog)
        self.shed = 0
        self._times = collections.deque(maxlen=window)  # clock at each observation
        self._in_flight = []  # (tier served, clock at choose, tier it stands for): not yet observed
        self._lock = threading.Lock()

    @property
    def tier(self) -> Tier:
        with self._lock:
            return self.tiers[self.index]

    def choose(self) -> Tier:
        """The tier for the next request, counted as in flight until its
        `observe`: the current tier, or with ``backlog`` a cheaper one when
        the requests in flight would make it miss the objective."""
        with self._lock:
            now = self.clock()
            # A request never observed (its caller dropped it) stops counting
            # once it is older than any latency the policy takes in.
            stale = now - self.objective_ms  # 1000 x the objective, in seconds
            self._in_flight = [(n, t, s) for n, t, s in self._in_flight if t >= stale]
            index = self.index
            if self.backlog and self._in_flight and self._ready and self._ratios:
                slowdown = self.backlog * self._ratio(percentile=50)
                ahead = sum(self._cost[n] for n, _, _ in self._in_flight)
                fits = [
                    i
                    for i in range(index + 1)
                    if slowdown * (ahead + self._cost[self.tiers[i].name]) <= self.objective_ms
                ]
                served = max(fits) if fits else 0
                if served < index:
                    self.shed += 1
                    index = served
            tier = self.tiers[index]
            # (tier served, when, the policy's tier it stands for)
            self._in_flight.append((tier.name, now, self.tiers[self.index].name))
            return tier

    def estimate_ms(self, tier: Tier | str) -> float | None:
        """The tier's estimated percentile latency now (None before a full window)."""
        name = tier if isinstance(tier, str) else tier.name
        if name not in self._cost:
            raise ValueError(f"Unknown tier {name!r}; the policy has {sorted(self._cost)}.")
        with self._lock:
            if not self._ready or len(self._ratios) < self.window // 2:
                return None
            names = [t.name for t in self.tiers]
            # A dominated tier (not in the list) gets no queueing factor.
            factor = self._queue_factors()[names.index(name)] if name in names else 1.0
            return self._ratio() * self._cost[name] * factor

    def max_steady_switches(self, requests: int) -> int:
        """The most switches in a steady phase of ``requests`` requests once
        settled, when the probed tier itself is what fails (its latency is
        more than its cost says, every time): one failed probe (up and back
        down) per ``hold``, which doubles up to ``max_hold`` (so about
        2 log2(N / hold) switches, then linear in N beyond the cap). Noisy
        latencies near the objective can add switches: each is a real
        miss of the percentile."""
        probes, hold, seen = 0, self.base_hold, 0
        while seen + hold <= requests:
            seen += hold + 1
            probes += 1
            hold = min(2 * hold, self.max_hold)
        return 2 * probes

    def observe(
        self, latency_ms: float, tier: Tier | str | None = None, failed: bool = False
    ) -> Tier:
        """Records one request's latency; returns the tier for the next request.

        Args:
            latency_ms: how long the request took (infinite is taken as
                1000 x the objective).
            tier: the tier that served it (default: the current one).
            failed: the request failed (an error, a timeout): counted as at
                least twice the objective, however fast the failure came.

        Raises:
            ValueError: for an unknown tier, or a latency that is NaN or
                negative.
        """
        latency_ms = float(latency_ms)
        if math.isnan(latency_ms) or latency_ms < 0:
            raise ValueError(f"latency_ms must be a duration, got {latency_ms}.")
        if failed:
            latency_ms = max(latency_ms, 2 * self.objective_ms)
        latency_ms = min(latency_ms, 1000 * self.objective_ms)
        with self._lock:
            name = self.tiers[self.index].name if tier is None else getattr(tier, "name", tier)
            if name not in self._cost:
                raise ValueError(f"Unknown tier {name!r}; the policy has {sorted(self._cost)}.")
            self.history.append((name, latency_ms))
            stands_for = name
            for i, (n, _, s) in enumerate(self._in_flight):
                if n == name:  # the oldest request in flight on that tier
                    del self._in_flight[i]
                    stands_for = s
                    break
            if self.queueing:
                self._times.append(self.clock())
            if name != self._failed_tier:  # late answers of a failed probe say nothing of load
                # Labelled with the tier that served it: a failed probe is
                # judged on the probed tier's own requests.
                self._ratios.append((name, self._load_ratio(latency_ms, name, stands_for)))
            self._since_move += 1
            # The first decision waits for a full window, unless the window
            # could only miss (`_padded_ratio`); after a failed probe's
            # requests are forgotten, half a window will do.
            if not self._ready and len(self._ratios) < self.window:
                padded = self._padded_ratio()
                if padded * self._cost[self.tiers[self.index].name] > self.objective_ms:
                    self._ready = True
                    self._decide(padded)
            elif self._ready or len(self._ratios) == self.window:
                self._ready = True
                if len(self._ratios) >= self.window // 2:
                    self._decide(self._ratio())
            return self.tiers[self.index]

    def _ratio(self, skip: str | None = None, percentile: float | None = None) -> float:
        """The window's ``percentile`` (default: the policy's) of latency / cost."""
        ratios = [r for n, r in self._ratios if n != skip]
        q = self.percentile if percentile is None else percentile
        return float(np.percentile(ratios, q)) if ratios else 0.0

    def _load_ratio(self, latency_ms: float, served: str, stands_for: str) -> float:
        """latency / cost of a request, as the request of ``stands_for`` (the
        policy's tier when it was chosen) it replaced: a request the backlog
        check sent to a cheaper tier adds what the policy's tier would have
        taken longer, the cost difference x the window's median slowdown."""
        if stands_for == served:
            return latency_ms / self._cost[served]
        longer = self._cost[stands_for] - self._cost[served]
        slowdown = self._ratio(percentile=50) if self._ratios else 1.0
        return (latency_ms + slowdown * longer) / self._cost[stands_for]

    def _padded_ratio(self) -> float:
        """Before the first full window: the lowest its percentile can
        still be, the requests yet to come counted as instant."""
        ratios = [r for _, r in self._ratios]
        ratios += [0.0] * (self.window - len(ratios))
        return float(np.percentile(ratios, self.percentile))

    def _reset_back_off(self) -> None:
        self._failed_probes, self.hold, self._load_at_failure = 0, self.base_hold, None

    def _queue_factors(self) -> list[float]:
        """Each tier's estimate multiplier for queueing (1 without a rate)."""
        ones = [1.0] * len(self.tiers)
        times = self._times
        if not self.queueing or len(times) < 10 or not times[-1] > times[0]:
            return ones
        rate = (len(times) - 1) / (1000 * (times[-1] - times[0]))  # requests per ms
        load = [rate * self._ratio(percentile=50) * self._cost[t.name] for t in self.tiers]
        current = min(load[self.index], 0.9)
        return [(1 - current) / (1 - u) if u < 1 else math.inf for u in load]

    def _decide(self, ratio: float) -> None:
        costs = [self._cost[t.name] * f for t, f in zip(self.tiers, self._queue_factors())]
        target = self.headroom * self.objective_ms
        if self._last_move == "up" and self._since_move > max(2 * self.window, self.hold):
            self._reset_back_off()  # the last step up held
            self._last_move = "held"
        if self._load_at_failure is not None and ratio < self.headroom * self._load_at_failure:
            self._reset_back_off()  # the load fell well below the last failure's: try again soon
        if ratio * costs[self.index] > self.objective_ms and self.index > 0:
            current = self.tiers[self.index].name
            # Right after a step up, a probe failed when most of the probed
            # tier's requests missed and the other tiers' requests say the
            # tier it left still meets the objective; otherwise more load.
            load = self._ratio(skip=current)
            own = [r * costs[self.index] for n, r in self._ratios if n == current]
            misses_from_start = sum(ms > self.objective_ms for ms in own) * 2 > len(own)
            if (
                self._last_move == "up"
                and misses_from_start
                and load * costs[self._probed_from] <= self.objective_ms
            ):
                self._failed_probes += 1
                self._load_at_failure = load
                index = self._probed_from
                # What the probed tier met says how it runs, not how loaded the
                # server is: forget it (the window refills at the tier left).
                self._failed_tier = current
                kept = [(n, r) for n, r in self._ratios if n != current]
                self._ratios = collections.deque(kept, maxlen=self.window)
            else:  # more load: as far down as the estimate says
                self._reset_back_off()
                fits = [i for i in range(self.index) if ratio * costs[i] <= target]
                index = max(fits) if fits else 0
            self.hold = min(self.base_hold * 2**self._failed_probes, self.max_hold)
            self._move(index, "down")
        elif (
            self.index < len(self.tiers) - 1
            and self._since_move >= self.hold
            and ratio * costs[self.index + 1] <= target
        ):
            # Up to the most accurate tier the estimate puts within the
            # headroom, but not past a tier whose probe failed.
            names = [t.name for t in self.tiers]
            top = names.index(self._failed_tier) if self._failed_tier else len(names) - 1
            fits = [i for i in range(self.index + 1, top + 1) if ratio * costs[i] <= target]
            self._probed_from = self.index
            self._move(max(fits), "up")
            if self.tiers[self.index].name == self._failed_tier:
                self._failed_tier = None

    def _move(self, index: int, direction: str) -> None:
        self.index = index
        self.switches += 1
        self._since_move = 0
        self._last_move = direction


def _window_for(percentile: float, window: int | None) -> int:
    """The window of a ``percentile`` objective: ``window``, or by default the
    fewest requests whose percentile is not just their largest value.

    Raises:
        ValueError: a percentile outside (0, 100), or a shorter window.
    """
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}.")
    smallest = math.ceil(100 / (100 - percentile) - 1e-9)
    window = smallest if window is None else int(window)
    if window < smallest:
        raise ValueError(
            f"window={window} is too short for a p{percentile:g} objective: it needs at "
            f"least {smallest} requests (100 / (100 - percentile)), or the percentile is "
            "only the window's largest value."
        )
    return window
