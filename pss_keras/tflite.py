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
  (`pss_keras.qat`) and then converted.

Every file is verified with the LiteRT interpreter on validation images
against the SavedModel signature of the same tier (a directory written by
``scripts/export.py``, or the same computation in process): top-1 agreement,
max |logit difference|, accuracy, and batch-1 latency (median of repeated
runs, given number of threads). ``manifest.json`` records all of it.

A multi-signature .tflite would not share weights between its signatures
(each subgraph holds its own constants): on the quickstart job one file with
4 signatures is 0.8% smaller than the 4 files together
(``scripts/benchmark_tflite.py --multi_signature``), so one file per tier is
what is written.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from pss_keras import data as data_lib
from pss_keras import export as export_lib
from pss_keras import extraction, qat
from pss_keras.checkpoints import atomic_write_json
from pss_keras.supernet import resize_to

QUANTIZE_MODES = ("none", "fp16", "int8")
IO_DTYPES = ("float32", "int8", "uint8")
MANIFEST = "manifest.json"
PREPROCESSING = (
    "RGB pixel values 0..255 (not normalized: the model's first layer does the ImageNet "
    "mean/std): take the centre square covering 224/256 of the image's shorter side and resize "
    "it to resolution x resolution (bilinear). Integer input: q = round(pixel / scale + "
    "zero_point). Integer output: logit = (q - zero_point) * scale."
)
# What the verification must show, per quantization mode.
TARGETS = {
    "none": "max |logit difference| < 1e-4 x max |logit| (relative)",
    "fp16": "top-1 agreement >= 0.99",
    "int8": "top-1 agreement >= 0.98",
}


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


def _interpreter(model_content=None, model_path=None, num_threads=1):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model_content, model_path=model_path, num_threads=num_threads)


def _logits_endpoint(model):
    return lambda images: {"logits": model(images, training=False)}


def write_conversion_saved_model(endpoints: dict, path: str) -> None:
    """A SavedModel for `tf.lite.TFLiteConverter`: one signature per entry of
    ``endpoints`` (``{signature name: (model, resolution)}``), each
    ``images [None, r, r, 3] float32 -> {"logits"}``. The models are Keras 3,
    or tf_keras (the QAT model)."""
    specs = {
        name: tf.TensorSpec([None, r, r, 3], tf.float32, name="images")
        for name, (_, r) in endpoints.items()
    }
    if all(isinstance(model, keras.Model) for model, _ in endpoints.values()):  # Keras 3
        archive = keras.export.ExportArchive()
        for name, (model, _) in endpoints.items():
            archive.track(model)
            archive.add_endpoint(name, _logits_endpoint(model), input_signature=[specs[name]])
        archive.write_out(path, verbose=False)
    else:  # tf_keras
        signatures = {
            name: tf.function(_logits_endpoint(model)).get_concrete_function(specs[name])
            for name, (model, _) in endpoints.items()
        }
        root = tf.Module()
        root.models = [model for model, _ in endpoints.values()]
        tf.saved_model.save(root, path, signatures=signatures)


def convert_model(
    model, resolution: int, quantize: str = "none", representative=None, io_dtype="float32"
) -> bytes:
    """Converts a subnet model (Keras 3 or, after QAT, tf_keras) to TFLite.

    Args:
        model: pixel-input model [b, resolution, resolution, 3] -> logits.
        resolution: its input size.
        quantize: ``none``, ``fp16`` or ``int8``.
        representative: for int8: a callable returning an iterable of
            float32 [1, r, r, 3] pixel arrays.
        io_dtype: int8 models' input/output type.

    Returns:
        The .tflite flatbuffer.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r} is unknown; use one of {QUANTIZE_MODES}.")
    if quantize == "int8" and representative is None:
        raise ValueError("int8 quantization needs representative data.")
    tmp = tempfile.mkdtemp(prefix="pss_tflite_")
    try:
        write_conversion_saved_model({"serving_default": (model, resolution)}, tmp)
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


def _tensor_info(detail) -> dict:
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "shape": [int(d) for d in detail["shape_signature"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def quantize_input(x: np.ndarray, detail) -> np.ndarray:
    """Float pixels -> the interpreter input's dtype (as an app would)."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale


