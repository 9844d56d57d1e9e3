"""Keras subnet models to .tflite flatbuffers (float32, fp16, int8)."""

from __future__ import annotations

import shutil
import tempfile

import keras
import tensorflow as tf

QUANTIZE_MODES = ("none", "fp16", "int8")
IO_DTYPES = ("float32", "int8", "uint8")


def _logits_endpoint(model):
    return lambda images: {"logits": model(images, training=False)}


def write_conversion_saved_model(endpoints: dict, path: str) -> None:
    """A SavedModel for `tf.lite.TFLiteConverter`: one signature per entry of
    ``endpoints`` (``{signature name: (model, resolution)}``), each
    ``images [None, r, r, 3] float32 -> {"logits"}``, from Keras 3 models
    (`pss_keras.tflite.qat.write_saved_model` writes the tf_keras QAT model)."""
    specs = {
        name: tf.TensorSpec([None, r, r, 3], tf.float32, name="images")
        for name, (_, r) in endpoints.items()
    }
    archive = keras.export.ExportArchive()
    for name, (model, _) in endpoints.items():
        archive.track(model)
        archive.add_endpoint(name, _logits_endpoint(model), input_signature=[specs[name]])
    archive.write_out(path, verbose=False)


def convert_model(
    model,
    resolution: int,
    quantize: str = "none",
    representative=None,
    io_dtype="float32",
    writer=None,
) -> bytes:
    """Converts a subnet model (Keras 3 or, after QAT, tf_keras) to TFLite.

    Args:
        model: pixel-input model [b, resolution, resolution, 3] -> logits.
        resolution: its input size.
        quantize: ``none``, ``fp16`` or ``int8``.
        representative: for int8: a callable returning an iterable of
            float32 [1, r, r, 3] pixel arrays.
        io_dtype: int8 models' input/output type.
        writer: writes ``{name: (model, resolution)}`` as a SavedModel
            (default `write_conversion_saved_model`, Keras 3 models;
            `pss_keras.tflite.qat.write_saved_model` for the tf_keras QAT model).

    Returns:
        The .tflite flatbuffer.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r} is unknown; use one of {QUANTIZE_MODES}.")
    if quantize == "int8" and representative is None:
        raise ValueError("int8 quantization needs representative data.")
    tmp = tempfile.mkdtemp(prefix="pss_tflite_")
    try:
        (writer or write_conversion_saved_model)({"serving_default": (model, resolution)}, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantize == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([x] for x in representative())
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.as_dtype(io_dtype)
            converter.inference_output_type = tf.as_dtype(io_dtype)
        return converter.convert()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
