"""TF Serving's REST API as pure functions, for the stand-in model server.

`route` reads a path, `resolve_version` finds the version of a `Servable`,
`fill_predict_request` reads a predict body, `make_json_from_tensors` writes
the answer, `model_status` and `metadata` answer the GETs, `HTTP_STATUS` maps
an error's code (`pss_keras.testing.model_server.rest_response` puts them together).
Comments cite TF Serving (commit 9d981c5c27): JT util/json_tensor.cc,
H model_servers/http_rest_api_handler.cc, U model_servers/http_rest_api_util.cc.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2 as t
from tensorflow_serving.apis import get_model_metadata_pb2

from pss_keras.testing.served_model import DEFAULT_SIGNATURE, RequestError, type_string

# model_servers/http_server.cc ToHTTPStatusCode (any other code: 500).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}  # fmt: skip
# TF Serving's messages, where they come from.
_M = {
    "version": "Failed to convert version: {} to numeric.",  # U ParseModelInfo
    "level": "JSON Value: {} found at incorrect level: {} in the JSON DOM. Expected at level: {}",  # JT FillTensorProto
    "deeper": "Encountered list at unexpected level: {} expected < {}",
    "size": "Encountered list at unexpected size: {} at level: {} expected size: {}",
    "type": "JSON Value: {} Type: {} is not of expected type: {}",  # JT TypeError
    "b64": "JSON Value: {} not formatted correctly for base64 data",  # JT Base64FormatError
    "dtype": "Conversion of JSON Value: {} to type: {}",  # JT AddValueToTensor
    "plain": "instances is a plain list, but expecting list of objects as multiple input tensors required as per tensorinfo_map",  # JT FillTensorMapFromInstancesList
    "keys": "Failed to process element: {} of 'instances' list. JSON object: {} keys must be equal to: {}",
    "element": "Failed to process element: {} of 'instances' list. Error: {}: {}",
    "one_input": "inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map",  # JT FillTensorMapFromInputsMap
    "signature_name": "not formatted correctly. 'signature_name' key must be a string value.",  # JT FormatSignatureError
    "both": "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",  # JT FillPredictRequestFromJson
    "batch": "Tensor name: {} has inconsistent batch size: {} expecting: {}",  # JT MakeRowFormatJsonFromTensors
}  # fmt: skip
# U kHTTPRestApiHandlerPathRegex (.h), kPredictionApiGegex, kModelStatusApiRegex.
_V = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
HANDLED, _POST, _GET = (
    re.compile(p, re.I | re.A)
    for p in (r"/v1/.*", rf"/v1/models/([^/:]+){_V}:(classify|regress|predict)",
              rf"/v1/models(?:/([^/:]+))?{_V}(?:\/(metadata))?")
)  # fmt: skip
# JT AddValueToTensor: the JSON types of each dtype; ranges of rapidjson's IsInt, IsInt64, IsUint...
_RANGES = {d: (-(2**31), 2**31) for d in (t.DT_INT32, t.DT_INT16, t.DT_INT8, t.DT_UINT8)}
_RANGES.update({t.DT_INT64: (-(2**63), 2**63), t.DT_UINT32: (0, 2**32), t.DT_UINT64: (0, 2**64)})
_TYPES = {t.DT_FLOAT: {int, float}, t.DT_DOUBLE: {int, float}, t.DT_BOOL: {bool}}
_TYPES.update({d: {int} for d in _RANGES})
_WRITABLE = "float32 float64 int32 int16 int8 uint8 int64 bool uint32 uint64".split()
_KINDS = {dict: "Object", list: "Array", str: "String", type(None): "Null", bool: ""}
_ESCAPES = {i: f"\\u{i:04X}" for i in range(32)}  # rapidjson Writer::WriteString
_ESCAPES.update({8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r", 34: '\\"', 92: "\\\\"})
# Python's json messages as rapidjson's GetParseError_En words them (JT ParseJson).
_PARSE_ERRORS = {
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Expecting ',' delimiter": "Missing a comma or '}' after an object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
    "The document is empty.": "The document is empty.",
}
Route = collections.namedtuple("Route", "name version label verb")  # verb: predict, ..., status


class UnreportedError(RequestError):
    """An error TF Serving returns before writing its JSON (U ParseModelInfo): empty body."""


@dataclasses.dataclass(frozen=True)
class Servable:
    """The model served: ``name``, ``version`` (None: no number), ``signature_defs``, ``predict``
    (`ServedModel.predict`), ``version_labels`` ``{label: version}``."""

    name: str
    version: int | None
    signature_defs: Mapping
    predict: Callable[[str, dict], dict]
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _error(message: str, code: str = "INVALID_ARGUMENT") -> RequestError:
    return RequestError(code, message)


def route(method: str, path: str) -> Route:
    """The `Route` of a request to a path under /v1/ (U ParseModelInfo). Raises
    `RequestError` ``Malformed request: <METHOD> <path>``, or `UnreportedError`."""
    match = {"POST": _POST, "GET": _GET}.get(method, re.compile("(?!)")).fullmatch(path)
    name, version, label, verb = match.groups() if match else (None,) * 4
    if version and int(version) >= 2**63:  # absl::SimpleAtoi
        raise UnreportedError("INVALID_ARGUMENT", _M["version"].format(version))
    if not match or (method == "POST" and verb not in ("classify", "regress", "predict")):
        raise _error(f"Malformed request: {method} {path}")  # (?i) lets PREDICT match, not run
    verb = verb if method == "POST" else "metadata" if verb == "metadata" else "status"
    return Route(name or "", version and int(version), label, verb)


def resolve_version(servable: Servable, name: str, version=None, label=None) -> int | None:
    """The version serving a request for ``name`` (and ``version`` or ``label``). Raises
    `RequestError`: INVALID_ARGUMENT for no name or an unknown label (model_servers/
    server_core.cc ServableRequestFromModelSpec, GetModelVersionForLabel), NOT_FOUND for
    another model or version (core/manager.h ServableRequest::DebugString)."""
    if not name:
        raise _error("ModelSpec has no name specified.")
    if label is not None:
        labels = servable.version_labels if name == servable.name else {}
        if label not in labels:
            raise _error(f"Unrecognized servable version label: {label}")
        version = labels[label]
    if version is None and name != servable.name:
        raise _error(f"Servable not found for request: Latest({name})", "NOT_FOUND")
    if version is not None and (name != servable.name or version != servable.version):
        raise _error(f"Servable not found for request: Specific({name}, {version})", "NOT_FOUND")
    return servable.version


def _events(value, prefix: str, depth: int):
    """(text, written) of each call rapidjson's PrettyWriter gets (arrays on one line)."""
    if isinstance(value, list):
        yield prefix + "[", True
        for i, item in enumerate(value):
            yield from _events(item, ", " if i else "", depth + 1)
        yield "]", True
    elif isinstance(value, dict):
        yield prefix + "{", True
        for i, (key, item) in enumerate(value.items()):
            yield f'{"," if i else ""}\n{" " * 4 * (depth + 1)}"{key.translate(_ESCAPES)}"', True
            yield from _events(item, ": ", depth + 1)
        yield ("\n" + " " * 4 * depth if value else "") + "}", True
    elif isinstance(value, str):
        yield f'{prefix}"{value.translate(_ESCAPES)}"', True
    else:  # NaN and Infinity: rapidjson writes the prefix, then refuses
        written = not isinstance(value, float) or math.isfinite(value)
        yield prefix + (json.dumps(value) if written else ""), written


