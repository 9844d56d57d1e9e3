"""Input pipelines: where training and evaluation images come from.

pipelines       TFDS datasets and image folders, checked and split; the
                training augmentation; `Pipelines` (train/minival/val/calibration)
preprocessing   the one evaluation transform, shared by training,
                the SavedModel and TFLite
toydata         synthetic_shapes, a generated set that needs no download
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "DatasetError": "pipelines",
    "BadImageError": "pipelines",
    "decode_checked": "pipelines",
    "SKIP_HINT": "pipelines",
    "SplitRecords": "pipelines",
    "DatasetSource": "pipelines",
    "interleave_positions": "pipelines",
    "SMALL_CLASS_FRACTION": "pipelines",
    "class_counts": "pipelines",
    "check_folder_classes": "pipelines",
    "split_examples": "pipelines",
    "load_source": "pipelines",
    "train_transform": "pipelines",
    "Pipelines": "pipelines",
    "MEAN_RGB": "preprocessing",
    "STDDEV_RGB": "preprocessing",
    "eval_transform": "preprocessing",
    "normalize": "preprocessing",
    "to_pixels": "preprocessing",
    "to_rgb": "preprocessing",
    "make_synthetic_shapes": "toydata",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
