"""The client of a PSS model on TF Serving: tiers, tier choice, queries.

client   `connect`, `PSSClient`, gRPC and REST transports, tier policies
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "ServingError": "client",
    "Tier": "client",
    "GrpcTransport": "client",
    "RestTransport": "client",
    "tiers_from_metadata": "client",
    "LATENCY_SOURCES": "client",
    "tier_latency_ms": "client",
    "PSSClient": "client",
    "dominant_tiers": "client",
    "AdaptiveTierPolicy": "client",
    "MedianStepPolicy": "client",
    "PROTOCOLS": "client",
    "connect": "client",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
