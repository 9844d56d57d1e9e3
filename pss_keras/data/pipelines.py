"""The train / minival / validation / calibration pipelines of one
`DataConfig` (`Pipelines`), from a `pss_keras.data.sources.DatasetSource`.

A deterministic slice of the training split (every k-th record of its fixed
order) is held out as *minival*, on which the retained subnets are chosen; it
never enters training. Every record keeps its index in that fixed order
however it is read, so minival stays the same records every epoch.

Each epoch reads the whole training split in a fresh order, a function of
(seed, epoch) alone: a set cached in memory is shuffled whole; a set read
from disk (ImageNet) is read in a fresh order of its chunks (image files of a
folder, TFRecord shards of a TFDS dataset; `pss_keras.data.records`) through
the shuffle buffer, so consecutive epochs are not correlated. Augmentation
(`pss_keras.data.augmentation`) uses stateless random ops keyed by (seed,
epoch, example): a resumed run sees exactly the batches the interrupted one
would have. Images that fail to decode are handled as
`pss_keras.data.decoding` says.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import tensorflow as tf

from pss_keras.data.augmentation import train_transform
from pss_keras.data.decoding import (
    SKIP_HINT,
    BadImageError,
    BadImages,
    DatasetError,
    decode_checked,
    stop_message,
    unreported,
)
from pss_keras.data.preprocessing import eval_transform
from pss_keras.data.sources import DatasetSource, load_source
from pss_keras.jobs.config import BAD_IMAGES, DataConfig

# TFRecord shards read at once when a training set streams from disk.
_READ_CYCLE = 16


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
        self.bad_images = BadImages(
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
            indexed = decode_checked(records, records.fixed_raw(), unreported, n).cache()
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
        return decode_checked(records, indexed, report, expected, stop_message(split))

    def _check(self, split: str, checked: tf.data.Dataset, count: int) -> set:
        """Reads all of ``checked`` (a `decode_checked` split of ``count``
        records) and concludes on the records it lacks (`BadImages`)."""
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
            "validation", decode_checked(records, records.fixed_raw(), unreported, count), count
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
            split = next((s for s in failures if stop_message(s) in (e.message or "")), None)
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
