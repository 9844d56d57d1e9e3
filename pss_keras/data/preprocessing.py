"""The one image preprocessing of the project, shared by every stage.

Training augmentation lives in `pss_keras.data.augmentation`; what every *evaluation*
path does is here, written once, so that training-time evaluation, the
exported SavedModel and the TFLite verification agree to the bit:

* `to_rgb`: greyscale or RGBA to RGB.
* `centre_crop`: resize the shorter side to ``R * 256 / 224`` (bilinear),
  then take the centre ``R x R`` (ImageNet's resize 256 / crop 224).
* `normalize` / `to_pixels`: [0, 1] RGB <-> ImageNet mean/std normalized.
* `eval_transform` (one image, the data pipelines) and `preprocess` (a
  batch, the SavedModel signatures) are the same computation;
  `preprocess_encoded` is it for a batch of encoded images (each decoded,
  any size each).
"""

from __future__ import annotations

import tensorflow as tf

MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


def to_rgb(image):
    """Greyscale (1 channel) to RGB; RGBA to RGB; RGB as is."""
    image = tf.convert_to_tensor(image)
    if image.shape[-1] == 3:
        return image
    return tf.cond(
        tf.shape(image)[-1] < 3,
        lambda: tf.tile(image[..., :1], [1, 1, 3]),
        lambda: image[..., :3],
    )


def normalize(image01):
    """[0, 1] RGB -> ImageNet mean/std normalized float32."""
    return (image01 - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def to_pixels(normalized):
    """Inverse of `normalize`, scaled to pixel values: normalized -> [0, 255] RGB."""
    return (normalized * tf.constant(STDDEV_RGB) + tf.constant(MEAN_RGB)) * 255.0


def centre_crop(images, image_size: int):
    """Batched resize of the shorter side to ``image_size * 256 / 224`` and
    centre crop to ``image_size``: float32 pixels.

    Args:
        images: [batch, height, width, 3] pixels (any real or integer dtype),
            all of one size.
        image_size: the crop's side.
    """
    images = tf.cast(images, tf.float32)
    shape = tf.cast(tf.shape(images)[1:3], tf.float32)
    resize = float(round(image_size * 256 / 224))
    scale = resize / tf.reduce_min(shape)
    # The shorter side becomes round(R * 256 / 224) >= R and the longer one
    # more; the guard keeps a crop in bounds whatever rounding does.
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), image_size)
    images = tf.image.resize(images, new_shape, method="bilinear")
    top = (new_shape[0] - image_size) // 2
    left = (new_shape[1] - image_size) // 2
    return images[:, top : top + image_size, left : left + image_size, :]


def preprocess(images, image_size: int, normalized: bool = True):
    """The evaluation transform of a batch of pixel images.

    Args:
        images: [batch, height, width, 3] (uint8 in the SavedModel).
        image_size: output side.
        normalized: ``False`` stops before the mean/std step (pixels in
            [0, 255], what the TFLite files take).
    """
    image01 = tf.clip_by_value(centre_crop(images, image_size) / 255.0, 0.0, 1.0)
    return normalize(image01) if normalized else image01 * 255.0


def eval_transform(image, image_size: int):
    """`preprocess` of one decoded image ([h, w, 1|3|4]), normalized."""
    image = tf.cast(to_rgb(image), tf.float32)
    return preprocess(image[None], image_size)[0]


def preprocess_encoded(image_bytes, image_size: int):
    """`preprocess` of a batch of encoded images (JPEG, PNG, GIF, BMP).

    Each image is decoded to RGB uint8 (`tf.io.decode_image`, first frame
    of a GIF) and cropped on its own, so the images of a batch may differ in
    size; for one image this is `preprocess` of its decoded pixels, the
    same computation.

    Args:
        image_bytes: string [batch], one encoded image each.
        image_size: output side.

    Returns:
        float32 [batch, image_size, image_size, 3], normalized.
    """

    def one(encoded):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return preprocess(image[None], image_size)[0]

    return tf.map_fn(
        one,
        tf.convert_to_tensor(image_bytes, tf.string),
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )
