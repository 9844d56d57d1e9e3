"""Post-BN calibration and accuracy of single subnets.

A supernet trained with batch statistics has no meaningful running
statistics. Before a subnet is evaluated or deployed, its statistics are
recomputed on a few training batches with that subnet active (the reference
averages the batch mean and the unbiased batch variance over 8 batches).
`SubnetEvaluator.batch_losses` gives the other measure of a subnet that
training uses: its cross-entropy with batch statistics, the pools' score.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from pss_keras.cost import flops
from pss_keras.supernet import specs
from pss_keras.supernet.model import BatchNormStats, Supernet
from pss_keras.utils import losses


class SubnetEvaluator:
    """Calibrates and evaluates subnets of one supernet.

    Every subnet runs through the same traced functions (the subnet is a
    tensor argument; per-subnet statistics are written into the batch-norm
    layers' moving statistics before evaluating), so evaluating hundreds of
    subnets traces once.
    """

    def __init__(self, supernet: Supernet):
        self.supernet = supernet
        self._moments = tf.function(supernet.bn_moments, jit_compile=False)
        self._logits = tf.function(
            lambda images, code: supernet(images, training=False, subnet=code),
            jit_compile=False,
        )
        self._batch_loss = tf.function(
            lambda images, labels, code: losses.cross_entropy(
                tf.cast(labels, tf.int32), supernet(images, training=True, subnet=code)
            ),
            jit_compile=False,
        )

    def calibrate(
        self, config: specs.SubnetConfig, batches: Iterable, num_batches: int = 8
    ) -> BatchNormStats:
        """Statistics of every batch norm of ``config`` on ``num_batches``.

        Args:
            config: the subnet.
            batches: an iterable of images or (images, labels) batches
                (training data, as in the reference).
            num_batches: how many batches to average.

        Returns:
            ``{bn_layer_name: (mean, variance)}``: averages of the per-batch
            means and unbiased variances.

        Raises:
            ValueError: if ``batches`` yields fewer than one batch.
        """
        if num_batches < 1:
            raise ValueError(f"num_batches must be at least 1, got {num_batches}.")
        code = tf.constant(self.supernet.space.encode(config))
        # Output size of every batch norm's layer, for the unbiased variance.
        sizes = {
            f"{row.name}_bn": row.out_size
            for row in flops.profile(config, self.supernet.num_classes, self.supernet.width_scale)
        }
        sums, seen = {}, 0
        for batch in batches:
            # Checked before using a batch, so that a dataset of exactly
            # num_batches is read to its end (a cached one is then complete).
            if seen >= num_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            moments = self._moments(images, code)
            for name, (mean, variance) in moments.items():
                # Unbiased, like the running variance of the reference's BN.
                n = float(int(images.shape[0]) * sizes[name] ** 2)
                unbiased = variance.numpy() * (n / max(n - 1.0, 1.0))
                m0, v0 = sums.get(name, (0.0, 0.0))
                sums[name] = (m0 + mean.numpy(), v0 + unbiased)
            seen += 1
        if not seen:
            raise ValueError("No batches to calibrate batch norm on.")
        return {
            name: (m.astype(np.float32) / seen, v.astype(np.float32) / seen)
            for name, (m, v) in sums.items()
        }

    def evaluate(
        self, config: specs.SubnetConfig, bn_stats: BatchNormStats, dataset: Iterable
    ) -> dict:
        """Top-1 / top-5 accuracy (fractions) and example count on ``dataset``.

        ``bn_stats`` are written into the supernet's moving statistics (the
        channels beyond the subnet's are left as they are).
        """
        self.supernet.set_bn_stats(bn_stats)
        code = tf.constant(self.supernet.space.encode(config))
        correct1 = correct5 = total = 0
        for images, labels in dataset:
            logits = self._logits(images, code)
            labels = tf.cast(labels, tf.int32)
            k = min(5, int(logits.shape[-1]))
            correct1 += int(tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.int32)))
            correct5 += int(tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.int32)))
            total += int(labels.shape[0])
        if not total:
            raise ValueError("The evaluation dataset is empty.")
        return {"top1": correct1 / total, "top5": correct5 / total, "examples": total}

    def batch_losses(self, config: specs.SubnetConfig, batches: Iterable) -> list[float]:
        """Mean cross-entropy of ``config`` on each ``(images, labels)``
        batch, forwarded in training mode (each batch normalized with its own
        statistics, no stored ones needed): the measure whose negative the
        PSS trainer puts into the pools as a candidate's score
        (`pss_keras.training.trainer.PSSTrainer`). Nothing is updated.

        Raises:
            ValueError: if ``batches`` yields no batch.
        """
        code = tf.constant(self.supernet.space.encode(config))
        out = [float(self._batch_loss(images, labels, code)) for images, labels in batches]
        if not out:
            raise ValueError("No batches to measure the loss on.")
        return out
