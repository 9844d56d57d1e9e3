"""The PSS run driver: builds the supernet, samplers and trainer, fits epoch
by epoch with resumable checkpoints, then retains the best subnet per target.

The pieces: `pss_keras.training.trainer` (the sandwich step), `pss_keras.training.callbacks`
(candidate choice, checkpoints), `pss_keras.training.selection` (end-of-run choice of
tiers), `pss_keras.jobs.directory` (what the job directory holds).
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

from pss_keras.cost import latency
from pss_keras.data import pipelines as data_lib
from pss_keras.jobs import directory as jobs
from pss_keras.jobs.config import TrainConfig
from pss_keras.supernet import specs
from pss_keras.supernet.model import Supernet
from pss_keras.supernet.pretrained import initialize_supernet
from pss_keras.training import distribution, run_plan, sampling
from pss_keras.training.callbacks import (
    ContinuedTensorBoard,
    DivergenceError,
    DivergenceGuard,
    EpochTimeEstimate,
    PSSCallback,
    StepCheckpoint,
    TrainingInterrupted,
    ValidationCallback,
)
from pss_keras.training.checkpoints import Checkpointer
from pss_keras.training.loop import check_workers_agree, fit_distributed
from pss_keras.training.pools import TargetGrid
from pss_keras.training.selection import retain_subnets
from pss_keras.training.trainer import PSSTrainer, build_optimizer
from pss_keras.utils.fileio import (
    atomic_file,
    disk_full_guard,
    require_free_space,
    weights_file_bytes,
)

# Re-exported: callers configure and inspect a run through this module.
__all__ = [
    "DivergenceError",
    "PSSCallback",
    "TrainingInterrupted",
    "PSSTrainer",
    "RETAINED",
    "TrainConfig",
    "build_optimizer",
    "build_samplers",
    "build_supernet",
    "precision_scope",
    "evaluate_job",
    "retain_subnets",
    "train",
]
RETAINED = jobs.RETAINED
# What a bad-image message suggests besides removing or replacing the files.
_TRAIN_SKIP_HINT = "pass --bad_images=skip to train without them"


def load_latency_tables(config: TrainConfig, space: specs.SearchSpace, job_dir=None) -> dict:
    """The run's latency tables ``{metric_type: table}``, each checked
    against the search space: the project's own (`latency.LatencyTable`) or
    the reference's (`reference_luts.ReferenceLatencyTable`, from a ``.pkl``
    file; the job keeps a JSON copy of it).

    A job directory that already holds a copy of a table (a resumed or
    finished run) must hold the same table: its copy is what the run was
    trained with. With ``job_dir`` (and the copy there), the copy is read.

    Raises:
        ValueError: a missing, damaged or mismatched table, or one that
            differs from the job's copy.
    """
    tables = {}
    for metric_type, _, path in config.target_ranges():
        if path is None:
            continue
        copy = jobs.latency_table_path(job_dir or config.job_dir, metric_type)
        if os.path.exists(copy) and (job_dir or not os.path.exists(path)):
            if not job_dir:
                logging.warning(
                    "%s is gone; resuming with the job's copy of the %s table (%s).",
                    path, metric_type, copy,
                )  # fmt: skip
            path = copy
        table = latency.load_table(path)
        table.check_space(space)
        if os.path.exists(copy):
            saved = latency.load_table(copy)
            if saved.digest() != table.digest():
                raise ValueError(
                    f"{config.job_dir} was trained with another {metric_type} table ({copy}) "
                    f"than {path}; resume with the same table or use a new --job_dir."
                )
        tables[metric_type] = table
    return tables


def build_maps(
    config: TrainConfig, space: specs.SearchSpace, tables: dict | None = None, log: bool = True
) -> list[sampling.ConditionalSampler]:
    """One conditional sampler's map per metric type (seeded, so a resumed
    run rebuilds the same ones).

    Args:
        tables: ``{metric_type: table}`` for the latency types
            (`load_latency_tables`).
        log: log what each map reaches (`sampling.log_map`).
    """
    tables = tables or {}
    conditionals = []
    for metric_type, targets, _ in config.target_ranges():
        grid = TargetGrid(metric_type, *targets)
        metric_fn = None if metric_type == "flops" else tables[metric_type].metric_fn()
        conditional = sampling.ConditionalSampler.build(
            space, grid, num_samples=config.num_map_samples, seed=config.seed, metric_fn=metric_fn
        )
        if log:
            sampling.log_map(conditional)
        conditionals.append(conditional)
    return conditionals


def prioritized_sampler(config: TrainConfig, conditionals) -> sampling.PrioritizedSampler:
    """The run's prioritized sampler over ``conditionals`` (`build_maps`),
    with empty pools.

    Raises:
        ValueError: a map that reaches no target a candidate can be drawn for.
    """
    return sampling.PrioritizedSampler(
        conditionals,
        pool_size=config.pool_size,
        pool_ema=config.pool_ema,
        p_space=config.p_space,
        temperature=config.temperature,
        epochs=config.epochs,
        seed=config.seed,
    )


def build_samplers(
    config: TrainConfig, space: specs.SearchSpace, tables: dict | None = None
) -> sampling.PrioritizedSampler:
    """The run's prioritized sampler: one map per metric type (`build_maps`)
    and empty pools.

    Args:
        tables: ``{metric_type: table}`` for the latency types
            (`load_latency_tables`).
    """
    return prioritized_sampler(config, build_maps(config, space, tables))


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
    tables = load_latency_tables(config, supernet.space, job_dir=job_dir)
    sampler = build_samplers(config, supernet.space, tables)
    checkpointer = Checkpointer(os.path.join(job_dir, jobs.CHECKPOINTS), supernet, None, sampler)
    checkpoint = checkpoint or checkpointer.latest_usable()
    if not checkpoint or not os.path.isdir(checkpoint):
        raise ValueError(f"No checkpoint found in {job_dir}/checkpoints (or at {checkpoint}).")
    checkpointer.restore(checkpoint)
    with pipelines.bad_image_errors():
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
    replicas = strategy.num_replicas_in_sync
    if config.data.batch_size % replicas:
        raise ValueError(
            f"batch_size={config.data.batch_size} (the global batch) must be divisible by "
            f"the {replicas} replicas."
        )
    space = specs.SearchSpace(**config.supernet_kwargs(1))
    tables = load_latency_tables(config, space)  # before the data: fails fast
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
    _seed_run(config.seed)
    # Everything with variables is created in the strategy's scope (mirrored
    # across replicas) under the run's dtype policy; the host-side sampler is
    # the same on every replica and every worker (same seed, same scores).
    with strategy.scope(), precision_scope(config.mixed_precision):
        supernet = build_supernet(config, pipelines.num_classes)
        map_start = time.perf_counter()
        sampler = build_samplers(config, supernet.space, tables)
        map_seconds = time.perf_counter() - map_start
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
        replicas,
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
    initial_epoch = initial_step = 0
    latest = checkpointer.latest_usable()  # a damaged latest: the one before, with a warning
    if latest:
        state = checkpointer.restore(latest)
        initial_epoch, initial_step = state["epoch"], int(state.get("step", 0))
        logging.info(
            "Resuming from %s (epoch %d of %d%s).",
            latest, initial_epoch, config.epochs,
            f", step {initial_step} of {pipelines.steps_per_epoch} of the next" if initial_step
            else "",
        )  # fmt: skip
        weights = jobs.read_weights_origin(config.job_dir) or "random initialization"
        if config.init_from:
            logging.info("--init_from is not applied on a resume: the checkpoint has the weights.")
    elif config.init_from:
        # Every worker imports the same file; a resume never re-imports.
        weights = initialize_supernet(supernet, config.init_from)
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
            json.dumps([initial_epoch, initial_step, sampler.state_dict()], sort_keys=True),
        )
    plan = run_plan.RunPlan(
        config=config,
        strategy=distribution.strategy_name(strategy),
        replicas=replicas,
        maps=tuple(
            run_plan.MapReport.of(c, run_plan.map_source(m, tables), config.num_map_samples)
            for m, c in sampler.samplers.items()
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
        _fit_epochs(
            config, strategy, trainer, sampler, checkpointer if chief else None, pipelines,
            initial_epoch, initial_step,
        )  # fmt: skip
    state_digest = hashlib.sha256(
        json.dumps(sampler.state_dict(), sort_keys=True).encode()
    ).hexdigest()[:16]
    logging.info("Final sampler state digest %s (equal on every worker).", state_digest)
    retained = None
    if chief:
        _save_weights(supernet, config.job_dir)
        with pipelines.bad_image_errors():
            retained = retain_subnets(
                supernet,
                sampler,
                pipelines,
                config.job_dir,
                config.topk,
                config.calib_batches,
                progress=bool(config.verbose),
                selection=config.selection,
                bounds=config.retain_bounds,
            )
    return {
        "job_dir": config.job_dir,
        "epochs": config.epochs,
        "resumed_from_epoch": initial_epoch,
        "map_seconds": map_seconds,
        "wall_seconds": time.perf_counter() - start,
        "retained": retained,
        "num_classes": pipelines.num_classes,
        "sampler_digest": state_digest,
    }


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


def _fit_epochs(
    config, strategy, trainer, sampler, checkpointer, pipelines, initial_epoch, initial_step=0
):
    """Trains from ``initial_epoch`` (``initial_step`` steps into it) to the
    end in one ``fit()`` (or, under multi-worker training,
    `pss_keras.training.loop.fit_distributed`); a resume from inside an epoch first
    finishes that epoch in a fit of its own, so that every later epoch keeps
    its whole length.

    The dataset is the epochs' batches back to back (each epoch seeded by
    its number, so a resume sees the same batches), so the step counter of
    the progress bar and TensorBoard runs on across epochs, and across a
    resume. PSSCallback checkpoints at every epoch end, `StepCheckpoint`
    inside epochs (``checkpoint_every_steps``, and on SIGTERM / SIGINT,
    then raises `TrainingInterrupted`); ``checkpointer`` is None on workers
    other than the chief, which also write no logs.
    """
    spe = pipelines.steps_per_epoch
    if initial_step >= spe:  # a step checkpoint at an epoch's very end
        initial_epoch, initial_step = initial_epoch + 1, 0
    if initial_epoch >= config.epochs:
        return
    if initial_step:
        _fit(config, strategy, trainer, sampler, checkpointer, pipelines, initial_epoch,
             initial_epoch + 1, initial_step)  # fmt: skip
        initial_epoch += 1
    if initial_epoch < config.epochs:
        _fit(config, strategy, trainer, sampler, checkpointer, pipelines, initial_epoch,
             config.epochs, 0)  # fmt: skip


def _fit(config, strategy, trainer, sampler, checkpointer, pipelines, first, stop, skip):
    """One fit over epochs ``first .. stop - 1``, ``skip`` steps into the first."""
    log_dir = os.path.join(config.job_dir, jobs.LOGS)
    chief = checkpointer is not None
    spe = pipelines.steps_per_epoch
    first_step = first * spe + skip  # global steps done before this fit
    guard = DivergenceGuard(
        trainer.supernet.space.num_classes,
        first_step=first_step,
        steps_per_epoch=spe,
        lr_hint=f"--lr {config.describe_lr()}",
    )
    callbacks = [
        EpochTimeEstimate(spe, (config.epochs - first) * spe - skip),
        guard,  # before PSSCallback: a diverged step raises before anything checkpoints it
        PSSCallback(
            trainer,
            sampler,
            checkpointer,
            os.path.join(log_dir, "pss") if chief else None,
            guard=guard,
        ),  # fmt: skip
    ]
    if chief and config.validate_every:
        callbacks.append(
            ValidationCallback(
                trainer.supernet,
                pipelines,
                config.validate_every,
                config.epochs,
                config.calib_batches,
            )
        )
    if chief:
        callbacks.append(
            ContinuedTensorBoard(
                log_dir, first_step=first_step, update_freq=config.tensorboard_update_freq
            )
        )
    step_checkpoint = None
    if chief:
        # Last: a step's checkpoint holds its pool report (PSSCallback), and
        # the step is logged (TensorBoard) before a signal stops the run.
        step_checkpoint = StepCheckpoint(
            checkpointer,
            spe,
            first_epoch=first,
            first_step=skip,
            every_steps=config.checkpoint_every_steps,
            guard=guard,
            # Under multi-worker training a signal reaches one host's
            # process, and a worker stopping alone would leave the others
            # waiting in the collectives: no handlers there (see README).
            handle_signals=not distribution.is_multi_worker(strategy),
        )
        callbacks.append(step_checkpoint)
    if skip:
        logging.info(
            "Skipping the %d batches of epoch %d trained before the checkpoint (they are read "
            "to be skipped).", skip, first + 1,
        )  # fmt: skip
    dataset = pipelines.train_epochs(first, stop, skip_batches=skip)
    settings = dict(
        epochs=stop,
        initial_epoch=first,
        steps_per_epoch=spe - skip if skip else spe,
        callbacks=callbacks,
        verbose=config.verbose,
    )
    try:
        if distribution.is_multi_worker(strategy):
            fit_distributed(trainer, strategy, dataset, **settings)
        else:
            trainer.fit(dataset, shuffle=False, **settings)  # the pipeline shuffles, per epoch
    finally:
        if step_checkpoint is not None:  # Keras skips on_train_end when fit raises
            step_checkpoint._restore_handlers()
