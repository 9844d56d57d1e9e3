"""PyTorch checkpoints (``torch.save`` files) read without PyTorch, safely.

The official PSS-Net code saves its supernets with ``torch.save``; since
torch 1.6 that writes a zip file::

    <name>/data.pkl        the object, pickled (protocol 2)
    <name>/data/<key>      each storage's raw bytes, in <name>/byteorder order
    <name>/byteorder       "little" or "big" (absent before torch 1.8: little)
    <name>/version, ...    format versions, alignment, an id: not needed here

In ``data.pkl`` every tensor is a call
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks[, metadata])`` whose storage is a persistent id
``('storage', torch.FloatStorage, key, location, numel)`` that names the
``data/<key>`` record (the format as torch's ``torch/serialization.py``,
``_save`` and ``_load``, and ``torch/_utils.py``, ``_rebuild_tensor_v2``,
write and read it). `read_checkpoint` rebuilds those with NumPy alone: each
storage a 1-D array of its record, each tensor a contiguous copy of the
strided view ``(offset, size, stride)`` of it, so non-contiguous tensors and
tensors sharing a storage come out right.

Unpickling runs whatever callables a pickle names, so a checkpoint from the
internet is code. `_CheckpointUnpickler` admits a short list of globals
(containers, the tensor rebuilders, storage types, NumPy's array and scalar
reconstruction) and refuses anything else before it is called; nothing is
ever evaluated. What a checkpoint holds is not interpreted here: mapping a
PSS-Net state dict onto a Keras supernet is another module's task.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
import zlib

import numpy as np

# Torch's legacy (pre-1.6, non-zip) format starts with this number, pickled.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_RESAVE = "re-save it with torch >= 1.6: torch.save(torch.load(p), p2) writes the zip format"

# Storage classes by name -> element dtype (torch's typed storages).
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,  # torch >= 2 for untyped storages: bytes
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file."""


