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
overhead). The keys are derived (`pss_keras.cost.reference_keys`) from the
project's one architecture plan (`blocks.plan`, walked by `blocks.walk`), per block:

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
This module holds the table, its JSON copy and that safe loading.

Pure Python and NumPy (no TensorFlow, no PyTorch): the conditional sampler
predicts its whole map at once through
`pss_keras.cost.reference_keys.predict_us_np`.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle

import numpy as np

from pss_keras.cost.reference_keys import (
    KEY_BITS,
    MAX_VARIANTS,
    TABLE_BLOCK_TYPES,
    BlockCfg,
    check_model,
    check_width_scale,
    key_variant,
    missing_message,
    named_keys,
    pack_key,
    predict_us,
    predict_us_np,
)
from pss_keras.cost.tables import BlockLatencyTable
from pss_keras.supernet import specs

# The JSON form of a table (a job's copy: `ReferenceLatencyTable.save`).
FORMAT = "pss_keras.reference_latency_table/1"
# `ReferenceLatencyTable.runtime`: what a served tier says of its prediction.
RUNTIME = "reference (PSS-Net authors' device)"
_FIELDS = BlockCfg._fields
_INT_FIELDS = ("in_size", "cin", "cout")
_OPTIONAL_INT_FIELDS = ("cmid", "kernel_size", "stride", "padding")


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


class ReferenceLatencyTable(BlockLatencyTable):
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
            {key_variant(key) for key in self.entries}, key=lambda v: tuple(map(repr, v))
        )
        self._variants = {v: i for i, v in enumerate(variants)}
        sizes = [(key.in_size, key.cin, key.cout, key.cmid or 0) for key in self.entries]
        if len(variants) >= MAX_VARIANTS or any(
            not 0 <= s < 1 << KEY_BITS for row in sizes for s in row
        ):
            self._codes = self._values = None  # predict_us_np falls back to the dict
            return
        index = np.array([self._variants[key_variant(key)] for key in self.entries], np.int64)
        codes = pack_key(index, *np.array(sizes, np.int64).reshape(-1, 4).T)
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
        return [(name, self._lookup(name, key, config.name)) for name, key in named_keys(config)]

    def check_metric_space(self, space: specs.SearchSpace) -> None:
        """The reference keys no width scale: a scaled space is refused."""
        check_width_scale(self, space.width_scale)

    def _lookup(self, block_name: str, key: BlockCfg, subnet: str) -> float:
        try:
            return self.entries[key]
        except KeyError:
            raise ValueError(missing_message(self, block_name, key, subnet)) from None

    # -- checks and identity -------------------------------------------------
    def check_space(self, space: specs.SearchSpace) -> None:
        """Refuses a search space the reference's tables cannot key.

        Raises:
            ValueError: one line, if the table is for the other architecture
                or the space has a width scale other than 1 (the reference
                has none).
        """
        check_model(self, space.model_name)
        check_width_scale(self, space.width_scale)

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
