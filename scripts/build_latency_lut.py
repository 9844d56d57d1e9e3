"""Measures a latency look-up table for a supernet's search space, here.

    python scripts/build_latency_lut.py --model_name=mobilenet_v1 --width_scale=0.25 \
        --resolution_range=32,64 --runtime=tflite --threads=1 --validate_subnets=30 \
        --output=L.json

Every block configuration the space can produce is timed on this machine
(median of repeats after warm-up, minus the per-call overhead); the fixed
overhead added once per subnet is the per-call overhead plus the median
shortfall of ``--calibration_subnets`` whole subnets against the sum of
their blocks; then ``--validate_subnets`` other random subnets are measured
end to end against the table's prediction. Use the same search-space flags as
train.py, and the job's --padding (symmetric for a job imported from the
official PSS-Net checkpoints); pass the file to train.py with
--infer_metric_types=...,latency_cpu --lut_dirs=...,L.json (latency targets in
microseconds).
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

from pss_keras.cost import latency
from pss_keras.supernet import blocks, specs  # noqa: E402

F = flags.FLAGS
flags.DEFINE_enum("model_name", "mobilenet_v1", list(specs.MODEL_NAMES), "Architecture.")
flags.DEFINE_float("width_scale", 1.0, "Global width scale (as train.py).")
flags.DEFINE_list("resolution_range", ["128", "224"], "min,max subnet resolution.")
flags.DEFINE_integer("resolution_step", 8, "Resolution grid step.")
flags.DEFINE_list("width_mult_range", ["0.75", "1.0"], "min,max stage width multiplier.")
flags.DEFINE_enum(
    "runtime", "tflite", list(latency.RUNTIMES),
    "tflite: LiteRT with XNNPACK (mobile-like CPU path); tensorflow: the served path "
    "(CPU, or the GPU when TensorFlow sees one).",
)  # fmt: skip
flags.DEFINE_integer(
    "threads", 1, "Inference threads (LiteRT threads; TF intra-op threads).", lower_bound=1
)
flags.DEFINE_enum(
    "padding", "same", list(blocks.PADDINGS),
    "The 3x3 convs' padding, as the supernet's: same (Keras's, this project's supernets); "
    "symmetric: the official PSS-Net PyTorch supernets' 3x3 padding (for a job imported from "
    "their checkpoints).",
)  # fmt: skip
flags.DEFINE_integer("num_classes", 1000, "Classifier outputs of the measured top block.")
flags.DEFINE_integer("repeats", 10, "Timed calls per entry (median).", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed calls per entry first.", lower_bound=0)
flags.DEFINE_integer("validate_subnets", 30, "Random subnets measured end to end.", lower_bound=0)
flags.DEFINE_integer(
    "calibration_subnets", 10,
    "Random subnets (not the validation ones) measured end to end; their median shortfall "
    "against the sum of blocks is added to the fixed overhead.",
    lower_bound=0,
)  # fmt: skip
flags.DEFINE_integer("seed", 0, "Seed of the random weights and validation subnets.")
flags.DEFINE_string("output", None, "Where to write the table (JSON).")


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # one line per conversion
    try:
        if not F.output:
            raise ValueError("--output=FILE.json is required (where the table goes).")
        if len(F.resolution_range) != 2 or len(F.width_mult_range) != 2:
            raise ValueError("--resolution_range and --width_mult_range need min,max.")
        space = specs.SearchSpace(
            model_name=F.model_name,
            resolution_range=tuple(int(v) for v in F.resolution_range),
            resolution_step=F.resolution_step,
            width_range=tuple(float(v) for v in F.width_mult_range),
            width_scale=F.width_scale,
            num_classes=F.num_classes,
        )
        folder = os.path.dirname(os.path.abspath(F.output))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ValueError(f"--output={F.output}: {folder} is not a writable folder.")
    except ValueError as e:
        sys.exit(f"error: {e}")
    import tensorflow as tf

    if F.runtime == "tensorflow":
        tf.config.threading.set_intra_op_parallelism_threads(F.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from pss_keras.cost import latency_measurement
    from pss_keras.utils import machine

    keys = latency.table_keys(space)
    print(f"Measuring {len(keys):,} block configurations of {space.model_name} "
          f"(width {space.width_scale:g}, {space.resolution_range[0]}..{space.resolution_range[1]}"
          f" px, {F.padding} padding) with {F.runtime}, {F.threads} thread(s).")  # fmt: skip
    try:
        table = latency_measurement.build_table(
            space,
            runtime=F.runtime,
            threads=F.threads,
            num_classes=F.num_classes,
            repeats=F.repeats,
            warmup=F.warmup,
            validate_subnets=F.validate_subnets,
            calibration_subnets=F.calibration_subnets,
            seed=F.seed,
            padding=F.padding,
        )
        print(latency_measurement.format_validation(table))
        table.meta["machine"] = machine.print_machine()
        table.save(F.output)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    meta = table.meta
    print(
        f"Wrote {F.output}: {len(table.entries):,} entries, overhead {table.overhead_us:.1f} us "
        f"(call {meta['overhead']['call_us']:.1f} + shortfall of whole subnets "
        f"{meta['overhead']['calibration_shortfall_us']:.1f}), "
        f"smallest subnet {meta['min_subnet_us']:.1f} us, largest {meta['max_subnet_us']:.1f} us "
        f"(random subnets {meta['random_subnets_us'][0]:.1f}..{meta['random_subnets_us'][1]:.1f}"
        f" us); device: {machine.describe_device(table.device)}; "
        f"built in {meta['build_seconds']:.0f} s."
    )


if __name__ == "__main__":
    app.run(main)
