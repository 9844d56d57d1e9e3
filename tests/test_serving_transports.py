"""The gRPC and REST transports (pss_keras.serving.transports): requests and
answers as TF Serving sends them, its refusals and silences as ServingError."""

import base64
import io
import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_fixtures import MODEL, _address, _images
from tensorflow_serving.apis import predict_pb2

from pss_keras import serving
from pss_keras.serving import transports

pytest_plugins = ["serving_fixtures"]

# TF Serving's answer to GET /v1/models/<name>/metadata (its REST API
# documentation's example, trimmed): the SignatureDefMap in proto3 JSON, int64
# sizes as strings, under metadata.signature_def.signature_def.
REST_METADATA = {
    "model_spec": {"name": "pss", "signature_name": "", "version": "3"},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "flops_1m": {
                    "inputs": {
                        "images": {
                            "dtype": "DT_UINT8",
                            "tensor_shape": {
                                "dim": [
                                    {"size": "-1", "name": ""},
                                    {"size": "-1", "name": ""},
                                    {"size": "-1", "name": ""},
                                    {"size": "3", "name": ""},
                                ],
                                "unknown_rank": False,
                            },
                            "name": "serving_flops_1m_images:0",
                        }
                    },
                    "outputs": {
                        "logits": {
                            "dtype": "DT_FLOAT",
                            "tensor_shape": {"dim": [{"size": "-1"}, {"size": "10"}]},
                            "name": "StatefulPartitionedCall:0",
                        }
                    },
                    "method_name": "tensorflow/serving/predict",
                },
                "any_rank": {
                    "inputs": {
                        "images": {"dtype": "DT_UINT8", "tensor_shape": {"unknown_rank": True}}
                    },
                    "method_name": "tensorflow/serving/predict",
                },
                "__saved_model_init_op": {
                    "outputs": {"__saved_model_init_op": {"name": "NoOp"}},
                },
            }
        }
    },
}


def test_rest_metadata_is_read_as_tf_serving_writes_it(monkeypatch):
    requests = []

    def urlopen(request, timeout):
        requests.append(request)
        return _Response(json.dumps(REST_METADATA).encode())

    monkeypatch.setattr(transports.urllib.request, "urlopen", urlopen)
    signatures = serving.RestTransport("127.0.0.1:8501", MODEL).metadata()
    assert requests[0].full_url == "http://127.0.0.1:8501/v1/models/pss/metadata"
    assert requests[0].get_method() == "GET"
    assert signatures["flops_1m"] == {
        "inputs": {"images": ("uint8", (None, None, None, 3))},
        "outputs": {"logits": ("float", (None, 10))},
    }
    assert signatures["any_rank"]["inputs"] == {"images": ("uint8", None)}
    tiers = serving.tiers_from_metadata(signatures)
    assert [(t.name, t.resolution) for t in tiers] == [("any_rank", None), ("flops_1m", None)]


def test_server_rejections_carry_the_status_through_the_transport(client, served):
    """The server's status reaches the caller as a ServingError naming it: the
    gRPC code, or the HTTP status plus the ``error`` of the JSON body."""
    protocol = "grpc" if isinstance(client.transport, serving.GrpcTransport) else "rest"
    status = {  # TF Serving's status per failure, as each protocol reports it
        "grpc": dict(signature="FAILED_PRECONDITION", dtype="INVALID_ARGUMENT", model="NOT_FOUND"),
        "rest": dict(signature="HTTP 400", dtype="HTTP 400", model="HTTP 404"),
    }[protocol]
    rejected = "^TF Serving rejected the request"
    with pytest.raises(
        serving.ServingError, match=rf'{rejected} \({status["signature"]}\): .*"nope"'
    ):
        client.transport.predict("nope", {"images": _images()})
    with pytest.raises(serving.ServingError, match=rf"{rejected} \({status['dtype']}\): "):
        client.transport.predict(client.tier_names()[0], {"images": _images().astype(np.float32)})
    other = serving.connect(_address(served[0], protocol), "no_such_model", protocol)
    try:
        with pytest.raises(
            serving.ServingError, match=rf"{rejected} \({status['model']}\): .*no_such_model"
        ):
            other.tiers()
    finally:
        other.close()


class _RpcError(grpc.RpcError):
    """What a grpc stub raises: an RpcError with the call's code and details."""

    def __init__(self, code, details):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _Stub:
    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def Predict(self, request, timeout):  # noqa: N802 (grpc's name)
        self.calls.append((request, timeout))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def grpc_transport():
    t = serving.GrpcTransport("127.0.0.1:8500", MODEL, timeout=7.0)  # the channel is lazy
    yield t
    t.close()


REJECTED = "TF Serving rejected the request"
GRPC_UNREACHABLE = (
    "Cannot reach TF Serving at 127.0.0.1:8500 over gRPC ({}): is the server running and "
    "the port right (gRPC default 8500)?"
)

