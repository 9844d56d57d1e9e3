"""Images from a plain folder, for calibrating and checking a model that was
not trained here (an imported checkpoint): no splits, no job, no cache.

* `calibration_batches`: training-transform batches from the image files
  under a folder (any depth: a class-folder tree such as ImageNet's or
  Imagenette's ``train/`` works as is), or from a prepared TFDS dataset's
  ``train`` split.
* `labelled_folder`: a folder of class folders (ImageNet's ``val/`` laid out
  by wnid, or Imagenette's) as an evaluation dataset whose labels are the
  indices of a given class list, so that a 10-class subset scores a
  1000-class model.

Every unreadable or undecodable file is refused in one line naming it.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from pss_keras.data.augmentation import train_transform
from pss_keras.data.decoding import DatasetError
from pss_keras.data.preprocessing import eval_transform
from pss_keras.jobs.config import DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def image_files(folder: str) -> list[str]:
    """Every image file under ``folder`` (sorted paths; hidden entries skipped).

    Raises:
        DatasetError: no such folder, or no image in it.
    """
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder} is not a folder of images.")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, f)
            for f in sorted(files)
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
    if not found:
        raise DatasetError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return found


def _decode(path: str) -> tf.Tensor:
    """One file as uint8 RGB [h, w, 3]; one line naming it if it cannot be."""
    try:
        data = tf.io.read_file(path)
        return tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.OpError, OSError) as e:
        reason = " ".join(str(getattr(e, "message", e)).split())[:200]
        raise DatasetError(
            f"{path} cannot be decoded as an image ({reason}); remove or replace it."
        ) from None


def _tfds_images(name: str, data_dir: str | None, count: int, seed: int) -> list:
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(name, split="train", data_dir=data_dir, download=False, shuffle_files=False)
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds for "not prepared"
        reason = " ".join(str(e).split())[:200]
        raise DatasetError(
            f"{name} is neither a folder nor a prepared TFDS dataset in "
            f"{data_dir or 'the default TFDS data_dir'} ({reason})."
        ) from None
    ds = ds.shuffle(10 * count, seed=seed).take(count)
    return [example["image"] for example in ds]


def calibration_batches(
    source: str,
    num_batches: int,
    batch_size: int,
    image_size: int,
    seed: int = 0,
    data_dir: str | None = None,
) -> list[tf.Tensor]:
    """``num_batches`` batches of training-transform images (normalized,
    ``image_size`` square): post-BN calibration's input.

    Args:
        source: a folder (every image under it, drawn at random with
            ``seed``; fewer than ``num_batches * batch_size`` images are
            reused in another crop) or a prepared TFDS dataset's name.
        data_dir: TFDS's data directory for a TFDS ``source``.

    Raises:
        DatasetError: a source that holds no usable images, naming it, or an
            undecodable file, naming the file.
    """
    count = num_batches * batch_size
    rng = np.random.default_rng(seed)
    if os.path.isdir(source):
        files = image_files(source)
        picks = rng.permutation(len(files))[:count]
        images = [_decode(files[i]) for i in picks]
    else:
        images = _tfds_images(source, data_dir, count, seed)
        if not images:
            raise DatasetError(f"{source}'s train split holds no images.")
    config = DataConfig(image_size=image_size)
    batches, seeds = [], rng.integers(0, 2**31 - 1, size=(count, 2))
    for b in range(num_batches):
        batch = [
            train_transform(images[i % len(images)], tf.constant(seeds[i], tf.int32), config)
            for i in range(b * batch_size, (b + 1) * batch_size)
        ]
        batches.append(tf.stack(batch))
    return batches


def folder_labels(folder: str, class_names: list[str]) -> list[tuple[str, int]]:
    """``(class folder, label)`` of a folder of class folders.

    A folder named as one of ``class_names`` (e.g. an ImageNet wnid) takes
    its index; when no folder does and there are exactly as many folders as
    classes, the sorted folders take the labels in order.

    Raises:
        DatasetError: no class folders, or folders that match no class.
    """
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder} is not a folder of class folders.")
    subdirs = sorted(
        d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and d[0] != "."
    )
    if not subdirs:
        raise DatasetError(f"{folder} holds no class folders (one folder of images per class).")
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [d for d in subdirs if d not in index]
    if not unknown:
        return [(d, index[d]) for d in subdirs]
    if len(unknown) == len(subdirs) and len(subdirs) == len(class_names):
        return list(zip(subdirs, range(len(subdirs))))
    raise DatasetError(
        f"{folder}: class folder(s) {unknown[:3]} name no class of the model "
        f"({len(class_names)} classes, e.g. {class_names[0]}); name the folders by the "
        "model's classes (ImageNet wnids for an ImageNet model)."
    )


def labelled_folder(
    folder: str, class_names: list[str], image_size: int, batch_size: int
) -> tf.data.Dataset:
    """A folder of class folders as ``(images, labels)`` batches with the
    evaluation transform (`folder_labels` gives the labels).

    Raises:
        DatasetError: as `folder_labels`, or a class folder without images.
    """
    paths, labels = [], []
    for name, label in folder_labels(folder, class_names):
        files = image_files(os.path.join(folder, name))
        paths += files
        labels += [label] * len(files)

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return eval_transform(image, image_size), tf.cast(label, tf.int32)

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def first_bad_file(folder: str) -> str | None:
    """The first file under ``folder`` that does not decode (None if all do):
    what a failed evaluation names."""
    for path in image_files(folder):
        try:
            _decode(path)
        except DatasetError:
            return path
    return None
