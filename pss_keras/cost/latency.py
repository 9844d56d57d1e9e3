"""Latency look-up tables: a subnet's latency predicted from its blocks.

The method predicts a subnet's latency on a device as the sum of per-block
latencies measured on that device (the reference's look-up table, keyed by
the block's shape), plus a fixed per-inference overhead. This module holds
the table and its predictor; `pss_keras.cost.latency_measurement` measures one.

A block's key is its shape in the architecture plan (`blocks.plan`): its
kind (stem, MobileNetV1 block, MobileNetV2 block with its expansion, head,
top), input size, input and output widths, stride and whether it adds a
residual. The hidden width of a MobileNetV2 block is ``expand * c_in``, and
the top (pool + classifier) is keyed by its input alone: the classifier is
measured with the table's ``num_classes`` (1000 by default) and used as is
for a run with another number of classes (it is well under 1 % of a
MobileNet's latency).

Pure Python and NumPy (no TensorFlow): the conditional sampler predicts the
latency of its whole map (100,000 subnets) at once through `predict_us_np`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from pss_keras.cost.tables import BlockLatencyTable, read_table_json
from pss_keras.jobs.config import METRIC_TYPES
from pss_keras.supernet import blocks, specs
from pss_keras.utils.machine import describe_device

FORMAT = "pss_keras.latency_table/1"
LATENCY_TYPES = tuple(m for m in METRIC_TYPES if m != "flops")
RUNTIMES = ("tflite", "tensorflow")
# The search-space fields a table must match (num_classes is not one).
SPACE_FIELDS = ("model_name", "width_scale", "resolution_range", "resolution_step", "width_range")

# Bits of a block's packed key: kind | in_size | c_in | c_out.
_BITS = 13


@dataclasses.dataclass(frozen=True)
class BlockKind:
    """What a block is, apart from its sizes: its type, expansion, stride
    and residual (one kind is many table entries)."""

    block_type: str
    expand: int
    stride: int
    residual: bool

    @property
    def name(self) -> str:
        return f"{self.block_type}/t{self.expand}/s{self.stride}{'/res' if self.residual else ''}"


def _block_type(model_name: str, block: blocks.BlockSpec) -> str:
    if block.name in ("stem", "head", "top"):
        return block.name
    return "mbv1_block" if model_name == "mobilenet_v1" else "mbv2_block"


def block_kind(model_name: str, block: blocks.BlockSpec) -> BlockKind:
    return BlockKind(_block_type(model_name, block), block.expand, block.stride, block.residual)


def block_shapes(model_name: str, resolution, channels):
    """Yields ``(block, kind, in_size, c_in, c_out)`` for every block of the plan.

    Works on Python ints and, elementwise, on NumPy arrays (like
    `blocks.walk`, which it groups by block). ``c_out`` of the top is 0:
    the top is keyed by its input alone.
    """
    layers = blocks.walk(model_name, resolution, channels, 1)
    for block in blocks.plan(model_name):
        rows = [next(layers) for _ in block.layers]
        _, in_size, _, c_in, _ = rows[0]
        c_out = 0 if block.name == "top" else rows[-1][4]
        yield block, block_kind(model_name, block), in_size, c_in, c_out


def space_dict(space: specs.SearchSpace) -> dict:
    """The fields of ``space`` a table is built for (JSON values)."""
    data = space.to_dict()
    return json.loads(json.dumps({k: data[k] for k in SPACE_FIELDS}))


def table_keys(space: specs.SearchSpace) -> list[tuple[BlockKind, int, int, int]]:
    """Every ``(kind, in_size, c_in, c_out)`` a subnet of ``space`` can have.

    Enumerates each stage's possible widths (every multiplier of the width
    range on the 3-decimal grid that random subnets use) and every
    resolution; sorted, without duplicates.
    """
    w_min, w_max = space.width_range
    steps = int(round((w_max - w_min) * 10**specs.MULT_DECIMALS))
    mults = np.round(np.linspace(w_min, w_max, steps + 1), specs.MULT_DECIMALS)
    per_stage = [
        sorted(set(blocks.stage_channels_np(space.model_name, np.full((1, space.num_stages), m),
                                            space.width_scale)[0, s].item() for m in mults))
        for s in range(space.num_stages)
    ]  # fmt: skip
    keys = set()
    for resolution in space.resolutions:
        sizes = {}
        for block, kind, in_size, _, _ in block_shapes(
            space.model_name, resolution, [per_stage[s][0] for s in range(space.num_stages)]
        ):
            sizes[block.name] = (kind, in_size)
        for block in blocks.plan(space.model_name):
            kind, in_size = sizes[block.name]
            ins = [3] if block.in_stage is None else per_stage[block.in_stage]
            if block.name == "top":
                pairs = [(c, 0) for c in ins]
            elif block.in_stage == block.out_stage:  # a repeat within a stage: one width
                pairs = [(c, c) for c in ins]
            else:
                pairs = [(c_in, c_out) for c_in in ins for c_out in per_stage[block.out_stage]]
            for c_in, c_out in pairs:
                keys.add((kind, int(in_size), int(c_in), int(c_out)))
    return sorted(keys, key=lambda k: (k[0].name, k[1], k[2], k[3]))


def _pack(kind_index, in_size, c_in, c_out):
    """One int64 per key (kind | in_size | c_in | c_out, 13 bits each)."""
    kind_index, in_size, c_in, c_out = (
        np.asarray(v, dtype=np.int64) for v in (kind_index, in_size, c_in, c_out)
    )
    for name, value in (("input size", in_size), ("width", c_in), ("width", c_out)):
        if np.any(value >= 1 << _BITS) or np.any(value < 0):
            raise ValueError(
                f"A block {name} of {int(np.max(value))} is beyond what a latency table "
                f"keys (below {1 << _BITS})."
            )
    return (((kind_index << _BITS) | in_size) << _BITS | c_in) << _BITS | c_out


class LatencyTable(BlockLatencyTable):
    """A measured look-up table and the predictor over it.

    Args:
        space: `space_dict` of the search space it covers.
        entries: ``{(BlockKind, in_size, c_in, c_out): microseconds}``.
        overhead_us: fixed cost of one inference (added once per subnet).
        meta: everything else the file records (runtime, device,
            num_classes, validation, ...).
    """

    def __init__(self, space: dict, entries: dict, overhead_us: float, meta: dict | None = None):
        self.space = dict(space)
        self.entries = dict(entries)
        self.overhead_us = float(overhead_us)
        self.meta = dict(meta or {})
        self.path = self.meta.pop("path", None)
        kinds = sorted({key[0] for key in self.entries}, key=lambda k: k.name)
        self._kind_index = {kind: i for i, kind in enumerate(kinds)}
        codes = np.array(
            [_pack(self._kind_index[k], s, ci, co) for k, s, ci, co in self.entries], np.int64
        )
        values = np.array(list(self.entries.values()), np.float64)
        order = np.argsort(codes)
        self._codes, self._values = codes[order], values[order]
        if len(np.unique(self._codes)) != len(self._codes):
            raise ValueError(f"{self._where()} lists a block twice; rebuild it.")

    def _where(self) -> str:
        return f"Latency table {self.path}" if self.path else "The latency table"

    # -- checks ------------------------------------------------------------
    def check_space(self, space: specs.SearchSpace) -> None:
        """Refuses a search space the table was not built for.

        Raises:
            ValueError: one line naming the table, its space and the run's.
        """
        wanted = space_dict(space)
        if wanted != self.space:
            differ = [k for k in SPACE_FIELDS if wanted[k] != self.space.get(k)]
            raise ValueError(
                f"{self._where()} was built for another search space ("
                + ", ".join(f"{k} {self.space.get(k)} there, {wanted[k]} here" for k in differ)
                + "); build one for this run with scripts/build_latency_lut.py and the run's "
                "--model_name --width_scale --resolution_range --resolution_step "
                "--width_mult_range."
            )

    # -- prediction --------------------------------------------------------
    def predict_us_np(self, model_name: str, resolutions, mults) -> np.ndarray:
        """Predicted latency (us) of many subnets: resolutions [n], mults [n, S].

        Raises:
            ValueError: if a block is missing from the table (another space).
        """
        if model_name != self.space["model_name"]:
            raise ValueError(
                f"{self._where()} is for {self.space['model_name']}, not {model_name}."
            )
        resolutions = np.asarray(resolutions, dtype=np.int64)
        channels = blocks.stage_channels_np(model_name, mults, self.space["width_scale"]).T
        total = np.full(resolutions.shape, self.overhead_us, dtype=np.float64)
        for _, kind, in_size, c_in, c_out in block_shapes(model_name, resolutions, channels):
            if kind not in self._kind_index:
                raise ValueError(
                    f"{self._where()} has no {kind.name} blocks: it was built for another "
                    "search space; build one with scripts/build_latency_lut.py."
                )
            shape = np.broadcast_shapes(np.shape(in_size), np.shape(c_in), np.shape(c_out))
            codes = _pack(self._kind_index[kind], *(np.broadcast_to(v, shape) for v in
                                                      (in_size, c_in, c_out)))  # fmt: skip
            at = np.clip(np.searchsorted(self._codes, codes), 0, len(self._codes) - 1)
            found = self._codes[at] == codes
            if not np.all(found):
                i = int(np.flatnonzero(~found.ravel())[0])
                sizes = [
                    int(np.ravel(np.broadcast_to(v, shape))[i]) for v in (in_size, c_in, c_out)
                ]
                raise ValueError(
                    f"{self._where()} has no entry for {kind.name} at input "
                    f"{sizes[0]} px, {sizes[1]} -> {sizes[2]} channels: it was built for "
                    "another search space; build one with scripts/build_latency_lut.py."
                )
            total = total + self._values[at]
        return total

    def block_us(self, config: specs.SubnetConfig) -> list[tuple[str, float]]:
        """``(block name, us)`` of every block of ``config`` (a breakdown)."""
        self.predict_us(config)  # a config outside the table: one clear message
        channels = blocks.stage_channels(config, self.space["width_scale"])
        rows = []
        for block, kind, in_size, c_in, c_out in block_shapes(
            config.model_name, config.resolution, channels
        ):
            rows.append((block.name, float(self.entries[(kind, in_size, c_in, c_out)])))
        return rows

    # -- files -------------------------------------------------------------
    def to_dict(self) -> dict:
        rows = [
            [k.block_type, k.expand, k.stride, int(k.residual), s, ci, co, round(float(us), 3)]
            for (k, s, ci, co), us in sorted(
                self.entries.items(), key=lambda e: (e[0][0].name, e[0][1], e[0][2], e[0][3])
            )
        ]
        return {
            "format": FORMAT,
            "space": self.space,
            **self.meta,
            "overhead_us": round(self.overhead_us, 3),
            "entry_fields": [
                "block_type", "expand", "stride", "residual", "in_size", "c_in", "c_out", "us"
            ],
            "entries": rows,
        }  # fmt: skip

    def digest(self) -> str:
        """A content digest (space, overhead and entries), to tell tables apart."""
        data = self.to_dict()
        key = json.dumps([data["space"], data["overhead_us"], data["entries"]], sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """``tflite on AMD EPYC (AVX2, ...), 1 thread(s)``: where it was measured."""
        return f"{self.runtime} on {describe_device(self.device)}"

    @property
    def runtime(self) -> str:
        return str(self.meta.get("runtime", ""))

    @property
    def device(self) -> dict:
        return dict(self.meta.get("device") or {})

    @classmethod
    def from_dict(cls, data: dict, path: str | None = None) -> LatencyTable:
        where = path or "the latency table"
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(
                f'{where} is not a pss_keras latency table (no "format": "{FORMAT}"); '
                "build one with scripts/build_latency_lut.py."
            )
        try:
            entries = {}
            for row in data["entries"]:
                block_type, expand, stride, residual, size, c_in, c_out, us = row
                kind = BlockKind(str(block_type), int(expand), int(stride), bool(residual))
                entries[(kind, int(size), int(c_in), int(c_out))] = float(us)
            space = dict(data["space"])
            missing = [k for k in SPACE_FIELDS if k not in space]
            if missing:
                raise KeyError(f"space has no {', '.join(missing)}")
            overhead = float(data["overhead_us"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where} is damaged ({type(e).__name__}: {e}); rebuild it.") from None
        meta = {
            k: v
            for k, v in data.items()
            if k not in ("format", "space", "overhead_us", "entries", "entry_fields")
        }
        return cls(space, entries, overhead, {**meta, "path": path})

    @classmethod
    def load(cls, path: str) -> LatencyTable:
        """Reads a table written by `save`.

        Raises:
            ValueError: one line naming the file if it is missing, not JSON,
                or not a table.
        """
        data = read_table_json(
            path, "build it with scripts/build_latency_lut.py --output=FILE.json"
        )
        return cls.from_dict(data, path)


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def mape(predicted, measured) -> float:
    """Mean absolute percentage error, as a fraction of the measured value."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    return float(np.mean(np.abs(predicted - measured) / measured))
