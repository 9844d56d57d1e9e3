"""What every latency table offers a run, written once.

Two kinds of table predict a subnet's latency from its blocks: the
project's own (`pss_keras.cost.latency.LatencyTable`, measured on your
device by ``scripts/build_latency_lut.py``) and the reference's
(`pss_keras.cost.reference_tables.ReferenceLatencyTable`, PSS-Net's
``.pkl`` files: the paper's targets). The sampler, the run and the job use
either through `BlockLatencyTable`; `load_table` reads either from its file.
No TensorFlow.
"""

from __future__ import annotations

import abc
import json

import numpy as np

from pss_keras.supernet import specs
from pss_keras.utils.fileio import atomic_write_json


class BlockLatencyTable(abc.ABC):
    """A latency look-up table and the predictor over it.

    Attributes:
        path: the file it was read from, or None.
    """

    path: str | None

    @abc.abstractmethod
    def predict_us_np(self, model_name: str, resolutions, mults) -> np.ndarray:
        """Predicted latency (us) of many subnets: resolutions [n], mults [n, S].

        Raises:
            ValueError: one line, if the table lacks a block of a subnet or
                is for another architecture or search space.
        """

    def predict_us(self, config: specs.SubnetConfig) -> float:
        """Predicted latency of one subnet in microseconds."""
        r, m = specs.configs_to_arrays([config])
        return float(self.predict_us_np(config.model_name, r, m)[0])

    @abc.abstractmethod
    def block_us(self, config: specs.SubnetConfig) -> list[tuple[str, float]]:
        """``(block name, us)`` of every block of ``config`` (a breakdown)."""

    @abc.abstractmethod
    def check_space(self, space: specs.SearchSpace) -> None:
        """Refuses a search space the table cannot predict.

        Raises:
            ValueError: one line naming the table and what differs.
        """

    def check_metric_space(self, space: specs.SearchSpace) -> None:
        """What the sampler's metric checks of a space before predicting
        (nothing by default: `predict_us_np` refuses what it cannot key)."""
        del space

    def metric_fn(self):
        """The sampler's metric function (`pss_keras.training.sampling.MetricFn`)."""

        def metric(space, resolutions, mults):
            self.check_metric_space(space)
            return self.predict_us_np(space.model_name, resolutions, mults)

        return metric

    @abc.abstractmethod
    def describe(self) -> str:
        """One line: what the table is and where it was measured."""

    @property
    @abc.abstractmethod
    def runtime(self) -> str:
        """The runtime its entries were measured with (``tflite``, ...)."""

    @abc.abstractmethod
    def digest(self) -> str:
        """A content digest, to tell tables apart (a job keeps its table's)."""

    @abc.abstractmethod
    def to_dict(self) -> dict:
        """The table as JSON data (its class's ``from_dict`` reads it back)."""

    def save(self, path: str) -> None:
        """Writes the table as JSON (atomically: never half a file in place;
        never a pickle, so a job's copy is read without unpickling anything)."""
        atomic_write_json(path, self.to_dict())


def load_table(path: str) -> BlockLatencyTable:
    """Reads a latency table of either kind.

    Args:
        path: a ``.pkl`` file is one of the reference's tables (PSS-Net's
            ``scripts/lut/``, measured on its authors' devices: the paper's
            latency targets), read safely
            (`pss_keras.cost.reference_tables.load_reference_table`); a JSON
            file is the project's own table, measured on your device
            (``scripts/build_latency_lut.py``), or a job's JSON copy of a
            reference table.

    Returns:
        A `LatencyTable` or a `ReferenceLatencyTable`.

    Raises:
        ValueError: one line naming the file if it is missing, unreadable,
            not a table, or (a pickle) names anything but its records.
    """
    # Here, not at the top: both kinds subclass this module's base class.
    from pss_keras.cost import reference_tables
    from pss_keras.cost.latency import LatencyTable

    if path.lower().endswith(".pkl"):
        return reference_tables.load_reference_table(path)
    data = read_table_json(
        path,
        "build one with scripts/build_latency_lut.py --output=FILE.json, or give one of the "
        "reference's .pkl tables",
    )
    if isinstance(data, dict) and data.get("format") == reference_tables.FORMAT:
        return reference_tables.ReferenceLatencyTable.from_dict(data, path)
    return LatencyTable.from_dict(data, path)


def read_table_json(path: str, missing_hint: str):
    """A table file's JSON.

    Raises:
        ValueError: one line naming ``path`` if it is missing (with
            ``missing_hint``) or not readable JSON.
    """
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"Latency table {path} does not exist; {missing_hint}.") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"Latency table {path} is not readable JSON ({e}).") from None