def debug_string(value) -> str:
    """JT JsonValueToDebugString: a JSON value as TF Serving's messages print
    it (pretty, arrays on one line), cut once 256 bytes are written."""
    out, size = [], 0
    for text, written in _events(value, "", 0):
        if size >= 256:
            break
        out.append(text)
        size += len(text.encode("utf-8", "surrogateescape"))
        if not written:
            break
    return "".join(out)


def parse_json(body: bytes) -> dict:
    """JT ParseJson: the request document (NaN, Infinity accepted; what follows the
    first value ignored). Raises `RequestError` ``JSON Parse error: <rapidjson's words>
    at offset: <n>`` or ``JSON Value: <doc> Is not object``."""
    if not body:
        raise _error("JSON Parse error: The document is empty")
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        if start == len(text):
            raise json.JSONDecodeError("The document is empty.", text, start)
        doc = json.JSONDecoder().raw_decode(text, start)[0]
    except json.JSONDecodeError as e:
        message, pos, brackets = _PARSE_ERRORS.get(e.msg, "Invalid value."), e.pos, [""]
        for ch in re.sub(r'"(?:\\.|[^"\\])*"', "", text[:pos]):  # the innermost open bracket
            brackets.append(ch) if ch in "[{" else brackets.pop() if ch in "]}" else None
        if e.msg == "Expecting ',' delimiter" and brackets[-1] == "[":
            message = "Missing a comma or ']' after an array element."
        pos = len(text) if e.msg[:5] == "Unter" else pos - e.msg.startswith("Invalid \\u")
        offset = len(text[:pos].encode("utf-8", "surrogateescape"))  # rapidjson counts bytes
        raise _error(f"JSON Parse error: {message} at offset: {offset}") from None
    if not isinstance(doc, dict):
        raise _error(f"JSON Value: {debug_string(doc)} Is not object")  # JT FormatError
    return doc


