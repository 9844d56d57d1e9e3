"""pss_keras.data.preprocessing: the one evaluation transform."""

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import MEAN, STD

from pss_keras.data import preprocessing


def test_eval_transform_resizes_the_shorter_side_and_centre_crops():
    # A wide greyscale image, dark in the middle, with bright 16-column bands
    # at both sides and a bright first and last row. At 32 px the shorter
    # side is resized to round(32 * 256 / 224) = 37 (80 -> 62 columns) and
    # the central 32 x 32 kept: source columns ~19.5..59.5, rows ~2.7..43,
    # all dark. Resizing without a crop, an off-centre crop, or resizing the
    # shorter side straight to 32 all bring bright pixels in.
    image = np.zeros((48, 80, 1), np.uint8)
    image[:, :16] = image[:, 64:] = 255
    image[0] = image[-1] = 255
    out = preprocessing.eval_transform(tf.constant(image), 32).numpy()
    dark = (0.0 - MEAN) / STD  # greyscale is tiled to RGB, then normalized
    np.testing.assert_allclose(out, np.broadcast_to(dark, (32, 32, 3)), atol=1e-5)

    # Random RGB content, landscape and portrait: exactly a bilinear resize
    # to (37, 62) / (62, 37), the central 32 x 32, then mean/std.
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3)).astype(np.uint8)
    landscape = ((37, 62), (2, 15))  # (resized h, w), (top, left): (37-32)//2, (62-32)//2
    portrait = ((62, 37), (15, 2))
    for source, ((h, w), (top, left)) in ((rgb, landscape), (rgb.transpose(1, 0, 2), portrait)):
        resized = tf.image.resize(source.astype(np.float32), (h, w), method="bilinear").numpy()
        crop = np.clip(resized[top : top + 32, left : left + 32] / 255.0, 0.0, 1.0)
        np.testing.assert_allclose(
            preprocessing.eval_transform(tf.constant(source), 32).numpy(),
            (crop - MEAN) / STD,
            atol=1e-5,
        )


def test_preprocess_encoded_decodes_each_image_and_crops_it_alone():
    """Mixed sizes and formats in one batch; each equals `eval_transform` of
    its decoded pixels to the bit (same decoder, same computation)."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 47, 3)).astype(np.uint8)
    grey = rng.integers(0, 256, (20, 16, 1)).astype(np.uint8)
    files = [tf.io.encode_jpeg(rgb, quality=85), tf.io.encode_png(grey)]
    out = preprocessing.preprocess_encoded(tf.stack(files), 24)
    assert out.shape == (2, 24, 24, 3) and out.dtype == tf.float32
    for i, data in enumerate(files):
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        np.testing.assert_array_equal(out[i], preprocessing.eval_transform(decoded, 24))
    empty = preprocessing.preprocess_encoded(tf.constant([], tf.string), 24)
    assert empty.shape == (0, 24, 24, 3)


def test_preprocess_encoded_refuses_bytes_that_are_no_image():
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        preprocessing.preprocess_encoded(tf.constant([b"\x00\x01 not an image"]), 24)
