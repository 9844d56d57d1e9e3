"""A split's records, undecoded, in chunks that can be read in any order.

Every record keeps its index in the split's fixed order however it is read
(`SplitRecords`): an image folder's files, one a chunk, in TFDS ImageFolder's
order (`file_records`); a prepared TFDS dataset's TFRecord shards, one a
chunk, in TFDS's own ``as_dataset`` order (`shard_records`); any other TFDS
split in its fixed order, the image left encoded (`undecoded_records`).

TFDS keeps ImageFolder's file list private: `imagefolder_examples` is the
one place that reads it (tests/test_data_records.py checks it against the
installed TFDS).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

# How TFDS's as_dataset interleaves shards (ReadConfig's defaults).
_TFDS_CYCLE, _TFDS_BLOCK = 16, 16


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


def decoded_records(decoded: tf.data.Dataset, name: str) -> SplitRecords:
    """Records already decoded by TFDS, as one chunk (its order cannot change)."""
    return SplitRecords(
        1,
        lambda order, cycle_length: decoded.enumerate(),
        lambda raw: (raw[0], tf.cast(raw[1], tf.int64)),
        lambda index: f"{name} record {index}",
    )


def imagefolder_examples(builder, split: str, required: bool = False) -> list | None:
    """TFDS ImageFolder's examples of ``split`` (``image_path``, ``label``
    name) in its fixed, seeded order, the order its ``as_dataset`` reads.

    TFDS keeps them in the private ``builder._split_examples``, read here
    alone (tests/test_data_records.py fails naming the TFDS version if that
    changes). None if this TFDS version does not keep them.

    Raises:
        RuntimeError: ``required`` and this TFDS version does not keep them.
    """
    examples = getattr(builder, "_split_examples", {}).get(split)
    if examples is None and required:
        import tensorflow_datasets as tfds

        raise RuntimeError(
            f"TFDS {tfds.__version__} does not list ImageFolder's {split} files "
            "(builder._split_examples); pss_keras.data.records.imagefolder_examples needs "
            "updating for it."
        )
    return examples


def file_records(examples, features) -> SplitRecords:
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


def shard_records(builder, split: str) -> SplitRecords:
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
        return undecoded_records(builder, split)
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


def undecoded_records(builder, split: str) -> SplitRecords:
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
