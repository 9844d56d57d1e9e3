"""Shared fixtures: tiny supernets (width 0.5, resolutions 32..64)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY = dict(num_classes=10, width_scale=0.5, resolution_range=(32, 64), resolution_step=8)


@pytest.fixture(scope="session")
def tiny_supernets():
    """One tiny supernet per architecture, shared by the tests that only read it."""
    import keras

    from pss_keras.supernet import Supernet

    keras.utils.set_random_seed(0)
    return {name: Supernet(name, **TINY) for name in ("mobilenet_v1", "mobilenet_v2")}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_bn_stats(model, config, rng):
    """Non-trivial per-subnet BN statistics, so that tests notice if they are ignored."""
    return {
        name: (
            rng.normal(0.0, 0.2, c).astype("float32"),
            rng.uniform(0.5, 2.0, c).astype("float32"),
        )
        for name, c in model.bn_channels(config).items()
    }
