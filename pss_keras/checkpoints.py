"""Atomic, resumable checkpoints of a PSS run.

A checkpoint is a directory ``<job_dir>/checkpoints/epoch-NNNN/`` holding the
supernet weights (Keras ``.weights.h5``), the optimizer's variables (``.npz``)
and the host-side PSS state (pools, sampler random state, epoch; JSON). It is
written into a hidden temporary directory, flushed, and renamed into place;
then the ``latest`` pointer is replaced atomically. A run killed at any moment
(even ``kill -9`` mid-write) leaves the previous checkpoint intact and
pointed to: only the current epoch is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

WEIGHTS = "supernet.weights.h5"
OPTIMIZER = "optimizer.npz"
STATE = "pss_state.json"
LATEST = "latest"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` so that readers see the old or the new file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=folder)
    try:
        # mkstemp creates 0600; give the file the permissions open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


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

    def save(self, epoch: int) -> str:
        """Writes the checkpoint of the state after ``epoch`` completed epochs."""
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch-{epoch:04d}"
        final = os.path.join(self.directory, name)
        tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=self.directory)
        try:
            self.supernet.save_weights(os.path.join(tmp, WEIGHTS))
            values = {
                f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(self.optimizer.variables)
            }
            np.savez(os.path.join(tmp, OPTIMIZER), **values)
            state = {"epoch": epoch, "sampler": self.sampler.state_dict()}
            with open(os.path.join(tmp, STATE), "w") as f:
                json.dump(state, f)
            for file in os.listdir(tmp):
                with open(os.path.join(tmp, file), "rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            if os.path.exists(final):  # re-saving the same epoch (e.g. after resume)
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.directory)
        atomic_write_text(os.path.join(self.directory, LATEST), name + "\n")
        self._prune(name)
        return final

    def _prune(self, newest: str) -> None:
        names = sorted(
            n for n in os.listdir(self.directory) if n.startswith("epoch-") and n != newest
        )
        for old in names[: max(0, len(names) - (self.keep - 1))]:
            shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
        for n in os.listdir(self.directory):  # leftovers of killed writes
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
        try:
            self.supernet.load_weights(os.path.join(path, WEIGHTS))
        except Exception as e:
            raise ValueError(
                f"Checkpoint {path} does not fit this supernet ({e}); resume with the same "
                "model flags as the interrupted run."
            ) from None
        if self.optimizer is not None:
            with np.load(os.path.join(path, OPTIMIZER)) as saved:
                values = [saved[k] for k in sorted(saved.files)]
            if len(values) != len(self.optimizer.variables):
                raise ValueError(
                    f"Checkpoint {path} holds {len(values)} optimizer variables, this optimizer "
                    f"has {len(self.optimizer.variables)}; use the same optimizer flags."
                )
            for variable, value in zip(self.optimizer.variables, values):
                variable.assign(value)
        with open(os.path.join(path, STATE)) as f:
            state = json.load(f)
        self.sampler.load_state_dict(state["sampler"])
        return state
