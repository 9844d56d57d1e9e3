"""Input pipelines: TFDS datasets or a local image folder, with the method's
ImageNet augmentation for training and resize/centre-crop for evaluation.

Sources (``DataConfig.dataset``):
* any TFDS image-classification name (``imagenet2012`` with its
  ``manual_dir``, ``imagenette``, ...), prepared in ``data_dir``;
* a local folder with ``train/`` and ``val/`` (or ``validation/``, ``test/``)
  holding one sub-folder per class (TFDS's ImageFolder layout);
* ``synthetic_shapes``: the generated set of `pss_keras.toydata`, built in
  ``data_dir`` on first use (no download).

A deterministic slice of the training split (every k-th record of its fixed
order) is held out as *minival*, on which the retained subnets are chosen; it
never enters training. Every record keeps its index in that fixed order
however it is read, so minival stays the same records every epoch.

Each epoch reads the whole training split in a fresh order, a function of
(seed, epoch) alone: a set cached in memory is shuffled whole; a set read
from disk (ImageNet) is read in a fresh order of its chunks (image files of a
folder, TFRecord shards of a TFDS dataset; `TrainRecords`) through the
shuffle buffer, so consecutive epochs are not correlated. Augmentation uses
stateless random ops keyed by (seed, epoch, example): a resumed run sees
exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pss_keras.preprocessing import (  # noqa: F401 (re-exported: data.eval_transform etc.)
    MEAN_RGB,
    STDDEV_RGB,
    eval_transform,
    normalize,
    to_pixels,
    to_rgb,
)
from pss_keras.run_config import SYNTHETIC, DataConfig  # noqa: F401 (re-exported)

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


class DatasetError(ValueError):
    """A dataset that cannot be found or prepared; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class TrainRecords:
    """The training split as chunks of undecoded records, readable in any
    chunk order, each record tagged with its index in the fixed order.

    A chunk is what can be read on its own: one image file of a folder (so
    a fresh chunk order is a full shuffle of the split) or one TFRecord shard
    of a prepared TFDS dataset.

    Attributes:
        num_chunks: how many chunks.
        read: ``read(order, cycle_length)``: the records of the chunks in
            ``order`` (an int64 tensor, a permutation of the chunks), reading
            ``cycle_length`` chunks at a time, as ``(index, raw)`` with
            ``index`` the record's position in the fixed order.
        decode: ``raw -> (image uint8 [h, w, 3], label int64)``.
    """

    num_chunks: int
    read: Callable[[tf.Tensor, int], tf.data.Dataset]
    decode: Callable
    read_fixed: Callable[[], tf.data.Dataset] | None = None

    def fixed_order(self) -> tf.data.Dataset:
        """Every record, decoded, in the fixed order: ``(index, (image, label))``."""
        if self.read_fixed is not None:
            records = self.read_fixed()
        else:
            records = self.read(tf.range(self.num_chunks, dtype=tf.int64), 1)
        return records.map(
            lambda i, raw: (i, self.decode(raw)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )


@dataclasses.dataclass
class DatasetSource:
    """Decoded examples of one dataset: (image uint8 [h, w, 3], label int64).

    ``train`` is the training split in its fixed order; ``train_records``
    reads the same records in any chunk order (`TrainRecords`).
    """

    name: str
    train: tf.data.Dataset
    validation: tf.data.Dataset
    num_train: int
    num_validation: int
    class_names: list
    train_records: TrainRecords | None = None

    def __post_init__(self):
        if self.train_records is None:
            # One chunk (order cannot change): the fixed order through the buffer.
            train = self.train
            self.train_records = TrainRecords(
                1, lambda order, cycle_length: train.enumerate(), lambda raw: raw
            )


def _folder_records(builder, split: str) -> TrainRecords | None:
    """A folder split's images as one-file chunks, in TFDS ImageFolder's order
    (None if this TFDS version does not expose it: the fixed order then)."""
    # ImageFolder keeps its (fixed, seeded) order in `_split_examples`; its
    # as_dataset reads the files in that order, so indices here match it.
    examples = getattr(builder, "_split_examples", {}).get(split)
    if examples is None:
        logging.warning(
            "This TFDS version does not list ImageFolder's files; a streamed training set is "
            "read in its fixed order through the shuffle buffer."
        )
        return None
    features = builder.info.features
    paths = tf.constant([e.image_path for e in examples], tf.string)
    labels = tf.constant([features["label"].str2int(e.label) for e in examples], tf.int64)

    def read(order, cycle_length):
        del cycle_length  # a chunk is one file
        return tf.data.Dataset.from_tensor_slices(order).map(lambda j: (j, (paths[j], labels[j])))

    def decode(raw):
        path, label = raw
        example = {"image": tf.io.read_file(path), "label": label, "image/filename": path}
        example = features.decode_example(example)
        return example["image"], example["label"]

    return TrainRecords(len(examples), read, decode)


def _shard_records(builder, split: str) -> TrainRecords | None:
    """A prepared TFDS split's TFRecord shards as chunks (None for other file
    formats, which are read in their fixed order).

    The fixed order is TFDS's own ``as_dataset(shuffle_files=False)`` order
    (16 shards interleaved in blocks of 16 records, or 1 for datasets that
    disable shuffling); a record's index is its position in it, whatever
    order an epoch reads the shards in.
    """
    file_format = str(getattr(builder.info, "file_format", "tfrecord")).split(".")[-1].lower()
    if file_format != "tfrecord":
        logging.warning(
            "%s is stored as %s, not TFRecord: a streamed training set is read in its fixed "
            "order through the shuffle buffer (no per-epoch shard order).",
            builder.name, file_format,
        )  # fmt: skip
        return None
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

    return TrainRecords(len(lengths), read, decode, read_fixed)


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


def _folder_source(path: str) -> DatasetSource:
    import tensorflow_datasets as tfds

    splits = [s for s in os.listdir(path) if os.path.isdir(os.path.join(path, s))]
    val_split = next((s for s in ("val", "validation", "test") if s in splits), None)
    if "train" not in splits or val_split is None:
        raise DatasetError(
            f"Image folder {path} needs train/ and val/ (or validation/ or test/) "
            f"sub-folders with one folder per class; found {sorted(splits)}."
        )
    builder = tfds.folder_dataset.ImageFolder(path)
    counts = {name: info.num_examples for name, info in builder.info.splits.items()}
    if not counts.get("train"):
        raise DatasetError(f"Image folder {path}/train holds no images (.jpg/.jpeg/.png).")
    return DatasetSource(
        name=os.path.basename(os.path.normpath(path)),
        train=builder.as_dataset(split="train", as_supervised=True, shuffle_files=False),
        validation=builder.as_dataset(split=val_split, as_supervised=True, shuffle_files=False),
        num_train=counts["train"],
        num_validation=counts.get(val_split, 0),
        class_names=list(builder.info.features["label"].names),
        train_records=_folder_records(builder, "train"),
    )


def _tfds_source(name: str, data_dir: str | None, manual_dir: str | None) -> DatasetSource:
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
    )


