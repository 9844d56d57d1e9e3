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

Each entry is the median of ``repeats`` timed calls after ``warmup`` calls
(the input in place, the computation alone timed: no input or output copy),
minus the measured cost of calling a trivial model (the per-call overhead).

A block timed alone runs with its weights hot in the caches; in a whole
subnet each layer's weights have been pushed out by the others', so the sum
of the entries falls short of the measured subnet (by about 5-25 % for
full-size MobileNetV1 with LiteRT on an AMD EPYC). The table's fixed
``overhead_us``, added once per predicted subnet, is therefore measured on
whole subnets: the per-call overhead plus the median shortfall of
``calibration_subnets`` random subnets, each measured end to end.
``validate_subnets`` other random subnets (plus the largest and smallest)
are then measured the same way against the prediction.
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

from pss_keras.cost import latency
from pss_keras.supernet import blocks, specs
from pss_keras.utils import machine, timing

# Blocks converted into one .tflite file (one signature each).
_MODELS_PER_FILE = 64


def _width(ref: blocks.Channels, channels: dict, num_classes: int) -> int:
    if ref.stage is None:
        return 3 if ref.fixed == "rgb" else num_classes
    return channels[ref.stage] * ref.factor


def block_model(
    model_name: str,
    block: blocks.BlockSpec,
    c_in: int,
    c_out: int,
    num_classes: int,
    padding: str = "same",
) -> keras.Model:
    """One block of the plan as a model with a dynamic spatial input
    ``[1, None, None, c_in]``: its layers (convs with bias, BN folded,
    padded as ``padding`` says, as in `extract_subnet`), ReLU6 where the
    plan has one, and the residual add."""
    from pss_keras.supernet.extraction import keras_padding

    if block.name == "top":
        c_out = c_in  # keyed by its input; the classifier's width is num_classes
    if block.in_stage == block.out_stage and c_in != c_out:
        raise ValueError(f"{block.name} keeps its stage's width: c_in {c_in} != c_out {c_out}.")
    channels = {block.in_stage: c_in, block.out_stage: c_out}
    inputs = keras.Input((None, None, c_in), batch_size=1, name="x")
    x = inputs
    for spec in block.layers:
        width = _width(spec.c_out, channels, num_classes)
        if spec.kind == "pool":
            x = keras.layers.GlobalAveragePooling2D()(x)
        elif spec.kind == "dense":
            x = keras.layers.Dense(width)(x)
        else:
            x, pad = keras_padding(keras, x, spec, padding)
            common = dict(strides=spec.stride, padding=pad, use_bias=True)
            if spec.kind == "conv":
                x = keras.layers.Conv2D(width, spec.kernel, **common)(x)
            else:
                x = keras.layers.DepthwiseConv2D(spec.kernel, **common)(x)
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
        """Median time of the model's computation on an input of ``shape``:
        the input is in place before the clock starts, and only what the
        model computes is timed (no copy of its input or output)."""
        x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
        run = self.calls[index](x)
        return 1000.0 * timing.median_ms(run, self.repeats, self.warmup)


def _input_spec(model):
    """Batch 1; the model's own spatial size (None for the table's blocks)."""
    return tf.TensorSpec([1, *model.inputs[0].shape[1:]], tf.float32, name="x")


def _tf_call(model):
    fn = tf.function(model, input_signature=[_input_spec(model)], jit_compile=False)

    def prepare(x):
        x = tf.constant(x)  # on the device before timing starts

        def run():
            # Fetching one value waits for the device without copying the output.
            return tf.reshape(fn(x), [-1])[0].numpy()

        return run

    return prepare


