"""The reference implementation's latency tables (PSS-Net's ``.pkl`` files).

The official PyTorch PSS-Net ships four look-up tables (``scripts/lut/`` in
its repository: MobileNetV1 and V2, each on a CPU and a GPU of its authors'
whose models it does not state). Its latency targets, e.g. "PSS-MBV1-C,
10,000..31,000 us", are microseconds as these tables predict them, so a run
reproduces the paper's only with them. This module reads them and predicts
with them exactly as the reference does; `pss_keras.cost.latency` holds the
project's own tables, measured on the user's device.

A table is a pickled ``dict`` from a ``BlockCfg(block_type, in_size, cin,
cout, cmid, kernel_size, stride, padding)`` record to microseconds, and a
subnet's latency is the plain sum over its blocks (the reference's
``create_model_block_list`` and ``LatencyPredictor``, with no per-inference
overhead). The keys are derived here from the project's one architecture
plan (`blocks.plan`, walked by `blocks.walk`), per block:

- the stem: ``Conv2d`` at the input resolution, 3 -> c[0], 3x3, stride 2,
  padding 1;
- each table block: ``MBV1Block`` (depthwise 3x3 + pointwise 1x1; cmid,
  kernel_size and padding None) or ``MBV2Block`` (cmid = its hidden width,
  ``expand * cin``; kernel_size and padding None), at its input size, with
  its stride;
- MobileNetV2's last 1x1 conv: ``Conv2d`` c[7] -> c[8], 1x1, stride 1,
  padding 0;
- the classifier: ``Linear`` with in_size 1, cin = the pooled features,
  cout 1000;

where ``c[i] = make_divisible(base[i] * mult[i])``.

Two quirks of the reference, kept here because its tables and targets
depend on them:

1. The ninth multiplier. The network keeps MobileNetV2's last 1x1 conv at
   full width (1280 channels, whatever ``stage_width_mults[8]``: see
   `blocks.stage_channels`), but the reference keys that conv, and the
   classifier after it, with ``c[8] = make_divisible(1280 * mult[8])``: a
   subnet with a ninth multiplier of 0.75 is predicted as if its last conv
   had 960 outputs and its classifier 960 inputs.
2. The classifier is keyed with 1000 outputs whatever the run's number of
   classes (the tables were measured for ImageNet).

The pickles name their record class ``__main__.BlockCfg`` (the reference
pickled them from a script), so a plain `pickle.load` fails outside that
script, and unpickling runs whatever a file names: `load_reference_table`
reads them with an unpickler that admits that record class alone.

Pure Python and NumPy (no TensorFlow, no PyTorch): the conditional sampler
predicts its whole map at once through `predict_us_np`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import os
import pickle

import numpy as np

from pss_keras.supernet import blocks, specs
from pss_keras.utils.fileio import atomic_write_json

BlockCfg = collections.namedtuple(
    "BlockCfg",
    "block_type in_size cin cout cmid kernel_size stride padding",
    defaults=(None, None, None, None),
)
BlockCfg.__doc__ = """One block's key in a reference table (the reference's record, as ours).

