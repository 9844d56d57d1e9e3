"""Latency look-up tables: keys, the predictor, files, measurement, and a
multi-constraint (FLOPs + CPU latency) run retained, exported and served.

Measured latencies depend on the machine, so no test asserts one: tables
built here are checked for their structure and arithmetic, and the
training tests use a synthetic table (a formula of the block's shape)."""

import dataclasses
import json
import os
import random

import numpy as np
import pytest
from conftest import tiny_train_config

from pss_keras.cost import flops, latency
from pss_keras.jobs import directory as jobs
from pss_keras.jobs import tiers as tiers_lib
from pss_keras.supernet import blocks, specs
from pss_keras.training.pools import TargetGrid

TINY = specs.SearchSpace("mobilenet_v1", (16, 32), 8, (0.75, 1.0), 0.25, 10)
# Fixed widths, two resolutions: a table of a few dozen entries, built in seconds.
FIXED = specs.SearchSpace("mobilenet_v1", (16, 24), 8, (1.0, 1.0), 0.25, 10)


def synthetic_table(space, overhead=7.0, runtime="tflite"):
    """A table whose entry is a formula of the block's shape (deterministic)."""
    entries = {
        key: 1.0 + key[1] * key[1] * (key[2] + key[3]) / 1000.0 + 3 * key[0].stride
        for key in latency.table_keys(space)
    }
    device = {"cpu_model": "test CPU", "isa": ["AVX2"], "cores": 2, "threads": 1, "gpu": None}
    return latency.LatencyTable(
        latency.space_dict(space), entries, overhead, {"runtime": runtime, "device": device}
    )


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


def test_latency_tier_names():
    grid = TargetGrid("latency_cpu", 10_000, 31_000, 1000)
    assert grid.name(2) == "latency_cpu_12p0ms" and grid.num_targets == 22
    assert TargetGrid("latency_gpu", 70, 240, 10).name(0) == "latency_gpu_70us"
    assert TargetGrid("latency_cpu", 20, 60, 10).name(4) == "latency_cpu_60us"


# MobileNetV2 with two widths in its repeated stages (residual blocks).
FIXED_V2 = specs.SearchSpace("mobilenet_v2", (16, 16), 8, (0.75, 1.0), 0.35, 10)


@pytest.mark.heavy
@pytest.mark.parametrize(
    "runtime, space",
    # LiteRT on MobileNetV2 (residual repeats), TensorFlow on MobileNetV1.
    [("tensorflow", FIXED), ("tflite", FIXED_V2)],
    ids=["tensorflow-v1", "tflite-v2"],
)
def test_build_table_measures_every_block_and_validates(runtime, space):
    from pss_keras.cost import latency_measurement

    table = latency_measurement.build_table(
        space, runtime=runtime, num_classes=10, repeats=2, warmup=1, validate_subnets=1,
        calibration_subnets=2, progress=False,
    )  # fmt: skip
    overhead = table.meta["overhead"]
    assert overhead["calibration_subnets"] == 2 and overhead["call_us"] > 0
    assert table.overhead_us == pytest.approx(
        overhead["call_us"] + overhead["calibration_shortfall_us"], abs=2e-3
    )
    assert set(table.entries) == set(latency.table_keys(space))
    table.check_space(space)
    meta = table.meta
    assert meta["runtime"] == runtime and meta["device"]["threads"] == 1
    assert meta["device"]["cpu_model"] and isinstance(meta["device"]["isa"], list)
    assert meta["min_subnet_us"] == pytest.approx(table.predict_us(space.smallest()), abs=1e-3)
    assert meta["max_subnet_us"] == pytest.approx(table.predict_us(space.largest()), abs=1e-3)
    validation = meta["validation"]
    assert validation["subnets"] == 3 and len(validation["rows"]) == 3
    assert {"mape", "spearman"} <= set(validation)
    for row in validation["rows"]:
        config = specs.SubnetConfig.from_dict(row["config"])
        assert row["predicted_us"] == pytest.approx(table.predict_us(config), abs=1e-3)
        assert row["measured_us"] > 0
    assert "mape" in latency_measurement.format_validation(table)


