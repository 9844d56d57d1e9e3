"""Reading ``torch.save`` checkpoints without PyTorch (pss_keras.supernet.torch_files).

Most tests build their checkpoints by hand in tmp_path (no torch: the
stand-ins of pss_keras.testing.torch_writer, pickled with torch's globals
into a zip in torch's layout); the first ones read the two reference
fixtures, when present.
"""

import collections
import os
import pickle
import random
import zipfile

import numpy as np
import pytest
from conftest import shared_data_folder

from pss_keras.supernet.torch_files import STORAGE_DTYPES, CheckpointError, read_checkpoint
from pss_keras.testing.torch_writer import Parameter, Storage, Tensor, pickled, write_records

# The official code's checkpoints (random weights): $PSS_KERAS_REFERENCE_CHECKPOINTS,
# or a shared/data/reference_checkpoints folder beside the repository's folder.
REFERENCE_CHECKPOINTS = shared_data_folder(
    "PSS_KERAS_REFERENCE_CHECKPOINTS", "reference_checkpoints"
)
TOP_KEYS = [
    "model", "optimizer", "lr_scheduler", "last_epoch", "arch_pools", "random_state",
    "np_random_state", "torch_rng_state", "torch_cuda_rng_state",
]  # fmt: skip


@pytest.fixture(scope="module")
def reference():
    """{'mbv1': checkpoint, 'mbv2': checkpoint}, read once."""
    paths = {m: os.path.join(REFERENCE_CHECKPOINTS, f"{m}_random.pt") for m in ("mbv1", "mbv2")}
    if not all(os.path.isfile(p) for p in paths.values()):
        pytest.skip(
            f"no reference checkpoints (mbv1_random.pt, mbv2_random.pt) in {REFERENCE_CHECKPOINTS}; "
            "set PSS_KERAS_REFERENCE_CHECKPOINTS to the folder that holds them"
        )
    return {m: read_checkpoint(p) for m, p in paths.items()}


# -- the reference fixtures ------------------------------------------------------
@pytest.mark.parametrize("model, stem_bn, classifier", [("mbv1", 32, 1024), ("mbv2", 32, 1280)])
def test_reference_checkpoints_load(reference, model, stem_bn, classifier):
    checkpoint = reference[model]
    assert list(checkpoint) == TOP_KEYS
    state = checkpoint["model"]
    assert isinstance(state, collections.OrderedDict)
    assert all(k.startswith("module.") for k in state)
    expected = {
        "module.features.0.0.weight": ((32, 3, 3, 3), np.float32),  # conv [O, I, kh, kw]
        "module.features.0.1.weight": ((stem_bn,), np.float32),
        "module.features.0.1.bn.running_var": ((stem_bn,), np.float32),
        "module.features.0.1.bn.num_batches_tracked": ((), np.int64),
        "module.classifier.0.weight": ((10, classifier), np.float32),
        "module.classifier.0.bias": ((10,), np.float32),
    }
    for key, (shape, dtype) in expected.items():
        assert state[key].shape == shape and state[key].dtype == dtype, key
    depthwise = state[
        "module.features.1.0.weight" if model == "mbv1" else "module.features.1.body.0.weight"
    ]
    assert depthwise.shape == (32, 1, 3, 3)
    assert all(isinstance(v, np.ndarray) and v.flags.c_contiguous for v in state.values())
    assert checkpoint["last_epoch"] == 249
    assert checkpoint["optimizer"]["state"] == {}
    assert checkpoint["torch_rng_state"].dtype == np.uint8


def test_reference_arch_pools_and_random_states(reference):
    for model, (top, bottom) in {"mbv1": (570, 110), "mbv2": (300, 70)}.items():
        pools = reference[model]["arch_pools"]
        assert set(pools) == {"max_size", "infer_metric_target_list", "pools"}
        targets = pools["infer_metric_target_list"]["flops"]
        assert targets == list(range(top, bottom - 1, -10))
        assert sorted(pools["pools"]["flops"]) == sorted(targets)
        assert all(isinstance(p, dict) for p in pools["pools"]["flops"].values())

        name, keys, pos, *_ = state = reference[model]["np_random_state"]
        assert (name, keys.dtype, keys.shape, pos) == ("MT19937", np.uint32, (624,), 624)
        np.random.RandomState().set_state(state)  # a state NumPy takes back
        random.Random().setstate(reference[model]["random_state"])


