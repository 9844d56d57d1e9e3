"""Helpers of the tests of pss_keras.data (tests/test_data_*.py); their
fixtures (tiny_tfds, bad_folders) are at the end of conftest.py."""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from pss_keras.data import pipelines, preprocessing
from pss_keras.jobs.config import DataConfig

MEAN = np.array(preprocessing.MEAN_RGB)
STD = np.array(preprocessing.STDDEV_RGB)


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
    return DataConfig(**base)


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
        pipelines, "train_transform", lambda image, seed, config: tf.cast(seed[1:], tf.float32)
    )