# Status codes and details as tensorflow_model_server sends them: NOT_FOUND from
# core/basic_manager.cc, FAILED_PRECONDITION from servables/tensorflow/
# predict_util.cc, INVALID_ARGUMENT from predict_util.cc and the TF runtime;
# UNAVAILABLE and DEADLINE_EXCEEDED come from grpc itself on the client side.
GRPC_CASES = [
    (
        "NOT_FOUND",
        "Servable not found for request: Latest(pss)",
        f"{REJECTED} (NOT_FOUND): Servable not found for request: Latest(pss)",
    ),
    (
        "FAILED_PRECONDITION",
        'Serving signature key "flops_1m" not found.',
        f'{REJECTED} (FAILED_PRECONDITION): Serving signature key "flops_1m" not found.',
    ),
    (
        "INVALID_ARGUMENT",
        "Expects arg[0] to be uint8 but float is provided",
        f"{REJECTED} (INVALID_ARGUMENT): Expects arg[0] to be uint8 but float is provided",
    ),
    (
        "INVALID_ARGUMENT",
        "input size does not match signature: 2!=1 len({images,x}) != len({images}). "
        "Sent extra: {x}. Missing but required: {}.",
        f"{REJECTED} (INVALID_ARGUMENT): input size does not match signature: 2!=1 "
        "len({images,x}) != len({images}). Sent extra: {x}. Missing but required: {}.",
    ),
    (
        "RESOURCE_EXHAUSTED",
        "Received message larger than max (8388653 vs. 4194304)",
        f"{REJECTED} (RESOURCE_EXHAUSTED): Received message larger than max (8388653 vs. 4194304)",
    ),
    (
        "UNAVAILABLE",
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8500: "
        "Failed to connect to remote host: Connection refused",
        GRPC_UNREACHABLE.format("UNAVAILABLE"),
    ),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", GRPC_UNREACHABLE.format("DEADLINE_EXCEEDED")),
]


@pytest.mark.parametrize("code, details, message", GRPC_CASES)
def test_grpc_status_codes_become_serving_errors(grpc_transport, code, details, message):
    grpc_transport._stub = stub = _Stub(_RpcError(getattr(grpc.StatusCode, code), details))
    with pytest.raises(serving.ServingError) as e:
        grpc_transport.predict("flops_1m", {"images": _images()})
    assert str(e.value) == message
    unreachable = code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert e.value.status == ("UNREACHABLE" if unreachable else code)
    assert e.value.__suppress_context__  # one error, not a chained grpc traceback
    assert stub.calls[0][1] == 7.0  # the transport's timeout is the call's deadline


def test_grpc_request_and_response_conversion(grpc_transport):
    response = predict_pb2.PredictResponse()
    response.outputs["logits"].CopyFrom(tf.make_tensor_proto(np.eye(2, 3, dtype=np.float32)))
    response.outputs["top5_classes"].CopyFrom(tf.make_tensor_proto(np.array([[b"cat"], [b"dog"]])))
    grpc_transport._stub = stub = _Stub(response)
    images = _images()
    out = grpc_transport.predict("flops_2m", {"images": images})
    request, _ = stub.calls[0]
    assert (request.model_spec.name, request.model_spec.signature_name) == (MODEL, "flops_2m")
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["images"]), images)
    assert request.inputs["images"].dtype == tf.uint8.as_datatype_enum
    np.testing.assert_array_equal(out["logits"], np.eye(2, 3))
    assert out["top5_classes"].tolist() == [[b"cat"], [b"dog"]]


class _Response(io.BytesIO):
    """What urlopen returns (a context manager with read())."""


def _http_error(status, reason, body):
    url = "http://127.0.0.1:8501/v1/models/pss:predict"
    return urllib.error.HTTPError(url, status, reason, {}, io.BytesIO(body))


REST_UNREACHABLE = (
    "Cannot reach TF Serving at http://127.0.0.1:8501 over REST ({}): is the server running "
    "and the port right (REST default 8501)?"
)