def _tflite_calls(models, threads):
    """Converts ``models`` into one multi-signature .tflite; a call per model."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ValueError(
            "--runtime=tflite needs the LiteRT interpreter (pip install ai-edge-litert, pinned "
            "in requirements.txt); or measure the served path with --runtime=tensorflow."
        ) from None

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
    return [_tflite_prepare(interpreter.get_signature_runner(name)) for name in names]


def _tflite_prepare(runner):
    """``prepare(x)``: one full call (resize, allocate, copy ``x`` in), then
    a function that invokes the signature's subgraph alone. The runner's
    ``__call__`` also copies the input in and every output out, which for
    a 112 x 112 x 64 activation is a tenth of the block's time and is no
    part of a subnet's latency; LiteRT has no public invoke-by-signature,
    so the runner's own wrapper and subgraph index are used (with the full
    call as the fallback where they are missing)."""

    def prepare(x):
        runner(x=x)
        wrapper = getattr(runner, "_interpreter_wrapper", None)
        subgraph = getattr(runner, "_subgraph_index", None)
        if wrapper is None or subgraph is None:
            return lambda: runner(x=x)
        return lambda: wrapper.Invoke(subgraph)

    return prepare


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
    calibration_subnets: int = 10,
    seed: int = 0,
    progress: bool = True,
    padding: str = "same",
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
        calibration_subnets: random subnets (others than the validation
            ones) whose median shortfall is added to the fixed overhead
            (0: the per-call overhead alone).
        seed: weights and the validation subnets.
        progress: show a progress bar.
        padding: the convs' padding, as the supernet's (`blocks.PADDINGS`;
            ``"symmetric"`` adds a pad before every 3x3 conv). The batch-norm
            epsilon does not matter: BN is folded into random weights.

    Returns:
        The table, with ``padding``, ``device``, ``runtime``, ``min_subnet_us``,
        ``max_subnet_us``, ``validation`` and ``build_seconds`` recorded.
    """
    start = time.perf_counter()
    blocks.explicit_pad(padding, 3)  # an unknown padding fails before any timing
    keras.utils.set_random_seed(seed)
    timer = _Runtime(runtime, threads, repeats, warmup)
    entries, overhead = _measure_blocks(space, timer, num_classes, progress, padding)
    gpus = machine.gpu_names() if runtime == "tensorflow" else []
    meta = {
        "runtime": runtime,
        "padding": padding,
        "runtime_version": _runtime_version(runtime),
        "device": machine.device_record(threads, gpus[0] if gpus else None),
        "num_classes": int(num_classes),
        "repeats": int(repeats),
        "warmup": int(warmup),
    }
    supernet = _random_supernet(space, num_classes, padding)
    calibration_rng = random.Random(f"calibration-{seed}")
    calibration = [space.random(calibration_rng) for _ in range(calibration_subnets)]
    calibration = _measure_subnets(supernet, calibration, timer, "calibration", progress)
    shortfall = 0.0
    if calibration:
        blocks_only = latency.LatencyTable(latency.space_dict(space), entries, overhead)
        shortfall = float(np.median([m - blocks_only.predict_us(c) for c, m in calibration]))
    meta["overhead"] = {
        "call_us": round(overhead, 3),
        "calibration_shortfall_us": round(shortfall, 3),
        "calibration_subnets": len(calibration),
    }
    table = latency.LatencyTable(latency.space_dict(space), entries, overhead + shortfall, meta)
    rng = np.random.default_rng(seed)
    r, m = space.random_arrays(10_000, rng)
    spread = table.predict_us_np(space.model_name, r, m)
    table.meta.update(
        min_subnet_us=round(table.predict_us(space.smallest()), 3),
        max_subnet_us=round(table.predict_us(space.largest()), 3),
        random_subnets_us=[round(float(spread.min()), 3), round(float(spread.max()), 3)],
    )
    if validate_subnets:
        table.meta["validation"] = validate(table, space, supernet, timer, validate_subnets, seed,
                                            progress)  # fmt: skip
    table.meta["build_seconds"] = round(time.perf_counter() - start, 1)
    return table


