"""The tiers of an official checkpoint as its authors report them
(pss_keras.training.reference_tiers): no model is built."""

import math

import pytest

from pss_keras.cost import flops
from pss_keras.supernet import specs
from pss_keras.supernet.reference_checkpoint import REFERENCE_SPACE, ReferenceCheckpointError
from pss_keras.training import reference_tiers

SPACE = specs.SearchSpace("mobilenet_v1", num_classes=1000, **REFERENCE_SPACE)


def _config(resolution, mult):
    return SPACE.validate(specs.SubnetConfig("mobilenet_v1", resolution, (mult,) * 14))


def _entry(config, score, infer_metric=None):
    mflops = flops.count_mflops(config, 1000, 1.0)
    return config, score, {"infer_metric": mflops if infer_metric is None else infer_metric}


def test_the_target_grid_is_the_files_list():
    grid = reference_tiers.target_grid(
        "flops", [570, 560, 550, 120, 110] + list(range(130, 550, 10))
    )
    assert (grid.start, grid.stop, grid.step) == (110.0, 570.0, 10.0)
    assert grid.name(grid.index(300.0)) == "flops_300m"
    with pytest.raises(ReferenceCheckpointError, match="not on a regular grid"):
        reference_tiers.target_grid("flops", [110, 120, 135])


def test_each_pools_best_then_the_bounds_unless_a_pool_holds_them():
    a, b, c = _config(160, 0.8), _config(176, 0.85), _config(192, 0.9)
    largest = SPACE.largest()
    pools = {
        "flops": {
            200: [_entry(b, -1.0), _entry(a, -2.0)],
            300: [],
            570: [_entry(largest, -0.5)],
            250: [_entry(c, -0.1)],
        }
    }
    grids = {"flops": reference_tiers.target_grid("flops", range(110, 580, 10))}
    planned = reference_tiers.plan_tiers(pools, grids, SPACE, topk=1)
    assert [t.name for t in planned] == ["smallest", "flops_200m", "flops_250m", "flops_570m"]
    first = planned[1]
    assert (first.config, first.pool_score, first.selected_on) == (b, -1.0, "pool_score")
    assert first.candidates == ({"config": b.to_dict(), "pool_score": -1.0},)  # topk=1
    assert planned[0].config == SPACE.smallest() and planned[0].pool_score is None
    assert planned[0].selected_on == "sandwich"


def test_pool_flops_must_equal_the_files_count():
    a = _config(160, 0.8)
    reference_tiers.check_pool_flops({"flops": {200: [_entry(a, -1.0)]}}, "f.pt")
    off = flops.count_mflops(a, 1000, 1.0) + 0.02
    with pytest.raises(ReferenceCheckpointError, match=r"f.pt: subnet .* of the flops 200 pool"):
        reference_tiers.check_pool_flops({"flops": {200: [_entry(a, -1.0, off)]}}, "f.pt")
    # Latency pools carry microseconds: not counted.
    reference_tiers.check_pool_flops({"latency_cpu": {20: [_entry(a, -1.0, 1.0)]}}, "f.pt")


def test_class_names_and_the_table_say_what_is_not_measured():
    assert reference_tiers.class_names(3) == ["class_0", "class_1", "class_2"]
    assert len(reference_tiers.class_names(1000)) == 1000

    class Tier:
        name, resolution, mflops, params = "smallest", 128, 106.0, 1000
        pool_score, top1, predicted_us = None, math.nan, {}

    table = reference_tiers.describe([Tier()])
    assert table.splitlines()[1].split()[-2:] == ["n/a", "n/a"]
