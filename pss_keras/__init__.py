"""pss_keras: PSS-Net resource-adaptive supernets in Keras 3 / TensorFlow.

The pipeline, one sub-package per stage, in the order data flows:
    jobs        the contract every stage shares: a run's settings, the job
                directory and its records (no TensorFlow)
    data        input pipelines (TFDS, image folders, generated shapes) and
                the one evaluation transform
    supernet    search space, architecture plan, switchable layers, the
                supernet, single-subnet extraction, pretrained weights
    cost        FLOPs and latency tables (no TensorFlow but the measurement)
    training    pools, samplers, the sandwich step, checkpoints, selection,
                the run driver
    export      the multi-signature SavedModel for TF Serving
    tflite      per-tier .tflite files, and choosing a tier on the device
    serving     the TF Serving client and its tier policies
    utils       atomic writes, the timing loop, losses, plots
Test and benchmark rigs live in ``pss_keras.testing`` and
``pss_keras.benchmarking``; importing the library loads neither.

The TensorFlow-backed names are imported on first use, so that counting
FLOPs or sampling configs does not pay for importing TensorFlow.
"""

import importlib

from pss_keras import _moved
from pss_keras.cost import tables
from pss_keras.cost.flops import count_mflops, count_mflops_np, count_params
from pss_keras.cost.latency import LatencyTable
from pss_keras.cost.reference_tables import ReferenceLatencyTable, load_reference_table
from pss_keras.supernet.blocks import make_divisible
from pss_keras.supernet.specs import SearchSpace, SubnetConfig

_LAZY = {
    "Supernet": "pss_keras.supernet.model",
    "build_supernet": "pss_keras.supernet.model",
    "extract_subnet": "pss_keras.supernet.extraction",
    "load_keras_applications_weights": "pss_keras.supernet.keras_applications",
    "initialize_supernet": "pss_keras.supernet.pretrained",
    "load_reference_checkpoint": "pss_keras.supernet.reference_checkpoint",
    "reference_subnet": "pss_keras.supernet.reference_checkpoint",
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
    "load_reference_checkpoint",
    "load_reference_table",
    "make_divisible",
    "predict_latency_us",
    "predict_latency_us_np",
    "reference_subnet",
]

__version__ = "0.3.0"

_moved.install()


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
    return tables.load_table(path)


def _check_table(table) -> None:
    if not isinstance(table, tables.BlockLatencyTable):
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