def test_reference_values_are_the_stored_bytes(reference):
    """Not trivially true: the stem conv is record data/0 read as little-endian
    float32 in [O, I, kh, kw] order, and BN is randomized (weights not 1)."""
    path = os.path.join(REFERENCE_CHECKPOINTS, "mbv1_random.pt")
    with zipfile.ZipFile(path) as z:
        raw = np.frombuffer(z.read("mbv1_random/data/0"), "<f4")
    state = reference["mbv1"]["model"]
    conv = state["module.features.0.0.weight"]
    np.testing.assert_array_equal(conv, raw.reshape(32, 3, 3, 3))
    assert conv.std() > 0.01 and conv[0, 1, 2, 0] == raw[0 * 27 + 1 * 9 + 2 * 3 + 0]
    bn = state["module.features.0.1.weight"]
    assert bn.std() > 0.01 and np.all(state["module.features.0.1.bn.running_var"] > 0)


# -- hand-built checkpoints ---------------------------------------------------------
SIX = np.arange(6, dtype="<f4").tobytes()


def test_a_non_contiguous_tensor_and_a_shared_storage(tmp_path):
    storage = Storage("0", 6)
    obj = {"t": Tensor(storage, 1, (2, 2), (1, 2)), "all": Tensor(storage, 0, (6,), (1,))}
    path = write_records(tmp_path / "a.pt", pickled(obj), {"0": SIX}, top="whatever_name")
    loaded = read_checkpoint(path)
    # element [i, j] is storage[1 + i + 2 j]
    np.testing.assert_array_equal(loaded["t"], np.array([[1, 3], [2, 4]], np.float32))
    assert loaded["t"].dtype == np.float32 and loaded["t"].flags.c_contiguous
    np.testing.assert_array_equal(loaded["all"], np.arange(6))
    loaded["t"][0, 0] = 99  # a copy: the other view keeps its values
    assert loaded["all"][1] == 1


@pytest.mark.parametrize("name", sorted(STORAGE_DTYPES))
def test_each_storage_type_reads_as_its_dtype(tmp_path, name):
    dtype = np.dtype(STORAGE_DTYPES[name])
    values = np.array([0, 1, 0, 1], dtype)
    obj = [Parameter(Tensor(Storage("7", 4, name), 0, (2, 2), (2, 1)))]
    loaded = read_checkpoint(
        write_records(tmp_path / "a.pt", pickled(obj), {"7": values.tobytes()})
    )
    assert loaded[0].dtype == dtype
    np.testing.assert_array_equal(loaded[0], values.reshape(2, 2))


@pytest.mark.parametrize("byteorder", [None, "big"])
def test_byte_order(tmp_path, byteorder):
    raw = np.arange(6, dtype=">f4" if byteorder == "big" else "<f4").tobytes()
    obj = {"t": Tensor(Storage("0", 6), 0, (2, 3), (3, 1), rebuild="_rebuild_tensor")}
    obj["t"].args = obj["t"].args[:4]  # torch._utils._rebuild_tensor's four arguments
    loaded = read_checkpoint(write_records(tmp_path / "a.pt", pickled(obj), {"0": raw}, byteorder))
    np.testing.assert_array_equal(loaded["t"], np.arange(6).reshape(2, 3))
    assert loaded["t"].dtype == np.float32 and loaded["t"].dtype.isnative


def test_numpy_1_spellings_of_array_and_scalar(tmp_path):
    data = pickle.dumps({"a": np.arange(5, dtype=np.int32), "s": np.float64(2.5)}, protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct\n" in data  # this numpy writes numpy 2's
    old = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert old != data
    loaded = read_checkpoint(write_records(tmp_path / "a.pt", old))
    np.testing.assert_array_equal(loaded["a"], np.arange(5))
    assert loaded["a"].dtype == np.int32 and loaded["s"] == 2.5


def _os_system(marker) -> bytes:
    """GLOBAL 'os system', the command as a tuple, REDUCE: os.system(cmd)."""
    command = f"touch {marker}".encode()
    return (
        b"\x80\x02cos\nsystem\n"
        + pickle.BINUNICODE + len(command).to_bytes(4, "little") + command
        + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
    )  # fmt: skip


def test_a_disallowed_global_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = write_records(tmp_path / "evil.pt", _os_system(marker))
    with pytest.raises(CheckpointError, match=r"evil\.pt: .*global os\.system.*refused") as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # protocol 4's STACK_GLOBAL goes through the same gate
    stack = pickle.dumps(print, protocol=4)
    with pytest.raises(CheckpointError, match=r"global builtins\.print"):
        read_checkpoint(write_records(tmp_path / "print.pt", stack))


def test_a_pickle_cannot_modify_an_allowed_function(tmp_path):
    """BUILD (None, {'__defaults__': None}) on the rebuild function would set
    its attribute for every later load."""
    name = b"__defaults__"
    data = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
        + pickle.NONE + pickle.EMPTY_DICT
        + pickle.BINUNICODE + len(name).to_bytes(4, "little") + name + pickle.NONE + pickle.SETITEM
        + pickle.TUPLE2 + pickle.BUILD + pickle.STOP
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=r"modifies torch\._utils\._rebuild_tensor_v2"):
        read_checkpoint(write_records(tmp_path / "a.pt", data))


