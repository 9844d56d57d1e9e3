"""One seed pair of the PSS vs uniform study: pairing, candidate sets and
their choice, resuming an evaluation, cross evaluation, matched FLOPs."""

import dataclasses
import math

import pytest

from pss_keras.benchmarking import paired_sampling as paired
from pss_keras.jobs.config import TrainConfig


@pytest.fixture(autouse=True)
def _independent_random_state():
    """Overrides conftest's seeding fixture, which imports TensorFlow: these
    tests use their own seeded generators and stay TF-free and fast."""
    yield


@dataclasses.dataclass(frozen=True)
class _Config:
    """A stand-in subnet: hashable, with ``to_dict`` as SubnetConfig has."""

    band: int
    i: int

    def to_dict(self) -> dict:
        return {"band": self.band, "i": self.i}


class _Bench:
    """A fake `SubnetBench`: two bands, pools of 5, 40 subnets a band;
    accuracy a function of the subnet and of the supernet (``offset``)."""

    def __init__(self, offset: float):
        self.offset = offset
        self.measured = []
        self.pools_checkpoint = {"checkpoint": "epoch-0024", "epoch": 24, "step": 0,
                                 "run_epochs": 24}  # fmt: skip

    def bands(self):
        return [(0, 5.0, "flops_5m"), (1, 13.0, "flops_13m")]

    def pool_top(self, k, count):
        return [(_Config(k, i), -0.1 * i) for i in range(5)][:count]

    def sample(self, k, rng):
        return _Config(k, int(rng.integers(10, 50)))

    def measure(self, config):
        d = config if isinstance(config, dict) else config.to_dict()
        self.measured.append(d)
        # Minival prefers i % 7 == 3; validation rises with i; bands cost 4-8 and 12-16.
        return {
            "config": d,
            "mflops": 4.0 + 8 * d["band"] + (d["i"] % 5),
            "minival_top1": 0.5 + (0.1 if d["i"] % 7 == 3 else 0.0) + 0.001 * d["i"],
            "val_top1": 0.6 + 0.002 * d["i"] + self.offset,
            "val_top5": 0.9,
        }


def _evaluate(entry=None, count=3, seed=0):
    benches = {"pss": _Bench(0.02), "uniform": _Bench(0.0)}
    entry = entry or paired.seed_entry({"seeds": []}, seed)
    saves = []
    paired.evaluate_pair(entry, benches, count, seed, lambda: saves.append(1))
    return entry, benches, saves


# -- pairing -------------------------------------------------------------------------
def test_arms_may_differ_in_p_space_and_job_dir_only():
    pss = TrainConfig(job_dir="jobs/seed0/pss", seed=0)
    uniform = dataclasses.replace(pss, job_dir="jobs/seed0/uniform", p_space=(1.0, 1.0))
    paired.check_paired(pss.to_dict(), uniform.to_dict())
    other_seed = dataclasses.replace(uniform, seed=1)
    with pytest.raises(ValueError, match=r"differ in \['seed'\]"):
        paired.check_paired(pss.to_dict(), other_seed.to_dict())


# -- candidate sets ---------------------------------------------------------------
def test_choose_takes_the_best_minival_first_of_equals():
    rows = [{"minival_top1": 0.5, "i": 0}, {"minival_top1": 0.7, "i": 1},
            {"minival_top1": 0.7, "i": 2}]  # fmt: skip
    assert paired.choose(rows)["i"] == 1
    chosen = paired.candidate_set(rows)
    assert chosen["num_candidates"] == 3 and chosen["chosen"]["i"] == 1
    with pytest.raises(ValueError, match="No candidate"):
        paired.choose([])


def test_every_band_gets_three_sets_of_equal_size():
    entry, benches, saves = _evaluate(count=3)
    assert [b["name"] for b in entry["bands"]] == ["flops_5m", "flops_13m"]
    for band in entry["bands"]:
        for set_name in paired.SETS:
            assert band[set_name]["num_candidates"] == 3
        # Pools: their top 3 by score (ranks 0..2), chosen on minival (i = 3 is not among them).
        assert [c["pool_rank"] for c in band["pss"]["candidates"]] == [0, 1, 2]
        assert band["pss"]["chosen"]["config"]["i"] == 2
        random = [c["config"]["i"] for c in band["uniform_random"]["candidates"]]
        assert len(set(random)) == 3 and all(10 <= i < 50 for i in random)
    # 2 bands x 3 sets, then 2 bands x 3 cross evaluations, then the end.
    assert len(saves) == 6 + 6 + 1
    assert entry["arms"]["pss"]["pools_checkpoint"]["checkpoint"] == "epoch-0024"


def test_random_draws_are_seeded_by_the_pair():
    first, _, _ = _evaluate(seed=4)
    again, _, _ = _evaluate(seed=4)
    other, _, _ = _evaluate(seed=5)

    def draws(entry):
        return [[c["config"] for c in b["uniform_random"]["candidates"]] for b in entry["bands"]]

    assert draws(first) == draws(again) and draws(first) != draws(other)


