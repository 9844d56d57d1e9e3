"""pss_keras.data.sources: finding a dataset, and what is said when it cannot be used."""

import os

import pytest
from data_helpers import _config

from pss_keras.data import sources
from pss_keras.data.decoding import DatasetError
from pss_keras.data.pipelines import Pipelines
from pss_keras.data.sources import load_source


def test_dataset_errors(tiny_image_folder, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_source(_config(str(tmp_path / "missing")))
    os.makedirs(tmp_path / "only_train" / "train" / "a")
    with pytest.raises(DatasetError, match="needs train/ and val/"):
        load_source(_config(str(tmp_path / "only_train"), val_fraction=0.0))
    with pytest.raises(DatasetError, match="only_train/train holds no images"):
        load_source(_config(str(tmp_path / "only_train")))  # split: but nothing to split
    with pytest.raises(DatasetError, match="Unknown dataset 'no_such_dataset_xyz'"):
        load_source(_config("no_such_dataset_xyz"))
    with pytest.raises(DatasetError, match="batch_size=512 is larger"):
        Pipelines(_config(tiny_image_folder, batch_size=512))
    with pytest.raises(DatasetError, match="leaves no training data"):
        Pipelines(_config(tiny_image_folder, minival_examples=500))


def test_folder_records_warning_names_the_split(caplog):
    """A TFDS without ImageFolder's file list: the warning names the split it
    is about (it said "a streamed training set" for the validation split)."""
    import types

    caplog.set_level("WARNING")
    assert sources._folder_records(types.SimpleNamespace(), "val") is None
    assert "val" in caplog.text and "training" not in caplog.text
    caplog.clear()
    assert sources._folder_records(types.SimpleNamespace(), "train") is None
    assert "train files" in caplog.text and "shuffle buffer" in caplog.text
