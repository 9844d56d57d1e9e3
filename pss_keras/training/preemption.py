"""Checkpoints inside an epoch, and a clean stop on SIGTERM or SIGINT (a
preemptible machine's notice, or Ctrl-C) that the same command resumes."""

from __future__ import annotations

import logging
import signal
import threading

import keras


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

    Must come after `PSSCallback` (whose step report goes into the pools;
    one subnet trained alone: `EpochCheckpoint`) and is given the run's
    `DivergenceGuard`: while it suspects the run, no checkpoint is written.

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
                "No checkpoint at epoch %d step %d: %s loss has been above %.3g since step %d.",
                epoch, step, self.guard.subject, self.guard.limit, self.guard.suspect_since,
            )  # fmt: skip
            return None
        return self.checkpointer.save(epoch, step)
