"""pss_keras.cost.latency_measurement: a table built by timing every block
(and scripts/build_latency_lut.py), checked for structure, not figures."""

import json

import pytest

from pss_keras.cost import latency
from pss_keras.supernet import specs

# Fixed widths, two resolutions: a table of a few dozen entries, built in seconds.
FIXED = specs.SearchSpace("mobilenet_v1", (16, 24), 8, (1.0, 1.0), 0.25, 10)
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
