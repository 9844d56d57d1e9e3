"""Measuring a latency look-up table on this machine.

Every block configuration a search space can produce (`latency.table_keys`)
is built as a small Keras model with random weights (batch norm folded into
the convs, as in a deployed subnet), and timed on the chosen runtime:

* ``tflite``: LiteRT with its default XNNPACK delegate, the mobile-like CPU
  path (``threads`` interpreter threads). Blocks that differ only in input
  size share one converted model with a dynamic spatial input, and many
  blocks go into one multi-signature .tflite file, so a full-size
  MobileNetV1 table (~14,700 entries) needs ~2,300 conversions, not 14,700.
* ``tensorflow``: a traced ``tf.function`` per block, on the CPU or, when
  TensorFlow sees one, the GPU: the path TF Serving runs.

Each entry is the median of ``repeats`` timed calls after ``warmup`` calls,
minus the measured cost of calling a trivial model (the per-call overhead);
that overhead is the table's ``overhead_us``, added once per predicted
subnet. ``validate_subnets`` random subnets (plus the largest and smallest)
are then measured end to end the same way, against the prediction.
"""

from __future__ import annotations

import collections
import logging
import random
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from pss_keras import blocks, latency, specs, timing

# Blocks converted into one .tflite file (one signature each).
_MODELS_PER_FILE = 64


def _width(ref: blocks.Channels, channels: dict, num_classes: int) -> int:
    if ref.stage is None:
        return 3 if ref.fixed == "rgb" else num_classes
    return channels[ref.stage] * ref.factor


def block_model(
    model_name: str, block: blocks.BlockSpec, c_in: int, c_out: int, num_classes: int
) -> keras.Model:
    """One block of the plan as a model with a dynamic spatial input
    ``[1, None, None, c_in]``: its layers (convs with bias, BN folded),
    ReLU6 where the plan has one, and the residual add."""
    channels = {block.in_stage: c_in, block.out_stage: c_out if block.name != "top" else c_in}
    inputs = keras.Input((None, None, c_in), batch_size=1, name="x")
    x = inputs
    for spec in block.layers:
        width = _width(spec.c_out, channels, num_classes)
        common = dict(strides=spec.stride, padding="same", use_bias=True)
        if spec.kind == "conv":
            x = keras.layers.Conv2D(width, spec.kernel, **common)(x)
        elif spec.kind == "depthwise":
            x = keras.layers.DepthwiseConv2D(spec.kernel, **common)(x)
        elif spec.kind == "pool":
            x = keras.layers.GlobalAveragePooling2D()(x)
        else:
            x = keras.layers.Dense(width)(x)
        if spec.relu6:
            x = keras.layers.ReLU(max_value=6.0)(x)
    if block.residual:
        x = keras.layers.Add()([inputs, x])
    return keras.Model(inputs, x, name=f"{block.name}_{c_in}_{c_out}")


def _trivial_model(channels: int = 8) -> keras.Model:
    inputs = keras.Input((None, None, channels), batch_size=1, name="x")
    return keras.Model(inputs, keras.layers.ReLU(max_value=6.0)(inputs), name="overhead")


class _Runtime:
    """Times models on one runtime: ``load(models)`` then ``time(i, shape)``."""

    def __init__(self, runtime: str, threads: int, repeats: int, warmup: int):
        if runtime not in latency.RUNTIMES:
            raise ValueError(f"runtime={runtime!r} is unknown; use one of {latency.RUNTIMES}.")
        self.runtime, self.threads, self.repeats, self.warmup = runtime, threads, repeats, warmup
        self.calls = []

    def load(self, models) -> None:
        if self.runtime == "tflite":
            self.calls = _tflite_calls(models, self.threads)
        else:
            self.calls = [_tf_call(model) for model in models]

    def time_us(self, index: int, shape) -> float:
        x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
        call = self.calls[index]
        return 1000.0 * timing.median_ms(lambda: call(x), self.repeats, self.warmup)


def _input_spec(model):
    """Batch 1; the model's own spatial size (None for the table's blocks)."""
    return tf.TensorSpec([1, *model.inputs[0].shape[1:]], tf.float32, name="x")


def _tf_call(model):
    fn = tf.function(model, input_signature=[_input_spec(model)], jit_compile=False)

    def call(x):
        y = fn(tf.constant(x))
        return tf.reshape(y, [-1])[0].numpy()  # waits for the device; copies one value

    return call


def _tflite_calls(models, threads):
    """Converts ``models`` into one multi-signature .tflite; a call per model."""
    from ai_edge_litert.interpreter import Interpreter

    tmp = tempfile.mkdtemp(prefix="pss_lut_")
    try:
        archive = keras.export.ExportArchive()
        names = []
        for i, model in enumerate(models):
            archive.track(model)
            archive.add_endpoint(f"m{i}", _endpoint(model), input_signature=[_input_spec(model)])
            names.append(f"m{i}")
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=names)
        content = converter.convert()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    interpreter = Interpreter(model_content=content, num_threads=threads)
    calls = []
    for name in names:
        runner = interpreter.get_signature_runner(name)
        calls.append(lambda x, runner=runner: runner(x=x))
    return calls


def _endpoint(model):
    return lambda x: {"y": model(x)}


