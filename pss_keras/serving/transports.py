"""The transports to TF Serving: one Predict or GetModelMetadata request over
gRPC (tensorflow-serving-api's PredictionService) or REST, with the server's
refusals and silences as one `ServingError` each.

A transport answers ``predict(signature, inputs) -> {output alias: array}``,
``metadata() -> {signature: {"inputs": ..., "outputs": ...}}`` and
``close()``; `pss_keras.serving.client.PSSClient` takes either.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import numpy as np


class ServingError(RuntimeError):
    """A request failed; the message says what and, where it can, how to fix it.

    Attributes:
        status: what the server answered: the gRPC status code's name
            (``FAILED_PRECONDITION``, ...) or ``HTTP <code>``; ``UNREACHABLE``
            when no answer came; None for a request refused before sending.
    """

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


class GrpcTransport:
    """Predict over gRPC (``host:port``, TF Serving's default port 8500)."""

    def __init__(self, address: str, model_name: str, timeout: float = 30.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.address, self.model_name, self.timeout = address, model_name, timeout
        self._grpc = grpc
        self._channel = grpc.insecure_channel(address)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, signature: str, inputs: dict) -> dict:
        import tensorflow as tf
        from tensorflow_serving.apis import model_pb2, predict_pb2

        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=self.model_name, signature_name=signature)
        )
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as e:
            raise self._error(e) from None
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def metadata(self) -> dict:
        """GetModelMetadata's signature definitions, as `tiers_from_metadata`
        reads them: ``{signature: {"inputs": {alias: (dtype, shape)},
        "outputs": {...}}}`` (dtype ``uint8``, ``float``, ...; shape a tuple
        with None for an unknown size, or None for an unknown rank)."""
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name=self.model_name), metadata_field=["signature_def"]
        )
        try:
            response = self._stub.GetModelMetadata(request, timeout=self.timeout)
        except self._grpc.RpcError as e:
            raise self._error(e) from None
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        return {
            name: {
                part: {
                    alias: (_dtype_name(info.dtype), _shape(info.tensor_shape))
                    for alias, info in getattr(sig, part).items()
                }
                for part in ("inputs", "outputs")
            }
            for name, sig in defs.signature_def.items()
        }

    def _error(self, e) -> ServingError:
        code = e.code()
        if code in (self._grpc.StatusCode.UNAVAILABLE, self._grpc.StatusCode.DEADLINE_EXCEEDED):
            return ServingError(
                f"Cannot reach TF Serving at {self.address} over gRPC ({code.name}): is the "
                "server running and the port right (gRPC default 8500)?",
                "UNREACHABLE",
            )
        return ServingError(
            f"TF Serving rejected the request ({code.name}): {e.details()}", code.name
        )

    def close(self):
        self._channel.close()


class RestTransport:
    """Predict over REST (``http://host:port``, TF Serving's default port 8501)."""

    def __init__(self, base_url: str, model_name: str, timeout: float = 30.0):
        if not base_url.startswith(("http://", "https://")):
            base_url = "http://" + base_url
        self.base_url, self.model_name, self.timeout = base_url.rstrip("/"), model_name, timeout
        self._output_names = None  # {signature: [output names]}, from metadata when needed

    def predict(self, signature: str, inputs: dict) -> dict:
        url = f"{self.base_url}/v1/models/{self.model_name}:predict"
        body = {
            "signature_name": signature,
            "inputs": {k: _json_tensor(v) for k, v in inputs.items()},
        }
        request = urllib.request.Request(
            url, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        payload = self._call(request)
        outputs = payload.get("outputs", payload.get("predictions"))
        if isinstance(outputs, dict):
            return {k: np.asarray(v) for k, v in outputs.items()}
        # One output: TF Serving drops its name (util/json_tensor.cc); the
        # signature's metadata has it, so both transports answer alike.
        return {self._only_output(signature): np.asarray(outputs)}

    def _only_output(self, signature: str) -> str:
        """The name of ``signature``'s one output (read once), else ``output``."""
        if self._output_names is None:
            try:
                self._output_names = {
                    name: list(sig["outputs"]) for name, sig in self.metadata().items()
                }
            except ServingError:
                self._output_names = {}
        names = self._output_names.get(signature or "serving_default", [])
        return names[0] if len(names) == 1 else "output"

    def metadata(self) -> dict:
        """``GET /v1/models/<name>/metadata``'s signature definitions, read
        as `GrpcTransport.metadata` returns them."""
        payload = self._call(
            urllib.request.Request(f"{self.base_url}/v1/models/{self.model_name}/metadata")
        )
        # TF Serving writes the SignatureDefMap proto as JSON under the
        # metadata field of the same name: signature_def.signature_def.
        try:
            defs = payload["metadata"]["signature_def"]["signature_def"]
            return {
                name: {
                    part: {
                        alias: (
                            _dtype_name(info.get("dtype", "DT_INVALID")),
                            _shape(info.get("tensor_shape", {})),
                        )
                        for alias, info in sig.get(part, {}).items()
                    }
                    for part in ("inputs", "outputs")
                }
                for name, sig in defs.items()
            }
        except (KeyError, TypeError, AttributeError):
            raise ServingError(
                f"TF Serving's metadata answer has no signature definitions: {str(payload)[:200]}",
                "HTTP 200",
            ) from None

    def _call(self, request) -> dict:
        """One HTTP request's JSON answer, errors as `ServingError`."""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except (ValueError, AttributeError):
                message = e.reason
            raise ServingError(
                f"TF Serving rejected the request (HTTP {e.code}): {message}", f"HTTP {e.code}"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServingError(
                f"Cannot reach TF Serving at {self.base_url} over REST ({reason}): is the server "
                "running and the port right (REST default 8501)?",
                "UNREACHABLE",
            ) from None

    def close(self):
        pass


def _json_tensor(value):
    """An input array as TF Serving's REST API reads it: numbers as JSON
    numbers, bytes (a string tensor) as ``{"b64": base64}`` each, which the
    server decodes back to the bytes (util/json_tensor.cc)."""
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(
            lambda b: {"b64": base64.b64encode(b if isinstance(b, bytes) else str(b).encode())
                       .decode("ascii")},
            otypes=[object],
        )(array).tolist()  # fmt: skip
    return array.tolist()


def _dtype_name(dtype) -> str:
    """``DT_UINT8`` (REST's JSON) or its enum value (gRPC) -> ``uint8``."""
    if isinstance(dtype, int):
        from tensorflow.core.framework import types_pb2

        dtype = types_pb2.DataType.Name(dtype)
    return str(dtype).removeprefix("DT_").lower()


def _shape(shape) -> tuple | None:
    """A TensorShapeProto (message or its JSON) -> a tuple, None for an
    unknown dimension; None for an unknown rank."""
    if isinstance(shape, dict):
        if shape.get("unknown_rank"):
            return None
        sizes = [int(d.get("size", 0)) for d in shape.get("dim", [])]
    else:
        if shape.unknown_rank:
            return None
        sizes = [d.size for d in shape.dim]
    return tuple(None if size < 0 else size for size in sizes)


PROTOCOLS = ("grpc", "rest")
