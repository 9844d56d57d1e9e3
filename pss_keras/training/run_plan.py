"""What a run will do, said before it does it: the run header and the dry run.

A PSS run is days of accelerator time at the paper's scale; its setting is
worth reading first. `RunPlan` gathers what the run will train on and with:
the data (examples and classes per split, the cache decision), the model and
search space, each metric type's targets as the conditional sampler's map
reaches them (a target no subnet of the map reaches gets no pool), steps per
epoch, global batch and replicas, the learning rate, the job directory and
where the weights come from. `RunPlan.header` is what
`pss_keras.training.driver.train` logs before the first step;
`pss_keras.training.dry_run.dry_run` builds the same plan without training
or writing anything (``scripts/train.py --dry_run``), and
`RunPlan.dry_run_report` adds every target, marked reached or not.
"""

from __future__ import annotations

import dataclasses
import os

from pss_keras.cost.flops import count_mflops
from pss_keras.jobs import directory as jobs
from pss_keras.jobs.config import TrainConfig
from pss_keras.supernet import specs
from pss_keras.training import sampling

# The class count a dry run assumes when the data cannot be opened (ImageNet's).
ASSUMED_CLASSES = 1000
# How a map reaches a target (`TargetStatus.status`).
REACHED = "reached"
LARGEST_ONLY = "largest subnet only"
SMALLEST_ONLY = "smallest subnet only"
NOT_REACHED = "not reached"


@dataclasses.dataclass(frozen=True)
class DataCounts:
    """A run's data, counted.

    Attributes:
        dataset: the dataset's name (TFDS name, folder or synthetic_shapes).
        num_train: training examples, minival excluded.
        num_minival: training examples held out to choose the tiers.
        num_validation: validation examples.
        class_names: in label order.
        cached: whether the decoded training set is cached in memory.
        checked: whether the counts are after the bad-image check (a
            training run) or from the dataset's index alone (a dry run: a
            bad image found later lowers them).
    """

    dataset: str
    num_train: int
    num_minival: int
    num_validation: int
    class_names: tuple
    cached: bool
    checked: bool
    class_counts: dict | None = None

    @classmethod
    def of(cls, pipelines, checked: bool) -> DataCounts:
        """Counts a `pss_keras.data.pipelines.Pipelines`; ``checked`` reads (and
        checks) the training split first, as training does."""
        source = pipelines.source
        if checked:
            num_train, num_minival = pipelines.num_train, pipelines.num_minival
        else:  # the index alone: nothing is decoded
            num_train = pipelines.num_train_records
            num_minival = source.num_train - num_train
        return cls(
            dataset=pipelines.config.dataset,
            num_train=int(num_train),
            num_minival=int(num_minival),
            num_validation=int(source.num_validation),
            class_names=tuple(source.class_names),
            cached=bool(pipelines.should_cache(source.num_train)),
            checked=checked,
            class_counts=source.train_class_counts,
        )

    @classmethod
    def of_source(cls, source, config) -> DataCounts:
        """Counts a `pss_keras.data.pipelines.DatasetSource` that the run's settings
        cannot use (no minival held out)."""
        return cls(
            dataset=config.dataset,
            num_train=int(source.num_train),
            num_minival=0,
            num_validation=int(source.num_validation),
            class_names=tuple(source.class_names),
            cached=False,
            checked=False,
        )


@dataclasses.dataclass(frozen=True)
class TargetStatus:
    """One target of a metric type's grid, as the map reaches it."""

    name: str
    value: float
    status: str


@dataclasses.dataclass(frozen=True)
class MapReport:
    """One metric type's conditional-sampler map and its targets.

    Attributes:
        metric_type: ``flops``, ``latency_cpu`` or ``latency_gpu``.
        source: how the metric is known: counted, or the table's description.
        num_samples: random subnets drawn for the map.
        seconds: time to build the map.
        targets: every target of the grid, in order.
    """

    metric_type: str
    source: str
    num_samples: int
    seconds: float
    targets: tuple[TargetStatus, ...]
    step: float | None = None  # the grid step (runs of targets are consecutive on it)

    @classmethod
    def of(cls, conditional: sampling.ConditionalSampler, source: str, num_samples: int):
        grid = conditional.grid
        targets = []
        for k in range(grid.num_targets):
            if k not in conditional.distributions:
                status = NOT_REACHED
            elif k in conditional.extreme_only:
                largest = conditional.extreme_only[k] == conditional.space.largest()
                status = LARGEST_ONLY if largest else SMALLEST_ONLY
            else:
                status = REACHED
            targets.append(TargetStatus(grid.name(k), grid.value(k), status))
        return cls(
            grid.metric_type,
            source,
            int(num_samples),
            conditional.build_seconds,
            tuple(targets),
            float(grid.step),
        )

    @property
    def unit(self) -> str:
        return "M" if self.metric_type == "flops" else "us"

    @property
    def num_reached(self) -> int:
        """Targets that get a pool (the extremes' included)."""
        return sum(t.status != NOT_REACHED for t in self.targets)

    def values(self, status: str) -> list[float]:
        return [t.value for t in self.targets if t.status == status]

    def summary(self) -> str:
        """``flops: 42 of 47 targets reached (not: 520..560 M)``."""
        missing = self.values(NOT_REACHED)
        tail = f" (not: {format_values(missing, self.unit, self.step)})" if missing else ""
        return (
            f"{self.metric_type}: {self.num_reached} of {len(self.targets)} targets reached{tail}"
        )


