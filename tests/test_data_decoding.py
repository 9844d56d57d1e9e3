"""pss_keras.data.decoding: images that fail to decode, named, failed or
skipped (through `Pipelines`, which applies the policy).
"""

import dataclasses
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import (
    _GARBAGE,
    _TRUNCATED,
    _config,
    _counting_decodes,
    _index_as_image,
    _jpeg,
    _streamed_indices,
    _with_images,
)

from pss_keras.data import pipelines
from pss_keras.data.decoding import SKIP_HINT, BadImageError
from pss_keras.data.pipelines import Pipelines
from pss_keras.jobs.config import DataConfig


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
        with pytest.raises(BadImageError) as error:
            Pipelines(_config(bad, cache=cache)).check_training()
        message = str(error.value)
        assert all(name in message for name in names), message
        assert message.startswith("Cannot decode 2 train image(s)")
    else:
        p = Pipelines(_config(bad, cache=cache))
        with pytest.raises(BadImageError) as error, p.bad_image_errors():
            list(p.train_epoch(0))
        message = str(error.value)
        assert message.startswith("Cannot decode 1 train image(s)")
        assert sum(name in message for name in names) == 1, message
    assert "\n" not in message
    assert message.endswith("Remove or replace them, or " + SKIP_HINT + ".")


@pytest.mark.parametrize("cache", ["true", "false"])
def test_bad_images_skip_drops_exactly_them(bad_folders, cache, monkeypatch, caplog):
    """With skip the two files are dropped, named in the log with their
    count, and nothing else changes: the other records keep their indices
    (minival: the same records), epochs stay deterministic and keep their
    number of batches, and a streamed epoch is the repaired folder's epoch
    without them."""
    bad, repaired = bad_folders
    monkeypatch.setattr(
        pipelines, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )
    caplog.set_level("WARNING")
    p = Pipelines(_config(bad, cache=cache, bad_images="skip"))
    ref = Pipelines(_config(repaired, cache=cache))
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
    fresh = Pipelines(_config(bad, cache=cache, bad_images="skip"))
    np.testing.assert_array_equal(epochs[1], _streamed_indices(fresh, 1))
    if cache == "true":  # checked whole: the counts are exact
        assert p.num_train == len(good) == 139 and p.num_minival == n - 139 - 2
        assert set(p.bad_images.found["train"]) == dropped
    else:  # the repaired folder's order, less the two
        expected = [i for i in _streamed_indices(ref, 0) if i not in dropped]
        np.testing.assert_array_equal(epochs[0][: len(expected)], expected)
        # 3 batches of 47 are all 141 records: without the two, the epoch's
        # first two examples fill its last batch.
        whole = Pipelines(_config(bad, cache=cache, bad_images="skip", batch_size=47))
        full = Pipelines(_config(repaired, cache=cache, batch_size=47))
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
    p = Pipelines(_config(folder))
    with pytest.raises(
        BadImageError, match=r"Cannot decode 1 validation image\(s\): .*zz_empty.jpg"
    ):
        p.check_validation()
    skip = Pipelines(_config(folder, bad_images="skip"))
    caplog.set_level("WARNING")
    skip.check_validation()
    assert "zz_empty.jpg" in caplog.text
    assert sum(int(y.shape[0]) for _, y in skip.validation()) == 60  # 61 files, one dropped


def test_bad_images_setting(tiny_image_folder):
    from pss_keras.jobs.config import TrainConfig, json_round_trip

    with pytest.raises(ValueError, match="bad_images='ignore' must be one of"):
        Pipelines(_config(tiny_image_folder, bad_images="ignore"))
    # A run_config.json written before the setting existed reads as fail,
    # and the setting may change on resume (with no bad file, the batches
    # are the same either way).
    saved = json_round_trip(TrainConfig(job_dir="j").to_dict())
    del saved["data"]["bad_images"]
    assert TrainConfig.from_dict(saved).data.bad_images == "fail"
    skip = TrainConfig(job_dir="j", data=DataConfig(bad_images="skip"))
    assert skip.resume_conflicts(saved) == []
    other = TrainConfig(job_dir="j", data=DataConfig(bad_images="skip", cache="true"))
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

    p = Pipelines(config)
    decoded = [int(i) for i, _ in p.source.train.enumerate().ignore_errors()]
    (bad,) = set(range(160)) - set(decoded)  # where TFDS's own reader fails
    described = f"{os.path.basename(shard)} record 3 (train index {bad})"
    assert p.source.train_records.describe(bad) == described
    with pytest.raises(BadImageError, match=re.escape(described)), p.bad_image_errors():
        list(p.train_epoch(0))

    monkeypatch.setattr(
        pipelines, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )
    skip = Pipelines(dataclasses.replace(config, bad_images="skip"))
    clean = Pipelines(dataclasses.replace(config, data_dir=clean))
    epoch = _streamed_indices(skip, 0)
    expected = [i for i in _streamed_indices(clean, 0) if i != bad]
    assert len(epoch) == 128 and bad not in epoch
    np.testing.assert_array_equal(epoch[: len(expected)], expected)
    assert skip.bad_images.found["train"] == {bad: described}


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
    p = Pipelines(_config(bad, cache="false", batch_size=140))
    path = os.path.join(bad, _GARBAGE)
    (index,) = [i for i in range(p.source.num_train) if p.source.train_records.describe(i) == path]
    # Each epoch's whole order (140 records, one batch), from the good folder.
    whole = Pipelines(_config(repaired, cache="false", batch_size=140))
    assert whole.num_train == p.num_train == 140 and whole.steps_per_epoch == 1
    orders = (list(_streamed_indices(whole, e)) for e in range(20))
    epoch, order = next((e, o) for e, o in enumerate(orders) if o.index(index) > 70)
    position = order.index(index)
    # Batches of `position` images: the bad one is the first record after
    # the epoch's one batch; with one more, the last record of that batch.
    after = Pipelines(_config(bad, cache="false", batch_size=position))
    decoded = _counting_decodes(after)
    assert list(_streamed_indices(after, epoch)) == order[:position]
    assert len(decoded) == position
    assert after.bad_images.found["train"] == {} and after.bad_images.failures == {}

    last = Pipelines(_config(bad, cache="false", batch_size=position + 1))
    with pytest.raises(BadImageError) as error, last.bad_image_errors():
        list(last.train_epoch(epoch))
    assert str(error.value) == (
        f"Cannot decode 1 train image(s): {path}. Remove or replace them, or {SKIP_HINT}."
    )
    # Later, the validation split's own bad image names itself, and an error
    # that is no bad image passes unchanged.
    with pytest.raises(BadImageError, match=r"^Cannot decode 1 validation image\(s\): "):
        with last.bad_image_errors():
            list(last.validation())
    with pytest.raises(tf.errors.InvalidArgumentError), last.bad_image_errors():
        tf.io.decode_image(b"not an image")
    hinted = Pipelines(_config(bad), skip_hint="do something else")
    with pytest.raises(BadImageError, match=r"zz_empty.jpg. Remove or replace them, or do "
                       r"something else\.$"):  # fmt: skip
        hinted.check_validation()
