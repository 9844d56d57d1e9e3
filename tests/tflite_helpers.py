"""Helpers shared by the tests of pss_keras.tflite (tests/test_tflite_*.py);
their fixture float_manifest is at the end of conftest.py."""

import numpy as np

from pss_keras.tflite import converter as tflite


def _convert(trained_job, out, **kwargs):
    config, _ = trained_job
    tiers = kwargs.pop("tiers", None)
    settings = dict(latency_repeats=3)
    settings.update(kwargs)
    return tflite.convert(
        config.job_dir, str(out), tflite.ConvertConfig(**settings), tiers, progress=False
    )


def _dtypes(path):
    runner = tflite.TFLiteRunner(model_path=str(path))
    return {np.dtype(t["dtype"]).name for t in runner.interpreter.get_tensor_details()}
