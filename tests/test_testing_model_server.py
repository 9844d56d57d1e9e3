"""The stand-in for tensorflow_model_server (pss_keras.testing.model_server):
its REST and gRPC answers to malformed requests, its metadata, serve(), and
TF Serving's REST formats end to end (tests/test_testing_rest_api.py has
each behaviour on its own)."""

import base64
import json
import re
import socket
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_fixtures import MODEL, _images
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pss_keras.testing import model_server
from pss_keras.testing.model_server import ModelServer
from pss_keras.testing.served_model import ModelRefused

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
    assert raised.value.details() == "tensor parsing error: images"  # TF's GetInputValues


def _predict_url(server, version=None):
    versions = "" if version is None else f"/versions/{version}"
    return f"{server.rest_address}/v1/models/{MODEL}{versions}:predict"


def test_rest_refuses_a_signature_without_inputs_but_answers_the_tier_table(served):
    """As TF Serving: ``tiers`` has no input, so REST refuses it;
    ``tier_table`` takes an ignored ``dummy``."""
    server, summary, _ = served
    status, answer = _post(_predict_url(server), '{"signature_name": "tiers"}')
    assert (status, answer) == (400, {"error": "Failed to get input map for signature: tiers"})
    status, answer = _post(_predict_url(server), '{"signature_name": "tier_table", "inputs": 0}')
    assert status == 200 and isinstance(answer["outputs"], dict)
    assert all(len(column) == len(summary["tiers"]) for column in answer["outputs"].values())


def test_rest_row_format_answers_one_object_per_instance(served):
    server, summary, _ = served
    name = summary["tiers"][0]["name"]
    images = _images((3, 24, 20, 3))
    body = json.dumps({"signature_name": name, "instances": images.tolist()})
    status, answer = _post(_predict_url(server), body)
    assert status == 200 and list(answer) == ["predictions"] and len(answer["predictions"]) == 3
    assert {"logits", "probabilities", "top5_classes"} <= set(answer["predictions"][0])
    body = json.dumps({"signature_name": name, "inputs": images.tolist()})
    status, columns = _post(_predict_url(server), body)
    assert status == 200 and list(columns) == ["outputs"]
    rows = [row["logits"] for row in answer["predictions"]]
    np.testing.assert_allclose(rows, columns["outputs"]["logits"], atol=1e-6)


def test_rest_b64_jpeg_gives_the_logits_of_its_decoded_pixels(served):
    """``{"b64": ...}`` is decoded to bytes for the string input of
    ``<tier>_bytes``: the same logits as the JPEG's decoded pixels."""
    server, summary, _ = served
    name = summary["tiers"][0]["name"]
    jpeg = tf.io.encode_jpeg(_images((1, 40, 52, 3), seed=3)[0]).numpy()
    pixels = tf.io.decode_image(jpeg, channels=3).numpy()
    encoded = {"b64": base64.b64encode(jpeg).decode()}
    body = json.dumps({"signature_name": f"{name}_bytes", "instances": [encoded]})
    status, from_bytes = _post(_predict_url(server), body)
    assert status == 200, from_bytes
    body = json.dumps({"signature_name": name, "instances": [pixels.tolist()]})
    status, from_pixels = _post(_predict_url(server), body)
    assert status == 200, from_pixels
    logits = [answer["predictions"][0]["logits"] for answer in (from_bytes, from_pixels)]
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)


def test_rest_and_grpc_find_the_version_by_number(served):
    server, summary, _ = served
    name = summary["tiers"][0]["name"]
    body = json.dumps({"signature_name": name, "inputs": _images((1, 8, 8, 3)).tolist()})
    status, answer = _post(_predict_url(server, summary["version"]), body)
    assert status == 200 and "logits" in answer["outputs"]
    status, answer = _post(_predict_url(server, 999), body)
    missing = f"Servable not found for request: Specific({MODEL}, 999)"
    assert (status, answer) == (404, {"error": missing})
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, name
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(_images((1, 8, 8, 3))))
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request.model_spec.version.value = summary["version"]
        assert stub.Predict(request, timeout=30).model_spec.version.value == summary["version"]
        request.model_spec.version.value = 999
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
        assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.NOT_FOUND, missing)
        request.model_spec.version_label = "stable"  # no labels configured
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Unrecognized servable version label: stable"


