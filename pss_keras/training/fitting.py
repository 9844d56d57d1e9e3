"""The epochs of a run as Keras fits: callbacks, and a resume inside an epoch.

`fit_epochs` trains from a checkpoint's epoch and step to the end in one
``fit()`` (or `pss_keras.training.loop.fit_distributed` under multi-worker
training), with the callbacks that choose candidates, checkpoint, validate,
guard against divergence and log.
"""

from __future__ import annotations

import logging
import os

from pss_keras.jobs import directory as jobs
from pss_keras.training import distribution
from pss_keras.training.callbacks import (
    ContinuedTensorBoard,
    EpochCheckpoint,
    EpochTimeEstimate,
    PSSCallback,
    ValidationCallback,
)
from pss_keras.training.divergence import DivergenceGuard
from pss_keras.training.loop import fit_distributed
from pss_keras.training.preemption import StepCheckpoint
from pss_keras.training.subnet_trainer import SCORE


def fit_epochs(
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
    resume. PSSCallback (one subnet trained alone, ``config.subnet``:
    `EpochCheckpoint`) checkpoints at every epoch end, `StepCheckpoint`
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
    spe = pipelines.steps_per_epoch
    callbacks, step_checkpoint = _callbacks(
        config, strategy, trainer, sampler, checkpointer, pipelines, first, skip
    )
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


def _callbacks(config, strategy, trainer, sampler, checkpointer, pipelines, first, skip):
    """The callbacks of one fit, in the order they must run, and the
    `StepCheckpoint` among them (None on workers other than the chief)."""
    log_dir = os.path.join(config.job_dir, jobs.LOGS)
    chief = checkpointer is not None
    spe = pipelines.steps_per_epoch
    first_step = first * spe + skip  # global steps done before this fit
    single = config.subnet is not None  # one subnet trained alone: no sampler, no pools
    guard = DivergenceGuard(
        trainer.supernet.space.num_classes,
        first_step=first_step,
        steps_per_epoch=spe,
        lr_hint=f"--lr {config.describe_lr()}",
        **(dict(score_key=SCORE, subject="the subnet's") if single else {}),
    )
    pss_log_dir = os.path.join(log_dir, "pss") if chief else None
    callbacks = [
        EpochTimeEstimate(spe, (config.epochs - first) * spe - skip),
        guard,  # before the checkpoints: a diverged step raises before anything checkpoints it
        EpochCheckpoint(checkpointer, guard)
        if single
        else PSSCallback(trainer, sampler, checkpointer, pss_log_dir, guard=guard),
    ]
    if chief and config.validate_every:
        callbacks.append(
            ValidationCallback(
                trainer.supernet,
                pipelines,
                config.validate_every,
                config.epochs,
                config.calib_batches,
                subnets={"subnet": config.subnet} if single else None,
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
    return callbacks, step_checkpoint
