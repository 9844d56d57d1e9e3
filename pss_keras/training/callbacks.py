"""The callbacks of a PSS run: the candidate choice around each step, pool
summaries and checkpoints at each epoch end; TensorBoard steps that continue
across a resume."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time

import keras
import numpy as np
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
            if self.guard is not None and self.guard.suspect_since is not None:
                logging.warning(
                    "No checkpoint after epoch %d: the largest subnet's loss has been above "
                    "%.3g since step %d (a resume goes back to the last checkpoint before it).",
                    epoch + 1,
                    self.guard.limit,
                    self.guard.suspect_since,
                )
            else:
                self.checkpointer.save(epoch + 1)


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
    """Validates the largest and the smallest subnet every ``every`` epochs.

    With calibrated BN, as the end-of-run selection (the supernet keeps no
    useful running statistics: training normalizes with batch moments), on
    the validation split. Adds ``val_largest_top1`` and ``val_smallest_top1``
    to the epoch logs, so the progress bar and TensorBoard's epoch scalars
    show the curve. Must come before the TensorBoard callback.

    Args:
        supernet: the supernet being trained.
        pipelines: the run's `pss_keras.data.pipelines.Pipelines`.
        every: epochs between validations (the last epoch always validates).
        epochs: the run's epoch count.
        calib_batches: training batches of the calibration (read once).
    """

    def __init__(self, supernet, pipelines, every: int, epochs: int, calib_batches: int = 8):
        super().__init__()
        from pss_keras.training.evaluation import SubnetEvaluator

        self.evaluator = SubnetEvaluator(supernet)
        self.space = supernet.space
        self.pipelines = pipelines
        self.every = int(every)
        self.epochs = int(epochs)
        self.calib_batches = int(calib_batches)
        self.calibration = pipelines.calibration(self.calib_batches)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not ((epoch + 1) % self.every == 0 or epoch + 1 == self.epochs):
            return
        for name, config in (
            ("largest", self.space.largest()),
            ("smallest", self.space.smallest()),
        ):
            stats = self.evaluator.calibrate(config, self.calibration, self.calib_batches)
            result = self.evaluator.evaluate(config, stats, self.pipelines.validation())
            logs[f"val_{name}_top1"] = result["top1"]
        logging.info(
            "epoch %d: validation top-1 largest %.4f, smallest %.4f (calibrated BN)",
            epoch + 1,
            logs["val_largest_top1"],
            logs["val_smallest_top1"],
        )


class DivergenceError(ValueError):
    """Training diverged; the message is one line: step, loss, lr, what to try."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stops a run whose largest subnet does not learn, instead of letting it
    finish with tiers at chance.

    Watches the largest subnet's cross-entropy of every step (the sandwich
    step's ``largest_score``, its negative; the distillation terms are not
    watched). A non-finite loss, or a loss above ``factor * ln(num_classes)``
    for ``patience`` steps in a row, raises `DivergenceError` at once (before
    the epoch's checkpoint); while such a streak runs, `suspect_since` is the
    step it began, and `PSSCallback` writes no checkpoint, so none written
    after it is what a resume uses. A step above ``spike`` times the median
    of the first ``baseline_steps`` steps of this fit (until there are that
    many: ``spike`` times ``ln(num_classes)``, the loss at initialization) is
    logged as a warning naming the learning rate (at most once an epoch).

    Must come before `PSSCallback` in the callback list.

    Args:
        num_classes: the classifier's classes (chance loss ``ln(num_classes)``).
        first_step: global step of the first step of this fit (a resume's).
        steps_per_epoch: steps in an epoch.
        lr_hint: what the message suggests about the rate, e.g. how it was set.
    """

    def __init__(
        self,
        num_classes: int,
        first_step: int = 0,
        steps_per_epoch: int = 1,
        lr_hint: str = "",
        factor: float = 10.0,
        patience: int = 20,
        spike: float = 3.0,
        baseline_steps: int = 50,
    ):
        super().__init__()
        self.chance = math.log(max(2, num_classes))
        self.limit = factor * self.chance
        self.patience = int(patience)
        self.spike = float(spike)
        self.baseline_steps = int(baseline_steps)
        self.lr_hint = lr_hint
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.step = int(first_step)  # global step of the next step
        self.suspect_since = None
        self.streak = 0
        self.baseline = []
        self.warned_epoch = None
        self.warnings = 0

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        step, self.step = self.step + 1, self.step + 1  # 1-based, as TensorBoard's
        loss = -float(logs["largest_score"])
        lr = float(logs["lr"]) if "lr" in logs else float("nan")
        if not math.isfinite(loss):
            self._stop(step, loss, lr, "is not finite")
        if loss > self.limit:
            self.streak += 1
            if self.suspect_since is None:
                self.suspect_since = step
            if self.streak >= self.patience:
                self._stop(
                    step, loss, lr,
                    f"has been above {self.limit:.3g} ({self.limit / self.chance:g} x ln(classes)) "
                    f"for {self.streak} steps "
                    f"in a row, since step {self.suspect_since}",
                )  # fmt: skip
        else:
            self.streak, self.suspect_since = 0, None
        if len(self.baseline) < self.baseline_steps:
            self.baseline.append(loss)
            # Until the baseline is complete: the loss at initialization.
            reference, what = self.chance, "ln(classes), the loss at chance"
        else:
            reference = float(np.median(self.baseline))
            what = f"the median of the first {self.baseline_steps} steps"
        epoch = (step - 1) // self.steps_per_epoch
        if loss > self.spike * reference and self.warned_epoch != epoch:
            self.warned_epoch = epoch
            self.warnings += 1
            logging.warning(
                "Step %d: the largest subnet's loss %.4g is above %g x %s (%.4g), at lr %.4g in "
                "use%s. If it keeps happening, lower the rate.",
                step, loss, self.spike, what, reference, lr,
                f" ({self.lr_hint})" if self.lr_hint else "",
            )  # fmt: skip

    def _stop(self, step: int, loss: float, lr: float, why: str):
        raise DivergenceError(
            f"Training diverged at step {step}: the largest subnet's cross-entropy {loss:.4g} "
            f"{why}, at lr {lr:.4g} in use"
            + (f" ({self.lr_hint})" if self.lr_hint else "")
            + ". Try a lower --lr (or set --lr_batch_size to the batch it was tuned for) or a "
            "longer --warmup_epochs, with a new --job_dir (a resume keeps the job's rate)."
        )


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary on a signal (SIGTERM or SIGINT),
    after writing a checkpoint there (``checkpoint``: its path, or None when
    none could be written); re-running the same command resumes from it.

    Attributes:
        signum: the signal.
        checkpoint: the checkpoint written at the boundary, or None.
    """

    def __init__(self, signum: int, checkpoint: str | None, where: str):
        self.signum = int(signum)
        self.checkpoint = checkpoint
        name = signal.Signals(self.signum).name
        saved = f"checkpoint {checkpoint} written" if checkpoint else "no checkpoint written"
        super().__init__(f"Stopped by {name} at {where}: {saved}; run the same command to resume.")

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process killed by it."""
        return 128 + self.signum


class StepCheckpoint(keras.callbacks.Callback):
    """Checkpoints inside an epoch: every ``every_steps`` steps, and at the
    next step boundary after SIGTERM or SIGINT (a preemptible machine's
    notice, or Ctrl-C), after which it raises `TrainingInterrupted`.

    The checkpoint holds what an epoch checkpoint holds (weights, optimizer,
    pools and the sampler's random state) and the step within the epoch;
    the data position is that step (each epoch's batches are a function of
    the seed and the epoch, so a resume skips that many). A second signal
    while the first is handled gets the default behaviour (exit at once).
    Handlers are installed for the fit only, and only in the main thread.

    Must come after `PSSCallback` (whose step report goes into the pools)
    and is given the run's `DivergenceGuard`: while it suspects the run, no
    checkpoint is written.

    Args:
        checkpointer: the run's `Checkpointer`.
        steps_per_epoch: steps in a whole epoch.
        first_epoch: the epoch the fit starts in.
        first_step: steps of ``first_epoch`` already done before the fit.
        every_steps: checkpoint every this many steps of an epoch; 0: only
            on a signal.
        guard: the run's `DivergenceGuard`, or None.
        handle_signals: install the SIGTERM / SIGINT handlers.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(
        self,
        checkpointer,
        steps_per_epoch,
        first_epoch=0,
        first_step=0,
        every_steps=0,
        guard=None,
        handle_signals=True,
    ):
        super().__init__()
        self.handle_signals = bool(handle_signals)
        self.checkpointer = checkpointer
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch = int(first_epoch)
        self.offset = int(first_step)  # steps done in the first epoch before this fit
        self.every_steps = int(every_steps)
        self.guard = guard
        self.received = None
        self._previous = {}

    # -- signals ---------------------------------------------------------------
    def _handle(self, signum, frame):
        del frame
        self.received = signum
        logging.warning(
            "%s received: checkpointing at the end of this step (or at the fit's end), then "
            "stopping (send it again to stop at once).",
            signal.Signals(signum).name,
        )
        self._restore_handlers()  # a second signal: the default action

    def install(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            # None: a handler installed from C, which Python cannot put back.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def on_train_begin(self, logs=None):
        self.install()

    def on_train_end(self, logs=None):
        self._restore_handlers()
        if self.received is not None:  # arrived after the fit's last step (epoch-end work)
            signum, self.received = self.received, None
            raise TrainingInterrupted(
                signum, self.checkpointer.latest(), f"the end of epoch {self.epoch + 1}"
            )

    # -- steps -----------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.epoch:  # a later epoch: it starts at its first step
            self.epoch, self.offset = int(epoch), 0

    def on_train_batch_end(self, batch, logs=None):
        step = self.offset + batch + 1  # steps of this epoch done
        at_end = step >= self.steps_per_epoch
        if self.received is not None:
            signum, self.received = self.received, None
            # At an epoch's end the checkpoint is that epoch's.
            epoch, within = (self.epoch + 1, 0) if at_end else (self.epoch, step)
            path = self._save(epoch, within)
            self._restore_handlers()
            where = f"epoch {self.epoch + 1}, step {step} of {self.steps_per_epoch}"
            raise TrainingInterrupted(signum, path, where)
        if self.every_steps and not at_end and step % self.every_steps == 0:
            self._save(self.epoch, step)

    def _save(self, epoch: int, step: int) -> str | None:
        if self.guard is not None and self.guard.suspect_since is not None:
            logging.warning(
                "No checkpoint at epoch %d step %d: the largest subnet's loss has been above "
                "%.3g since step %d.",
                epoch, step, self.guard.limit, self.guard.suspect_since,
            )  # fmt: skip
            return None
        return self.checkpointer.save(epoch, step)


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