def is_b64(value) -> bool:
    """JT IsValBase64Object: ``{"b64": "<string>"}``, nothing else."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf(value, dtype: int):
    """A JSON value that is not a list as DataType ``dtype`` takes it, strings as bytes
    (JT FillTensorProto, AddValueToTensor, JsonDecodeBase64Object)."""
    if isinstance(value, dict) and dtype == t.DT_STRING:
        if not is_b64(value):
            raise _error(_M["b64"].format(debug_string(value)))
        text = re.sub(r"[ \t\n\v\f\r]", "", value["b64"])  # absl::Base64Unescape
        data = text.rstrip("=.")
        padding, missing = len(text) - len(data), -len(data) % 4
        if len(data) % 4 == 1 or padding not in (0, missing) or re.search("[^A-Za-z0-9+/]", data):
            raise _error("Unable to base64 decode")
        return base64.b64decode(data + "=" * missing)
    if dtype == t.DT_STRING and isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if dtype not in _TYPES and dtype != t.DT_STRING and not isinstance(value, dict):
        raise _error(_M["dtype"].format(debug_string(value), type_string(dtype)), "UNIMPLEMENTED")
    low, high = _RANGES.get(dtype, (0, 0))
    if type(value) not in _TYPES.get(dtype, ()) or (dtype in _RANGES and not low <= value < high):
        kind = _KINDS.get(type(value), "Number") or str(value)
        raise _error(_M["type"].format(debug_string(value), kind, type_string(dtype)))
    return value


def tensor_from_json(value, dtype: int) -> np.ndarray:
    """A JSON value as a tensor of DataType ``dtype`` (strings: object array of bytes),
    as JT fills a TensorProto and TF reads it: the shape from each level's first
    element, ints wrapped (300 -> uint8 44). Raises `RequestError` as TF Serving."""
    low, high = _RANGES.get(dtype, (0, 0))
    array = np.asarray(value, dtype=object)
    if (
        dtype not in _TYPES
        or not set(map(type, array.flat)) <= _TYPES[dtype]
        or (array.size and dtype in _RANGES and not low <= array.min() <= array.max() < high)
    ):  # not a regular nesting of the right types: the exact way (JT FillTensorProto)
        shape, values, first = [], [], value
        while isinstance(first, list):  # JT GetDenseTensorShape
            shape, first = shape + [len(first)], first[0] if first else None

        def fill(item, level: int):
            if not isinstance(item, list) and level != len(shape):
                raise _error(_M["level"].format(debug_string(item), level + 1, len(shape)))
            if not isinstance(item, list):
                return values.append(_leaf(item, dtype))
            if level >= len(shape):
                raise _error(_M["deeper"].format(level, len(shape)))
            if len(item) != shape[level]:
                raise _error(_M["size"].format(len(item), level, shape[level]))
            for element in item:
                fill(element, level + 1)

        fill(value, 0)
        array = np.empty(len(values), object)
        array[:] = values
        array = array.reshape(shape)
    numpy_dtype = tf.dtypes.as_dtype(dtype).as_numpy_dtype
    if numpy_dtype is object:
        return array
    wide = np.uint64 if dtype == t.DT_UINT64 else np.int64 if dtype in _RANGES else np.float64
    with np.errstate(over="ignore"):
        return array.astype(wide).astype(numpy_dtype)


def _from_instances(instances: list, info_map) -> dict:
    """JT FillTensorMapFromInstancesList: ``[{alias: value}, ...]`` or (one
    input) ``[value, ...]``, batched; each instance's tensor of the first
    one's size and shape (JT AddInstanceItem)."""
    if not isinstance(instances[0], dict) and len(info_map) > 1:
        raise _error(_M["plain"])
    is_object = lambda v: isinstance(v, dict) and not is_b64(v)  # noqa: E731
    objects, names, columns = is_object(instances[0]), sorted(info_map), {}
    for i, item in enumerate(instances):
        if objects != is_object(item):
            expected = "object but got list" if objects else "value/list but got object"
            raise _error(f"Expecting {expected} at item {i} of input list")
        for name, value in item.items() if objects else [(next(iter(info_map)), item)]:
            try:
                if name not in info_map:
                    raise _error(f"JSON object: does not have named input: {name}")
                array = tensor_from_json(value, info_map[name].dtype)
                first = columns.setdefault(name, [array])[0]
                if first.size != array.size:
                    raise _error(f"Expecting tensor size: {first.size} but got: {array.size}")
                if first.shape != array.shape:
                    shapes = ("[" + ",".join(map(str, a.shape)) + "]" for a in (first, array))
                    raise _error("Expecting shape {} but got: {}".format(*shapes))
                columns[name] += [array] if array is not first else []
            except RequestError as e:  # absl::Status::ToString: "<CODE>: <message>"
                where = f"{i} key: {name}" if objects else i
                raise _error(_M["element"].format(where, e.code, e)) from None
        if objects and sorted(item) != names:
            raise _error(_M["keys"].format(i, debug_string(item), ",".join(names)))
    return {name: np.stack(arrays) for name, arrays in columns.items()}


