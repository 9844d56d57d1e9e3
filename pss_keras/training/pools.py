"""Subnet pools: the prioritized memory of PSS training.

One pool per (metric type, target) holds up to ``capacity`` subnets with a
score (the negative cross-entropy of the subnet on a training batch, higher is
better), smoothed by an exponential moving average each time the subnet is
seen again. The lowest score is evicted when the pool overflows, and subnets
are drawn with probability ``softmax(score / T)``.

Plain Python/NumPy: pools live on the host, are updated once per step with
the cross-replica mean score, and are saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pss_keras.supernet import specs


@dataclasses.dataclass(frozen=True)
class TargetGrid:
    """The targets of one metric: ``start, start + step, ..., stop``.

    A metric value ``m`` belongs to target index
    ``round((m - start) / step)`` (the method's rounding with offset
    ``start``) when that index is on the grid.

    Attributes:
        metric_type: e.g. ``"flops"`` (MFLOPs).
        start: first target.
        stop: last target (inclusive).
        step: grid step.
    """

    metric_type: str
    start: float
    stop: float
    step: float

    def __post_init__(self):
        if not self.step > 0:
            raise ValueError(f"{self.metric_type} target step must be positive, got {self.step}.")
        if self.stop < self.start:
            raise ValueError(
                f"{self.metric_type} target range {self.start}..{self.stop} is empty "
                "(the last target is below the first)."
            )

    @property
    def num_targets(self) -> int:
        return int(math.floor((self.stop - self.start) / self.step + 1e-9)) + 1

    @property
    def targets(self) -> tuple[float, ...]:
        return tuple(self.value(i) for i in range(self.num_targets))

    def value(self, index: int) -> float:
        return round(self.start + index * self.step, 6)

    def index(self, metric):
        """Target index of a metric value (or array of them); -1 off the grid."""
        k = np.round((np.asarray(metric, dtype=np.float64) - self.start) / self.step)
        k = np.where((k >= 0) & (k < self.num_targets), k, -1).astype(np.int64)
        return int(k) if k.ndim == 0 else k

    def name(self, index: int) -> str:
        """A readable tier name: ``flops_320m`` (MFLOPs), ``latency_cpu_12p0ms``
        (latency targets in microseconds, named in ms when the grid is on
        whole 0.1 ms, else ``latency_cpu_150us``)."""
        value = self.value(index)
        if self.metric_type.startswith("latency"):
            on_tenths = all(abs(v / 100 - round(v / 100)) < 1e-6 for v in (self.start, self.step))
            text = f"{value / 1000:.1f}ms" if on_tenths else f"{value:g}us"
            return f"{self.metric_type}_{text.replace('.', 'p')}"
        text = f"{value:g}".replace(".", "p")
        unit = {"flops": "m"}.get(self.metric_type, "")
        return f"{self.metric_type}_{text}{unit}"


class SubnetPool:
    """Up to ``capacity`` subnets with EMA-smoothed scores.

    Args:
        capacity: maximum number of subnets (P, 50 in the paper).
        ema: smoothing lambda: ``score = ema * old + (1 - ema) * new``.
    """

    def __init__(self, capacity: int = 50, ema: float = 0.9):
        if capacity < 1:
            raise ValueError(f"Pool capacity must be at least 1, got {capacity}.")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"Pool EMA lambda must be in [0, 1), got {ema}.")
        self.capacity = int(capacity)
        self.ema = float(ema)
        self.scores: dict[specs.SubnetConfig, float] = {}

    def __len__(self) -> int:
        return len(self.scores)

    def __contains__(self, config) -> bool:
        return config in self.scores

    @property
    def is_full(self) -> bool:
        return len(self.scores) >= self.capacity

    def update(self, config: specs.SubnetConfig, score: float) -> float:
        """Inserts ``config`` or smooths its score; evicts the lowest if over
        capacity. Returns the config's stored score (``-inf`` if evicted)."""
        score = float(score)
        if not math.isfinite(score):
            return self.scores.get(config, -math.inf)
        if config in self.scores:
            self.scores[config] = self.ema * self.scores[config] + (1.0 - self.ema) * score
        else:
            self.scores[config] = score
        if len(self.scores) > self.capacity:
            worst = min(self.scores, key=self.scores.get)
            del self.scores[worst]
        return self.scores.get(config, -math.inf)

    def probabilities(self, temperature: float) -> tuple[list, np.ndarray]:
        """Configs and their sampling probabilities ``softmax(score / T)``."""
        if not self.scores:
            raise ValueError("Cannot sample from an empty pool.")
        if not temperature > 0:
            raise ValueError(f"Temperature must be positive, got {temperature}.")
        configs = list(self.scores)
        logits = np.array([self.scores[c] for c in configs], dtype=np.float64) / temperature
        logits -= logits.max()
        probs = np.exp(logits)
        return configs, probs / probs.sum()

    def sample(self, rng: np.random.Generator, temperature: float) -> specs.SubnetConfig:
        configs, probs = self.probabilities(temperature)
        return configs[int(rng.choice(len(configs), p=probs))]

    def top(self, k: int) -> list[tuple[specs.SubnetConfig, float]]:
        """The ``k`` best subnets with their scores, best first."""
        ranked = sorted(self.scores.items(), key=lambda item: -item[1])
        return ranked[:k]

    def to_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "ema": self.ema,
            "entries": [{"config": c.to_dict(), "score": s} for c, s in self.scores.items()],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SubnetPool:
        pool = cls(data["capacity"], data["ema"])
        for entry in data["entries"]:
            pool.scores[specs.SubnetConfig.from_dict(entry["config"])] = float(entry["score"])
        return pool
