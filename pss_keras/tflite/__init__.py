"""A job's tiers as .tflite files for phones (float, fp16, int8, QAT int8).

converter          `convert`: every tier of a job, verified, with a manifest
model_conversion   one Keras model to .tflite bytes
qat                quantization-aware fine-tuning (tensorflow-model-optimization)
verification       each file's outputs against the served model
manifest           manifest.json: the files, their digests and accuracy
runner             the LiteRT interpreter, timed
chooser            choosing a tier on the device (LiteRT and NumPy only)
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "ConvertConfig": "converter",
    "convert": "converter",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
