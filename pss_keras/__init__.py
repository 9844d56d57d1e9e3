"""pss_keras: PSS-Net resource-adaptive supernets in Keras 3 / TensorFlow.

The pipeline, one module per step:
    data, toydata        input pipelines (TFDS, image folders, generated shapes)
    specs, flops         the search space and cost of subnets (pure Python/NumPy)
    layers, supernet     width-switchable layers and the MobileNet supernets
    pretrained           weights from keras.applications
    pools, sampling      subnet pools, conditional and prioritized samplers
    training             the PSS train step, the run, the subnet selection
    checkpoints          atomic, resumable checkpoints
    evaluation           post-BN calibration and accuracy of subnets
    extraction           standalone Keras models of single subnets
    export, serving      the TF Serving SavedModel and its client
    tflite, qat          per-tier .tflite files (float, fp16, int8, QAT int8)

The TensorFlow-backed names are imported on first use, so that counting
FLOPs or sampling configs does not pay for importing TensorFlow.
"""

import importlib

from pss_keras.flops import count_mflops, count_mflops_np, count_params
from pss_keras.specs import SearchSpace, SubnetConfig, make_divisible

_LAZY = {
    "Supernet": "pss_keras.supernet",
    "build_supernet": "pss_keras.supernet",
    "extract_subnet": "pss_keras.extraction",
    "load_keras_applications_weights": "pss_keras.pretrained",
}

__all__ = [
    "SearchSpace",
    "SubnetConfig",
    "Supernet",
    "build_supernet",
    "count_mflops",
    "count_mflops_np",
    "count_params",
    "extract_subnet",
    "load_keras_applications_weights",
    "make_divisible",
]

__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pss_keras' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
