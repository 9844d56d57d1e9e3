"""The served tiers as a client sees them: read from metadata, costed, filtered.

`tiers_from_metadata` makes tiers of GetModelMetadata's signatures when the
model's tier table is unavailable (names, input sizes and encoded-image
signatures only);
`tier_latency_ms` is the latency a budget or objective is compared with;
`dominant_tiers` drops the tiers no choice should take; `require_tier_table`
refuses tiers without a cost where a choice needs them; `has_top1` tells a
tier with a measured accuracy from one without (a job imported from an
official PSS-Net checkpoint without validation data serves top-1 NaN, which
the tier table's reader gives as None).
"""

from __future__ import annotations

import math

from pss_keras.jobs.tiers import (
    ENCODED_INPUT,
    TIER_TABLE_SIGNATURE,
    TIERS_SIGNATURE,
    ServedTier,
    encoded_signature,
    split_dominated,
)
from pss_keras.serving.transports import ServingError

# One served subnet (name, metric_type, target, mflops, params, resolution,
# top1, latency_ms, predicted_latency_ms, latency_table, latency_runtime):
# the record the ``tiers`` signature describes.
Tier = ServedTier


# Signatures of an export that are not tiers of their own.
_NOT_TIERS = ("serving_default", TIERS_SIGNATURE, TIER_TABLE_SIGNATURE)


def tiers_from_metadata(signatures: dict) -> list[Tier]:
    """Tiers from GetModelMetadata's signature definitions, for a model
    whose tier table is unavailable.

    A tier is a signature (not ``serving_default``, ``tiers``,
    ``tier_table`` or a ``__``-prefixed internal one) that takes
    ``images``, uint8 ``[batch, height, width, 3]``. Its encoded-image
    signature ``<name>_bytes`` (one string input ``image_bytes``) is its
    ``bytes_signature`` when the model has it, not a tier of its own.
    Metadata describes signatures only, so a tier has its ``name``, its
    ``bytes_signature`` and, where the signature fixes a square input
    size, its ``resolution``; ``mflops``, ``params``, ``top1``,
    ``latency_ms``, ``metric_type`` and ``target`` are None. With such tiers
    a client can list them, predict on one by name, and order them by
    input resolution where the signatures fix it (this export's take any
    size, so the order is then by name); it cannot choose by an MFLOPs or
    latency budget or by accuracy, and `PSSClient.choose_tier` and
    `AdaptiveTierPolicy` refuse them with a `ServingError` saying so.

    Args:
        signatures: ``{name: {"inputs": {alias: (dtype, shape)}, ...}}``
            as the transports' ``metadata()`` return it.

    Returns:
        The tiers, by resolution (unknown last) then name.
    """
    tiers = []
    for name, sig in signatures.items():
        if name in _NOT_TIERS or name.startswith("__"):
            continue
        dtype, shape = sig.get("inputs", {}).get("images", (None, None))
        if dtype != "uint8" or len(sig["inputs"]) != 1:
            continue
        if shape is not None and (len(shape) != 4 or shape[3] not in (None, 3)):
            continue
        fixed = shape is not None and shape[1] is not None and shape[1] == shape[2]
        encoded = signatures.get(encoded_signature(name), {}).get("inputs", {})
        takes_bytes = list(encoded) == [ENCODED_INPUT] and encoded[ENCODED_INPUT][0] == "string"
        tiers.append(
            Tier(
                name=name,
                metric_type=None,
                target=None,
                mflops=None,
                params=None,
                resolution=shape[1] if fixed else None,
                top1=None,
                latency_ms=None,
                bytes_signature=encoded_signature(name) if takes_bytes else "",
            )
        )
    return sorted(tiers, key=lambda t: (t.resolution is None, t.resolution or 0, t.name))


def require_tier_table(tiers, what: str) -> None:
    """Refuses tiers without cost (found through metadata). A tier without a
    measured top-1 (`has_top1`) is accepted: choices then go by cost."""
    if any(t.mflops is None or t.latency_ms is None for t in tiers):
        raise ServingError(
            f"{what} needs each tier's MFLOPs and latency, which only the "
            f"tier table ('{TIER_TABLE_SIGNATURE}' signature) gives; this server's tiers come from "
            "GetModelMetadata (names and input shapes only). Choose a tier by name: "
            f"{[t.name for t in tiers]}."
        )


def has_top1(tier) -> bool:
    """Whether ``tier`` carries a measured top-1: not None (a tier from
    metadata, or a NaN the tier table's reader turned into None) nor NaN (a
    job imported without validation data)."""
    return tier.top1 is not None and not math.isnan(tier.top1)


LATENCY_SOURCES = ("auto", "measured", "predicted")


def tier_latency_ms(tier: Tier, source: str = "auto") -> float:
    """The latency a budget is compared with.

    ``measured``: ``latency_ms``, measured at export on the serving path.
    ``predicted``: the look-up table's ``predicted_latency_ms`` (refused for
    a tier without one). ``auto``: the prediction when its table was
    measured on the serving path (``--runtime=tensorflow``, which is only
    right when built on the serving machine), else the measured latency: a
    LiteRT table predicts a phone-like CPU path, not TF Serving.

    Raises:
        ServingError: for an unknown source, or ``predicted`` without a table.
    """
    if source not in LATENCY_SOURCES:
        raise ServingError(f"latency_source={source!r} is unknown; use one of {LATENCY_SOURCES}.")
    has_prediction = tier.predicted_latency_ms is not None
    if source == "predicted" and not has_prediction:
        raise ServingError(
            f"Tier {tier.name} has no predicted latency (its run had no latency table); "
            "use latency_source=measured."
        )
    if source == "predicted" or (
        source == "auto" and has_prediction and tier.latency_runtime == "tensorflow"
    ):
        return float(tier.predicted_latency_ms)
    return float(tier.latency_ms)


def dominant_tiers(tiers, latency_source: str = "auto") -> tuple[list[Tier], list[Tier]]:
    """Splits tiers into those worth serving and the dominated ones.

    A tier is dominated when another costs no more (`tier_latency_ms`, then
    MFLOPs) and is at least as accurate: choosing it would spend more for
    no accuracy. Of tiers equal in both, the first kept is the cheaper by
    MFLOPs. A tier without a measured top-1 (`has_top1`) is neither
    dominated nor dominating: always kept (with none measured, every tier is
    kept, in cost order).

    Returns:
        (kept tiers, cheapest first and, of those with a measured top-1,
        each more accurate than the one before; dominated tiers).

    Raises:
        ServingError: if the tiers came from metadata (no cost or accuracy).
    """
    tiers = list(tiers)
    require_tier_table(tiers, "Choosing among tiers")

    def cost(t):
        return tier_latency_ms(t, latency_source)

    # split_dominated compares top-1s: only measured ones go through it.
    kept, dominated = split_dominated([t for t in tiers if has_top1(t)], cost)
    unmeasured = [t for t in tiers if not has_top1(t)]
    return sorted(kept + unmeasured, key=lambda t: (cost(t), t.mflops)), dominated
