"""Subnet sampling for PSS training: the conditional sampler and the
prioritized sampler that chooses each step's candidate.

`ConditionalSampler` (the reference's "map"): draw many uniform subnets,
bucket them by rounded target, record per target the empirical distribution
of every dimension (resolution, each stage's multiplier), and sample a subnet
"for target t" by drawing each dimension from t's distributions and rejecting
until the rounded metric equals t.

`PrioritizedSampler` is the per-step policy: pick a metric type (weighted by
its number of targets) and a target uniformly; with probability ``p_space``
(or while that target's pool is not full) draw from the conditional sampler,
otherwise from the pool with ``softmax(score / T)``; then report the
candidate's score back into its pool. It runs on the host, once per step, so
every replica of a distribution strategy trains the same candidate.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from pss_keras.cost import flops
from pss_keras.supernet import specs
from pss_keras.training.pools import SubnetPool, TargetGrid

# metric(space, resolutions [n], mults [n, S]) -> values [n]
MetricFn = Callable[[specs.SearchSpace, np.ndarray, np.ndarray], np.ndarray]


def flops_metric(space: specs.SearchSpace, resolutions, mults) -> np.ndarray:
    """MFLOPs of many configs of ``space`` at once."""
    return flops.count_mflops_np(
        space.model_name, resolutions, mults, space.num_classes, space.width_scale
    )


METRICS: dict[str, MetricFn] = {"flops": flops_metric}


def exponential_schedule(start: float, end: float, epoch: float, epochs: int) -> float:
    """``start * (end / start) ** (epoch / epochs)``: start at epoch 0, end at ``epochs``."""
    if epochs <= 0:
        return float(end)
    return float(start * (end / start) ** (epoch / epochs))


class ConditionalSampler:
    """Per-target distributions of every subnet dimension, with rejection.

    Build it with `ConditionalSampler.build`. Targets that no random subnet
    reached are not in `available` (the reference drops them too).
    """

    def __init__(
        self, space, grid, metric_fn, distributions, counts, build_seconds, extreme_only=None
    ):
        self.space = space
        self.grid = grid
        self.metric_fn = metric_fn
        # distributions[target_index] = [(values, probs) for each dimension]
        self.distributions = distributions
        self.counts = counts
        self.build_seconds = build_seconds
        # {target_index: the largest or smallest subnet}: targets that no
        # uniform draw reached, only an extreme subnet added to the map.
        self.extreme_only = dict(extreme_only or {})

    @classmethod
    def build(
        cls,
        space: specs.SearchSpace,
        grid: TargetGrid,
        num_samples: int = 100_000,
        seed: int = 0,
        metric_fn: MetricFn | None = None,
        include_extremes: bool = True,
    ) -> ConditionalSampler:
        """Draws ``num_samples`` uniform subnets and buckets them by target.

        Deterministic for a given seed, so a resumed run rebuilds the same map.
        With ``include_extremes`` the largest and smallest subnets are added
        to the draws: uniform draws almost never reach the extreme targets
        (e.g. MobileNetV1's 570 M), and the sandwich rule trains those two
        subnets at every step anyway, so their tiers deserve a pool.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}.")
        metric_fn = metric_fn or METRICS[grid.metric_type]
        start = time.perf_counter()
        rng = np.random.default_rng(seed)
        resolutions, mults = space.random_arrays(num_samples, rng)
        if include_extremes:
            extremes = specs.configs_to_arrays([space.largest(), space.smallest()])
            resolutions = np.concatenate([resolutions, extremes[0]])
            mults = np.concatenate([mults, extremes[1]])
        index = grid.index(metric_fn(space, resolutions, mults))
        dims = np.concatenate([resolutions[:, None].astype(np.float64), mults], axis=1)
        distributions, counts, extreme_only = {}, {}, {}
        for k in np.unique(index[index >= 0]):
            rows = dims[index == k]
            per_dim = []
            for d in range(dims.shape[1]):
                values, n = np.unique(rows[:, d], return_counts=True)
                per_dim.append((values, n / n.sum()))
            distributions[int(k)] = per_dim
            counts[int(k)] = int(len(rows))
            if include_extremes and not (index[:num_samples] == k).any():
                # Reached by an extreme alone (the last two rows: largest, smallest).
                last = np.flatnonzero(index == k)[-1]
                extreme_only[int(k)] = space.largest() if last == num_samples else space.smallest()
        return cls(
            space,
            grid,
            metric_fn,
            distributions,
            counts,
            time.perf_counter() - start,
            extreme_only,
        )

    @property
    def available(self) -> tuple[int, ...]:
        """Target indices that have a distribution (each gets a pool)."""
        return tuple(sorted(self.distributions))

    @property
    def trainable(self) -> tuple[int, ...]:
        """Targets that candidates are drawn for: the available ones that a
        subnet other than the largest and smallest reaches (those two are
        trained at every step by the sandwich rule already; a candidate
        drawn for their targets would train one of them twice)."""
        return tuple(k for k in self.available if k not in self.extreme_only)

    def sample(
        self, target_index: int, rng: np.random.Generator, batch: int = 64, max_tries: int = 10_000
    ) -> specs.SubnetConfig:
        """A subnet whose rounded metric is exactly target ``target_index``.

        Raises:
            ValueError: if the target has no distribution, or no subnet was
                accepted within ``max_tries`` draws.
        """
        if target_index not in self.distributions:
            raise ValueError(
                f"Target {self.grid.name(target_index)} has no subnets in the sampler map; "
                f"available: {[self.grid.name(k) for k in self.available]}."
            )
        per_dim = self.distributions[target_index]
        for _ in range(max(1, max_tries // batch)):
            draws = np.stack([rng.choice(v, size=batch, p=p) for v, p in per_dim], axis=1)
            resolutions = draws[:, 0].astype(np.int64)
            mults = draws[:, 1:]
            hits = np.flatnonzero(
                self.grid.index(self.metric_fn(self.space, resolutions, mults)) == target_index
            )
            if hits.size:
                i = hits[0]
                return specs.SubnetConfig(
                    self.space.model_name,
                    int(resolutions[i]),
                    tuple(float(m) for m in mults[i]),
                )
        raise ValueError(
            f"No subnet for target {self.grid.name(target_index)} in {max_tries} draws."
        )


@dataclasses.dataclass(frozen=True)
class Candidate:
    """The subnet chosen for one training step and where it came from."""

    config: specs.SubnetConfig
    metric_type: str
    target_index: int
    target: float
    from_pool: bool


class PrioritizedSampler:
    """Chooses each step's candidate and keeps the pools (host-side state).

    Args:
        samplers: one `ConditionalSampler` per metric type.
        pool_size: capacity P of every pool.
        pool_ema: score smoothing lambda.
        p_space: (start, end) of the probability of sampling from the space.
        temperature: (start, end) of the softmax temperature T.
        epochs: length of the schedules.
        seed: seed of the host random generator (saved with the state).
    """

    def __init__(
        self,
        samplers: Sequence[ConditionalSampler],
        pool_size: int = 50,
        pool_ema: float = 0.9,
        p_space: tuple[float, float] = (1.0, 0.01),
        temperature: tuple[float, float] = (1.0, 0.01),
        epochs: int = 250,
        seed: int = 0,
    ):
        if not samplers:
            raise ValueError("At least one metric type (conditional sampler) is needed.")
        self.samplers = {s.grid.metric_type: s for s in samplers}
        for metric_type, s in self.samplers.items():
            if not s.trainable:
                raise ValueError(
                    f"No random subnet falls on the {metric_type} target grid "
                    f"{s.grid.start:g}..{s.grid.stop:g} step {s.grid.step:g}"
                    f"{' (only the largest or smallest subnet does)' if s.available else ''}; "
                    "check the target range against the subnets' range."
                )
        self.pool_size = int(pool_size)
        self.pool_ema = float(pool_ema)
        self.pools = {
            (metric_type, k): SubnetPool(pool_size, pool_ema)
            for metric_type, s in self.samplers.items()
            for k in s.available
        }
        self.p_space_range = tuple(float(v) for v in p_space)
        self.temperature_range = tuple(float(v) for v in temperature)
        self.epochs = int(epochs)
        self.rng = np.random.default_rng(seed)
        self.epoch = 0

    def set_epoch(self, epoch: float) -> None:
        self.epoch = epoch

    @property
    def p_space(self) -> float:
        return exponential_schedule(*self.p_space_range, self.epoch, self.epochs)

    @property
    def temperature(self) -> float:
        return exponential_schedule(*self.temperature_range, self.epoch, self.epochs)

    def choose(self) -> Candidate:
        """The next step's candidate."""
        metric_types = sorted(self.samplers)
        weights = np.array([len(self.samplers[m].trainable) for m in metric_types], float)
        metric_type = metric_types[
            int(self.rng.choice(len(metric_types), p=weights / weights.sum()))
        ]
        sampler = self.samplers[metric_type]
        k = sampler.trainable[int(self.rng.integers(len(sampler.trainable)))]
        pool = self.pools[(metric_type, k)]
        from_space = self.rng.random() < self.p_space or not pool.is_full
        config = (
            sampler.sample(k, self.rng) if from_space else pool.sample(self.rng, self.temperature)
        )
        return Candidate(config, metric_type, k, sampler.grid.value(k), not from_space)

    def report(self, candidate: Candidate, score: float) -> float:
        """Puts the candidate's score into its pool; returns the stored score."""
        return self.pools[(candidate.metric_type, candidate.target_index)].update(
            candidate.config, score
        )

    def report_extremes(self, largest_score: float, smallest_score: float) -> None:
        """Puts the step's scores of the largest and smallest subnets (the
        sandwich step's own passes) into the pools of the targets that only
        they reach, so those tiers are retained although no candidate is
        drawn for them."""
        for metric_type, sampler in self.samplers.items():
            for k, config in sampler.extreme_only.items():
                largest = config == sampler.space.largest()
                score = largest_score if largest else smallest_score
                self.pools[(metric_type, k)].update(config, score)

    def pool_summary(self) -> list[dict]:
        """Per pool: metric type, target, fill and best score."""
        rows = []
        for (metric_type, k), pool in sorted(self.pools.items()):
            best = pool.top(1)
            rows.append(
                {
                    "metric_type": metric_type,
                    "target": self.samplers[metric_type].grid.value(k),
                    "name": self.samplers[metric_type].grid.name(k),
                    "fill": len(pool),
                    "best_score": best[0][1] if best else None,
                }
            )
        return rows

    def state_dict(self) -> dict:
        """Pools, epoch and the random generator's exact state (JSON-able)."""
        return {
            "pools": [
                {"metric_type": m, "target_index": k, "pool": pool.to_dict()}
                for (m, k), pool in sorted(self.pools.items())
            ],
            "rng": self.rng.bit_generator.state,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        for entry in state["pools"]:
            key = (entry["metric_type"], int(entry["target_index"]))
            if key not in self.pools:
                raise ValueError(
                    f"Saved pool {key} does not exist in this run's target grid; resume with "
                    "the same targets and sampler seed as the interrupted run."
                )
            self.pools[key] = SubnetPool.from_dict(entry["pool"])
        self.rng.bit_generator.state = state["rng"]
        self.epoch = state["epoch"]


def log_map(sampler: ConditionalSampler) -> None:
    grid = sampler.grid
    missing = [grid.name(k) for k in range(grid.num_targets) if k not in sampler.distributions]
    logging.info(
        "Conditional sampler for %s: %d of %d targets reached in %.2f s%s",
        grid.metric_type,
        len(sampler.available),
        grid.num_targets,
        sampler.build_seconds,
        f" (no subnet at {', '.join(missing)})" if missing else "",
    )
    for k, config in sorted(sampler.extreme_only.items()):
        which = "largest" if config == sampler.space.largest() else "smallest"
        logging.info(
            "Target %s is reached only by the %s subnet: it keeps its pool (scored by the "
            "sandwich step's %s pass) but no candidates are drawn for it.",
            grid.name(k),
            which,
            which,
        )
