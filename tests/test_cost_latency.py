"""pss_keras.cost.latency: the project's latency tables (keys, the predictor,
files, space checks, rank correlation). Measured latencies depend on the
machine, so no test asserts one (tables built by
test_cost_latency_measurement.py are checked for structure and arithmetic;
runs use a synthetic table, a formula of the block's shape)."""

import json
import random

import numpy as np
import pytest
from latency_helpers import TINY, synthetic_table

from pss_keras.cost import latency
from pss_keras.supernet import blocks, specs


def _manual_sum(table, config):
    """Sum of the config's block entries, looked up block by block from the plan."""
    channels = blocks.stage_channels(config, table.space["width_scale"])
    total = table.overhead_us
    for block, kind, in_size, c_in, c_out in latency.block_shapes(
        config.model_name, config.resolution, channels
    ):
        assert kind.block_type in ("stem", "mbv1_block", "top") and block.name
        total += table.entries[(kind, in_size, c_in, c_out)]
    return total


@pytest.mark.parametrize("model_name, width", [("mobilenet_v1", 0.25), ("mobilenet_v2", 0.35)])
def test_keys_are_exactly_what_subnets_reach(model_name, width):
    """Every block of every subnet has a key, and every key is a block some
    subnet has (a small space: 3,000 random subnets reach all of them)."""
    space = specs.SearchSpace(model_name, (32, 40), 8, (0.75, 1.0), width, 10)
    keys = latency.table_keys(space)
    assert len(set(keys)) == len(keys)
    rng = random.Random(0)
    reached = set()
    for config in [space.largest(), space.smallest()] + [space.random(rng) for _ in range(3000)]:
        channels = blocks.stage_channels(config, space.width_scale)
        for _, kind, in_size, c_in, c_out in latency.block_shapes(
            model_name, config.resolution, channels
        ):
            reached.add((kind, in_size, c_in, c_out))
    assert reached == set(keys)
    # A block within a stage (MobileNetV2's residual repeats) keeps its width.
    for kind, _, c_in, c_out in keys:
        if kind.residual:
            assert c_in == c_out
    if model_name == "mobilenet_v2":
        assert any(k[0].residual for k in keys)
        head = {k[3] for k in keys if k[0].block_type == "head"}
        assert head == {blocks.make_divisible(1280 * 0.35)}  # full width whatever its mult
    # One key per block of the plan per shape: stem, 13 or 17 blocks, (head,) top.
    kinds = {k[0].block_type for k in keys}
    assert kinds == ({"stem", "mbv1_block", "top"} if model_name == "mobilenet_v1" else
                     {"stem", "mbv2_block", "head", "top"})  # fmt: skip


def test_prediction_is_the_sum_of_entries_plus_overhead():
    table = synthetic_table(TINY)
    rng = random.Random(1)
    configs = [TINY.largest(), TINY.smallest()] + [TINY.random(rng) for _ in range(100)]
    manual = np.array([_manual_sum(table, c) for c in configs])
    scalar = np.array([table.predict_us(c) for c in configs])
    vectorized = table.predict_us_np("mobilenet_v1", *specs.configs_to_arrays(configs))
    np.testing.assert_allclose(scalar, manual, rtol=1e-12)
    np.testing.assert_allclose(vectorized, manual, rtol=1e-12)
    assert table.predict_us(TINY.largest()) > table.predict_us(TINY.smallest())
    # The breakdown names every block of the plan once.
    names = [name for name, _ in table.block_us(configs[0])]
    assert names == [b.name for b in blocks.plan("mobilenet_v1")]
    assert sum(us for _, us in table.block_us(configs[0])) + 7.0 == pytest.approx(manual[0])


def test_a_table_for_another_space_is_refused(tmp_path):
    table = synthetic_table(TINY)
    table.save(str(tmp_path / "t.json"))
    table = latency.LatencyTable.load(str(tmp_path / "t.json"))
    table.check_space(TINY)  # its own space
    other = specs.SearchSpace("mobilenet_v1", (16, 40), 8, (0.75, 1.0), 0.25, 10)
    with pytest.raises(ValueError, match=r"t\.json was built for another search space \("
                       r"resolution_range \[16, 32\] there, \[16, 40\] here\)"):  # fmt: skip
        table.check_space(other)
    with pytest.raises(ValueError, match="width_scale 0.25 there, 0.5 here"):
        table.check_space(specs.SearchSpace("mobilenet_v1", (16, 32), 8, (0.75, 1.0), 0.5, 10))
    # Another class count is the same space (the classifier is keyed by its input).
    table.check_space(specs.SearchSpace("mobilenet_v1", (16, 32), 8, (0.75, 1.0), 0.25, 1000))
    with pytest.raises(ValueError, match="is for mobilenet_v1, not mobilenet_v2"):
        table.predict_us(specs.SearchSpace("mobilenet_v2").largest())
    # A subnet outside the table's space (40 px) names the missing block.
    outside = specs.SubnetConfig("mobilenet_v1", 40, (1.0,) * 14)
    with pytest.raises(ValueError, match="has no entry for stem/t1/s2 at input 40 px, 3 -> 8"):
        table.predict_us(outside)


def test_table_files_round_trip_and_bad_files_get_one_line(tmp_path):
    table = synthetic_table(TINY)
    path = str(tmp_path / "t.json")
    table.save(path)
    again = latency.LatencyTable.load(path)
    assert again.digest() == table.digest() and set(again.entries) == set(table.entries)
    # Entries are stored to 0.001 us.
    assert max(abs(again.entries[k] - us) for k, us in table.entries.items()) <= 5e-4
    assert again.overhead_us == 7.0 and again.runtime == "tflite"
    assert again.describe() == "tflite on test CPU (AVX2), 1 thread(s)"
    with pytest.raises(ValueError, match=r"Latency table .*missing\.json does not exist; build it"):
        latency.LatencyTable.load(str(tmp_path / "missing.json"))
    (tmp_path / "other.json").write_text(json.dumps({"entries": []}))
    with pytest.raises(ValueError, match="is not a pss_keras latency table"):
        latency.LatencyTable.load(str(tmp_path / "other.json"))
    (tmp_path / "cut.json").write_text(open(path).read()[:200])
    with pytest.raises(ValueError, match="is not readable JSON"):
        latency.LatencyTable.load(str(tmp_path / "cut.json"))
    data = json.load(open(path))
    data["entries"][0] = data["entries"][0][:3]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="bad.json is damaged"):
        latency.LatencyTable.load(str(tmp_path / "bad.json"))


def test_rank_correlation_and_error():
    assert latency.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert latency.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert latency.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)
    assert latency.mape([110, 90], [100, 100]) == pytest.approx(0.10)
