"""An image folder's classes and its validation split: the class structure
checked before training (`check_folder_classes`), and a train-only folder's
split (`split_examples`, drawn once; `apply_split`, a saved one read back).
"""

from __future__ import annotations

import collections
import logging
import os

import numpy as np

from pss_keras.data.decoding import DatasetError
from pss_keras.data.records import imagefolder_examples

# A class with fewer training images than this fraction of the median class's is named in a warning.
SMALL_CLASS_FRACTION = 0.2


def class_counts(builder, split: str) -> dict | None:
    """``{class name: images}`` of an ImageFolder split, every class of the
    folder included (None if this TFDS version does not list its files)."""
    examples = imagefolder_examples(builder, split)
    if examples is None:
        return None
    return label_counts(examples, builder.info.features["label"].names)


def check_folder_classes(path: str, builder, val_split: str | None) -> None:
    """The class structure of an image folder, checked before training.

    TFDS's ImageFolder takes the classes from every split's sub-folders, so
    an empty training class or a class only in the validation split would
    become a class the model never learns.

    Raises:
        DatasetError: one line naming the class(es): fewer than 2 classes with
            training images, a class without training images, or validation
            classes that are not training classes.
    """
    train = class_counts(builder, "train")
    if train is None:
        return
    val = (class_counts(builder, val_split) or {}) if val_split else {}
    trained = [c for c, n in train.items() if n]
    # An empty class folder in train/ (TFDS still makes it a class).
    empty = sorted(
        c for c, n in train.items() if not n and os.path.isdir(os.path.join(path, "train", c))
    )
    if empty:
        raise DatasetError(
            f"Image folder {path}: class(es) {', '.join(empty)} have no training images "
            f"({path}/train/<class> is empty); add images or remove the class folder from "
            "every split."
        )
    val_only = sorted(c for c, n in val.items() if n and not train.get(c))
    if val_only:
        raise DatasetError(
            f"Image folder {path}: class(es) {', '.join(val_only)} have images in {val_split}/ "
            f"but none in train/; every validation class must be a training class: add training "
            f"images to {path}/train/<class> or remove them from {val_split}/."
        )
    if len(trained) < 2:
        raise DatasetError(
            f"Image folder {path}/train has {len(trained)} class(es) with images "
            f"({', '.join(trained) or 'none'}); a classifier needs at least 2 class folders "
            "of images in train/."
        )
    median = float(np.median(list(train.values())))
    small = sorted(c for c, n in train.items() if n < SMALL_CLASS_FRACTION * median)
    if small:
        logging.warning(
            "Image folder %s: class(es) %s have fewer than %g of the median class's %d training "
            "images (%s); the model will see them rarely.",
            path, ", ".join(small), SMALL_CLASS_FRACTION, int(median),
            ", ".join(f"{c}: {train[c]}" for c in small),
        )  # fmt: skip


def label_counts(examples, names) -> dict:
    """``{class name: examples}``, every class of ``names`` included."""
    counts = collections.Counter(e.label for e in examples)
    return {name: counts[name] for name in names}


def split_examples(path: str, examples, val_fraction: float, seed: int) -> dict:
    """A train-only folder's validation split: ``val_fraction`` of every
    class (rounded, at least one image of a class with two or more), drawn
    with ``seed``.

    Returns:
        ``{"train": [...], "validation": [...]}``: image paths relative to
        ``path``, in the folder's order (what a job saves, so that its
        evaluation and export see the same split whatever is added later).

    Raises:
        DatasetError: a fraction outside (0, 1).
    """
    if not 0 < val_fraction < 1:
        raise DatasetError(f"val_fraction={val_fraction} must be between 0 and 1.")
    by_class = {}
    for i, example in enumerate(examples):
        by_class.setdefault(example.label, []).append(i)
    rng = np.random.default_rng(seed)
    held = set()
    for label in sorted(by_class):
        indices = by_class[label]
        k = int(round(val_fraction * len(indices)))
        k = min(max(k, 1 if len(indices) >= 2 else 0), len(indices) - 1)
        held.update(int(j) for j in rng.choice(indices, size=k, replace=False))
    relative = [os.path.relpath(os.fspath(e.image_path), path) for e in examples]
    return {
        "train": [r for i, r in enumerate(relative) if i not in held],
        "validation": [r for i, r in enumerate(relative) if i in held],
    }


def apply_split(path: str, examples, split: dict) -> tuple[list, list]:
    """The folder's examples in the saved ``split`` (paths relative to ``path``).

    Raises:
        DatasetError: images of the saved split that are gone (named).
    """
    by_path = {os.path.relpath(os.fspath(e.image_path), path): e for e in examples}
    missing = [r for part in ("train", "validation") for r in split[part] if r not in by_path]
    if missing:
        raise DatasetError(
            f"Image folder {path} lacks {len(missing)} image(s) of the run's saved train/"
            f"validation split (e.g. {', '.join(missing[:3])}); restore them, or train a new "
            "--job_dir to split the folder afresh."
        )
    listed = set(split["train"]) | set(split["validation"])
    new = len(by_path) - len(listed)
    if new:
        logging.warning(
            "Image folder %s has %d image(s) that the run's saved split does not list; they are "
            "not used (a new --job_dir splits the folder afresh).", path, new,
        )  # fmt: skip
    return [by_path[r] for r in split["train"]], [by_path[r] for r in split["validation"]]
