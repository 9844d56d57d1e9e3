"""pss_keras.training.evaluation: BN calibration and evaluation of a subnet."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pss_keras.supernet.model import Supernet
from pss_keras.training import evaluation
from pss_keras.training.trainer import PSSTrainer


def test_bn_calibration_changes_statistics_and_helps(rng):
    """Calibration recovers the statistics training normalized with.

    Deterministic arithmetic on a seeded, briefly trained net (no accuracy
    threshold, which would depend on the CPU that trained it): the stem's
    statistics against a direct computation, and the calibrated inference
    pass against the batch-statistics (training-mode) pass it stands in for.
    """
    from pss_keras.supernet.model import resize_to

    keras.utils.set_random_seed(0)
    net = Supernet("mobilenet_v1", num_classes=2, width_scale=0.25, resolution_range=(16, 32))
    trainer = PSSTrainer(net)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    # Shifted, scaled inputs: far from the zero-mean / unit-variance defaults.
    images = (rng.normal(0.7, 1.5, (64, 32, 32, 3))).astype("float32")
    labels = rng.integers(0, 2, 64).astype("int32")
    trainer.fit(images, labels, batch_size=32, epochs=1, verbose=0, shuffle=False)
    small = net.space.smallest()
    evaluator = evaluation.SubnetEvaluator(net)
    before = net.get_bn_stats(small)  # training never updates them: zeros / ones
    assert all(np.all(m == 0) and np.all(v == 1) for m, v in before.values())

    batches = [images[:32], images[32:]]
    stats = evaluator.calibrate(small, iter(batches), num_batches=8)  # only 2 exist
    assert set(stats) == set(net.bn_channels(small))
    for name, (mean, variance) in stats.items():
        assert mean.shape == variance.shape == (net.bn_channels(small)[name],), name
    # The stem by hand: conv of the resized input, per-batch mean and unbiased
    # variance, averaged over the two batches.
    c0 = net.bn_channels(small)["stem_conv_bn"]
    kernel = net.get_layer_by_name("stem_conv").kernel.numpy()[..., :c0]
    means, variances = [], []
    for batch in batches:
        y = tf.nn.conv2d(resize_to(batch, small.resolution), kernel, 2, "SAME").numpy()
        n = y.shape[0] * y.shape[1] * y.shape[2]
        means.append(y.mean(axis=(0, 1, 2)))
        variances.append(y.var(axis=(0, 1, 2)) * n / (n - 1))
    np.testing.assert_allclose(stats["stem_conv_bn"][0], np.mean(means, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        stats["stem_conv_bn"][1], np.mean(variances, 0), rtol=1e-4, atol=1e-5
    )

    # Inference with a batch's own (biased) moments is the training-mode pass
    # on that batch: the statistics are used as training used them. The
    # calibrated ones are those moments with the unbiased variance.
    batch = images[:32]
    code = net.space.encode(small)
    train_mode = net(batch, training=True, subnet=code).numpy()
    moments = {k: (m.numpy(), v.numpy()) for k, (m, v) in net.bn_moments(batch, code).items()}
    np.testing.assert_allclose(
        net(batch, training=False, subnet=code, bn_stats=moments).numpy(), train_mode, atol=1e-5
    )
    one = evaluator.calibrate(small, iter([batch]), num_batches=1)
    for name, (mean, variance) in one.items():
        np.testing.assert_allclose(mean, moments[name][0], rtol=1e-6, atol=1e-7, err_msg=name)
        # Unbiased: n / (n - 1) times the batch variance, n = 32 x H x W >= 32.
        biased = moments[name][1]
        assert np.all(variance >= biased * (1 - 1e-6) - 1e-9), name
        assert np.all(variance <= biased * (32 / 31) * (1 + 1e-6) + 1e-9), name
    uncalibrated = net(batch, training=False, subnet=code, bn_stats=before).numpy()
    assert np.abs(uncalibrated - train_mode).max() > 0.1 * np.abs(train_mode).max()
    # evaluate() uses the statistics it is given and stores them.
    evaluator.evaluate(small, stats, [(batch, labels[:32])])
    np.testing.assert_array_equal(
        net.get_bn_stats(small)["stem_conv_bn"][0], stats["stem_conv_bn"][0]
    )


def test_batch_losses_are_the_training_mode_cross_entropy(rng):
    """The pools' measure of a subnet: cross-entropy with each batch's own
    statistics, one value per batch, the stored statistics untouched."""
    from pss_keras.utils import losses

    net = Supernet("mobilenet_v1", num_classes=3, width_scale=0.25, resolution_range=(16, 32))
    small = net.space.smallest()
    code = net.space.encode(small)
    batches = [
        (rng.normal(0.5, 1.0, (4, 32, 32, 3)).astype("float32"), rng.integers(0, 3, 4))
        for _ in range(2)
    ]
    before = net.get_bn_stats(small)
    got = evaluation.SubnetEvaluator(net).batch_losses(small, batches)
    expected = [
        float(losses.cross_entropy(labels.astype("int32"), net(images, training=True, subnet=code)))
        for images, labels in batches
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0] != got[1]
    for name, (mean, variance) in net.get_bn_stats(small).items():
        np.testing.assert_array_equal(mean, before[name][0])
        np.testing.assert_array_equal(variance, before[name][1])
    with pytest.raises(ValueError, match="No batches"):
        evaluation.SubnetEvaluator(net).batch_losses(small, [])