def format_value(value: float, unit: str) -> str:
    return f"{value:,.0f}" if value == round(value) else f"{value:,g}"


def format_values(values, unit: str, step: float | None = None) -> str:
    """Targets as runs of consecutive grid values: ``520..560, 600 M``.

    ``values`` must be grid values in order; two are consecutive when they
    are ``step`` apart (the grid's step; without it, the smallest gap
    between the values).
    """
    if not values:
        return "none"
    return ", ".join(
        format_value(run[0], unit) if len(run) == 1 else
        f"{format_value(run[0], unit)}..{format_value(run[-1], unit)}"
        for run in _runs(values, step)
    ) + f" {unit}"  # fmt: skip


def _runs(values, step: float | None = None):
    """Splits sorted grid values into runs ``step`` apart."""
    values = list(values)
    if step is None:
        steps = [b - a for a, b in zip(values, values[1:])]
        step = min(steps) if steps else 0
    runs, current = [], [values[0]]
    for v in values[1:]:
        if abs(v - current[-1] - step) <= 1e-6 * max(1.0, abs(step)):
            current.append(v)
        else:
            runs.append(current)
            current = [v]
    runs.append(current)
    return runs


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run's setting, as the header and the dry run print it.

    Attributes:
        config: the run's settings.
        strategy: the `tf.distribute` strategy's name.
        replicas: replicas in sync (the global batch is split over them).
        maps: one `MapReport` per metric type.
        data: the data's counts, or None if it could not be opened.
        data_error: why not (one line), else "".
        resume: ``new run`` or what a resume continues from.
        weights: where the initial weights come from.
    """

    config: TrainConfig
    strategy: str
    replicas: int
    maps: tuple[MapReport, ...]
    data: DataCounts | None = None
    data_error: str = ""
    resume: str = "new run"
    weights: str = ""

    @property
    def steps_per_epoch(self) -> int | None:
        if self.data is None or self.data_error:
            return None
        return self.data.num_train // self.config.data.batch_size

    @property
    def num_classes(self) -> int:
        """The data's classes, or ImageNet's 1000 when the data was not opened."""
        return len(self.data.class_names) if self.data is not None else ASSUMED_CLASSES

    @property
    def map_seconds(self) -> float:
        return sum(m.seconds for m in self.maps)

    def header(self) -> list[str]:
        """The run header: one setting a line."""
        c, d = self.config, self.data
        space = specs.SearchSpace(**c.space_kwargs(1))
        lines = [f"job dir       {c.job_dir} ({self.resume})"]
        if d is None:
            lines.append(f"data          {c.data.dataset}: {self.data_error}")
        elif self.data_error:
            lines.append(
                f"data          {d.dataset}: {d.num_train:,} train, {d.num_validation:,} "
                f"validation, {len(d.class_names)} classes; {self.data_error}"
            )
        else:
            lines.append(
                f"data          {d.dataset}: {d.num_train:,} train + {d.num_minival:,} minival "
                f"(held out of train, chooses the tiers), {d.num_validation:,} validation; "
                f"{len(d.class_names)} classes"
                + ("" if d.checked else " (from the dataset's index; bad images not yet checked)")
            )
            if d.class_counts:
                lines.append(f"classes       {describe_class_counts(d.class_counts)}")
            lines.append(
                "cache         "
                + ("decoded training set in memory" if d.cached else "streamed (not cached)")
                + f" (--cache={c.data.cache}, {c.data.cache_max_examples:,} examples at most "
                "for auto)"
            )
        largest, smallest = space.largest(), space.smallest()
        classes = self.num_classes
        lines.append(
            f"model         {c.model_name}, width scale {c.width_scale:g}, resolution "
            f"{c.resolution_range[0]}..{c.resolution_range[1]} step {c.resolution_step}, stage "
            f"widths x{c.width_range[0]:g}..{c.width_range[1]:g}, {classes:,} classes"
            f"{'' if d is not None else ' (assumed)'}; largest subnet "
            f"{count_mflops(largest, classes, c.width_scale):,.2f} MFLOPs, smallest "
            f"{count_mflops(smallest, classes, c.width_scale):,.2f} MFLOPs"
            + ("" if (c.padding, c.bn_epsilon) == ("same", 1e-3) else
               f"; {c.padding} padding, BN epsilon {c.bn_epsilon:g}")
        )  # fmt: skip
        if c.subnet is not None:
            lines.append(f"subnet        {describe_subnet(c, classes)}")
        for report in self.maps:
            lines.append(
                f"targets       {report.summary()}; map of {report.num_samples:,} subnets "
                f"({report.source}) in {report.seconds:.2f} s"
            )
        batch = c.data.batch_size
        steps = self.steps_per_epoch
        lines.append(
            f"batch         global {batch:,} over {self.replicas} replica(s) ({self.strategy}), "
            f"{batch // max(1, self.replicas):,} per replica; "
            + (f"{steps:,} steps an epoch, " if steps is not None else "")
            + f"{c.epochs} epochs"
        )
        warmup = f", linear warm-up {c.warmup_in_use:g} epochs" if c.warmup_in_use else ""
        lines.append(
            f"lr            {c.lr_in_use:.6g} peak in use: {c.describe_lr()}; cosine decay per "
            f"step{warmup}; SGD momentum "
            f"{c.momentum:g}{' (Nesterov)' if c.nesterov else ''}, weight decay {c.weight_decay:g}"
        )
        lines.append(f"weights       {self.weights or f'random initialization (seed {c.seed})'}")
        return lines

    def dry_run_report(self) -> list[str]:
        """The header, then every target of every metric type marked
        reached (with a pool) or not reached (no subnet of the map falls on
        it: no pool, no tier)."""
        lines = ["Run header:", *("  " + line for line in self.header())]
        for report in self.maps:
            lines.append(
                f"{report.metric_type} targets ({report.source}; map of {report.num_samples:,} "
                f"subnets, {report.seconds:.2f} s): {report.num_reached} of "
                f"{len(report.targets)} reached"
            )
            for status in (REACHED, LARGEST_ONLY, SMALLEST_ONLY, NOT_REACHED):
                values = report.values(status)
                if values or status in (REACHED, NOT_REACHED):
                    text = format_values(values, report.unit, report.step)
                    lines.append(f"  {status + ':':<22}{text}")
        if self.maps:
            lines.append(f"map time {self.map_seconds:.2f} s in all")
        return lines


def describe_subnet(config: TrainConfig, num_classes: int) -> str:
    """The header's line of a run that trains one subnet alone: ``one subnet
    alone: <config>, <MFLOPs>, from scratch`` (or ``from <job> tier <name>``,
    ``from <init_from>``); plain cross-entropy (or distilled from the
    largest subnet of <init_from>), no pools."""
    subnet = config.subnet
    mflops = count_mflops(subnet, num_classes, config.width_scale)
    if not config.init_from:
        start = "from scratch"
    elif config.subnet_name:
        start = f"from {config.init_from} tier {config.subnet_name}"
    else:
        start = f"from {config.init_from}"
    loss = "plain cross-entropy"
    if config.distill_from_largest:
        loss = f"distilled from the largest subnet of {config.init_from} (KL divergence)"
    return f"one subnet alone: {subnet.name}, {mflops:,.2f} MFLOPs, {start}; {loss}, no pools"


def describe_class_counts(counts: dict, listed: int = 12) -> str:
    """Training images per class: all of them for a few classes, else the
    smallest, median and largest."""
    if len(counts) <= listed:
        return "train images per class: " + ", ".join(f"{c} {n:,}" for c, n in counts.items())
    ordered = sorted(counts.items(), key=lambda item: item[1])
    median = ordered[len(ordered) // 2][1]
    (low, n_low), (high, n_high) = ordered[0], ordered[-1]
    return (
        f"train images per class: fewest {n_low:,} ({low}), median {median:,}, most "
        f"{n_high:,} ({high})"
    )


def resume_state(job_dir: str) -> str:
    """What a run in ``job_dir`` continues from (``new run`` if nothing).

    Reads only: the checkpoints' folder names, no weights.
    """
    checkpoints = os.path.join(job_dir, jobs.CHECKPOINTS)
    if not os.path.exists(os.path.join(job_dir, jobs.RUN_CONFIG)):
        return "new run"
    names = sorted(os.listdir(checkpoints)) if os.path.isdir(checkpoints) else []
    names = [n for n in names if n.startswith("epoch-")]
    return f"resumes the run there; checkpoints: {', '.join(names) if names else 'none'}"


def map_source(metric_type: str, tables: dict) -> str:
    """How a metric type's values are known: counted, or which table."""
    if metric_type == "flops":
        return "counted"
    return tables[metric_type].describe()
