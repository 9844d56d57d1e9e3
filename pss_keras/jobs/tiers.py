"""Tier records: what a job retained, what a server tells a client.

    RetainedTier    one line of a job's ``retained_subnets.json``
    ServedTier      one tier as the export's tier table describes it
    TIER_TABLE      the table's columns (the ``tier_table`` and ``tiers``
                    signatures' outputs)
    split_dominated the one Pareto filter of tiers (served and on-device)

No TensorFlow and no run configuration: the serving client and the
on-device chooser import this module alone.
"""

from __future__ import annotations

import dataclasses

from pss_keras.supernet import specs

# The SavedModel signatures that describe the served tiers. ``tier_table``
# takes one ignored input, ``dummy`` (int32, any shape: send 0), because TF
# Serving's REST API refuses a signature without inputs; ``tiers`` (no input)
# is the same table for gRPC clients written before ``tier_table`` existed.
TIER_TABLE_SIGNATURE = "tier_table"
TIER_TABLE_INPUT = "dummy"
TIERS_SIGNATURE = "tiers"

# Each tier ``<name>`` also takes encoded images (JPEG, PNG, GIF, BMP) as a
# string input ``image_bytes`` [batch] in the signature ``<name>_bytes``.
ENCODED_SUFFIX = "_bytes"
ENCODED_INPUT = "image_bytes"


def encoded_signature(tier: str) -> str:
    """The signature that takes ``tier``'s input as encoded images."""
    return tier + ENCODED_SUFFIX


@dataclasses.dataclass(frozen=True)
class RetainedTier:
    """One retained subnet of a job (a line of ``retained_subnets.json``).

    Attributes:
        name: tier name, e.g. ``flops_320m`` (the serving signature name).
        config: the subnet.
        metric_type, target: the pool it was chosen from.
        mflops, params: its cost.
        top1, top5: validation accuracy with calibrated statistics.
        minival_top1: the accuracy it was chosen by.
        pool_score: its PSS pool score (None for the ``smallest`` and
            ``largest`` tiers, which no pool held).
        bn_stats: path of its statistics, relative to the job directory.
        selected_on: ``minival`` (the default, honest protocol) or
            ``validation`` (``val_best_of_topk``, the reference's protocol:
            its top1 is then chosen on itself); ``sandwich`` for the space's
            smallest and largest subnets (`retain_subnets` ``bounds``);
            ``single`` for the one tier of a run that trained that subnet
            alone (``TrainConfig.subnet``: no pool, nothing chosen; its
            ``target`` is its own MFLOPs); ``pool_score`` for an imported
            checkpoint's tiers.
        candidates: every top-k subnet of its pool that was evaluated:
            ``{"config", "pool_score", "minival_top1", "top1", "top5"}``.
        predicted_us: its latency predicted by each of the run's look-up
            tables, ``{metric_type: microseconds}`` (empty for a FLOPs-only
            run).
    """

    name: str
    config: specs.SubnetConfig
    metric_type: str
    target: float
    mflops: float
    params: int
    top1: float
    top5: float
    minival_top1: float
    pool_score: float | None
    bn_stats: str
    selected_on: str = "minival"
    candidates: tuple = ()
    predicted_us: dict = dataclasses.field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def to_dict(self) -> dict:
        """The JSON record (key order as written since the first release)."""
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        out["candidates"] = [dict(c) for c in self.candidates]
        out["predicted_us"] = dict(self.predicted_us)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RetainedTier:
        data = dict(data)
        data["config"] = specs.SubnetConfig.from_dict(data["config"])
        data["candidates"] = tuple(data.get("candidates", ()))
        data["predicted_us"] = dict(data.get("predicted_us") or {})
        return cls(**data)

    def predicted(self) -> tuple[str, float]:
        """The latency type and prediction (us) that describe this tier: its
        own type for a latency tier, else the run's first latency table
        (latency_cpu before latency_gpu); ``("", nan)`` without tables."""
        if self.metric_type in self.predicted_us:
            return self.metric_type, float(self.predicted_us[self.metric_type])
        for metric_type in sorted(self.predicted_us):
            return metric_type, float(self.predicted_us[metric_type])
        return "", float("nan")

    def served(self, latency_ms: float, tables: dict | None = None) -> ServedTier:
        """What the tier table tells a client about this tier.

        Args:
            latency_ms: measured at export (batch 1, the served computation).
            tables: the job's latency tables ``{metric_type: LatencyTable}``,
                which say where a predicted latency was measured.
        """
        metric_type, predicted_us = self.predicted()
        table = (tables or {}).get(metric_type)
        return ServedTier(
            name=self.name,
            metric_type=self.metric_type,
            target=float(self.target),
            mflops=float(self.mflops),
            params=int(self.params),
            resolution=self.resolution,
            top1=float(self.top1),
            latency_ms=float(latency_ms),
            predicted_latency_ms=predicted_us / 1000.0 if metric_type else None,
            latency_table=table.describe() if table is not None else "",
            latency_runtime=table.runtime if table is not None else "",
            bytes_signature=encoded_signature(self.name),
        )


