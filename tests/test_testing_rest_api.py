"""TF Serving's REST API in the stand-in (pss_keras.testing.rest_api, put
together by pss_keras.testing.model_server.rest_response), on small
SignatureDefs and a fake predict, without a server or a model: one case per
row of docs/tf_serving_behaviour.md, with TF Serving's message and HTTP code."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2 as t
from tensorflow.core.protobuf import meta_graph_pb2

from pss_keras.testing import rest_api
from pss_keras.testing.model_server import rest_response
from pss_keras.testing.served_model import RequestError

NAN = float("nan")


def _info(dtype, shape=(None,)):
    shape = tf.TensorShape(shape).as_proto()
    return meta_graph_pb2.TensorInfo(name="t:0", dtype=dtype, tensor_shape=shape)


def _signature(inputs, outputs=None):
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for alias, info in inputs.items():
        sig.inputs[alias].CopyFrom(info)
    for alias, info in (inputs if outputs is None else outputs).items():
        sig.outputs[alias].CopyFrom(info)
    return sig


SIGNATURES = {
    "serving_default": _signature({"x": _info(t.DT_FLOAT, [None, 2])}),
    "pixels": _signature({"images": _info(t.DT_UINT8, [None, None, 3])}),
    "pair": _signature({"a": _info(t.DT_INT32), "b": _info(t.DT_STRING)}),
    "encoded": _signature({"image_bytes": _info(t.DT_STRING)}),
    "table": _signature({"dummy": _info(t.DT_INT32, None)}),
    "tiers": _signature({}, {"names": _info(t.DT_STRING)}),
    "half": _signature({"h": _info(t.DT_HALF)}),
    "dtypes": _signature(
        {n: _info(getattr(t, f"DT_{n.upper()}")) for n in ("int64", "uint32", "bool", "double")}
    ),
}


class _Served:
    """A `rest_api.Servable` whose predict echoes its inputs and records its calls."""

    def __init__(self, signatures=SIGNATURES, labels=None, answer=None):
        self.calls = []
        self.servable = rest_api.Servable("m", 3, signatures, self.predict, labels or {})
        self.answer = answer

    def predict(self, signature, inputs):
        self.calls.append((signature, inputs))
        if isinstance(self.answer, Exception):
            raise self.answer
        return dict(inputs) if self.answer is None else self.answer

    def __call__(self, method, path, body=b"", origin=None):
        """(HTTP status, content type, body) of a request."""
        if not isinstance(body, bytes):
            body = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return rest_response(method, path, body, self.servable, origin)

    def post(self, body, path="/v1/models/m:predict"):
        """(HTTP status, JSON answer) of a POST."""
        status, content_type, payload = self("POST", path, body)
        assert content_type == "application/json"
        return status, json.loads(payload)


def _refused(body, status, message, path="/v1/models/m:predict"):
    answer = _Served().post(body, path)
    assert answer == (status, {"error": message})


def _inputs(body, path="/v1/models/m:predict", **kwargs):
    """The (signature, {alias: array}) the fake predict got."""
    served = _Served(**kwargs)
    status, answer = served.post(body, path)
    assert status == 200, answer
    [call] = served.calls
    return call


# -- A: the HTTP layer, URLs, errors -------------------------------------------
@pytest.mark.parametrize(
    "code, http",
    [
        ("INVALID_ARGUMENT", 400), ("FAILED_PRECONDITION", 400), ("OUT_OF_RANGE", 400),
        ("NOT_FOUND", 404), ("UNIMPLEMENTED", 501), ("DEADLINE_EXCEEDED", 504),
        ("RESOURCE_EXHAUSTED", 429), ("UNAVAILABLE", 503), ("CANCELLED", 499),
        ("PERMISSION_DENIED", 403), ("UNAUTHENTICATED", 401), ("ABORTED", 409),
        ("INTERNAL", 500), ("UNKNOWN", 500), ("SOMETHING_ELSE", 500),
    ],
)  # fmt: skip
def test_a_status_code_maps_to_tf_servings_http_status(code, http):
    served = _Served(answer=RequestError(code, "Ünïcode/\nmessage"))
    status, content_type, payload = served("POST", "/v1/models/m:predict", {"inputs": [[1, 2]]})
    assert (status, content_type) == (http, "application/json")
    assert json.loads(payload) == {"error": "Ünïcode/\nmessage"}
    assert "Ünïcode/".encode() in payload  # rapidjson writes non-ASCII and / raw


def test_a_path_outside_v1_gets_an_html_404():
    status, content_type, payload = _Served()("GET", "/metrics")
    assert (status, content_type) == (404, "text/html")
    assert b"404 Not Found" in payload


@pytest.mark.parametrize(
    "method, path, route",
    [
        ("POST", "/v1/models/m:predict", ("m", None, None, "predict")),
        ("POST", "/V1/MODELS/m/VERSIONS/3:predict", ("m", 3, None, "predict")),
        ("POST", "/v1/models/m/labels/stable:classify", ("m", None, "stable", "classify")),
        ("GET", "/v1/models/m", ("m", None, None, "status")),
        ("GET", "/v1/models/m/versions/007", ("m", 7, None, "status")),
        ("GET", "/v1/models/m/labels/x/metadata", ("m", None, "x", "metadata")),
        ("GET", "/v1/models/m/METADATA", ("m", None, None, "status")),
        ("GET", "/v1/models", ("", None, None, "status")),
        ("GET", "/v1/models/versions/1", ("", 1, None, "status")),
    ],
)
def test_routes_as_tf_servings_regexes(method, path, route):
    assert rest_api.route(method, path) == route


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/foo"), ("POST", "/v1/models"), ("GET", "/v1/models/m:predict"),
        ("POST", "/v1/models/m/metadata"), ("POST", "/v1/models/m/versions/HELLO:predict"),
        ("POST", "/v1/models/m/label/x:predict"), ("POST", "/v1/models/m/versions/1/labels/x:predict"),
        ("GET", "/v1/models/m/"), ("POST", "/v1/models/m:PREDICT"), ("PUT", "/v1/models/m:predict"),
        ("POST", "/v1/models/m:predict?x=1"),
    ],
)  # fmt: skip
def test_malformed_requests(method, path):
    status, _, payload = _Served()(method, path, {"inputs": [[1, 2]]})
    assert (status, json.loads(payload)) == (400, {"error": f"Malformed request: {method} {path}"})


def test_status_and_metadata_need_a_model_name():
    for path in ("/v1/models", "/v1/models/versions/1", "/v1/models/versions/1/metadata"):
        status, _, payload = _Served()("GET", path)
        assert (status, json.loads(payload)) == (400, {"error": "Missing model name in request."})


def test_a_version_beyond_int64_is_refused_with_an_empty_body():
    status, content_type, payload = _Served()("POST", f"/v1/models/m/versions/{2**64}:predict")
    assert (status, content_type, payload) == (400, "application/json", b"")


@pytest.mark.parametrize("origin, status", [("https://x.org", 200), (None, 400), ("x.org", 400)])
def test_a_cors_preflight_is_answered_empty(origin, status):
    assert _Served()("OPTIONS", "/v1/models/m:predict", origin=origin) == (
        status, "", b""  # no header, no body
    )  # fmt: skip


@pytest.mark.parametrize("verb", ["classify", "regress"])
def test_classify_and_regress_are_not_run(verb):
    served = _Served()
    status, answer = served.post({"examples": [{}]}, f"/v1/models/m:{verb}")
    assert (status, answer) == (501, {"error": f"The stand-in does not run {verb}."})
    assert served.calls == []


# -- B: model, version, label --------------------------------------------------
@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/v1/models/x:predict", 404, "Servable not found for request: Latest(x)"),
        ("/v1/models/m/versions/9:predict", 404, "Servable not found for request: Specific(m, 9)"),
        ("/v1/models/x/versions/3:predict", 404, "Servable not found for request: Specific(x, 3)"),
        ("/v1/models/m/labels/nope:predict", 400, "Unrecognized servable version label: nope"),
        ("/v1/models/x/labels/stable:predict", 400, "Unrecognized servable version label: stable"),
        (
            "/v1/models/m/labels/canary:predict",
            404,
            "Servable not found for request: Specific(m, 4)",
        ),
    ],
)
def test_unknown_model_version_or_label(path, status, message):
    served = _Served(labels={"stable": 3, "canary": 4})
    assert served.post({"inputs": [[1, 2]]}, path) == (status, {"error": message})
    assert served.calls == []


def test_versions_and_labels_find_the_served_version():
    for path in ("/v1/models/m/versions/3:predict", "/v1/models/m/labels/stable:predict"):
        assert _inputs({"inputs": [[1, 2]]}, path, labels={"stable": 3})[0] == "serving_default"
    # No labels configured: every label is unknown.
    _refused({"inputs": 1}, 400, "Unrecognized servable version label: stable",
             "/v1/models/m/labels/stable:predict")  # fmt: skip


def test_resolution_of_an_empty_name_and_of_no_version():
    servable = _Served().servable
    with pytest.raises(RequestError, match=r"^ModelSpec has no name specified\.$"):
        rest_api.resolve_version(servable, "")
    assert rest_api.resolve_version(servable, "m") == 3


def test_the_json_is_read_before_the_model_is_looked_up():
    _refused("{", 400, "JSON Parse error: Missing a name for object member. at offset: 1",
             "/v1/models/x:predict")  # fmt: skip


# -- C: the predict body ---------------------------------------------------------
@pytest.mark.parametrize(
    "body, message",
    [
        ("", "JSON Parse error: The document is empty"),
        ("  \n", "JSON Parse error: The document is empty. at offset: 3"),
        ("x", "JSON Parse error: Invalid value. at offset: 0"),
        ('{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
        ('{"a": 1 "b": 2}', "JSON Parse error: Missing a comma or '}' after an object member. at offset: 8"),
        ('{"a": [1 2]}', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 9"),
        ('{"a": [{"b": "]"} "c"]}', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 18"),
        ("{a}", "JSON Parse error: Missing a name for object member. at offset: 1"),
        ('{"a": "b', "JSON Parse error: Missing a closing quotation mark in string. at offset: 8"),
        ('{"é": }', "JSON Parse error: Invalid value. at offset: 7"),  # bytes, not characters
        ("[1, 2]", "JSON Value: [1, 2] Is not object"),
        ('{"signature_name": 1, "inputs": [1]}',
         "JSON Value: {\n    \"signature_name\": 1,\n    \"inputs\": [1]\n} not formatted correctly. "
         "'signature_name' key must be a string value."),
    ],
)  # fmt: skip
def test_json_parse_errors(body, message):
    _refused(body, 400, message)


def test_what_follows_the_json_and_unknown_keys_are_ignored():
    body = '{"inputs": [[1, 2]], "output_filter": ["y"]} trailing, NaN'
    assert _inputs(body)[0] == "serving_default"


@pytest.mark.parametrize("body", [{"inputs": [[1, 2]]}, {"signature_name": "", "inputs": [[1, 2]]}])
def test_the_default_signature(body):
    assert _inputs(body)[0] == "serving_default"


def test_an_unknown_signature():
    _refused({"signature_name": "nope", "inputs": 1}, 400,
             'Serving signature name: "nope" not found in signature def')  # fmt: skip


def test_a_signature_without_inputs_is_refused():
    _refused({"signature_name": "tiers", "inputs": 1}, 400,
             "Failed to get input map for signature: tiers")  # fmt: skip
    only = {"serving_default": SIGNATURES["tiers"]}
    for body, name in [
        ({"inputs": 1}, "DEFAULT"),
        ({"signature_name": "serving_default"}, "serving_default"),
    ]:
        assert _Served(only).post(body) == (
            400,
            {"error": f"Failed to get input map for signature: {name}"},
        )


@pytest.mark.parametrize(
    "body, message",
    [
        ({"inputs": 1, "instances": [1]},
         "JSON Value: {\n    \"inputs\": 1,\n    \"instances\": [1]\n} Not formatted correctly expecting "
         "only one of 'inputs' or 'instances' keys to exist "),
        ({"signature_name": "pixels"}, "Missing 'inputs' or 'instances' key"),
        ({"instances": 1}, "JSON Value: {\n    \"instances\": 1\n} Expecting 'instances' to be an list/array"),
        ({"instances": []}, "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
    ],
)  # fmt: skip
def test_inputs_or_instances(body, message):
    _refused(body, 400, message)


def test_row_format_objects_plain_values_and_batches():
    signature, inputs = _inputs(
        {"signature_name": "pair", "instances": [{"b": "x", "a": 1}, {"a": 2, "b": "y"}]}
    )
    assert signature == "pair" and inputs["a"].dtype == np.int32 and inputs["a"].tolist() == [1, 2]
    assert inputs["b"].dtype == object and inputs["b"].tolist() == [b"x", b"y"]
    _, inputs = _inputs({"signature_name": "pixels", "instances": [[[1, 2, 3]], [[4, 5, 6]]]})
    assert inputs["images"].shape == (2, 1, 3) and inputs["images"].dtype == np.uint8
    _, inputs = _inputs({"instances": [{"x": [1, 2]}]})  # objects for a single input too
    assert inputs["x"].tolist() == [[1.0, 2.0]]
    _, inputs = _inputs({"signature_name": "table", "instances": [5, 6, 7]})
    assert inputs["dummy"].shape == (3,)


@pytest.mark.parametrize(
    "instances, message",
    [
        ([1], "instances is a plain list, but expecting list of objects as multiple input tensors "
              "required as per tensorinfo_map"),
        ([{"a": 1, "b": "x"}, [1]], "Expecting object but got list at item 1 of input list"),
        ([{"a": 1, "c": 2, "b": "x"}], "Failed to process element: 0 key: c of 'instances' list. "
         "Error: INVALID_ARGUMENT: JSON object: does not have named input: c"),
        ([{"a": 1}], "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1\n} "
         "keys must be equal to: a,b"),
        ([{"a": 1, "b": "x"}, {"a": [1, 2], "b": "y"}], "Failed to process element: 1 key: a of "
         "'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 1 but got: 2"),
        ([{"a": [1], "b": "x"}, {"a": 2, "b": "y"}], "Failed to process element: 1 key: a of "
         "'instances' list. Error: INVALID_ARGUMENT: Expecting shape [1] but got: []"),
    ],
)  # fmt: skip
def test_row_format_errors(instances, message):
    _refused({"signature_name": "pair", "instances": instances}, 400, message)


def test_row_format_a_plain_list_then_an_object():
    _refused({"signature_name": "table", "instances": [1, {"dummy": 1}]}, 400,
             "Expecting value/list but got object at item 1 of input list")  # fmt: skip


@pytest.mark.parametrize(
    "images, message",
    [
        ([[[1, 2, 3]], [[1, 2]]], "Encountered list at unexpected size: 2 at level: 2 expected size: 3"),
        ([[[1, 2, 3]], [4]], "JSON Value: 4 found at incorrect level: 3 in the JSON DOM. Expected at level: 3"),
        ([[[1, 2, 3]], [[1, 2, [3]]]], "Encountered list at unexpected level: 3 expected < 3"),
    ],
)  # fmt: skip
def test_ragged_values(images, message):
    _refused({"signature_name": "pixels", "inputs": images}, 400, message)
    wrapped = (
        f"Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: {message}"
    )
    _refused({"signature_name": "pixels", "instances": [images]}, 400, wrapped)


def test_columnar_format():
    _, inputs = _inputs({"signature_name": "table", "inputs": 0})  # a bare value, rank 0
    assert inputs["dummy"].shape == () and inputs["dummy"].dtype == np.int32
    _, inputs = _inputs({"signature_name": "table", "inputs": []})
    assert inputs["dummy"].shape == (0,)
    _, inputs = _inputs(
        {"signature_name": "pair", "inputs": {"a": [1, 2, 3], "b": ["x"], "extra": 1}}
    )
    assert (
        inputs["a"].shape == (3,) and inputs["b"].tolist() == [b"x"] and set(inputs) == {"a", "b"}
    )
    _, inputs = _inputs({"signature_name": "encoded", "inputs": {"b64": "AQI="}})
    assert inputs["image_bytes"].tolist() == b"\x01\x02"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"signature_name": "pair", "inputs": [1]},
         "inputs is a plain value/list, but expecting an object as multiple input tensors required "
         "as per tensorinfo_map"),
        ({"signature_name": "pair", "inputs": {"a": [1]}}, "Missing named input: b in 'inputs' object."),
        ({"signature_name": "table", "inputs": {}}, "Missing named input: dummy in 'inputs' object."),
    ],
)  # fmt: skip
def test_columnar_format_errors(body, message):
    _refused(body, 400, message)


# -- D, E: JSON values as the signature's dtype ------------------------------------
@pytest.mark.parametrize(
    "signature, value, message",
    [
        ("serving_default", [["x", 1]], 'JSON Value: "x" Type: String is not of expected type: float'),
        ("pixels", [[[1.5, 2, 3]]], "JSON Value: 1.5 Type: Number is not of expected type: uint8"),
        ("pixels", [[[1.0, 2, 3]]], "JSON Value: 1.0 Type: Number is not of expected type: uint8"),
        ("pixels", [[[1e2, 2, 3]]], "JSON Value: 100.0 Type: Number is not of expected type: uint8"),
        ("pixels", [[[2**31, 2, 3]]], "JSON Value: 2147483648 Type: Number is not of expected type: uint8"),
        ("table", True, "JSON Value: true Type: True is not of expected type: int32"),
        ("table", None, "JSON Value: null Type: Null is not of expected type: int32"),
        ("table", {"b64": "AQI="},
         'JSON Value: {\n    "b64": "AQI="\n} Type: Object is not of expected type: int32'),
        ("serving_default", [[{"b64": "AQI="}, 1]],
         'JSON Value: {\n    "b64": "AQI="\n} Type: Object is not of expected type: float'),
        ("encoded", [1], "JSON Value: 1 Type: Number is not of expected type: string"),
        ("encoded", [{"b64": 1}], 'JSON Value: {\n    "b64": 1\n} not formatted correctly for base64 data'),
        ("encoded", [{"b64": "AQI=", "x": 1}],
         'JSON Value: {\n    "b64": "AQI=",\n    "x": 1\n} not formatted correctly for base64 data'),
        ("encoded", [{"b64": "A"}], "Unable to base64 decode"),
        ("encoded", [{"b64": "AQ="}], "Unable to base64 decode"),
        ("encoded", [{"b64": "A-_B"}], "Unable to base64 decode"),
    ],
)  # fmt: skip
def test_a_value_of_another_type_is_refused(signature, value, message):
    _refused({"signature_name": signature, "inputs": value}, 400, message)
    if isinstance(value, list) and (rest_api.is_b64(value[0]) or not isinstance(value[0], dict)):
        # the row format wraps the message (an object not b64 would be an instance)
        wrapped = (
            f"Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: {message}"
        )
        _refused({"signature_name": signature, "instances": value}, 400, wrapped)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("uint32", -1, "JSON Value: -1 Type: Number is not of expected type: uint32"),
        (
            "int64",
            2**63,
            "JSON Value: 9223372036854775808 Type: Number is not of expected type: int64",
        ),
        ("bool", 0, "JSON Value: 0 Type: Number is not of expected type: bool"),
        ("double", "1", 'JSON Value: "1" Type: String is not of expected type: double'),
    ],
)
def test_integer_bool_and_double_types(name, value, message):
    inputs = {"int64": [1], "uint32": [1], "bool": [True], "double": [1]} | {name: [value]}
    _refused({"signature_name": "dtypes", "inputs": inputs}, 400, message)


def test_accepted_values_and_their_conversion():
    _, inputs = _inputs({"signature_name": "pixels", "inputs": [[[300, -1, 255]]]})
    assert inputs["images"].tolist() == [[[44, 255, 255]]]  # no range check: wraps as TF does
    _, inputs = _inputs('{"inputs": [[1, NaN], [-1e40, 0.1]]}')  # floats narrowed: -1e40 is -inf
    assert (
        inputs["x"].dtype == np.float32
        and np.isnan(inputs["x"][0, 1])
        and inputs["x"][1, 0] == -np.inf
    )
    values = {"int64": [2**62], "uint32": [2**32 - 1], "bool": [True, False], "double": [1, 0.5]}
    _, inputs = _inputs({"signature_name": "dtypes", "inputs": values})
    assert {k: v.tolist() for k, v in inputs.items()} == values
    assert [inputs[k].dtype for k in ("int64", "uint32", "bool", "double")] == [
        np.int64, np.uint32, np.bool_, np.float64
    ]  # fmt: skip
    _, inputs = _inputs({"signature_name": "encoded", "instances": [{"b64": " AQ\nI "}, "é"]})
    assert inputs["image_bytes"].tolist() == [b"\x01\x02", "é".encode()]


def test_a_dtype_json_cannot_give_is_unimplemented():
    message = "Conversion of JSON Value: 1 to type: half"
    _refused({"signature_name": "half", "inputs": [1]}, 501, message)
    _refused({"signature_name": "half", "instances": [1]}, 400,
             f"Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: {message}")  # fmt: skip


def test_debug_string_is_rapidjsons_pretty_print_cut_at_256_bytes():
    assert rest_api.debug_string({"a": [1, 2.5, "x\n\x01"], "b": {}, "c": {"d": None}}) == (
        '{\n    "a": [1, 2.5, "x\\n\\u0001"],\n    "b": {},\n    "c": {\n        "d": null\n    }\n}'
    )
    assert rest_api.debug_string([[{"k": False}]]) == '[[{\n            "k": false\n        }]]'
    assert rest_api.debug_string([1, NAN, 2]) == "[1, "  # rapidjson refuses to write NaN
    text = rest_api.debug_string(list(range(1000)))  # whole values, until 256 bytes are written
    assert text.startswith("[0, 1, 2,") and text[-1].isdigit()
    assert len(text[: text.rfind(",")]) < 256 <= len(text)


# -- F: the answer ----------------------------------------------------------------
def test_row_answers_drop_the_name_of_a_single_output():
    assert _Served().post({"instances": [[1, 2], [3, 4]]}) == (
        200, {"predictions": [[1.0, 2.0], [3.0, 4.0]]}
    )  # fmt: skip
    status, answer = _Served().post(
        {"signature_name": "pair", "instances": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}
    )
    assert (status, answer) == (200, {"predictions": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]})


def test_columnar_answers():
    assert _Served().post({"inputs": [[1, 2]]}) == (200, {"outputs": [[1.0, 2.0]]})
    status, answer = _Served().post({"signature_name": "pair", "inputs": {"a": [1], "b": ["x"]}})
    assert (status, answer) == (200, {"outputs": {"a": [1], "b": ["x"]}})


@pytest.mark.parametrize(
    "outputs, request_format, message",
    [
        ({}, "columnar", "Cannot convert empty tensor map to JSON"),
        ({"a": np.float32(1)}, "row", "Tensor name: a has no shape information "),
        ({"a": np.zeros(2), "b": np.zeros(3)}, "row", "Tensor name: b has inconsistent batch size: 3 expecting: 2"),
        ({"a": np.zeros(2, np.float16)}, "columnar", "Failed to write JSON value for tensor type: half"),
        ({"a": np.zeros(2, np.uint16)}, "row", "Failed to write JSON value for tensor type: uint16"),
    ],
)  # fmt: skip
def test_answers_tf_serving_cannot_write(outputs, request_format, message):
    with pytest.raises(RequestError, match=f"^{re.escape(message)}$") as raised:
        rest_api.make_json_from_tensors(outputs, request_format)
    assert raised.value.code == "INVALID_ARGUMENT"


def test_answer_values_as_tf_serving_writes_them():
    outputs = {
        "f": np.array([0.1, 1 / 3, 3.0, 1e-5, 9e6, np.nan, np.inf, -np.inf], np.float32),
        "d": np.array([0.1, 2.0]), "i": np.array([2**40, -1], np.int64),
        "u8": np.array([255, 0], np.uint8), "flag": np.array([True, False]),
        "label": np.array([b"caf\xc3\xa9", b"\xff"], object),
        "image_bytes": np.array([b"\x01\x02", b""], object),
    }  # fmt: skip
    values = rest_api.make_json_from_tensors(outputs, "columnar")["outputs"]
    assert values["f"][:5] == [0.1, 0.333333343, 3.0, 1e-05, 9e6]  # WriteDecimal: %g, else %.9g
    assert values["d"] == [0.1, 2.0] and values["i"] == [2**40, -1] and values["u8"] == [255, 0]
    assert values["flag"] == [True, False] and values["label"][0] == "café"
    assert values["image_bytes"] == [{"b64": "AQI="}, {"b64": ""}]
    served = _Served(answer=outputs)
    status, _, payload = served("POST", "/v1/models/m:predict", {"inputs": [[1, 2]]})
    assert status == 200 and b"NaN, Infinity, -Infinity]" in payload  # bare, as rapidjson writes
    assert b'"caf\xc3\xa9", "\xff"' in payload  # UTF-8 raw; bytes that are not UTF-8 too


# -- H: status and metadata ---------------------------------------------------------
def test_model_status():
    ok = {"model_version_status": [
        {"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]}  # fmt: skip
    for path in ("/v1/models/m", "/v1/models/m/versions/3", "/v1/models/m/labels/unknown"):
        status, _, payload = _Served()("GET", path)
        assert (status, json.loads(payload)) == (200, ok)
    for path, message in [
        ("/v1/models/x", "Could not find any versions of model x"),
        ("/v1/models/m/versions/4", "Could not find version 4 of model m"),
    ]:
        status, _, payload = _Served()("GET", path)
        assert (status, json.loads(payload)) == (404, {"error": message})


def test_metadata():
    served = _Served(labels={"stable": 3})
    for path in (
        "/v1/models/m/metadata",
        "/v1/models/m/versions/3/metadata",
        "/v1/models/m/labels/stable/metadata",
    ):
        status, _, payload = served("GET", path)
        answer = json.loads(payload)
        assert status == 200 and answer["model_spec"] == {
            "name": "m",
            "signature_name": "",
            "version": "3",
        }
    defs = answer["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == set(SIGNATURES)
    assert defs["pixels"]["inputs"]["images"] == {
        "dtype": "DT_UINT8", "name": "t:0",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "-1", "name": ""},
                                 {"size": "3", "name": ""}], "unknown_rank": False},
    }  # fmt: skip
    assert defs["table"]["inputs"]["dummy"]["tensor_shape"] == {"dim": [], "unknown_rank": True}
    assert defs["tiers"]["inputs"] == {} and defs["tiers"]["defaults"] == {}
    assert defs["tiers"]["method_name"] == "tensorflow/serving/predict"
    for path, status, message in [
        ("/v1/models/x/metadata", 404, "Servable not found for request: Latest(x)"),
        ("/v1/models/m/versions/2/metadata", 404, "Servable not found for request: Specific(m, 2)"),
        ("/v1/models/m/labels/x/metadata", 400, "Unrecognized servable version label: x"),
    ]:
        assert served("GET", path)[::2] == (status, json.dumps({"error": message}).encode())