Equal to, and hashed as, the plain tuple of its fields, as the reference's
own namedtuple is: a table's keys are looked up by value.
"""

# The JSON form of a table (a job's copy: `ReferenceLatencyTable.save`).
FORMAT = "pss_keras.reference_latency_table/1"
# `ReferenceLatencyTable.runtime`: what a served tier says of its prediction.
RUNTIME = "reference (PSS-Net authors' device)"
# The classifier's outputs in every key (quirk 2 of the module docstring).
REFERENCE_NUM_CLASSES = 1000
# The reference's record type of each architecture's table blocks.
TABLE_BLOCK_TYPES = {"mobilenet_v1": "MBV1Block", "mobilenet_v2": "MBV2Block"}
_FIELDS = BlockCfg._fields
_INT_FIELDS = ("in_size", "cin", "cout")
_OPTIONAL_INT_FIELDS = ("cmid", "kernel_size", "stride", "padding")
# Bits per size in a packed key: variant | in_size | cin | cout | cmid.
_BITS = 13
_MAX_VARIANTS = 1 << (63 - 4 * _BITS)


class _RefusedGlobal(ValueError):
    """A pickle names something other than the ``BlockCfg`` record."""


class _TableUnpickler(pickle.Unpickler):
    """Admits the ``BlockCfg`` record alone, whatever module it names.

    Every class or function a pickle refers to (``GLOBAL``,
    ``STACK_GLOBAL`` and the extension-registry opcodes) goes through
    `find_class`, so refusing there refuses it before anything is called.
    The reference's files need nothing else: their dicts, ints, floats,
    strings, tuples and None are pickle opcodes, not classes.
    """

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if name == "BlockCfg":
            return BlockCfg
        raise _RefusedGlobal(
            f"Reference latency table {self._path} tries to load {module}.{name}; it may "
            "hold only BlockCfg records and numbers: refused without running it."
        )

    def persistent_load(self, pid):
        raise _RefusedGlobal(
            f"Reference latency table {self._path} refers to an outside object "
            f"(persistent id {pid!r}); it may hold only BlockCfg records and numbers: refused."
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_key(key) -> str:
    """Why ``key`` is not a reference record ("" if it is one)."""
    if not isinstance(key, BlockCfg):
        return f"a key of type {type(key).__name__} ({key!r:.80}), not a BlockCfg record"
    if not isinstance(key.block_type, str):
        return f"the key {key!r} with a block_type that is not a string"
    for field in _INT_FIELDS:
        if not _is_int(getattr(key, field)):
            return f"the key {key!r} with a {field} that is not an int"
    for field in _OPTIONAL_INT_FIELDS:
        value = getattr(key, field)
        if value is not None and not _is_int(value):
            return f"the key {key!r} with a {field} that is neither an int nor None"
    return ""


class ReferenceLatencyTable:
    """A reference (PSS-Net ``.pkl``) table and the predictor over it.

    Offers what the project's `latency.LatencyTable` offers the sampler and
    the job (`predict_us`, `predict_us_np`, `metric_fn`, `check_space`,
    `describe`, `digest`), so that either kind can serve a run.

    Args:
        entries: ``{BlockCfg: microseconds}``.
        path: the file it was read from (None for one built in memory).

    Attributes:
        entries: the table, ``{BlockCfg: float microseconds}``.
        path: the file it was read from, or None.
        name: the file's name without ``.pkl`` (e.g. ``mbv1_cpu``).
        model_name: the architecture its table blocks are for
            (``mobilenet_v1`` / ``mobilenet_v2``), or None if it holds
            blocks of neither or both.
    """

    def __init__(self, entries: dict, path: str | None = None):
        self.entries = {BlockCfg(*key): float(us) for key, us in entries.items()}
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0] if path else "in-memory"
        kinds = {key.block_type for key in self.entries}
        models = [m for m, block_type in TABLE_BLOCK_TYPES.items() if block_type in kinds]
        self.model_name = models[0] if len(models) == 1 else None
        self._index_keys()

    def _index_keys(self):
        """Sorted packed keys for `predict_us_np` (None: some key does not pack)."""
        variants = sorted(
            {_variant(key) for key in self.entries}, key=lambda v: tuple(map(repr, v))
        )
        self._variants = {v: i for i, v in enumerate(variants)}
        sizes = [(key.in_size, key.cin, key.cout, key.cmid or 0) for key in self.entries]
        if len(variants) >= _MAX_VARIANTS or any(
            not 0 <= s < 1 << _BITS for row in sizes for s in row
        ):
            self._codes = self._values = None  # predict_us_np falls back to the dict
            return
        index = np.array([self._variants[_variant(key)] for key in self.entries], np.int64)
        codes = _pack(index, *np.array(sizes, np.int64).reshape(-1, 4).T)
        order = np.argsort(codes)
        self._codes = codes[order]
        self._values = np.array(list(self.entries.values()), np.float64)[order]

    def _where(self) -> str:
        return f"Reference latency table {self.path or self.name}"

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"ReferenceLatencyTable({self.path or self.name!r}, {len(self)} entries)"

    # -- prediction ----------------------------------------------------------
    def predict_us(self, config: specs.SubnetConfig) -> float:
        """Predicted latency of one subnet in microseconds (`predict_us`)."""
        return predict_us(self, config)

    def predict_us_np(self, model_name: str, resolutions, mults) -> np.ndarray:
        """Predicted latency (us) of many subnets (`predict_us_np`)."""
        return predict_us_np(self, model_name, resolutions, mults)

    def block_us(self, config: specs.SubnetConfig) -> list[tuple[str, float]]:
        """``(block name, us)`` of every block of ``config`` (a breakdown).

        Raises:
            ValueError: as `predict_us`.
        """
        return [(name, self._lookup(name, key, config.name)) for name, key in _named_keys(config)]

    def metric_fn(self):
        """The sampler's metric function (`pss_keras.training.sampling.MetricFn`)."""

        def metric(space, resolutions, mults):
            _check_width_scale(self, space.width_scale)
            return self.predict_us_np(space.model_name, resolutions, mults)

        return metric

    def _lookup(self, block_name: str, key: BlockCfg, subnet: str) -> float:
        try:
            return self.entries[key]
        except KeyError:
            raise ValueError(_missing_message(self, block_name, key, subnet)) from None

    # -- checks and identity -------------------------------------------------
    def check_space(self, space: specs.SearchSpace) -> None:
        """Refuses a search space the reference's tables cannot key.

        Raises:
            ValueError: one line, if the table is for the other architecture
                or the space has a width scale other than 1 (the reference
                has none).
        """
        _check_model(self, space.model_name)
        _check_width_scale(self, space.width_scale)

    def describe(self) -> str:
        """``PSS-Net reference table mbv1_cpu (20480 entries)``: what it is."""
        return f"PSS-Net reference table {self.name} ({len(self)} entries)"

    @property
    def runtime(self) -> str:
        """Where its entries were measured: the reference's authors' device
        with an unstated runtime (the project's own tables say ``tflite`` or
        ``tensorflow``)."""
        return RUNTIME

    def digest(self) -> str:
        """A content digest of the entries, to tell tables apart (equal for
        a ``.pkl`` file and the JSON copy `save` writes of it)."""
        rows = sorted((tuple(map(repr, key)), repr(us)) for key, us in self.entries.items())
        return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]

    # -- the job's copy ------------------------------------------------------
    def to_dict(self) -> dict:
        """The table as JSON data (`from_dict` reads it back, exactly)."""
        rows = sorted(
            ([*key, us] for key, us in self.entries.items()), key=lambda r: tuple(map(repr, r))
        )
        return {
            "format": FORMAT,
            "name": self.name,
            "entry_fields": [*_FIELDS, "us"],
            "entries": rows,
        }

    def save(self, path: str) -> None:
        """Writes the table as JSON (atomically), not as a pickle: a job's
        copy is read without unpickling anything."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, path: str | None = None) -> ReferenceLatencyTable:
        """Reads what `to_dict` wrote.

        Raises:
            ValueError: one line naming ``path`` if the data is not such a table.
        """
        where = path or "the reference latency table"
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
            entries = {}
            for row in data["entries"]:
                if len(row) != len(_FIELDS) + 1:
                    raise ValueError(f"an entry has {len(row)} fields, not {len(_FIELDS) + 1}")
                key, us = BlockCfg(*row[:-1]), row[-1]
                why = _bad_key(key)
                if why:
                    raise ValueError(why)
                if (
                    not isinstance(us, (int, float))
                    or isinstance(us, bool)
                    or not math.isfinite(us)
                ):
                    raise ValueError(f"{key!r} maps to {us!r:.80}")
                entries[key] = float(us)
            if not entries:
                raise ValueError("no entries")
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{where} is damaged ({e}); copy the run's .pkl table again."
            ) from None
        table = cls(entries, path)
        table.name = str(data.get("name") or table.name)
        return table


def load_reference_table(path: str) -> ReferenceLatencyTable:
    """Reads one of the reference's ``.pkl`` tables, safely.

    Args:
        path: the pickle file (e.g. ``mbv1_cpu.pkl``).

    Returns:
        A `ReferenceLatencyTable`.

    Raises:
        ValueError: one line naming the file if it is missing or unreadable,
            is not a pickle, names any class or function other than the
            ``BlockCfg`` record (refused before anything is called), or is
            not a non-empty dict of ``BlockCfg`` -> number.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(
            f"Reference latency table {path} does not exist; the four the paper uses are "
            "in the PSS-Net repository's scripts/lut/ (mbv1_cpu.pkl, ...)."
        ) from None
    except OSError as e:
        raise ValueError(f"Reference latency table {path} cannot be read ({e}).") from None
    try:
        table = _TableUnpickler(io.BytesIO(data), path).load()
    except _RefusedGlobal:
        raise
    except Exception as e:  # a malformed pickle raises any of a dozen types
        raise ValueError(
            f"Reference latency table {path} is not a readable pickle "
            f"({type(e).__name__}: {e}); give one of the reference's .pkl tables."
        ) from None
    expected = "a reference table must be a dict of BlockCfg -> microseconds"
    if not isinstance(table, dict):
        raise ValueError(f"{path} holds a {type(table).__name__}, but {expected}.")
    if not table:
        raise ValueError(f"{path} holds an empty dict, but {expected}.")
    for key, us in table.items():
        why = _bad_key(key)
        if why:
            raise ValueError(f"{path} holds {why}, but {expected}.")
        if not isinstance(us, (int, float)) or isinstance(us, bool) or not math.isfinite(us):
            raise ValueError(f"{path} maps {key!r} to {us!r:.80}, but {expected}.")
    return ReferenceLatencyTable(table, path)


