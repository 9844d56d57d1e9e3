"""Export of a trained PSS job as one multi-signature SavedModel for TF Serving.

Signatures: one per retained subnet ("resource tier", e.g. ``flops_320m``)
taking pixels, ``<tier>_bytes`` for each taking encoded images,
``serving_default`` (the largest retained tier), and the tier table twice:
``tier_table`` (one ignored input, ``dummy``: TF Serving's REST API refuses
a signature without inputs) and ``tiers`` (no input; what gRPC clients
written before ``tier_table`` ask for). A tier does the whole preprocessing
inside:

    images: uint8 [batch, height, width, 3], RGB, any size (one size per
      batch); or image_bytes: string [batch], JPEG/PNG/GIF/BMP, each
      decoded on its own (sizes may differ within a batch)
    -> resize the shorter side to R * 256 / 224, centre-crop R (R: the
       supernet's largest resolution), scale to [0, 1], ImageNet mean/std,
       then the tier's subnet (resized to its resolution inside)
    -> logits [batch, classes], probabilities [batch, classes],
       top5_indices int32 [batch, 5], top5_classes string [batch, 5]

Modes (figures: docs/serving_speed.md):
* ``shared`` (default): the supernet's weights are stored once on disk;
  each tier's BN-folded kernels are built from them when the model loads
  (`tier_graph.FoldedKernel`) and kept in memory, so every tier runs at
  standalone speed. Memory per tier is what a standalone copy costs.
* ``shared_lowmem``: weights stored once on disk and held once in memory;
  each request slices its tier's kernels and folds BN into them. Memory
  stays one copy for any number of tiers; small tiers at batch 1 pay for
  the fold on every request.
* ``standalone``: each tier is its extracted subnet with BN folded into the
  convolutions (a Keras model per tier), one weight copy per tier on disk
  and in memory.

A tier fine-tuned alone (``replace``: `pss_keras.export.replacement`) runs
its own job's weights as in ``standalone``, its variables stored beside
the shared ones; the other tiers follow the mode.

The export is written into a hidden temporary directory beside the target
and renamed to ``<export_dir>/<version>/`` (a new integer version, never
overwriting one): TF Serving never sees a half-written version, also when
the disk fills up midway (the hidden directory is removed and one
`DiskFullError` line says what to free).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from pss_keras.data.preprocessing import preprocess, preprocess_encoded
from pss_keras.export import replacement, tier_graph
from pss_keras.jobs.directory import Job
from pss_keras.jobs.tiers import (
    ENCODED_INPUT,
    TIER_TABLE,
    TIER_TABLE_INPUT,
    TIER_TABLE_SIGNATURE,
    TIERS_SIGNATURE,
    encoded_signature,
)
from pss_keras.supernet import extraction
from pss_keras.supernet.model import resize_to
from pss_keras.utils import timing
from pss_keras.utils.fileio import disk_full_guard, fsync_dir, fsync_tree, tree_bytes

MODES = ("shared", "shared_lowmem", "standalone")
WARMUP_FILE = "tf_serving_warmup_requests"


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


def tier_functions(job: Job, entries, mode: str) -> dict:
    """``{tier_name: fn(images uint8) -> outputs}`` for the chosen mode;
    ``fn.encoded(image_bytes string) -> outputs`` is the same tier on
    encoded images."""
    if mode not in MODES:
        raise ValueError(f"export mode {mode!r} is unknown; use one of {MODES}.")
    fns = {}
    for tier in entries:
        config, stats = job.tier(tier)
        if mode in ("shared", "shared_lowmem"):
            fns[tier.name] = _shared_fn(job, config, stats, tier.name, mode == "shared")
        else:
            fns[tier.name] = _standalone_fn(job, config, stats, tier.name)
    return fns


def _shared_fn(job, config, stats, name, materialize):
    graph = tier_graph.TierGraph(job.supernet, config, stats, materialize, name)
    names = job.class_names
    fn = _on_images(lambda x: _outputs(graph(x), names), job.image_size)
    fn.graph = graph  # tracked by the archive (its materialized kernels)
    return fn


def _standalone_fn(job, config, stats, name):
    model = extraction.extract_subnet(job.supernet, config, stats, fold_bn=True, name=name)
    names, resolution = job.class_names, config.resolution
    fn = _on_images(
        lambda x: _outputs(model(resize_to(x, resolution), training=False), names), job.image_size
    )
    fn.model = model
    return fn


def _on_images(head, image_size: int):
    """A tier's function on pixels, with ``.encoded`` on encoded images:
    both preprocess as evaluation does, then run ``head`` (normalized
    [batch, image_size, image_size, 3] -> outputs), one graph function that
    both signatures call, so the SavedModel holds the tier's graph once."""
    head = tf.function(
        head, input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)]
    )

    def fn(images):
        return head(preprocess(images, image_size))

    def encoded(image_bytes):
        return head(preprocess_encoded(image_bytes, image_size))

    fn.encoded = encoded
    return fn