class _StorageType:
    """Stands for ``torch.<Name>Storage`` in a persistent id (never called)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype)

    def __repr__(self):
        return f"torch.{self.name}"

    def __setstate__(self, state):  # a BUILD opcode on it: never alter the allowed list
        raise CheckpointError(f"a BUILD that modifies {self!r}")


class _Global:
    """An allowed function as a pickle sees it: callable, not modifiable
    (a BUILD on a plain function could set its attributes for every later
    load)."""

    __slots__ = ("spelling", "function")

    def __init__(self, spelling: str, function):
        self.spelling, self.function = spelling, function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __repr__(self):
        return self.spelling

    def __setstate__(self, state):
        raise CheckpointError(f"a BUILD that modifies {self.spelling}")


def _rebuild_tensor(storage, storage_offset, size, stride):
    """torch._utils._rebuild_tensor with NumPy: a contiguous copy of the
    ``(offset, size, stride)`` view of ``storage`` (a 1-D array)."""
    if not (isinstance(storage, np.ndarray) and storage.ndim == 1 and storage.flags.c_contiguous):
        raise CheckpointError(
            f"a tensor whose storage is a {type(storage).__name__}, not a storage"
        )
    size, stride = tuple(size), tuple(stride)
    numbers = (storage_offset, *size, *stride)
    if len(size) != len(stride) or not all(_is_count(n) for n in numbers):
        raise CheckpointError(
            f"a tensor with offset {storage_offset!r}, size {size!r}, stride {stride!r}: "
            "not non-negative integers of one length each"
        )
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise CheckpointError(
            f"a tensor (offset {storage_offset}, size {size}, stride {stride}) reaches element "
            f"{last} of a storage of {storage.size} elements: the storage is shorter than its tensor"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=[s * storage.itemsize for s in stride]
    )
    return np.array(view, order="C", copy=True)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2: the tensor, with its neg/conj bits
    (torch's lazy negation and conjugation) applied."""
    tensor = _rebuild_tensor(storage, offset, size, stride)
    if metadata and metadata.get("neg"):
        tensor = np.negative(tensor)
    if metadata and metadata.get("conj"):
        tensor = np.conjugate(tensor)
    return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """torch._utils._rebuild_parameter: an ``nn.Parameter`` is its data."""
    return data


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# NumPy's pickle helpers, whatever module this NumPy keeps them in.
_NP_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_NP_SCALAR = np.float32(0).__reduce__()[0]


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` for plain arrays only (no subclass runs)."""
    if subtype is not np.ndarray:
        raise CheckpointError(f"an array of type {subtype!r} (only numpy.ndarray is allowed)")
    return _NP_RECONSTRUCT(subtype, shape, dtype)


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as NumPy's pickles use it: str -> latin-1 bytes."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise CheckpointError(
            f"a call _codecs.encode(..., {encoding!r}) (only latin1 of a str is allowed)"
        )
    return text.encode("latin1", errors)


def _allowed_globals() -> dict[tuple[str, str], object]:
    """(module, name) -> what it loads as; every other global is refused.
    The classes are built-in types, which no pickle can modify."""
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    functions = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("_codecs", "encode"): _codecs_encode,
    }
    for core in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 / numpy 1
        functions[(core, "_reconstruct")] = _reconstruct
        functions[(core, "scalar")] = _NP_SCALAR
    for (module, name), function in functions.items():
        allowed[(module, name)] = _Global(f"{module}.{name}", function)
    for name, dtype in STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, dtype)
    allowed[("torch.storage", "UntypedStorage")] = allowed[("torch", "UntypedStorage")]
    return allowed


_ALLOWED = _allowed_globals()


class _CheckpointUnpickler(pickle.Unpickler):
    """Admits `_ALLOWED` alone and reads storages from the zip's records.

    Every class or function a pickle refers to (``GLOBAL``, ``STACK_GLOBAL``
    and the extension-registry opcodes) goes through `find_class`, so a
    refusal there comes before anything is called.
    """

    def __init__(self, file, archive: _Archive):
        super().__init__(file)
        self._archive = archive

    def find_class(self, module, name):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise CheckpointError(
                f"{self._archive.path}: data.pkl loads the global {module}.{name}, which is not "
                "a tensor, storage, array or container: refused without running it"
            )
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise CheckpointError(f"{self._archive.path}: unknown persistent id {pid!r:.120}")
        typename, storage_type, key, _location, numel = pid  # location: 'cpu', 'cuda:0', ...
        if isinstance(typename, bytes):
            typename = typename.decode("ascii")
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if typename != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._archive.path}: unknown persistent id {pid!r:.120}")
        if not isinstance(key, str) or not _is_count(numel):
            raise CheckpointError(f"{self._archive.path}: malformed storage id {pid!r:.120}")
        return self._archive.storage(key, storage_type.dtype, numel)


class _Archive:
    """An open ``torch.save`` zip: its record prefix, byte order and storages."""

    def __init__(self, path: str, zip_file: zipfile.ZipFile):
        self.path, self.zip = path, zip_file
        self.prefix = _find_prefix(path, zip_file)
        self.byteorder = self._byteorder()
        self._storages: dict[tuple[str, np.dtype, int], np.ndarray] = {}

    def read(self, name: str) -> bytes:
        try:
            return self.zip.read(name)
        except KeyError:
            raise CheckpointError(
                f"{self.path}: the record {name} is missing (an incomplete file: re-download "
                "or re-save it)"
            ) from None
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
            raise CheckpointError(
                f"{self.path}: the record {name} is corrupt ({_one_line(e)}); re-download it"
            ) from None

    def _byteorder(self) -> str:
        name = self.prefix + "byteorder"
        if name not in self.zip.namelist():
            return "little"  # torch < 1.8 wrote no byteorder record, and wrote little-endian
        order = self.read(name).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise CheckpointError(f"{self.path}: {name} says {order!r}, not 'little' or 'big'")
        return order

    def storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        """The storage ``data/<key>``: ``numel`` elements of ``dtype``,
        native byte order, read once however many tensors share it."""
        cached = self._storages.get((key, dtype, numel))
        if cached is not None:
            return cached
        name = f"{self.prefix}data/{key}"
        need = numel * dtype.itemsize
        try:
            size = self.zip.getinfo(name).file_size
        except KeyError:
            raise CheckpointError(
                f"{self.path}: the storage record {name} is missing (an incomplete file: "
                "re-download or re-save it)"
            ) from None
        if size < need:
            raise CheckpointError(
                f"{self.path}: the storage record {name} holds {size} bytes, but its "
                f"{numel} x {dtype.name} need {need} (a truncated file: re-download or re-save it)"
            )
        stored = dtype.newbyteorder("<" if self.byteorder == "little" else ">")
        array = np.frombuffer(self.read(name), stored, count=numel).astype(dtype)
        self._storages[(key, dtype, numel)] = array
        return array


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _find_prefix(path: str, zip_file: zipfile.ZipFile) -> str:
    """``<name>/`` of the one ``<name>/data.pkl`` record, whatever ``name``."""
    pickles = [n for n in zip_file.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        found = "none" if not pickles else ", ".join(pickles)
        raise CheckpointError(
            f"{path}: a torch.save zip holds exactly one <name>/data.pkl record, this one "
            f"{found}: not a PyTorch checkpoint"
        )
    return pickles[0][: -len("data.pkl")]


def _not_a_zip(path: str, head: bytes) -> CheckpointError:
    """Why a file zipfile cannot open is no checkpoint, and what to do."""
    if head.startswith(b"PK"):
        return CheckpointError(
            f"{path}: a truncated or corrupt zip file (its central directory is missing or "
            "damaged): re-download or re-save it"
        )
    if head[:1] == b"\x80" and _LEGACY_MAGIC in head:
        return CheckpointError(
            f"{path}: a legacy (torch < 1.6, non-zip) PyTorch checkpoint, which is not "
            f"supported; {_RESAVE}"
        )
    if head[:1] == b"\x80":
        return CheckpointError(
            f"{path}: a plain pickle, not a torch.save zip checkpoint; if torch wrote it, {_RESAVE}"
        )
    what = "an empty file" if not head else "not a zip file"
    return CheckpointError(f"{path}: {what}, but a torch.save checkpoint is a zip (torch >= 1.6)")


def _open_zip(path: str) -> zipfile.ZipFile:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a directory, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise _not_a_zip(path, head) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({_one_line(e)})") from None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A ``torch.save`` checkpoint's contents, with NumPy arrays for tensors.

    Reads the zip format (torch >= 1.6) without PyTorch: tensors become
    contiguous NumPy arrays of their storage's dtype (float32, int64, ...,
    native byte order, copied), ``OrderedDict`` stays one, NumPy arrays and
    scalars pickled in the file (e.g. ``np.random.get_state()``) load as
    themselves, and the rest is plain Python (dicts, lists, tuples, numbers,
    strings). Only the globals in `_ALLOWED` may load; any other is refused
    before it runs.

    Args:
        path: the ``.pt``/``.pth`` file.

    Returns:
        The unpickled object (for PSS-Net checkpoints, a dict with
        ``'model'``, ``'optimizer'``, ``'arch_pools'``, ...).

    Raises:
        CheckpointError: one line naming the file and what is wrong (and the
            fix where there is one): missing, not a zip (a legacy torch file
            says how to re-save it), truncated or corrupt, no ``data.pkl``,
            a missing or short storage record, a tensor beyond its storage,
            a global outside the allowed list, a malformed pickle.
    """
    path = os.fspath(path)
    with _open_zip(path) as zip_file:
        archive = _Archive(path, zip_file)
        data = archive.read(archive.prefix + "data.pkl")
        try:
            return _CheckpointUnpickler(io.BytesIO(data), archive).load()
        except CheckpointError as e:
            message = str(e)
            if not message.startswith(f"{path}: "):
                message = f"{path}: data.pkl holds {message}"
            raise CheckpointError(message) from None
        except Exception as e:  # a malformed pickle raises any of a dozen types
            raise CheckpointError(
                f"{path}: data.pkl is not a readable checkpoint pickle "
                f"({type(e).__name__}: {_one_line(e)})"
            ) from None
