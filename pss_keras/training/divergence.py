"""Stopping a run that diverged, instead of letting it finish at chance."""

from __future__ import annotations

import logging
import math

import keras
import numpy as np


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

    Must come before `PSSCallback` (or, training one subnet alone,
    `EpochCheckpoint`) in the callback list.

    Args:
        num_classes: the classifier's classes (chance loss ``ln(num_classes)``).
        first_step: global step of the first step of this fit (a resume's).
        steps_per_epoch: steps in an epoch.
        lr_hint: what the message suggests about the rate, e.g. how it was set.
        score_key: the step log whose negative is the watched loss
            (``largest_score``; one subnet trained alone: ``score``).
        subject: whose loss it is, in the messages (``the largest subnet's``).
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
        score_key: str = "largest_score",
        subject: str = "the largest subnet's",
    ):
        super().__init__()
        self.score_key = score_key
        self.subject = subject
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
        loss = -float(logs[self.score_key])
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
                "Step %d: %s loss %.4g is above %g x %s (%.4g), at lr %.4g in "
                "use%s. If it keeps happening, lower the rate.",
                step, self.subject, loss, self.spike, what, reference, lr,
                f" ({self.lr_hint})" if self.lr_hint else "",
            )  # fmt: skip

    def _stop(self, step: int, loss: float, lr: float, why: str):
        raise DivergenceError(
            f"Training diverged at step {step}: {self.subject} cross-entropy {loss:.4g} "
            f"{why}, at lr {lr:.4g} in use"
            + (f" ({self.lr_hint})" if self.lr_hint else "")
            + ". Try a lower --lr (or set --lr_batch_size to the batch it was tuned for) or a "
            "longer --warmup_epochs, with a new --job_dir (a resume keeps the job's rate)."
        )
