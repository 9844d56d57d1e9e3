import dataclasses
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from pss_keras.data import pipelines as data
from pss_keras.data import preprocessing

MEAN = np.array(preprocessing.MEAN_RGB)
STD = np.array(preprocessing.STDDEV_RGB)


def _to_pixels(normalized):
    """Normalized RGB back to 0..255, with the ImageNet constants themselves."""
    return (normalized * STD + MEAN) * 255.0


def _assert_normalized_range(images, min_span):
    """``images`` [..., 3] are (pixels / 255 - MEAN) / STD, per channel within
    what 0..255 maps to (0.1 of the range allowed for the lighting noise,
    added after the last clip), and spanning ``min_span`` of it."""
    lo, hi = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD
    flat = images.reshape(-1, 3)
    assert np.all(flat.min(0) >= lo - 0.1 / STD), (flat.min(0), lo)
    assert np.all(flat.max(0) <= hi + 0.1 / STD), (flat.max(0), hi)
    assert np.all(flat.max(0) - flat.min(0) >= min_span / STD), flat.max(0) - flat.min(0)


def _config(folder, **kw):
    base = dict(
        dataset=folder, image_size=32, batch_size=16, eval_batch_size=50, minival_examples=20
    )
    base.update(kw)
    return data.DataConfig(**base)


def test_folder_pipelines_split_and_shapes(tiny_image_folder):
    p = data.Pipelines(_config(tiny_image_folder))
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
    p = data.Pipelines(
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
    p = data.Pipelines(_config(tiny_image_folder))
    a = [x.numpy() for x, _ in p.train_epoch(3)]
    b = [x.numpy() for x, _ in data.Pipelines(_config(tiny_image_folder)).train_epoch(3)]
    np.testing.assert_array_equal(a[0], b[0])  # a resumed run sees the same batches
    c = next(iter(p.train_epoch(4)))[0].numpy()
    assert not np.array_equal(a[0], c)


def test_cached_training_sets_are_fully_shuffled_every_epoch(tiny_image_folder, monkeypatch):
    """A cached set's epoch draws from the whole set (issue: a 10k buffer
    over a fixed order correlated consecutive epochs); an uncached one keeps
    the bounded buffer. Each example's record index stands in for its image."""
    monkeypatch.setattr(
        data, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )

    def first_batch(cache):
        p = data.Pipelines(_config(tiny_image_folder, shuffle_buffer=4, cache=cache))
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


def test_eval_transform_resizes_the_shorter_side_and_centre_crops():
    # A wide greyscale image, dark in the middle, with bright 16-column bands
    # at both sides and a bright first and last row. At 32 px the shorter
    # side is resized to round(32 * 256 / 224) = 37 (80 -> 62 columns) and
    # the central 32 x 32 kept: source columns ~19.5..59.5, rows ~2.7..43,
    # all dark. Resizing without a crop, an off-centre crop, or resizing the
    # shorter side straight to 32 all bring bright pixels in.
    image = np.zeros((48, 80, 1), np.uint8)
    image[:, :16] = image[:, 64:] = 255
    image[0] = image[-1] = 255
    out = preprocessing.eval_transform(tf.constant(image), 32).numpy()
    dark = (0.0 - MEAN) / STD  # greyscale is tiled to RGB, then normalized
    np.testing.assert_allclose(out, np.broadcast_to(dark, (32, 32, 3)), atol=1e-5)

    # Random RGB content, landscape and portrait: exactly a bilinear resize
    # to (37, 62) / (62, 37), the central 32 x 32, then mean/std.
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3)).astype(np.uint8)
    landscape = ((37, 62), (2, 15))  # (resized h, w), (top, left): (37-32)//2, (62-32)//2
    portrait = ((62, 37), (15, 2))
    for source, ((h, w), (top, left)) in ((rgb, landscape), (rgb.transpose(1, 0, 2), portrait)):
        resized = tf.image.resize(source.astype(np.float32), (h, w), method="bilinear").numpy()
        crop = np.clip(resized[top : top + 32, left : left + 32] / 255.0, 0.0, 1.0)
        np.testing.assert_allclose(
            preprocessing.eval_transform(tf.constant(source), 32).numpy(),
            (crop - MEAN) / STD,
            atol=1e-5,
        )


