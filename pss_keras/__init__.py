"""pss_keras: PSS-Net resource-adaptive supernets in Keras 3 / TensorFlow.

The pipeline, one module per concept, in the order data flows:
    run_config           a run's settings (TrainConfig, DataConfig; no TF)
    data, toydata        input pipelines (TFDS, image folders, generated shapes)
    preprocessing        the one evaluation transform (training, serving, TFLite)
    specs, blocks, flops the search space, the architecture plan, subnet cost
    latency, latency_measurement  latency look-up tables: predictor (no TF), measurement
    reference_luts       the reference's .pkl latency tables (the paper's targets)
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

from pss_keras import latency
from pss_keras.blocks import make_divisible
from pss_keras.flops import count_mflops, count_mflops_np, count_params
from pss_keras.latency import LatencyTable
from pss_keras.reference_luts import ReferenceLatencyTable, load_reference_table
from pss_keras.specs import SearchSpace, SubnetConfig

_LAZY = {
    "Supernet": "pss_keras.supernet",
    "build_supernet": "pss_keras.supernet",
    "extract_subnet": "pss_keras.extraction",
    "load_keras_applications_weights": "pss_keras.pretrained",
    "initialize_supernet": "pss_keras.pretrained",
}

__all__ = [
    "LatencyTable",
    "ReferenceLatencyTable",
    "SearchSpace",
    "SubnetConfig",
    "Supernet",
    "build_supernet",
    "count_mflops",
    "count_mflops_np",
    "count_params",
    "extract_subnet",
    "initialize_supernet",
    "load_keras_applications_weights",
    "load_latency_table",
    "load_reference_table",
    "make_divisible",
    "predict_latency_us",
    "predict_latency_us_np",
]

__version__ = "0.1.0"


def load_latency_table(path: str) -> LatencyTable | ReferenceLatencyTable:
    """Reads a latency table of either kind, by its file name.

    Args:
        path: a ``.pkl`` file is one of the reference's tables (PSS-Net's
            ``scripts/lut/``, measured on its authors' devices: the paper's
            latency targets), read safely (`load_reference_table`); a JSON
            file is the project's own table, measured on your device
            (``scripts/build_latency_lut.py``; `LatencyTable.load`), or a
            job's copy of a reference table (``latency_tables/<type>.json``).

    Returns:
        A `ReferenceLatencyTable` or a `LatencyTable`.

    Raises:
        ValueError: one line naming the file if it is missing, unreadable,
            not a table, or (a pickle) names anything but its records.
    """
    return latency.load_table(path)


def _check_table(table) -> None:
    if not isinstance(table, (LatencyTable, ReferenceLatencyTable)):
        raise TypeError(
            f"Expected a latency table (from pss_keras.load_latency_table), got "
            f"{type(table).__name__}."
        )


def predict_latency_us(table: LatencyTable | ReferenceLatencyTable, config: SubnetConfig) -> float:
    """A subnet's latency in microseconds as ``table`` predicts it.

    The sum of its blocks' entries (plus the table's per-inference overhead
    for the project's own tables; the reference's have none).

    Args:
        table: from `load_latency_table`, of either kind.
        config: the subnet.

    Returns:
        Microseconds (float).

    Raises:
        TypeError: ``table`` is not a latency table.
        ValueError: one line, if the table is for another architecture or
            search space, or lacks a block of the subnet.
    """
    _check_table(table)
    return table.predict_us(config)


def predict_latency_us_np(
    table: LatencyTable | ReferenceLatencyTable, model_name: str, resolutions, mults
):
    """Vectorized `predict_latency_us` (what the sampler's map uses).

    Args:
        table: from `load_latency_table`, of either kind.
        model_name: architecture of every subnet.
        resolutions: int array [n].
        mults: float array [n, num_stages].

    Returns:
        float64 array [n] of microseconds.

    Raises:
        TypeError, ValueError: as `predict_latency_us`.
    """
    _check_table(table)
    return table.predict_us_np(model_name, resolutions, mults)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pss_keras' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
