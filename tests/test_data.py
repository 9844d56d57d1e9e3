import os

import numpy as np
import pytest
import tensorflow as tf

from pss_keras import data


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
    assert abs(float(tf.reduce_mean(images))) < 2.0  # normalized, not 0..255
    mv = [(x, y) for x, y in p.minival()]
    assert sum(int(y.shape[0]) for _, y in mv) == 20 and mv[0][0].shape[1:] == (32, 32, 3)
    assert sum(int(y.shape[0]) for _, y in p.validation()) == 60


def test_minival_never_enters_training(tiny_image_folder):
    p = data.Pipelines(_config(tiny_image_folder, cache="false"))
    stride = p.minival_stride
    train_ids = [int(i) for i, _ in p._train_examples()]
    held_out = [i for i in range(p.source.num_train) if i % stride == 0]
    assert not set(train_ids) & set(held_out) and len(train_ids) + len(held_out) == 160


def test_epochs_are_deterministic_and_differ(tiny_image_folder):
    p = data.Pipelines(_config(tiny_image_folder))
    a = [x.numpy() for x, _ in p.train_epoch(3)]
    b = [x.numpy() for x, _ in data.Pipelines(_config(tiny_image_folder)).train_epoch(3)]
    np.testing.assert_array_equal(a[0], b[0])  # a resumed run sees the same batches
    c = next(iter(p.train_epoch(4)))[0].numpy()
    assert not np.array_equal(a[0], c)


def test_eval_transform_resizes_and_centre_crops():
    image = tf.cast(tf.random.uniform((48, 80, 1), 0, 255, dtype=tf.int32), tf.uint8)  # greyscale
    out = data.eval_transform(image, 32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(
        out[..., 0] * data.STDDEV_RGB[0] + data.MEAN_RGB[0],
        out[..., 1] * data.STDDEV_RGB[1] + data.MEAN_RGB[1],
        atol=1e-5,
    )


def test_train_transform_shape_and_range():
    image = tf.cast(tf.random.uniform((40, 60, 3), 0, 255, dtype=tf.int32), tf.uint8)
    out = data.train_transform(image, tf.constant([1, 2]), data.DataConfig(image_size=24))
    assert out.shape == (24, 24, 3)
    again = data.train_transform(image, tf.constant([1, 2]), data.DataConfig(image_size=24))
    np.testing.assert_array_equal(out, again)  # stateless


def test_dataset_errors(tiny_image_folder, tmp_path):
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.load_source(_config(str(tmp_path / "missing")))
    os.makedirs(tmp_path / "only_train" / "train" / "a")
    with pytest.raises(data.DatasetError, match="needs train/ and val/"):
        data.load_source(_config(str(tmp_path / "only_train")))
    with pytest.raises(data.DatasetError, match="Unknown dataset 'no_such_dataset_xyz'"):
        data.load_source(_config("no_such_dataset_xyz"))
    with pytest.raises(data.DatasetError, match="batch_size=512 is larger"):
        data.Pipelines(_config(tiny_image_folder, batch_size=512))
    with pytest.raises(data.DatasetError, match="leaves no training data"):
        data.Pipelines(_config(tiny_image_folder, minival_examples=500))
