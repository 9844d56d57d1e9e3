"""The flags the study scripts share (compare_sampling.py, compare_standalone.py,
subnet_spread.py, compare_sampling_paired.py): where the data is, the
supernet's space and its recipe.

Each script calls `define` with its own defaults, then `train_config` for
the run of one seed; it adds its own flags beside them.
"""

import os
import sys

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The recipe of the sampling study on Imagenette (docs/benchmarks.md).
DEFAULTS = {
    "model_name": "mobilenet_v1",
    "width_scale": 0.5,
    "resolution_range": ["64", "128"],
    "width_mult_range": ["0.75", "1.0"],
    "flops_targets": ["10", "45", "5"],
    "epochs": 24,
    "batch_size": 64,
    "lr": 0.1,
    "warmup_epochs": 1.0,
    "minival_examples": 500,
    "gen_map_num": 100_000,
    "pool_size": 50,
    "valid_topk": 5,
    "calib_batches": 8,
}


def define(**defaults) -> None:
    """Defines the shared flags; ``defaults`` override `DEFAULTS`."""
    d = {**DEFAULTS, **defaults}
    flags.DEFINE_string("dataset", None, "Image folder or TFDS name (default: Imagenette tar).")
    flags.DEFINE_string(
        "imagenette_tar",
        os.path.join(ROOT, "..", "shared", "data", "imagenette2-224.tar"),
        "Imagenette tar used when --dataset is not given.",
    )
    flags.DEFINE_string("data_cache", "/tmp/pss_keras_data", "Where the tar is unpacked.")
    flags.DEFINE_string("model_name", d["model_name"], "Architecture.")
    flags.DEFINE_float("width_scale", d["width_scale"], "Global width scale.")
    flags.DEFINE_list("resolution_range", d["resolution_range"], "min,max subnet resolution.")
    flags.DEFINE_list("width_mult_range", d["width_mult_range"], "min,max stage multiplier.")
    flags.DEFINE_list("flops_targets", d["flops_targets"], "FLOPs targets start,stop,step (M).")
    flags.DEFINE_integer("epochs", d["epochs"], "Epochs of every supernet.")
    flags.DEFINE_integer("batch_size", d["batch_size"], "Global batch size.")
    flags.DEFINE_float("lr", d["lr"], "Peak learning rate (cosine).")
    flags.DEFINE_float("warmup_epochs", d["warmup_epochs"], "Linear warm-up epochs.")
    flags.DEFINE_integer(
        "minival_examples", d["minival_examples"],
        "About this many training images held out to choose tiers (every k-th record, k = "
        "records // this: 500 holds out 527 of Imagenette's 9,469, 1,500 holds out 1,579).",
    )  # fmt: skip
    flags.DEFINE_integer("gen_map_num", d["gen_map_num"], "Subnets drawn for the sampler's map.")
    flags.DEFINE_integer("pool_size", d["pool_size"], "Subnets per pool.")
    flags.DEFINE_integer("valid_topk", d["valid_topk"], "Top subnets of every pool evaluated.")
    flags.DEFINE_integer("calib_batches", d["calib_batches"], "Batches of post-BN calibration.")
    flags.DEFINE_string("output_dir", os.path.join(ROOT, "docs", "results"), "Results folder.")


def dataset() -> str:
    """--dataset, else Imagenette unpacked from --imagenette_tar."""
    from pss_keras.training.studies import imagenette_folder

    f = flags.FLAGS
    return f.dataset or imagenette_folder(f.imagenette_tar, f.data_cache)


def train_config(job_dir: str, dataset: str, seed: int, **overrides):
    """The PSS run of the shared flags for one seed (``overrides``: other
    `pss_keras.jobs.config.TrainConfig` fields, e.g. ``p_space``)."""
    from pss_keras.jobs import config as cfg

    f = flags.FLAGS
    resolution = tuple(int(v) for v in f.resolution_range)
    settings = dict(
        job_dir=job_dir,
        data=cfg.DataConfig(
            dataset=dataset,
            image_size=resolution[1],
            batch_size=f.batch_size,
            eval_batch_size=256,
            minival_examples=f.minival_examples,
            seed=seed,
        ),
        model_name=f.model_name,
        width_scale=f.width_scale,
        resolution_range=resolution,
        width_range=tuple(float(v) for v in f.width_mult_range),
        flops_targets=tuple(float(v) for v in f.flops_targets),
        num_map_samples=f.gen_map_num,
        pool_size=f.pool_size,
        epochs=f.epochs,
        lr=f.lr,
        warmup_epochs=f.warmup_epochs,
        calib_batches=f.calib_batches,
        topk=f.valid_topk,
        seed=seed,
        verbose=2,
    )
    return cfg.TrainConfig(**{**settings, **overrides})


def run(study, *args):
    """``study(*args)``, as a script ends: a bad setting or input exits with
    its one line (``error: ...``); SIGTERM or Ctrl-C, checkpointed, exits
    with the signal's status (the same command resumes)."""
    from pss_keras.training.preemption import TrainingInterrupted

    try:
        return study(*args)
    except ValueError as e:
        sys.exit(f"error: {e}")
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        sys.exit(e.exit_status)