# ----------------------------------------------------------------------------
# The reference's keys of a subnet.


def reference_channels(model_name: str, mults) -> list:
    """The widths the reference keys a subnet with: ``make_divisible(base * mult)``
    for every stage, the ninth of MobileNetV2 included (quirk 1).

    Works on a sequence of multipliers (Python ints result) and on an
    array [n, S] (int64 arrays [n] per stage).
    """
    base = blocks.ARCH_SPECS[model_name].base_channels
    if isinstance(mults, np.ndarray):
        return list(blocks.make_divisible_np(np.asarray(base) * mults).T)
    return [blocks.make_divisible(b * m) for b, m in zip(base, mults)]


def _block_fields(model_name: str, resolution, channels):
    """Yields ``(block name, fields)`` of every block of the plan, fields being
    BlockCfg's, with ints or (elementwise) arrays for the sizes."""
    table_block = TABLE_BLOCK_TYPES[model_name]
    layers = blocks.walk(model_name, resolution, channels, REFERENCE_NUM_CLASSES)
    for block in blocks.plan(model_name):
        rows = [next(layers) for _ in block.layers]
        first, in_size, _, c_in, _ = rows[0]
        c_out = rows[-1][4]
        if block.name == "top":  # pool + classifier: keyed by the classifier alone
            yield block.name, ("Linear", 1, c_in, c_out, None, None, None, None)
        elif block.name in ("stem", "head"):
            padding = (first.kernel - 1) // 2  # the reference's explicit 'same' padding
            fields = ("Conv2d", in_size, c_in, c_out, None, first.kernel, first.stride, padding)
            yield block.name, fields
        else:
            cmid = None
            if table_block == "MBV2Block":
                cmid = next(row[3] for row in rows if row[0].kind == "depthwise")
            yield block.name, (table_block, in_size, c_in, c_out, cmid, None, block.stride, None)


