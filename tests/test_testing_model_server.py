"""The stand-in for tensorflow_model_server (pss_keras.testing.model_server):
its REST and gRPC answers to malformed requests, its metadata, serve()."""

import json
import re
import socket
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_fixtures import MODEL
from tensorflow_serving.apis import predict_pb2

from pss_keras.testing import model_server
from pss_keras.testing.model_server import ModelServer

pytest_plugins = ["serving_fixtures"]


def test_serve_closes_the_model_when_a_port_is_taken(served, closed_sessions):
    _, summary, _ = served
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = model_server.ServeConfig(
            summary["path"], MODEL, port=0, rest_api_port=taken.getsockname()[1]
        )
        with pytest.raises(OSError):
            model_server.serve(config, ready=lambda line: None)
    assert len(closed_sessions) == 1


def test_stand_in_metadata_matches_tf_servings_rest_format(served):
    """The stand-in's REST metadata has the shape of TF Serving's (above)."""
    server, summary, _ = served
    with urllib.request.urlopen(f"{server.rest_address}/v1/models/{MODEL}/metadata") as r:
        payload = json.loads(r.read())
    defs = payload["metadata"]["signature_def"]["signature_def"]
    name = summary["tiers"][0]["name"]
    images = defs[name]["inputs"]["images"]
    assert images["dtype"] == "DT_UINT8"
    assert [d["size"] for d in images["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    assert payload["model_spec"]["name"] == MODEL


def _post(url, body):
    """(HTTP status, JSON body) of a POST with ``body`` as raw JSON text."""
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(
    "images, message",
    [
        (
            "[[[[1, 2, 3]]], [[[1, 2]]]]",
            "Encountered list at unexpected size: 2 at level: 3 expected size: 3",
        ),
        ("[]", r"input images has shape \[0\]"),
    ],
    ids=["ragged", "empty"],
)
def test_malformed_rest_inputs_get_http_400_with_a_message(served, images, message):
    """Nested lists numpy cannot make a tensor of, and an empty list, are
    the client's mistake: HTTP 400 and why, not a dropped connection."""
    server, summary, _ = served
    url = f"{server.rest_address}/v1/models/{MODEL}:predict"
    body = (
        f'{{"signature_name": "{summary["tiers"][0]["name"]}", "inputs": {{"images": {images}}}}}'
    )
    status, answer = _post(url, body)
    assert status == 400 and answer["error"]
    if isinstance(server, ModelServer):
        assert re.search(message, answer["error"])


def test_unreadable_grpc_tensor_is_invalid_argument(served):
    """A TensorProto whose bytes do not fill its shape (make_ndarray's
    ValueError) is INVALID_ARGUMENT, as TF Serving answers it."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    server, summary, _ = served
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = summary["tiers"][0]["name"]
    tensor = tf.make_tensor_proto(np.zeros((1, 2, 2, 3), np.uint8))
    tensor.tensor_content = tensor.tensor_content[:5]
    request.inputs["images"].CopyFrom(tensor)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