def test_train_transform_normalizes_crops_and_flips():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (40, 60, 3)).astype(np.uint8))
    config = data.DataConfig(image_size=24)
    outs = [data.train_transform(image, tf.constant([s, 2]), config).numpy() for s in range(8)]
    assert all(out.shape == (24, 24, 3) for out in outs)
    again = data.train_transform(image, tf.constant([0, 2]), config).numpy()
    np.testing.assert_array_equal(outs[0], again)  # stateless
    # Colour noise narrows one image's span (0.56 of the range measured for
    # one of these seeds); the eight together span the whole range (1.0).
    _assert_normalized_range(np.stack(outs), min_span=0.5)

    plain = data.DataConfig(image_size=24, color_jitter=0.0, lighting=0.0)
    # Known pixels: without colour noise a constant image maps to
    # (v / 255 - MEAN) / STD wherever it is cropped, whether flipped or not.
    value = np.array([10, 128, 250], np.uint8)
    const = tf.constant(np.broadcast_to(value, (40, 60, 3)))
    out = data.train_transform(const, tf.constant([3, 4]), plain).numpy()
    np.testing.assert_allclose(
        out, np.broadcast_to((value / 255 - MEAN) / STD, out.shape), atol=1e-5
    )

    # Crops: the 40 x 60 image's aspect ratio (1.5) is outside the crop's
    # (3/4..4/3), so every seed takes a window of its own: no two outputs are
    # equal, even up to a flip.
    crops = [data.train_transform(image, tf.constant([s, 2]), plain).numpy() for s in range(8)]
    for i in range(len(crops)):
        for j in range(i):
            assert not np.allclose(crops[i], crops[j], atol=1e-3)
            assert not np.allclose(crops[i], crops[j][:, ::-1], atol=1e-3)

    # Flips: a square image cropped whole is the image or its mirror image,
    # and seeds give both.
    square = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    whole = data.DataConfig(image_size=24, crop_scale=(1.0, 1.0), color_jitter=0.0, lighting=0.0)
    expected = (square / 255.0 - MEAN) / STD
    flipped = []
    for s in range(16):
        out = data.train_transform(tf.constant(square), tf.constant([s, 5]), whole).numpy()
        if np.allclose(out, expected, atol=1e-4):
            flipped.append(False)
        else:
            np.testing.assert_allclose(out, expected[:, ::-1], atol=1e-4)
            flipped.append(True)
    assert any(flipped) and not all(flipped)


def test_dataset_errors(tiny_image_folder, tmp_path):
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.load_source(_config(str(tmp_path / "missing")))
    os.makedirs(tmp_path / "only_train" / "train" / "a")
    with pytest.raises(data.DatasetError, match="needs train/ and val/"):
        data.load_source(_config(str(tmp_path / "only_train"), val_fraction=0.0))
    with pytest.raises(data.DatasetError, match="only_train/train holds no images"):
        data.load_source(_config(str(tmp_path / "only_train")))  # split: but nothing to split
    with pytest.raises(data.DatasetError, match="Unknown dataset 'no_such_dataset_xyz'"):
        data.load_source(_config("no_such_dataset_xyz"))
    with pytest.raises(data.DatasetError, match="batch_size=512 is larger"):
        data.Pipelines(_config(tiny_image_folder, batch_size=512))
    with pytest.raises(data.DatasetError, match="leaves no training data"):
        data.Pipelines(_config(tiny_image_folder, minival_examples=500))


_BUILDER = """
import os, sys, time
import tensorflow as tf  # imported before the start signal, so both build at once
from pss_keras.data import toydata
built = []
original = toydata._build
toydata._build = lambda *a: (built.append(1), original(*a))
root, go = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
toydata.make_synthetic_shapes(root, 12, 4, image_size=32, seed=5)
print("built" if built else "reused", sorted(os.listdir(os.path.join(root, "train"))) == sorted(toydata.CLASSES))
"""


def test_synthetic_shapes_concurrent_builders_build_once(tmp_path):
    """Two processes asked for the set at the same moment (the workers of a
    multi-worker run): one builds, the other waits and reuses it; the result
    is complete and no temporary folder is left."""
    import subprocess
    import sys

    root, go = tmp_path / "shapes", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(root), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outcomes == ["built True", "reused True"]
    counts = [len(os.listdir(root / "train" / c)) for c in sorted(os.listdir(root / "train"))]
    assert counts == [12] * 10
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".synthetic_shapes-")]


