"""A stand-in for tensorflow_model_server: one model over gRPC and REST.

`ModelServer` loads a `pss_keras.testing.served_model.ServedModel` (as TF
Serving loads and warms up a SavedModel version) and serves it over TF
Serving's gRPC PredictionService (Predict, GetModelMetadata) and its REST
routes (``POST /v1/models/<name>:predict``, ``GET /v1/models/<name>/metadata``,
``GET /v1/models/<name>``), with TF Serving's status codes and messages for
an unknown model (NOT_FOUND / HTTP 404), an unknown signature (gRPC
FAILED_PRECONDITION; REST INVALID_ARGUMENT, HTTP 400) and bad inputs
(INVALID_ARGUMENT / HTTP 400).

It serves one model; it does not poll for new versions, batch requests or
run Classify / Regress. It imports no training module and reads no flags:
its command line is ``scripts/model_server.py``::

    python scripts/model_server.py --model_dir=saved_models/quickstart \\
        --model_name=quickstart --port=8500 --rest_api_port=8501 --threads=2

which prints the ports it serves on (useful with ``--port=0``) once the
model has loaded and warmed up (`ServeConfig`, `serve`). `serve_json` is
the same for a process started without the script
(``pss_keras.benchmarking.soak.ServerProcess``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pss_keras.testing.served_model import (
    DEFAULT_SIGNATURE,
    ModelRefused,
    RequestError,
    ServedModel,
    version_dir,
)


def standin_label(threads: int | None) -> str:
    """What serves the requests when the stand-in does, for benchmark tables."""
    return (
        f"stand-in (tf.compat.v1 Session), {f'{threads} threads' if threads else 'default threads'}"
    )


def free_port() -> int:
    """A localhost port that was free a moment ago, for servers that must be
    told their port up front (tensorflow_model_server's --port flags).

    The socket is closed before returning, so another process can take the
    port before the server binds it: callers must detect a failed bind and
    retry. `ModelServer` does not need this; it binds port 0.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How to serve one model (what the command line sets).

    Attributes:
        model_dir: a SavedModel version, or a base path (its latest version).
        model_name: the name requests use.
        host: the address to bind (``127.0.0.1``: this machine only).
        port: gRPC port (0: any free port).
        rest_api_port: REST port (0: any free port).
        threads: TensorFlow's intra- and inter-op threads for the session
            (None: TensorFlow's default, about one per core).
        request_workers: concurrent requests each protocol handles.
    """

    model_dir: str
    model_name: str
    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int = 8501
    threads: int | None = None
    request_workers: int = 16


class ModelServer:
    """Serves one `ServedModel` over gRPC and REST, as tensorflow_model_server.

    Args:
        model_dir: a SavedModel version, or a base path (its latest version).
        model_name: the name requests must use.
        threads: the session's intra- and inter-op threads (None: default).
        request_workers: concurrent requests each protocol handles.

    Raises:
        ModelRefused: as `ServedModel` (the model is loaded and warmed up
            here, before any port is opened).
    """

    def __init__(
        self,
        model_dir: str,
        model_name: str,
        threads: int | None = None,
        request_workers: int = 16,
    ):
        self.model_dir, self.version = version_dir(model_dir)
        self.model_name, self.request_workers = model_name, request_workers
        self.model = ServedModel(self.model_dir, threads)
        self.host = "127.0.0.1"
        self.grpc_port = self.rest_port = None  # bound by start()

    @property
    def label(self) -> str:
        """What serves the requests, for benchmark tables."""
        return standin_label(self.model.threads)

    # -- the shared request path -------------------------------------------
    def run(self, name: str, signature: str, inputs: dict) -> dict:
        if name != self.model_name:
            raise RequestError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        return self.model.predict(signature, inputs)

    # -- gRPC ----------------------------------------------------------------
    def _servicer(self):
        server = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (grpc's name)
                try:
                    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                    outputs = server.run(
                        request.model_spec.name, request.model_spec.signature_name, inputs
                    )
                except RequestError as e:
                    context.abort(getattr(grpc.StatusCode, e.code), str(e))
                except (TypeError, ValueError) as e:  # a TensorProto make_ndarray cannot read
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                response = predict_pb2.PredictResponse()
                response.model_spec.CopyFrom(request.model_spec)
                response.model_spec.signature_name = (
                    request.model_spec.signature_name or DEFAULT_SIGNATURE
                )
                if server.version is not None:
                    response.model_spec.version.value = server.version
                for k, v in outputs.items():
                    response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
                return response

            def GetModelMetadata(self, request, context):  # noqa: N802
                if request.model_spec.name != server.model_name:
                    context.abort(
                        grpc.StatusCode.NOT_FOUND,
                        f"Servable not found for request: Latest({request.model_spec.name})",
                    )
                fields = set(request.metadata_field)
                if fields - {"signature_def"}:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Metadata field {sorted(fields - {'signature_def'})[0]} is not supported",
                    )
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.CopyFrom(request.model_spec)
                if server.version is not None:
                    response.model_spec.version.value = server.version
                response.metadata["signature_def"].Pack(server.model.metadata())
                return response

        return Servicer()

    # -- REST ----------------------------------------------------------------
    def rest_metadata(self) -> dict:
        """``GET /v1/models/<name>/metadata`` as TF Serving answers it: the
        SignatureDefMap in proto3 JSON under ``metadata.signature_def``."""
        return {
            "model_spec": {
                "name": self.model_name,
                "signature_name": "",
                "version": str(self.version or ""),
            },
            "metadata": {
                "signature_def": json_format.MessageToDict(
                    self.model.metadata(), preserving_proto_field_name=True
                )
            },
        }

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

            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path == f"{prefix}/metadata":
                    self._send(200, server.rest_metadata())
                elif self.path == prefix:  # the model status route
                    version = str(server.version or "")
                    status = {"version": version, "state": "AVAILABLE"}
                    status["status"] = {"error_code": "OK", "error_message": ""}
                    self._send(200, {"model_version_status": [status]})
                else:
                    self._send(404, {"error": f"Servable not found for {self.path}"})

            def do_POST(self):  # noqa: N802
                if not self.path.startswith("/v1/models/") or not self.path.endswith(":predict"):
                    return self._send(400, {"error": f"Malformed request: POST {self.path}"})
                name = self.path[len("/v1/models/") : -len(":predict")]
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except ValueError as e:
                    return self._send(400, {"error": f"JSON Parse error: {e}"})
                try:
                    outputs = server.run(name, *_rest_request(server.model, body))
                except RequestError as e:
                    return self._send(404 if e.code == "NOT_FOUND" else 400, {"error": str(e)})
                self._send(200, {"outputs": _rest_outputs(outputs)})

        return Handler

    # -- lifecycle -----------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0, rest_api_port: int = 0):
        """Opens both ports (0: any free one, recorded in ``grpc_port`` and
        ``rest_port``, so no other process can take them in between) and
        serves in background threads until `stop`. Returns self.

        Raises:
            OSError: if a port cannot be bound.
        """
        self.host = host
        self._grpc = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self.request_workers)
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            self._servicer(), self._grpc
        )
        try:  # grpc returns the bound port, 0 if it failed (newer grpc raises)
            self.grpc_port = self._grpc.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            self.grpc_port = 0
        if not self.grpc_port:
            raise OSError(f"The stand-in could not bind gRPC to {host}:{port}.")
        self._grpc.start()
        try:
            self._http = _HTTPServer((host, rest_api_port), self._handler())
        except OSError:
            self._grpc.stop(None)
            raise
        self.rest_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._http_thread.start()
        return self

    def stop(self):
        self._grpc.stop(grace=1).wait()
        self._http.shutdown()
        self._http.server_close()
        self.model.close()

    @property
    def grpc_address(self):
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_address(self):
        return f"http://{self.host}:{self.rest_port}"


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection, and a listen backlog above the default 5,
    so that many clients connecting at once are queued, not refused."""

    daemon_threads = True
    request_queue_size = 64


def _rest_request(model: ServedModel, body: dict) -> tuple[str, dict]:
    """(signature, inputs) of a REST predict body, typed by the SignatureDef
    as TF Serving's JSON reader types them.

    Raises:
        RequestError: as TF Serving's REST API (an unknown signature is
            INVALID_ARGUMENT there, read before the request runs).
    """
    if not isinstance(body, dict):
        raise RequestError("INVALID_ARGUMENT", "JSON Value: not an object")
    signature = body.get("signature_name", "") or DEFAULT_SIGNATURE
    sig = model.signature_defs.get(signature)
    if sig is None:  # http_rest_api_handler.cc GetInfoMap
        raise RequestError(
            "INVALID_ARGUMENT", f'Serving signature name: "{signature}" not found in signature def'
        )
    raw = body.get("inputs", {})
    if not isinstance(raw, dict):  # one unnamed input: the signature's only one
        raw = {next(iter(sig.inputs), ""): raw}
    inputs = {}
    for alias, value in raw.items():
        try:
            array = np.asarray(value)
        except ValueError:  # numpy refuses ragged nesting
            raise RequestError(
                "INVALID_ARGUMENT", f"input {alias}: lists of unequal lengths (not a tensor)"
            ) from None
        dtype = model.input_dtypes[signature].get(alias)
        if dtype is None:
            inputs[alias] = array
            continue
        if array.size and array.dtype.kind == "f" and not dtype.is_floating:
            raise RequestError(  # util/json_tensor.cc TypeError
                "INVALID_ARGUMENT",
                f"JSON Value: {array.flat[0]} Type: Number is not of expected type: {dtype.name}",
            )
        try:
            inputs[alias] = array.astype(object if dtype == tf.string else dtype.as_numpy_dtype)
        except (TypeError, ValueError, OverflowError) as e:  # e.g. text for a uint8 input
            raise RequestError(
                "INVALID_ARGUMENT", f"input {alias} is not of expected type {dtype.name}: {e}"
            ) from None
    return signature, inputs


def _rest_outputs(outputs: dict) -> dict:
    """Arrays as JSON values (strings decoded, as TF Serving writes UTF-8)."""
    decoded = {}
    for k, v in outputs.items():
        if v.dtype == object:
            v = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(
                v
            )
        decoded[k] = v.tolist()
    return decoded


def serve(config: ServeConfig, ready=print) -> ModelServer:
    """Loads, warms up and starts serving ``config``'s model; returns the
    running server after ``ready`` was told where it listens.

    Raises:
        ModelRefused: as `ServedModel`.
        OSError: if a port cannot be bound.
    """
    server = ModelServer(
        config.model_dir, config.model_name, config.threads, config.request_workers
    )
    try:
        server.start(config.host, config.port, config.rest_api_port)
    except BaseException:
        server.model.close()
        raise
    ready(
        f"Serving {config.model_name} version {server.version} ({server.model_dir}; "
        f"{server.model.warmup_requests} warm-up requests replayed) with {server.label}"
    )
    ready(f"Running gRPC ModelServer at {server.grpc_address} ...")
    ready(f"Exporting HTTP/REST API at:{server.rest_address} ...")
    return server


def serve_until_stopped(config: ServeConfig) -> None:
    """Serves ``config``'s model until interrupted (Ctrl-C), printing where
    it listens as `serve` does; then stops the server.

    Raises:
        ModelRefused: as `ServedModel`.
        OSError: if a port cannot be bound.
    """
    server = serve(config, ready=lambda line: print(line, flush=True))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def serve_json(config_json: str) -> None:
    """The entry point of a stand-in process started without the script:
    ``python -c "from pss_keras.testing import model_server;
    model_server.serve_json(sys.argv[1])" '<ServeConfig as JSON>'``.

    Exits with ``error: <reason>`` on stderr if the model is refused or a
    port is taken, as ``scripts/model_server.py`` does.
    """
    config = ServeConfig(**json.loads(config_json))
    try:
        serve_until_stopped(config)
    except (ModelRefused, OSError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
