"""pss_keras.tflite.model_conversion: fp16 and full-integer (int8) files."""

import pytest
from tflite_helpers import _convert, _dtypes


def test_fp16_halves_the_weights(trained_job, float_manifest, tmp_path):
    _, floats = float_manifest
    name = floats["tiers"][-1]["name"]
    manifest = _convert(trained_job, tmp_path, quantize="fp16", tiers=[name])
    tier = manifest["tiers"][0]
    assert manifest["mode"] == "fp16" and tier["input"]["dtype"] == "float32"
    assert "float16" in _dtypes(tmp_path / tier["file"])
    assert tier["size_bytes"] < 0.6 * floats["tiers"][-1]["size_bytes"]
    v = tier["verification"]
    # float16 weights (11 significant bits): logit SQNR measured 40.2 dB on
    # this barely trained net (whose logits barely differ between classes),
    # vs 11.4 dB for int8 below. The 0.99 agreement target is reported
    # (meets_target), not asserted: on 60 images of a near-chance net one
    # near-tied image is already 1.7%, and which images are near ties
    # depends on the CPU that trained it.
    assert v["logit_sqnr_db"] >= 30.0 and v["max_rel_logit_diff"] < 0.1, v


@pytest.mark.parametrize("io_dtype", ["int8", "uint8", "float32"])
def test_int8_is_integer_and_agrees(trained_job, float_manifest, tmp_path, io_dtype):
    _, floats = float_manifest
    name = floats["tiers"][0]["name"]
    manifest = _convert(
        trained_job, tmp_path, quantize="int8", io_dtype=io_dtype, representative_images=64,
        tiers=[name],
    )  # fmt: skip
    tier = manifest["tiers"][0]
    assert manifest["mode"] == "int8" and manifest["representative_images"] == 64
    assert tier["input"]["dtype"] == io_dtype and tier["output"]["dtype"] == io_dtype
    dtypes = _dtypes(tmp_path / tier["file"])
    # Every op runs in integers: int8 activations and weights, int32 biases;
    # float tensors only at a float32 interface.
    inner = {"int8", "int32"} | ({"uint8"} if io_dtype == "uint8" else set())
    if io_dtype == "float32":
        assert dtypes == inner | {"float32"}
    else:
        assert dtypes == inner
    if io_dtype == "uint8":  # camera pixels as they are
        assert tier["input"]["zero_point"] == 0
        assert tier["input"]["scale"] == pytest.approx(1.0, abs=0.01)
    assert tier["size_bytes"] < 0.5 * floats["tiers"][0]["size_bytes"]
    v = tier["verification"]
    # The tiny test net is near chance after 3 epochs (near-tied logits), so
    # int8 rounding flips argmaxes and agreement says little (0.75 here).
    # The logits' signal-to-quantization-noise ratio does not hinge on ties:
    # measured 11.4 dB here, 14.8 dB since depthwise kernels start at the
    # reference's scale (the trained quickstart tiers: 30-33 dB); feeding
    # normalized values instead of pixels gives < 0 dB. The 0.98 target is
    # reported, not asserted (test_train_script.py asserts 20 dB on the
    # quickstart). The largest logit error stays below the largest reference
    # logit (measured 0.51 of it; the ratio moves with the trained weights,
    # so only its bound is asserted).
    assert v["logit_sqnr_db"] >= 5.0, v
    assert v["max_rel_logit_diff"] < 1.0, v
