"""A stand-in for tensorflow_model_server: one model over gRPC and REST.

`ModelServer` loads a `pss_keras.testing.served_model.ServedModel` (as TF
Serving loads and warms up a SavedModel version) and serves it over TF
Serving's gRPC PredictionService (Predict, GetModelMetadata) and its REST
routes (``POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict``, ``GET
/v1/models/<name>[/versions/<v>|/labels/<l>][/metadata]``), with TF Serving's
status codes and messages (`pss_keras.testing.rest_api` is the REST side;
docs/tf_serving_behaviour.md lists each behaviour).

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
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pss_keras.testing import rest_api
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
        version_labels: ``{label: version}`` (TF Serving's model_config
            version_labels; each must name the served version).
    """

    model_dir: str
    model_name: str
    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int = 8501
    threads: int | None = None
    request_workers: int = 16
    version_labels: dict | None = None


class ModelServer:
    """Serves one `ServedModel` over gRPC and REST, as tensorflow_model_server.

    Args:
        model_dir: a SavedModel version, or a base path (its latest version).
        model_name: the name requests must use.
        threads: the session's intra- and inter-op threads (None: default).
        request_workers: concurrent requests each protocol handles.
        version_labels: ``{label: version}``, as TF Serving's model_config
            version_labels.

    Raises:
        ModelRefused: as `ServedModel` (the model is loaded and warmed up
            here, before any port is opened), or for a label naming another
            version than the one served (TF Serving refuses that config).
    """

    def __init__(
        self,
        model_dir: str,
        model_name: str,
        threads: int | None = None,
        request_workers: int = 16,
        version_labels: dict | None = None,
    ):
        self.model_dir, self.version = version_dir(model_dir)
        self.model_name, self.request_workers = model_name, request_workers
        for version in (version_labels or {}).values():
            if version != self.version:  # model_servers/server_core.cc UpdateModelVersionLabelMap
                raise ModelRefused(
                    f"Request to assign label to version {version} of model {model_name}, which "
                    "is not currently available for inference"
                )
        self.model = ServedModel(self.model_dir, threads)
        self.servable = rest_api.Servable(
            model_name, self.version, self.model.all_signature_defs, self.model.predict,
            dict(version_labels or {}),
        )  # fmt: skip
        self.host = "127.0.0.1"
        self.grpc_port = self.rest_port = None  # bound by start()

    @property
    def label(self) -> str:
        """What serves the requests, for benchmark tables."""
        return standin_label(self.model.threads)

    # -- gRPC ----------------------------------------------------------------
    def _resolve(self, request) -> int | None:
        """The version a gRPC request's model_spec finds (`rest_api.resolve_version`).

        Raises:
            RequestError: INVALID_ARGUMENT ``Missing ModelSpec`` (TF Serving's
                predict_impl.cc, get_model_metadata_impl.cc), or as resolve_version.
        """
        if not request.HasField("model_spec"):
            raise RequestError("INVALID_ARGUMENT", "Missing ModelSpec")
        spec, choice = request.model_spec, request.model_spec.WhichOneof("version_choice")
        version = spec.version.value if choice == "version" else None
        label = spec.version_label if choice == "version_label" else None
        return rest_api.resolve_version(self.servable, spec.name, version, label)

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """gRPC Predict (servables/tensorflow/predict_impl.cc, predict_util.cc).

        Raises:
            RequestError: as `_resolve` and `ServedModel.predict`.
        """
        version = self._resolve(request)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        outputs = self.model.predict(signature, dict(request.inputs), request.output_filter)
        response = predict_pb2.PredictResponse()  # util.cc MakeModelSpec
        response.model_spec.name, response.model_spec.signature_name = self.model_name, signature
        if version is not None:
            response.model_spec.version.value = version
        for k, v in outputs.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """gRPC GetModelMetadata (servables/tensorflow/get_model_metadata_impl.cc).

        Raises:
            RequestError: INVALID_ARGUMENT for no or another metadata field, as `_resolve`.
        """
        if not request.HasField("model_spec"):
            raise RequestError("INVALID_ARGUMENT", "Missing ModelSpec")
        if not request.metadata_field:
            message = "GetModelMetadataRequest must specify at least one metadata_field"
            raise RequestError("INVALID_ARGUMENT", message)
        for field in request.metadata_field:
            if field != "signature_def":
                raise RequestError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
        version = self._resolve(request)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.model_name
        if version is not None:
            response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(self.model.metadata())
        return response

    def _servicer(self):
        server = self

        def call(method, request, context):
            try:
                return method(request)
            except RequestError as e:  # model_servers/grpc_status_util.cc ToGRPCStatus
                message = str(e).encode()
                message = message if len(message) <= 1024 else message[:1024] + b"...TRUNCATED"
                context.abort(getattr(grpc.StatusCode, e.code), message.decode(errors="replace"))

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (grpc's name)
                return call(server.predict, request, context)

            def GetModelMetadata(self, request, context):  # noqa: N802
                return call(server.metadata, request, context)

        return Servicer()

    # -- REST ----------------------------------------------------------------
    def _handler(self):
        servable = self.servable

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.encode("latin-1").decode("utf-8", "surrogateescape")
                origin = self.headers.get("Origin")
                try:  # a fault of the stand-in is answered, not a dropped connection
                    answer = rest_response(self.command, path, body, servable, origin)
                except Exception as e:
                    answer = 500, "application/json", json.dumps({"error": repr(e)}).encode()
                status, content_type, payload = answer
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve  # noqa: N815

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


# libevent's evhttp_send_error page (util/net_http/server/internal/evhttp_server.cc).
_NOT_FOUND_PAGE = b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"


def rest_response(method: str, path: str, body: bytes, servable, origin=None) -> tuple:
    """One HTTP request answered as TF Serving's REST server answers it
    (model_servers/http_server.cc RestApiRequestDispatcher; http_rest_api_handler.cc
    ProcessRequest), by `pss_keras.testing.rest_api`'s parts.

    Args:
        method, path, body: the request (``path`` as sent, query included).
        servable: the `rest_api.Servable` served.
        origin: the Origin header (a CORS preflight, OPTIONS, needs http(s)://).

    Returns:
        (HTTP status, content type or "", body): JSON with raw UTF-8 and bare NaN as
        rapidjson writes it; ``{"error": message}`` for an error (json_tensor.cc
        MakeJsonFromStatus). A path outside /v1/ gets libevent's 404 page.
    """
    if not rest_api.HANDLED.fullmatch(path):
        return 404, "text/html", _NOT_FOUND_PAGE
    if method == "OPTIONS":  # empty, no header; FAILED_PRECONDITION (400) without an http(s) Origin
        return (200 if re.search("https?://", origin or "") else 400), "", b""
    try:
        request, status = rest_api.route(method, path), 200
        if request.verb in ("status", "metadata") and not request.name:
            raise RequestError("INVALID_ARGUMENT", "Missing model name in request.")
        if request.verb == "status":
            answer = rest_api.model_status(servable, request.name, request.version)
        elif request.verb == "metadata":
            answer = rest_api.metadata(servable, *request[:3])
        elif request.verb != "predict":
            raise RequestError("UNIMPLEMENTED", f"The stand-in does not run {request.verb}.")
        else:  # the servable is looked up once the JSON is read (ProcessPredictRequest)

            def info_map(signature_name: str):
                rest_api.resolve_version(servable, *request[:3])
                return rest_api.get_info_map(servable.signature_defs, signature_name)

            signature, inputs, form = rest_api.fill_predict_request(body, info_map)
            answer = rest_api.make_json_from_tensors(servable.predict(signature, inputs), form)
    except rest_api.UnreportedError as e:
        return rest_api.HTTP_STATUS[e.code], "application/json", b""
    except RequestError as e:
        answer, status = {"error": str(e)}, rest_api.HTTP_STATUS.get(e.code, 500)
    payload = json.dumps(answer, ensure_ascii=False).encode("utf-8", "surrogateescape")
    return status, "application/json", payload


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection, and a listen backlog above the default 5,
    so that many clients connecting at once are queued, not refused."""

    daemon_threads = True
    request_queue_size = 64


def serve(config: ServeConfig, ready=print) -> ModelServer:
    """Loads, warms up and starts serving ``config``'s model; returns the
    running server after ``ready`` was told where it listens.

    Raises:
        ModelRefused: as `ServedModel`.
        OSError: if a port cannot be bound.
    """
    server = ModelServer(
        config.model_dir,
        config.model_name,
        config.threads,
        config.request_workers,
        config.version_labels,
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
