"""Module paths of the flat layout (pss_keras 0.1), and where each went.

``import pss_keras.flops`` and the like fail with a message naming the new
module instead of a bare "No module named"; the packages that kept an old
module's name (``pss_keras.data``, ``.export``, ``.jobs``, ``.serving``,
``.supernet``, ``.tflite``, ``.training``) still answer its public names.
"""

from __future__ import annotations

import importlib.abc
import sys

MOVED = {
    "blocks": "pss_keras.supernet.blocks",
    "callbacks": "pss_keras.training.callbacks",
    "checkpoints": "pss_keras.training.checkpoints",
    "distribution": "pss_keras.training.distribution",
    "evaluation": "pss_keras.training.evaluation",
    "extraction": "pss_keras.supernet.extraction",
    "fileio": "pss_keras.utils.fileio",
    "flops": "pss_keras.cost.flops",
    "latency": "pss_keras.cost.latency",
    "latency_measurement": "pss_keras.cost.latency_measurement",
    "layers": "pss_keras.supernet.layers",
    "load_test": "pss_keras.benchmarking.load_test",
    "loop": "pss_keras.training.loop",
    "losses": "pss_keras.utils.losses",
    "model_server": "pss_keras.testing.model_server",
    "plots": "pss_keras.utils.plots",
    "pools": "pss_keras.training.pools",
    "preprocessing": "pss_keras.data.preprocessing",
    "pretrained": "pss_keras.supernet.pretrained",
    "qat": "pss_keras.tflite.qat",
    "reference_luts": "pss_keras.cost.reference_tables",
    "run_config": "pss_keras.jobs.config",
    "run_plan": "pss_keras.training.run_plan",
    "sampling": "pss_keras.training.sampling",
    "selection": "pss_keras.training.selection",
    "soak": "pss_keras.benchmarking.soak",
    "specs": "pss_keras.supernet.specs",
    "synthetic_job": "pss_keras.testing.synthetic_job",
    "tflite_chooser": "pss_keras.tflite.chooser",
    "tflite_conversion": "pss_keras.tflite.model_conversion",
    "tflite_manifest": "pss_keras.tflite.manifest",
    "tflite_runner": "pss_keras.tflite.runner",
    "tflite_verification": "pss_keras.tflite.verification",
    "tier_graph": "pss_keras.export.tier_graph",
    "timing": "pss_keras.utils.timing",
    "toydata": "pss_keras.data.toydata",
    "trainer": "pss_keras.training.trainer",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Refuses an old flat-layout module path with the path it moved to."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix == "pss_keras" and name in MOVED:
            # ImportError, not ModuleNotFoundError: `from pss_keras import flops`
            # would swallow the latter and say only "cannot import name".
            raise ImportError(
                f"{fullname} moved to {MOVED[name]} in pss_keras 0.2: "
                f"import it from there (e.g. `from {MOVED[name].rpartition('.')[0]} "
                f"import {MOVED[name].rpartition('.')[2]}`).",
                name=fullname,
            )
        return None


def install() -> None:
    """Puts the finder on ``sys.meta_path`` once (after the normal finders,
    which find nothing under these names)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
