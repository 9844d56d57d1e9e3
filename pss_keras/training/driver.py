"""The PSS run driver: builds the supernet, samplers and trainer, fits epoch
by epoch with resumable checkpoints, then retains the best subnet per target.
A run with ``TrainConfig.subnet`` trains that one subnet alone
(`pss_keras.training.subnet_trainer`) through the same steps and retains it.

The pieces: `pss_keras.training.preflight` (what is checked and built
before the first step), `pss_keras.training.trainer` (the sandwich step),
`pss_keras.training.fitting` (the epochs' fit and its callbacks),
`pss_keras.training.selection` (end-of-run choice of tiers),
`pss_keras.jobs.directory` (what the job directory holds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import time

import keras
import numpy as np
import tensorflow as tf

from pss_keras.data import pipelines as data_lib
from pss_keras.jobs import directory as jobs
from pss_keras.jobs.config import TrainConfig
from pss_keras.supernet import specs
from pss_keras.supernet.model import Supernet
from pss_keras.supernet.pretrained import initialize_supernet
from pss_keras.training import distribution, preflight, run_plan, sampling
from pss_keras.training.checkpoints import Checkpointer
from pss_keras.training.fitting import fit_epochs
from pss_keras.training.loop import check_workers_agree
from pss_keras.training.selection import retain_single, retain_subnets
from pss_keras.training.subnet_trainer import FixedSubnet, SubnetTrainer, build_teacher
from pss_keras.training.trainer import PSSTrainer, build_optimizer
from pss_keras.utils.fileio import (
    atomic_file,
    disk_full_guard,
    require_free_space,
    weights_file_bytes,
)

# What a bad-image message suggests besides removing or replacing the files.
_TRAIN_SKIP_HINT = "pass --bad_images=skip to train without them"


def build_supernet(config: TrainConfig, num_classes: int) -> Supernet:
    """The run's supernet (freshly initialized)."""
    return Supernet(**config.supernet_kwargs(num_classes))


def evaluate_job(
    job_dir: str,
    checkpoint: str | None = None,
    topk: int | None = None,
    calib_batches: int | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    selection: str | None = None,
    bounds: bool | None = None,
) -> list[dict]:
    """Re-runs the end-of-training selection from a checkpoint of ``job_dir``.

    Uses the run's own settings (``run_config.json``) and, by default, its
    latest checkpoint and selection protocol; rewrites
    ``retained_subnets.json``.

    Raises:
        ValueError: if the job directory or checkpoint is missing.
    """
    config = jobs.read_run_config(job_dir)
    if data_dir:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, data_dir=data_dir)
        )
    _seed_run(config.seed)
    pipelines = data_lib.Pipelines(
        config.data, skip_hint=jobs.skip_bad_images_hint(job_dir), split=jobs.read_split(job_dir)
    )
    supernet = build_supernet(config, pipelines.num_classes)
    tables = preflight.load_latency_tables(config, supernet.space, job_dir=job_dir)
    sampler = _host_state(config, supernet.space, tables)
    checkpointer = Checkpointer(os.path.join(job_dir, jobs.CHECKPOINTS), supernet, None, sampler)
    checkpoint = checkpoint or checkpointer.latest_usable()
    if not checkpoint or not os.path.isdir(checkpoint):
        raise ValueError(f"No checkpoint found in {job_dir}/checkpoints (or at {checkpoint}).")
    checkpointer.restore(checkpoint)
    with pipelines.bad_image_errors():
        if config.subnet is not None:  # one subnet trained alone: its one tier again
            return retain_single(
                supernet, config.subnet, config.subnet_name, pipelines, job_dir, tables,
                calib_batches or config.calib_batches,
            )  # fmt: skip
        return retain_subnets(
            supernet,
            sampler,
            pipelines,
            job_dir,
            topk or config.topk,
            calib_batches or config.calib_batches,
            progress=progress,
            selection=selection or config.selection,
            bounds=config.retain_bounds if bounds is None else bounds,
        )


def _host_state(config: TrainConfig, space, tables: dict):
    """What the run keeps on the host and checkpoints beside the weights:
    the prioritized sampler (maps and empty pools) of a PSS run, or the one
    subnet of a run that trains it alone (`FixedSubnet`)."""
    if config.subnet is not None:
        return FixedSubnet(config.subnet)
    return preflight.build_samplers(config, space, tables)


def _seed_run(seed: int) -> None:
    """Makes a run's randomness a function of its seed alone.

    Keras's initializers draw from Python's `random`; the data pipeline's
    shuffle seeds combine with TensorFlow's global seed, which is cleared so
    that training, a resume and `evaluate_job` see the same batches whatever
    the calling program set with `tf.random.set_seed`.
    """
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(None)


