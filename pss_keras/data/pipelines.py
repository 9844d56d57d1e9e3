"""Input pipelines: TFDS datasets or a local image folder, with the method's
ImageNet augmentation for training and resize/centre-crop for evaluation.

Sources (``DataConfig.dataset``):
* any TFDS image-classification name (``imagenet2012`` with its
  ``manual_dir``, ``imagenette``, ...), prepared in ``data_dir``;
* a local folder with ``train/`` and ``val/`` (or ``validation/``, ``test/``)
  holding one sub-folder per class (TFDS's ImageFolder layout);
* ``synthetic_shapes``: the generated set of `pss_keras.data.toydata`, built in
  ``data_dir`` on first use (no download).

A deterministic slice of the training split (every k-th record of its fixed
order) is held out as *minival*, on which the retained subnets are chosen; it
never enters training. Every record keeps its index in that fixed order
however it is read, so minival stays the same records every epoch.

Each epoch reads the whole training split in a fresh order, a function of
(seed, epoch) alone: a set cached in memory is shuffled whole; a set read
from disk (ImageNet) is read in a fresh order of its chunks (image files of a
folder, TFRecord shards of a TFDS dataset; `SplitRecords`) through the
shuffle buffer, so consecutive epochs are not correlated. Augmentation uses
stateless random ops keyed by (seed, epoch, example): a resumed run sees
exactly the batches the interrupted one would have.

An image that fails to decode (garbage, empty, truncated, unreadable; a TFDS
record whose image does not decode) is named, by file or by TFDS shard and
record (`decode_checked`), and handled by ``DataConfig.bad_images``: ``fail``
stops with one line naming it, ``skip`` drops it, the same record every
epoch (`Pipelines`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pss_keras.data.preprocessing import (  # noqa: F401 (re-exported: data.eval_transform etc.)
    MEAN_RGB,
    STDDEV_RGB,
    eval_transform,
    normalize,
    to_pixels,
    to_rgb,
)
from pss_keras.jobs.config import BAD_IMAGES, SYNTHETIC, DataConfig  # noqa: F401 (re-exported)

# ImageNet PCA lighting noise (AlexNet), as in the reference transforms.
_EIGVAL = (0.2175, 0.0188, 0.0045)
_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


# TFRecord shards read at once when a training set streams from disk.
_READ_CYCLE = 16
# How TFDS's as_dataset interleaves shards (ReadConfig's defaults).
_TFDS_CYCLE, _TFDS_BLOCK = 16, 16


# Records named per gap of failed decodes (a longer run of failures is counted).
_NAMED = 16
# Names listed in one message (the rest are counted).
_LISTED = 5


class DatasetError(ValueError):
    """A dataset that cannot be found or prepared; the message says how to fix it."""


class BadImageError(DatasetError):
    """Images that cannot be decoded, with ``bad_images=fail``; the message
    names them and says how to go on."""


def decode_checked(
    records: SplitRecords, indexed: tf.data.Dataset, report, expected=None, stop: str = ""
):
    """``(index, raw)`` records decoded to ``(index, (image, label))``; a
    record that fails to decode is dropped and reported, never an error.

    TensorFlow's decoders reject garbage, empty and truncated files (a JPEG
    without its end, too: ``try_recover_truncated`` is off), so a failed
    decode is what marks a bad image; nothing is read twice. The decode
    runs through ``ignore_errors`` (tf.data has no per-element catch); each
    record carries the indices of the ``_NAMED`` records before it, so a
    gap in the positions that come out names the records that failed. A
    last, never-decoded record closes the stream, so failures at its end are
    seen too, and the number of records read is compared with ``expected``
    (a file or shard that fails before decoding loses records unnamed).

    Args:
        report: ``report(missing, indices, lost) -> bool`` (a graph op),
            run only when records failed: ``missing`` failed decodes, the
            fixed-order ``indices`` of up to `_NAMED` of them, ``lost``
            records that were not read at all. False stops the stream.
        expected: how many records ``indexed`` holds (None: not checked).
        stop: the message of the error that stops the stream (`_stop`).
    """
    no_index = tf.constant(-1, tf.int64)  # the closing record's index
    end_raw = tf.nest.map_structure(
        lambda spec: tf.zeros([d or 0 for d in spec.shape], spec.dtype), indexed.element_spec[1]
    )
    ds = indexed.concatenate(tf.data.Dataset.from_tensors((no_index, end_raw)))

    def number(state, record):
        position, before = state
        i, raw = record
        return (position + 1, tf.concat([before[1:], [i]], 0)), (position, i, raw, before)

    ds = ds.scan((tf.constant(0, tf.int64), tf.fill([_NAMED], no_index)), number)

    def decode(position, i, raw, before):
        image, label = tf.cond(
            i < 0,
            lambda: (tf.zeros([1, 1, 3], tf.uint8), no_index),
            lambda: records.decode(raw),
        )
        return position, i, (image, tf.cast(label, tf.int64)), before

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()

    def gaps(last, element):
        position, i, example, before = element
        missing = position - last - 1
        lost = tf.zeros_like(position)
        if expected is not None:
            lost = tf.where(i < 0, tf.maximum(expected - position, 0), lost)
        failed = before[_NAMED - tf.minimum(missing, _NAMED) :]
        ok = tf.cond(
            missing + lost > 0, lambda: report(missing, failed, lost), lambda: tf.constant(True)
        )
        return position, (i, example, ok)

    def keep(i, example, ok):
        # Outside the scan, whose state must move on even past a failure
        # (tf.data may read ahead of the element that stopped the stream).
        with tf.control_dependencies([tf.debugging.Assert(ok, [stop or _stop()])]):
            return i >= 0

    ds = ds.scan(tf.constant(-1, tf.int64), gaps).filter(keep)
    return ds.map(lambda i, example, ok: (i, example))


def _unreported(missing, indices, lost):
    """A `decode_checked` report for a checking pass: it only drops them."""
    return tf.constant(True)


def _stop(split: str = "") -> str:
    """The message of the assertion that stops a stream of ``split`` at a bad
    image: the report's message is kept by `_BadImages` (the TF error only
    says where to look), and `Pipelines.bad_image_errors` finds the split by it."""
    return (
        f"pss_keras: an unreadable image stopped the {split or 'data'} stream, see the error "
        "logged by pss_keras.data.pipelines"
    )


# What a bad-image message suggests besides removing or replacing the files,
# unless the caller knows better (scripts/train.py: its flag; a job's
# evaluation or conversion: the job's run_config.json).
SKIP_HINT = "set bad_images to skip (DataConfig) to go on without them"


class _BadImages:
    """The records of each split that failed to decode, and what to do
    about them (``policy``): ``fail`` stops, ``skip`` drops them and logs
    each name once."""

    def __init__(self, policy: str, split_records: dict, skip_hint: str = SKIP_HINT):
        self.policy = policy
        self.split_records = split_records
        self.skip_hint = skip_hint
        self.found = {split: {} for split in split_records}  # split -> {index: name}
        # split -> the message of the first report that stopped one of its
        # streams (`Pipelines.bad_image_errors` clears them).
        self.failures = {}

    def reporter(self, split: str):
        """A `decode_checked` ``report`` for a stream of ``split``."""

        def record(missing, indices, lost):
            describe = self.split_records[split].describe
            names = {int(i): describe(int(i)) for i in indices.numpy() if i >= 0}
            new = [name for i, name in names.items() if i not in self.found[split]]
            self.found[split].update(names)
            unnamed = int(missing) - len(names) + int(lost)
            if self.policy == "fail":
                if split not in self.failures:  # the first report stops the stream
                    self.failures[split] = self.message(split, list(names.values()), unnamed)
                    logging.error("%s", self.failures[split])
                return False
            if new or unnamed:
                logging.warning(
                    "Skipping %s (%d unreadable %s image(s) so far).",
                    _listed(new, unnamed), len(self.found[split]), split,
                )  # fmt: skip
            return True

        return lambda missing, indices, lost: tf.py_function(
            record, [missing, indices, lost], tf.bool
        )

    def message(self, split: str, names: list, unnamed: int = 0) -> str:
        return (
            f"Cannot decode {len(names) + unnamed} {split} image(s): {_listed(names, unnamed)}. "
            f"Remove or replace them, or {self.skip_hint}."
        )

    def conclude(self, split: str, bad: list) -> None:
        """After a checking pass found the ``bad`` indices of ``split``:
        fails naming every one (``fail``), or logs them (``skip``).

        Raises:
            BadImageError: under ``fail``, if there are any.
        """
        if not bad:
            return
        describe = self.split_records[split].describe
        self.found[split].update({i: describe(i) for i in bad})
        names = [self.found[split][i] for i in bad]
        if self.policy == "fail":
            raise BadImageError(self.message(split, names))
        logging.warning(
            "Skipping %d unreadable %s image(s): %s.", len(names), split, _listed(names)
        )


def _listed(names: list, unnamed: int = 0) -> str:
    """``a.jpg, b.jpg and 3 more`` (``unnamed``: failures without a name:
    a run of more than `_NAMED`, or records lost before decoding)."""
    shown = ", ".join(names[:_LISTED])
    more = len(names) - len(names[:_LISTED]) + unnamed
    if not shown:
        return f"{more} record(s) that failed before decoding (a file or shard could not be read)"
    return shown + (f" and {more} more" if more else "")


@dataclasses.dataclass(frozen=True)
class SplitRecords:
    """A split as chunks of undecoded records, readable in any chunk order,
    each record tagged with its index in the split's fixed order.

    A chunk is what can be read on its own: one image file of a folder (so
    a fresh chunk order is a full shuffle of the split) or one TFRecord shard
    of a prepared TFDS dataset.

    Attributes:
        num_chunks: how many chunks.
        read: ``read(order, cycle_length)``: the records of the chunks in
            ``order`` (an int64 tensor, a permutation of the chunks), reading
            ``cycle_length`` chunks at a time, as ``(index, raw)`` with
            ``index`` the record's position in the fixed order.
        decode: ``raw -> (image uint8 [h, w, 3], label int64)``; fails for
            a record whose image cannot be decoded (`decode_checked`).
        describe: ``index -> str``: the record for a message (the image
            file of a folder; the shard and record of a TFDS dataset).
        read_fixed: the fixed order's reader, where it is not the chunks
            in order one at a time.
    """

    num_chunks: int
    read: Callable[[tf.Tensor, int], tf.data.Dataset]
    decode: Callable
    describe: Callable[[int], str]
    read_fixed: Callable[[], tf.data.Dataset] | None = None

    def fixed_raw(self) -> tf.data.Dataset:
        """Every record, undecoded, in the fixed order: ``(index, raw)``."""
        if self.read_fixed is not None:
            return self.read_fixed()
        return self.read(tf.range(self.num_chunks, dtype=tf.int64), 1)

    def fixed_order(self) -> tf.data.Dataset:
        """Every record, decoded, in the fixed order: ``(index, (image,
        label))``; a bad image is an error here (`decode_checked` handles it)."""
        return self.fixed_raw().map(
            lambda i, raw: (i, self.decode(raw)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )


def _decoded_records(decoded: tf.data.Dataset, name: str) -> SplitRecords:
    """Records already decoded by TFDS, as one chunk (its order cannot change)."""
    return SplitRecords(
        1,
        lambda order, cycle_length: decoded.enumerate(),
        lambda raw: (raw[0], tf.cast(raw[1], tf.int64)),
        lambda index: f"{name} record {index}",
    )


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
            self.train_records = _decoded_records(self.train, f"{self.name} train")
        if self.validation_records is None:
            self.validation_records = _decoded_records(self.validation, f"{self.name} validation")


def _folder_records(builder, split: str) -> SplitRecords | None:
    """A folder split's images as one-file chunks, in TFDS ImageFolder's order
    (None if this TFDS version does not expose it: the fixed order then)."""
    # ImageFolder keeps its (fixed, seeded) order in `_split_examples`; its
    # as_dataset reads the files in that order, so indices here match it.
    examples = getattr(builder, "_split_examples", {}).get(split)
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
    return _example_records(examples, builder.info.features)


def _example_records(examples, features) -> SplitRecords:
    """ImageFolder examples (``image_path``, ``label`` name) as one-file chunks, in order."""
    names = [os.fspath(e.image_path) for e in examples]
    paths = tf.constant(names, tf.string)
    labels = tf.constant([features["label"].str2int(e.label) for e in examples], tf.int64)

    def read(order, cycle_length):
        del cycle_length  # a chunk is one file
        return tf.data.Dataset.from_tensor_slices(order).map(lambda j: (j, (paths[j], labels[j])))

    def decode(raw):
        path, label = raw
        example = {"image": tf.io.read_file(path), "label": label, "image/filename": path}
        example = features.decode_example(example)
        return example["image"], example["label"]

    return SplitRecords(len(examples), read, decode, lambda index: names[index])


def _shard_records(builder, split: str) -> SplitRecords:
    """A prepared TFDS split's TFRecord shards as chunks (other file formats:
    one chunk, read in the fixed order).

    The fixed order is TFDS's own ``as_dataset(shuffle_files=False)`` order
    (16 shards interleaved in blocks of 16 records, or 1 for datasets that
    disable shuffling); a record's index is its position in it, whatever
    order an epoch reads the shards in.
    """
    file_format = str(getattr(builder.info, "file_format", "tfrecord")).split(".")[-1].lower()
    if file_format != "tfrecord":
        if split == "train":
            logging.warning(
                "%s is stored as %s, not TFRecord: a streamed training set is read in its "
                "fixed order through the shuffle buffer (no per-epoch shard order).",
                builder.name, file_format,
            )  # fmt: skip
        return _undecoded_records(builder, split)
    info = builder.info.splits[split]
    lengths = list(info.shard_lengths)
    files = tf.constant([os.fspath(path) for path in info.filepaths], tf.string)
    starts = tf.constant([sum(lengths[:j]) for j in range(len(lengths))], tf.int64)
    cycle = 1 if getattr(builder.info, "disable_shuffling", False) else _TFDS_CYCLE
    positions = tf.constant(interleave_positions(lengths, cycle, _TFDS_BLOCK), tf.int64)
    features = builder.info.features

    def shard(j):
        records = tf.data.TFRecordDataset(files[j]).enumerate()
        return records.map(lambda k, raw: (positions[starts[j] + k], raw))

    def read(order, cycle_length, block_length=1):
        chunks = tf.data.Dataset.from_tensor_slices(order)
        if cycle_length <= 1:
            return chunks.flat_map(shard)
        return chunks.interleave(
            shard,
            cycle_length=min(cycle_length, len(lengths)),
            block_length=block_length,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def read_fixed():
        return read(tf.range(len(lengths), dtype=tf.int64), cycle, _TFDS_BLOCK)

    def decode(raw):
        example = features.deserialize_example(raw)
        return example["image"], example["label"]

    # Where each fixed-order index is stored: (shard, record in the shard).
    slot_of = np.argsort(interleave_positions(lengths, cycle, _TFDS_BLOCK))
    shard_starts = np.cumsum([0] + lengths)

    def describe(index):
        slot = int(slot_of[index])
        j = int(np.searchsorted(shard_starts, slot, side="right")) - 1
        path = os.path.basename(os.fspath(info.filepaths[j]))
        return f"{path} record {slot - shard_starts[j]} ({split} index {index})"

    return SplitRecords(len(lengths), read, decode, describe, read_fixed)


def _undecoded_records(builder, split: str) -> SplitRecords:
    """A TFDS split in its fixed order with the image left encoded (any file
    format), so that an image that fails to decode can be named."""
    import tensorflow_datasets as tfds

    image = builder.info.features["image"]
    undecoded = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    records = undecoded.map(lambda example: (example["image"], example["label"])).enumerate()
    return SplitRecords(
        1,
        lambda order, cycle_length: records,
        lambda raw: (image.decode_example(raw[0]), tf.cast(raw[1], tf.int64)),
        lambda index: f"{builder.name} {split} record {index}",
    )


def interleave_positions(lengths, cycle_length: int, block_length: int) -> np.ndarray:
    """Where each record lands when ``len(lengths)`` files of ``lengths``
    records are read with tf.data's deterministic ``interleave(cycle_length,
    block_length)``: ``positions[start_of_file + k]`` for record k of a file.

    tf.data fills an empty slot of the cycle with the next file when it
    reaches that slot, takes up to ``block_length`` records, and on reaching
    a file's end frees its slot and moves on to the next slot.
    """
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    positions = np.empty(int(starts[-1]), np.int64)
    slots = [None] * max(1, cycle_length)  # [file, next record] per slot
    next_file, position, c, open_files = 0, 0, 0, 0
    while next_file < len(lengths) or open_files:
        slot = slots[c]
        if slot is None:
            if next_file < len(lengths):
                slots[c] = [next_file, 0]
                next_file, open_files = next_file + 1, open_files + 1
            else:
                c = (c + 1) % len(slots)
            continue
        j, k = slot
        take = min(block_length, lengths[j] - k)
        positions[starts[j] + k : starts[j] + k + take] = np.arange(position, position + take)
        position, slot[1] = position + take, k + take
        if take < block_length or take == 0:  # the file ended within this block
            slots[c], open_files = None, open_files - 1
        c = (c + 1) % len(slots)
    return positions


# A class with fewer training images than this fraction of the median class's is named in a warning.
SMALL_CLASS_FRACTION = 0.2


def class_counts(builder, split: str) -> dict | None:
    """``{class name: images}`` of an ImageFolder split, every class of the
    folder included (None if this TFDS version does not list its files)."""
    examples = getattr(builder, "_split_examples", {}).get(split)
    if examples is None:
        return None
    return _label_counts(examples, builder.info.features["label"].names)


def check_folder_classes(path: str, builder, val_split: str | None) -> None:
    """The class structure of an image folder, checked before training.

    TFDS's ImageFolder takes the classes from every split's sub-folders, so
    an empty training class or a class only in the validation split would
    become a class the model never learns.

    Raises:
        DatasetError: one line naming the class(es): fewer than 2 classes with
            training images, a class without training images, or validation
            classes that are not training classes.
    """
    train = class_counts(builder, "train")
    if train is None:
        return
    val = (class_counts(builder, val_split) or {}) if val_split else {}
    trained = [c for c, n in train.items() if n]
    # An empty class folder in train/ (TFDS still makes it a class).
    empty = sorted(
        c for c, n in train.items() if not n and os.path.isdir(os.path.join(path, "train", c))
    )
    if empty:
        raise DatasetError(
            f"Image folder {path}: class(es) {', '.join(empty)} have no training images "
            f"({path}/train/<class> is empty); add images or remove the class folder from "
            "every split."
        )
    val_only = sorted(c for c, n in val.items() if n and not train.get(c))
    if val_only:
        raise DatasetError(
            f"Image folder {path}: class(es) {', '.join(val_only)} have images in {val_split}/ "
            f"but none in train/; every validation class must be a training class: add training "
            f"images to {path}/train/<class> or remove them from {val_split}/."
        )
    if len(trained) < 2:
        raise DatasetError(
            f"Image folder {path}/train has {len(trained)} class(es) with images "
            f"({', '.join(trained) or 'none'}); a classifier needs at least 2 class folders "
            "of images in train/."
        )
    median = float(np.median(list(train.values())))
    small = sorted(c for c, n in train.items() if n < SMALL_CLASS_FRACTION * median)
    if small:
        logging.warning(
            "Image folder %s: class(es) %s have fewer than %g of the median class's %d training "
            "images (%s); the model will see them rarely.",
            path, ", ".join(small), SMALL_CLASS_FRACTION, int(median),
            ", ".join(f"{c}: {train[c]}" for c in small),
        )  # fmt: skip


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
            train_records=_folder_records(builder, "train") or _undecoded_records(builder, "train"),
            validation_records=(
                _folder_records(builder, val_split) or _undecoded_records(builder, val_split)
            ),
        )
    check_folder_classes(path, builder, None)
    examples = builder._split_examples["train"]  # noqa: SLF001 (TFDS keeps its order there)
    if split is None:
        split = split_examples(path, examples, val_fraction, seed)
    train, validation = _apply_split(path, examples, split)
    features = builder.info.features
    train_records = _example_records(train, features)
    validation_records = _example_records(validation, features)
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
        train_class_counts=_label_counts(train, features["label"].names),
    )


def _label_counts(examples, names) -> dict:
    """``{class name: examples}``, every class of ``names`` included."""
    counts = collections.Counter(e.label for e in examples)
    return {name: counts[name] for name in names}


def split_examples(path: str, examples, val_fraction: float, seed: int) -> dict:
    """A train-only folder's validation split: ``val_fraction`` of every
    class (rounded, at least one image of a class with two or more), drawn
    with ``seed``.

    Returns:
        ``{"train": [...], "validation": [...]}``: image paths relative to
        ``path``, in the folder's order (what a job saves, so that its
        evaluation and export see the same split whatever is added later).

    Raises:
        DatasetError: a fraction outside (0, 1).
    """
    if not 0 < val_fraction < 1:
        raise DatasetError(f"val_fraction={val_fraction} must be between 0 and 1.")
    by_class = {}
    for i, example in enumerate(examples):
        by_class.setdefault(example.label, []).append(i)
    rng = np.random.default_rng(seed)
    held = set()
    for label in sorted(by_class):
        indices = by_class[label]
        k = int(round(val_fraction * len(indices)))
        k = min(max(k, 1 if len(indices) >= 2 else 0), len(indices) - 1)
        held.update(int(j) for j in rng.choice(indices, size=k, replace=False))
    relative = [os.path.relpath(os.fspath(e.image_path), path) for e in examples]
    return {
        "train": [r for i, r in enumerate(relative) if i not in held],
        "validation": [r for i, r in enumerate(relative) if i in held],
    }


def _apply_split(path: str, examples, split: dict) -> tuple[list, list]:
    """The folder's examples in the saved ``split`` (paths relative to ``path``).

    Raises:
        DatasetError: images of the saved split that are gone (named).
    """
    by_path = {os.path.relpath(os.fspath(e.image_path), path): e for e in examples}
    missing = [r for part in ("train", "validation") for r in split[part] if r not in by_path]
    if missing:
        raise DatasetError(
            f"Image folder {path} lacks {len(missing)} image(s) of the run's saved train/"
            f"validation split (e.g. {', '.join(missing[:3])}); restore them, or train a new "
            "--job_dir to split the folder afresh."
        )
    listed = set(split["train"]) | set(split["validation"])
    new = len(by_path) - len(listed)
    if new:
        logging.warning(
            "Image folder %s has %d image(s) that the run's saved split does not list; they are "
            "not used (a new --job_dir splits the folder afresh).", path, new,
        )  # fmt: skip
    return [by_path[r] for r in split["train"]], [by_path[r] for r in split["validation"]]


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
        train_records=_shard_records(builder, "train"),
        validation_records=_shard_records(builder, val_split),
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


def train_transform(image, seed, config: DataConfig):
    """The method's training augmentation, stateless (``seed``: int32 [2])."""
    seeds = tf.random.experimental.stateless_split(seed, 7)
    image = to_rgb(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seeds[0],
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=config.crop_scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, (config.image_size, config.image_size), method="bilinear")
    image = tf.clip_by_value(image / 255.0, 0.0, 1.0)
    jitter = config.color_jitter
    if jitter > 0:
        factor = tf.random.stateless_uniform([], seeds[1], 1 - jitter, 1 + jitter)
        image = tf.clip_by_value(image * factor, 0.0, 1.0)
        image = tf.image.stateless_random_contrast(image, 1 - jitter, 1 + jitter, seeds[2])
        image = tf.image.stateless_random_saturation(image, 1 - jitter, 1 + jitter, seeds[3])
        image = tf.clip_by_value(image, 0.0, 1.0)
    if config.lighting > 0:
        alpha = tf.random.stateless_normal([3], seeds[4], stddev=config.lighting)
        rgb = tf.linalg.matvec(tf.constant(_EIGVEC), alpha * tf.constant(_EIGVAL))
        image = image + rgb
    image = tf.image.stateless_random_flip_left_right(image, seeds[5])
    return normalize(image)


