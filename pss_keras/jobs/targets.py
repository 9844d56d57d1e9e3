"""The pools' targets as a command line gives them: one list per flag.

``scripts/train.py`` takes the metric types and their target ranges as
parallel lists (``--infer_metric_types``, ``--infer_metric_target_range_*``,
``--lut_dirs``); `MetricTargets.parse` checks them against each other and
gives the `pss_keras.jobs.config.TrainConfig` fields they set.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MetricTargets:
    """The pools' targets as a command line gives them, one entry per type.

    Attributes:
        metric_types: as given (their order is the run's).
        flops: ``(start, stop, step)`` in MFLOPs, or None without FLOPs pools.
        latency_targets: ``(start, stop, step)`` in microseconds per latency
            type, in the order of ``metric_types``.
        lut_paths: the latency tables, in the same order.
    """

    metric_types: tuple[str, ...]
    flops: tuple[float, float, float] | None
    latency_targets: tuple[tuple[float, float, float], ...]
    lut_paths: tuple[str, ...]

    @classmethod
    def parse(cls, types, starts, stops, steps, lut_dirs=None) -> MetricTargets:
        """Checks the per-type lists against each other (train.py's
        ``--infer_metric_types``, ``--infer_metric_target_range_*``,
        ``--lut_dirs``).

        Args:
            types: metric types, e.g. ``["flops", "latency_cpu"]``.
            starts, stops, steps: one value (number or text) per type.
            lut_dirs: one entry per type: ``None`` (text) for flops, a latency
                table for each latency type; None: every entry ``None``.

        Raises:
            ValueError: one line naming the flag that does not fit and what it
                needs.
        """
        types = [m.strip() for m in types]
        luts = list(lut_dirs) if lut_dirs is not None else ["None"] * len(types)
        if len(luts) != len(types):
            raise ValueError(
                f"--lut_dirs needs one entry per metric type ({','.join(types)}): None for flops, "
                f"a table file for each latency type; got {','.join(luts)}."
            )
        ranges = []
        for name, values in (
            ("infer_metric_target_range_starts", starts),
            ("infer_metric_target_range_stops", stops),
            ("infer_metric_target_steps", steps),
        ):
            if len(values) != len(types):
                raise ValueError(
                    f"--{name} needs one value per metric type ({','.join(types)}), got {values}."
                )
            try:
                ranges.append([float(v) for v in values])
            except ValueError:
                raise ValueError(f"--{name}={','.join(values)} must be numbers.") from None
        targets = dict(zip(types, zip(*ranges)))
        for metric_type, lut in zip(types, luts):
            if (metric_type == "flops") != (lut.lower() == "none"):
                needs = (
                    "None (FLOPs are counted)"
                    if metric_type == "flops"
                    else "a latency table (your own .json from scripts/build_latency_lut.py, or "
                    "the reference's .pkl from PSS-Net's scripts/lut/)"
                )
                raise ValueError(f"--lut_dirs: {metric_type} needs {needs}, got {lut}.")
        return cls(
            metric_types=tuple(types),
            flops=targets.get("flops"),
            latency_targets=tuple(targets[m] for m in types if m != "flops"),
            lut_paths=tuple(lut for m, lut in zip(types, luts) if m != "flops"),
        )
