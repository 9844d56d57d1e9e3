"""The method's training augmentation (ImageNet's): a random resized crop,
colour jitter, PCA lighting noise and a flip, stateless (`train_transform`).
Evaluation's transform is `pss_keras.data.preprocessing.eval_transform`.
"""

from __future__ import annotations

import tensorflow as tf

from pss_keras.data.preprocessing import normalize, to_rgb
from pss_keras.jobs.config import DataConfig

# ImageNet PCA lighting noise (AlexNet), as in the reference transforms.
_EIGVAL = (0.2175, 0.0188, 0.0045)
_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def train_transform(image, seed, config: DataConfig):
    """The method's training augmentation, stateless (``seed``: int32 [2])."""
    seeds = tf.random.experimental.stateless_split(seed, 7)
    image = to_rgb(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seeds[0],
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=config.crop_scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, (config.image_size, config.image_size), method="bilinear")
    image = tf.clip_by_value(image / 255.0, 0.0, 1.0)
    jitter = config.color_jitter
    if jitter > 0:
        factor = tf.random.stateless_uniform([], seeds[1], 1 - jitter, 1 + jitter)
        image = tf.clip_by_value(image * factor, 0.0, 1.0)
        image = tf.image.stateless_random_contrast(image, 1 - jitter, 1 + jitter, seeds[2])
        image = tf.image.stateless_random_saturation(image, 1 - jitter, 1 + jitter, seeds[3])
        image = tf.clip_by_value(image, 0.0, 1.0)
    if config.lighting > 0:
        alpha = tf.random.stateless_normal([3], seeds[4], stddev=config.lighting)
        rgb = tf.linalg.matvec(tf.constant(_EIGVEC), alpha * tf.constant(_EIGVAL))
        image = image + rgb
    image = tf.image.stateless_random_flip_left_right(image, seeds[5])
    return normalize(image)
