"""Verification of .tflite files against the served model, on validation images.

Per tier: top-1 of both, top-1 agreement, max |logit difference| (absolute
and relative to the largest reference logit), the logits' SQNR, the largest
reference margin among changed predictions, and whether the mode's target
is met.
"""

from __future__ import annotations

import functools
import os

import keras
import numpy as np
import tensorflow as tf

from pss_keras.data import preprocessing
from pss_keras.export import saved_model as export_lib
from pss_keras.supernet.model import resize_to

# What the verification must show, per quantization mode: float32 a relative
# logit difference below the bound, fp16 and int8 a top-1 agreement of at
# least it. `TARGETS` (the manifest's text) and `_meets` both read this.
_BOUNDS = {"none": "1e-4", "fp16": "0.99", "int8": "0.98"}  # as the manifest prints them
TARGETS = {
    mode: (
        f"max |logit difference| < {bound} x max |logit| (relative)"
        if mode == "none"
        else f"top-1 agreement >= {bound}"
    )
    for mode, bound in _BOUNDS.items()
}


def _logits_of(images, fn):
    return fn(images)["logits"]


def reference_fns(job, entries, saved_model: str | None):
    """``({tier: fn(uint8 images) -> logits}, description)``."""
    if saved_model:
        if not os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
            raise ValueError(
                f"{saved_model} is not a SavedModel directory; pass a version directory written "
                "by scripts/export.py (e.g. saved_models/quickstart/1)."
            )
        loaded = tf.saved_model.load(saved_model)
        missing = [t.name for t in entries if t.name not in loaded.signatures]
        if missing:
            raise ValueError(
                f"{saved_model} has no signature for tier(s) {missing} (it has "
                f"{sorted(loaded.signatures)}); export the same job or pass other --tiers."
            )
        fns = {
            t.name: (lambda sig: lambda images: sig(images=images)["logits"])(
                loaded.signatures[t.name]
            )
            for t in entries
        }
        return fns, f"SavedModel {saved_model}"
    # The served computation without materializing every tier's kernels
    # (shared_lowmem folds per call: the same numbers as shared).
    shared = export_lib.tier_functions(job, entries, "shared_lowmem")
    spec = [tf.TensorSpec([None, None, None, 3], tf.uint8)]
    # One tf.function per tier, each traced once. functools.partial gives each
    # its own identity: TF keys its "excessive retracing" warning on the
    # wrapped function's code, which a lambda would share across tiers.
    fns = {
        name: tf.function(
            functools.partial(_logits_of, fn=fn), input_signature=spec, jit_compile=False
        )
        for name, fn in shared.items()
    }
    return fns, "the tier's SavedModel signature (shared mode), computed in process"


def _verification_batches(pipelines, count: int, batch_size: int = 64):
    """Raw uint8 validation batches (consecutive images of one shape), labels."""
    images, labels, shape = [], [], None
    for image, label in pipelines.validation_examples().take(count):
        image = preprocessing.to_rgb(image).numpy().astype(np.uint8)
        if images and (image.shape != shape or len(images) == batch_size):
            yield np.stack(images), np.array(labels)
            images, labels = [], []
        shape = image.shape
        images.append(image)
        labels.append(int(label))
    if images:
        yield np.stack(images), np.array(labels)


def verify(job, entries, runners, references, pipelines, config, progress) -> dict:
    """Agreement of each .tflite with its reference on validation images."""
    sums = {t.name: _Sums() for t in entries}
    resolutions = {t.name: t.resolution for t in entries}
    total = min(config.verify_images, pipelines.source.num_validation)
    bar = keras.utils.Progbar(total, verbose=1 if progress else 0)
    seen = 0
    for images, labels in _verification_batches(pipelines, total):
        raw = tf.constant(images)
        pixels = preprocessing.preprocess(raw, job.image_size, normalized=False)
        for name, s in sums.items():
            reference = references[name](raw).numpy()
            logits = runners[name](resize_to(pixels, resolutions[name]).numpy())
            s.add(logits, reference, labels)
        seen += len(labels)
        bar.update(seen)
    if not seen:
        raise ValueError("The job's validation set is empty: nothing to verify against.")
    return {name: s.summary(config.quantize) for name, s in sums.items()}


class _Sums:
    """Running sums of one tier's comparison with its reference."""

    def __init__(self):
        self.examples = self.agree = self.correct = self.ref_correct = 0
        self.diff = self.ref_max = self.err_sq = self.signal_sq = self.flip_margin = 0.0

    def add(self, logits, reference, labels) -> None:
        top, ref_top = logits.argmax(-1), reference.argmax(-1)
        self.examples += len(labels)
        self.agree += int((top == ref_top).sum())
        self.correct += int((top == labels).sum())
        self.ref_correct += int((ref_top == labels).sum())
        self.diff = max(self.diff, float(np.abs(logits - reference).max()))
        self.ref_max = max(self.ref_max, float(np.abs(reference).max()))
        # Logit signal-to-noise: the reference's logits around their
        # per-example mean vs the conversion's error.
        centred = reference - reference.mean(-1, keepdims=True)
        self.signal_sq += float(np.square(centred).sum())
        self.err_sq += float(np.square(logits - reference).sum())
        flipped = top != ref_top
        if flipped.any():
            ordered = np.sort(reference[flipped], -1)
            margin = float((ordered[:, -1] - ordered[:, -2]).max())
            self.flip_margin = max(self.flip_margin, margin)

    def summary(self, quantize: str) -> dict:
        n = self.examples
        agreement = self.agree / n
        relative = self.diff / max(self.ref_max, 1e-12)
        return {
            "examples": n,
            "top1": self.correct / n,
            "reference_top1": self.ref_correct / n,
            "top1_agreement": agreement,
            "max_abs_logit_diff": self.diff,
            "max_rel_logit_diff": relative,
            "logit_sqnr_db": _sqnr_db(self.signal_sq, self.err_sq),
            "max_flipped_margin": self.flip_margin,
            "meets_target": bool(_meets(quantize, agreement, relative)),
        }


def _meets(quantize: str, agreement: float, relative_diff: float) -> bool:
    """Whether the mode's target (`TARGETS`) is met."""
    if quantize == "none":
        return relative_diff < float(_BOUNDS["none"])
    return agreement >= float(_BOUNDS[quantize])


def _sqnr_db(signal_sq: float, err_sq: float) -> float:
    """10 log10(signal / error energy), capped at 200 dB for exact copies."""
    if err_sq <= 0.0:
        return 200.0
    return float(min(200.0, 10.0 * np.log10(max(signal_sq, 1e-30) / err_sq)))
