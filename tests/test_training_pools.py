import math

import numpy as np
import pytest

from pss_keras.supernet.specs import SubnetConfig
from pss_keras.training.pools import SubnetPool, TargetGrid


def cfg(i):
    return SubnetConfig("mobilenet_v2", 128 + 8 * (i % 13), (0.75 + 0.001 * i,) * 9)


def test_target_grid_rounding_and_names():
    grid = TargetGrid("flops", 110, 570, 10)
    assert grid.num_targets == 47 and grid.targets[:2] == (110, 120)
    assert grid.index(114.9) == 0 and grid.index(115.1) == 1 and grid.index(568.79) == 46
    assert grid.index(104.0) == -1 and grid.index(575.1) == -1
    np.testing.assert_array_equal(grid.index(np.array([106.78, 320.2, 900.0])), [0, 21, -1])
    assert grid.name(21) == "flops_320m"
    small = TargetGrid("flops", 0.8, 3.2, 0.8)
    assert small.num_targets == 4 and small.name(0) == "flops_0p8m" and small.value(3) == 3.2


@pytest.mark.parametrize(
    "args, message", [((110, 100, 10), "is empty"), ((110, 570, 0), "step must be positive")]
)
def test_target_grid_errors(args, message):
    with pytest.raises(ValueError, match=message):
        TargetGrid("flops", *args)


def test_pool_insert_ema_and_eviction():
    pool = SubnetPool(capacity=3, ema=0.9)
    assert not pool.is_full and len(pool) == 0
    for i, score in enumerate([-1.0, -2.0, -3.0]):
        pool.update(cfg(i), score)
    assert pool.is_full
    # EMA on a second sighting.
    assert pool.update(cfg(0), 0.0) == pytest.approx(0.9 * -1.0 + 0.1 * 0.0)
    # Overflow evicts the lowest score (cfg(2) at -3.0), not the newcomer.
    assert pool.update(cfg(3), -2.5) == -2.5
    assert cfg(2) not in pool and len(pool) == 3
    # A newcomer worse than everyone is evicted at once.
    assert pool.update(cfg(4), -10.0) == -math.inf and cfg(4) not in pool
    assert [c for c, _ in pool.top(2)] == [cfg(0), cfg(1)]
    pool.update(cfg(1), float("nan"))  # a diverged batch does not poison the pool
    assert pool.scores[cfg(1)] == -2.0


def test_pool_softmax_sampling_follows_temperature():
    pool = SubnetPool(capacity=4)
    for i, score in enumerate([-0.5, -1.0, -1.5, -2.0]):
        pool.update(cfg(i), score)
    rng = np.random.default_rng(0)
    hot = [pool.sample(rng, temperature=100.0) for _ in range(4000)]
    counts = np.array([hot.count(cfg(i)) for i in range(4)]) / 4000
    np.testing.assert_allclose(counts, 0.25, atol=0.03)  # nearly uniform
    cold = [pool.sample(rng, temperature=0.01) for _ in range(200)]
    assert cold.count(cfg(0)) == 200  # the best one only
    _, probs = pool.probabilities(1.0)
    expected = np.exp([-0.5, -1.0, -1.5, -2.0])
    np.testing.assert_allclose(probs, expected / expected.sum())


def test_pool_errors_and_round_trip():
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        SubnetPool(0)
    with pytest.raises(ValueError, match="empty pool"):
        SubnetPool(2).sample(np.random.default_rng(0), 1.0)
    pool = SubnetPool(5, 0.8)
    pool.update(cfg(1), -1.25)
    clone = SubnetPool.from_dict(pool.to_dict())
    assert clone.scores == pool.scores and (clone.capacity, clone.ema) == (5, 0.8)


def test_latency_tier_names():
    grid = TargetGrid("latency_cpu", 10_000, 31_000, 1000)
    assert grid.name(2) == "latency_cpu_12p0ms" and grid.num_targets == 22
    assert TargetGrid("latency_gpu", 70, 240, 10).name(0) == "latency_gpu_70us"
    assert TargetGrid("latency_cpu", 20, 60, 10).name(4) == "latency_cpu_60us"
