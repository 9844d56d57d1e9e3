import numpy as np
import pytest

from pss_keras.utils import losses


def test_kl_divergence_against_numpy(rng):
    teacher_logits = rng.normal(size=(4, 7)).astype("float32")
    student = rng.normal(size=(4, 7)).astype("float32")
    p = np.exp(teacher_logits) / np.exp(teacher_logits).sum(-1, keepdims=True)
    log_q = student - np.log(np.exp(student).sum(-1, keepdims=True))
    expected = np.mean(np.sum(p * (np.log(p) - log_q), -1))
    assert float(losses.kl_divergence(p, student)) == pytest.approx(expected, rel=1e-5)
    # KL(p || p) = 0, and a one-hot teacher stays finite (clipped log).
    assert float(losses.kl_divergence(p, np.log(p))) == pytest.approx(0.0, abs=1e-6)
    one_hot = np.eye(7, dtype="float32")[[0, 3, 6, 1]]
    assert np.isfinite(float(losses.kl_divergence(one_hot, student)))


def test_cross_entropy_against_numpy(rng):
    logits = rng.normal(size=(5, 3)).astype("float32")
    labels = np.array([0, 2, 1, 1, 0], "int32")
    log_q = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(log_q[np.arange(5), labels])
    assert float(losses.cross_entropy(labels, logits)) == pytest.approx(expected, rel=1e-5)
