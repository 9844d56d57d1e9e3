"""The manifest written beside the .tflite files, and its table.

Its readers (`pss_keras.tflite.chooser`, on a device that has LiteRT and
no TensorFlow) import this module for the file's name and digest:
TensorFlow and the verification code are loaded by `build` only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os

from pss_keras.utils.fileio import fsync_dir, fsync_tree

MANIFEST = "manifest.json"
PREPROCESSING = (
    "RGB pixel values 0..255 (not normalized: the model's first layer does the ImageNet "
    "mean/std): take the centre square covering 224/256 of the image's shorter side and resize "
    "it to resolution x resolution (bilinear). Integer input: q = round(pixel / scale + "
    "zero_point). Integer output: logit = (q - zero_point) * scale."
)


def file_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def build(job, config, pipelines, reference_name, rows) -> dict:
    """The manifest of one conversion (``config``: a `ConvertConfig`).

    Each row of ``rows`` (a tier) carries ``top1`` and ``top5``: the job's
    validation accuracy of the tier (float model, calibrated statistics),
    what an app weighs against the latency it measures
    (`pss_keras.tflite.chooser`); ``verification`` holds the file's own
    agreement with the served model.
    """
    import keras
    import tensorflow as tf

    from pss_keras.tflite.verification import TARGETS

    return {
        "job_dir": os.path.abspath(job.job_dir),
        "quantize": config.quantize,
        "mode": config.mode_name,
        "io_dtype": config.io_dtype if config.quantize == "int8" else "float32",
        "representative_images": (
            min(config.representative_images, pipelines.num_train_records)
            if config.quantize == "int8"
            else 0
        ),
        "qat_epochs": config.qat_epochs,
        "target": TARGETS[config.quantize],
        "reference": reference_name,
        "latency": {
            "batch": 1,
            "num_threads": config.num_threads,
            "repeats": config.latency_repeats,
            "statistic": "median",
            "runtime": f"ai-edge-litert {_version('ai-edge-litert')}",
        },
        # Where each tier's predicted_us was measured (the job's tables): a
        # float tflite table at the same thread count predicts latency_ms.
        "latency_tables": {m: t.describe() for m, t in job.latency_tables().items()},
        "preprocessing": PREPROCESSING,
        "class_names": job.class_names,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "tiers": rows,
    }


def move_in(tmp: str, output_dir: str, rows, manifest: dict) -> None:
    """Moves the files from ``tmp`` into ``output_dir``, manifest last.

    Everything that takes space (the files and the manifest) is written in
    ``tmp`` first, so a full disk stops the conversion before ``output_dir``
    changes; what follows are renames. The old manifest goes first and the
    new one comes last, so a reader that finds a manifest finds the files it
    describes.
    """
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    fsync_tree(tmp)  # the files are durable before the manifest names them
    manifest_path = os.path.join(output_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    for row in rows:
        os.replace(os.path.join(tmp, row["file"]), os.path.join(output_dir, row["file"]))
    os.replace(os.path.join(tmp, MANIFEST), manifest_path)
    fsync_dir(output_dir)


def format_manifest(manifest: dict) -> str:
    """The manifest as a table: tier, size, accuracy, agreement, latency.

    ``job top1`` is the job's validation top-1 of the tier (``-`` in a
    manifest written before rows carried it); ``top1`` and ``ref top1`` are
    the file's and the served model's on the verification images.
    """
    predicted = sorted({m for t in manifest["tiers"] for m in t.get("predicted_us") or {}})
    lines = [
        f"{'tier':<14}{'res':>5}{'MFLOPs':>8}{'KB':>9}{'in':>9}{'job top1':>9}{'top1':>7}"
        f"{'ref top1':>9}{'agree':>7}{'max|dlogit|':>12}{'SQNR dB':>8}{'ms':>8}"
        + "".join(f"{m + ' ms':>16}" for m in predicted)
    ]
    for t in manifest["tiers"]:
        v = t.get("verification")
        acc = (
            f"{v['top1']:>7.3f}{v['reference_top1']:>9.3f}{v['top1_agreement']:>7.3f}"
            f"{v['max_abs_logit_diff']:>12.2e}{v['logit_sqnr_db']:>8.1f}"
            if v
            else f"{'-':>7}{'-':>9}{'-':>7}{'-':>12}{'-':>8}"
        )
        lines.append(
            f"{t['name']:<14}{t['resolution']:>5}{t['mflops']:>8.2f}{t['size_bytes'] / 1024:>9.1f}"
            f"{t['input']['dtype']:>9}"
            + (f"{t['top1']:>9.3f}" if _measured(t.get("top1")) else f"{'-':>9}")
            + f"{acc}{t['latency_ms']:>8.3f}"
            + "".join(f"{t['predicted_us'][m] / 1000:>16.3f}" for m in predicted)
        )
    threads = manifest["latency"]["num_threads"]
    lines.append(
        f"latency: batch 1, median of {manifest['latency']['repeats']}, {threads} thread(s); "
        f"verified against {manifest['reference'] or 'nothing (verification skipped)'}"
    )
    for metric_type, where in sorted((manifest.get("latency_tables") or {}).items()):
        lines.append(f"{metric_type} ms: predicted by the run's table, {where}")
    return "\n".join(lines)


def _measured(top1) -> bool:
    """Whether a tier carries a top-1 (not a manifest from before rows had one, nor an
    imported checkpoint's tier without validation data: NaN)."""
    return isinstance(top1, (int, float)) and math.isfinite(top1)