def _measure_blocks(space: specs.SearchSpace, timer, num_classes: int, progress: bool, padding):
    """Every block configuration of ``space`` timed on ``timer``, less the
    per-call overhead (a trivial model's time).

    Returns:
        ``({(kind, in_size, c_in, c_out): us}, overhead_us)``.
    """
    keys = latency.table_keys(space)
    plan = {latency.block_kind(space.model_name, b): b for b in blocks.plan(space.model_name)}
    groups = collections.defaultdict(list)  # (kind, c_in, c_out) -> in_sizes
    for kind, in_size, c_in, c_out in keys:
        groups[(kind, c_in, c_out)].append(in_size)
    timer.load([_trivial_model()])
    overhead = timer.time_us(0, (1, 1, 1, 8))
    bar = keras.utils.Progbar(len(keys), unit_name="block") if progress else None
    entries = {}
    group_keys = list(groups)
    for first in range(0, len(group_keys), _MODELS_PER_FILE):
        chunk = group_keys[first : first + _MODELS_PER_FILE]
        timer.load(
            [
                block_model(space.model_name, plan[k], ci, co, num_classes, padding)
                for k, ci, co in chunk
            ]
        )
        for i, (kind, c_in, c_out) in enumerate(chunk):
            for in_size in groups[(kind, c_in, c_out)]:
                us = timer.time_us(i, (1, in_size, in_size, c_in))
                entries[(kind, in_size, c_in, c_out)] = max(0.0, us - overhead)
                if bar is not None:
                    bar.add(1)
    return entries, overhead


def _runtime_version(runtime: str) -> str:
    if runtime == "tflite":
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')} (XNNPACK)"
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    return f"tensorflow {tf.__version__} ({device})"


def _random_supernet(space, num_classes, padding):
    """A supernet of ``space`` with random weights (latency does not depend on them)."""
    from pss_keras.supernet.model import Supernet

    return Supernet(**{**space.to_dict(), "num_classes": num_classes}, padding=padding)


def _measure_subnets(supernet, configs, timer, label, progress) -> list:
    """``[(config, measured us)]``: standalone models (BN folded), end to end."""
    from pss_keras.supernet.extraction import extract_subnet

    bar = keras.utils.Progbar(len(configs), unit_name=label) if progress and configs else None
    out = []
    for config in configs:
        timer.load([extract_subnet(supernet, config, fold_bn=True)])
        out.append((config, timer.time_us(0, (1, config.resolution, config.resolution, 3))))
        if bar is not None:
            bar.add(1)
    return out


def validate(table, space, supernet, timer, count, seed, progress) -> dict:
    """``count`` random subnets plus the largest and smallest, measured end to
    end (standalone models with random weights, BN folded) vs predicted."""
    py_rng = random.Random(seed)
    configs = [space.largest(), space.smallest()] + [space.random(py_rng) for _ in range(count)]
    rows = [
        {
            "config": config.to_dict(),
            "predicted_us": round(table.predict_us(config), 3),
            "measured_us": round(measured, 3),
        }
        for config, measured in _measure_subnets(supernet, configs, timer, "subnet", progress)
    ]
    predicted = [row["predicted_us"] for row in rows]
    measured = [row["measured_us"] for row in rows]
    result = {
        "subnets": len(rows),
        "mape": round(latency.mape(predicted, measured), 4),
        # None when every subnet measured (or predicted) the same: no ranking.
        "spearman": _finite_or_none(latency.spearman(predicted, measured)),
        "rows": rows,
    }
    logging.info(
        "Validation on %d subnets: mape %.3f, spearman %s", len(rows), result["mape"],
        result["spearman"],
    )  # fmt: skip
    return result


def _finite_or_none(value: float):
    return round(float(value), 4) if np.isfinite(value) else None


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
    spearman = validation["spearman"]
    lines.append(
        f"mape {validation['mape']:.3f}, spearman "
        f"{'n/a' if spearman is None else format(spearman, '.3f')} over {validation['subnets']} subnets"
    )
    return "\n".join(lines)
