"""pss_keras.tflite.runner: the LiteRT interpreter on batches."""

import numpy as np

from pss_keras.tflite import runner as tflite


def test_runner_batches_equal_single_images(float_manifest, rng):
    out, manifest = float_manifest
    tier = manifest["tiers"][0]
    runner = tflite.TFLiteRunner(model_path=str(out / tier["file"]))
    r = tier["resolution"]
    x = rng.uniform(0, 255, (3, r, r, 3)).astype("float32")
    batched = runner(x)
    singles = np.concatenate([runner(x[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(batched, singles, atol=1e-5, rtol=0)
    assert batched.shape == (3, len(manifest["class_names"]))
