"""A stand-in for tensorflow_model_server, for tests on machines without it.

Serves one exported SavedModel version over TF Serving's gRPC
PredictionService (Predict, GetModelMetadata) and its REST routes
(``POST /v1/models/<name>:predict``, ``GET /v1/models/<name>/metadata``),
with TF Serving's status codes and messages for an unknown model (NOT_FOUND /
HTTP 404), an unknown signature (gRPC FAILED_PRECONDITION; REST
INVALID_ARGUMENT, HTTP 400) and bad inputs (INVALID_ARGUMENT / HTTP 400).
`start()` binds both servers to port 0 on 127.0.0.1 and records the ports
the OS gave them (no pick-then-rebind race); they run in background threads
until `stop()`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def free_port() -> int:
    """A localhost port that was free a moment ago, for servers that must be
    told their port up front (tensorflow_model_server's --port flags).

    The socket is closed before returning, so another process can take the
    port before the server binds it: callers must detect a failed bind and
    retry. The stand-in `ModelServer` does not use this; it binds port 0.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BadRequest(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class ModelServer:
    def __init__(self, model_dir: str, model_name: str):
        self.model_dir, self.model_name = model_dir, model_name
        self.model = tf.saved_model.load(model_dir)
        self.signatures = dict(self.model.signatures)
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        self.signature_defs = {
            k: v for k, v in proto.meta_graphs[0].signature_def.items() if not k.startswith("__")
        }
        self.grpc_port = self.rest_port = None  # bound by start()

    # -- the shared request path -------------------------------------------
    def run(self, name: str, signature: str, inputs: dict) -> dict:
        if name != self.model_name:
            raise BadRequest("NOT_FOUND", f"Servable not found for request: Latest({name})")
        signature = signature or "serving_default"
        if signature not in self.signatures:
            raise BadRequest(
                "FAILED_PRECONDITION", f'Serving signature key "{signature}" not found.'
            )
        fn = self.signatures[signature]
        specs = fn.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise BadRequest(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(inputs)}!={len(specs)} "
                f"len({sorted(inputs)}) != len({sorted(specs)})",
            )
        for key, spec in specs.items():
            value = inputs[key]
            if value.dtype != spec.dtype.as_numpy_dtype:
                raise BadRequest(
                    "INVALID_ARGUMENT",
                    f"Expects arg[0] to be {spec.dtype.name} but {value.dtype} is provided",
                )
            if not spec.shape.is_compatible_with(value.shape):
                raise BadRequest(
                    "INVALID_ARGUMENT",
                    f"input {key} has shape {list(value.shape)}, the signature expects {spec.shape}",
                )
        try:
            outputs = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.InvalidArgumentError as e:
            raise BadRequest("INVALID_ARGUMENT", e.message) from None
        return {k: v.numpy() for k, v in outputs.items()}

    # -- gRPC ----------------------------------------------------------------
    def _servicer(self):
        server = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                try:
                    outputs = server.run(
                        request.model_spec.name, request.model_spec.signature_name, inputs
                    )
                except BadRequest as e:
                    context.abort(getattr(grpc.StatusCode, e.code), str(e))
                response = predict_pb2.PredictResponse()
                response.model_spec.CopyFrom(request.model_spec)
                for k, v in outputs.items():
                    response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
                return response

            def GetModelMetadata(self, request, context):
                if request.model_spec.name != server.model_name:
                    context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found")
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.CopyFrom(request.model_spec)
                defs = get_model_metadata_pb2.SignatureDefMap()
                for k, v in server.signature_defs.items():
                    defs.signature_def[k].CopyFrom(v)
                response.metadata["signature_def"].Pack(defs)
                return response

        return Servicer()

    # -- REST ----------------------------------------------------------------
    def _handler(self):
        server = self
        prefix = f"/v1/models/{self.model_name}"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == f"{prefix}/metadata":
                    defs = {
                        k: {
                            "inputs": {
                                i: tf.dtypes.as_dtype(t.dtype).name for i, t in v.inputs.items()
                            },
                            "outputs": {
                                o: tf.dtypes.as_dtype(t.dtype).name for o, t in v.outputs.items()
                            },
                        }
                        for k, v in server.signature_defs.items()
                    }
                    self._send(
                        200,
                        {
                            "model_spec": {"name": server.model_name},
                            "metadata": {"signature_def": defs},
                        },
                    )
                else:
                    self._send(404, {"error": f"Servable not found for {self.path}"})

            def do_POST(self):
                if not self.path.startswith("/v1/models/") or not self.path.endswith(":predict"):
                    return self._send(400, {"error": f"Malformed request: POST {self.path}"})
                name = self.path[len("/v1/models/") : -len(":predict")]
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except ValueError as e:
                    return self._send(400, {"error": f"JSON Parse error: {e}"})
                signature = body.get("signature_name", "")
                raw = body.get("inputs", {})
                try:
                    if name != server.model_name:
                        raise BadRequest(
                            "NOT_FOUND", f"Servable not found for request: Latest({name})"
                        )
                    fn = server.signatures.get(signature or "serving_default")
                    if fn is None:  # REST reads the signature's inputs first (GetInfoMap)
                        raise BadRequest(
                            "INVALID_ARGUMENT",
                            f'Serving signature name: "{signature or "serving_default"}" '
                            "not found in signature def",
                        )
                    specs = fn.structured_input_signature[1]
                    inputs = {}
                    for k, v in raw.items():
                        dtype = specs[k].dtype.as_numpy_dtype if k in specs else None
                        array = np.asarray(v)
                        if (
                            dtype is not None
                            and array.dtype.kind == "f"
                            and np.dtype(dtype).kind != "f"
                        ):
                            raise BadRequest(  # util/json_tensor.cc TypeError
                                "INVALID_ARGUMENT",
                                f"JSON Value: {array.flat[0]} Type: Number is not of expected "
                                f"type: {np.dtype(dtype).name}",
                            )
                        inputs[k] = array.astype(dtype) if dtype is not None else array
                    outputs = server.run(name, signature, inputs)
                except BadRequest as e:
                    return self._send(404 if e.code == "NOT_FOUND" else 400, {"error": str(e)})
                decoded = {
                    k: np.vectorize(
                        lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object]
                    )(v).tolist()
                    if v.dtype == object
                    else v.tolist()
                    for k, v in outputs.items()
                }
                self._send(200, {"outputs": decoded})

        return Handler

    # -- lifecycle -----------------------------------------------------------
    def start(self):
        self._grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            self._servicer(), self._grpc
        )
        # Port 0: the OS picks a free port and grpc returns it (0 if it failed).
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        if not self.grpc_port:
            raise RuntimeError("The stand-in gRPC server could not bind a localhost port.")
        self._grpc.start()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.rest_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._http_thread.start()
        return self

    def stop(self):
        self._grpc.stop(grace=1).wait()
        self._http.shutdown()
        self._http.server_close()

    @property
    def grpc_address(self):
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_address(self):
        return f"http://127.0.0.1:{self.rest_port}"
