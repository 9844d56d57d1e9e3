"""Client for a PSS model served by TF Serving: tiers, tier choice, queries.

The server runs one SavedModel from `pss_keras.export.saved_model`; every request names
the tier (signature) it wants, so the subnet switches per request with no
reload. `PSSClient` discovers the tiers through the tier table (the
``tier_table`` signature; ``tiers`` for an export from before it; when
neither answers, their names through GetModelMetadata:
`pss_keras.serving.tiers.tiers_from_metadata`), chooses a tier from a FLOPs
or latency budget (the most accurate tier within it; the most expensive for
tiers without a measured top-1) and queries it with
pixels or encoded images, over gRPC or REST
(`pss_keras.serving.transports`; `connect` opens one). To adapt the tier to
observed latency, see `pss_keras.serving.policies`.
"""

from __future__ import annotations

import logging

import numpy as np

from pss_keras.jobs.tiers import (
    ENCODED_INPUT,
    TIER_TABLE_INPUT,
    TIER_TABLE_SIGNATURE,
    TIERS_SIGNATURE,
    served_tiers_from_outputs,
)
from pss_keras.serving.tiers import (
    Tier,
    has_top1,
    require_tier_table,
    tier_latency_ms,
    tiers_from_metadata,
)
from pss_keras.serving.transports import PROTOCOLS, GrpcTransport, RestTransport, ServingError

logger = logging.getLogger(__name__)

# TF Serving's answers to a request for a signature the model lacks (gRPC
# FAILED_PRECONDITION; REST INVALID_ARGUMENT, HTTP 400) or cannot run as
# sent (REST refuses the input-less ``tiers``): then the next way to the
# tiers is tried. Anything else (no model, no server, an overloaded or
# failing one) is reported as it is.
_NO_TIERS_SIGNATURE = ("FAILED_PRECONDITION", "INVALID_ARGUMENT", "HTTP 400")

# The ways to the tier table, newest first: (signature, its inputs).
_TIER_TABLE_REQUESTS = (
    (TIER_TABLE_SIGNATURE, {TIER_TABLE_INPUT: np.int32(0)}),
    (TIERS_SIGNATURE, {}),
)


