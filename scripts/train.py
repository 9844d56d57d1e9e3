"""Trains a PSS supernet and retains the best subnet of every target (or, with
--subnet, trains one subnet alone and retains it).

    python scripts/train.py --flagfile=quickstart.flags    # minutes, no download
    python scripts/train.py --flagfile=mbv1.flags --dataset_dir=...  # the paper's run
    python scripts/train.py --flagfile=mbv1_c.flags --lut_dirs=mbv1_cpu.pkl --dry_run  # check it
    python scripts/train.py --flagfile=quickstart.flags --init_from=jobs/quickstart \
        --subnet=flops_1p6m --epochs=5 --lr=0.01 --job_dir=jobs/quickstart_ft  # one tier alone

Flags follow the reference implementation's argument names where it has
one. Re-running with the same --job_dir resumes from its last checkpoint.

Exit status: 0 done (or a dry run whose settings would start); 1 an error
(one line: a bad flag or dataset, training that diverged, or every retained
tier at chance, which still writes the job's results); 143 (SIGTERM) or 130
(SIGINT): stopped at a step boundary after writing a checkpoint there; the
same command resumes.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

from pss_keras.jobs.config import BAD_IMAGES, PRECISIONS, STRATEGIES  # noqa: E402
from pss_keras.supernet import specs  # noqa: E402

F = flags.FLAGS
flags.DEFINE_string("job_dir", None, "Output directory (checkpoints, logs, retained subnets).")
flags.DEFINE_string("dataset", "synthetic_shapes", "TFDS name, image folder, or synthetic_shapes.")
flags.DEFINE_string("dataset_dir", None, "TFDS data_dir (and where synthetic_shapes is built).")
flags.DEFINE_string("manual_dir", None, "TFDS manual_dir (e.g. imagenet2012's archives).")
flags.DEFINE_enum("model_name", "mobilenet_v1", list(specs.MODEL_NAMES), "Architecture.")
flags.DEFINE_float("width_scale", 1.0, "Global width scale (1.0: MobileNet; 0.25: tiny).")
flags.DEFINE_list("resolution_range", ["128", "224"], "min,max subnet resolution.")
flags.DEFINE_integer("resolution_step", 8, "Resolution grid step.")
flags.DEFINE_list("width_mult_range", ["0.75", "1.0"], "min,max stage width multiplier.")
flags.DEFINE_list(
    "infer_metric_types", ["flops"],
    "Metric types with pools: flops, latency_cpu, latency_gpu (several: PSS-Net_M).",
)  # fmt: skip
flags.DEFINE_list(
    "lut_dirs", None,
    "One per metric type: None for flops, a latency table for each latency type: your "
    "own (.json, scripts/build_latency_lut.py) or the reference's (.pkl, the paper's targets).",
)  # fmt: skip
flags.DEFINE_list(
    "infer_metric_target_range_starts", ["110"],
    "First target per metric type (MFLOPs; latency in microseconds).",
)  # fmt: skip
flags.DEFINE_list("infer_metric_target_range_stops", ["570"], "Last target per metric type.")
flags.DEFINE_list("infer_metric_target_steps", ["10"], "Target step per metric type.")
flags.DEFINE_integer("gen_map_num", 100_000, "Random subnets drawn for the conditional sampler.")
flags.DEFINE_integer("pool_size", 50, "Subnets per pool (P).")
flags.DEFINE_float("metric_lambda", 0.9, "EMA lambda of pool scores.")
flags.DEFINE_list("supernet_p_range", ["1.0", "0.01"], "p_space schedule start,end.")
flags.DEFINE_list("pool_softmax_t_range", ["1.0", "0.01"], "Pool softmax temperature start,end.")
flags.DEFINE_enum(
    "strategy", "auto", list(STRATEGIES),
    "tf.distribute strategy: auto (multi_worker when TF_CONFIG names several tasks, mirrored "
    "when several GPUs are visible, else default), default, mirrored, multi_worker.",
)  # fmt: skip
flags.DEFINE_enum(
    "mixed_precision", "none", list(PRECISIONS),
    "Compute dtype: none (float32), float16 (GPUs; with loss scaling), bfloat16 (TPUs, "
    "recent CPUs/GPUs). Variables, checkpoints and exports stay float32.",
)  # fmt: skip
flags.DEFINE_integer(
    "cpu_replicas", 1, "Split the CPU into N logical devices (mirrored on CPU).", lower_bound=1
)
flags.DEFINE_integer("epochs", 250, "Training epochs.")
flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
flags.DEFINE_integer("eval_batch_size", 256, "Evaluation batch size.")
flags.DEFINE_float(
    "lr", 0.3,
    "Peak learning rate for a global batch of --lr_batch_size (cosine decay per step).",
)  # fmt: skip
flags.DEFINE_integer(
    "lr_batch_size", 1024,
    "The global batch --lr is for: the rate in use is lr x batch_size / lr_batch_size (the "
    "linear scaling rule); 0 uses --lr as given.",
    lower_bound=0,
)  # fmt: skip
flags.DEFINE_float("momentum", 0.9, "SGD (Nesterov) momentum.")
flags.DEFINE_float("weight_decay", 1e-4, "L2 on conv and dense kernels.")
flags.DEFINE_float(
    "warmup_epochs", None,
    "Linear warm-up epochs. Default: 5 (at most half the run) when the batch rule scales the "
    "rate up, else 0.",
)  # fmt: skip
flags.DEFINE_list("crop_scale", ["0.25", "1.0"], "Random-resized-crop area range.")
flags.DEFINE_integer(
    "minival_examples", 10000,
    "About this many training examples held out to choose subnets: every k-th record, "
    "k = training records // this (the run header states the count).",
)  # fmt: skip
flags.DEFINE_integer("calib_batches", 8, "Batches for post-BN calibration.")
flags.DEFINE_integer("valid_topk", 5, "Top subnets of every pool evaluated at the end.")
flags.DEFINE_enum(
    "selection", "minival", ["minival", "val_best_of_topk"],
    "How each pool's tier is chosen among its top-k: on minival (held-out training data; the "
    "reported validation accuracy is then not selected on itself) or on validation (the "
    "reference's protocol, for comparing with the paper).",
)  # fmt: skip
flags.DEFINE_integer(
    "validate_every", 0,
    "Validate the largest and smallest subnets (calibrated BN) every N epochs; 0: never.",
    lower_bound=0,
)  # fmt: skip
flags.DEFINE_float(
    "val_fraction", 0.1,
    "An image folder with train/ only: the share of every class held out for validation "
    "(drawn with --random_seed; the job saves the split).",
)  # fmt: skip
flags.DEFINE_enum("cache", "auto", ["auto", "true", "false"], "Cache decoded images in memory.")
flags.DEFINE_bool(
    "retain_bounds", False,
    "Also retain the space's smallest and largest subnets (trained by every sandwich step) as "
    "tiers 'smallest' and 'largest', widening the cost range a deployment switches over.",
)  # fmt: skip
flags.DEFINE_enum(
    "bad_images", "fail", list(BAD_IMAGES),
    "Images that fail to decode (garbage, truncated, unreadable): fail (stop, naming them) "
    "or skip (train without them; their names and count are logged).",
)  # fmt: skip
flags.DEFINE_integer("random_seed", 0, "Seed of weights, data order, augmentation, sampling.")
flags.DEFINE_integer(
    "keep_checkpoints", 2, "Checkpoints kept in job_dir (epoch and step checkpoints alike)."
)
flags.DEFINE_integer(
    "checkpoint_every_steps", 0,
    "Also checkpoint every N steps inside an epoch (long epochs, preemptible machines); 0: at "
    "epoch ends only. SIGTERM / SIGINT always checkpoint at the next step boundary.",
    lower_bound=0,
)  # fmt: skip
flags.DEFINE_string(
    "init_from", None,
    "Start a new run from: imagenet (keras.applications' ImageNet weights; Keras's download "
    "and cache), a keras.applications weights file (.h5), or another run's --job_dir. A "
    "different class count re-initializes the classifier only; a resume never re-imports.",
)  # fmt: skip
flags.DEFINE_string(
    "subnet", None,
    "Train one subnet alone (plain cross-entropy, no pools) instead of the supernet: a tier "
    "of the --init_from job (fine-tunes it from the job's weights), or RES:m1,...,mN (a "
    "resolution and one width multiplier per stage, or one for all; from scratch unless "
    "--init_from). The job retains that one tier.",
)  # fmt: skip
flags.DEFINE_bool(
    "distill_from_largest", False,
    "With --subnet and --init_from=JOB: train the subnet on the KL divergence from JOB's "
    "largest subnet (frozen; one more forward pass a step) instead of the labels.",
)  # fmt: skip
flags.DEFINE_integer("tensorboard_update_freq", 50, "Steps between TensorBoard step scalars.")
flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (0, 1 or 2).")
flags.DEFINE_bool(
    "fail_at_chance",
    True,
    "Exit 1 when every retained tier's validation top-1 is within 0.02 of chance (a run that "
    "learned nothing); --nofail_at_chance for smoke runs on tiny data.",
)
flags.DEFINE_bool(
    "dry_run", False,
    "Check every flag, count the data, build the sampler's maps and print the run header and "
    "every target reached or not; train nothing, write nothing under --job_dir.",
)  # fmt: skip


def _pair(name, cast):
    values = getattr(F, name)
    if len(values) != 2:
        raise ValueError(f"--{name} needs two comma-separated values, got {values}.")
    return tuple(cast(v) for v in values)


def _config():
    from pss_keras.jobs.config import DataConfig, TrainConfig
    from pss_keras.jobs.directory import inherited_architecture, with_subnet
    from pss_keras.jobs.targets import MetricTargets

    if not F.job_dir:
        raise ValueError("--job_dir is required (where checkpoints and results go).")
    targets = MetricTargets.parse(
        F.infer_metric_types,
        F.infer_metric_target_range_starts,
        F.infer_metric_target_range_stops,
        F.infer_metric_target_steps,
        F.lut_dirs,
    )
    resolution = _pair("resolution_range", int)
    config = TrainConfig(
        job_dir=F.job_dir,
        data=DataConfig(
            dataset=F.dataset,
            data_dir=F.dataset_dir,
            manual_dir=F.manual_dir,
            image_size=resolution[1],
            batch_size=F.batch_size,
            eval_batch_size=F.eval_batch_size,
            minival_examples=F.minival_examples,
            crop_scale=_pair("crop_scale", float),
            cache=F.cache,
            seed=F.random_seed,
            bad_images=F.bad_images,
            val_fraction=F.val_fraction,
        ),
        model_name=F.model_name,
        width_scale=F.width_scale,
        resolution_range=resolution,
        resolution_step=F.resolution_step,
        width_range=_pair("width_mult_range", float),
        # A job's padding and BN epsilon come with its weights (--init_from).
        **inherited_architecture(F.init_from),
        flops_targets=targets.flops or TrainConfig.flops_targets,
        metric_types=targets.metric_types,
        latency_targets=targets.latency_targets,
        lut_paths=targets.lut_paths,
        num_map_samples=F.gen_map_num,
        pool_size=F.pool_size,
        pool_ema=F.metric_lambda,
        p_space=_pair("supernet_p_range", float),
        temperature=_pair("pool_softmax_t_range", float),
        epochs=F.epochs,
        lr=F.lr,
        lr_batch_size=F.lr_batch_size,
        momentum=F.momentum,
        weight_decay=F.weight_decay,
        warmup_epochs=F.warmup_epochs,
        calib_batches=F.calib_batches,
        topk=F.valid_topk,
        seed=F.random_seed,
        keep_checkpoints=F.keep_checkpoints,
        checkpoint_every_steps=F.checkpoint_every_steps,
        init_from=F.init_from or "",
        tensorboard_update_freq=F.tensorboard_update_freq,
        verbose=F.verbose,
        strategy=F.strategy,
        mixed_precision=F.mixed_precision,
        selection=F.selection,
        retain_bounds=F.retain_bounds,
        validate_every=F.validate_every,
        distill_from_largest=F.distill_from_largest,
    )
    return with_subnet(config, F.subnet) if F.subnet is not None else config


def _dry_run(config):
    from pss_keras.training.dry_run import dry_run

    plan, problem = dry_run(config)
    print("\n".join(plan.dry_run_report()))
    if problem:
        raise ValueError(f"this run would not start: {problem}")
    data = " (its data is not usable here: see the data line)" if plan.data_error else ""
    print(
        f"Dry run: the settings would start a run{data}. Nothing was written under {config.job_dir}."
    )


def _end_progress_bar():
    """Ends the line of Keras's progress bar (--verbose=1), so that the
    message after a stop mid-epoch is a line of its own."""
    if F.verbose == 1:
        print(flush=True)


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    from pss_keras.jobs.directory import RETAINED
    from pss_keras.training import distribution
    from pss_keras.training import driver as training
    from pss_keras.training.divergence import DivergenceError
    from pss_keras.training.preemption import TrainingInterrupted

    try:
        distribution.configure_cpu_replicas(F.cpu_replicas)  # before TF runs anything
        config = _config()
        config.validate()
        if F.dry_run:
            _dry_run(config)
            return
        summary = training.train(config)
    except TrainingInterrupted as e:  # SIGTERM / SIGINT: checkpointed, resumable
        _end_progress_bar()
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_status)
    except ValueError as e:  # includes DatasetError: one line, no stack trace
        if isinstance(e, DivergenceError):
            _end_progress_bar()
        sys.exit(f"error: {e}")
    if summary["retained"] is None:  # a multi-worker run's non-chief worker
        print(f"Worker done; the chief writes {summary['job_dir']}/{RETAINED}.")
        return
    print(f"\nRetained subnets ({summary['job_dir']}/{RETAINED}):")
    latency_types = sorted({m for entry in summary["retained"] for m in entry["predicted_us"]})
    print(
        f"{'tier':<24}{'MFLOPs':>9}{'params':>11}{'val top1':>10}{'val top5':>10}"
        + "".join(f"{m + ' us':>16}" for m in latency_types)
    )
    for entry in summary["retained"]:
        print(
            f"{entry['name']:<24}{entry['mflops']:>9.2f}{entry['params']:>11,}"
            f"{entry['top1']:>10.3f}{entry['top5']:>10.3f}"
            + "".join(f"{entry['predicted_us'][m]:>16.1f}" for m in latency_types)
        )
    print(f"wall time {summary['wall_seconds']:.0f} s (sampler map {summary['map_seconds']:.2f} s)")
    if F.fail_at_chance and training.at_chance(summary["retained"], summary["num_classes"]):
        sys.exit(
            f"error: every retained tier is at chance (top-1 within {training.CHANCE_MARGIN} of "
            f"1/{summary['num_classes']}): the run learned nothing. Check the data and labels, "
            "lower --lr or train longer (a new --job_dir); nothing should be exported from "
            f"{summary['job_dir']}."
        )


if __name__ == "__main__":
    app.run(main)
