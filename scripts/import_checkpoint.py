"""Imports an official PSS-Net supernet (a PyTorch checkpoint) as a job.

    python scripts/import_checkpoint.py --checkpoint=checkpoint_249.pt \
        --model_name=mobilenet_v1 --calibration_data=imagenet/train \
        [--validation_data=imagenet/val] [--lut_dirs=latency_cpu=mbv1_cpu.pkl] --job_dir=J

Reads the file without torch (nothing in it is executed), retains each
pool's best subnet plus the space's smallest and largest as tiers,
calibrates their batch norm on --calibration_data and, given
--validation_data (class folders named by ImageNet wnid), measures their
top-1. Then export.py, convert_tflite.py, evaluate.py and
train.py --init_from=J work on J as on a job trained here.
"""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

from pss_keras.supernet import specs  # noqa: E402

flags.DEFINE_string("checkpoint", None, "The official checkpoint (.pt).", required=True)
flags.DEFINE_enum(
    "model_name", None, list(specs.MODEL_NAMES), "Its architecture.", required=True
)  # fmt: skip
flags.DEFINE_string("job_dir", None, "The job directory to write (new).", required=True)
flags.DEFINE_string(
    "calibration_data", None,
    "Training images to calibrate each tier's batch norm on: a folder (any layout, e.g. "
    "ImageNet's or Imagenette's train/) or a prepared TFDS name. Without it the job is "
    "written but cannot be exported.",
)  # fmt: skip
flags.DEFINE_string(
    "validation_data", None,
    "A folder of class folders named by the model's classes (ImageNet wnids: ImageNet's "
    "val/ or Imagenette's) to measure each tier's top-1 on.",
)  # fmt: skip
flags.DEFINE_list(
    "lut_dirs", [],
    "Latency tables as TYPE=FILE (latency_cpu=mbv1_cpu.pkl): the reference's .pkl or your own "
    "(scripts/build_latency_lut.py --padding=symmetric) to predict the tiers' latency.",
)  # fmt: skip
flags.DEFINE_string("dataset_dir", None, "TFDS data_dir for a TFDS --calibration_data.")
flags.DEFINE_integer("calib_batches", 8, "Calibration batches per tier.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Calibration batch size.", lower_bound=1)
flags.DEFINE_integer("eval_batch_size", 64, "Validation batch size.", lower_bound=1)
flags.DEFINE_integer("valid_topk", 5, "Candidates kept per pool (evaluate.py).", lower_bound=1)
flags.DEFINE_integer("random_seed", 0, "Which calibration images and crops.")
F = flags.FLAGS


def _lut_paths(entries) -> dict:
    paths = {}
    for entry in entries:
        metric_type, sep, path = entry.partition("=")
        if not sep or not metric_type.strip() or not path.strip():
            raise ValueError(f"--lut_dirs entry {entry!r} is not TYPE=FILE (latency_cpu=L.pkl).")
        paths[metric_type.strip()] = path.strip()
    return paths


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    from pss_keras.training import reference_import, reference_tiers

    data = reference_import.ImportData(
        calibration=F.calibration_data,
        validation=F.validation_data,
        data_dir=F.dataset_dir,
        calib_batches=F.calib_batches,
        batch_size=F.batch_size,
        eval_batch_size=F.eval_batch_size,
        seed=F.random_seed,
    )
    try:
        retained = reference_import.import_reference(
            F.checkpoint, F.model_name, F.job_dir, data, _lut_paths(F.lut_dirs), F.valid_topk
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"\nImported {F.checkpoint} into {F.job_dir}:")
    print(reference_tiers.describe(retained))
    if not F.calibration_data:
        print(
            "The tiers are not calibrated: export refuses them. Import again with "
            "--calibration_data=<training images> to serve them."
        )


if __name__ == "__main__":
    app.run(main)