class PSSClient:
    """Queries one served PSS model.

    Args:
        transport: a `GrpcTransport` or `RestTransport`.
    """

    def __init__(self, transport):
        self.transport = transport
        self._tiers = None
        # Where tiers() found the tiers: "tiers" (the signature) or "metadata".
        self.tier_source = None
        self._said_by_cost = False  # choose_tier logs its choice by cost once

    def tiers(self, refresh: bool = False) -> list[Tier]:
        """The served tiers (read once).

        From the tier table when the model answers it: every field,
        cheapest first; the ``tier_table`` signature first, then ``tiers``
        (an export from before ``tier_table``, over gRPC: TF Serving's REST
        API refuses an input-less signature). When the server refuses both
        as it refuses a missing signature or one it cannot run as sent
        (gRPC FAILED_PRECONDITION or INVALID_ARGUMENT, HTTP 400), from
        GetModelMetadata, which every TF Serving answers: see
        `tiers_from_metadata` for what that can and cannot tell.
        ``tier_source`` says which it was: ``tier_table``, ``tiers`` or
        ``metadata``.

        Raises:
            ServingError: if the server or model is not there, the server
                fails otherwise (passed on as it is), or no way gives a tier.
        """
        if self._tiers is None or refresh:
            refused, status = [], None
            for signature, inputs in _TIER_TABLE_REQUESTS:
                try:
                    outputs = self.transport.predict(signature, inputs)
                except ServingError as e:
                    if e.status not in _NO_TIERS_SIGNATURE:
                        raise
                    refused.append(f"{signature}: {e}")
                    status = e.status
                    continue
                self._tiers, self.tier_source = served_tiers_from_outputs(outputs), signature
                return self._tiers
            tiers = tiers_from_metadata(self.transport.metadata())
            if not tiers:
                raise ServingError(
                    f"The model has no tier: its tier table was refused ({'; '.join(refused)}) "
                    "and its metadata lists no image signature (uint8 images input).",
                    status,
                )
            self._tiers, self.tier_source = tiers, "metadata"
        return self._tiers

    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers()]

    def choose_tier(
        self,
        max_mflops: float | None = None,
        latency_budget_ms: float | None = None,
        latency_source: str = "auto",
    ) -> Tier:
        """The most accurate tier within the budgets (FLOPs and/or latency);
        of equally accurate tiers, the cheaper one. With no budget every
        tier fits, so this is the most accurate tier.

        When a tier has no measured top-1 (`has_top1`: NaN in the table, for
        a job imported from an official PSS-Net checkpoint without
        validation data), accuracy cannot order the tiers: the choice is
        then the most expensive tier within the budgets (the most MFLOPs,
        then the highest latency), and the client logs so once.

        Args:
            max_mflops: FLOPs budget.
            latency_budget_ms: latency budget, compared with `tier_latency_ms`.
            latency_source: which latency the budget is compared with (see
                `tier_latency_ms`).

        Raises:
            ServingError: if no tier fits, naming the cheapest one; or if
                the tiers came from metadata (`tiers_from_metadata`), which
                has no cost or accuracy to choose by.
        """
        tiers = self.tiers()
        require_tier_table(tiers, "choose_tier")
        slack = 1 + 1e-6  # the table is float32: a budget equal to a tier's cost fits it

        def within(t):
            if latency_budget_ms is None:
                return True
            return tier_latency_ms(t, latency_source) <= latency_budget_ms * slack

        fits = [
            t for t in tiers if (max_mflops is None or t.mflops <= max_mflops * slack) and within(t)
        ]
        if not fits:
            cheapest = tiers[0]
            raise ServingError(
                f"No tier fits max_mflops={max_mflops}, latency_budget_ms={latency_budget_ms}; "
                f"the cheapest is {cheapest.name} ({cheapest.mflops:.2f} MFLOPs, "
                f"{tier_latency_ms(cheapest, latency_source):.2f} ms)."
            )
        if all(has_top1(t) for t in tiers):
            return max(fits, key=lambda t: (t.top1, -t.mflops))
        if not self._said_by_cost:
            self._said_by_cost = True
            unmeasured = [t.name for t in tiers if not has_top1(t)]
            logger.warning(
                "Tier(s) %s carry no measured top-1 (a job without validation data): "
                "choose_tier picks by cost, the most expensive tier within the budget.",
                unmeasured,
            )
        return max(fits, key=lambda t: (t.mflops, tier_latency_ms(t, latency_source)))

    def predict(self, images, tier: str | None = None) -> dict:
        """Runs ``images`` on ``tier`` (default: ``serving_default`` for
        pixels, the costliest tier for encoded images).

        Args:
            images: uint8 RGB pixels [batch, h, w, 3] or [h, w, 3]; or
                encoded images (JPEG, PNG, GIF, BMP) as a list of ``bytes``
                (any sizes), sent to the tier's ``<tier>_bytes`` signature
                and decoded by the server (a 224 x 224 JPEG of 17 KB: a
                twelfth of its pixels' request over gRPC, a 45th over REST).
            tier: the tier's name.

        Returns the signature's outputs: logits, probabilities,
        top5_indices, top5_classes (decoded to str).

        Raises:
            ServingError: for bad images or an unknown tier (naming the
                allowed tiers), encoded images for an export without
                encoded-image signatures, or a failed request.
        """
        if isinstance(images, (bytes, list, tuple)) and all(
            isinstance(i, bytes) for i in ([images] if isinstance(images, bytes) else images)
        ):
            name, inputs = self._encoded_request(images, tier)
        else:
            name, inputs = tier or "serving_default", {"images": _pixels(images)}
            if tier is not None and tier not in self.tier_names():
                raise ServingError(f"Unknown tier {tier!r}; the server has {self.tier_names()}.")
        outputs = self.transport.predict(name, inputs)
        if "top5_classes" in outputs:
            outputs["top5_classes"] = np.vectorize(
                lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object]
            )(outputs["top5_classes"])
        return outputs

    def _encoded_request(self, images, tier):
        """(signature, inputs) of a request with encoded images."""
        images = [images] if isinstance(images, bytes) else list(images)
        if not images:
            raise ServingError("No image given: send one or more encoded images.")
        tiers = {t.name: t for t in self.tiers()}
        if tier is None:
            if any(t.mflops is None for t in tiers.values()):
                raise ServingError(
                    "Name a tier for encoded images: this server's tiers come from metadata, "
                    f"which has no costs to find the largest by; tiers: {list(tiers)}."
                )
            tier = max(tiers.values(), key=lambda t: t.mflops).name
        if tier not in tiers:
            raise ServingError(f"Unknown tier {tier!r}; the server has {list(tiers)}.")
        if not tiers[tier].bytes_signature:
            raise ServingError(
                f"Tier {tier!r} takes no encoded images: the model was exported before "
                "encoded-image signatures existed. Send decoded uint8 pixels, or export the "
                "job again."
            )
        return tiers[tier].bytes_signature, {ENCODED_INPUT: np.array(images, dtype=object)}

    def close(self):
        self.transport.close()


def _pixels(images) -> np.ndarray:
    """``images`` as a uint8 [batch, h, w, 3] array, or a `ServingError`."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ServingError(
            f"images must be [batch, height, width, 3] (or one [height, width, 3] image), "
            f"got shape {images.shape}; encoded images go as a list of bytes."
        )
    if images.dtype != np.uint8:
        raise ServingError(
            f"images must be uint8 RGB pixels (0..255), got {images.dtype}; send raw "
            "pixels, the model normalizes them itself."
        )
    return images


def connect(
    server: str, model_name: str, protocol: str = "grpc", timeout: float = 30.0
) -> PSSClient:
    """A `PSSClient` for ``server`` (``host:port``) over ``grpc`` or ``rest``
    (`PROTOCOLS`)."""
    if protocol == "grpc":
        return PSSClient(GrpcTransport(server, model_name, timeout))
    if protocol == "rest":
        return PSSClient(RestTransport(server, model_name, timeout))
    raise ValueError(f"protocol {protocol!r} is unknown; use one of {PROTOCOLS}.")