def measure_latency_ms(fn, image_size: int, batch: int = 1, repeats: int = 20) -> float:
    """Median latency of a traced tier function on random images."""
    images = tf.constant(
        np.random.default_rng(0).integers(0, 255, (batch, image_size, image_size, 3), np.uint8)
    )
    traced = tf.function(fn)
    return timing.median_ms(lambda: traced(images)["logits"].numpy(), repeats)


def next_version(export_dir: str) -> int:
    """1 + the highest integer version under ``export_dir`` (1 if none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(n) for n in os.listdir(export_dir) if n.isdigit()]
    return max(versions, default=0) + 1


def _warmup_records(signatures: dict, image_size: int) -> list:
    """One PredictionLog per signature, ``signatures``: ``{name: kind}``
    with kind ``images``, ``encoded``, ``table`` or ``none`` (no input)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    image = np.zeros((1, image_size, image_size, 3), np.uint8)
    inputs = {
        "images": {"images": image},
        "encoded": {ENCODED_INPUT: np.array([tf.io.encode_jpeg(image[0]).numpy()], object)},
        "table": {TIER_TABLE_INPUT: np.int32(0)},
        "none": {},
    }
    records = []
    for name, kind in signatures.items():
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=name))
        for alias, value in inputs[kind].items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
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
    replace: dict | None = None,
) -> dict:
    """Writes ``<export_dir>/<version>/`` for TF Serving; returns a summary.

    Args:
        job_dir: a finished training job.
        export_dir: the model's base path (``saved_models/<name>``).
        mode: ``shared``, ``shared_lowmem`` or ``standalone`` (see the
            module docstring).
        tiers: tier names to export (default: every retained tier).
        latency_repeats: repetitions of the per-tier latency measurement.
        replace: ``{tier: job_dir}``: tiers that run another job's weights
            (a tier fine-tuned alone), each as a standalone subnet with its
            own variables (`pss_keras.export.replacement`).

    Returns:
        ``{"path", "version", "mode", "tiers": [...], "default_tier"}``
        (and ``replaced_tiers`` when ``replace`` is given).

    Raises:
        ValueError: for a missing job, unknown tier or mode, or a bad
            replacement.
    """
    job = Job(job_dir)
    entries = job.select(tiers)
    replaced = replacement.replacements(job, entries, replace or {})
    own = {r.name: r for r in replaced}
    shared = tier_functions(job, [t for t in entries if t.name not in own], mode)
    fns = {
        t.name: shared[t.name] if t.name not in own else _standalone_fn(
            own[t.name].job, *own[t.name].job.tier(own[t.name].tier), t.name
        )
        for t in entries
    }  # fmt: skip
    entries = replacement.replaced_entries(entries, replaced)
    table = _tier_table(job, entries, fns, latency_repeats)
    default = max(entries, key=lambda t: t.mflops).name
    archive = _archive(fns, default, table)
    summary = {
        "mode": mode,
        "default_tier": default,
        "image_size": job.image_size,
        "input": "images: uint8 [batch, height, width, 3] RGB, any size",
        "encoded_input": f"{ENCODED_INPUT}: string [batch] JPEG/PNG/GIF/BMP, in <tier>_bytes",
        "class_names": job.class_names,
        "tiers": table,
    }
    if replaced:
        summary["replaced_tiers"] = {
            r.name: {
                "job_dir": r.job.job_dir,
                "tier": r.tier.name,
                "inherited_top1": r.inherited_top1,
            }
            for r in replaced
        }
    warmup = {name: "images" for name in [*fns, "serving_default"]}
    warmup |= {encoded_signature(name): "encoded" for name in fns}
    warmup |= {TIER_TABLE_SIGNATURE: "table", TIERS_SIGNATURE: "none"}
    final, version = _write_version(archive, export_dir, summary, warmup)
    return dict(summary, path=final, version=version)


