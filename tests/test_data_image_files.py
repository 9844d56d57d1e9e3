"""Images from a plain folder (pss_keras.data.image_files): calibration
batches and a class-folder evaluation set labelled by a model's classes."""

import os

import numpy as np
import pytest
import tensorflow as tf

from pss_keras.data import image_files
from pss_keras.data.decoding import DatasetError


def _png(path, value, size=(20, 28)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.full((*size, 3), value, np.uint8)
    tf.io.write_file(path, tf.io.encode_png(image))


@pytest.fixture
def folder(tmp_path):
    """Two class folders named like ImageNet wnids, three images each."""
    root = tmp_path / "val"
    for c, wnid in enumerate(("n01440764", "n02102040")):
        for i in range(3):
            _png(str(root / wnid / f"{i}.png"), 40 * c + 10 * i)
    return str(root)


def test_image_files_walks_every_depth_sorted_and_skips_hidden(folder, tmp_path):
    _png(os.path.join(folder, ".hidden", "x.png"), 0)
    (tmp_path / "val" / "notes.txt").write_text("not an image")
    files = image_files.image_files(folder)
    assert len(files) == 6 and files == sorted(files)
    assert all(".hidden" not in f for f in files)
    with pytest.raises(DatasetError, match="none is not a folder of images"):
        image_files.image_files(str(tmp_path / "val" / ".hidden" / "none"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DatasetError, match="empty holds no images"):
        image_files.image_files(str(tmp_path / "empty"))


def test_calibration_batches_are_training_crops_of_the_folder(folder):
    batches = image_files.calibration_batches(folder, 2, 4, 16, seed=3)
    assert [tuple(b.shape) for b in batches] == [(4, 16, 16, 3)] * 2
    assert all(b.dtype == tf.float32 for b in batches)
    # Normalized (ImageNet mean/std): a constant grey image is near 0, not 0..255.
    assert float(tf.reduce_max(tf.abs(batches[0]))) < 5.0
    again = image_files.calibration_batches(folder, 2, 4, 16, seed=3)
    np.testing.assert_array_equal(batches[1].numpy(), again[1].numpy())  # a function of the seed


def test_an_undecodable_calibration_image_is_named(folder):
    bad = os.path.join(folder, "n01440764", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg cannot be decoded as an image"):
        image_files.calibration_batches(folder, 2, 4, 16)  # 8 of 7 files: every one is read
    assert image_files.first_bad_file(folder) == bad


def test_class_folders_take_the_index_of_their_class_name(folder):
    classes = ["n00000001", "n01440764", "n01443537", "n02102040"]
    assert image_files.folder_labels(folder, classes) == [("n01440764", 1), ("n02102040", 3)]
    labels = np.concatenate(
        [y.numpy() for _, y in image_files.labelled_folder(folder, classes, 16, 4)]
    )
    assert labels.tolist() == [1, 1, 1, 3, 3, 3]
    images = next(iter(image_files.labelled_folder(folder, classes, 16, 4)))[0]
    assert tuple(images.shape) == (4, 16, 16, 3)


def test_unnamed_classes_take_the_sorted_folders_in_order(folder):
    assert image_files.folder_labels(folder, ["class_0", "class_1"]) == [
        ("n01440764", 0),
        ("n02102040", 1),
    ]
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['n01440764', 'n02102040'\] name"):
        image_files.folder_labels(folder, ["class_0", "class_1", "class_2"])


def test_a_missing_or_unprepared_source_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="is not a folder of class folders"):
        image_files.folder_labels(str(tmp_path / "nowhere"), ["a"])
    with pytest.raises(DatasetError, match="neither a folder nor a prepared TFDS dataset"):
        image_files.calibration_batches(
            "no_such_dataset_xyz", 1, 2, 16, data_dir=str(tmp_path / "tfds")
        )