@pytest.mark.parametrize(
    "size, numel, raw, message",
    [
        ((6,), 6, SIX[:8], r"data/0 holds 8 bytes, but its 6 x float32 need 24 .*truncated"),
        ((3, 3), 6, SIX, r"reaches element 8 of a storage of 6 elements"),
        ((6,), 6, None, r"storage record archive/data/0 is missing"),
    ],
    ids=["short-record", "tensor-beyond-storage", "missing-record"],
)
def test_a_storage_shorter_than_its_tensor_or_missing(tmp_path, size, numel, raw, message):
    obj = {"t": Tensor(Storage("0", numel), 0, size, (size[-1], 1)[-len(size) :])}
    records = {} if raw is None else {"0": raw}
    path = write_records(tmp_path / "short.pt", pickled(obj), records)
    with pytest.raises(CheckpointError, match=rf"short\.pt: .*{message}"):
        read_checkpoint(path)


def _valid(tmp_path) -> str:
    obj = {"t": Tensor(Storage("0", 6), 0, (6,), (1,))}
    return write_records(tmp_path / "valid.pt", pickled(obj), {"0": SIX})


def test_files_that_are_no_zip_checkpoint(tmp_path):
    cases = {
        "missing.pt": (None, r"no such checkpoint file"),
        "text.pt": (b"hello", r"not a zip file"),
        "empty.pt": (b"", r"an empty file"),
        "plain.pt": (pickle.dumps({"a": 1}, protocol=2), r"a plain pickle"),
    }
    legacy = b"".join(
        pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"sys_info": 1})
    )
    cases["legacy.pt"] = (legacy, r"a legacy \(torch < 1\.6.*torch\.save\(torch\.load\(p\), p2\)")
    with open(_valid(tmp_path), "rb") as f:
        whole = f.read()
    cases["half.pt"] = (whole[: len(whole) // 2], r"a truncated or corrupt zip file")
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{name}: {message}") as info:
            read_checkpoint(path)
        assert "\n" not in str(info.value)


def test_zips_that_are_no_checkpoint(tmp_path):
    path = tmp_path / "nopkl.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data/0", SIX)
    with pytest.raises(CheckpointError, match=r"nopkl\.pt: .*exactly one <name>/data\.pkl.*none"):
        read_checkpoint(path)
    two = tmp_path / "two.pt"
    with zipfile.ZipFile(two, "w") as z:
        z.writestr("a/data.pkl", pickle.dumps(1, protocol=2))
        z.writestr("b/data.pkl", pickle.dumps(1, protocol=2))
    with pytest.raises(CheckpointError, match=r"two\.pt: .*a/data\.pkl, b/data\.pkl"):
        read_checkpoint(two)

    valid = _valid(tmp_path)
    with open(valid, "rb") as f:
        whole = bytearray(f.read())
    at = whole.index(SIX)  # stored, not compressed: flip a byte of the storage
    whole[at + 5] ^= 0xFF
    corrupt = tmp_path / "crc.pt"
    corrupt.write_bytes(bytes(whole))
    with pytest.raises(CheckpointError, match=r"crc\.pt: the record archive/data/0 is corrupt"):
        read_checkpoint(corrupt)
    bad_order = write_records(tmp_path / "order.pt", pickled(1), byteorder="middle")
    with pytest.raises(CheckpointError, match=r"order\.pt: .*byteorder says 'middle'"):
        read_checkpoint(bad_order)
    garbage = write_records(tmp_path / "garbage.pt", b"\x80\x02}(")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: data\.pkl is not a readable"):
        read_checkpoint(garbage)