def test_cross_evaluation_scores_each_arms_choice_in_the_other_supernet():
    entry, benches, _ = _evaluate()
    for band, cross in zip(entry["bands"], entry["cross_evaluation"]):
        assert cross["pss_in_uniform"]["config"] == band["pss"]["chosen"]["config"]
        assert (
            cross["uniform_random_in_pss"]["config"] == band["uniform_random"]["chosen"]["config"]
        )
        # The fake pss supernet is 2 points better for every subnet: all of it is weights.
        split = cross["decomposition"]["uniform_pool"]
        assert split["weights"] == pytest.approx(2.0) and split["selection"] == pytest.approx(0.0)
    assert paired.complete(entry)
    assert entry["matched_flops_difference"] == entry["matched_flops"][paired.PRIMARY]["mean"]


def test_an_interrupted_evaluation_resumes_with_what_is_missing():
    entry, _, _ = _evaluate()
    _, benches, saves = _evaluate(entry)  # complete: nothing measured again
    assert benches["pss"].measured == benches["uniform"].measured == []
    del entry["bands"][1]["uniform_pool"]
    del entry["cross_evaluation"][1]["uniform_pool_in_pss"]
    del entry["cross_summary"]
    _, benches, _ = _evaluate(entry)
    assert len(benches["uniform"].measured) == 3  # the one missing set
    assert len(benches["pss"].measured) == 1  # its chosen subnet in the pss supernet
    assert paired.complete(entry)


def test_arms_with_other_bands_are_refused():
    benches = {"pss": _Bench(0.0), "uniform": _Bench(0.0)}
    benches["uniform"].bands = lambda: [(0, 5.0, "flops_5m")]
    with pytest.raises(ValueError, match="other bands"):
        paired.evaluate_pair(paired.seed_entry({"seeds": []}, 0), benches, 3, 0, lambda: None)


def test_seed_entries_stay_in_order_and_commands_once():
    record = {"seeds": []}
    for seed in (2, 0, 1):
        paired.seed_entry(record, seed)
    assert [e["seed"] for e in record["seeds"]] == [0, 1, 2]
    entry = paired.seed_entry(record, 1)
    paired.add_command(entry, "python a")
    paired.add_command(entry, "python a")
    assert entry["commands"] == ["python a"] and len(record["seeds"]) == 3


# -- matched FLOPs ----------------------------------------------------------------
def test_log_interpolation_is_linear_in_log_mflops():
    curve = [(10.0, 70.0), (40.0, 80.0)]
    assert paired.log_interpolate(curve, 20.0) == pytest.approx(75.0)  # halfway in log
    assert paired.log_interpolate(curve, 10.0) == 70.0
    assert paired.log_interpolate(curve, 40.0) == 80.0
    with pytest.raises(ValueError, match="no extrapolation"):
        paired.log_interpolate(curve, 41.0)


def test_matched_flops_compares_at_the_targets_both_curves_span():
    # pss: 60 % at 5 M to 80 % at 20 M; other: 55 % at 2.5 M to 75 % at 40 M.
    # At 10 M: pss 70, other 55 + 20 * ln 4 / ln 16 = 65; at 20 M: 80 and 70.
    out = paired.matched_flops([(20.0, 80.0), (5.0, 60.0)], [(2.5, 55.0), (40.0, 75.0)],
                               [1.0, 10.0, 20.0, 50.0])  # fmt: skip
    assert out["points"] == [10.0, 20.0]
    assert out["pss"] == pytest.approx([70.0, 80.0])
    assert out["other"] == pytest.approx([65.0, 70.0])
    assert out["difference"] == pytest.approx([5.0, 10.0]) and out["mean"] == pytest.approx(7.5)
    assert out["span"] == [5.0, 20.0] and out["skipped"] == [1.0, 50.0]


def test_matched_flops_without_a_common_target_has_no_mean():
    out = paired.matched_flops([(5.0, 60.0), (6.0, 62.0)], [(7.0, 60.0), (9.0, 65.0)], [5, 13])
    assert out["points"] == [] and out["mean"] is None and out["span"] is None


def test_decomposition_splits_the_difference_exactly():
    band = {"pss": {"chosen": {"val_top1": 0.80}}, "uniform_random": {"chosen": {"val_top1": 0.76}}}
    cross = {"pss_in_uniform": {"val_top1": 0.78}, "uniform_random_in_pss": {"val_top1": 0.77}}
    out = paired.decomposition(band, cross, "uniform_random")
    # weights: ((80 - 78) + (77 - 76)) / 2; selection: ((80 - 77) + (78 - 76)) / 2.
    assert out == pytest.approx({"total": 4.0, "weights": 1.5, "selection": 2.5})
    assert math.isclose(out["weights"] + out["selection"], out["total"])