# HTTP statuses and bodies as tensorflow_model_server's REST API sends them:
# http_server.cc ToHTTPStatusCode (NOT_FOUND -> 404; INVALID_ARGUMENT and
# FAILED_PRECONDITION -> 400; UNAVAILABLE -> 503; DEADLINE_EXCEEDED -> 504),
# and util/json_tensor.cc MakeJsonFromStatus (a pretty-printed {"error": ...}).
# An unknown signature is INVALID_ARGUMENT over REST
# (http_rest_api_handler.cc GetInfoMap), a JSON value of the wrong type too
# (json_tensor.cc TypeError).
REST_CASES = [
    (
        _http_error(
            404, "Not Found", b'{\n    "error": "Servable not found for request: Latest(pss)"\n}'
        ),
        f"{REJECTED} (HTTP 404): Servable not found for request: Latest(pss)",
    ),
    (
        _http_error(
            400,
            "Bad Request",
            b'{\n    "error": "Serving signature name: \\"flops_1m\\" not found in signature def"\n}',
        ),
        f'{REJECTED} (HTTP 400): Serving signature name: "flops_1m" not found in signature def',
    ),
    (
        _http_error(
            400,
            "Bad Request",
            b'{\n    "error": "JSON Value: 0.5 Type: Number is not of expected type: uint8"\n}',
        ),
        f"{REJECTED} (HTTP 400): JSON Value: 0.5 Type: Number is not of expected type: uint8",
    ),
    (
        _http_error(503, "Service Unavailable", b'{ "error": "Servable is unavailable" }'),
        f"{REJECTED} (HTTP 503): Servable is unavailable",
    ),
    # Not TF Serving's JSON (a proxy's page, an empty body, JSON without
    # "error"): the HTTP reason phrase stands in.
    (
        _http_error(502, "Bad Gateway", b"<html>502 Bad Gateway</html>"),
        f"{REJECTED} (HTTP 502): Bad Gateway",
    ),
    (_http_error(504, "Gateway Timeout", b""), f"{REJECTED} (HTTP 504): Gateway Timeout"),
    (_http_error(400, "Bad Request", b'"not an object"'), f"{REJECTED} (HTTP 400): Bad Request"),
    (_http_error(400, "Bad Request", b'{"message": "x"}'), f"{REJECTED} (HTTP 400): Bad Request"),
    # No answer at all.
    (
        urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
        REST_UNREACHABLE.format("[Errno 111] Connection refused"),
    ),
    (TimeoutError("timed out"), REST_UNREACHABLE.format("timed out")),
]


@pytest.mark.parametrize("error, message", REST_CASES)
def test_rest_statuses_become_serving_errors(monkeypatch, error, message):
    requests = []

    def urlopen(request, timeout):
        requests.append((request, timeout))
        raise error

    monkeypatch.setattr(transports.urllib.request, "urlopen", urlopen)
    t = serving.RestTransport("127.0.0.1:8501", MODEL, timeout=7.0)
    with pytest.raises(serving.ServingError) as e:
        t.predict("flops_1m", {"images": _images()})
    assert str(e.value) == message
    code = getattr(error, "code", None)
    assert e.value.status == (f"HTTP {code}" if code else "UNREACHABLE")
    assert e.value.__suppress_context__
    assert requests[0][1] == 7.0


def test_rest_request_and_response_conversion(monkeypatch):
    requests, answers = [], []

    def urlopen(request, timeout):
        requests.append(request)
        return _Response(json.dumps(answers.pop(0)).encode())

    monkeypatch.setattr(transports.urllib.request, "urlopen", urlopen)
    t = serving.RestTransport("http://127.0.0.1:8501/", MODEL)
    images = _images((1, 2, 2, 3))
    answers.append({"outputs": {"logits": [[0.5, 1.5]], "top5_classes": [["cat"]]}})
    out = t.predict("flops_2m", {"images": images})
    request = requests[0]
    assert request.full_url == "http://127.0.0.1:8501/v1/models/pss:predict"
    assert request.get_method() == "POST"
    assert request.get_header("Content-type") == "application/json"
    assert json.loads(request.data) == {
        "signature_name": "flops_2m",
        "inputs": {"images": images.tolist()},
    }
    np.testing.assert_array_equal(out["logits"], [[0.5, 1.5]])
    assert out["top5_classes"].tolist() == [["cat"]]
    # One output: TF Serving sends the bare tensor, in columnar or row format;
    # its name comes from the metadata, read once (a GET after the first).
    metadata = {
        "signature_def": {"signature_def": {"x": {"outputs": {"y": {"dtype": "DT_INT32"}}}}}
    }
    answers += [{"outputs": [[1, 2]]}, {"metadata": metadata}, {"predictions": [[3, 4]]}]
    np.testing.assert_array_equal(t.predict("x", {})["y"], [[1, 2]])
    assert requests[-1].full_url.endswith("/v1/models/pss/metadata")
    np.testing.assert_array_equal(t.predict("x", {})["y"], [[3, 4]])
    assert len(requests) == 4  # the metadata was not asked again


def test_rest_sends_string_tensors_as_b64_objects(monkeypatch):
    """Bytes go as TF Serving's REST API reads a string tensor's binary
    values: ``{"b64": base64}`` each (util/json_tensor.cc); the tier table's
    int32 ``dummy`` as a JSON number."""
    requests = []

    def urlopen(request, timeout):
        requests.append(json.loads(request.data))
        return _Response(json.dumps({"outputs": {"logits": [[0.0]]}}).encode())

    monkeypatch.setattr(transports.urllib.request, "urlopen", urlopen)
    t = serving.RestTransport("127.0.0.1:8501", MODEL)
    files = [b"\xff\xd8\xff\xe0jpeg", b"\x89PNG\r\n"]
    t.predict("flops_2m_bytes", {"image_bytes": np.array(files, object)})
    t.predict("tier_table", {"dummy": np.int32(0)})
    assert requests[0]["inputs"] == {
        "image_bytes": [{"b64": base64.b64encode(f).decode()} for f in files]
    }
    assert requests[1]["inputs"] == {"dummy": 0}