def train(config: TrainConfig) -> dict:
    """Runs (or resumes) PSS training and the final subnet selection.

    Under multi-worker training every worker calls this; only the chief
    writes into the job directory (checkpoints, logs, weights, retained
    subnets), and every worker resumes from the chief's latest checkpoint
    (so ``job_dir`` must be on a filesystem all hosts share).

    Returns:
        A summary: epochs run, wall time, map-building time, the retained
        subnets (None on workers other than the chief), the job directory
        and a digest of the final sampler state (pools; equal on all workers).
    """
    config.validate()
    start = time.perf_counter()
    # Before anything else runs in TensorFlow: a multi-worker strategy
    # configures the collective ops at startup.
    strategy = distribution.make_strategy(config.strategy)
    chief = distribution.is_chief(strategy)
    problem = preflight.replicas_problem(config.data.batch_size, strategy.num_replicas_in_sync)
    if problem:
        raise ValueError(problem)
    tables, pipelines, resume = _open_run(config, chief)
    _seed_run(config.seed)
    run = _build_run(config, strategy, pipelines, tables, chief)
    latest, weights = _start_weights(config, run, pipelines, strategy, chief)
    plan = run_plan.RunPlan(
        config=config,
        strategy=distribution.strategy_name(strategy),
        replicas=strategy.num_replicas_in_sync,
        maps=()
        if config.subnet is not None  # one subnet trained alone: no maps, no pools
        else tuple(
            run_plan.MapReport.of(c, run_plan.map_source(m, tables), config.num_map_samples)
            for m, c in run.sampler.samplers.items()
        ),
        data=run_plan.DataCounts.of(pipelines, checked=True),
        resume=resume,
        weights=weights if not latest else f"from {latest} (first: {weights})",
    )
    for line in plan.header():
        logging.info("%s", line)
    if chief:
        jobs.write_classes(config.job_dir, pipelines.source.class_names)
    with pipelines.bad_image_errors():  # a streamed set's bad image: one line naming it
        fit_epochs(
            config, strategy, run.trainer, run.sampler, run.checkpointer if chief else None,
            pipelines, run.initial_epoch, run.initial_step,
        )  # fmt: skip
    state_digest = hashlib.sha256(
        json.dumps(run.sampler.state_dict(), sort_keys=True).encode()
    ).hexdigest()[:16]
    logging.info("Final sampler state digest %s (equal on every worker).", state_digest)
    retained = _finish(config, run, pipelines, tables) if chief else None
    return {
        "job_dir": config.job_dir,
        "epochs": config.epochs,
        "resumed_from_epoch": run.initial_epoch,
        "map_seconds": run.map_seconds,
        "wall_seconds": time.perf_counter() - start,
        "retained": retained,
        "num_classes": pipelines.num_classes,
        "sampler_digest": state_digest,
    }


def _open_run(config: TrainConfig, chief: bool) -> tuple[dict, data_lib.Pipelines, str]:
    """The run's latency tables, its checked data and how it starts (new or
    resumed); the chief records the settings, the split and the tables in
    the job directory. Everything that can fail fast fails here, before
    anything is trained."""
    space = specs.SearchSpace(**config.space_kwargs(1))
    tables = preflight.load_latency_tables(config, space)  # before the data: fails fast
    # A train-only folder split by an earlier run of this job: the same split.
    pipelines = data_lib.Pipelines(
        config.data, skip_hint=_TRAIN_SKIP_HINT, split=jobs.read_split(config.job_dir)
    )
    # Before anything is written: a cached training set names every bad
    # image now, and a bad validation image fails now, not after training.
    pipelines.check_training()
    pipelines.check_validation()
    resume = run_plan.resume_state(config.job_dir)  # before this run writes there
    if chief:
        os.makedirs(config.job_dir, exist_ok=True)
        jobs.write_run_config(config.job_dir, config)
        if pipelines.source.split is not None:
            jobs.write_split(config.job_dir, pipelines.source.split)
        for metric_type, table in tables.items():
            copy = jobs.latency_table_path(config.job_dir, metric_type)
            if not os.path.exists(copy):
                table.save(copy)
    return tables, pipelines, resume


@dataclasses.dataclass
class _Run:
    """What a run trains: the supernet, its sampler, trainer and checkpoints,
    and where training starts (``initial_epoch``, ``initial_step``)."""

    supernet: Supernet
    sampler: sampling.PrioritizedSampler | FixedSubnet
    trainer: PSSTrainer | SubnetTrainer
    checkpointer: Checkpointer
    map_seconds: float
    initial_epoch: int = 0
    initial_step: int = 0