@pytest.fixture(scope="module")
def tiny_tfds(tiny_image_folder, tmp_path_factory):
    """``(name, data_dir)``: the tiny folder as a prepared TFDS dataset (its
    builder can be registered once per process); copy ``data_dir`` to alter it."""
    data_dir = tmp_path_factory.mktemp("tfds")
    return _as_tfds_dataset(tiny_image_folder, data_dir), str(data_dir)


def _as_tfds_dataset(folder, data_dir, num_shards=4):
    """The tiny image folder prepared as a TFDS dataset of ``num_shards``
    TFRecord shards (how imagenet2012 is read: too big to cache)."""
    import tensorflow_datasets as tfds

    names = sorted(os.listdir(os.path.join(folder, "train")))

    class PssTinyShards(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(names=names),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples("train"),
                "validation": self._generate_examples("val"),
            }

        def _generate_examples(self, split):
            for name in names:
                for file in sorted(os.listdir(os.path.join(folder, split, name))):
                    path = os.path.join(folder, split, name, file)
                    yield f"{name}/{file}", {"image": path, "label": name}

    builder = PssTinyShards(data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=num_shards)
    )
    return "pss_tiny_shards"


def _streamed_indices(p, epoch):
    """Record indices of one epoch's training batches, in order (each
    example's record index stands in for its image)."""
    return np.concatenate([x.numpy().ravel() for x, _ in p.train_epoch(epoch)]).astype(int)


def test_tfds_shards_stream_in_a_fresh_order_each_epoch(tiny_tfds, monkeypatch):
    """Issue: an uncached TFDS split was read in one fixed record order
    (shuffle_files=False) through the buffer. Now each epoch reads the
    shards in its own order, several at once; minival stays the same records."""
    name, data_dir = tiny_tfds
    config = _config(name, data_dir=data_dir, cache="false", shuffle_buffer=4)
    p = data.Pipelines(config)
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
        data, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )
    import tensorflow_datasets as tfds

    lengths = tfds.builder(name, data_dir=data_dir).info.splits["train"].shard_lengths
    positions = data.interleave_positions(lengths, 16, 16)
    shard_of = np.empty(160, int)  # the shard of the record at each fixed-order position
    shard_of[positions] = np.repeat(np.arange(len(lengths)), lengths)
    epochs = [_streamed_indices(data.Pipelines(config), e) for e in (0, 1)]
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
    positions = data.interleave_positions(lengths, cycle, block)
    np.testing.assert_array_equal(positions[read], np.arange(len(read)))


def _jpeg(seed, size=32):
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype(np.uint8)
    return tf.io.encode_jpeg(image).numpy()


def _with_images(folder, target, images):
    """A copy of ``folder`` with ``images`` ({relative path: bytes}) added."""
    import shutil

    shutil.copytree(folder, target)
    for path, content in images.items():
        (target / path).write_bytes(content)
    return str(target)


_GARBAGE = "train/disc/zz_garbage.jpg"  # an HTML page saved as .jpg (scraped data)
_TRUNCATED = "train/square/zz_truncated.jpg"  # a download cut short


@pytest.fixture
def bad_folders(tiny_image_folder, tmp_path):
    """The tiny folder with a garbage and a truncated .jpg in train/, and the
    same folder with good images under those names (same files, same
    order, same record indices)."""
    bad = {_GARBAGE: b"<html><body>404 Not Found</body></html>", _TRUNCATED: _jpeg(1)[:400]}
    good = {_GARBAGE: _jpeg(2), _TRUNCATED: _jpeg(1)}
    return (
        _with_images(tiny_image_folder, tmp_path / "bad", bad),
        _with_images(tiny_image_folder, tmp_path / "repaired", good),
    )


