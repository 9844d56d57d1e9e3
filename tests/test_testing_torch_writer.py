"""torch.save files written without torch (pss_keras.testing.torch_writer):
they read back with our reader, in torch's zip layout, and a reference-like
file loads as the official checkpoints do."""

import collections
import os
import random
import struct
import zipfile

import numpy as np
import pytest
from conftest import shared_data_folder

import pss_keras
from pss_keras.cost import flops
from pss_keras.supernet import reference_checkpoint as reference
from pss_keras.supernet import specs
from pss_keras.supernet.torch_files import read_checkpoint
from pss_keras.testing import torch_writer
from pss_keras.training import reference_tiers

REFERENCE_CHECKPOINTS = shared_data_folder(
    "PSS_KERAS_REFERENCE_CHECKPOINTS", "reference_checkpoints"
)


def _arrays():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    state = collections.OrderedDict(w=base * 0.5, n=np.array(7, np.int64))
    state._metadata = {"": {"version": 1}}
    return {
        "model": state,
        "strided": base[:, ::2],  # strides (4, 2) in elements
        "transposed": base.T,
        "bytes": np.arange(5, dtype=np.uint8),
        "mixed": [np.array([1.5, -2.0], np.float16), (np.array([True, False]), "text", 3)],
        "empty": np.zeros((0, 3), np.float32),
        "plain": torch_writer.NumpyArray(np.arange(4, dtype=np.uint32)),
    }


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_written_arrays_read_back_the_same(tmp_path, byteorder):
    obj = _arrays()
    path = torch_writer.write_torch_checkpoint(tmp_path / "a.pt", obj, byteorder)
    loaded = read_checkpoint(path)
    assert isinstance(loaded["model"], collections.OrderedDict)
    assert list(loaded["model"]) == ["w", "n"]
    assert loaded["model"]._metadata == {"": {"version": 1}}
    pairs = [
        (loaded["model"]["w"], obj["model"]["w"]),
        (loaded["model"]["n"], obj["model"]["n"]),
        (loaded["strided"], obj["strided"]),
        (loaded["transposed"], obj["transposed"]),
        (loaded["bytes"], obj["bytes"]),
        (loaded["mixed"][0], obj["mixed"][0]),
        (loaded["mixed"][1][0], obj["mixed"][1][0]),
        (loaded["empty"], obj["empty"]),
        (loaded["plain"], obj["plain"].array),
    ]
    for got, want in pairs:
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert loaded["mixed"][1][1:] == ("text", 3)


def _records(path) -> dict:
    """``{name: (offset of its data, size)}`` from the local headers."""
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            out[info.filename] = (info.header_offset + 30 + name_len + extra_len, info.file_size)
    return out


def test_the_zip_layout_is_torch_2s(tmp_path):
    path = torch_writer.write_torch_checkpoint(tmp_path / "a.pt", _arrays(), top="a")
    records = _records(path)
    storages = [f"a/data/{i}" for i in range(8)]
    assert list(records) == [
        "a/data.pkl", "a/.format_version", "a/.storage_alignment", "a/byteorder", *storages,
        "a/version", "a/.data/serialization_id",
    ]  # fmt: skip
    assert all(offset % 64 == 0 for offset, _ in records.values())  # torch aligns to 64
    # the strided view kept its strides: its storage spans 1 + 2 * 4 + 1 * 2 elements
    assert records["a/data/2"][1] == 11 * 4
    with zipfile.ZipFile(path) as z:
        assert z.read("a/byteorder") == b"little" and z.read("a/version") == b"3\n"
        data = z.read("a/data.pkl")
    assert b"ctorch\nFloatStorage\n" in data and b"ctorch\nLongStorage\n" in data
    assert b"ctorch._utils\n_rebuild_tensor_v2\n" in data


def test_refuses_what_torch_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="No torch storage holds complex64"):
        torch_writer.write_torch_checkpoint(tmp_path / "a.pt", {"c": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError, match="byteorder='middle'"):
        torch_writer.write_torch_checkpoint(tmp_path / "a.pt", {}, byteorder="middle")


def test_a_reference_like_file_has_the_fixtures_layout(tmp_path):
    """Same keys, shapes, dtypes and records as the official code's files."""
    for short, model_name in (("mbv1", "mobilenet_v1"), ("mbv2", "mobilenet_v2")):
        fixture = os.path.join(REFERENCE_CHECKPOINTS, f"{short}_random.pt")
        if not os.path.isfile(fixture):
            pytest.skip(f"no reference checkpoints in {REFERENCE_CHECKPOINTS}")
        path = torch_writer.reference_like_checkpoint(tmp_path / f"{short}.pt", model_name, 10)
        ours, theirs = read_checkpoint(path), read_checkpoint(fixture)
        assert list(ours) == list(theirs)
        assert list(ours["model"]) == list(theirs["model"])
        for key, value in theirs["model"].items():
            mine = ours["model"][key]
            assert (mine.shape, mine.dtype) == (value.shape, value.dtype), key
        metadata = theirs["model"]._metadata
        assert all(metadata[k] == v for k, v in ours["model"]._metadata.items())
        assert ours["optimizer"] == theirs["optimizer"]
        assert ours["lr_scheduler"] == theirs["lr_scheduler"]
        ours_pools, theirs_pools = ours["arch_pools"], theirs["arch_pools"]
        assert ours_pools["infer_metric_target_list"] == theirs_pools["infer_metric_target_list"]
        assert list(ours_pools["pools"]["flops"]) == list(theirs_pools["pools"]["flops"])
        assert [n.split("/", 1)[1] for n in zipfile.ZipFile(path).namelist()] == [
            n.split("/", 1)[1] for n in zipfile.ZipFile(fixture).namelist()
        ]


def test_a_reference_like_file_loads_with_its_pools(tmp_path):
    space = specs.SearchSpace("mobilenet_v1", **reference.REFERENCE_SPACE)
    configs = [space.smallest(), space.largest(), space.random(random.Random(3))]
    path = torch_writer.reference_like_checkpoint(
        tmp_path / "mbv1.pt", "mobilenet_v1", num_classes=10, seed=1, pools=configs
    )
    loaded = pss_keras.load_reference_checkpoint(path, "mobilenet_v1")
    assert loaded.supernet.num_classes == 10
    tiers = loaded.tiers["flops"]
    assert tiers[110] == (space.smallest(),) and tiers[570] == (space.largest(),)
    assert sum(len(t) for t in tiers.values()) == 3
    pools = reference.reference_pools(loaded.checkpoint["arch_pools"], space)
    reference_tiers.check_pool_flops(pools, path)  # infer_metric is our count
    for target, entries in pools["flops"].items():
        for config, score, recorded in entries:
            mflops = flops.count_mflops(config, 1000, 1.0)
            assert recorded["infer_metric_target"] == target and score < 0
            assert abs(target - mflops) <= 5 or target in (110, 570)
    state = read_checkpoint(path)["model"]
    assert all(state[k].min() > 0 for k in state if k.endswith("running_var"))


def test_a_1000_class_mobilenet_v1_is_about_17_mb(tmp_path):
    path = torch_writer.reference_like_checkpoint(tmp_path / "big.pt", "mobilenet_v1")
    assert 16.5e6 < os.path.getsize(path) < 17.5e6
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
