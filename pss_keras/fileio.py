"""Atomic, durable file writes: every writer of the project goes through here.

A reader (a resumed run, TF Serving, an app) must find either the old file or
the complete new one, never a half-written one, even after ``kill -9`` or a
power cut. The recipe, in one place: write into a temporary name in the
same folder (so the final step is a rename on one file system), ``fsync``
the data, ``os.replace`` it into place, then ``fsync`` the folder so the
rename itself is durable.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


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


def _default_mode() -> int:
    """The permissions ``open()`` would give a new file (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(path: str):
    """Yields a temporary path beside ``path``; on success it replaces ``path``.

    For writers that need a file name (``np.savez``, Keras ``save_weights``):
    the temporary name ends like ``path`` (``.npz``, ``.weights.h5``), so
    such writers neither append nor refuse a suffix. On an exception the
    temporary file is removed and ``path`` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
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
