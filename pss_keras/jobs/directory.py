"""The job directory: its layout, its records and how to read it back.

A training run writes ``<job_dir>/``::

    run_config.json          the run's `TrainConfig` (to resume or reuse it)
    classes.json             class names, in label order
    data_split.json          a train-only image folder's train/validation split
    weights_origin.json      where the initial weights came from (--init_from)
    supernet.weights.h5      the trained supernet (Keras weights)
    retained_subnets.json    the retained tiers (`RetainedTier` records)
    bn_stats/<tier>.npz      each tier's calibrated batch-norm statistics
    latency_tables/<type>.json  the run's latency look-up tables (a copy; JSON
                                also for a reference .pkl table)
    checkpoints/             resumable checkpoints (`pss_keras.training.checkpoints`)
    logs/                    TensorBoard

This module owns those names and formats: training writes through it, and
export, TFLite and the serving client read through it. Importing it loads
no TensorFlow and nothing of training (`Job` imports the supernet module
when it loads one).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from pss_keras.jobs.config import TrainConfig
from pss_keras.jobs.tiers import RetainedTier
from pss_keras.supernet import specs
from pss_keras.utils.fileio import atomic_file, atomic_write_json

RUN_CONFIG = "run_config.json"
CLASSES = "classes.json"
WEIGHTS = "supernet.weights.h5"
RETAINED = "retained_subnets.json"
BN_STATS = "bn_stats"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
LATENCY_TABLES = "latency_tables"
DATA_SPLIT = "data_split.json"
WEIGHTS_ORIGIN = "weights_origin.json"


# -- writing (training) -----------------------------------------------------
def write_run_config(job_dir: str, config: TrainConfig) -> None:
    """Records ``config``; refuses a job directory that holds other settings.

    Raises:
        ValueError: naming the settings that differ from the saved run's.
    """
    check_resume(job_dir, config)
    atomic_write_json(os.path.join(job_dir, RUN_CONFIG), json.loads(json.dumps(config.to_dict())))


def check_resume(job_dir: str, config: TrainConfig) -> None:
    """Refuses to run ``config`` in a job directory that holds a run with
    other settings (nothing there: nothing to check).

    Raises:
        ValueError: naming the settings that differ from the saved run's.
    """
    path = os.path.join(job_dir, RUN_CONFIG)
    if os.path.exists(path):
        with open(path) as f:
            conflicts = config.resume_conflicts(json.load(f))
        if conflicts:
            raise ValueError(
                f"{job_dir} holds a run with other settings ({', '.join(conflicts)}); "
                "resume with the same flags or use a new --job_dir."
            )


def skip_bad_images_hint(job_dir: str) -> str:
    """What a bad-image message suggests to a job's evaluation or conversion,
    which take the data settings from the job's run_config.json."""
    path = os.path.join(job_dir, RUN_CONFIG)
    return f'set "bad_images": "skip" in the "data" section of {path} to go on without them'


def read_run_config(job_dir: str) -> TrainConfig:
    """The run's settings.

    Raises:
        ValueError: if ``job_dir`` is not a job directory.
    """
    path = os.path.join(job_dir, RUN_CONFIG)
    if not os.path.exists(path):
        raise ValueError(
            f"{job_dir} is not a PSS job directory ({RUN_CONFIG} is missing); pass the "
            "--job_dir of a training run."
        )
    with open(path) as f:
        return TrainConfig.from_dict(json.load(f))


def inherited_architecture(init_from: str) -> dict:
    """The architecture fields (``padding``, ``bn_epsilon``) of a run that
    starts from ``init_from``: a job directory's own (an imported official
    checkpoint computes as PyTorch does), ``{}`` for any other source.

    Raises:
        ValueError: a job directory without its run configuration.
    """
    path = os.path.expanduser(init_from or "")
    if not path or not os.path.isdir(path):
        return {}
    source = read_run_config(path)
    return {"padding": source.padding, "bn_epsilon": source.bn_epsilon}


