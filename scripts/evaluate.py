"""Re-runs the end-of-training subnet selection and evaluation of a PSS run.

    python scripts/evaluate.py --job_dir=jobs/quickstart

Calibrates batch norm for the top-k subnets of every pool, picks the best per
target on minival, reports its validation accuracy and rewrites
<job_dir>/retained_subnets.json. --retain_bounds adds the space's smallest and
largest subnets as tiers. Settings come from <job_dir>/run_config.json.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

flags.DEFINE_string("job_dir", None, "Job directory of a training run.", required=True)
flags.DEFINE_string("checkpoint", None, "Checkpoint directory (default: the latest).")
flags.DEFINE_integer("valid_topk", None, "Subnets per pool to evaluate (default: the run's).")
flags.DEFINE_integer("calib_batches", None, "Calibration batches (default: the run's).")
flags.DEFINE_string("dataset_dir", None, "TFDS data_dir, if it moved since training.")
flags.DEFINE_enum(
    "selection", None, ["minival", "val_best_of_topk"],
    "Choose each pool's subnet on minival (honest) or on validation (the reference's "
    "protocol). Default: the run's.",
)  # fmt: skip
flags.DEFINE_bool(
    "retain_bounds", None,
    "Also retain the space's smallest and largest subnets as tiers 'smallest' and 'largest' "
    "(default: the run's --retain_bounds).",
)  # fmt: skip
F = flags.FLAGS


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    from pss_keras.training import driver as training

    try:
        retained = training.evaluate_job(
            F.job_dir,
            F.checkpoint,
            F.valid_topk,
            F.calib_batches,
            F.dataset_dir,
            selection=F.selection,
            bounds=F.retain_bounds,
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"{'tier':<24}{'MFLOPs':>9}{'val top1':>10}{'val top5':>10}{'minival top1':>14}")
    for e in retained:
        print(
            f"{e['name']:<24}{e['mflops']:>9.2f}{e['top1']:>10.3f}{e['top5']:>10.3f}"
            f"{e['minival_top1']:>14.3f}"
        )


if __name__ == "__main__":
    app.run(main)
