"""The client of a PSS model on TF Serving: tiers, tier choice, queries.

transports       `ServingError`, gRPC and REST transports (`PROTOCOLS`)
tiers            the served tiers: from metadata, their latency, the dominant ones
client           `connect`, `PSSClient`: list tiers, choose by budget, predict
policies         what a tier policy is; `MedianStepPolicy` (for comparison)
adaptive_policy  `AdaptiveTierPolicy`: a percentile latency objective
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "ServingError": "transports",
    "GrpcTransport": "transports",
    "RestTransport": "transports",
    "PROTOCOLS": "transports",
    "Tier": "tiers",
    "tiers_from_metadata": "tiers",
    "LATENCY_SOURCES": "tiers",
    "tier_latency_ms": "tiers",
    "dominant_tiers": "tiers",
    "PSSClient": "client",
    "connect": "client",
    "MedianStepPolicy": "policies",
    "AdaptiveTierPolicy": "adaptive_policy",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
