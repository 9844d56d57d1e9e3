"""Export of a trained PSS job as one multi-signature SavedModel for TF Serving.

One signature per retained subnet ("resource tier", e.g. ``flops_320m``),
``serving_default`` (the largest retained tier) and ``tiers`` (no input: the
tier table, so a client discovers the tiers through Predict). Every image
signature takes raw pixels and does the whole preprocessing inside:

    images: uint8 [batch, height, width, 3], RGB, any size (one size per batch)
    -> resize the shorter side to R * 256 / 224, centre-crop R (R: the
       supernet's largest resolution), scale to [0, 1], ImageNet mean/std,
       then the tier's subnet (resized to its resolution inside)
    -> logits [batch, classes], probabilities [batch, classes],
       top5_indices int32 [batch, 5], top5_classes string [batch, 5]

Modes:
* ``shared``: the supernet's weights are stored once; each signature slices
  them to its subnet and carries its own calibrated BN statistics as small
  constants. Smallest file, one copy in server memory.
* ``standalone``: each tier is its extracted subnet with BN folded into the
  convolutions (fixed shapes, fastest), at the cost of one weight copy per
  tier.

The export is written into a hidden temporary directory beside the target
and renamed to ``<export_dir>/<version>/`` (a new integer version, never
overwriting one): TF Serving never sees a half-written version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from pss_keras import data as data_lib
from pss_keras import extraction, specs, training
from pss_keras.supernet import resize_to

MODES = ("shared", "standalone")
TIERS_SIGNATURE = "tiers"
WARMUP_FILE = "tf_serving_warmup_requests"


def preprocess(images, image_size: int, normalized: bool = True):
    """Batched evaluation transform of uint8 images (see module docstring);
    ``normalized=False`` stops before the mean/std step (pixels in [0, 255])."""
    images = tf.cast(images, tf.float32)
    shape = tf.cast(tf.shape(images)[1:3], tf.float32)
    resize = float(round(image_size * 256 / 224))
    scale = resize / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), image_size)
    images = tf.image.resize(images, new_shape, method="bilinear")
    top = (new_shape[0] - image_size) // 2
    left = (new_shape[1] - image_size) // 2
    images = images[:, top : top + image_size, left : left + image_size, :]
    images = tf.clip_by_value(images / 255.0, 0.0, 1.0)
    return data_lib.normalize(images) if normalized else images * 255.0


def _outputs(logits, class_names):
    k = min(5, int(logits.shape[-1]))
    top = tf.math.top_k(logits, k=k)
    names = tf.constant(class_names or [str(i) for i in range(int(logits.shape[-1]))])
    return {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits),
        "top5_indices": top.indices,
        "top5_classes": tf.gather(names, top.indices),
    }


class Job:
    """A trained job directory: its settings, supernet and retained tiers."""

    def __init__(self, job_dir: str):
        for file in (training.RUN_CONFIG, training.RETAINED, "supernet.weights.h5"):
            if not os.path.exists(os.path.join(job_dir, file)):
                raise ValueError(
                    f"{job_dir} has no {file}: it needs a finished training run "
                    "(python scripts/train.py --job_dir=...)."
                )
        self.job_dir = job_dir
        with open(os.path.join(job_dir, training.RUN_CONFIG)) as f:
            self.config = training.TrainConfig.from_dict(json.load(f))
        with open(os.path.join(job_dir, training.RETAINED)) as f:
            self.retained = sorted(json.load(f), key=lambda e: e["mflops"])
        if not self.retained:
            raise ValueError(f"{job_dir}/{training.RETAINED} lists no subnets.")
        classes_path = os.path.join(job_dir, "classes.json")
        self.class_names = []
        if os.path.exists(classes_path):
            with open(classes_path) as f:
                self.class_names = [str(c) for c in json.load(f)]
        num_classes = len(self.class_names) or None
        if num_classes is None:
            raise ValueError(f"{job_dir}/classes.json is missing; re-run training.")
        self.supernet = training.build_supernet(self.config, num_classes)
        self.supernet.load_weights(os.path.join(job_dir, "supernet.weights.h5"))
        self.image_size = self.config.resolution_range[1]

    def tier(self, entry) -> tuple[specs.SubnetConfig, dict]:
        config = specs.SubnetConfig.from_dict(entry["config"])
        return config, training.load_bn_stats(self.job_dir, entry)

    def select(self, names) -> list:
        if not names:
            return self.retained
        known = {e["name"]: e for e in self.retained}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"Unknown tier(s) {unknown}; the job has {sorted(known)}.")
        return [known[n] for n in names]


def tier_functions(job: Job, entries, mode: str) -> dict:
    """``{tier_name: fn(images uint8) -> outputs}`` for the chosen mode."""
    if mode not in MODES:
        raise ValueError(f"export mode {mode!r} is unknown; use one of {MODES}.")
    fns = {}
    for entry in entries:
        config, stats = job.tier(entry)
        if mode == "shared":
            fns[entry["name"]] = _shared_fn(job, config, stats)
        else:
            fns[entry["name"]] = _standalone_fn(job, config, stats, entry["name"])
    return fns


def _shared_fn(job, config, stats):
    code = tf.constant(job.supernet.space.encode(config))
    constants = {k: (tf.constant(m), tf.constant(v)) for k, (m, v) in stats.items()}
    supernet, size, names = job.supernet, job.image_size, job.class_names

    def fn(images):
        logits = supernet(preprocess(images, size), training=False, subnet=code, bn_stats=constants)
        return _outputs(logits, names)

    return fn


def _standalone_fn(job, config, stats, name):
    model = extraction.extract_subnet(job.supernet, config, stats, fold_bn=True, name=name)
    size, names, resolution = job.image_size, job.class_names, config.resolution

    def fn(images):
        x = resize_to(preprocess(images, size), resolution)
        return _outputs(model(x, training=False), names)

    fn.model = model
    return fn


def measure_latency_ms(fn, image_size: int, batch: int = 1, repeats: int = 20) -> float:
    """Median latency of a traced tier function on random images."""
    images = tf.constant(
        np.random.default_rng(0).integers(0, 255, (batch, image_size, image_size, 3), np.uint8)
    )
    traced = tf.function(fn)
    traced(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = traced(images)
        out["logits"].numpy()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def next_version(export_dir: str) -> int:
    """1 + the highest integer version under ``export_dir`` (1 if none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(n) for n in os.listdir(export_dir) if n.isdigit()]
    return max(versions, default=0) + 1