def test_grpc_input_names_are_checked_as_tf_serving_checks_them(served):
    server, summary, _ = served
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = summary["tiers"][0]["name"]
    tensor = tf.make_tensor_proto(_images((1, 8, 8, 3)))
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request.inputs["images"].CopyFrom(tensor)
        request.inputs["extra"].CopyFrom(tensor)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
        assert raised.value.details() == (
            "input size does not match signature: 2!=1 len({extra,images}) != len({images}). "
            "Sent extra: {extra}. Missing but required: {}."
        )
        del request.inputs["images"]
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.fullmatch(
        r"Signature input alias: images\(feed name: \S+\) not found in request and no default "
        r"value provided\. Inputs expected to be in the request \{extra\}, or default input "
        r"alias set: ",
        raised.value.details(),
    )


def test_a_version_label_must_name_the_served_version(served):
    """TF Serving refuses a config whose label names a version it does not
    serve; the stand-in refuses it before loading the model."""
    _, summary, _ = served
    refused = r"^Request to assign label to version 999 of model pss, which is not currently "
    with pytest.raises(ModelRefused, match=refused):
        ModelServer(summary["path"], MODEL, version_labels={"stable": 999})


def _grpc_error(call, request):
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=30)
    return raised.value.code().name, raised.value.details()


def test_grpc_predict_model_spec_output_filter_and_long_messages(served):
    server, summary, _ = served
    request = predict_pb2.PredictRequest()
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(_images((1, 8, 8, 3))))
    with grpc.insecure_channel(server.grpc_address) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        assert _grpc_error(predict, request) == ("INVALID_ARGUMENT", "Missing ModelSpec")
        request.model_spec.signature_name = ""
        assert _grpc_error(predict, request) == (
            "INVALID_ARGUMENT", "ModelSpec has no name specified."
        )  # fmt: skip
        request.model_spec.name = MODEL
        request.output_filter.append("logits")
        response = predict(request, timeout=30)
        assert list(response.outputs) == ["logits"]
        spec = response.model_spec
        assert (spec.name, spec.signature_name, spec.version.value) == (
            MODEL, "serving_default", summary["version"]
        )  # fmt: skip
        request.output_filter.append("logits")
        assert _grpc_error(predict, request) == (
            "INVALID_ARGUMENT", "duplicate output tensor alias: logits"
        )  # fmt: skip
        request.output_filter[:] = ["nope"]
        assert _grpc_error(predict, request) == (
            "INVALID_ARGUMENT",
            "output tensor alias not found in signature: nope Outputs expected to be in the set "
            "{logits,probabilities,top5_classes,top5_indices}.",
        )
        request.model_spec.signature_name = "x" * 2000  # messages are cut at 1024 bytes
        message = f'Serving signature key "{"x" * 2000}" not found.'
        assert _grpc_error(predict, request) == (
            "FAILED_PRECONDITION", message[:1024] + "...TRUNCATED"
        )  # fmt: skip


def test_metadata_lists_every_signature_and_checks_its_fields(served):
    """GetModelMetadata (and GET .../metadata) list the MetaGraph's
    signatures, the init op's too; gRPC asks for known metadata fields."""
    server, summary, _ = served
    with urllib.request.urlopen(f"{server.rest_address}/v1/models/{MODEL}/metadata") as r:
        rest = json.loads(r.read())["metadata"]["signature_def"]["signature_def"]
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    with grpc.insecure_channel(server.grpc_address) as channel:
        metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata
        assert _grpc_error(metadata, request) == (
            "INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field"
        )  # fmt: skip
        request.metadata_field.append("labels")
        assert _grpc_error(metadata, request) == (
            "INVALID_ARGUMENT", "Metadata field labels is not supported"
        )  # fmt: skip
        request.metadata_field[:] = ["signature_def"]
        response = metadata(request, timeout=30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    assert set(defs.signature_def) == set(rest)
    assert {"__saved_model_init_op", "tiers", "tier_table", "serving_default"} <= set(rest)
    body = '{"signature_name": "__saved_model_init_op", "inputs": 0}'
    assert _post(_predict_url(server), body) == (
        400, {"error": "Failed to get input map for signature: __saved_model_init_op"}
    )  # fmt: skip
    assert (response.model_spec.name, response.model_spec.version.value) == (
        MODEL, summary["version"]
    )  # fmt: skip