def with_subnet(config: TrainConfig, value: str) -> TrainConfig:
    """``config`` set to train one subnet alone (``--subnet=value``).

    ``value`` is a tier of the ``config.init_from`` job (its
    ``retained_subnets.json``; the job's one tier is then named after it),
    or a subnet of the run's space: ``RES:m1,...,mN`` (resolution and one
    width multiplier per stage; one multiplier for every stage), ``max``,
    ``min`` or a JSON object (`pss_keras.supernet.specs.parse_subnet`).

    Raises:
        ValueError: one line: a name that is neither (naming the job's
            tiers), a bad resolution or multiplier count, a subnet outside
            the run's space, or ``retain_bounds`` set.
    """
    if config.retain_bounds:
        raise ValueError(
            f"--subnet={value} trains one subnet and retains it alone; --retain_bounds (the "
            "supernet's smallest and largest subnets as tiers) does not apply: leave it out."
        )
    space = specs.SearchSpace(**config.space_kwargs(1))
    job = os.path.expanduser(config.init_from or "")
    tiers = {}
    if job and os.path.isfile(os.path.join(job, RETAINED)):
        tiers = {str(r.get("name")): r for r in read_retained(job) if isinstance(r, dict)}
    if value in tiers:
        subnet = specs.SubnetConfig.from_dict(tiers[value]["config"])
        try:
            space.validate(subnet)
        except ValueError as e:
            raise ValueError(
                f"--subnet={value}: the tier of {config.init_from} is not in this run's space: {e} "
                "Give the job's --model_name, --width_scale, --resolution_range, "
                "--resolution_step and --width_mult_range (e.g. its flagfile)."
            ) from None
        return dataclasses.replace(config, subnet=subnet, subnet_name=value)
    forms = "RES:m1,...,mN (a resolution and one width multiplier per stage, or one for all)"
    looks_like_name = not (":" in value or value.lstrip().startswith("{")) and value.lower() not in (
        "max", "largest", "min", "smallest", "random",
    )  # fmt: skip
    if looks_like_name:
        if tiers:
            where = f"a tier of {config.init_from} (its tiers: {', '.join(sorted(tiers))})"
        elif config.init_from:
            where = f"a tier: --init_from={config.init_from} is no job with {RETAINED}"
        else:
            where = "a subnet, and a tier name needs --init_from=JOB (the finished job that has it)"
        raise ValueError(f"--subnet={value} is not {where}; or give a subnet as {forms}.")
    try:
        subnet = specs.parse_subnet(value, space, seed=config.seed)
    except ValueError as e:
        text = str(e)  # parse_subnet's "Subnet '...' ..." names the value already
        text = f"--subnet{text[6:]}" if text.startswith("Subnet ") else f"--subnet={value}: {text}"
        raise ValueError(text) from None
    return dataclasses.replace(config, subnet=subnet, subnet_name="")


def write_weights_origin(job_dir: str, description: str) -> None:
    """Records where a run's initial weights came from (``--init_from``)."""
    atomic_write_json(os.path.join(job_dir, WEIGHTS_ORIGIN), {"init_from": description})


def remove_weights_origin(job_dir: str) -> None:
    """Forgets a recorded origin (a new run that imports nothing)."""
    path = os.path.join(job_dir, WEIGHTS_ORIGIN)
    if os.path.exists(path):
        os.remove(path)


def read_weights_origin(job_dir: str) -> str | None:
    """What `write_weights_origin` recorded, or None (random initialization)."""
    path = os.path.join(job_dir, WEIGHTS_ORIGIN)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return str(json.load(f)["init_from"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"unknown ({path} is unreadable)"


def write_split(job_dir: str, split: dict) -> None:
    """Records a train-only image folder's train/validation split (paths
    relative to the folder), so that a resume, evaluation and TFLite
    calibration read the same images."""
    atomic_write_json(os.path.join(job_dir, DATA_SPLIT), split)


def read_split(job_dir: str) -> dict | None:
    """The job's saved split (`write_split`), or None if it has none.

    Raises:
        ValueError: a damaged split file, naming it.
    """
    path = os.path.join(job_dir, DATA_SPLIT)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            split = json.load(f)
        if not all(isinstance(split.get(k), list) for k in ("train", "validation")):
            raise ValueError("no train and validation lists")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(
            f"{path} is damaged ({e}); restore it, or train a new --job_dir to split the "
            "folder afresh."
        ) from None
    return split


def latency_table_path(job_dir: str, metric_type: str) -> str:
    """Where a job keeps its copy of the ``metric_type`` look-up table."""
    return os.path.join(job_dir, LATENCY_TABLES, f"{metric_type}.json")


def write_classes(job_dir: str, class_names) -> None:
    atomic_write_json(os.path.join(job_dir, CLASSES), list(class_names))


def save_bn_stats(job_dir: str, tier_name: str, stats: dict) -> str:
    """Writes a tier's statistics; returns the path relative to ``job_dir``."""
    relative = os.path.join(BN_STATS, f"{tier_name}.npz")
    arrays = {
        f"{layer}/{part}": v
        for layer, mv in stats.items()
        for part, v in zip(("mean", "variance"), mv)
    }
    with atomic_file(os.path.join(job_dir, relative)) as tmp:
        np.savez(tmp, **arrays)
    return relative


def load_bn_stats(job_dir: str, tier: RetainedTier | dict) -> dict:
    """A retained tier's calibrated statistics ``{bn_layer: (mean, variance)}``.

    Raises:
        ValueError: a tier without statistics (a checkpoint imported without
            calibration images), saying what to pass.
    """
    relative = tier["bn_stats"] if isinstance(tier, dict) else tier.bn_stats
    if not relative:
        name = tier["name"] if isinstance(tier, dict) else tier.name
        raise ValueError(
            f"Tier {name} of {job_dir} has no calibrated batch-norm statistics (imported "
            "without calibration images); import it again with --calibration_data=<training "
            "images> (e.g. ImageNet's or Imagenette's train folder)."
        )
    with np.load(os.path.join(job_dir, relative)) as saved:
        layers = {key.rsplit("/", 1)[0] for key in saved.files}
        return {name: (saved[f"{name}/mean"], saved[f"{name}/variance"]) for name in layers}


def write_retained(job_dir: str, tiers: list[RetainedTier]) -> list[dict]:
    """Writes ``retained_subnets.json``; returns the records written."""
    records = [t.to_dict() for t in tiers]
    atomic_write_json(os.path.join(job_dir, RETAINED), records)
    return records


# -- reading (deployment) ---------------------------------------------------
def read_retained(job_dir: str) -> list[dict]:
    """The records of ``<job_dir>/retained_subnets.json`` (no model loaded).

    Raises:
        ValueError: naming the file, if it is missing, unreadable or empty.
    """
    path = os.path.join(job_dir, RETAINED)
    try:
        with open(path) as f:
            records = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: not a finished PSS job directory.") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}).") from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path} lists no subnets.")
    return records