def _tier_table(job, entries, fns, latency_repeats: int) -> list[dict]:
    """tiers.json rows: the served fields (`TIER_TABLE`), top-5, every
    table's predicted latency and the subnet."""
    tables = job.latency_tables()
    table = []
    for tier in entries:
        latency = measure_latency_ms(fns[tier.name], job.image_size, 1, latency_repeats)
        row = dataclasses.asdict(tier.served(latency, tables))
        table.append(
            {k: row[k] for k in ("name", "metric_type", "target", "mflops", "params", "resolution")}
            | {"top1": row["top1"], "top5": float(tier.top5), "latency_ms": latency}
            | {k: row[k] for k in ("latency_table", "latency_runtime")}
            | {"predicted_latency_ms": row["predicted_latency_ms"]}  # null without a table
            | {"predicted_us": dict(tier.predicted_us), "config": tier.config.to_dict()}
            | {"bytes_signature": row["bytes_signature"]}
        )
    return table


def _archive(fns, default: str, table) -> keras.export.ExportArchive:
    """Two endpoints per tier (pixels, encoded images), ``serving_default``
    and the tier table (``tier_table``, ``tiers``)."""
    signature = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    encoded = [tf.TensorSpec([None], tf.string, name=ENCODED_INPUT)]
    archive = keras.export.ExportArchive()
    # No archive.track(model): endpoints track the variables they use, and
    # tracking a Keras model would write every weight twice
    # (keras-team/keras#23553). Only the tier graphs are tracked (for their
    # materialized kernels, resources that no variable list holds).
    sources = {}
    for name, fn in fns.items():
        if hasattr(fn, "graph"):
            archive.track(fn.graph)  # its materialized kernels (resources)
            sources.update((id(v), v) for v in fn.graph.sources)
        archive.add_endpoint(name, fn, input_signature=signature)
        archive.add_endpoint(encoded_signature(name), fn.encoded, input_signature=encoded)
    if sources:
        # The weights the kernels are built from at load: an endpoint that
        # reads only materialized kernels does not track them itself.
        archive.add_variable_collection("shared_weights", list(sources.values()))
    archive.add_endpoint("serving_default", fns[default], input_signature=signature)

    def tiers_fn():
        return {
            output: tf.constant(
                [float("nan") if t[field] is None else t[field] for t in table],
                tf.dtypes.as_dtype(dtype),
            )
            for output, field, dtype in TIER_TABLE
        }

    def tier_table_fn(dummy):
        del dummy  # there only because TF Serving's REST API needs an input
        return tiers_fn()

    archive.add_endpoint(TIERS_SIGNATURE, tiers_fn, input_signature=[])
    archive.add_endpoint(
        TIER_TABLE_SIGNATURE,
        tier_table_fn,
        input_signature=[tf.TensorSpec(None, tf.int32, name=TIER_TABLE_INPUT)],
    )
    return archive


def _write_version(archive, export_dir: str, summary: dict, warmup: dict) -> tuple[str, int]:
    """Writes a new version folder atomically; returns (its path, its number).

    Written in a hidden folder beside the versions, synced, then renamed to
    the next free number: TF Serving never sees a half-written version, and
    an existing version is never touched.

    Raises:
        DiskFullError: if the disk fills up; the hidden folder is removed and
            ``export_dir`` holds the versions it held before.
    """
    os.makedirs(export_dir, exist_ok=True)
    version = next_version(export_dir)
    before = sorted(int(n) for n in os.listdir(export_dir) if n.isdigit())
    previous = os.path.join(export_dir, str(before[-1])) if before else None
    left = (
        f"no version was added; the newest, {before[-1]}, is untouched"
        if before
        else f"no version was added to {export_dir}"
    )
    with disk_full_guard(
        os.path.join(export_dir, str(version)),
        left,
        lambda: previous and tree_bytes(previous),
    ):
        return _write_new_version(archive, export_dir, version, summary, warmup)


def _write_new_version(archive, export_dir, version, summary, warmup):
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        path = os.path.join(tmp, "model")
        archive.write_out(path, verbose=False)
        extra = os.path.join(path, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "tiers.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
            for record in _warmup_records(warmup, summary["image_size"]):
                writer.write(record)
        fsync_tree(path)  # durable before TF Serving can see the version
        final = os.path.join(export_dir, str(version))
        while os.path.exists(final):  # a concurrent export took this number
            version += 1
            final = os.path.join(export_dir, str(version))
        os.rename(path, final)
        fsync_dir(export_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, version