@pytest.mark.heavy
def test_build_latency_lut_script_writes_the_table(tmp_path, run_script):
    out = tmp_path / "L.json"
    result = run_script(
        "scripts/build_latency_lut.py", "--width_scale=0.25", "--resolution_range=16,24",
        "--width_mult_range=1.0,1.0", "--runtime=tensorflow", "--repeats=1", "--warmup=0",
        "--validate_subnets=1", "--calibration_subnets=1", "--num_classes=10", f"--output={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {"device", "min_subnet_us", "max_subnet_us", "validation"} <= set(data)
    assert {"mape", "spearman"} <= set(data["validation"])
    assert "mape" in result.stdout and "Wrote" in result.stdout
    bad = run_script("scripts/build_latency_lut.py", "--resolution_range=64,32", f"--output={out}")
    assert bad.returncode != 0 and "resolution_range=(64, 32)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_config_metric_types_need_a_range_and_a_table_each(tmp_path):
    base = tiny_train_config(tmp_path / "j", "unused")
    ok = dataclasses.replace(
        base, metric_types=("flops", "latency_cpu"), latency_targets=((20.0, 60.0, 10.0),),
        lut_paths=("L.json",),
    )  # fmt: skip
    assert [m for m, _, _ in ok.target_ranges()] == ["flops", "latency_cpu"]
    assert ok.target_ranges()[1] == ("latency_cpu", (20.0, 60.0, 10.0), "L.json")
    for changes, message in [
        (dict(metric_types=("latency_cpu",)), "need one target range and one look-up table"),
        (dict(metric_types=("flops", "flops")), "at most once"),
        (dict(metric_types=("latency_npu",)), "at most once"),
        (
            dict(metric_types=("latency_cpu",), latency_targets=((60.0, 20.0, 10.0),),
                 lut_paths=("L.json",)),
            "latency_cpu target range 60..20 step 10 is empty",
        ),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(base, **changes).validate()
    # A run_config.json written before latency pools existed reads as FLOPs only.
    old = base.to_dict()
    for key in ("metric_types", "latency_targets", "lut_paths"):
        del old[key]
    assert base.__class__.from_dict(old).target_ranges()[0][0] == "flops"


def _latency_grid(table, space, count=3):
    """Targets inside the range the table predicts for random subnets."""
    r, m = space.random_arrays(5000, np.random.default_rng(0))
    values = np.sort(table.predict_us_np(space.model_name, r, m))
    lo, hi = values[len(values) // 10], values[-len(values) // 10]
    step = round((hi - lo) / (count - 1), 1)
    return (round(lo, 1), round(lo + (count - 1) * step, 1), step)


@pytest.mark.heavy
def test_flops_and_cpu_latency_run_retains_exports_and_serves_both(tiny_image_folder, tmp_path):
    from pss_keras import serving
    from pss_keras.export import saved_model as export
    from pss_keras.testing.model_server import ModelServer
    from pss_keras.training import driver as training

    table = synthetic_table(TINY)
    lut = str(tmp_path / "L.json")
    table.save(lut)
    targets = _latency_grid(table, TINY)
    config = tiny_train_config(
        tmp_path / "job", tiny_image_folder, metric_types=("flops", "latency_cpu"),
        latency_targets=(targets,), lut_paths=(lut,),
    )  # fmt: skip
    summary = training.train(config)
    retained = summary["retained"]
    types = {entry["metric_type"] for entry in retained}
    assert types == {"flops", "latency_cpu"}, [e["name"] for e in retained]
    for entry in retained:
        config_ = specs.SubnetConfig.from_dict(entry["config"])
        assert entry["predicted_us"]["latency_cpu"] == pytest.approx(table.predict_us(config_))
        if entry["metric_type"] == "latency_cpu":
            assert entry["name"].startswith("latency_cpu_") and entry["name"].endswith("us")
            assert abs(entry["predicted_us"]["latency_cpu"] - entry["target"]) <= targets[2] / 2
        else:
            assert abs(entry["mflops"] - entry["target"]) <= config.flops_targets[2] / 2 + 1e-9
            assert entry["mflops"] == pytest.approx(flops.count_mflops(config_, 10, 0.25), abs=1e-9)
    # The job keeps its own copy of the table; a resume with another one is refused.
    copy = jobs.latency_table_path(config.job_dir, "latency_cpu")
    assert latency.LatencyTable.load(copy).digest() == table.digest()
    synthetic_table(TINY, overhead=9.0).save(lut)
    with pytest.raises(ValueError, match="was trained with another latency_cpu table"):
        training.train(config)
    # Exported with every tier's prediction; the client lists both kinds.
    out = export.export(config.job_dir, str(tmp_path / "served"), latency_repeats=2)
    rows = {row["name"]: row for row in out["tiers"]}
    assert {r["metric_type"] for r in rows.values()} == {"flops", "latency_cpu"}
    assert all(
        r["latency_table"] == "tflite on test CPU (AVX2), 1 thread(s)" for r in rows.values()
    )
    server = ModelServer(out["path"], "pss").start()
    try:
        client = serving.connect(server.grpc_address, "pss", "grpc", timeout=30)
        tiers = client.tiers()
        assert sorted(t.name for t in tiers) == sorted(rows)
        for t in tiers:
            assert t.predicted_latency_ms == pytest.approx(
                rows[t.name]["predicted_latency_ms"], rel=1e-6
            )
        # A LiteRT table does not predict the serving path: auto uses the
        # measured latency; predicted is what was asked for.
        slowest = max(t.predicted_latency_ms for t in tiers)
        chosen = client.choose_tier(latency_budget_ms=slowest, latency_source="predicted")
        assert chosen.predicted_latency_ms <= slowest * (1 + 1e-6)
        assert serving.tier_latency_ms(tiers[0], "auto") == tiers[0].latency_ms
        client.close()
    finally:
        server.stop()


def test_served_tiers_without_prediction_columns_still_load():
    """An export from before latency tables: the columns default."""
    outputs = {
        "names": [b"flops_1m"], "metric_types": [b"flops"], "targets": [1.0], "mflops": [1.0],
        "params": [10], "resolutions": [32], "top1": [0.5], "latency_ms": [2.0],
    }  # fmt: skip
    (tier,) = tiers_lib.served_tiers_from_outputs(outputs)
    assert tier.predicted_latency_ms is None and tier.latency_table == ""
    from pss_keras import serving

    assert serving.tier_latency_ms(tier, "auto") == 2.0
    with pytest.raises(serving.ServingError, match="has no predicted latency"):
        serving.tier_latency_ms(tier, "predicted")


def test_train_script_refuses_mismatched_latency_flags(tmp_path, run_script):
    common = [
        "scripts/train.py",
        f"--job_dir={tmp_path / 'j'}",
        "--infer_metric_types=flops,latency_cpu",
    ]
    result = run_script(*common, "--lut_dirs=None", "--infer_metric_target_range_starts=1,2",
                        "--infer_metric_target_range_stops=2,3", "--infer_metric_target_steps=1,1")  # fmt: skip
    assert result.returncode != 0 and "--lut_dirs needs one entry per metric type" in result.stderr
    result = run_script(*common, f"--lut_dirs=None,{tmp_path / 'none.json'}",
                        "--infer_metric_target_range_starts=1,2",
                        "--infer_metric_target_range_stops=2,3", "--infer_metric_target_steps=1,1")  # fmt: skip
    assert result.returncode != 0 and "none.json does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.path.exists(tmp_path / "j") is False  # refused before anything is written