class Job:
    """A finished job directory: its settings, classes and retained tiers.

    Raises:
        ValueError: if a file of a finished run is missing.
    """

    def __init__(self, job_dir: str):
        for file in (RUN_CONFIG, RETAINED, WEIGHTS):
            if not os.path.exists(os.path.join(job_dir, file)):
                raise ValueError(
                    f"{job_dir} has no {file}: it needs a finished training run "
                    "(python scripts/train.py --job_dir=...)."
                )
        self.job_dir = job_dir
        self.config = read_run_config(job_dir)
        with open(os.path.join(job_dir, RETAINED)) as f:
            records = json.load(f)
        self.retained = sorted((RetainedTier.from_dict(r) for r in records), key=lambda t: t.mflops)
        if not self.retained:
            raise ValueError(f"{job_dir}/{RETAINED} lists no subnets.")
        classes_path = os.path.join(job_dir, CLASSES)
        if not os.path.exists(classes_path):
            raise ValueError(f"{job_dir}/{CLASSES} is missing; re-run training.")
        with open(classes_path) as f:
            self.class_names = [str(c) for c in json.load(f)]
        if not self.class_names:
            raise ValueError(f"{job_dir}/{CLASSES} is missing; re-run training.")
        self.image_size = self.config.resolution_range[1]
        # Built here, eagerly: a first use inside a tf.function would create
        # the model's variables in that function's graph.
        self.supernet = self._load_supernet()

    def _load_supernet(self):
        """The trained `Supernet` (TensorFlow is imported here, not with the module)."""
        from pss_keras.supernet.model import Supernet

        net = Supernet(**self.config.supernet_kwargs(len(self.class_names)))
        net.load_weights(os.path.join(self.job_dir, WEIGHTS))
        return net

    def latency_tables(self) -> dict:
        """The run's latency tables ``{metric_type: table}`` (the job's
        copies, of either kind: `pss_keras.cost.tables.load_table`; empty for a
        FLOPs-only run)."""
        from pss_keras.cost.tables import load_table

        tables = {}
        for metric_type, _, _ in self.config.target_ranges():
            path = latency_table_path(self.job_dir, metric_type)
            if metric_type != "flops" and os.path.exists(path):
                tables[metric_type] = load_table(path)
        return tables

    def tier(self, tier: RetainedTier) -> tuple[specs.SubnetConfig, dict]:
        """A tier's subnet and calibrated statistics."""
        return tier.config, load_bn_stats(self.job_dir, tier)

    def select(self, names) -> list[RetainedTier]:
        """The named tiers (all, cheapest first, when ``names`` is empty).

        Raises:
            ValueError: naming unknown tiers and the job's own.
        """
        if not names:
            return self.retained
        known = {t.name: t for t in self.retained}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"Unknown tier(s) {unknown}; the job has {sorted(known)}.")
        return [known[n] for n in names]