def load_source(config: DataConfig) -> DatasetSource:
    """Finds (and for ``synthetic_shapes`` builds) the dataset.

    Raises:
        DatasetError: with one line that says what is missing and how to
            provide it.
    """
    dataset = config.dataset
    if dataset == SYNTHETIC:
        from pss_keras import toydata

        root = os.path.join(config.data_dir or os.path.expanduser("~/.cache/pss_keras"), SYNTHETIC)
        return _folder_source(toydata.make_synthetic_shapes(root))
    if os.path.sep in dataset or os.path.isdir(dataset):
        if not os.path.isdir(dataset):
            raise DatasetError(f"Image folder {dataset} does not exist.")
        return _folder_source(dataset)
    return _tfds_source(dataset, config.data_dir, config.manual_dir)


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
    """The train / minival / validation pipelines of one `DataConfig`."""

    def __init__(self, config: DataConfig, source: DatasetSource | None = None):
        self.config = config
        self.source = source or load_source(config)
        n = self.source.num_train
        if config.minival_examples >= n:
            raise DatasetError(
                f"minival_examples={config.minival_examples} leaves no training data "
                f"({n} training examples); lower it."
            )
        self.minival_stride = max(2, n // max(1, config.minival_examples))
        self.num_minival = len(range(0, n, self.minival_stride))
        self.num_train = n - self.num_minival
        if self.num_train < config.batch_size:
            raise DatasetError(
                f"batch_size={config.batch_size} is larger than the {self.num_train} "
                "training examples; lower it."
            )
        self.steps_per_epoch = self.num_train // config.batch_size
        if self.should_cache(n):
            logging.info("Caching %d decoded training examples in memory.", n)
        # (index in the fixed order, (image, label)): minival, representative
        # images, and the training set itself when it is cached.
        indexed = self.source.train_records.fixed_order()
        if self.should_cache(n):
            indexed = indexed.cache()
        self._indexed_train = indexed

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
        order (`TrainRecords`)."""
        if self.should_cache(self.source.num_train):
            return self.num_train
        return min(self.config.shuffle_buffer, self.num_train)

    def _train_examples(self):
        stride = self.minival_stride
        return self._indexed_train.filter(lambda i, example: i % stride != 0)

    def train_epoch(self, epoch: int) -> tf.data.Dataset:
        """Epoch ``epoch``'s augmented training batches (``steps_per_epoch``
        of them); the same for the same (seed, epoch), so a resumed run sees
        the batches the interrupted one would have."""
        return self._epoch_batches(tf.constant(int(epoch), tf.int64)).prefetch(tf.data.AUTOTUNE)

    def train_epochs(self, first: int, stop: int) -> tf.data.Dataset:
        """Epochs ``first .. stop - 1`` back to back: the batches of
        `train_epoch` for each, in order, as one dataset (one ``fit()`` per
        run, its step counter continuous across epochs)."""
        epochs = tf.data.Dataset.range(int(first), int(stop))
        return epochs.flat_map(self._epoch_batches).prefetch(tf.data.AUTOTUNE)

    def chunk_order(self, epoch) -> tf.Tensor:
        """The order in which epoch ``epoch`` reads the training chunks (files
        or shards) from disk: a permutation, a function of (seed, epoch)."""
        chunks = tf.range(self.source.train_records.num_chunks, dtype=tf.int64)
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), tf.cast(epoch, tf.int64)])
        return tf.random.experimental.stateless_shuffle(chunks, seed=seed)

    def _epoch_batches(self, epoch):
        """One epoch's batches; ``epoch`` is an int64 scalar tensor."""
        c = self.config
        shuffle_seed = (c.seed * 1_000_003 + epoch) % (2**31 - 1)

        def augment(i, example):
            image, label = example
            seed = tf.cast(tf.stack([c.seed * 7919 + epoch, i]), tf.int32)
            return train_transform(image, seed, c), tf.cast(label, tf.int32)

        if self.should_cache(self.source.num_train):
            ds = self._train_examples().shuffle(
                self.shuffle_buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False
            )
        else:
            records, stride = self.source.train_records, self.minival_stride
            ds = records.read(self.chunk_order(epoch), _READ_CYCLE)
            ds = ds.filter(lambda i, raw: i % stride != 0)
            ds = ds.shuffle(
                self.shuffle_buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False
            )
            ds = ds.map(
                lambda i, raw: (i, records.decode(raw)),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(c.batch_size, drop_remainder=True)

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
        post-training quantization, which must look like inference inputs."""
        if count < 1:
            raise ValueError(f"The representative set needs at least 1 image, got {count}.")
        size = self.config.image_size
        examples = self._train_examples().take(count)
        return examples.map(
            lambda i, example: (eval_transform(example[0], size), tf.cast(example[1], tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def minival(self) -> tf.data.Dataset:
        """The held-out training examples, with the evaluation transform."""
        stride = self.minival_stride
        held_out = self._indexed_train.filter(lambda i, example: i % stride == 0)
        return self._eval(held_out.map(lambda i, example: example), self.num_minival)

    def validation(self) -> tf.data.Dataset:
        return self._eval(self.source.validation, self.source.num_validation)