def _named_keys(config: specs.SubnetConfig) -> list[tuple[str, BlockCfg]]:
    channels = reference_channels(config.model_name, config.stage_width_mults)
    return [
        (name, BlockCfg(*fields))
        for name, fields in _block_fields(config.model_name, config.resolution, channels)
    ]


def reference_keys(config: specs.SubnetConfig) -> list[BlockCfg]:
    """The reference's table keys of ``config``, in order.

    The same list as the reference's ``create_model_block_list`` (stem,
    table blocks, MobileNetV2's last conv, classifier), derived from the
    architecture plan, with both quirks of the module docstring.

    Args:
        config: the subnet (width scale 1: the reference has no other).

    Returns:
        One `BlockCfg` per block (15 for MobileNetV1, 20 for MobileNetV2).
    """
    return [key for _, key in _named_keys(config)]


# ----------------------------------------------------------------------------
# Prediction.


def _check_model(table: ReferenceLatencyTable, model_name: str) -> None:
    if table.model_name is not None and model_name != table.model_name:
        raise ValueError(
            f"{table._where()} holds {table.model_name} blocks "
            f"({TABLE_BLOCK_TYPES[table.model_name]}), not {model_name} ones; give the "
            f"{model_name} table."
        )


def _check_width_scale(table: ReferenceLatencyTable, width_scale: float) -> None:
    if width_scale != 1.0:
        raise ValueError(
            f"{table._where()} keys MobileNets at width scale 1, not {width_scale}; use "
            "--width_scale=1 with the reference's tables, or a table of your own "
            "(scripts/build_latency_lut.py)."
        )


