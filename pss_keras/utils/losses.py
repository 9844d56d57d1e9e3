"""The losses of PSS training and of quantization-aware distillation.

TensorFlow ops only, so the same functions serve the Keras 3 trainer and the
tf_keras QAT loop.
"""

from __future__ import annotations

import tensorflow as tf


def kl_divergence(teacher_probs, student_logits):
    """Mean over the batch of KL(teacher || student).

    The in-place distillation loss of the sandwich step (the largest subnet
    teaches the others) and of QAT (the float subnet teaches its quantized
    copy). Teacher probabilities are clipped to [1e-12, 1] before the log,
    so a one-hot teacher stays finite.
    """
    log_student = tf.nn.log_softmax(student_logits)
    log_teacher = tf.math.log(tf.clip_by_value(teacher_probs, 1e-12, 1.0))
    return tf.reduce_mean(tf.reduce_sum(teacher_probs * (log_teacher - log_student), axis=-1))


def cross_entropy(labels, logits):
    """Mean sparse softmax cross-entropy (integer labels)."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )
