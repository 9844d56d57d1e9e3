"""``torch.save`` files written without torch, for tests and benchmarks.

`write_torch_checkpoint` writes an object whose tensors are NumPy arrays
as torch 2's ``torch.save`` writes one holding tensors: a zip of
``<top>/data.pkl`` (protocol 2; each tensor a
``torch._utils._rebuild_tensor_v2`` call on a storage persistent id
``('storage', torch.FloatStorage, key, 'cpu', numel)``, Long, Byte, ...),
``<top>/data/<key>`` (each storage's bytes), ``<top>/byteorder``,
``<top>/version`` and torch 2's ``.format_version``,
``.storage_alignment`` and ``.data/serialization_id``, every record's data
aligned to 64 bytes, stored uncompressed. `reference_like_checkpoint`
writes a file in the official PSS-Net layout (random weights, a few pool
entries) of any head size, for the importer's tests and benchmark.

The pieces below them (`Global`, `Storage`, `Tensor`, `Parameter`,
`pickled`, `write_records`) spell torch's globals and persistent ids
directly, to craft what torch does not write (views with offsets, shared
storages, old rebuild functions, other byte orders) for the reader's tests.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import os
import pickle
import random
import struct
import zipfile

import numpy as np

from pss_keras.cost import flops
from pss_keras.supernet import reference_checkpoint as reference
from pss_keras.supernet import specs
from pss_keras.supernet.torch_files import STORAGE_DTYPES
from pss_keras.training.reference_tiers import DEFAULT_FLOPS_TARGETS, REFERENCE_FLOPS_CLASSES

_ALIGNMENT = 64  # torch's PyTorchStreamWriter aligns every record's data to this
_STORAGE_NAMES = {np.dtype(d): n for n, d in STORAGE_DTYPES.items() if n != "UntypedStorage"}


class Global:
    """Pickles as ``GLOBAL module name`` (what torch's pickles name)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle saves only callables as a REDUCE's function
        raise AssertionError("a stand-in, never called")


class Storage:
    """Pickles as torch's storage persistent id (record ``data/<key>``)."""

    def __init__(self, key: str, numel: int, storage: str = "FloatStorage", location="cpu"):
        self.pid = ("storage", Global("torch", storage), key, location, numel)


class Tensor:
    """Pickles as torch does a tensor: ``_rebuild_tensor_v2(storage, offset,
    size, stride, False, OrderedDict())`` (``rebuild`` names another
    ``torch._utils`` function; change ``args`` to match it)."""

    def __init__(self, storage, offset, size, stride, rebuild="_rebuild_tensor_v2"):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
        self.rebuild = Global("torch._utils", rebuild)

    def __reduce__(self):
        return self.rebuild, self.args


class Parameter:
    """Pickles as a ``torch.nn.Parameter`` of ``tensor``."""

    def __init__(self, tensor: Tensor):
        self.tensor = tensor

    def __reduce__(self):
        return Global("torch._utils", "_rebuild_parameter"), (self.tensor, True, {})


class NumpyArray:
    """An array that `write_torch_checkpoint` pickles as a NumPy array, not
    as a tensor (as ``torch.save`` does ``np.random.get_state()``'s)."""

    def __init__(self, array):
        self.array = np.asarray(array)


class _TorchLikePickler(pickle._Pickler):  # the Python pickler: its save_global can be replaced
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Storage) else None

    def reducer_override(self, obj):
        return obj.name if isinstance(obj, Global) else NotImplemented

    def save_global(self, obj, name=None):
        if not isinstance(obj, Global):
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)


def pickled(obj) -> bytes:
    """``obj`` pickled as torch's ``data.pkl`` is (protocol 2), its
    `Global`, `Storage`, `Tensor` and `Parameter` as torch's."""
    buffer = io.BytesIO()
    _TorchLikePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _write_aligned(z: zipfile.ZipFile, f, name: str, data) -> None:
    """One stored record whose data starts at a multiple of `_ALIGNMENT`
    (padding in an extra field ``FB``, as torch's writer pads)."""
    start = f.tell() + 30 + len(name.encode()) + 4  # local header, name, extra field header
    pad = -start % _ALIGNMENT
    info = zipfile.ZipInfo(name)
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    z.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def write_records(path, data_pkl: bytes, records=None, byteorder="little", top="archive") -> str:
    """A zip in ``torch.save``'s layout around ``data_pkl`` and ``records``
    (``{key: bytes}``, written as ``<top>/data/<key>``).

    ``byteorder`` is written as given; None writes torch 1.6/1.7's set
    (no byteorder, format version, alignment or id records). Returns
    ``str(path)``.
    """
    serial = int.from_bytes(hashlib.sha1(data_pkl).digest()[:16], "little")
    modern = byteorder is not None
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        _write_aligned(z, f, f"{top}/data.pkl", data_pkl)
        if modern:
            _write_aligned(z, f, f"{top}/.format_version", "1")
            _write_aligned(z, f, f"{top}/.storage_alignment", str(_ALIGNMENT))
            _write_aligned(z, f, f"{top}/byteorder", byteorder)
        for key, raw in (records or {}).items():
            _write_aligned(z, f, f"{top}/data/{key}", raw)
        _write_aligned(z, f, f"{top}/version", "3\n")
        if modern:
            _write_aligned(z, f, f"{top}/.data/serialization_id", f"{serial:040d}"[-40:])
    return str(path)


def _tensor(array: np.ndarray, records: dict, byteorder: str) -> Tensor:
    """``array`` as a `Tensor` on a new storage record; a strided view keeps
    its strides (its storage spans the elements between, as the base's)."""
    dtype = array.dtype.newbyteorder("=")
    if dtype not in _STORAGE_NAMES:
        raise ValueError(f"No torch storage holds {array.dtype}; use one of {_STORAGE_NAMES}.")
    item = dtype.itemsize
    if array.dtype != dtype or array.size == 0 or any(s < 0 or s % item for s in array.strides):
        array = np.ascontiguousarray(array, dtype)
    stride = tuple(s // item for s in array.strides)
    numel = 1 + sum((n - 1) * s for n, s in zip(array.shape, stride)) if array.size else 0
    storage = np.lib.stride_tricks.as_strided(array, (numel,), (item,), writeable=False)
    key = str(len(records))
    order = "<" if byteorder == "little" else ">"
    records[key] = storage.astype(dtype.newbyteorder(order)).tobytes()
    return Tensor(Storage(key, numel, _STORAGE_NAMES[dtype]), 0, array.shape, stride)


def _as_torch(obj, records: dict, byteorder: str):
    """``obj`` with its arrays as `Tensor` stand-ins (containers rebuilt)."""

    def convert(x):
        if isinstance(x, NumpyArray):
            return x.array
        if isinstance(x, np.ndarray):
            return _tensor(x, records, byteorder)
        if isinstance(x, collections.OrderedDict):
            out = collections.OrderedDict((k, convert(v)) for k, v in x.items())
            out.__dict__.update({k: convert(v) for k, v in vars(x).items()})  # _metadata
            return out
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(convert(v) for v in x)
        return x

    return convert(obj)


def write_torch_checkpoint(path, obj, byteorder: str = "little", top: str = "archive") -> str:
    """Writes ``obj`` as ``torch.save(obj, path)`` would with tensors for its arrays.

    Args:
        path: the file to write.
        obj: dicts, OrderedDicts (with their attributes, e.g. a state
            dict's ``_metadata``), lists, tuples and plain values; every
            NumPy array becomes a tensor of its dtype (a float32 one a
            ``FloatStorage``, int64 ``LongStorage``, uint8 ``ByteStorage``,
            ...) on a storage of its own, a strided view with its strides;
            wrap an array in `NumpyArray` to pickle it as an array.
        byteorder: ``"little"`` or ``"big"``: the storages' byte order and
            the ``byteorder`` record.
        top: the zip's top folder (torch 2 names it after the file).

    Returns:
        ``str(path)``.

    Raises:
        ValueError: an array of a dtype no torch storage holds.
    """
    if byteorder not in ("little", "big"):
        raise ValueError(f"byteorder={byteorder!r} is not 'little' or 'big'.")
    records = {}
    data = pickled(_as_torch(obj, records, byteorder))
    return write_records(path, data, records, byteorder, top)


# --------------------------------------------------------------------------
# The official PSS-Net layout.

# The reference's SGD settings, one param group a parameter.
_PARAM_GROUP = {
    "weight_decay": 4e-05, "momentum": 0.9, "nesterov": True, "lr": 0.1, "dampening": 0,
    "maximize": False, "foreach": None, "differentiable": False, "fused": None,
    "initial_lr": 0.1,
}  # fmt: skip
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _random_value(weight: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if weight == "kernel":  # He-normal: activations keep their scale through the net
        std = math.sqrt(2.0 / max(1, math.prod(shape[1:])))
        return (rng.standard_normal(shape, np.float32) * np.float32(std)).astype(np.float32)
    if weight in ("gamma", "moving_variance"):  # positive, around 1
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.1 * rng.standard_normal(shape, np.float32)).astype(np.float32)


def _state_dict(model_name: str, num_classes: int, rng) -> collections.OrderedDict:
    """The reference's DataParallel state dict, random, in its key order."""
    shapes = reference._torch_shapes(model_name, num_classes)
    state = collections.OrderedDict()
    for key, (layer, weight) in reference._expected_keys(model_name).items():
        state[f"module.{key}"] = _random_value(weight, shapes[(layer, weight)], rng)
        if key.endswith(".bn.running_var"):
            state[f"module.{key.removesuffix('running_var')}num_batches_tracked"] = np.array(
                0, np.int64
            )
    # torch's per-module versions (its batch norms' 2); modules without
    # weights (ReLU6, pooling) are left out.
    metadata = collections.OrderedDict()
    for key in state:
        parts = key.split(".")[:-1]
        for i in range(len(parts) + 1):
            name = ".".join(parts[:i])
            metadata.setdefault(name, {"version": 2 if name.endswith(".bn") else 1})
            if name.endswith(".bn"):
                metadata[name.removesuffix(".bn")] = {"version": 2}
    state._metadata = metadata
    return state


def _pool_configs(model_name: str, pools, seed: int) -> list[specs.SubnetConfig]:
    space = specs.SearchSpace(model_name, **reference.REFERENCE_SPACE)
    if isinstance(pools, int):
        rng = random.Random(seed)
        return [space.random(rng) for _ in range(pools)]
    return [space.validate(config) for config in pools]


def reference_arch_pools(model_name: str, configs, rng: np.random.Generator) -> dict:
    """An ``arch_pools`` as the reference saves it, holding ``configs``:
    each in the FLOPs pool of the grid target nearest its MFLOPs (counted
    with a 1000-class head, as the reference counts), keyed by the
    ``str`` of the reference's config dict, scored by a random negative
    loss; every other target's pool empty."""
    low, high, step = (int(v) for v in DEFAULT_FLOPS_TARGETS[model_name])  # the paper's
    grid = list(range(low, high + 1, step))
    pools = {target: {} for target in grid}
    for config in configs:
        mflops = flops.count_mflops(config, REFERENCE_FLOPS_CLASSES, 1.0)
        target = min(grid, key=lambda t: abs(t - mflops))
        key = {
            "model_name": model_name,
            "infer_metric_type": "flops",
            "resolution": int(config.resolution),
            "stage_cout_mults": [float(m) for m in config.stage_width_mults],
            "infer_metric": mflops,
            "infer_metric_target": target,
        }
        pools[target][str(key)] = -float(rng.uniform(0.5, 3.0))
    return {
        "max_size": 100,
        "infer_metric_target_list": {"flops": grid[::-1]},
        "pools": {"flops": pools},
    }


def reference_like_checkpoint(
    path, model_name: str, num_classes: int = 1000, seed: int = 0, pools=4
) -> str:
    """Writes a file in the official PSS-Net checkpoint layout, random.

    As the official ``train.py`` saves (see
    shared/data/reference_checkpoints/README.md): ``{'model': the
    DataParallel state dict ('module.' keys, float32 weights in torch's
    layout, int64 ``num_batches_tracked``), 'optimizer' (one SGD param group
    per parameter, no state), 'lr_scheduler', 'last_epoch': 249,
    'arch_pools', 'random_state', 'np_random_state', 'torch_rng_state',
    'torch_cuda_rng_state'}``, the zip's top folder named after the file.
    Weights are He-normal, BN scales and running variances in [0.5, 1.5]
    (positive), the rest small; the torch generator states are bytes that
    only look like one. A 1000-class MobileNetV1 file is about 17 MB.

    Args:
        path: the ``.pt`` file to write.
        model_name: ``mobilenet_v1`` or ``mobilenet_v2``.
        num_classes: the classifier's outputs.
        seed: the weights', pools' and states' seed.
        pools: how many random subnets of the reference's space go into
            the pools (`reference_arch_pools`), or the `SubnetConfig`s.

    Returns:
        ``str(path)``.
    """
    rng = np.random.default_rng(seed)
    state = _state_dict(model_name, num_classes, rng)
    params = [k for k in state if not k.endswith(_BUFFERS)]
    groups = [dict(_PARAM_GROUP, params=[i]) for i in range(len(params))]
    scheduler = {
        "base_lrs": [0.1] * len(params), "last_epoch": 0, "_step_count": 1,
        "_is_initial": False, "_get_lr_called_within_step": False,
        "_last_lr": [0.1] * len(params),
    }  # fmt: skip
    name, keys, pos, has_gauss, cached = np.random.RandomState(seed).get_state()
    torch_rng = np.concatenate(
        [np.array([seed], "<i8").view(np.uint8), rng.integers(0, 256, 5048, np.uint8)]
    )
    checkpoint = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": groups},
        "lr_scheduler": scheduler,
        "last_epoch": 249,
        "arch_pools": reference_arch_pools(model_name, _pool_configs(model_name, pools, seed), rng),
        "random_state": random.Random(seed).getstate(),
        "np_random_state": (name, NumpyArray(keys), pos, has_gauss, cached),
        "torch_rng_state": torch_rng,
        "torch_cuda_rng_state": torch_rng.copy(),
    }
    top = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return write_torch_checkpoint(path, checkpoint, top=top)