class TFLiteRunner:
    """Runs a .tflite classifier on float pixel batches (any batch size)."""

    def __init__(self, model_content=None, model_path=None, num_threads: int = 1):
        self.interpreter = _interpreter(model_content, model_path, num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = int(self.input["shape"][0])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Float32 pixels [b, r, r, 3] -> float32 logits [b, classes]."""
        it = self.interpreter
        if pixels.shape[0] != self._batch:
            it.resize_tensor_input(self.input["index"], list(pixels.shape))
            it.allocate_tensors()
            self._batch = pixels.shape[0]
        it.set_tensor(self.input["index"], quantize_input(pixels, self.input))
        it.invoke()
        return dequantize_output(it.get_tensor(self.output["index"]), self.output)

    def latency_ms(self, pixels: np.ndarray, repeats: int) -> float:
        """Median wall time of one batch-1 invoke over ``repeats`` runs."""
        self(pixels[:1])
        it = self.interpreter
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            it.invoke()
            times.append(time.perf_counter() - start)
        return 1000.0 * float(np.median(times))


def _logits_of(images, fn):
    return fn(images)["logits"]


def _reference_fns(job, entries, saved_model: str | None):
    """``({tier: fn(uint8 images) -> logits}, description)``."""
    if saved_model:
        if not os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
            raise ValueError(
                f"{saved_model} is not a SavedModel directory; pass a version directory written "
                "by scripts/export.py (e.g. saved_models/quickstart/1)."
            )
        loaded = tf.saved_model.load(saved_model)
        missing = [e["name"] for e in entries if e["name"] not in loaded.signatures]
        if missing:
            raise ValueError(
                f"{saved_model} has no signature for tier(s) {missing} (it has "
                f"{sorted(loaded.signatures)}); export the same job or pass other --tiers."
            )
        fns = {
            e["name"]: (lambda sig: lambda images: sig(images=images)["logits"])(
                loaded.signatures[e["name"]]
            )
            for e in entries
        }
        return fns, f"SavedModel {saved_model}"
    shared = export_lib.tier_functions(job, entries, "shared")
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
    for image, label in pipelines.source.validation.take(count):
        image = data_lib.to_rgb(image).numpy().astype(np.uint8)
        if images and (image.shape != shape or len(images) == batch_size):
            yield np.stack(images), np.array(labels)
            images, labels = [], []
        shape = image.shape
        images.append(image)
        labels.append(int(label))
    if images:
        yield np.stack(images), np.array(labels)


def _file_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


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
            manifest is removed before and the new one written last, so a
            reader that finds a manifest finds the files it describes.
        config: the `ConvertConfig`.
        tiers: tier names (default: every retained tier).
        progress: progress bars.

    Returns:
        The manifest (also written to ``<output_dir>/manifest.json``).

    Raises:
        ValueError: for a missing job, unknown tier, bad settings, missing
            data for int8 or verification, or a bad ``saved_model``.
    """
    config = config or ConvertConfig()
    config.validate()
    job = export_lib.Job(job_dir)
    entries = job.select(tiers)
    data_config = job.config.data
    if config.data_dir:
        data_config = dataclasses.replace(data_config, data_dir=config.data_dir)
    needs_data = config.quantize == "int8" or config.verify_images > 0
    pipelines = None
    if needs_data:
        try:
            pipelines = data_lib.Pipelines(data_config)
        except data_lib.DatasetError as e:
            why = (
                "int8 quantization needs training images for its representative set"
                if config.quantize == "int8"
                else "verification needs validation images (--verify_images=0 skips it)"
            )
            raise ValueError(f"{why}, but the job's dataset is unavailable: {e}") from e
    references, reference_name = (None, None)
    if config.verify_images > 0:
        references, reference_name = _reference_fns(job, entries, config.saved_model)

    # The temporary folder lives inside output_dir so that the final moves are
    # renames on one file system.
    os.makedirs(output_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-tflite-", dir=output_dir)
    try:
        runners, tier_rows = {}, []
        bar = keras.utils.Progbar(len(entries), verbose=1 if progress else 0)
        for i, entry in enumerate(entries):
            row = _convert_tier(job, entry, config, pipelines, progress)
            with open(os.path.join(tmp, row["file"]), "wb") as f:
                f.write(row.pop("content"))
            runner = TFLiteRunner(
                model_path=os.path.join(tmp, row["file"]), num_threads=config.num_threads
            )
            row["input"] = _tensor_info(runner.input)
            row["output"] = _tensor_info(runner.output)
            runners[entry["name"]] = runner
            tier_rows.append(row)
            bar.update(i + 1)
        if references is not None:
            accuracy = _verify(job, entries, runners, references, pipelines, config, progress)
            for row in tier_rows:
                row["verification"] = accuracy[row["name"]]
        sample = None
        for row in tier_rows:
            runner = runners[row["name"]]
            r = row["resolution"]
            if sample is None or sample.shape[1] != r:
                sample = np.random.default_rng(0).uniform(0, 255, (1, r, r, 3)).astype(np.float32)
            row["latency_ms"] = runner.latency_ms(sample, config.latency_repeats)
        manifest = {
            "job_dir": os.path.abspath(job_dir),
            "quantize": config.quantize,
            "mode": config.mode_name,
            "io_dtype": config.io_dtype if config.quantize == "int8" else "float32",
            "representative_images": (
                min(config.representative_images, pipelines.num_train)
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
            "preprocessing": PREPROCESSING,
            "class_names": job.class_names,
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
            "tiers": tier_rows,
        }
        manifest_path = os.path.join(output_dir, MANIFEST)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
        for row in tier_rows:
            os.replace(os.path.join(tmp, row["file"]), os.path.join(output_dir, row["file"]))
        atomic_write_json(manifest_path, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _pixel_batches(dataset, resolution: int):
    """Normalized images at the job's image size -> pixels at ``resolution``.

    Clipped to [0, 255]: training augmentation (PCA lighting) leaves the
    pixel range slightly, and QAT must learn the input range a camera gives.
    """

    def to_pixels(images, labels):
        pixels = tf.clip_by_value(data_lib.to_pixels(images), 0.0, 255.0)
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
            name=entry["name"],
        )
    else:
        model = extraction.extract_subnet(
            job.supernet, subnet, stats, fold_bn=True, pixel_input=True, name=entry["name"]
        )
    content = convert_model(model, r, config.quantize, representative, config.io_dtype)
    return {
        "name": entry["name"],
        "file": f"{entry['name']}.tflite",
        "resolution": r,
        "mflops": float(entry["mflops"]),
        "params": int(entry["params"]),
        "size_bytes": len(content),
        "sha256": _file_digest(content),
        "quantization": config.mode_name,
        "qat": qat_info,
        "config": entry["config"],
        "content": content,
    }


def _verify(job, entries, runners, references, pipelines, config, progress) -> dict:
    """Agreement of each .tflite with its reference on validation images."""
    stats = {
        e["name"]: dict(
            examples=0, agree=0, correct=0, ref_correct=0, diff=0.0, ref_max=0.0,
            err_sq=0.0, signal_sq=0.0, flip_margin=0.0,
        )
        for e in entries
    }  # fmt: skip
    resolutions = {e["name"]: int(e["config"]["resolution"]) for e in entries}
    total = min(config.verify_images, pipelines.source.num_validation)
    bar = keras.utils.Progbar(total, verbose=1 if progress else 0)
    seen = 0
    for images, labels in _verification_batches(pipelines, total):
        raw = tf.constant(images)
        pixels = export_lib.preprocess(raw, job.image_size, normalized=False)
        for name, s in stats.items():
            reference = references[name](raw).numpy()
            logits = runners[name](resize_to(pixels, resolutions[name]).numpy())
            top, ref_top = logits.argmax(-1), reference.argmax(-1)
            s["examples"] += len(labels)
            s["agree"] += int((top == ref_top).sum())
            s["correct"] += int((top == labels).sum())
            s["ref_correct"] += int((ref_top == labels).sum())
            s["diff"] = max(s["diff"], float(np.abs(logits - reference).max()))
            s["ref_max"] = max(s["ref_max"], float(np.abs(reference).max()))
            # Logit signal-to-noise: the reference's logits around their
            # per-example mean vs the conversion's error.
            centred = reference - reference.mean(-1, keepdims=True)
            s["signal_sq"] += float(np.square(centred).sum())
            s["err_sq"] += float(np.square(logits - reference).sum())
            flipped = top != ref_top
            if flipped.any():
                ordered = np.sort(reference[flipped], -1)
                margin = float((ordered[:, -1] - ordered[:, -2]).max())
                s["flip_margin"] = max(s["flip_margin"], margin)
        seen += len(labels)
        bar.update(seen)
    if not seen:
        raise ValueError("The job's validation set is empty: nothing to verify against.")
    out = {}
    for name, s in stats.items():
        n = s["examples"]
        agreement = s["agree"] / n
        relative = s["diff"] / max(s["ref_max"], 1e-12)
        if config.quantize == "none":
            meets = relative < 1e-4
        elif config.quantize == "fp16":
            meets = agreement >= 0.99
        else:
            meets = agreement >= 0.98
        out[name] = {
            "examples": n,
            "top1": s["correct"] / n,
            "reference_top1": s["ref_correct"] / n,
            "top1_agreement": agreement,
            "max_abs_logit_diff": s["diff"],
            "max_rel_logit_diff": relative,
            "logit_sqnr_db": _sqnr_db(s["signal_sq"], s["err_sq"]),
            "max_flipped_margin": s["flip_margin"],
            "meets_target": bool(meets),
        }
    return out


def _sqnr_db(signal_sq: float, err_sq: float) -> float:
    """10 log10(signal / error energy), capped at 200 dB for exact copies."""
    if err_sq <= 0.0:
        return 200.0
    return float(min(200.0, 10.0 * np.log10(max(signal_sq, 1e-30) / err_sq)))


def format_manifest(manifest: dict) -> str:
    """The manifest as a table: tier, size, accuracy, agreement, latency."""
    lines = [
        f"{'tier':<14}{'res':>5}{'MFLOPs':>8}{'KB':>9}{'in':>9}{'top1':>7}{'ref top1':>9}"
        f"{'agree':>7}{'max|dlogit|':>12}{'SQNR dB':>8}{'ms':>8}"
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
            f"{t['input']['dtype']:>9}{acc}{t['latency_ms']:>8.3f}"
        )
    threads = manifest["latency"]["num_threads"]
    lines.append(
        f"latency: batch 1, median of {manifest['latency']['repeats']}, {threads} thread(s); "
        f"verified against {manifest['reference'] or 'nothing (verification skipped)'}"
    )
    return "\n".join(lines)
