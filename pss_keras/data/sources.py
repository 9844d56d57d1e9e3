"""Where the images come from: a TFDS dataset, an image folder or the
generated set, as a `DatasetSource` (its splits decoded and as records).

Sources (``DataConfig.dataset``, `load_source`):
* any TFDS image-classification name (``imagenet2012`` with its
  ``manual_dir``, ``imagenette``, ...), prepared in ``data_dir``;
* a local folder with ``train/`` and ``val/`` (or ``validation/``, ``test/``)
  holding one sub-folder per class (TFDS's ImageFolder layout), or
  ``train/`` alone, split (`pss_keras.data.splits`);
* ``synthetic_shapes``: the generated set of `pss_keras.data.toydata`, built in
  ``data_dir`` on first use (no download).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import tensorflow as tf

from pss_keras.data.decoding import DatasetError
from pss_keras.data.records import (
    SplitRecords,
    decoded_records,
    file_records,
    imagefolder_examples,
    shard_records,
    undecoded_records,
)
from pss_keras.data.splits import (
    apply_split,
    check_folder_classes,
    class_counts,
    label_counts,
    split_examples,
)
from pss_keras.jobs.config import SYNTHETIC, DataConfig


@dataclasses.dataclass
class DatasetSource:
    """One dataset: its splits decoded, ``(image uint8 [h, w, 3], label
    int64)`` in their fixed order (``train``, ``validation``), and
    undecoded (`SplitRecords`: any chunk order, bad images handled by
    `Pipelines`)."""

    name: str
    train: tf.data.Dataset
    validation: tf.data.Dataset
    num_train: int
    num_validation: int
    class_names: list
    train_records: SplitRecords | None = None
    validation_records: SplitRecords | None = None
    # A train-only folder's split (`split_examples`), which a job saves.
    split: dict | None = None
    # Training images per class (image folders; None where unknown unread).
    train_class_counts: dict | None = None

    def __post_init__(self):
        if self.train_records is None:
            self.train_records = decoded_records(self.train, f"{self.name} train")
        if self.validation_records is None:
            self.validation_records = decoded_records(self.validation, f"{self.name} validation")


def _folder_records(builder, split: str) -> SplitRecords | None:
    """A folder split's images as one-file chunks, in TFDS ImageFolder's order
    (None if this TFDS version does not expose it: the fixed order then)."""
    examples = imagefolder_examples(builder, split)  # as_dataset's order: the indices match
    if examples is None:
        logging.warning(
            "This TFDS version does not list ImageFolder's %s files: an unreadable %s image is "
            "named by its record index, not its file%s.",
            split, split,
            "; a streamed training set is read in its fixed order through the shuffle buffer"
            if split == "train"
            else "",
        )  # fmt: skip
        return None
    return file_records(examples, builder.info.features)


def _folder_source(
    path: str, val_fraction: float = 0.0, seed: int = 0, split: dict | None = None
) -> DatasetSource:
    """An image folder: ``train/`` and ``val/`` (or ``validation/`` or
    ``test/``) of class folders, or ``train/`` alone, whose images are then
    split (`split_examples`: ``val_fraction`` of every class, a function of
    ``seed``; or the saved ``split`` of an earlier run)."""
    import tensorflow_datasets as tfds

    splits = [s for s in os.listdir(path) if os.path.isdir(os.path.join(path, s))]
    val_split = next((s for s in ("val", "validation", "test") if s in splits), None)
    if split is not None:
        val_split = None  # the job's saved split of train/, whatever was added since
    if "train" not in splits or (val_split is None and not (val_fraction or split)):
        raise DatasetError(
            f"Image folder {path} needs train/ and val/ (or validation/ or test/) "
            f"sub-folders with one folder per class, or train/ alone with --val_fraction > 0 "
            f"to split it; found {sorted(splits)}."
        )
    builder = tfds.folder_dataset.ImageFolder(path)
    counts = {name: info.num_examples for name, info in builder.info.splits.items()}
    if not counts.get("train"):
        raise DatasetError(f"Image folder {path}/train holds no images (.jpg/.jpeg/.png).")
    name = os.path.basename(os.path.normpath(path))
    if val_split is not None:
        check_folder_classes(path, builder, val_split)
        return DatasetSource(
            name=name,
            train=builder.as_dataset(split="train", as_supervised=True, shuffle_files=False),
            validation=builder.as_dataset(split=val_split, as_supervised=True, shuffle_files=False),
            num_train=counts["train"],
            num_validation=counts.get(val_split, 0),
            class_names=list(builder.info.features["label"].names),
            train_class_counts=class_counts(builder, "train"),
            train_records=_folder_records(builder, "train") or undecoded_records(builder, "train"),
            validation_records=(
                _folder_records(builder, val_split) or undecoded_records(builder, val_split)
            ),
        )
    check_folder_classes(path, builder, None)
    examples = imagefolder_examples(builder, "train", required=True)
    if split is None:
        split = split_examples(path, examples, val_fraction, seed)
    train, validation = apply_split(path, examples, split)
    features = builder.info.features
    train_records = file_records(train, features)
    validation_records = file_records(validation, features)
    return DatasetSource(
        name=name,
        train=train_records.fixed_order().map(lambda i, example: example),
        validation=validation_records.fixed_order().map(lambda i, example: example),
        num_train=len(train),
        num_validation=len(validation),
        class_names=list(features["label"].names),
        train_records=train_records,
        validation_records=validation_records,
        split=split,
        train_class_counts=label_counts(train, features["label"].names),
    )


def _tfds_source(
    name: str, data_dir: str | None, manual_dir: str | None, prepare: bool = True
) -> DatasetSource:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError and friends
        raise DatasetError(
            f"Unknown dataset {name!r}: not a TFDS dataset name and not an existing image "
            f"folder ({type(e).__name__}). Pass a TFDS name (e.g. imagenet2012, imagenette), "
            "a folder with train/ and val/ class sub-folders, or synthetic_shapes."
        ) from None
    if not builder.info.splits or not tf.io.gfile.exists(builder.data_dir):
        if not prepare:
            raise DatasetError(
                f"Dataset {name!r} is not prepared in {builder.data_dir}; not downloaded or "
                "prepared now (the run itself prepares it, from --manual_dir for manual datasets)."
            )
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
            )
        except Exception as e:
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            reason = reason.rstrip(":. ")
            raise DatasetError(
                f"Dataset {name!r} is not prepared in {builder.data_dir} and could not be "
                f"prepared here ({reason}). Prepare it once with network access "
                f"(`tfds build {name}`), or for manual datasets such as imagenet2012 put the "
                "downloaded archives in the manual directory (--manual_dir), or point the data "
                "directory (--dataset_dir) at where it is prepared."
            ) from None
    splits = builder.info.splits
    val_split = next((s for s in ("validation", "val", "test") if s in splits), None)
    if "train" not in splits or val_split is None:
        raise DatasetError(
            f"Dataset {name!r} needs a train and a validation/test split; it has {list(splits)}."
        )
    if "image" not in builder.info.features or "label" not in builder.info.features:
        raise DatasetError(f"Dataset {name!r} is not an image classification dataset.")
    read = dict(as_supervised=True, shuffle_files=False)
    return DatasetSource(
        name=name,
        train=builder.as_dataset(split="train", **read),
        validation=builder.as_dataset(split=val_split, **read),
        num_train=splits["train"].num_examples,
        num_validation=splits[val_split].num_examples,
        class_names=list(builder.info.features["label"].names),
        train_records=shard_records(builder, "train"),
        validation_records=shard_records(builder, val_split),
    )


def load_source(
    config: DataConfig, split: dict | None = None, prepare: bool = True
) -> DatasetSource:
    """Finds (and for ``synthetic_shapes`` builds) the dataset.

    Args:
        config: the data settings.
        split: a train-only image folder's saved split (`split_examples`;
            a job's, so that its evaluation sees its split); None splits it
            afresh with ``config.val_fraction`` and ``config.seed``.
        prepare: download and prepare a TFDS dataset that is not prepared
            (False: say so instead, e.g. for a dry run).

    Raises:
        DatasetError: with one line that says what is missing and how to
            provide it.
    """
    dataset = config.dataset
    if dataset == SYNTHETIC:
        from pss_keras.data import toydata

        root = os.path.join(config.data_dir or os.path.expanduser("~/.cache/pss_keras"), SYNTHETIC)
        return _folder_source(toydata.make_synthetic_shapes(root))
    if os.path.sep in dataset or os.path.isdir(dataset):
        if not os.path.isdir(dataset):
            raise DatasetError(f"Image folder {dataset} does not exist.")
        return _folder_source(dataset, config.val_fraction, config.seed, split)
    return _tfds_source(dataset, config.data_dir, config.manual_dir, prepare)
