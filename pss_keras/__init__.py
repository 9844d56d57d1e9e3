"""pss_keras: PSS-Net resource-adaptive supernets in Keras 3 / TensorFlow.

The pipeline, one module per concept, in the order data flows:
    run_config           a run's settings (TrainConfig, DataConfig; no TF)
    data, toydata        input pipelines (TFDS, image folders, generated shapes)
    preprocessing        the one evaluation transform (training, serving, TFLite)
    specs, blocks, flops the search space, the architecture plan, subnet cost
    latency, latency_measurement  latency look-up tables: predictor (no TF), measurement
    layers, supernet     width-switchable layers and the MobileNet supernets
    pretrained           weights from keras.applications
    pools, sampling      subnet pools, conditional and prioritized samplers
    losses, trainer      the sandwich step (PSSTrainer) and its losses
    callbacks            candidate choice, checkpoints, progress per epoch
    checkpoints          atomic, resumable checkpoints (optimizer by name)
    evaluation           post-BN calibration and accuracy of subnets
    selection            the end-of-run choice of one subnet per target
    distribution         tf.distribute strategy choice, CPU replicas for tests
    training             the run driver (train, evaluate_job)
    jobs                 the job directory's layout and records (no TF)
    extraction           standalone Keras models of single subnets
    export, serving      the TF Serving SavedModel and its client
    tflite, tflite_*, qat  per-tier .tflite files (float, fp16, int8, QAT int8)
    fileio, timing       atomic durable writes; the one latency loop

The TensorFlow-backed names are imported on first use, so that counting
FLOPs or sampling configs does not pay for importing TensorFlow.
"""

import importlib

from pss_keras.blocks import make_divisible
from pss_keras.flops import count_mflops, count_mflops_np, count_params
from pss_keras.latency import LatencyTable
from pss_keras.specs import SearchSpace, SubnetConfig

_LAZY = {
    "Supernet": "pss_keras.supernet",
    "build_supernet": "pss_keras.supernet",
    "extract_subnet": "pss_keras.extraction",
    "load_keras_applications_weights": "pss_keras.pretrained",
}

__all__ = [
    "LatencyTable",
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