class Pipelines:
    """The train / minival / validation pipelines of one `DataConfig`.

    Images that fail to decode are handled by ``config.bad_images``. A
    training set cached in memory is checked whole as it is decoded into
    the cache (no extra work), on first use of the training data or by
    `check_training`: ``fail`` raises naming every bad file, ``skip`` leaves
    them out of the counts. A streamed set is checked as it is read: ``fail``
    stops at the first bad image, naming it; ``skip`` drops it (every epoch
    the same records). `check_validation` checks the validation split.

    A streamed epoch decodes only the ``steps_per_epoch * batch_size``
    records it trains on, the first ones of its shuffled order; the rest
    (fewer than a batch) is not decoded that epoch, so a bad image there
    neither stops nor is named then: an epoch whose order puts it among its
    batches does (the same epoch every run, the order being a function of
    (seed, epoch)). Under ``skip`` an epoch short of images keeps its
    batches: what is missing is filled from its first batch.

    Args:
        config: the data settings.
        source: the dataset (default: `load_source`).
        skip_hint: what a bad-image message suggests besides removing or
            replacing the files, e.g. "pass --bad_images=skip to train
            without them".
        split: a train-only image folder's saved split (`load_source`).

    Raises:
        DatasetError: a dataset that cannot be used as configured.
    """

    def __init__(
        self,
        config: DataConfig,
        source: DatasetSource | None = None,
        skip_hint: str = SKIP_HINT,
        split: dict | None = None,
    ):
        self.config = config
        if config.bad_images not in BAD_IMAGES:
            raise ValueError(f"bad_images={config.bad_images!r} must be one of {BAD_IMAGES}.")
        self.source = source or load_source(config, split)
        n = self.source.num_train
        if config.minival_examples >= n:
            raise DatasetError(
                f"minival_examples={config.minival_examples} leaves no training data "
                f"({n} training examples); lower it."
            )
        self.bad_images = _BadImages(
            config.bad_images,
            {"train": self.source.train_records, "validation": self.source.validation_records},
            skip_hint,
        )
        self.minival_stride = max(2, n // max(1, config.minival_examples))
        # Training records (minival excluded), bad images included: known
        # without reading the split.
        self.num_train_records = n - len(range(0, n, self.minival_stride))
        self._require_batch(self.num_train_records)  # bad images may leave fewer (check_training)
        self._training = None  # (indexed, num_train, num_minival) once checked

    def _require_batch(self, num_train: int) -> None:
        if num_train < self.config.batch_size:
            raise DatasetError(
                f"batch_size={self.config.batch_size} is larger than the {num_train} "
                "training examples; lower it."
            )

    def check_training(self) -> None:
        """Checks and counts the training split, once; the first use of
        the training data (batches, minival, counts) runs it too.

        A cached set is decoded whole into the cache, which is the check:
        under ``fail`` every bad file is named before training; under
        ``skip`` the counts leave them out. A streamed set is checked as
        each epoch reads it (nothing is read here).

        Raises:
            BadImageError: a cached training set with bad images, under ``fail``.
            DatasetError: fewer training examples than ``batch_size``.
        """
        if self._training is not None:
            return
        n, records = self.source.num_train, self.source.train_records
        bad = set()
        if self.should_cache(n):
            logging.info("Caching %d decoded training examples in memory.", n)
            # Decoding into the cache is the check: every bad record is known
            # before training, and the counts below are exact.
            indexed = decode_checked(records, records.fixed_raw(), _unreported, n).cache()
            bad = self._check("train", indexed, n)
        else:
            indexed = self._checked("train", records.fixed_raw(), n)
        num_minival = sum(1 for i in range(0, n, self.minival_stride) if i not in bad)
        num_train = n - len(bad) - num_minival
        self._require_batch(num_train)
        self._training = (indexed, num_train, num_minival)

    @property
    def num_train(self) -> int:
        """Training examples (minival and, in a cached set, bad images excluded)."""
        self.check_training()
        return self._training[1]

    @property
    def num_minival(self) -> int:
        self.check_training()
        return self._training[2]

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.config.batch_size

    def _indexed_train(self) -> tf.data.Dataset:
        """``(index, (image, label))`` of the whole training split, fixed order."""
        self.check_training()
        return self._training[0]

    def _checked(self, split: str, indexed: tf.data.Dataset, expected: int) -> tf.data.Dataset:
        """``indexed`` records of ``split`` decoded, bad ones reported (`decode_checked`)."""
        records = self.source.train_records if split == "train" else self.source.validation_records
        report = self.bad_images.reporter(split)
        return decode_checked(records, indexed, report, expected, _stop(split))

    def _check(self, split: str, checked: tf.data.Dataset, count: int) -> set:
        """Reads all of ``checked`` (a `decode_checked` split of ``count``
        records) and concludes on the records it lacks (`_BadImages`)."""
        seen = np.zeros(count, bool)
        for indices in checked.map(lambda i, example: i).batch(4096).as_numpy_iterator():
            seen[indices] = True
        bad = np.flatnonzero(~seen).tolist()
        self.bad_images.conclude(split, bad)
        return set(bad)

    def check_validation(self) -> None:
        """Decodes the whole validation split once, so that a bad image
        there stops a run (``fail``, naming every one) before training
        rather than at its end; under ``skip``, logs them.

        Raises:
            BadImageError: under ``fail``, if any validation image is bad.
        """
        records = self.source.validation_records
        count = self.source.num_validation
        self._check(
            "validation", decode_checked(records, records.fixed_raw(), _unreported, count), count
        )

    @contextlib.contextmanager
    def bad_image_errors(self):
        """Turns a stream stopped at a bad image (``fail``) inside the block
        into a `BadImageError` naming it: one line instead of TF's stack
        trace. Other errors pass unchanged; reports from before the block
        (e.g. a stream read ahead past where its reader stopped) are
        forgotten on entry."""
        self.bad_images.failures.clear()
        try:
            yield
        except tf.errors.OpError as e:
            failures = self.bad_images.failures
            split = next((s for s in failures if _stop(s) in (e.message or "")), None)
            if split is not None:
                raise BadImageError(failures[split]) from None
            raise

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)

    def should_cache(self, num_examples: int) -> bool:
        cache = str(self.config.cache).lower()
        if cache not in ("auto", "true", "false"):
            raise ValueError(f"cache={self.config.cache!r} must be auto, true or false.")
        return cache == "true" or (
            cache == "auto" and num_examples <= self.config.cache_max_examples
        )

    @property
    def shuffle_buffer_size(self) -> int:
        """Examples in the per-epoch shuffle buffer: the whole training set
        when it is cached in memory (every epoch a full, uncorrelated
        shuffle; the buffer holds references to the cached tensors), else
        ``shuffle_buffer`` undecoded records, read in the epoch's own chunk
        order (`SplitRecords`)."""
        if self.should_cache(self.source.num_train):
            return self.num_train
        return min(self.config.shuffle_buffer, self.num_train)

    def _train_examples(self, indexed: tf.data.Dataset | None = None):
        stride = self.minival_stride
        indexed = self._indexed_train() if indexed is None else indexed
        return indexed.filter(lambda i, example: i % stride != 0)

    def train_epoch(self, epoch: int) -> tf.data.Dataset:
        """Epoch ``epoch``'s augmented training batches (``steps_per_epoch``
        of them); the same for the same (seed, epoch), so a resumed run sees
        the batches the interrupted one would have."""
        return self._epoch_batches(tf.constant(int(epoch), tf.int64)).prefetch(tf.data.AUTOTUNE)

    def train_epochs(self, first: int, stop: int, skip_batches: int = 0) -> tf.data.Dataset:
        """Epochs ``first .. stop - 1`` back to back: the batches of
        `train_epoch` for each, in order, as one dataset (one ``fit()`` per
        run, its step counter continuous across epochs).

        Args:
            skip_batches: batches of epoch ``first`` already trained on (a
                resume from a checkpoint inside it): that epoch starts after
                them. They are still read (and augmented) to be skipped, so
                the rest is exactly the same batches.
        """
        self.check_training()  # here, not inside flat_map's trace
        epochs = tf.data.Dataset.range(int(first), int(stop))
        if skip_batches:
            head = self._epoch_batches(tf.constant(int(first), tf.int64)).skip(int(skip_batches))
            rest = tf.data.Dataset.range(int(first) + 1, int(stop)).flat_map(self._epoch_batches)
            return head.concatenate(rest).prefetch(tf.data.AUTOTUNE)
        return epochs.flat_map(self._epoch_batches).prefetch(tf.data.AUTOTUNE)

    def chunk_order(self, epoch) -> tf.Tensor:
        """The order in which epoch ``epoch`` reads the training chunks (files
        or shards) from disk: a permutation, a function of (seed, epoch)."""
        chunks = tf.range(self.source.train_records.num_chunks, dtype=tf.int64)
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), tf.cast(epoch, tf.int64)])
        return tf.random.experimental.stateless_shuffle(chunks, seed=seed)

    def _epoch_batches(self, epoch):
        """One epoch's ``steps_per_epoch`` batches; ``epoch`` is an int64
        scalar tensor."""
        c = self.config
        steps = self.steps_per_epoch
        shuffle_seed = (c.seed * 1_000_003 + epoch) % (2**31 - 1)

        def augment(i, example):
            image, label = example
            seed = tf.cast(tf.stack([c.seed * 7919 + epoch, i]), tf.int32)
            return train_transform(image, seed, c), tf.cast(label, tf.int32)

        if self.should_cache(self.source.num_train):
            ds = self._train_examples().shuffle(
                self.shuffle_buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False
            )
            ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return ds.batch(c.batch_size, drop_remainder=True).take(steps)
        records, stride = self.source.train_records, self.minival_stride
        ds = records.read(self.chunk_order(epoch), _READ_CYCLE)
        ds = ds.filter(lambda i, raw: i % stride != 0)
        ds = ds.shuffle(self.shuffle_buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False)
        # Only the records the epoch's batches hold are decoded and checked:
        # a bad one among them is always seen before the last batch is out
        # (a batch short of it reads the stream's closing record), never
        # only when tf.data happens to read ahead.
        used = steps * c.batch_size
        ds = self._checked("train", ds.take(used), used)
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if c.bad_images == "skip":
            return _topped_up(ds.batch(c.batch_size), steps, c.batch_size)
        return ds.batch(c.batch_size, drop_remainder=True).take(steps)

    def _eval(self, ds, count):
        size = self.config.image_size

        def prepare(image, label):
            return eval_transform(image, size), tf.cast(label, tf.int32)

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        if self.should_cache(count):
            ds = ds.cache()
        return ds.batch(self.config.eval_batch_size).prefetch(tf.data.AUTOTUNE)

    def calibration(self, num_batches: int) -> tf.data.Dataset:
        """The first ``num_batches`` training batches of epoch 0, cached on
        first read: post-BN calibration reads them for every subnet it
        calibrates without refilling the shuffle buffer each time."""
        return self.train_epoch(0).take(num_batches).cache()

    def representative(self, count: int) -> tf.data.Dataset:
        """``count`` training examples (minival excluded, fixed order) with
        the evaluation transform, unbatched: calibration data for
        post-training quantization, which must look like inference inputs.
        Reads only as far as it needs (a cached set not yet checked is not
        decoded whole for it)."""
        if count < 1:
            raise ValueError(f"The representative set needs at least 1 image, got {count}.")
        size = self.config.image_size
        if self._training is None:
            records = self.source.train_records
            indexed = self._checked("train", records.fixed_raw(), self.source.num_train)
        else:
            indexed = self._indexed_train()
        examples = self._train_examples(indexed).take(count)
        return examples.map(
            lambda i, example: (eval_transform(example[0], size), tf.cast(example[1], tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def minival(self) -> tf.data.Dataset:
        """The held-out training examples, with the evaluation transform."""
        stride = self.minival_stride
        held_out = self._indexed_train().filter(lambda i, example: i % stride == 0)
        return self._eval(held_out.map(lambda i, example: example), self.num_minival)

    def validation_examples(self) -> tf.data.Dataset:
        """The validation split decoded, ``(image, label)`` in its fixed
        order, its bad images handled by ``bad_images``."""
        records = self.source.validation_records
        examples = self._checked("validation", records.fixed_raw(), self.source.num_validation)
        return examples.map(lambda i, example: example)

    def validation(self) -> tf.data.Dataset:
        """The validation split, with the evaluation transform."""
        return self._eval(self.validation_examples(), self.source.num_validation)


def _topped_up(batches: tf.data.Dataset, steps: int, batch_size: int) -> tf.data.Dataset:
    """``steps`` batches of ``batch_size`` from ``batches`` (full ones, then
    maybe a partial one: an epoch short of the images it skipped): its full
    batches, then its partial batch and what is missing taken from its first
    batch (in order, from its start again if more than a batch is missing).

    The first batch is held, not read again: no second pass over the
    epoch's records (nor its shuffle buffer), and nothing more is read when
    nothing is missing. Each epoch is the same for the same records.
    """
    spec = batches.element_spec
    empty = tf.nest.map_structure(lambda s: tf.zeros([0, *s.shape[1:]], s.dtype), spec)
    end = tf.data.Dataset.from_tensors(empty)  # marks the end of the batches

    def size(batch):
        return tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]

    def stacked(batch):  # [n * batch_size, ...] -> [n, batch_size, ...]
        return tf.nest.map_structure(lambda t: tf.reshape(t, [-1, batch_size, *t.shape[1:]]), batch)

    def step(state, batch):
        first, partial, full = state
        n = size(batch)
        first = tf.cond(size(first) > 0, lambda: first, lambda: batch)

        def closing():
            f = size(first)
            missing = tf.where(f > 0, tf.maximum(steps - full, 0), 0)
            fill = tf.maximum(missing * batch_size - size(partial), 0)
            taken = tf.range(fill) % tf.maximum(f, 1)
            return tf.nest.map_structure(
                lambda p, b: tf.concat([p, tf.gather(b, taken)], 0)[: missing * batch_size],
                partial,
                first,
            )

        out = tf.cond(
            n == batch_size,
            lambda: batch,
            lambda: tf.cond(n == 0, closing, lambda: empty),
        )
        partial = tf.cond((n > 0) & (n < batch_size), lambda: batch, lambda: partial)
        full += tf.cast(n == batch_size, tf.int64)
        return (first, partial, full), stacked(out)

    ds = batches.concatenate(end).scan((empty, empty, tf.constant(0, tf.int64)), step)
    return ds.flat_map(lambda *batch: tf.data.Dataset.from_tensor_slices(batch)).take(steps)
