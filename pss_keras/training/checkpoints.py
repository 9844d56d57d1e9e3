"""Atomic, resumable checkpoints of a PSS run.

A checkpoint is a directory ``<job_dir>/checkpoints/epoch-NNNN/`` (or, in the
middle of an epoch, ``epoch-NNNN-step-SSSSSS/``: `checkpoint_name`) holding the
supernet weights (Keras ``.weights.h5``), the optimizer's variables (``.npz``)
and the host-side PSS state (pools, sampler random state, epoch; JSON). It is
written into a hidden temporary directory, flushed, and renamed into place;
then the ``latest`` pointer is replaced atomically. A run killed at any moment
(even ``kill -9`` mid-write) leaves the previous checkpoint intact and
pointed to: only the current epoch is lost. So does a full disk: a
checkpoint that would not fit is refused before anything is written (HDF5
must not meet a full disk, see `require_free_space`), a disk that fills up
midway has the temporary folder removed, and one `DiskFullError` line names
the mount to free and the previous checkpoint, which is still the latest.

Each checkpoint's state file records the size and SHA-256 of the weights and
optimizer files, and the step within its epoch (0 at an epoch's end). A
checkpoint damaged afterwards (a truncated copy, a bad
disk) is found by `Checkpointer.latest_usable`, reported as damaged, and the
newest intact one before it is used instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile

import numpy as np

from pss_keras.utils.fileio import (
    atomic_write_text,
    disk_full_guard,
    fsync_dir,
    fsync_tree,
    require_free_space,
    weights_file_bytes,
)

WEIGHTS = "supernet.weights.h5"
OPTIMIZER = "optimizer.npz"
STATE = "pss_state.json"
LATEST = "latest"


class Checkpointer:
    """Saves and restores (supernet, optimizer, PSS sampler state).

    Args:
        directory: where checkpoints live (``<job_dir>/checkpoints``).
        supernet: the `Supernet` whose weights are saved.
        optimizer: the Keras optimizer (its variables are saved).
        sampler: the `PrioritizedSampler` (pools and random state).
        keep: how many checkpoints to keep.
    """

    def __init__(self, directory, supernet, optimizer, sampler, keep: int = 2):
        self.directory = directory
        self.supernet = supernet
        self.optimizer = optimizer
        self.sampler = sampler
        self.keep = max(1, int(keep))

    def latest(self) -> str | None:
        """Path of the newest complete checkpoint, or None."""
        pointer = os.path.join(self.directory, LATEST)
        if not os.path.exists(pointer):
            return None
        with open(pointer) as f:
            name = f.read().strip()
        path = os.path.join(self.directory, name)
        return path if os.path.isdir(path) else None

    def damage(self, path: str) -> str | None:
        """What is wrong with the checkpoint at ``path``, or None if it is
        intact: a missing or unreadable file, or a size or SHA-256 that
        differs from what was recorded when it was written (checkpoints from
        before files were recorded are checked for presence only)."""
        for file in (WEIGHTS, OPTIMIZER, STATE):
            if not os.path.exists(os.path.join(path, file)):
                return f"{file} is missing"
        try:
            with open(os.path.join(path, STATE)) as f:
                state = json.load(f)
            recorded = state.get("files", {})
        except (OSError, ValueError, AttributeError) as e:
            return f"{STATE} is unreadable ({type(e).__name__})"
        for file, record in recorded.items():
            actual = _file_record(os.path.join(path, file))
            if actual["bytes"] != record.get("bytes"):
                return f"{file} has {actual['bytes']:,} bytes, {record.get('bytes'):,} were written"
            if actual["sha256"] != record.get("sha256"):
                return f"{file} does not match the checksum recorded when it was written"
        return None

    def latest_usable(self) -> str | None:
        """The newest intact checkpoint: `latest`, or, if that one is
        damaged, the newest intact one before it (with a warning naming the
        damage); None when there is none at all.

        Raises:
            ValueError: if checkpoints exist but every one is damaged.
        """
        names = sorted(
            (n for n in os.listdir(self.directory) if n.startswith("epoch-")), reverse=True
        ) if os.path.isdir(self.directory) else []  # fmt: skip
        latest = self.latest()
        if latest is not None:  # the pointer's choice first, then older ones
            names = [os.path.basename(latest)] + [n for n in names if n < os.path.basename(latest)]
        problems = []
        for name in names:
            path = os.path.join(self.directory, name)
            problem = self.damage(path)
            if problem is None:
                for damaged, why in problems:
                    logging.warning(
                        "Checkpoint %s is damaged (%s); resuming from %s instead.",
                        damaged, why, path,
                    )  # fmt: skip
                return path
            problems.append((path, problem))
        if problems:
            raise ValueError(
                f"Every checkpoint in {self.directory} is damaged ("
                + "; ".join(f"{os.path.basename(p)}: {why}" for p, why in problems)
                + "); restore them from a copy, or start a new --job_dir."
            )
        return None

    def save(self, epoch: int, step: int = 0) -> str:
        """Writes the checkpoint of the state after ``epoch`` completed
        epochs and ``step`` steps of the next (a step checkpoint, e.g. at a
        preemption: ``epoch-NNNN-step-SSSSSS``; it sorts between the epoch
        checkpoints around it and counts toward ``keep`` as they do).

        Raises:
            DiskFullError: if the disk fills up; the checkpoints and the
                ``latest`` pointer are then as they were before the call.
        """
        os.makedirs(self.directory, exist_ok=True)
        self._remove_leftovers()  # before the write, which may need their space
        name = checkpoint_name(epoch, step)
        final = os.path.join(self.directory, name)
        previous = self.latest()
        left = (
            f"the previous checkpoint {previous} is intact and still the latest"
            if previous
            else "no checkpoint was written"
        )
        needed = self._needed_bytes()
        with disk_full_guard(final, left, lambda: needed):
            require_free_space(self.directory, needed)  # before HDF5 can meet a full disk
            self._write(epoch, final, step)
            # Re-saving the epoch `latest` names (e.g. after a resume): it
            # already names the new folder, and rewriting it could fail
            # after the previous folder was replaced, making `left` untrue.
            if final != previous:
                try:
                    atomic_write_text(os.path.join(self.directory, LATEST), name + "\n")
                except BaseException:
                    shutil.rmtree(final, ignore_errors=True)  # whole but unnamed: take it out
                    raise
        self._prune(name)
        return final

    def _needed_bytes(self) -> int:
        """About the size of a checkpoint, rounded up: the variables' files
        (`weights_file_bytes`) and the state."""
        variables = [*self.supernet.weights, *(self.optimizer.variables if self.optimizer else [])]
        return weights_file_bytes(variables) + (64 << 10)

    def _write(self, epoch: int, final: str, step: int = 0) -> None:
        """Writes the checkpoint into a hidden folder and renames it to ``final``."""
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}-", dir=self.directory)
        try:
            self.supernet.save_weights(os.path.join(tmp, WEIGHTS))
            np.savez(os.path.join(tmp, OPTIMIZER), **_optimizer_state(self.optimizer))
            state = {
                "epoch": epoch,
                "step": int(step),
                "sampler": self.sampler.state_dict(),
                "files": {
                    name: _file_record(os.path.join(tmp, name)) for name in (WEIGHTS, OPTIMIZER)
                },
            }
            with open(os.path.join(tmp, STATE), "w") as f:
                json.dump(state, f)
            fsync_tree(tmp)
            if os.path.exists(final):  # re-saving the same epoch (e.g. after resume)
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.directory)

    def _prune(self, newest: str) -> None:
        names = sorted(
            n for n in os.listdir(self.directory) if n.startswith("epoch-") and n != newest
        )
        for old in names[: max(0, len(names) - (self.keep - 1))]:
            shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Removes the hidden folders of killed writes (their space is wasted)."""
        for n in os.listdir(self.directory):
            if n.startswith(".epoch-"):
                shutil.rmtree(os.path.join(self.directory, n), ignore_errors=True)

    def restore(self, path: str) -> dict:
        """Loads a checkpoint; returns its saved state (``epoch`` etc.).

        The optimizer (if any) must be built; with ``optimizer=None`` only
        the weights and the sampler state are restored (evaluation).

        Raises:
            ValueError: naming the checkpoint, if it is incomplete or does not
                fit this model/optimizer.
        """
        for file in (WEIGHTS, OPTIMIZER, STATE):
            if not os.path.exists(os.path.join(path, file)):
                raise ValueError(f"Checkpoint {path} is incomplete: {file} is missing.")
        problem = self.damage(path)
        if problem is not None:
            raise ValueError(f"Checkpoint {path} is damaged: {problem}.")
        try:
            self.supernet.load_weights(os.path.join(path, WEIGHTS))
        except Exception as e:
            raise ValueError(
                f"Checkpoint {path} does not fit this supernet ({e}); resume with the same "
                "model flags as the interrupted run."
            ) from None
        if self.optimizer is not None:
            with np.load(os.path.join(path, OPTIMIZER)) as saved:
                _restore_optimizer(self.optimizer, {k: saved[k] for k in saved.files}, path)
        with open(os.path.join(path, STATE)) as f:
            state = json.load(f)
        self.sampler.load_state_dict(state["sampler"])
        return state


