"""pss_keras.data.pipelines: the train / minival / validation pipelines, their
epochs' order and batches.
"""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import (
    MEAN,
    STD,
    _assert_normalized_range,
    _config,
    _counting_decodes,
    _index_as_image,
    _streamed_indices,
)

from pss_keras.data import pipelines, preprocessing
from pss_keras.data.decoding import BadImageError
from pss_keras.data.pipelines import Pipelines
from pss_keras.data.records import interleave_positions


def _to_pixels(normalized):
    """Normalized RGB back to 0..255, with the ImageNet constants themselves."""
    return (normalized * STD + MEAN) * 255.0


def test_folder_pipelines_split_and_shapes(tiny_image_folder):
    p = Pipelines(_config(tiny_image_folder))
    assert p.num_classes == 10 and p.source.num_train == 160 and p.source.num_validation == 60
    assert p.num_minival == 20 and p.num_train == 140 and p.steps_per_epoch == 8
    batches = list(p.train_epoch(0))
    assert len(batches) == 8
    images, labels = batches[0]
    assert (
        images.shape == (16, 32, 32, 3) and images.dtype == tf.float32 and labels.dtype == tf.int32
    )
    # ImageNet mean/std normalized pixels: within what 0..255 maps to (plus the
    # PCA lighting noise, added after the last clip: < 0.03 of the pixel range
    # measured, 0.1 allowed), and spanning more than half of it (the shapes
    # have random colours over the whole range). Unnormalized [0, 1] or
    # 0..255 images, or other constants (e.g. mean = std = 0.5), fail this.
    _assert_normalized_range(images.numpy(), min_span=0.5)
    mv = [(x, y) for x, y in p.minival()]
    assert sum(int(y.shape[0]) for _, y in mv) == 20 and mv[0][0].shape[1:] == (32, 32, 3)
    assert sum(int(y.shape[0]) for _, y in p.validation()) == 60


def test_minival_never_enters_training(tiny_image_folder):
    # With augmentation off (a crop of the whole square source image, no
    # colour or lighting noise), every training image is its source image,
    # normalized and maybe mirrored, and every minival image is the eval
    # transform of its source: identify the source example of each image the
    # two pipelines actually yield by its content.
    p = Pipelines(
        _config(
            tiny_image_folder,
            batch_size=20,
            crop_scale=(1.0, 1.0),
            color_jitter=0.0,
            lighting=0.0,
            cache="false",
        )
    )
    sources = [(image.numpy(), int(label)) for image, label in p.source.train]
    images = np.stack([image for image, _ in sources]).astype(np.float32)
    labels = np.array([label for _, label in sources])
    assert len(sources) == 160 and len({image.tobytes() for image, _ in sources}) == 160

    def source_of(image, label, candidates, atol):
        err = np.abs(candidates - image).max(axis=(1, 2, 3))
        best = int(np.argmin(err))
        assert err[best] <= atol, f"no source example matches (closest: {err[best]})"
        index = best % len(sources)
        assert labels[index] == label
        return index

    # One epoch of 7 full batches of 20 is the whole training split.
    assert p.steps_per_epoch * 20 == p.num_train == 140
    both_ways = np.concatenate([images, images[:, :, ::-1]])
    trained = [
        source_of(_to_pixels(x), y, both_ways, atol=0.01)
        for xs, ys in p.train_epoch(0)
        for x, y in zip(xs.numpy(), ys.numpy())
    ]
    evaluated = np.stack([preprocessing.eval_transform(image, 32).numpy() for image, _ in sources])
    held_out = [
        source_of(x, y, evaluated, atol=1e-4)
        for xs, ys in p.minival()
        for x, y in zip(xs.numpy(), ys.numpy())
    ]
    assert len(set(trained)) == len(trained) == 140
    assert len(set(held_out)) == len(held_out) == 20
    assert not set(trained) & set(held_out)


def test_epochs_are_deterministic_and_differ(tiny_image_folder):
    p = Pipelines(_config(tiny_image_folder))
    a = [x.numpy() for x, _ in p.train_epoch(3)]
    b = [x.numpy() for x, _ in Pipelines(_config(tiny_image_folder)).train_epoch(3)]
    np.testing.assert_array_equal(a[0], b[0])  # a resumed run sees the same batches
    c = next(iter(p.train_epoch(4)))[0].numpy()
    assert not np.array_equal(a[0], c)


def test_cached_training_sets_are_fully_shuffled_every_epoch(tiny_image_folder, monkeypatch):
    """A cached set's epoch draws from the whole set (issue: a 10k buffer
    over a fixed order correlated consecutive epochs); an uncached one keeps
    the bounded buffer. Each example's record index stands in for its image."""
    monkeypatch.setattr(
        pipelines, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )

    def first_batch(cache):
        p = Pipelines(_config(tiny_image_folder, shuffle_buffer=4, cache=cache))
        return p, next(iter(p.train_epoch(0)))[0].numpy().ravel()

    cached, indices = first_batch("true")
    assert cached.shuffle_buffer_size == cached.num_train == 140
    assert indices.max() > 60, indices  # 16 of 140: all <= 60 has probability ~1e-6
    # Streamed from disk, a folder's files are read in a fresh order each
    # epoch (one file a chunk): the small buffer no longer limits the first
    # batch to the first ~20 records of a fixed order.
    streamed, indices = first_batch("false")
    assert streamed.shuffle_buffer_size == 4
    assert indices.max() > 60, indices
    epoch = _streamed_indices(streamed, 0)
    assert len(set(epoch)) == len(epoch) == 128
    assert not any(i % streamed.minival_stride == 0 for i in epoch)


