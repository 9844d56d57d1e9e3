"""pss_keras.cost.latency_measurement: a table built by timing every block
(and scripts/build_latency_lut.py), checked for structure, not figures."""

import json

import numpy as np
import pytest

from pss_keras.cost import latency
from pss_keras.supernet import specs

# Fixed widths, two resolutions: a table of a few dozen entries, built in seconds.
FIXED = specs.SearchSpace("mobilenet_v1", (16, 24), 8, (1.0, 1.0), 0.25, 10)
# MobileNetV2 with two widths in its repeated stages (residual blocks).
FIXED_V2 = specs.SearchSpace("mobilenet_v2", (16, 16), 8, (0.75, 1.0), 0.35, 10)


@pytest.mark.heavy
@pytest.mark.parametrize(
    "runtime, space, padding",
    # LiteRT on MobileNetV2 (residual repeats; symmetric padding: its pads
    # convert), TensorFlow on MobileNetV1.
    [("tensorflow", FIXED, "same"), ("tflite", FIXED_V2, "symmetric")],
    ids=["tensorflow-v1", "tflite-v2-symmetric"],
)
def test_build_table_measures_every_block_and_validates(runtime, space, padding):
    from pss_keras.cost import latency_measurement

    table = latency_measurement.build_table(
        space, runtime=runtime, num_classes=10, repeats=2, warmup=1, validate_subnets=1,
        calibration_subnets=2, progress=False, padding=padding,
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
    assert meta["padding"] == padding
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
        "--padding=symmetric",  # an imported official job's padding, recorded in the table
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["padding"] == "symmetric"
    assert latency.LatencyTable.load(str(out)).meta["padding"] == "symmetric"
    assert {"device", "min_subnet_us", "max_subnet_us", "validation"} <= set(data)
    assert {"mape", "spearman"} <= set(data["validation"])
    assert "mape" in result.stdout and "Wrote" in result.stdout
    bad = run_script("scripts/build_latency_lut.py", "--resolution_range=64,32", f"--output={out}")
    assert bad.returncode != 0 and "resolution_range=(64, 32)" in bad.stderr
    assert "Traceback" not in bad.stderr


def _blocks_of(model):
    import keras

    convs = [
        layer
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
    ]
    pads = [layer for layer in model.layers if isinstance(layer, keras.layers.ZeroPadding2D)]
    return convs, pads


@pytest.mark.parametrize("size", [7, 8])
def test_a_timed_block_pads_as_the_supernet(rng, size):
    """The timed block of a symmetric-padded space: a pad before its 3x3
    depthwise conv and 'valid' convs, computing the supernet layers'
    padding (`layers.pad_input`); a default block is unchanged ('same')."""
    import tensorflow as tf

    from pss_keras.cost import latency_measurement
    from pss_keras.supernet import blocks, layers

    block = blocks.plan("mobilenet_v1")[2]  # 3x3 depthwise at stride 2, 1x1 pointwise
    assert [(s.kind, s.kernel, s.stride) for s in block.layers] == [
        ("depthwise", 3, 2), ("conv", 1, 1),
    ]  # fmt: skip
    same = latency_measurement.block_model("mobilenet_v1", block, 8, 16, 10)
    convs, pads = _blocks_of(same)
    assert pads == [] and {c.padding for c in convs} == {"same"}
    model = latency_measurement.block_model("mobilenet_v1", block, 8, 16, 10, "symmetric")
    convs, pads = _blocks_of(model)
    assert len(pads) == 1 and {c.padding for c in convs} == {"valid"}
    (dw_kernel, dw_bias), (pw_kernel, pw_bias) = (c.get_weights() for c in convs)
    x = rng.uniform(-1, 1, (1, size, size, 8)).astype("float32")
    padded, padding = layers.pad_input(x, 3, "symmetric")
    y = tf.nn.relu6(tf.nn.depthwise_conv2d(padded, dw_kernel, (1, 2, 2, 1), padding) + dw_bias)
    y = tf.nn.relu6(tf.nn.conv2d(y, pw_kernel, 1, "VALID") + pw_bias)
    np.testing.assert_allclose(model(x).numpy(), y.numpy(), atol=1e-5, rtol=0)
    same.set_weights(model.get_weights())
    assert np.allclose(same(x).numpy(), y.numpy(), atol=1e-5, rtol=0) == (size % 2 == 1)