def build_table(
    space: specs.SearchSpace,
    runtime: str = "tflite",
    threads: int = 1,
    num_classes: int = 1000,
    repeats: int = 10,
    warmup: int = 2,
    validate_subnets: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> latency.LatencyTable:
    """Measures every block configuration of ``space`` on this machine.

    Args:
        space: the search space (``num_classes`` is taken from the argument).
        runtime: ``tflite`` (LiteRT, XNNPACK) or ``tensorflow``.
        threads: LiteRT interpreter threads (``tensorflow``: TF's intra-op
            threads are set by the caller before TensorFlow starts).
        num_classes: classifier outputs of the measured top block.
        repeats, warmup: timed and untimed calls per entry.
        validate_subnets: random subnets measured end to end against the
            prediction (plus the largest and the smallest).
        seed: weights and the validation subnets.
        progress: show a progress bar.

    Returns:
        The table, with ``device``, ``runtime``, ``min_subnet_us``,
        ``max_subnet_us``, ``validation`` and ``build_seconds`` recorded.
    """
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    keys = latency.table_keys(space)
    plan = {latency.block_kind(space.model_name, b): b for b in blocks.plan(space.model_name)}
    groups = collections.defaultdict(list)  # (kind, c_in, c_out) -> in_sizes
    for kind, in_size, c_in, c_out in keys:
        groups[(kind, c_in, c_out)].append(in_size)
    timer = _Runtime(runtime, threads, repeats, warmup)
    timer.load([_trivial_model()])
    overhead = timer.time_us(0, (1, 1, 1, 8))
    bar = keras.utils.Progbar(len(keys), unit_name="block") if progress else None
    entries = {}
    group_keys = list(groups)
    for first in range(0, len(group_keys), _MODELS_PER_FILE):
        chunk = group_keys[first : first + _MODELS_PER_FILE]
        timer.load(
            [block_model(space.model_name, plan[k], ci, co, num_classes) for k, ci, co in chunk]
        )
        for i, (kind, c_in, c_out) in enumerate(chunk):
            for in_size in groups[(kind, c_in, c_out)]:
                us = timer.time_us(i, (1, in_size, in_size, c_in))
                entries[(kind, in_size, c_in, c_out)] = max(0.0, us - overhead)
                if bar is not None:
                    bar.add(1)
    gpus = timing.gpu_names() if runtime == "tensorflow" else []
    meta = {
        "runtime": runtime,
        "runtime_version": _runtime_version(runtime),
        "device": latency.machine_info(threads, gpus[0] if gpus else None),
        "num_classes": int(num_classes),
        "repeats": int(repeats),
        "warmup": int(warmup),
    }
    table = latency.LatencyTable(latency.space_dict(space), entries, overhead, meta)
    rng = np.random.default_rng(seed)
    r, m = space.random_arrays(10_000, rng)
    spread = table.predict_us_np(space.model_name, r, m)
    table.meta.update(
        min_subnet_us=round(table.predict_us(space.smallest()), 3),
        max_subnet_us=round(table.predict_us(space.largest()), 3),
        random_subnets_us=[round(float(spread.min()), 3), round(float(spread.max()), 3)],
    )
    if validate_subnets:
        table.meta["validation"] = validate(
            table, space, timer, validate_subnets, num_classes, seed, progress
        )
    table.meta["build_seconds"] = round(time.perf_counter() - start, 1)
    return table


def _runtime_version(runtime: str) -> str:
    if runtime == "tflite":
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')} (XNNPACK)"
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    return f"tensorflow {tf.__version__} ({device})"


def validate(table, space, timer, count, num_classes, seed, progress) -> dict:
    """``count`` random subnets plus the largest and smallest, measured end to
    end (standalone models with random weights, BN folded) vs predicted."""
    from pss_keras.extraction import extract_subnet
    from pss_keras.supernet import Supernet

    supernet = Supernet(
        model_name=space.model_name,
        num_classes=num_classes,
        width_scale=space.width_scale,
        resolution_range=space.resolution_range,
        resolution_step=space.resolution_step,
        width_range=space.width_range,
    )
    py_rng = random.Random(seed)
    configs = [space.largest(), space.smallest()] + [space.random(py_rng) for _ in range(count)]
    bar = keras.utils.Progbar(len(configs), unit_name="subnet") if progress else None
    rows = []
    for config in configs:
        model = extract_subnet(supernet, config, fold_bn=True)
        timer.load([model])
        measured = timer.time_us(0, (1, config.resolution, config.resolution, 3))
        rows.append(
            {
                "config": config.to_dict(),
                "predicted_us": round(table.predict_us(config), 3),
                "measured_us": round(measured, 3),
            }
        )
        if bar is not None:
            bar.add(1)
    predicted = [row["predicted_us"] for row in rows]
    measured = [row["measured_us"] for row in rows]
    result = {
        "subnets": len(rows),
        "mape": round(latency.mape(predicted, measured), 4),
        "spearman": round(latency.spearman(predicted, measured), 4),
        "rows": rows,
    }
    logging.info(
        "Validation on %d subnets: mape %.3f, spearman %.3f",
        len(rows),
        result["mape"],
        result["spearman"],
    )
    return result


def format_validation(table: latency.LatencyTable) -> str:
    """The validation rows as a printable table."""
    validation = table.meta.get("validation")
    if not validation:
        return "no validation (use --validate_subnets=N)"
    lines = [f"{'subnet':<10}{'res':>5}{'predicted us':>15}{'measured us':>14}{'error':>8}"]
    for i, row in enumerate(validation["rows"]):
        label = {0: "largest", 1: "smallest"}.get(i, f"random {i - 1}")
        error = row["predicted_us"] / row["measured_us"] - 1
        lines.append(
            f"{label:<10}{row['config']['resolution']:>5}{row['predicted_us']:>15.1f}"
            f"{row['measured_us']:>14.1f}{error:>+8.1%}"
        )
    lines.append(
        f"mape {validation['mape']:.3f}, spearman {validation['spearman']:.3f} "
        f"over {validation['subnets']} subnets"
    )
    return "\n".join(lines)