def test_tensorflow_rejects_truncated_jpegs():
    """The check relies on TensorFlow's decoders refusing a truncated JPEG
    (no grey fill: try_recover_truncated is off), even one missing only its
    end-of-image marker."""
    jpeg = _jpeg(0, 64)
    assert jpeg[-2:] == b"\xff\xd9"
    tf.io.decode_image(jpeg, channels=3)  # the whole file decodes
    for cut in (jpeg[:-2], jpeg[: len(jpeg) // 2], jpeg[:200]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_image(cut, channels=3)


@pytest.mark.parametrize("cache", ["true", "false"])
def test_bad_images_fail_names_the_files(bad_folders, cache):
    """Issue #14: a garbage and a truncated .jpg stopped training with TF's
    'Unknown image file format' and no file name. A cached set is checked
    whole as it is cached (both named, before training); a streamed one
    stops at the first it reads, naming it."""
    bad, _ = bad_folders
    names = [os.path.join(bad, _GARBAGE), os.path.join(bad, _TRUNCATED)]
    if cache == "true":
        with pytest.raises(data.BadImageError) as error:
            data.Pipelines(_config(bad, cache=cache)).check_training()
        message = str(error.value)
        assert all(name in message for name in names), message
        assert message.startswith("Cannot decode 2 train image(s)")
    else:
        p = data.Pipelines(_config(bad, cache=cache))
        with pytest.raises(data.BadImageError) as error, p.bad_image_errors():
            list(p.train_epoch(0))
        message = str(error.value)
        assert message.startswith("Cannot decode 1 train image(s)")
        assert sum(name in message for name in names) == 1, message
    assert "\n" not in message
    assert message.endswith("Remove or replace them, or " + data.SKIP_HINT + ".")


@pytest.mark.parametrize("cache", ["true", "false"])
def test_bad_images_skip_drops_exactly_them(bad_folders, cache, monkeypatch, caplog):
    """With skip the two files are dropped, named in the log with their
    count, and nothing else changes: the other records keep their indices
    (minival: the same records), epochs stay deterministic and keep their
    number of batches, and a streamed epoch is the repaired folder's epoch
    without them."""
    bad, repaired = bad_folders
    monkeypatch.setattr(
        data, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )
    caplog.set_level("WARNING")
    p = data.Pipelines(_config(bad, cache=cache, bad_images="skip"))
    ref = data.Pipelines(_config(repaired, cache=cache))
    describe = p.source.train_records.describe
    n = p.source.num_train
    dropped = {
        i
        for i in range(n)
        if describe(i) in (os.path.join(bad, _GARBAGE), os.path.join(bad, _TRUNCATED))
    }
    assert len(dropped) == 2 and n == ref.source.num_train == 162
    good = [i for i in range(n) if i % p.minival_stride and i not in dropped]

    epochs = [_streamed_indices(p, e) for e in (0, 1)]
    assert len(epochs[0]) == len(epochs[1]) == p.steps_per_epoch * 16 == 128
    for epoch in epochs:
        assert not set(epoch) & dropped and set(epoch) <= set(good)
    np.testing.assert_array_equal(epochs[0], _streamed_indices(p, 0))  # resume: same batches
    fresh = data.Pipelines(_config(bad, cache=cache, bad_images="skip"))
    np.testing.assert_array_equal(epochs[1], _streamed_indices(fresh, 1))
    if cache == "true":  # checked whole: the counts are exact
        assert p.num_train == len(good) == 139 and p.num_minival == n - 139 - 2
        assert set(p.bad_images.found["train"]) == dropped
    else:  # the repaired folder's order, less the two
        expected = [i for i in _streamed_indices(ref, 0) if i not in dropped]
        np.testing.assert_array_equal(epochs[0][: len(expected)], expected)
        # 3 batches of 47 are all 141 records: without the two, the epoch's
        # first two examples fill its last batch.
        whole = data.Pipelines(_config(bad, cache=cache, bad_images="skip", batch_size=47))
        full = data.Pipelines(_config(repaired, cache=cache, batch_size=47))
        epoch = _streamed_indices(whole, 2)
        expected = [i for i in _streamed_indices(full, 2) if i not in dropped]
        assert len(epoch) == 141 and len(expected) == 139
        np.testing.assert_array_equal(epoch, expected + expected[:2])

    # Minival: the same records as the repaired folder's (neither is held out).
    assert not any(i % p.minival_stride == 0 for i in dropped)
    minival = np.concatenate([x.numpy() for x, _ in p.minival()])
    np.testing.assert_allclose(minival, np.concatenate([x.numpy() for x, _ in ref.minival()]))

    logged = caplog.text
    assert os.path.join(bad, _GARBAGE) in logged and os.path.join(bad, _TRUNCATED) in logged
    assert (
        "Skipping 2 unreadable train image(s)"
        if cache == "true"
        else "2 unreadable train image(s) so far"
    ) in logged


def test_bad_validation_images_are_checked_before_training(bad_folders, tmp_path, caplog):
    bad, _ = bad_folders
    folder = _with_images(bad, tmp_path / "bad_val", {"val/ring/zz_empty.jpg": b""})
    os.remove(os.path.join(folder, _GARBAGE))
    os.remove(os.path.join(folder, _TRUNCATED))
    p = data.Pipelines(_config(folder))
    with pytest.raises(
        data.BadImageError, match=r"Cannot decode 1 validation image\(s\): .*zz_empty.jpg"
    ):
        p.check_validation()
    skip = data.Pipelines(_config(folder, bad_images="skip"))
    caplog.set_level("WARNING")
    skip.check_validation()
    assert "zz_empty.jpg" in caplog.text
    assert sum(int(y.shape[0]) for _, y in skip.validation()) == 60  # 61 files, one dropped


def test_bad_images_setting(tiny_image_folder):
    from pss_keras.jobs.config import TrainConfig, json_round_trip

    with pytest.raises(ValueError, match="bad_images='ignore' must be one of"):
        data.Pipelines(_config(tiny_image_folder, bad_images="ignore"))
    # A run_config.json written before the setting existed reads as fail,
    # and the setting may change on resume (with no bad file, the batches
    # are the same either way).
    saved = json_round_trip(TrainConfig(job_dir="j").to_dict())
    del saved["data"]["bad_images"]
    assert TrainConfig.from_dict(saved).data.bad_images == "fail"
    skip = TrainConfig(job_dir="j", data=data.DataConfig(bad_images="skip"))
    assert skip.resume_conflicts(saved) == []
    other = TrainConfig(job_dir="j", data=data.DataConfig(bad_images="skip", cache="true"))
    assert other.resume_conflicts(saved) == ["cache"]


def test_bad_tfds_records_are_named_by_shard_and_record(tiny_tfds, tmp_path, monkeypatch):
    """A TFDS record whose image fails to decode (here: cut short inside a
    shard) is named by its shard file and record, and its fixed-order index
    is the one TFDS's own reader fails on; skip drops just that record."""
    import shutil

    import tensorflow_datasets as tfds

    name, clean = tiny_tfds
    shutil.copytree(clean, tmp_path / "tfds")  # the same shards, one record to cut short
    shard = os.fspath(
        tfds.builder(name, data_dir=str(tmp_path / "tfds")).info.splits["train"].filepaths[1]
    )
    records = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shard)]
    image = records[3].features.feature["image"].bytes_list
    image.value[0] = image.value[0][: len(image.value[0]) // 2]
    with tf.io.TFRecordWriter(shard) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    config = _config(name, data_dir=str(tmp_path / "tfds"), cache="false", shuffle_buffer=4)

    p = data.Pipelines(config)
    decoded = [int(i) for i, _ in p.source.train.enumerate().ignore_errors()]
    (bad,) = set(range(160)) - set(decoded)  # where TFDS's own reader fails
    described = f"{os.path.basename(shard)} record 3 (train index {bad})"
    assert p.source.train_records.describe(bad) == described
    with pytest.raises(data.BadImageError, match=re.escape(described)), p.bad_image_errors():
        list(p.train_epoch(0))

    monkeypatch.setattr(
        data, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )
    skip = data.Pipelines(dataclasses.replace(config, bad_images="skip"))
    clean = data.Pipelines(dataclasses.replace(config, data_dir=clean))
    epoch = _streamed_indices(skip, 0)
    expected = [i for i in _streamed_indices(clean, 0) if i != bad]
    assert len(epoch) == 128 and bad not in epoch
    np.testing.assert_array_equal(epoch[: len(expected)], expected)
    assert skip.bad_images.found["train"] == {bad: described}


def _counting_decodes(p):
    """Counts the training records ``p`` decodes from now on (each attempt,
    good or bad): a list that grows by one per decode."""
    records = p.source.train_records
    calls = []

    def decode(raw):
        counted = tf.py_function(lambda: calls.append(1) or 0, [], tf.int64)
        with tf.control_dependencies([counted]):
            return records.decode(tf.nest.map_structure(tf.identity, raw))

    p.source.train_records = dataclasses.replace(records, decode=decode)
    return calls


def _index_as_image(monkeypatch):
    """Training images become their record index (`_streamed_indices`)."""
    monkeypatch.setattr(
        data, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )


def test_a_bad_image_after_an_epochs_batches_is_not_read(tiny_image_folder, tmp_path, monkeypatch):
    """Review of #14: a streamed epoch ends at steps_per_epoch batches, so a
    bad image in the records after them (fewer than a batch) was decoded
    only when tf.data read ahead: then logged as an error and kept, though
    nothing stopped, and a later unrelated error was turned into a
    BadImageError naming it. Now an epoch decodes exactly the records of its
    batches: such an image is not read that epoch (an epoch whose batches
    hold it stops); a stop is reported for its own split only, and only
    inside the `bad_image_errors` block it happened in."""
    _index_as_image(monkeypatch)
    bad = _with_images(
        tiny_image_folder,
        tmp_path / "bad",
        {_GARBAGE: b"<html></html>", "val/ring/zz_empty.jpg": b""},
    )
    repaired = _with_images(
        tiny_image_folder, tmp_path / "repaired", {_GARBAGE: _jpeg(2), "val/ring/zz_empty.jpg": b""}
    )
    p = data.Pipelines(_config(bad, cache="false", batch_size=140))
    path = os.path.join(bad, _GARBAGE)
    (index,) = [i for i in range(p.source.num_train) if p.source.train_records.describe(i) == path]
    # Each epoch's whole order (140 records, one batch), from the good folder.
    whole = data.Pipelines(_config(repaired, cache="false", batch_size=140))
    assert whole.num_train == p.num_train == 140 and whole.steps_per_epoch == 1
    orders = (list(_streamed_indices(whole, e)) for e in range(20))
    epoch, order = next((e, o) for e, o in enumerate(orders) if o.index(index) > 70)
    position = order.index(index)
    # Batches of `position` images: the bad one is the first record after
    # the epoch's one batch; with one more, the last record of that batch.
    after = data.Pipelines(_config(bad, cache="false", batch_size=position))
    decoded = _counting_decodes(after)
    assert list(_streamed_indices(after, epoch)) == order[:position]
    assert len(decoded) == position
    assert after.bad_images.found["train"] == {} and after.bad_images.failures == {}

    last = data.Pipelines(_config(bad, cache="false", batch_size=position + 1))
    with pytest.raises(data.BadImageError) as error, last.bad_image_errors():
        list(last.train_epoch(epoch))
    assert str(error.value) == (
        f"Cannot decode 1 train image(s): {path}. Remove or replace them, or {data.SKIP_HINT}."
    )
    # Later, the validation split's own bad image names itself, and an error
    # that is no bad image passes unchanged.
    with pytest.raises(data.BadImageError, match=r"^Cannot decode 1 validation image\(s\): "):
        with last.bad_image_errors():
            list(last.validation())
    with pytest.raises(tf.errors.InvalidArgumentError), last.bad_image_errors():
        tf.io.decode_image(b"not an image")
    hinted = data.Pipelines(_config(bad), skip_hint="do something else")
    with pytest.raises(data.BadImageError, match=r"zz_empty.jpg. Remove or replace them, or do "
                       r"something else\.$"):  # fmt: skip
        hinted.check_validation()


def test_skip_tops_up_an_epoch_without_reading_it_again(bad_folders, monkeypatch):
    """Review of #14: under skip a streamed epoch was read twice over
    (repeat(2): its shuffle buffer refilled, its start decoded again by the
    readers ahead), even when nothing was missing. Now it decodes exactly
    the records of its batches, and fills what is missing from its first
    batch."""
    _index_as_image(monkeypatch)
    bad, repaired = bad_folders
    # One batch of 71 an epoch: 70 of the 141 records are not in it.
    p = data.Pipelines(_config(bad, cache="false", bad_images="skip", batch_size=71))
    ref = data.Pipelines(_config(repaired, cache="false", batch_size=71))
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
    p = data.Pipelines(_config(bad, cache="true"))
    records = p.source.train_records
    first_bad = min(i for i in range(p.source.num_train) if "zz_" in records.describe(i))
    good_before = sum(1 for i in range(first_bad) if i % p.minival_stride)
    assert good_before >= 1
    assert len(list(p.representative(good_before))) == good_before
    assert sum(int(y.shape[0]) for _, y in p.validation()) == 60
    assert p.num_train_records == 141
    for use in (p.check_training, lambda: p.steps_per_epoch, lambda: p.train_epoch(0)):
        with pytest.raises(data.BadImageError, match=r"^Cannot decode 2 train image\(s\)"):
            use()


def test_folder_records_warning_names_the_split(caplog):
    """A TFDS without ImageFolder's file list: the warning names the split it
    is about (it said "a streamed training set" for the validation split)."""
    import types

    caplog.set_level("WARNING")
    assert data._folder_records(types.SimpleNamespace(), "val") is None
    assert "val" in caplog.text and "training" not in caplog.text
    caplog.clear()
    assert data._folder_records(types.SimpleNamespace(), "train") is None
    assert "train files" in caplog.text and "shuffle buffer" in caplog.text