@dataclasses.dataclass(frozen=True)
class ServedTier:
    """One served subnet, as the tier table describes it.

    ``bytes_signature`` names the signature that takes this tier's input as
    encoded images ("" for an export from before encoded images).

    Two latencies, from different places:

    * ``latency_ms``: measured at export on the exporting machine (batch 1,
      the served computation: decode, resize, the subnet), not on the
      client's nor necessarily on the server's.
    * ``predicted_latency_ms``: the run's look-up table's prediction of the
      subnet alone (None for a run without one; NaN in the ``tiers``
      signature's float column), on the device and runtime
      that ``latency_table`` names (``latency_runtime``: ``tflite`` for the
      mobile-like LiteRT path, ``tensorflow`` for the served path).

    A tier found through GetModelMetadata instead of the tier table
    (`pss_keras.serving.tiers.tiers_from_metadata`) has its name, at most its
    resolution and its ``bytes_signature``; its other fields are None.
    """

    name: str
    metric_type: str | None
    target: float | None
    mflops: float | None
    params: int | None
    resolution: int | None
    top1: float | None
    latency_ms: float | None
    predicted_latency_ms: float | None = None
    latency_table: str = ""
    latency_runtime: str = ""
    bytes_signature: str = ""


# The tier table's outputs: (output name, ServedTier field, dtype).
TIER_TABLE = (
    ("names", "name", "string"),
    ("metric_types", "metric_type", "string"),
    ("targets", "target", "float32"),
    ("mflops", "mflops", "float32"),
    ("params", "params", "int64"),
    ("resolutions", "resolution", "int32"),
    ("top1", "top1", "float32"),
    ("latency_ms", "latency_ms", "float32"),
    ("predicted_latency_ms", "predicted_latency_ms", "float32"),
    ("latency_tables", "latency_table", "string"),
    ("latency_runtimes", "latency_runtime", "string"),
    ("bytes_signatures", "bytes_signature", "string"),
)


def _float_or_none(value):
    """A float column's value; NaN (the signature's "none") becomes None.
    REST returns NaN as the JSON value NaN or null, gRPC as a float."""
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


# How a value of each TIER_TABLE dtype comes back to Python (REST gives str,
# gRPC bytes for strings).
_FROM_DTYPE = {
    "string": lambda v: v.decode() if isinstance(v, bytes) else str(v),
    "float32": _float_or_none,
    "int32": int,
    "int64": int,
}


def served_tiers_from_outputs(outputs: dict) -> list[ServedTier]:
    """The ``tiers`` signature's outputs (arrays) -> tiers, cheapest first."""
    n = len(outputs["names"])
    # An export from before a column existed lacks it: the field's default.
    tiers = [
        ServedTier(
            **{
                field: _FROM_DTYPE[dtype](outputs[key][i])
                for key, field, dtype in TIER_TABLE
                if key in outputs
            }
        )
        for i in range(n)
    ]
    return sorted(tiers, key=lambda t: t.mflops)


def split_dominated(tiers, cost) -> tuple[list, list]:
    """(kept, dominated) for any records with ``top1`` and ``mflops``:
    ordered by ``cost(tier)``, then MFLOPs, a tier is kept when it is more
    accurate than every tier before it. Shared by the served tiers
    (`pss_keras.serving.tiers.dominant_tiers`) and the on-device chooser
    (`pss_keras.tflite.chooser.dominant_tiers`)."""
    kept, dominated = [], []
    for t in sorted(tiers, key=lambda t: (cost(t), t.mflops, -t.top1)):
        (kept if not kept or t.top1 > kept[-1].top1 else dominated).append(t)
    return kept, dominated
