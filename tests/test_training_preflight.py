"""pss_keras.training.preflight's latency tables in whole runs: a FLOPs + CPU
latency run and a run on a reference .pkl table (the job keeps its copy of
the table, a resume with another is refused), retained, exported and served."""

import os

import numpy as np
import pytest
from conftest import tiny_train_config
from latency_helpers import TINY, _write_table, synthetic_table

import pss_keras
from pss_keras.cost import flops, latency
from pss_keras.cost import reference_keys as RK
from pss_keras.cost import reference_tables as R
from pss_keras.cost import tables as tables_lib
from pss_keras.jobs import directory as jobs
from pss_keras.supernet import specs


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


def _covering_reference_entries(space, scale=1.0):
    """A reference table with a key for every block of every subnet of
    ``space`` (width scale 1), each with a latency that is a formula of its
    shape (``scale`` times it).

    A block's key depends on the resolution and on two adjacent stages'
    widths, so one multiplier per distinct width tuple (the representatives),
    every ordered pair (a, b) of them alternated over the stages at every
    resolution, covers every (c_in, c_out) of every block.
    """
    w_min, w_max = space.width_range
    steps = round((w_max - w_min) * 10**specs.MULT_DECIMALS)
    representatives = {}
    for i in range(steps + 1):
        m = round(w_min + i / 10**specs.MULT_DECIMALS, specs.MULT_DECIMALS)
        widths = tuple(RK.reference_channels(space.model_name, (m,) * space.num_stages))
        representatives.setdefault(widths, m)
    keys = set(RK.reference_keys(space.largest())) | set(RK.reference_keys(space.smallest()))
    for resolution in space.resolutions:
        for a in representatives.values():
            for b in representatives.values():
                mults = tuple(a if s % 2 == 0 else b for s in range(space.num_stages))
                keys.update(
                    RK.reference_keys(specs.SubnetConfig(space.model_name, resolution, mults))
                )
    return {key: scale * (1.0 + key.in_size**2 * (key.cin + key.cout) / 1000.0) for key in keys}


@pytest.mark.heavy
def test_run_trained_with_a_reference_pkl_table(tiny_image_folder, tmp_path, monkeypatch, caplog):
    import dataclasses
    import json
    import logging

    from conftest import tiny_train_config

    from pss_keras.export import saved_model as export
    from pss_keras.jobs import directory as jobs
    from pss_keras.training import driver as training

    space = specs.SearchSpace("mobilenet_v1", (32, 40), 8, (0.75, 1.0), 1.0, 10)
    pkl = _write_table(tmp_path, _covering_reference_entries(space), monkeypatch, "ref_cpu.pkl")
    table = pss_keras.load_latency_table(pkl)
    # Every random subnet of the space is keyed (a missing key would raise).
    r, m = space.random_arrays(5000, np.random.default_rng(0))
    values = np.sort(table.predict_us_np(space.model_name, r, m))
    lo, hi = values[len(values) // 10], values[-len(values) // 10]
    step = round((hi - lo) / 2, 1)
    targets = (round(lo, 1), round(lo + 2 * step, 1), step)

    base = tiny_train_config(tmp_path / "job", tiny_image_folder)
    config = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, image_size=40),
        width_scale=1.0,
        resolution_range=(32, 40),
        metric_types=("latency_cpu",),
        latency_targets=(targets,),
        lut_paths=(pkl,),
        epochs=1,
    )
    with caplog.at_level(logging.INFO):
        summary = training.train(config)
    # The run header names the table the map was built with.
    header = [r.getMessage() for r in caplog.records if r.getMessage().startswith("targets ")]
    assert len(header) == 1 and header[0].startswith("targets       latency_cpu: "), header
    assert f"map of 3,000 subnets ({table.describe()})" in header[0]
    retained = summary["retained"]
    assert retained and {entry["metric_type"] for entry in retained} == {"latency_cpu"}
    for entry in retained:
        subnet = specs.SubnetConfig.from_dict(entry["config"])
        # The retained record keeps 3 decimals of the table's prediction.
        assert entry["predicted_us"]["latency_cpu"] == round(table.predict_us(subnet), 3)
        assert entry["predicted_us"]["latency_cpu"] == pytest.approx(
            table.predict_us(subnet), abs=5e-4
        )
        assert abs(entry["predicted_us"]["latency_cpu"] - entry["target"]) <= step / 2 + 1e-6

    # The job's copy is JSON (no pickle to read back), the same table.
    copy = jobs.latency_table_path(config.job_dir, "latency_cpu")
    assert copy.endswith(os.path.join("latency_tables", "latency_cpu.json"))
    with open(copy) as f:
        assert json.load(f)["format"] == R.FORMAT
    saved = tables_lib.load_table(copy)
    assert type(saved) is R.ReferenceLatencyTable and saved.digest() == table.digest()
    assert saved.name == "ref_cpu"
    job_tables = jobs.Job(config.job_dir).latency_tables()
    assert list(job_tables) == ["latency_cpu"]
    assert type(job_tables["latency_cpu"]) is R.ReferenceLatencyTable
    assert job_tables["latency_cpu"].digest() == table.digest()

    # Another .pkl table for the same job is refused (before any data is read).
    other = _write_table(
        tmp_path, _covering_reference_entries(space, scale=1.5), monkeypatch, "other_cpu.pkl"
    )
    with pytest.raises(ValueError, match="was trained with another latency_cpu table"):
        training.train(dataclasses.replace(config, lut_paths=(other,)))
    assert tables_lib.load_table(copy).digest() == table.digest()  # the copy is untouched

    # Exported: every row names the reference table and its runtime.
    out = export.export(config.job_dir, str(tmp_path / "served"), latency_repeats=2)
    assert {row["name"] for row in out["tiers"]} == {entry["name"] for entry in retained}
    for row in out["tiers"]:
        assert row["latency_table"].startswith("PSS-Net reference table")
        assert row["latency_table"] == table.describe()
        assert row["latency_runtime"] == R.RUNTIME
        assert row["predicted_latency_ms"] == pytest.approx(
            row["predicted_us"]["latency_cpu"] / 1000.0
        )