def _build_run(config: TrainConfig, strategy, pipelines, tables: dict, chief: bool) -> _Run:
    """Everything with variables, created in the strategy's scope (mirrored
    across replicas) under the run's dtype policy; the host-side sampler is
    the same on every replica and every worker (same seed, same scores)."""
    with strategy.scope(), precision_scope(config.mixed_precision):
        supernet = build_supernet(config, pipelines.num_classes)
        map_start = time.perf_counter()
        sampler = _host_state(config, supernet.space, tables)
        map_seconds = time.perf_counter() - map_start
        if config.subnet is not None:
            teacher = None
            if config.distill_from_largest:  # read again on every start: not checkpointed
                teacher = build_teacher(config.supernet_kwargs(supernet.space.num_classes),
                                        config.init_from)  # fmt: skip
            trainer = SubnetTrainer(supernet, config.subnet, config.weight_decay, teacher=teacher)
        else:
            trainer = PSSTrainer(supernet, weight_decay=config.weight_decay)
        # mixed_float16: compile wraps the optimizer in a LossScaleOptimizer.
        trainer.compile(
            optimizer=build_optimizer(config, pipelines.steps_per_epoch), jit_compile=False
        )
        # Built before the first step, so the step traces once (a trace that
        # creates variables is traced again).
        trainer.optimizer.build(trainer.trainable_variables)
    logging.info(
        "Training on %d replica(s) (%s%s), global batch %d, %s precision.",
        strategy.num_replicas_in_sync,
        type(strategy).__name__,
        "" if chief else ", not the chief: writes nothing",
        config.data.batch_size,
        "float32" if config.mixed_precision == "none" else f"mixed {config.mixed_precision}",
    )
    checkpointer = Checkpointer(
        os.path.join(config.job_dir, jobs.CHECKPOINTS),
        supernet,
        trainer.optimizer,
        sampler,
        keep=config.keep_checkpoints,
    )
    return _Run(supernet, sampler, trainer, checkpointer, map_seconds)


def _start_weights(
    config: TrainConfig, run: _Run, pipelines, strategy, chief: bool
) -> tuple[str, str]:
    """Restores the latest usable checkpoint (setting where ``run`` starts),
    or imports ``--init_from``, or keeps the random initialization.

    Returns:
        ``(latest checkpoint or "", where the weights first came from)``.
    """
    latest = run.checkpointer.latest_usable()  # a damaged latest: the one before, with a warning
    if latest:
        state = run.checkpointer.restore(latest)
        run.initial_epoch, run.initial_step = state["epoch"], int(state.get("step", 0))
        logging.info(
            "Resuming from %s (epoch %d of %d%s).",
            latest, run.initial_epoch, config.epochs,
            f", step {run.initial_step} of {pipelines.steps_per_epoch} of the next"
            if run.initial_step else "",
        )  # fmt: skip
        weights = jobs.read_weights_origin(config.job_dir) or "random initialization"
        if config.init_from:
            logging.info("--init_from is not applied on a resume: the checkpoint has the weights.")
    elif config.init_from:
        # Every worker imports the same file; a resume never re-imports.
        weights = initialize_supernet(run.supernet, config.init_from)
        if chief:
            jobs.write_weights_origin(config.job_dir, weights)
    else:
        weights = f"random initialization (seed {config.seed})"
        if chief:  # a killed --init_from run re-run without it: not imported any more
            jobs.remove_weights_origin(config.job_dir)
    if distribution.is_multi_worker(strategy):
        check_workers_agree(
            strategy,
            "the checkpoint to resume from",
            json.dumps(
                [run.initial_epoch, run.initial_step, run.sampler.state_dict()], sort_keys=True
            ),
        )
    return latest or "", weights


def _finish(config: TrainConfig, run: _Run, pipelines, tables: dict) -> list[dict]:
    """The chief's end of a run: the weights file, then one tier per target
    (or the one subnet trained alone)."""
    _save_weights(run.supernet, config.job_dir)
    with pipelines.bad_image_errors():
        if config.subnet is not None:
            return retain_single(
                run.supernet, config.subnet, config.subnet_name, pipelines, config.job_dir,
                tables, config.calib_batches,
            )  # fmt: skip
        return retain_subnets(
            run.supernet,
            run.sampler,
            pipelines,
            config.job_dir,
            config.topk,
            config.calib_batches,
            progress=bool(config.verbose),
            selection=config.selection,
            bounds=config.retain_bounds,
        )


# How close to chance (1 / classes) every tier's top-1 must be for a run to count as not learned.
CHANCE_MARGIN = 0.02


def at_chance(retained: list[dict], num_classes: int, margin: float = CHANCE_MARGIN) -> bool:
    """Whether every retained tier's validation top-1 is within ``margin``
    of chance (``1 / num_classes``): a run that learned nothing."""
    chance = 1.0 / max(1, num_classes)
    return bool(retained) and all(abs(e["top1"] - chance) <= margin for e in retained)


def _save_weights(supernet: Supernet, job_dir: str) -> None:
    """Writes the trained supernet's weights file, never half-written in place.

    Raises:
        DiskFullError: if it would not fit (checked first: HDF5 can crash
            the process on a full disk, h5py/h5py#914) or the disk fills up.
    """
    path = os.path.join(job_dir, jobs.WEIGHTS)
    needed = weights_file_bytes(supernet.weights)
    left = (
        f"{path} is as it was; training is complete in the last checkpoint, so the re-run "
        "only writes the weights and retains the subnets"
    )
    with disk_full_guard(path, left, lambda: needed):
        require_free_space(job_dir, needed)
        with atomic_file(path) as tmp:
            supernet.save_weights(tmp)


@contextlib.contextmanager
def precision_scope(mixed_precision: str):
    """Keras's global dtype policy set to ``mixed_<mixed_precision>`` while
    the supernet and trainer are built (layers keep the policy they were
    built with), then restored. Variables stay float32 either way."""
    if mixed_precision == "none":
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{mixed_precision}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
