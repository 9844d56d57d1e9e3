"""The callbacks of a PSS run: the candidate choice around each step, pool
summaries and checkpoints at each epoch end (`EpochCheckpoint` alone for
one subnet trained alone), validation of the sandwich bounds, the time
estimate; TensorBoard steps that continue across a resume.

Stopping a diverged run: `pss_keras.training.divergence`; checkpoints
inside an epoch and a stop on a signal: `pss_keras.training.preemption`.
"""

from __future__ import annotations

import logging
import time

import keras
import tensorflow as tf


class PSSCallback(keras.callbacks.Callback):
    """Chooses each step's candidate, reports its score, checkpoints.

    Adds to the step logs (progress bar, TensorBoard): ``p_space``,
    ``temperature``, ``cand_target`` (the candidate's target) and
    ``cand_from_pool`` (1 when drawn from the pool, 0 from the space).
    """

    def __init__(self, trainer, sampler, checkpointer=None, log_dir=None, guard=None):
        super().__init__()
        self.guard = guard  # a DivergenceGuard: no checkpoint while it suspects the run
        self.trainer = trainer
        self.sampler = sampler
        self.checkpointer = checkpointer
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.candidate = None
        self.counts = {"space": 0, "pool": 0}

    def on_epoch_begin(self, epoch, logs=None):
        self.sampler.set_epoch(epoch)
        self.counts = {"space": 0, "pool": 0}

    def on_train_batch_begin(self, batch, logs=None):
        self.candidate = self.sampler.choose()
        self.trainer.candidate_code.assign(
            self.trainer.supernet.space.encode(self.candidate.config)
        )

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        self.sampler.report(self.candidate, float(logs["candidate_score"]))
        self.sampler.report_extremes(float(logs["largest_score"]), float(logs["smallest_score"]))
        self.counts["pool" if self.candidate.from_pool else "space"] += 1
        logs.update(
            p_space=self.sampler.p_space,
            temperature=self.sampler.temperature,
            cand_target=self.candidate.target,
            cand_from_pool=float(self.candidate.from_pool),
        )

    def on_epoch_end(self, epoch, logs=None):
        summary = self.sampler.pool_summary()
        if self.writer is not None:
            # record_if(True): the TensorBoard callback's per-step condition
            # (step % update_freq == 0) is still active at epoch end.
            with self.writer.as_default(step=epoch + 1), tf.summary.record_if(True):
                for row in summary:
                    tf.summary.scalar(f"pool_fill/{row['name']}", row["fill"])
                    if row["best_score"] is not None:
                        tf.summary.scalar(f"pool_best_score/{row['name']}", row["best_score"])
                tf.summary.scalar("pss/p_space", self.sampler.p_space)
                tf.summary.scalar("pss/temperature", self.sampler.temperature)
                tf.summary.scalar("pss/candidates_from_pool", self.counts["pool"])
            self.writer.flush()
        full = sum(row["fill"] >= self.sampler.pool_size for row in summary)
        logging.info(
            "epoch %d: %d/%d pools full, candidates from pool %d / space %d",
            epoch + 1,
            full,
            len(summary),
            self.counts["pool"],
            self.counts["space"],
        )
        if self.checkpointer is not None:
            checkpoint_unless_suspect(self.checkpointer, self.guard, epoch)


def checkpoint_unless_suspect(checkpointer, guard, epoch: int) -> None:
    """The checkpoint after ``epoch`` (0-based), unless the run's
    `DivergenceGuard` (``guard``, or None) suspects the run: then a warning,
    and a resume goes back to the last checkpoint before the streak."""
    if guard is not None and guard.suspect_since is not None:
        logging.warning(
            "No checkpoint after epoch %d: %s loss has been above "
            "%.3g since step %d (a resume goes back to the last checkpoint before it).",
            epoch + 1,
            guard.subject,
            guard.limit,
            guard.suspect_since,
        )
    else:
        checkpointer.save(epoch + 1)


class EpochCheckpoint(keras.callbacks.Callback):
    """The checkpoint at every epoch end of a run that trains one subnet
    alone (`pss_keras.training.subnet_trainer`), where a PSS run's
    `PSSCallback` writes it: none while ``guard`` suspects divergence.

    Args:
        checkpointer: the run's `Checkpointer`, or None (workers other than
            the chief write nothing).
        guard: the run's `DivergenceGuard` (before this callback), or None.
    """

    def __init__(self, checkpointer=None, guard=None):
        super().__init__()
        self.checkpointer = checkpointer
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        if self.checkpointer is not None:
            checkpoint_unless_suspect(self.checkpointer, self.guard, epoch)


class ContinuedTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` whose per-step axis continues a resumed
    run (after ``first_step`` steps done by an earlier process, the first
    step logged is ``first_step + 1``, not 1 again), and which writes the
    epoch scalars whatever ``update_freq`` is.

    Keras 3.15's TensorBoard writes epoch scalars inside the record-if
    condition of the last step (``step % update_freq == 0``): with an epoch
    length that is not a multiple of ``update_freq`` (the quickstart's 28
    steps, every 50) no epoch scalar was ever written.
    """

    def __init__(self, log_dir, first_step: int = 0, **kwargs):
        super().__init__(log_dir, **kwargs)
        self.first_step = int(first_step)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._global_train_batch = self.first_step

    def on_epoch_end(self, epoch, logs=None):
        with tf.summary.record_if(True):
            super().on_epoch_end(epoch, logs)


class ValidationCallback(keras.callbacks.Callback):
    """Validates the largest and the smallest subnet (or ``subnets``) every
    ``every`` epochs.

    With calibrated BN, as the end-of-run selection (the supernet keeps no
    useful running statistics: training normalizes with batch moments), on
    the validation split. Adds ``val_largest_top1`` and ``val_smallest_top1``
    (``val_<name>_top1`` of each of ``subnets``) to the epoch logs, so the
    progress bar and TensorBoard's epoch scalars show the curve. Must come
    before the TensorBoard callback.

    Args:
        supernet: the supernet being trained.
        pipelines: the run's `pss_keras.data.pipelines.Pipelines`.
        every: epochs between validations (the last epoch always validates).
        epochs: the run's epoch count.
        calib_batches: training batches of the calibration (read once).
        subnets: ``{name: SubnetConfig}`` to validate instead (one subnet
            trained alone: ``{"subnet": its config}``).
    """

    def __init__(
        self, supernet, pipelines, every: int, epochs: int, calib_batches: int = 8, subnets=None
    ):
        super().__init__()
        from pss_keras.training.evaluation import SubnetEvaluator

        self.evaluator = SubnetEvaluator(supernet)
        self.space = supernet.space
        self.pipelines = pipelines
        self.every = int(every)
        self.epochs = int(epochs)
        self.calib_batches = int(calib_batches)
        self.calibration = pipelines.calibration(self.calib_batches)
        self.subnets = dict(
            subnets or {"largest": self.space.largest(), "smallest": self.space.smallest()}
        )

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not ((epoch + 1) % self.every == 0 or epoch + 1 == self.epochs):
            return
        for name, config in self.subnets.items():
            stats = self.evaluator.calibrate(config, self.calibration, self.calib_batches)
            result = self.evaluator.evaluate(config, stats, self.pipelines.validation())
            logs[f"val_{name}_top1"] = result["top1"]
        logging.info(
            "epoch %d: validation top-1 %s (calibrated BN)",
            epoch + 1,
            ", ".join(f"{name} {logs[f'val_{name}_top1']:.4f}" for name in self.subnets),
        )


class EpochTimeEstimate(keras.callbacks.Callback):
    """Logs, once, after the first ``steps`` steps of a fit: the time a
    step takes (the first step, which traces the graph, left out) and what
    that makes an epoch and the rest of the run.

    Args:
        steps_per_epoch: steps in an epoch.
        remaining_steps: steps this fit will run.
        steps: steps to time (fewer if the fit is shorter).
    """

    def __init__(self, steps_per_epoch: int, remaining_steps: int, steps: int = 20):
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self.remaining_steps = int(remaining_steps)
        self.steps = max(2, min(int(steps), self.remaining_steps))
        self.seen = 0
        self.start = None
        self.estimate = None  # seconds a step, once logged

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == 1:
            self.start = time.perf_counter()  # after the tracing step
            return
        if self.estimate is not None or self.seen < self.steps:
            return
        self.estimate = (time.perf_counter() - self.start) / (self.seen - 1)
        logging.info(
            "time         %.3g s a step over steps 2..%d: about %s an epoch (%d steps), %s for "
            "the %d steps left",
            self.estimate, self.seen, _duration(self.estimate * self.steps_per_epoch),
            self.steps_per_epoch, _duration(self.estimate * (self.remaining_steps - self.seen)),
            self.remaining_steps - self.seen,
        )  # fmt: skip


def _duration(seconds: float) -> str:
    """``42 s``, ``7.3 min``, ``5.2 h``, ``3.1 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