def get_info_map(signature_defs: Mapping, signature_name: str):
    """H GetInfoMap: a signature's inputs ``{alias: TensorInfo}`` (no name:
    serving_default). Raises `RequestError` for an unknown signature."""
    name = signature_name or DEFAULT_SIGNATURE
    if name not in signature_defs:
        raise _error(f'Serving signature name: "{name}" not found in signature def')
    return signature_defs[name].inputs


def fill_predict_request(body: bytes, info_map: Callable[[str], Mapping]) -> tuple:
    """A predict body read as TF Serving reads it (JT FillPredictRequestFromJson;
    columnar: FillTensorMapFromInputsMap): (signature name, ``{alias: array}``,
    "row" or "columnar"). ``info_map(signature_name)`` gives the signature's inputs
    once the servable is found (`get_info_map`). Raises `RequestError` as TF Serving."""
    doc = parse_json(body)
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise _error(f"JSON Value: {debug_string(doc)} {_M['signature_name']}")
    inputs, name = info_map(signature), signature or DEFAULT_SIGNATURE
    if not inputs:
        raise _error(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    if "instances" in doc and "inputs" in doc:
        raise _error(f"JSON Value: {debug_string(doc)} {_M['both']}")
    if "instances" in doc:
        if not isinstance(doc["instances"], list):
            raise _error(
                f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array"
            )
        if not doc["instances"]:
            raise _error(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return name, _from_instances(doc["instances"], inputs), "row"
    if "inputs" not in doc:
        raise _error("Missing 'inputs' or 'instances' key")
    columns = doc["inputs"]
    if not isinstance(columns, dict) or is_b64(columns):  # a bare value: for one input only
        if len(inputs) > 1:
            raise _error(_M["one_input"])
        columns = {next(iter(inputs)): columns}
    for alias in sorted(set(inputs) - set(columns)):  # other keys are ignored
        raise _error(f"Missing named input: {alias} in 'inputs' object.")
    tensors = {a: tensor_from_json(columns[a], inputs[a].dtype) for a in sorted(inputs)}
    return name, tensors, "columnar"


def _json_values(alias: str, array: np.ndarray):
    """JT AddTensorValues: a tensor as JSON values; strings as text, or ``{"b64": ...}``
    if the alias ends in ``_bytes``. Raises `RequestError` for a dtype JSON cannot hold."""
    if array.dtype == object:
        if alias.endswith("_bytes"):  # JT IsNamedTensorBytes
            write = lambda b: {"b64": base64.b64encode(b).decode()}  # noqa: E731
        else:
            write = lambda b: b.decode("utf-8", "surrogateescape")  # noqa: E731
        return np.vectorize(write, otypes=[object])(array).tolist()
    if array.dtype == np.float32:  # JT WriteDecimal: 6 significant digits if they read back, else 9
        flat = array.ravel().tolist()
        six = np.array([float(f"{x:.6g}") for x in flat])
        with np.errstate(over="ignore"):
            for i in np.flatnonzero(six.astype(np.float32) != array.ravel()):
                six[i] = float(f"{flat[i]:.9g}")
        return six.reshape(array.shape).tolist()
    if array.size and array.dtype.name not in _WRITABLE:
        raise _error(f"Failed to write JSON value for tensor type: {type_string(array.dtype)}")
    return array.tolist()


def make_json_from_tensors(outputs: Mapping, request_format: str) -> dict:
    """JT MakeJsonFromTensors: ``{"predictions": [value or {alias: value}, ...]}``
    (row format, one per batch row) or ``{"outputs": value or {alias: value}}``.
    Raises `RequestError` for no outputs, a rank-0 or unequal batch (rows), a dtype."""
    if not outputs:
        raise _error("Cannot convert empty tensor map to JSON")
    arrays, batch = {alias: np.asarray(value) for alias, value in outputs.items()}, None
    for alias, array in arrays.items() if request_format == "row" else ():
        if array.ndim == 0:
            raise _error(f"Tensor name: {alias} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise _error(_M["batch"].format(alias, array.shape[0], batch))
        batch = array.shape[0]
    values = {alias: _json_values(alias, array) for alias, array in arrays.items()}
    one = next(iter(values.values())) if len(values) == 1 else None
    if batch is None:
        return {"outputs": values if one is None else one}
    rows = [{alias: values[alias][i] for alias in values} for i in range(batch)]
    return {"predictions": rows if one is None else one}


def model_status(servable: Servable, name: str, version: int | None) -> dict:
    """GET /v1/models/<name>[/versions/<v>] (model_servers/get_model_status_impl.cc;
    a label is ignored). Raises `RequestError` NOT_FOUND for another model or version."""
    if version is not None and (name != servable.name or version != servable.version):
        raise _error(f"Could not find version {version} of model {name}", "NOT_FOUND")
    if name != servable.name:
        raise _error(f"Could not find any versions of model {name}", "NOT_FOUND")
    entry = {"version": str(servable.version or ""), "state": "AVAILABLE"}
    return {"model_version_status": [entry | {"status": {"error_code": "OK", "error_message": ""}}]}


def metadata(servable: Servable, name: str, version=None, label=None) -> dict:
    """GET .../metadata: the model spec and SignatureDefMap as protobuf JSON, every field
    printed (U ToJsonString; get_model_metadata_impl.cc). Raises as `resolve_version`."""
    resolve_version(servable, name, version, label)
    defs = get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs)
    spec = {"name": servable.name, "signature_name": "", "version": str(servable.version or "")}
    signature_def = json_format.MessageToDict(
        defs, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    return {"model_spec": spec, "metadata": {"signature_def": signature_def}}
