"""A trained job as one multi-signature SavedModel for TF Serving.

saved_model   `export`: one signature per tier, the tier table, warm-up records
tier_graph    one tier's inference graph on the shared weights, BN folded
replacement   a tier fine-tuned alone in place of its inherited one (``replace``)
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "MODES": "saved_model",
    "WARMUP_FILE": "saved_model",
    "tier_functions": "saved_model",
    "measure_latency_ms": "saved_model",
    "next_version": "saved_model",
    "export": "saved_model",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
