"""What a tier policy is, and the first one: the tier for each request.

A policy gives the tier for the next request (``tier``, `TimedPolicy.choose`)
and takes in each request's latency (``observe``); `TimedPolicy.predict`
sends one request through a `pss_keras.serving.client.PSSClient`, timed
with the policy's clock (tests inject a simulated one).
`MedianStepPolicy` steps one tier at a time on a median of a few requests;
`pss_keras.serving.adaptive_policy.AdaptiveTierPolicy`, which replaced it,
holds an objective on a percentile.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from pss_keras.serving.tiers import Tier, require_tier_table

if TYPE_CHECKING:
    from pss_keras.serving.client import PSSClient


class TimedPolicy:
    """What both tier policies share: their checked settings, and one request
    timed on the current tier. A subclass sets ``tiers``, ``index``,
    ``clock`` and the ``tier`` property, and defines ``observe``."""

    @staticmethod
    def _checked(tiers, objective_ms: float, headroom: float, who: str) -> list:
        """The tiers as a list, after the checks both policies make."""
        if not objective_ms > 0:
            raise ValueError(f"objective_ms must be positive, got {objective_ms}.")
        if not 0 < headroom < 1:
            raise ValueError(f"headroom must be in (0, 1), got {headroom}.")
        tiers = list(tiers)
        if not tiers:
            raise ValueError("No tiers to adapt between.")
        require_tier_table(tiers, who)
        return tiers

    def choose(self) -> Tier:
        """The tier for the next request (the current one; `AdaptiveTierPolicy`
        may choose a cheaper one for a request queued behind others)."""
        return self.tier

    def predict(self, client: PSSClient, images) -> tuple[dict, Tier, float]:
        """One request on the tier `choose` gives, timed with ``clock``;
        returns (outputs, tier used, ms)."""
        tier = self.choose()
        start = self.clock()
        try:
            outputs = client.predict(images, tier.name)
        except Exception:
            # A failure is a miss, and its request is no longer in flight.
            self.observe(1000 * (self.clock() - start), tier, failed=True)
            raise
        latency = 1000 * (self.clock() - start)
        self.observe(latency, tier)
        return outputs, tier, latency


class MedianStepPolicy(TimedPolicy):
    """The first adaptive policy, kept for comparison: steps down a tier when
    the median of the last few requests misses the objective, back up with
    headroom.

    `AdaptiveTierPolicy` replaced it: a median of 5 lets 2 of every 5
    requests miss, and it may choose dominated tiers (it orders them by
    MFLOPs alone); benchmarks/adaptive_serving.py measures both (policy
    ``median5``).

    Keeps a window of the latest observed request latencies. When their
    median exceeds ``objective_ms`` the next request uses the next cheaper
    tier; when it stays below ``headroom * objective_ms`` the policy tries
    the next more expensive tier. Each move clears the window, so every
    decision is based on requests served by the current tier.

    Args:
        tiers: the served tiers (any order; sorted by MFLOPs here).
        objective_ms: the latency objective per request.
        window: requests per decision.
        headroom: fraction of the objective below which it steps up.
        start: tier name to start from (default: the most expensive).
        clock: what `predict` times requests with: a function returning
            seconds (default `time.perf_counter`). Tests pass a simulated
            clock to make the policy's decisions independent of wall time.
    """

    def __init__(
        self,
        tiers,
        objective_ms: float,
        window: int = 5,
        headroom: float = 0.6,
        start=None,
        clock=time.perf_counter,
    ):
        tiers = self._checked(tiers, objective_ms, headroom, "MedianStepPolicy")
        self.tiers = sorted(tiers, key=lambda t: t.mflops)
        names = [t.name for t in self.tiers]
        self.index = names.index(start) if start else len(self.tiers) - 1
        self.objective_ms = float(objective_ms)
        self.window = int(window)
        self.headroom = float(headroom)
        self.clock = clock
        self._latencies = collections.deque(maxlen=self.window)
        self.history = []  # (tier name, latency ms) per observation
        self.switches = 0
        self._lock = threading.Lock()

    @property
    def tier(self) -> Tier:
        with self._lock:
            return self.tiers[self.index]

    def observe(
        self, latency_ms: float, tier: Tier | str | None = None, failed: bool = False
    ) -> Tier:
        """Records one request's latency (``tier``: the tier that served it,
        for the history; every latency counts; ``failed``: counted as twice
        the objective at least); returns the tier for the next one."""
        if failed:
            latency_ms = max(float(latency_ms), 2 * self.objective_ms)
        with self._lock:
            name = self.tiers[self.index].name if tier is None else getattr(tier, "name", tier)
            self.history.append((name, float(latency_ms)))
            self._latencies.append(float(latency_ms))
            if len(self._latencies) == self.window:
                median = float(np.median(self._latencies))
                if median > self.objective_ms and self.index > 0:
                    self.index -= 1
                    self.switches += 1
                    self._latencies.clear()
                elif (
                    median < self.headroom * self.objective_ms and self.index < len(self.tiers) - 1
                ):
                    self.index += 1
                    self.switches += 1
                    self._latencies.clear()
            return self.tiers[self.index]
