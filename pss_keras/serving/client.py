"""Client for a PSS model served by TF Serving: tiers, tier choice, queries.

The server runs one SavedModel from `pss_keras.export.saved_model`; every request names
the tier (signature) it wants, so the subnet switches per request with no
reload. `PSSClient` discovers the tiers through the ``tiers`` signature
(or, when that is unavailable, their names through GetModelMetadata:
`pss_keras.serving.tiers.tiers_from_metadata`), chooses a tier from a FLOPs
or latency budget (the most accurate tier within it) and queries it, over
gRPC or REST (`pss_keras.serving.transports`; `connect` opens one). To adapt
the tier to observed latency, see `pss_keras.serving.policies`.
"""

from __future__ import annotations

import numpy as np

from pss_keras.jobs.tiers import TIERS_SIGNATURE, served_tiers_from_outputs
from pss_keras.serving.tiers import (
    Tier,
    require_tier_table,
    tier_latency_ms,
    tiers_from_metadata,
)
from pss_keras.serving.transports import PROTOCOLS, GrpcTransport, RestTransport, ServingError

# TF Serving's answers to a request for a signature the model lacks (gRPC
# FAILED_PRECONDITION; REST INVALID_ARGUMENT, HTTP 400) or cannot run as
# sent: then the tiers come from metadata. Anything else (no model, no
# server, an overloaded or failing one) is reported as it is.
_NO_TIERS_SIGNATURE = ("FAILED_PRECONDITION", "INVALID_ARGUMENT", "HTTP 400")


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

    def tiers(self, refresh: bool = False) -> list[Tier]:
        """The served tiers (read once).

        From the ``tiers`` signature when the model has it: every field,
        cheapest first. When the server refuses that request as it refuses
        a missing signature or one it cannot run as sent (gRPC
        FAILED_PRECONDITION or INVALID_ARGUMENT, HTTP 400: an export
        without the signature, a server that will not run an input-less
        one), from GetModelMetadata, which every TF Serving answers: see
        `tiers_from_metadata` for what that can and cannot tell.
        ``tier_source`` says which it was.

        Raises:
            ServingError: if the server or model is not there, the server
                fails otherwise (passed on as it is), or neither way gives
                a tier.
        """
        if self._tiers is None or refresh:
            try:
                outputs = self.transport.predict(TIERS_SIGNATURE, {})
                self._tiers, self.tier_source = served_tiers_from_outputs(outputs), "tiers"
            except ServingError as e:
                if e.status not in _NO_TIERS_SIGNATURE:
                    raise
                refused = str(e)
                tiers = tiers_from_metadata(self.transport.metadata())
                if not tiers:
                    raise ServingError(
                        f"The model has no tier: the tiers signature was refused ({refused}) and "
                        "its metadata lists no image signature (uint8 images input).",
                        e.status,
                    ) from None
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
        return max(fits, key=lambda t: (t.top1, -t.mflops))

    def predict(self, images, tier: str | None = None) -> dict:
        """Runs ``images`` (uint8 [batch, h, w, 3] or [h, w, 3]) on ``tier``.

        Returns the signature's outputs: logits, probabilities,
        top5_indices, top5_classes (decoded to str).

        Raises:
            ServingError: for a bad image array or an unknown tier (naming
                the allowed tiers), or a failed request.
        """
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ServingError(
                f"images must be [batch, height, width, 3] (or one [height, width, 3] image), "
                f"got shape {images.shape}."
            )
        if images.dtype != np.uint8:
            raise ServingError(
                f"images must be uint8 RGB pixels (0..255), got {images.dtype}; send raw "
                "pixels, the model normalizes them itself."
            )
        name = tier or "serving_default"
        if tier is not None and tier not in self.tier_names():
            raise ServingError(f"Unknown tier {tier!r}; the server has {self.tier_names()}.")
        outputs = self.transport.predict(name, {"images": images})
        if "top5_classes" in outputs:
            outputs["top5_classes"] = np.vectorize(
                lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object]
            )(outputs["top5_classes"])
        return outputs

    def close(self):
        self.transport.close()


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
