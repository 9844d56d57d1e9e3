"""A small generated image-classification set that needs no download.

``synthetic_shapes``: coloured shapes and textures (disc, square, triangle,
ring, cross, stripes in three orientations, checkerboard, dots) on noisy
backgrounds, at random positions, scales and colours. Rendered with NumPy,
written as PNG files in the image-folder layout (``train/<class>/*.png``,
``val/<class>/*.png``) so that it goes through exactly the same loading code
as a user's own folder. It is what the quickstart trains on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile

import numpy as np

from pss_keras.utils.fileio import fsync_dir, fsync_tree

CLASSES = (
    "disc",
    "square",
    "triangle",
    "ring",
    "cross",
    "stripes_horizontal",
    "stripes_vertical",
    "stripes_diagonal",
    "checkerboard",
    "dots",
)

_COMPLETE = ".complete"


def _render(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    r = rng.uniform(0.18, 0.32)
    dy, dx = yy - cy, xx - cx
    period = rng.uniform(0.12, 0.25)
    phase = rng.uniform(0, 1)
    if kind == "disc":
        mask = dy**2 + dx**2 < r**2
    elif kind == "square":
        mask = (np.abs(dy) < r * 0.85) & (np.abs(dx) < r * 0.85)
    elif kind == "triangle":
        mask = (dy < r * 0.8) & (dy > -r) & (np.abs(dx) < (dy + r) * 0.6)
    elif kind == "ring":
        d = np.sqrt(dy**2 + dx**2)
        mask = (d < r) & (d > r * 0.6)
    elif kind == "cross":
        w = r * 0.3
        mask = ((np.abs(dy) < w) & (np.abs(dx) < r)) | ((np.abs(dx) < w) & (np.abs(dy) < r))
    elif kind == "stripes_horizontal":
        mask = ((yy / period + phase) % 1.0) < 0.5
    elif kind == "stripes_vertical":
        mask = ((xx / period + phase) % 1.0) < 0.5
    elif kind == "stripes_diagonal":
        mask = (((xx + yy) / period + phase) % 1.0) < 0.5
    elif kind == "checkerboard":
        mask = ((np.floor(xx / period) + np.floor(yy / period)) % 2) == 0
    elif kind == "dots":
        mask = (((xx / period) % 1.0 - 0.5) ** 2 + ((yy / period) % 1.0 - 0.5) ** 2) < 0.06
    else:
        raise ValueError(f"Unknown shape {kind!r}.")
    background = rng.uniform(0, 1, 3)
    foreground = rng.uniform(0, 1, 3)
    while np.abs(foreground - background).sum() < 0.6:
        foreground = rng.uniform(0, 1, 3)
    image = np.where(mask[..., None], foreground, background)
    image = image + rng.normal(0, 0.06, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_synthetic_shapes(
    root: str,
    train_per_class: int = 100,
    val_per_class: int = 30,
    image_size: int = 64,
    seed: int = 0,
) -> str:
    """Writes the synthetic set under ``root`` (once) and returns ``root``.

    The folder is built in a temporary directory beside ``root`` and renamed
    into place, so an interrupted build never leaves a half-written set. An
    existing complete set is reused as is. Concurrent builders (the workers
    of a multi-worker run starting together) take turns on a lock file
    beside ``root``: the first builds, the others find the set complete.
    """
    if os.path.exists(os.path.join(root, _COMPLETE)):
        return root
    parent = os.path.dirname(os.path.abspath(root)) or "."
    os.makedirs(parent, exist_ok=True)
    with _exclusive(os.path.join(parent, f".{os.path.basename(os.path.abspath(root))}.lock")):
        if not os.path.exists(os.path.join(root, _COMPLETE)):  # built while we waited?
            _build(root, parent, train_per_class, val_per_class, image_size, seed)
    return root


@contextlib.contextmanager
def _exclusive(lock_path: str):
    """Holds an exclusive ``flock`` on ``lock_path`` (released on exit, and by
    the OS if the process dies)."""
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(root, parent, train_per_class, val_per_class, image_size, seed) -> None:
    import tensorflow as tf  # PNG encoding; imported here to keep the module light

    tmp = tempfile.mkdtemp(prefix=".synthetic_shapes-", dir=parent)
    try:
        rng = np.random.default_rng(seed)
        for split, n in (("train", train_per_class), ("val", val_per_class)):
            for kind in CLASSES:
                folder = os.path.join(tmp, split, kind)
                os.makedirs(folder)
                for i in range(n):
                    png = tf.io.encode_png(_render(kind, image_size, rng)).numpy()
                    with open(os.path.join(folder, f"{kind}_{i:05d}.png"), "wb") as f:
                        f.write(png)
        open(os.path.join(tmp, _COMPLETE), "w").close()
        fsync_tree(tmp)
        if os.path.exists(root):  # an incomplete earlier attempt
            shutil.rmtree(root)
        os.rename(tmp, root)
        fsync_dir(parent)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
