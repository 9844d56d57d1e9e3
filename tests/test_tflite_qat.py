"""pss_keras.tflite.qat: quantization-aware fine-tuning before an int8 conversion."""

import os

import numpy as np
import pytest
from tflite_helpers import _convert, _dtypes


@pytest.mark.heavy
def test_quantization_aware_training(trained_job, float_manifest, tmp_path):
    _, floats = float_manifest
    name = floats["tiers"][-1]["name"]
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    manifest = _convert(
        trained_job, tmp_path, quantize="int8", qat_epochs=1, representative_images=32,
        io_dtype="uint8", tiers=[name],
    )  # fmt: skip
    # tfmot's import sets TF_USE_LEGACY_KERAS; the QAT module puts it back.
    assert os.environ.get("TF_USE_LEGACY_KERAS") == before
    tier = manifest["tiers"][0]
    assert manifest["mode"] == "qat_int8" and manifest["qat_epochs"] == 1
    assert tier["qat"]["epochs"] == 1 and tier["qat"]["steps"] >= 1
    # A diverging fine-tuning (unfrozen normalization, [-6, 6] input range)
    # reaches KL > 1.5 within an epoch; a working one stays near 0 (the
    # quickstart tiers: 0.0005-0.0015).
    (kl,) = tier["qat"]["epoch_kl"]
    assert np.isfinite(kl) and kl < 0.5, kl
    assert _dtypes(tmp_path / tier["file"]) == {"int8", "int32", "uint8"}
    # Trained on pixels clipped to [0, 255]: the input takes camera pixels as is.
    assert tier["input"]["zero_point"] == 0
    assert tier["input"]["scale"] == pytest.approx(1.0, abs=0.01)
    v = tier["verification"]
    assert v["examples"] == 60 and 0.0 <= v["top1_agreement"] <= 1.0
