"""Retained subnets to TFLite for mobile, verified against the served model.

Each chosen tier of a trained job becomes ``<output_dir>/<tier>.tflite``:
its standalone subnet (`extract_subnet`: fixed input size = the subnet's
resolution, BN folded) with the ImageNet normalization as its first layer,
so the app feeds RGB pixel values:

    images [batch, R, R, 3]: float32 in [0, 255] (or uint8 / int8 with the
        input tensor's scale and zero point for integer I/O), the centre
        square covering 224/256 of the shorter side, resized to R x R
    -> logits [batch, classes] (float32, or quantized for integer I/O)

Quantization modes:
* ``none``: float32.
* ``fp16``: float16 weights (half the size; computed in float32 on CPU).
* ``int8``: full-integer post-training quantization, calibrated on a
  representative set of training images (evaluation transform); with
  ``qat_epochs > 0`` the subnet is first fine-tuned quantization-aware
  (`pss_keras.tflite.qat`) and then converted.

Every file is verified with the LiteRT interpreter on validation images
against the SavedModel signature of the same tier (a directory written by
``scripts/export.py``, or the same computation in process): top-1 agreement,
max |logit difference|, accuracy, and batch-1 latency (median of repeated
runs, given number of threads). ``manifest.json`` records all of it.

A multi-signature .tflite would not share weights between its signatures
(each subgraph holds its own constants): on the quickstart job one file with
4 signatures is 0.8% smaller than the 4 files together
(``benchmarks/benchmark_tflite.py --multi_signature``), so one file per tier is
what is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from pss_keras.data import preprocessing
from pss_keras.data.decoding import BadImageError, DatasetError
from pss_keras.data.pipelines import Pipelines
from pss_keras.jobs import directory as jobs
from pss_keras.supernet import extraction
from pss_keras.supernet.model import resize_to
from pss_keras.tflite import manifest as tflite_manifest
from pss_keras.tflite import qat
from pss_keras.tflite import verification as tflite_verification
from pss_keras.tflite.model_conversion import IO_DTYPES, QUANTIZE_MODES, convert_model
from pss_keras.tflite.runner import TFLiteRunner, tensor_info
from pss_keras.utils.fileio import disk_full_guard


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """What `convert` does.

    Attributes:
        quantize: ``none`` (float32), ``fp16`` or ``int8``.
        io_dtype: input/output type of int8 models: ``float32`` (quantize /
            dequantize inside), ``uint8`` (camera pixels as they are:
            scale ~1, zero point 0) or ``int8``. Float modes take float32.
        representative_images: training images calibrating int8 ranges.
        qat_epochs: quantization-aware fine-tuning epochs before an int8
            conversion (0: post-training quantization only).
        qat_lr: peak learning rate of the QAT cosine schedule.
        verify_images: validation images for the agreement check (0 skips
            verification, e.g. without the dataset on this machine).
        num_threads: interpreter threads for the latency measurement.
        latency_repeats: batch-1 runs whose median is the recorded latency.
        saved_model: a SavedModel version directory written by
            ``scripts/export.py`` to verify against; ``None`` computes the
            same signature (shared mode) in process.
        data_dir: overrides the job's dataset location.
    """

    quantize: str = "none"
    io_dtype: str = "float32"
    representative_images: int = 200
    qat_epochs: int = 0
    qat_lr: float = 0.001
    verify_images: int = 1000
    num_threads: int = 1
    latency_repeats: int = 50
    saved_model: str | None = None
    data_dir: str | None = None

    def validate(self) -> None:
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize={self.quantize!r} is unknown; use one of {QUANTIZE_MODES}.")
        if self.io_dtype not in IO_DTYPES:
            raise ValueError(f"io_dtype={self.io_dtype!r} is unknown; use one of {IO_DTYPES}.")
        if self.io_dtype != "float32" and self.quantize != "int8":
            raise ValueError(
                f"io_dtype={self.io_dtype} needs quantize=int8 (a {self.quantize} model has "
                "float32 input and output)."
            )
        if self.qat_epochs < 0:
            raise ValueError(f"qat_epochs must be >= 0, got {self.qat_epochs}.")
        if self.qat_epochs and self.quantize != "int8":
            raise ValueError(
                f"qat_epochs={self.qat_epochs} needs quantize=int8 (quantization-aware training "
                "prepares an int8 model)."
            )
        if self.qat_epochs and not self.qat_lr > 0:
            raise ValueError(f"qat_lr must be positive, got {self.qat_lr}.")
        if self.quantize == "int8" and self.representative_images < 1:
            raise ValueError(
                "int8 quantization needs representative_images >= 1 (training images that "
                "calibrate the int8 ranges)."
            )
        for name in ("verify_images", "latency_repeats"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}.")

    @property
    def mode_name(self) -> str:
        """``float32``, ``fp16``, ``int8`` or ``qat_int8`` (default folder name)."""
        if self.quantize == "none":
            return "float32"
        return "qat_int8" if self.qat_epochs else self.quantize


def convert(
    job_dir: str,
    output_dir: str,
    config: ConvertConfig | None = None,
    tiers=None,
    progress: bool = True,
) -> dict:
    """Converts retained tiers of a job to .tflite files and a manifest.

    Args:
        job_dir: a finished training job.
        output_dir: where ``<tier>.tflite`` and ``manifest.json`` go. Files
            are written to a temporary directory first and moved in; the old
            manifest is removed before and the new one moved in last, so a
            reader that finds a manifest finds the files it describes. A
            failure (a full disk too) leaves ``output_dir`` as it was.
        config: the `ConvertConfig`.
        tiers: tier names (default: every retained tier).
        progress: progress bars.

    Returns:
        The manifest (also written to ``<output_dir>/manifest.json``).

    Raises:
        ValueError: for a missing job, unknown tier, bad settings, missing
            data for int8 or verification, or a bad ``saved_model``.
        DiskFullError: if the disk fills up (one line naming what to free).
    """
    config = config or ConvertConfig()
    config.validate()
    job = jobs.Job(job_dir)
    entries = job.select(tiers)
    pipelines = _pipelines(job, config)
    references, reference_name = (None, None)
    if config.verify_images > 0:
        references, reference_name = tflite_verification.reference_fns(
            job, entries, config.saved_model
        )
    created = not os.path.isdir(output_dir)
    left = f"{output_dir} was not created" if created else f"nothing in {output_dir} was changed"
    with disk_full_guard(output_dir, left):
        # The temporary folder lives inside output_dir so that the final moves
        # are renames on one file system.
        os.makedirs(output_dir, exist_ok=True)
        tmp = None
        try:
            tmp = tempfile.mkdtemp(prefix=".tmp-tflite-", dir=output_dir)
            # A bad image met by calibration, QAT or verification: one line naming it.
            with pipelines.bad_image_errors() if pipelines else contextlib.nullcontext():
                rows, runners = _convert_tiers(job, entries, config, pipelines, tmp, progress)
                if references is not None:
                    accuracy = tflite_verification.verify(
                        job, entries, runners, references, pipelines, config, progress
                    )
                    for row in rows:
                        row["verification"] = accuracy[row["name"]]
            _measure_latency(rows, runners, config.latency_repeats)
            manifest = tflite_manifest.build(job, config, pipelines, reference_name, rows)
            tflite_manifest.move_in(tmp, output_dir, rows, manifest)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if created and not os.listdir(output_dir):  # "was not created" stays true
                os.rmdir(output_dir)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _pipelines(job, config: ConvertConfig):
    """The job's data pipelines, when int8 calibration or verification needs them."""
    if not (config.quantize == "int8" or config.verify_images > 0):
        return None
    data_config = job.config.data
    if config.data_dir:
        data_config = dataclasses.replace(data_config, data_dir=config.data_dir)
    try:
        return Pipelines(
            data_config,
            skip_hint=jobs.skip_bad_images_hint(job.job_dir),
            split=jobs.read_split(job.job_dir),
        )
    except BadImageError:
        raise  # the dataset is there: the message names the files and says what to do
    except DatasetError as e:
        why = (
            "int8 quantization needs training images for its representative set"
            if config.quantize == "int8"
            else "verification needs validation images (--verify_images=0 skips it)"
        )
        raise ValueError(f"{why}, but the job's dataset is unavailable: {e}") from e