def checkpoint_name(epoch: int, step: int = 0) -> str:
    """``epoch-0003`` (after 3 epochs) or ``epoch-0003-step-000120`` (120
    steps into the fourth): names sort in training order."""
    return f"epoch-{epoch:04d}" if not step else f"epoch-{epoch:04d}-step-{step:06d}"


def _file_record(path: str) -> dict:
    """``{"bytes", "sha256"}`` of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def _optimizer_key(variable) -> str:
    """A variable's path without the optimizer's own name (``sgd/`` or, for a
    second optimizer in the same process, ``sgd_1/``)."""
    return variable.path.split("/", 1)[-1]


def _optimizer_state(optimizer) -> dict:
    """``{key: value}`` of every optimizer variable (by name, never by position)."""
    state = {}
    for variable in optimizer.variables:
        key = _optimizer_key(variable)
        if key in state:
            raise ValueError(f"Two optimizer variables are named {key!r}; cannot save by name.")
        state[key] = np.asarray(variable.numpy())
    return state


def _restore_optimizer(optimizer, saved: dict, path: str) -> None:
    """Assigns each optimizer variable the saved value of the same name.

    Raises:
        ValueError: naming the checkpoint, if names or shapes differ (an
            other optimizer or model), or if the file predates saving by name.
    """
    if saved and all(k.startswith("v") and k[1:].isdigit() for k in saved):
        raise ValueError(
            f"Checkpoint {path} stores the optimizer by position (written before optimizer "
            "state was saved by name); it can be evaluated but not resumed: start a new --job_dir."
        )
    variables = {_optimizer_key(v): v for v in optimizer.variables}
    missing = sorted(set(variables) - set(saved))
    extra = sorted(set(saved) - set(variables))
    if missing or extra:
        raise ValueError(
            f"Checkpoint {path} does not fit this optimizer: missing {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
            f"{' ...' if len(extra) > 3 else ''}; use the same optimizer and model flags."
        )
    for key, variable in variables.items():
        if tuple(saved[key].shape) != tuple(variable.shape):
            raise ValueError(
                f"Checkpoint {path}: optimizer variable {key!r} has shape "
                f"{tuple(saved[key].shape)}, this optimizer's has {tuple(variable.shape)}."
            )
    for key, variable in variables.items():
        variable.assign(saved[key])