def _missing_message(table, block_name: str, key: BlockCfg, subnet: str) -> str:
    return (
        f"{table._where()} has no entry for {block_name} {key} of subnet {subnet}; the "
        "reference's tables cover its paper's search space (resolutions 128..224, "
        "multipliers 0.75..1.0)."
    )


def predict_us(table: ReferenceLatencyTable, config: specs.SubnetConfig) -> float:
    """Predicted latency of one subnet, as the reference's ``LatencyPredictor``.

    The sum, in block order, of the table's entries for `reference_keys`.

    Args:
        table: a reference table (`load_reference_table`).
        config: the subnet.

    Returns:
        Microseconds.

    Raises:
        ValueError: one line, if the table is for the other architecture
            or lacks a block of the subnet (naming the block, its key and
            the subnet).
    """
    _check_model(table, config.model_name)
    total = 0.0
    for name, key in _named_keys(config):
        total += table._lookup(name, key, config.name)
    return total


def predict_us_np(table: ReferenceLatencyTable, model_name: str, resolutions, mults) -> np.ndarray:
    """Vectorized `predict_us` over many subnets (the sampler's map).

    Looks every block up at once in the table's sorted packed keys; the
    sum runs in the same block order as `predict_us`, so both give the
    same floats.

    Args:
        table: a reference table.
        model_name: architecture of every subnet.
        resolutions: int array [n].
        mults: float array [n, num_stages].

    Returns:
        float64 array [n] of microseconds.

    Raises:
        ValueError: as `predict_us`, for the first subnet with a block the
            table lacks.
    """
    _check_model(table, model_name)
    resolutions = np.asarray(resolutions, dtype=np.int64)
    mults = np.array(mults, dtype=np.float64, ndmin=2)
    if table._codes is None:  # a table whose sizes do not pack: one config at a time
        configs = specs.arrays_to_configs(model_name, resolutions, mults)
        return np.array([predict_us(table, c) for c in configs], np.float64)
    channels = reference_channels(model_name, mults)
    total = np.zeros(resolutions.shape, dtype=np.float64)
    for name, fields in _block_fields(model_name, resolutions, channels):
        block_type, in_size, cin, cout, cmid, kernel_size, stride, padding = fields
        sizes = [
            np.broadcast_to(np.asarray(s, np.int64), resolutions.shape)
            for s in (in_size, cin, cout, 0 if cmid is None else cmid)
        ]
        variant = table._variants.get((block_type, kernel_size, stride, padding, cmid is None))
        fits = np.all([(s >= 0) & (s < 1 << _BITS) for s in sizes], axis=0)
        if variant is None:
            found = np.zeros(resolutions.shape, bool)
            at = np.zeros(resolutions.shape, np.int64)
        else:
            codes = _pack(variant, *(np.where(fits, s, 0) for s in sizes))
            at = np.clip(np.searchsorted(table._codes, codes), 0, len(table._codes) - 1)
            found = fits & (table._codes[at] == codes)
        if not np.all(found):
            i = int(np.flatnonzero(~found)[0])
            key = BlockCfg(
                block_type,
                *(int(s[i]) for s in sizes[:3]),
                None if cmid is None else int(sizes[3][i]),
                kernel_size,
                stride,
                padding,
            )
            subnet = _subnet_name(model_name, resolutions[i], mults[i])
            raise ValueError(_missing_message(table, name, key, subnet))
        total = total + table._values[at]
    return total


def _variant(key: BlockCfg) -> tuple:
    """A key's fields that do not vary with the subnet's sizes."""
    return (key.block_type, key.kernel_size, key.stride, key.padding, key.cmid is None)


def _pack(variant, in_size, cin, cout, cmid):
    """One int64 per key: variant | in_size | cin | cout | cmid (13 bits each)."""
    code = np.asarray(variant, np.int64)
    for size in (in_size, cin, cout, cmid):
        code = (code << _BITS) | np.asarray(size, np.int64)
    return code


def _subnet_name(model_name: str, resolution, mults) -> str:
    try:
        return specs.SubnetConfig(model_name, int(resolution), tuple(mults)).name
    except ValueError:
        return f"{model_name} at {resolution} px with multipliers {list(mults)}"