def _convert_tiers(job, entries, config, pipelines, folder, progress):
    """Converts each tier into ``folder``; returns (manifest rows, runners)."""
    runners, rows = {}, []
    bar = keras.utils.Progbar(len(entries), verbose=1 if progress else 0)
    for i, entry in enumerate(entries):
        row = _convert_tier(job, entry, config, pipelines, progress)
        with open(os.path.join(folder, row["file"]), "wb") as f:
            f.write(row.pop("content"))
        runner = TFLiteRunner(
            model_path=os.path.join(folder, row["file"]), num_threads=config.num_threads
        )
        row["input"] = tensor_info(runner.input)
        row["output"] = tensor_info(runner.output)
        runners[entry.name] = runner
        rows.append(row)
        bar.update(i + 1)
    return rows, runners


def _measure_latency(rows, runners, repeats: int) -> None:
    """Batch-1 median latency of each file, on the same random pixels per size."""
    sample = None
    for row in rows:
        r = row["resolution"]
        if sample is None or sample.shape[1] != r:
            sample = np.random.default_rng(0).uniform(0, 255, (1, r, r, 3)).astype(np.float32)
        row["latency_ms"] = runners[row["name"]].latency_ms(sample, repeats)


def _pixel_batches(dataset, resolution: int):
    """Normalized images at the job's image size -> pixels at ``resolution``.

    Clipped to [0, 255]: training augmentation (PCA lighting) leaves the
    pixel range slightly, and QAT must learn the input range a camera gives.
    """

    def to_pixels(images, labels):
        pixels = tf.clip_by_value(preprocessing.to_pixels(images), 0.0, 255.0)
        return resize_to(pixels, resolution), labels

    return dataset.map(to_pixels, num_parallel_calls=tf.data.AUTOTUNE)