def test_tfds_shards_stream_in_a_fresh_order_each_epoch(tiny_tfds, monkeypatch):
    """Issue: an uncached TFDS split was read in one fixed record order
    (shuffle_files=False) through the buffer. Now each epoch reads the
    shards in its own order, several at once; minival stays the same records."""
    name, data_dir = tiny_tfds
    config = _config(name, data_dir=data_dir, cache="false", shuffle_buffer=4)
    p = Pipelines(config)
    assert p.source.num_train == 160 and p.source.train_records.num_chunks == 4
    # The fixed order is TFDS's own (as_dataset without file shuffling), and
    # every record carries its position in it whichever order reads it.
    fixed = [(image.numpy(), int(label)) for image, label in p.source.train]
    indexed = list(p.source.train_records.fixed_order())
    assert [int(i) for i, _ in indexed] == list(range(160))
    for (_, (image, label)), (ref_image, ref_label) in zip(indexed, fixed):
        np.testing.assert_array_equal(image.numpy(), ref_image)
        assert int(label) == ref_label
    held_out = {fixed[i][0].tobytes() for i in range(0, 160, p.minival_stride)}
    minival = {
        x.tobytes() for xs, _ in p.minival() for x in np.round(xs.numpy(), 4).astype(np.float32)
    }
    expected = {
        np.round(preprocessing.eval_transform(tf.constant(fixed[i][0]), 32).numpy(), 4).tobytes()
        for i in range(0, 160, p.minival_stride)
    }
    assert len(held_out) == 20 and minival == expected

    monkeypatch.setattr(
        pipelines, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )
    import tensorflow_datasets as tfds

    lengths = tfds.builder(name, data_dir=data_dir).info.splits["train"].shard_lengths
    positions = interleave_positions(lengths, 16, 16)
    shard_of = np.empty(160, int)  # the shard of the record at each fixed-order position
    shard_of[positions] = np.repeat(np.arange(len(lengths)), lengths)
    epochs = [_streamed_indices(Pipelines(config), e) for e in (0, 1)]
    for indices in epochs:
        assert len(indices) == 128 and len(set(indices)) == 128
        assert not any(i % p.minival_stride == 0 for i in indices)
        # Several shards at once: the first batch already mixes all four
        # (a fixed order through a buffer of 4 gives indices < 40 only).
        assert len(set(shard_of[indices[:16]])) == 4, indices[:16]
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(epochs[0], _streamed_indices(p, 0))  # resume: same order
    orders = [p.chunk_order(e).numpy().tolist() for e in range(6)]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders) and len(set(map(tuple, orders))) > 1


def test_skip_tops_up_an_epoch_without_reading_it_again(bad_folders, monkeypatch):
    """Review of #14: under skip a streamed epoch was read twice over
    (repeat(2): its shuffle buffer refilled, its start decoded again by the
    readers ahead), even when nothing was missing. Now it decodes exactly
    the records of its batches, and fills what is missing from its first
    batch."""
    _index_as_image(monkeypatch)
    bad, repaired = bad_folders
    # One batch of 71 an epoch: 70 of the 141 records are not in it.
    p = Pipelines(_config(bad, cache="false", bad_images="skip", batch_size=71))
    ref = Pipelines(_config(repaired, cache="false", batch_size=71))
    describe = p.source.train_records.describe
    dropped = {i for i in range(p.source.num_train) if "zz_" in describe(i)}
    assert len(dropped) == 2 and p.steps_per_epoch == 1
    orders = {e: _streamed_indices(ref, e) for e in range(20)}
    without = next(e for e, order in orders.items() if not set(order) & dropped)
    within = next(e for e, order in orders.items() if set(order) & dropped)
    for epoch in (without, within):
        decoded = _counting_decodes(p)
        indices = _streamed_indices(p, epoch)
        expected = [i for i in orders[epoch] if i not in dropped]
        expected += expected[: 71 - len(expected)]
        assert len(decoded) == 71 and len(indices) == 71
        np.testing.assert_array_equal(indices, expected)


def test_the_training_set_is_checked_on_first_use(bad_folders):
    """Review of #14: a cached training set was decoded whole when the
    pipelines were made, also for a conversion that needs 200
    representative images or the validation split only. Now it is checked
    on first use of the training data (train() calls `check_training`
    before it writes anything)."""
    bad, _ = bad_folders
    p = Pipelines(_config(bad, cache="true"))
    records = p.source.train_records
    first_bad = min(i for i in range(p.source.num_train) if "zz_" in records.describe(i))
    good_before = sum(1 for i in range(first_bad) if i % p.minival_stride)
    assert good_before >= 1
    assert len(list(p.representative(good_before))) == good_before
    assert sum(int(y.shape[0]) for _, y in p.validation()) == 60
    assert p.num_train_records == 141
    for use in (p.check_training, lambda: p.steps_per_epoch, lambda: p.train_epoch(0)):
        with pytest.raises(BadImageError, match=r"^Cannot decode 2 train image\(s\)"):
            use()
