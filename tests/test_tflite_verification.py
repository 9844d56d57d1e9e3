"""pss_keras.tflite.verification: the files checked against an exported SavedModel."""

import pytest
from tflite_helpers import _convert

from pss_keras.export import saved_model as export


@pytest.mark.heavy
def test_verifies_against_an_exported_saved_model(trained_job, float_manifest, tmp_path):
    config, _ = trained_job
    _, floats = float_manifest
    saved = export.export(config.job_dir, str(tmp_path / "serving"), latency_repeats=1)
    manifest = _convert(trained_job, tmp_path / "tfl", saved_model=saved["path"])
    assert manifest["reference"] == f"SavedModel {saved['path']}"
    for tier, in_process in zip(manifest["tiers"], floats["tiers"]):
        # The loaded signature computes what the in-process reference does.
        v, w = tier["verification"], in_process["verification"]
        assert v["top1_agreement"] == w["top1_agreement"] and v["top1"] == w["top1"]
        assert v["max_abs_logit_diff"] == pytest.approx(w["max_abs_logit_diff"], abs=1e-5)
        assert tier["sha256"] == in_process["sha256"]  # same conversion, same bytes
    with pytest.raises(ValueError, match="has no signature for tier"):
        only = export.export(
            config.job_dir, str(tmp_path / "one"), tiers=[floats["tiers"][0]["name"]],
            latency_repeats=1,
        )  # fmt: skip
        _convert(trained_job, tmp_path / "x", saved_model=only["path"])
    with pytest.raises(ValueError, match="is not a SavedModel directory"):
        _convert(trained_job, tmp_path / "x", saved_model=str(tmp_path))