def _convert_tier(job, entry, config: ConvertConfig, pipelines, progress) -> dict:
    subnet, stats = job.tier(entry)
    r = subnet.resolution
    representative = None
    if config.quantize == "int8":
        calibration = _pixel_batches(
            pipelines.representative(config.representative_images).batch(1), r
        )

        def representative():
            for images, _ in calibration:
                yield images.numpy()

    qat_info = None
    if config.qat_epochs:
        model, qat_info = qat.quantization_aware_subnet(
            job.supernet,
            subnet,
            stats,
            lambda epoch: _pixel_batches(pipelines.train_epoch(epoch), r),
            _pixel_batches(pipelines.representative(config.representative_images).batch(32), r),
            pipelines.steps_per_epoch,
            config.qat_epochs,
            config.qat_lr,
            progress,
            name=entry.name,
        )
    else:
        model = extraction.extract_subnet(
            job.supernet, subnet, stats, fold_bn=True, pixel_input=True, name=entry.name
        )
    writer = qat.write_saved_model if config.qat_epochs else None
    content = convert_model(model, r, config.quantize, representative, config.io_dtype, writer)
    return {
        "name": entry.name,
        "file": f"{entry.name}.tflite",
        "resolution": r,
        "mflops": float(entry.mflops),
        "params": int(entry.params),
        # The job's validation accuracy of the tier: what an app weighs
        # against the latency it measures (tflite_chooser).
        "top1": float(entry.top1),
        "top5": float(entry.top5),
        "size_bytes": len(content),
        "sha256": tflite_manifest.file_digest(content),
        "quantization": config.mode_name,
        "qat": qat_info,
        "config": entry.config.to_dict(),
        # The run's look-up tables' predictions, beside the measured latency_ms.
        "predicted_us": dict(entry.predicted_us),
        "content": content,
    }
