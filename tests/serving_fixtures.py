"""What the serving tests share: a trained tiny job exported and served
(tensorflow_model_server when installed, else the stand-in), a client
over each protocol, test images and warm-up files, a simulated clock.

A pytest plugin: a test module loads its fixtures with
``pytest_plugins = ["serving_fixtures"]`` and imports its helpers. It holds
no assert, so pytest need not rewrite it (PYTEST_DONT_REWRITE): the test
modules import it before pytest loads it as a plugin.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from pss_keras import serving
from pss_keras.benchmarking import soak
from pss_keras.export import saved_model as export
from pss_keras.testing.model_server import ModelServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "pss"


def _start_server(base_path):
    """tensorflow_model_server on ``base_path`` when on PATH or named by
    TF_MODEL_SERVER (in its own process, `soak.ServerProcess`), else the
    stand-in in this process (which loads the latest version as it does)."""
    binary = soak.server_binary()
    if binary:
        return soak.ServerProcess(base_path, MODEL, binary, wait_s=60)
    return ModelServer(base_path, MODEL).start()


# One export and server per test process, shared by the serving, stand-in,
# policy and soak test modules.
@pytest.fixture(scope="session")
def served(trained_job, tmp_path_factory):
    config, _ = trained_job
    base = tmp_path_factory.mktemp("serving") / MODEL
    summary = export.export(config.job_dir, str(base), latency_repeats=3)
    server = _start_server(str(base))
    loaded = tf.saved_model.load(summary["path"])
    yield server, summary, loaded
    server.stop()


def _address(server, protocol):
    return server.grpc_address if protocol == "grpc" else server.rest_address


@pytest.fixture(params=["grpc", "rest"])
def client(request, served):
    c = serving.connect(_address(served[0], request.param), MODEL, request.param, timeout=30)
    yield c
    c.close()


def _images(shape=(2, 40, 52, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _warmup_logs(path):
    warmup = os.path.join(path, "assets.extra", export.WARMUP_FILE)
    return [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(warmup)
    ]


def _with_warmup(path, tmp_path, edit):
    """A copy of the SavedModel at ``path`` whose warm-up requests are
    ``edit(requests)``."""
    copy = tmp_path / "model" / "1"
    shutil.copytree(path, copy)
    logs = _warmup_logs(path)
    requests = [log.predict_log.request for log in logs]
    edit(requests)
    with tf.io.TFRecordWriter(str(copy / "assets.extra" / export.WARMUP_FILE)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return str(copy)


def _image_request(requests):
    return next(r for r in requests if "images" in r.inputs)


def _rename_signature(requests):
    _image_request(requests).model_spec.signature_name = "flops_9999m"


@pytest.fixture
def closed_sessions(monkeypatch):
    """The tf.compat.v1 Sessions closed during the test."""
    closed, close = [], tf.compat.v1.Session.close

    def record(session):
        closed.append(session)
        close(session)

    monkeypatch.setattr(tf.compat.v1.Session, "close", record)
    return closed


class _SimulatedClock:
    """Seconds that pass only when a simulated request takes time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now