def _warmup_records(names, image_size: int) -> list:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    image = np.zeros((1, image_size, image_size, 3), np.uint8)
    records = []
    for name in names:
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=name))
        if name != TIERS_SIGNATURE:
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(image))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def export(
    job_dir: str,
    export_dir: str,
    mode: str = "shared",
    tiers=None,
    latency_repeats: int = 20,
) -> dict:
    """Writes ``<export_dir>/<version>/`` for TF Serving; returns a summary.

    Args:
        job_dir: a finished training job.
        export_dir: the model's base path (``saved_models/<name>``).
        mode: ``shared`` or ``standalone`` (see the module docstring).
        tiers: tier names to export (default: every retained tier).
        latency_repeats: repetitions of the per-tier latency measurement.

    Returns:
        ``{"path", "version", "mode", "tiers": [...], "default_tier"}``.

    Raises:
        ValueError: for a missing job, unknown tier or mode.
    """
    job = Job(job_dir)
    entries = job.select(tiers)
    fns = tier_functions(job, entries, mode)
    table = []
    for entry in entries:
        latency = measure_latency_ms(fns[entry["name"]], job.image_size, 1, latency_repeats)
        config = specs.SubnetConfig.from_dict(entry["config"])
        table.append(
            {
                "name": entry["name"],
                "metric_type": entry["metric_type"],
                "target": float(entry["target"]),
                "mflops": float(entry["mflops"]),
                "params": int(entry["params"]),
                "resolution": config.resolution,
                "top1": float(entry["top1"]),
                "top5": float(entry["top5"]),
                "latency_ms": latency,
                "config": entry["config"],
            }
        )
    default = max(entries, key=lambda e: e["mflops"])["name"]
    signature = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    archive = keras.export.ExportArchive()
    # No archive.track(): endpoints track the variables they use, and track()
    # would write every weight twice (keras-team/keras#23553).
    for name, fn in fns.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    archive.add_endpoint("serving_default", fns[default], input_signature=signature)

    def tiers_fn():
        return {
            "names": tf.constant([t["name"] for t in table]),
            "metric_types": tf.constant([t["metric_type"] for t in table]),
            "targets": tf.constant([t["target"] for t in table], tf.float32),
            "mflops": tf.constant([t["mflops"] for t in table], tf.float32),
            "params": tf.constant([t["params"] for t in table], tf.int64),
            "resolutions": tf.constant([t["resolution"] for t in table], tf.int32),
            "top1": tf.constant([t["top1"] for t in table], tf.float32),
            "latency_ms": tf.constant([t["latency_ms"] for t in table], tf.float32),
        }

    archive.add_endpoint(TIERS_SIGNATURE, tiers_fn, input_signature=[])

    os.makedirs(export_dir, exist_ok=True)
    version = next_version(export_dir)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        path = os.path.join(tmp, "model")
        archive.write_out(path, verbose=False)
        extra = os.path.join(path, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        summary = {
            "mode": mode,
            "default_tier": default,
            "image_size": job.image_size,
            "input": "images: uint8 [batch, height, width, 3] RGB, any size",
            "class_names": job.class_names,
            "tiers": table,
        }
        with open(os.path.join(extra, "tiers.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
            for record in _warmup_records(
                [*fns, "serving_default", TIERS_SIGNATURE], job.image_size
            ):
                writer.write(record)
        final = os.path.join(export_dir, str(version))
        while os.path.exists(final):  # a concurrent export took this number
            version += 1
            final = os.path.join(export_dir, str(version))
        os.rename(path, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(summary, path=final, version=version)
