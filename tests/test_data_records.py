"""pss_keras.data.records: a split's records in chunks, each with its fixed
index; the TFDS internals they rely on, checked against the installed TFDS.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from pss_keras.data import records
from pss_keras.data.records import interleave_positions


@pytest.mark.parametrize("cycle, block", [(16, 16), (3, 2), (1, 16), (4, 1)])
def test_interleave_positions_match_tf_data(cycle, block):
    """Where tf.data's deterministic interleave puts each record of each file
    (uneven and empty files included), computed without reading them."""
    lengths = [5, 0, 17, 3, 40, 1, 16, 9]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    sizes = np.asarray(lengths, np.int64)
    files = tf.data.Dataset.range(len(lengths)).interleave(
        lambda j: tf.data.Dataset.range(tf.gather(sizes, j)).map(
            lambda k: tf.gather(starts, j) + k
        ),
        cycle_length=cycle,
        block_length=block,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    read = np.array(list(files.as_numpy_iterator()))  # sequential index of each position
    positions = interleave_positions(lengths, cycle, block)
    np.testing.assert_array_equal(positions[read], np.arange(len(read)))


def test_imagefolder_examples_are_the_files_tfds_imagefolder_reads(tiny_image_folder):
    """TFDS keeps ImageFolder's file list private (``builder._split_examples``);
    `records.imagefolder_examples` is the one place that reads it. It must
    still be there, the files and labels in the order ``as_dataset`` reads."""
    import tensorflow_datasets as tfds

    changed = (
        f"TFDS {tfds.__version__} changed ImageFolder's private _split_examples: update "
        "pss_keras.data.records.imagefolder_examples"
    )
    builder = tfds.folder_dataset.ImageFolder(tiny_image_folder)
    for split in ("train", "val"):
        examples = records.imagefolder_examples(builder, split)
        assert examples is not None, f"{changed} (gone)"
        read = builder.as_dataset(split=split, shuffle_files=False)
        files = [
            os.fsdecode(f) for f in read.map(lambda e: e["image/filename"]).as_numpy_iterator()
        ]
        assert [os.fspath(e.image_path) for e in examples] == files, f"{changed} (another order)"
        labels = [int(y) for y in read.map(lambda e: e["label"]).as_numpy_iterator()]
        label = builder.info.features["label"]
        assert [label.str2int(e.label) for e in examples] == labels, f"{changed} (other labels)"
    assert records.imagefolder_examples(object(), "train") is None
    with pytest.raises(RuntimeError, match=r"TFDS \S+ does not list ImageFolder's train files"):
        records.imagefolder_examples(object(), "train", required=True)


def test_shard_records_read_in_tfds_own_fixed_order(tiny_tfds):
    """`records.shard_records` numbers a prepared split's records in TFDS's
    own ``as_dataset(shuffle_files=False)`` order without reading them: its
    shards interleaved ``_TFDS_CYCLE`` at a time in blocks of ``_TFDS_BLOCK``
    (ReadConfig's defaults). It must still be TFDS's order."""
    import tensorflow_datasets as tfds

    changed = (
        f"TFDS {tfds.__version__} reads a prepared split's shards in another order: update "
        "_TFDS_CYCLE / _TFDS_BLOCK in pss_keras.data.records"
    )
    assert tfds.ReadConfig().interleave_block_length == records._TFDS_BLOCK, changed
    name, data_dir = tiny_tfds
    builder = tfds.builder(name, data_dir=data_dir)
    split = records.shard_records(builder, "train")
    assert split.num_chunks == 4
    ours = [
        (int(i), image.tobytes(), int(label))
        for i, (image, label) in split.fixed_order().as_numpy_iterator()
    ]
    theirs = builder.as_dataset(split="train", shuffle_files=False, as_supervised=True)
    theirs = [
        (i, image.tobytes(), int(label))
        for i, (image, label) in enumerate(theirs.as_numpy_iterator())
    ]
    assert ours == theirs, changed
