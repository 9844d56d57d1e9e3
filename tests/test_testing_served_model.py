"""A SavedModel loaded as TF Serving loads it (pss_keras.testing.served_model):
a session, the warm-up replayed, a failing warm-up refused."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from serving_fixtures import MODEL, _image_request, _rename_signature, _warmup_logs, _with_warmup
from tensorflow.core.framework import tensor_pb2

from pss_keras.export import saved_model as export
from pss_keras.testing import served_model
from pss_keras.testing.model_server import ModelServer
from pss_keras.testing.served_model import ModelRefused

pytest_plugins = ["serving_fixtures"]


def test_stand_in_loads_by_session_and_replays_the_warm_up(served):
    server, summary, _ = served
    if not isinstance(server, ModelServer):
        pytest.skip("tensorflow_model_server is serving; its loading is its own")
    model = server.model
    assert isinstance(model.session, tf.compat.v1.Session) and model.session.graph is model.graph
    # Every request of the export's warm-up file ran at load: one per signature.
    assert model.warmup_requests == len(_warmup_logs(summary["path"])) == len(model.signature_defs)
    # The base path was given: the latest (only) version is served.
    assert (server.version, server.model_dir) == (summary["version"], summary["path"])


def _wrong_shape(requests):
    _image_request(requests).inputs["images"].CopyFrom(
        tf.make_tensor_proto(np.zeros((1, 8, 8, 4), np.uint8))
    )


def _wrong_dtype(requests):
    _image_request(requests).inputs["images"].CopyFrom(
        tf.make_tensor_proto(np.zeros((1, 8, 8, 3), np.float32))
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            _rename_signature,
            r"warm-up request 1 of .* \(signature 'flops_9999m'\) failed: "
            r'FAILED_PRECONDITION: Serving signature key "flops_9999m" not found\.$',
        ),
        (_wrong_shape, r"warm-up request 1 .* failed: INVALID_ARGUMENT: input images has shape "),
        (
            _wrong_dtype,
            r"warm-up request 1 .* failed: INVALID_ARGUMENT: Expects arg\[0\] to be uint8 but "
            r"float is provided$",
        ),
    ],
    ids=["missing_signature", "wrong_shape", "wrong_dtype"],
)
def test_stand_in_refuses_a_model_whose_warm_up_fails(served, tmp_path, edit, message):
    """As TF Serving does, the load fails on the first failing warm-up
    request, and no port is opened for the model."""
    _, summary, _ = served
    path = _with_warmup(summary["path"], tmp_path, edit)
    with pytest.raises(ModelRefused, match=rf"^Refused {re.escape(path)}: {message}"):
        ModelServer(path, MODEL)
    # The same copy with the export's own warm-up requests loads.
    ok = ModelServer(_with_warmup(summary["path"], tmp_path / "ok", lambda r: None), MODEL)
    assert ok.model.warmup_requests == len(ok.model.signature_defs)
    ok.model.close()


def test_stand_in_refuses_a_corrupt_warm_up_file(served, tmp_path):
    _, summary, _ = served
    path = _with_warmup(summary["path"], tmp_path, lambda r: None)
    warmup = os.path.join(path, "assets.extra", export.WARMUP_FILE)
    with open(warmup, "r+b") as f:
        f.truncate(os.path.getsize(warmup) - 3)  # the last record cut short
    with pytest.raises(ModelRefused, match=r"cannot read warm-up record \d+ of "):
        ModelServer(path, MODEL)
    with pytest.raises(ModelRefused, match="neither a SavedModel nor a base path"):
        ModelServer(str(tmp_path / "nothing"), MODEL)


def test_stand_in_closes_its_session_when_the_warm_up_breaks(served, monkeypatch, closed_sessions):
    """Not only a refused request: any failure of the warm-up closes the
    session it loaded."""
    _, summary, _ = served

    def broken(self, signature, inputs):
        raise KeyError("broken")

    monkeypatch.setattr(served_model.ServedModel, "predict", broken)
    with pytest.raises(KeyError, match="broken"):
        served_model.ServedModel(summary["path"])
    assert len(closed_sessions) == 1


def test_input_checks_of_a_signature_with_defaults():
    """TF Serving's gRPC-side checks (predict_util.cc VerifyRequestInputsSize,
    TF's GetInputValues) on a SignatureDef with a default input: fewer inputs
    are let through, a misnamed one is not, an unreadable TensorProto is
    refused by name."""
    from tensorflow.core.protobuf import meta_graph_pb2

    sig = meta_graph_pb2.SignatureDef()
    sig.inputs["x"].name, sig.inputs["k"].name = "x:0", "k:0"
    sig.defaults["k"].CopyFrom(tf.make_tensor_proto(np.int32(3)))
    x = tf.make_tensor_proto(np.zeros(2, np.float32))
    values = served_model._input_values(sig, {"x": x})
    assert values["k"] == 3 and values["x"].tolist() == [0.0, 0.0]
    for inputs, message in [
        ({"y": x}, "Signature input alias: x(feed name: x:0) not found in request and no default "
                   "value provided. Inputs expected to be in the request {y}, or default input "
                   "alias set: k"),
        ({"x": x, "y": x}, "Inputs contains invalid name. Used request inputs: x, request input: x,y"),
        ({"x": x, "k": x, "y": x}, "input size does not match signature: 3!=2 len({k,x,y}) != "
                                   "len({k,x}). Sent extra: {y}. Missing but required: {}."),
        ({"x": tensor_pb2.TensorProto(dtype=1, tensor_shape={"dim": [{"size": 3}]},
                                      tensor_content=b"12")}, "tensor parsing error: x"),
    ]:  # fmt: skip
        with pytest.raises(served_model.RequestError) as raised:
            served_model._input_values(sig, inputs)
        assert (raised.value.code, str(raised.value)) == ("INVALID_ARGUMENT", message)
