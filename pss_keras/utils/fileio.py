"""Atomic, durable file writes: every writer of the project goes through here.

A reader (a resumed run, TF Serving, an app) must find either the old file or
the complete new one, never a half-written one, even after ``kill -9`` or a
power cut. The recipe, in one place: write into a temporary name in the
same folder (so the final step is a rename on one file system), ``fsync``
the data, ``os.replace`` it into place, then ``fsync`` the folder so the
rename itself is durable.

Running out of disk space (or quota) midway is one such failure: the writers
clean up their temporaries and `disk_full_guard` turns the low-level error
(Python's ``OSError`` ENOSPC/EDQUOT, h5py's, TensorFlow's
``ResourceExhaustedError``) into one `DiskFullError` line that names the
path, the mount point to free and what was left intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable

import numpy as np

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError, ValueError):
    """A write ran out of disk space (``errno`` ENOSPC) or quota (EDQUOT).

    A ``ValueError`` as well (like ``io.UnsupportedOperation``), so that the
    scripts, which print a ``ValueError`` as one ``error:`` line, print this
    one the same way; its message says what to free and what is intact.
    """

    def __init__(self, message: str, code: int = errno.ENOSPC):
        super().__init__(message)
        self.errno = code


def disk_full_errno(error: BaseException) -> int | None:
    """ENOSPC or EDQUOT if ``error`` means the disk or quota is full, else None.

    Python and h5py raise ``OSError`` with the errno; TensorFlow's C++
    writers raise ``ResourceExhaustedError`` whose message ends with the
    system's text ("...; No space left on device").
    """
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return error.errno
    text = str(error)
    return next((code for code in DISK_FULL_ERRNOS if os.strerror(code) in text), None)


def failed_path(error: BaseException) -> str | None:
    """The file a disk-full error names, if it names one: ``OSError``'s
    ``filename``, h5py's ``filename = '...'``, or the path before
    TensorFlow's "; No space left on device"."""
    if isinstance(error, OSError) and error.filename:
        return os.fsdecode(error.filename)
    reasons = "|".join(re.escape(os.strerror(code)) for code in DISK_FULL_ERRNOS)
    match = re.search(rf"filename = '([^']+)'|(/[^\s;']+); (?:{reasons})", str(error))
    return (match.group(1) or match.group(2)) if match else None


def mount_point(path: str) -> str:
    """The mount point of the file system holding ``path`` (or its nearest
    existing parent)."""
    path = os.path.realpath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def tree_bytes(path: str) -> int:
    """Total size of the file, or of the files under the folder, ``path``."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(path)
        for name in files
    )


def _size(n: int) -> str:
    """``n`` bytes as kB, MB or GB (one decimal)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def require_free_space(folder: str, needed: int) -> None:
    """Raises ENOSPC before a write of about ``needed`` bytes into ``folder``
    that would not fit.

    For writers that must not meet a full disk midway: HDF5 (Keras
    ``.weights.h5``) can crash the whole process with a segmentation fault
    after a write fails with ENOSPC (h5py/h5py#914), so the checkpoint checks
    first. Put it inside a `disk_full_guard`, which words the error.
    """
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{needed:,} bytes needed, {free:,} free", folder)


def weights_file_bytes(variables) -> int:
    """About the size of a Keras ``.weights.h5`` file of ``variables``,
    rounded up: their bytes and HDF5's header per variable (about 1.2 kB
    measured). What `require_free_space` asks for before such a write."""
    variables = list(variables)
    raw = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)
    return int(1.05 * raw) + 2048 * len(variables)


@contextlib.contextmanager
def disk_full_guard(path: str, left: str, needed: Callable[[], int | None] | None = None):
    """Re-raises running out of disk space inside the block as one clear line.

    Put it around a whole write, outside the code that removes the write's
    temporaries, so the free space it reports is measured after clean-up.
    The mount it names is the one of the file that failed, if the error
    names one, else the one of ``path``.
    An inner guard's `DiskFullError` is re-worded by the outer one, which
    knows what the user asked for (a checkpoint, not its ``latest`` pointer).

    Args:
        path: what was being written (the checkpoint, version, folder).
        left: what the failed write left, e.g. "the previous checkpoint
            <path> is intact".
        needed: returns about how many bytes the write needs (e.g. the
            size of the previous version), or None; called on failure only.

    Raises:
        DiskFullError: "Out of disk space writing <path> (<free> free on
            <mount>, about <needed> needed): free space on <mount> and
            re-run; <left>."
    """
    try:
        yield
    except Exception as e:
        code = disk_full_errno(e)
        if code is None:
            raise
        cause = e.__cause__ if isinstance(e, DiskFullError) and e.__cause__ else e
        # The full disk may be another one than the target's (a temporary
        # folder elsewhere, e.g. the TFLite converter's SavedModel in /tmp).
        mount = mount_point(failed_path(cause) or os.path.dirname(os.path.abspath(path)))
        space = [f"{_size(shutil.disk_usage(mount).free)} free on {mount}"]
        size = needed() if needed else None
        if size:
            space.append(f"about {_size(size)} needed")
        if code == errno.ENOSPC:
            what, action = "disk space", f"free space on {mount}"
        else:
            what, action = "disk quota", f"delete files to get under your quota on {mount}"
        raise DiskFullError(
            f"Out of {what} writing {path} ({', '.join(space)}): {action} and re-run; {left}.",
            code,
        ) from cause


def fsync_dir(path: str) -> None:
    """Makes the entries of folder ``path`` (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """``fsync`` of every file and folder under ``path`` (before renaming it in)."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    """The permissions ``open()`` would give a new file (mkstemp gives 0600)."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_file(path: str):
    """Yields a temporary path beside ``path``; on success it replaces ``path``.

    For writers that need a file name (``np.savez``, Keras ``save_weights``):
    the temporary name ends like ``path`` (``.npz``, ``.weights.h5``), so
    such writers neither append nor refuse a suffix. On an exception the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        DiskFullError: if the disk or quota fills up (see `disk_full_guard`).
    """
    folder = os.path.dirname(os.path.abspath(path))
    left = f"{path} is unchanged" if os.path.exists(path) else f"{path} was not created"
    with disk_full_guard(path, left):
        os.makedirs(folder, exist_ok=True)
        base = os.path.basename(path)
        suffix = base[base.index(".") :] if "." in base else ""
        fd, tmp = tempfile.mkstemp(prefix=f".{base}-", suffix=suffix, dir=folder)
        os.close(fd)
        try:
            yield tmp
            os.chmod(tmp, _default_mode())
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(folder)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def atomic_write_bytes(path: str, content: bytes) -> None:
    """Writes ``content`` to ``path``; readers see the old or the new file."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(content)


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path``; readers see the old or the new file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str, data) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
