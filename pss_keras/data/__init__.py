"""Input pipelines: where training and evaluation images come from.

sources         TFDS datasets, image folders and synthetic_shapes, found
                (and prepared) as a DatasetSource
records         a split's undecoded records in chunks (image files, TFRecord
                shards), readable in any order, each with its fixed index
splits          an image folder's classes checked; a train-only folder split
decoding        images that fail to decode: found, named, failed or skipped
augmentation    the training augmentation (stateless)
pipelines       `Pipelines`: train / minival / validation / calibration
preprocessing   the one evaluation transform, shared by training,
                the SavedModel and TFLite
toydata         synthetic_shapes, a generated set that needs no download
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "DatasetError": "decoding",
    "BadImageError": "decoding",
    "decode_checked": "decoding",
    "SKIP_HINT": "decoding",
    "SplitRecords": "records",
    "interleave_positions": "records",
    "DatasetSource": "sources",
    "load_source": "sources",
    "SMALL_CLASS_FRACTION": "splits",
    "class_counts": "splits",
    "check_folder_classes": "splits",
    "split_examples": "splits",
    "train_transform": "augmentation",
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
