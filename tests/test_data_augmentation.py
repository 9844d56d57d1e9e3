"""pss_keras.data.augmentation: the training augmentation."""

import numpy as np
import tensorflow as tf
from data_helpers import MEAN, STD, _assert_normalized_range

from pss_keras.data.augmentation import train_transform
from pss_keras.jobs.config import DataConfig


def test_train_transform_normalizes_crops_and_flips():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (40, 60, 3)).astype(np.uint8))
    config = DataConfig(image_size=24)
    outs = [train_transform(image, tf.constant([s, 2]), config).numpy() for s in range(8)]
    assert all(out.shape == (24, 24, 3) for out in outs)
    again = train_transform(image, tf.constant([0, 2]), config).numpy()
    np.testing.assert_array_equal(outs[0], again)  # stateless
    # Colour noise narrows one image's span (0.56 of the range measured for
    # one of these seeds); the eight together span the whole range (1.0).
    _assert_normalized_range(np.stack(outs), min_span=0.5)

    plain = DataConfig(image_size=24, color_jitter=0.0, lighting=0.0)
    # Known pixels: without colour noise a constant image maps to
    # (v / 255 - MEAN) / STD wherever it is cropped, whether flipped or not.
    value = np.array([10, 128, 250], np.uint8)
    const = tf.constant(np.broadcast_to(value, (40, 60, 3)))
    out = train_transform(const, tf.constant([3, 4]), plain).numpy()
    np.testing.assert_allclose(
        out, np.broadcast_to((value / 255 - MEAN) / STD, out.shape), atol=1e-5
    )

    # Crops: the 40 x 60 image's aspect ratio (1.5) is outside the crop's
    # (3/4..4/3), so every seed takes a window of its own: no two outputs are
    # equal, even up to a flip.
    crops = [train_transform(image, tf.constant([s, 2]), plain).numpy() for s in range(8)]
    for i in range(len(crops)):
        for j in range(i):
            assert not np.allclose(crops[i], crops[j], atol=1e-3)
            assert not np.allclose(crops[i], crops[j][:, ::-1], atol=1e-3)

    # Flips: a square image cropped whole is the image or its mirror image,
    # and seeds give both.
    square = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    whole = DataConfig(image_size=24, crop_scale=(1.0, 1.0), color_jitter=0.0, lighting=0.0)
    expected = (square / 255.0 - MEAN) / STD
    flipped = []
    for s in range(16):
        out = train_transform(tf.constant(square), tf.constant([s, 5]), whole).numpy()
        if np.allclose(out, expected, atol=1e-4):
            flipped.append(False)
        else:
            np.testing.assert_allclose(out, expected[:, ::-1], atol=1e-4)
            flipped.append(True)
    assert any(flipped) and not all(flipped)
