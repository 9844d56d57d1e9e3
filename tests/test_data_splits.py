"""pss_keras.data.splits: an image folder's classes checked before the first
step, and a train-only folder split (the split given back read as it was).
"""

import logging
import os
import shutil
from collections import namedtuple

import pytest

from pss_keras.data.decoding import DatasetError
from pss_keras.data.sources import load_source
from pss_keras.data.splits import split_examples
from pss_keras.jobs.config import DataConfig


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def folder(tiny_image_folder, tmp_path):
    """A copy of the tiny folder (10 classes, 16 train / 6 val each) to change."""
    return shutil.copytree(tiny_image_folder, tmp_path / "shapes")


def _load(path, **kwargs):
    return load_source(DataConfig(dataset=str(path), image_size=32, **kwargs))


def _images(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".png"))


def test_an_empty_training_class_is_refused(folder):
    for name in _images(folder / "train" / "ring"):
        os.remove(folder / "train" / "ring" / name)
    with pytest.raises(DatasetError, match=r"class\(es\) ring have no training images") as info:
        _load(folder)
    assert "\n" not in str(info.value)


def test_a_class_only_in_val_is_refused(folder):
    shutil.rmtree(folder / "train" / "cross")
    with pytest.raises(
        DatasetError, match=r"class\(es\) cross have images in val/ but none in train/"
    ):
        _load(folder)


def test_a_single_class_is_refused(folder):
    for split in ("train", "val"):
        for name in os.listdir(folder / split):
            if name != "disc":
                shutil.rmtree(folder / split / name)
    with pytest.raises(DatasetError, match=r"has 1 class\(es\) with images \(disc\)"):
        _load(folder)
    shutil.rmtree(folder / "val")  # train/ alone, to be split: the same
    with pytest.raises(DatasetError, match=r"has 1 class\(es\) with images \(disc\)"):
        _load(folder)


def test_a_small_class_is_named_in_a_warning(folder, caplog):
    for name in _images(folder / "train" / "dots")[2:]:  # 2 of 16 < 0.2 x the median
        os.remove(folder / "train" / "dots" / name)
    for name in _images(folder / "train" / "ring")[4:]:  # 4 of 16: not small
        os.remove(folder / "train" / "ring" / name)
    with caplog.at_level(logging.WARNING):
        source = _load(folder)
    (message,) = [m for m in _warnings(caplog) if "median class" in m]
    assert "dots: 2" in message and "ring" not in message
    assert source.train_class_counts["dots"] == 2 and source.train_class_counts["ring"] == 4
    assert source.train_class_counts["disc"] == 16


def test_a_balanced_folder_loads_without_warning(tiny_image_folder, caplog):
    with caplog.at_level(logging.WARNING):
        source = _load(tiny_image_folder)
    assert not [m for m in _warnings(caplog) if "median class" in m]
    assert source.split is None and source.num_train == 160 and source.num_validation == 60
    assert set(source.train_class_counts.values()) == {16}


@pytest.fixture
def train_only(tiny_image_folder, tmp_path):
    """The tiny folder's train/ alone (16 images a class)."""
    root = tmp_path / "train_only"
    shutil.copytree(os.path.join(tiny_image_folder, "train"), root / "train")
    return root


def _class_of(relative):
    return relative.split(os.sep)[1]


def test_a_train_only_folder_is_split_per_class(train_only):
    source = _load(train_only, val_fraction=0.25, seed=3)
    split = source.split
    assert set(split) == {"train", "validation"}
    assert not set(split["train"]) & set(split["validation"])
    assert len(split["train"]) + len(split["validation"]) == 160
    per_class = {}
    for relative in split["validation"]:
        assert relative.startswith("train" + os.sep)
        per_class[_class_of(relative)] = per_class.get(_class_of(relative), 0) + 1
    assert per_class == {c: 4 for c in source.class_names}  # 0.25 of 16, every class
    assert (source.num_train, source.num_validation) == (120, 40)
    assert source.train_class_counts == {c: 12 for c in source.class_names}
    # The same seed: the same split; another seed: another one.
    assert _load(train_only, val_fraction=0.25, seed=3).split == split
    assert _load(train_only, val_fraction=0.25, seed=4).split != split
    # The default fraction: 0.1 of 16, rounded: 2 a class.
    assert _load(train_only).num_validation == 20


def test_a_train_only_folder_reads_the_split_it_is_given(train_only):
    split = _load(train_only, val_fraction=0.25, seed=3).split
    # Another seed and fraction in the config: the given split wins.
    source = load_source(
        DataConfig(dataset=str(train_only), image_size=32, val_fraction=0.5, seed=9), split
    )
    assert source.split == split and (source.num_train, source.num_validation) == (120, 40)
    # Its labels are the images' classes.
    labels = [int(y) for _, y in source.validation.as_numpy_iterator()]
    expected = [source.class_names.index(_class_of(r)) for r in split["validation"]]
    assert labels == expected


_Example = namedtuple("_Example", "image_path label")


def test_split_examples_rounds_per_class():
    examples = (
        [_Example(f"/d/train/a/{i}.png", "a") for i in range(10)]
        + [_Example(f"/d/train/b/{i}.png", "b") for i in range(3)]
        + [_Example("/d/train/c/0.png", "c")]
        + [_Example(f"/d/train/e/{i}.png", "e") for i in range(2)]
    )
    split = split_examples("/d", examples, 0.2, seed=0)
    held = {}
    for r in split["validation"]:
        held[_class_of(r)] = held.get(_class_of(r), 0) + 1
    # 2 of 10; 1 of 3 (0.6 rounds to 1); none of a class of 1; 1 of 2 (0.4: at least one).
    assert held == {"a": 2, "b": 1, "e": 1}
    assert os.path.join("train", "c", "0.png") in split["train"]
    # In the folder's order.
    order = [os.path.relpath(e.image_path, "/d") for e in examples]
    assert split["train"] == [r for r in order if r in split["train"]]
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(DatasetError, match="val_fraction"):
            split_examples("/d", examples, bad, seed=0)
