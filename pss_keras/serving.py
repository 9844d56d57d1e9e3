"""Client for a PSS model served by TF Serving: tiers, tier choice, queries.

The server runs one SavedModel from `pss_keras.export`; every request names
the tier (signature) it wants, so the subnet switches per request with no
reload. This module discovers the tiers through the ``tiers`` signature
(or, when that is unavailable, their names through GetModelMetadata:
`tiers_from_metadata`), chooses a tier from a FLOPs or latency budget (the
most accurate tier within it), or adapts the tier to observed latency
(`AdaptiveTierPolicy`), over gRPC (tensorflow-serving-api's
PredictionService) or REST.
"""

from __future__ import annotations

import collections
import json
import time
import urllib.error
import urllib.request

import numpy as np

from pss_keras.jobs import TIERS_SIGNATURE, ServedTier, served_tiers_from_outputs


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


# TF Serving's answers to a request for a signature the model lacks (gRPC
# FAILED_PRECONDITION; REST INVALID_ARGUMENT, HTTP 400) or cannot run as
# sent: then the tiers come from metadata. Anything else (no model, no
# server, an overloaded or failing one) is reported as it is.
_NO_TIERS_SIGNATURE = ("FAILED_PRECONDITION", "INVALID_ARGUMENT", "HTTP 400")


# One served subnet (name, metric_type, target, mflops, params, resolution,
# top1, latency_ms, predicted_latency_ms, latency_table, latency_runtime):
# the record the ``tiers`` signature describes.
Tier = ServedTier


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

    def predict(self, signature: str, inputs: dict) -> dict:
        url = f"{self.base_url}/v1/models/{self.model_name}:predict"
        body = {
            "signature_name": signature,
            "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
        }
        request = urllib.request.Request(
            url, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        payload = self._call(request)
        outputs = payload.get("outputs", payload.get("predictions"))
        if isinstance(outputs, dict):
            return {k: np.asarray(v) for k, v in outputs.items()}
        return {"output": np.asarray(outputs)}

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


# Signatures of an export that are not tiers of their own.
_NOT_TIERS = ("serving_default", TIERS_SIGNATURE)


def tiers_from_metadata(signatures: dict) -> list[Tier]:
    """Tiers from GetModelMetadata's signature definitions, for a model
    whose ``tiers`` signature is unavailable.

    A tier is a signature (not ``serving_default``, ``tiers`` or a
    ``__``-prefixed internal one) that takes ``images``, uint8
    ``[batch, height, width, 3]``. Metadata describes signatures only, so a
    tier has its ``name`` and, where the signature fixes a square input
    size, its ``resolution``; ``mflops``, ``params``, ``top1``,
    ``latency_ms``, ``metric_type`` and ``target`` are None. With such tiers
    a client can list them, predict on one by name, and order them by
    input resolution where the signatures fix it (this export's take any
    size, so the order is then by name); it cannot choose by an MFLOPs or
    latency budget or by accuracy, and `PSSClient.choose_tier` and
    `AdaptiveTierPolicy` refuse them with a `ServingError` saying so.

    Args:
        signatures: ``{name: {"inputs": {alias: (dtype, shape)}, ...}}``
            as the transports' ``metadata()`` return it.

    Returns:
        The tiers, by resolution (unknown last) then name.
    """
    tiers = []
    for name, sig in signatures.items():
        if name in _NOT_TIERS or name.startswith("__"):
            continue
        dtype, shape = sig.get("inputs", {}).get("images", (None, None))
        if dtype != "uint8" or len(sig["inputs"]) != 1:
            continue
        if shape is not None and (len(shape) != 4 or shape[3] not in (None, 3)):
            continue
        fixed = shape is not None and shape[1] is not None and shape[1] == shape[2]
        tiers.append(
            Tier(
                name=name,
                metric_type=None,
                target=None,
                mflops=None,
                params=None,
                resolution=shape[1] if fixed else None,
                top1=None,
                latency_ms=None,
            )
        )
    return sorted(tiers, key=lambda t: (t.resolution is None, t.resolution or 0, t.name))


def _require_tier_table(tiers, what: str) -> None:
    """Refuses tiers without cost and accuracy (found through metadata)."""
    if any(t.mflops is None or t.top1 is None or t.latency_ms is None for t in tiers):
        raise ServingError(
            f"{what} needs each tier's MFLOPs, accuracy and latency, which only the model's "
            f"'{TIERS_SIGNATURE}' signature gives; this server's tiers come from "
            "GetModelMetadata (names and input shapes only). Choose a tier by name: "
            f"{[t.name for t in tiers]}."
        )


LATENCY_SOURCES = ("auto", "measured", "predicted")


def tier_latency_ms(tier: Tier, source: str = "auto") -> float:
    """The latency a budget is compared with.

    ``measured``: ``latency_ms``, measured at export on the serving path.
    ``predicted``: the look-up table's ``predicted_latency_ms`` (refused for
    a tier without one). ``auto``: the prediction when its table was
    measured on the serving path (``--runtime=tensorflow``, which is only
    right when built on the serving machine), else the measured latency: a
    LiteRT table predicts a phone-like CPU path, not TF Serving.

    Raises:
        ServingError: for an unknown source, or ``predicted`` without a table.
    """
    if source not in LATENCY_SOURCES:
        raise ServingError(f"latency_source={source!r} is unknown; use one of {LATENCY_SOURCES}.")
    has_prediction = tier.predicted_latency_ms is not None
    if source == "predicted" and not has_prediction:
        raise ServingError(
            f"Tier {tier.name} has no predicted latency (its run had no latency table); "
            "use latency_source=measured."
        )
    if source == "predicted" or (
        source == "auto" and has_prediction and tier.latency_runtime == "tensorflow"
    ):
        return float(tier.predicted_latency_ms)
    return float(tier.latency_ms)


class PSSClient:
    """Queries one served PSS model.

    Args:
        transport: a `GrpcTransport` or `RestTransport`.
    """

    def __init__(self, transport):
        self.transport = transport
        self._tiers = None
        # Where tiers() found the tiers: "tiers" (the signature) or "metadata".
        self.tier_source = None

    def tiers(self, refresh: bool = False) -> list[Tier]:
        """The served tiers (read once).

        From the ``tiers`` signature when the model has it: every field,
        cheapest first. When the server refuses that request as it refuses
        a missing signature or one it cannot run as sent (gRPC
        FAILED_PRECONDITION or INVALID_ARGUMENT, HTTP 400: an export
        without the signature, a server that will not run an input-less
        one), from GetModelMetadata, which every TF Serving answers: see
        `tiers_from_metadata` for what that can and cannot tell.
        ``tier_source`` says which it was.

        Raises:
            ServingError: if the server or model is not there, the server
                fails otherwise (passed on as it is), or neither way gives
                a tier.
        """
        if self._tiers is None or refresh:
            try:
                outputs = self.transport.predict(TIERS_SIGNATURE, {})
                self._tiers, self.tier_source = served_tiers_from_outputs(outputs), "tiers"
            except ServingError as e:
                if e.status not in _NO_TIERS_SIGNATURE:
                    raise
                refused = str(e)
                tiers = tiers_from_metadata(self.transport.metadata())
                if not tiers:
                    raise ServingError(
                        f"The model has no tier: the tiers signature was refused ({refused}) and "
                        "its metadata lists no image signature (uint8 images input).",
                        e.status,
                    ) from None
                self._tiers, self.tier_source = tiers, "metadata"
        return self._tiers

    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers()]

    def choose_tier(
        self,
        max_mflops: float | None = None,
        latency_budget_ms: float | None = None,
        latency_source: str = "auto",
    ) -> Tier:
        """The most accurate tier within the budgets (FLOPs and/or latency);
        of equally accurate tiers, the cheaper one. With no budget every
        tier fits, so this is the most accurate tier.

        Args:
            max_mflops: FLOPs budget.
            latency_budget_ms: latency budget, compared with `tier_latency_ms`.
            latency_source: which latency the budget is compared with (see
                `tier_latency_ms`).

        Raises:
            ServingError: if no tier fits, naming the cheapest one; or if
                the tiers came from metadata (`tiers_from_metadata`), which
                has no cost or accuracy to choose by.
        """
        tiers = self.tiers()
        _require_tier_table(tiers, "choose_tier")
        slack = 1 + 1e-6  # the table is float32: a budget equal to a tier's cost fits it

        def within(t):
            if latency_budget_ms is None:
                return True
            return tier_latency_ms(t, latency_source) <= latency_budget_ms * slack

        fits = [
            t for t in tiers if (max_mflops is None or t.mflops <= max_mflops * slack) and within(t)
        ]
        if not fits:
            cheapest = tiers[0]
            raise ServingError(
                f"No tier fits max_mflops={max_mflops}, latency_budget_ms={latency_budget_ms}; "
                f"the cheapest is {cheapest.name} ({cheapest.mflops:.2f} MFLOPs, "
                f"{tier_latency_ms(cheapest, latency_source):.2f} ms)."
            )
        return max(fits, key=lambda t: (t.top1, -t.mflops))

    def predict(self, images, tier: str | None = None) -> dict:
        """Runs ``images`` (uint8 [batch, h, w, 3] or [h, w, 3]) on ``tier``.

        Returns the signature's outputs: logits, probabilities,
        top5_indices, top5_classes (decoded to str).

        Raises:
            ServingError: for a bad image array or an unknown tier (naming
                the allowed tiers), or a failed request.
        """
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ServingError(
                f"images must be [batch, height, width, 3] (or one [height, width, 3] image), "
                f"got shape {images.shape}."
            )
        if images.dtype != np.uint8:
            raise ServingError(
                f"images must be uint8 RGB pixels (0..255), got {images.dtype}; send raw "
                "pixels, the model normalizes them itself."
            )
        name = tier or "serving_default"
        if tier is not None and tier not in self.tier_names():
            raise ServingError(f"Unknown tier {tier!r}; the server has {self.tier_names()}.")
        outputs = self.transport.predict(name, {"images": images})
        if "top5_classes" in outputs:
            outputs["top5_classes"] = np.vectorize(
                lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object]
            )(outputs["top5_classes"])
        return outputs

    def close(self):
        self.transport.close()


class AdaptiveTierPolicy:
    """Steps down a tier when a latency objective is missed, back up with headroom.

    Keeps a window of the latest observed request latencies. When their
    median exceeds ``objective_ms`` the next request uses the next cheaper
    tier; when it stays below ``headroom * objective_ms`` the policy tries
    the next more expensive tier. Each move clears the window, so every
    decision is based on requests served by the current tier.

    Args:
        tiers: the served tiers (any order; sorted by MFLOPs here).
        objective_ms: the latency objective per request.
        window: requests per decision.
        headroom: fraction of the objective below which it steps up.
        start: tier name to start from (default: the most expensive).
        clock: what `predict` times requests with: a function returning
            seconds (default `time.perf_counter`). Tests pass a simulated
            clock to make the policy's decisions independent of wall time.
    """

    def __init__(
        self,
        tiers,
        objective_ms: float,
        window: int = 5,
        headroom: float = 0.6,
        start=None,
        clock=time.perf_counter,
    ):
        if objective_ms <= 0:
            raise ValueError(f"objective_ms must be positive, got {objective_ms}.")
        if not 0 < headroom < 1:
            raise ValueError(f"headroom must be in (0, 1), got {headroom}.")
        tiers = list(tiers)
        if not tiers:
            raise ValueError("No tiers to adapt between.")
        _require_tier_table(tiers, "AdaptiveTierPolicy")
        self.tiers = sorted(tiers, key=lambda t: t.mflops)
        names = [t.name for t in self.tiers]
        self.index = names.index(start) if start else len(self.tiers) - 1
        self.objective_ms = float(objective_ms)
        self.window = int(window)
        self.headroom = float(headroom)
        self.clock = clock
        self._latencies = collections.deque(maxlen=self.window)
        self.history = []  # (tier name, latency ms) per observation

    @property
    def tier(self) -> Tier:
        return self.tiers[self.index]

    def observe(self, latency_ms: float) -> Tier:
        """Records one request's latency; returns the tier for the next one."""
        self.history.append((self.tier.name, float(latency_ms)))
        self._latencies.append(float(latency_ms))
        if len(self._latencies) == self.window:
            median = float(np.median(self._latencies))
            if median > self.objective_ms and self.index > 0:
                self.index -= 1
                self._latencies.clear()
            elif median < self.headroom * self.objective_ms and self.index < len(self.tiers) - 1:
                self.index += 1
                self._latencies.clear()
        return self.tier

    def predict(self, client: PSSClient, images) -> tuple[dict, Tier, float]:
        """One request on the current tier, timed with ``clock``; returns
        (outputs, tier used, ms)."""
        tier = self.tier
        start = self.clock()
        outputs = client.predict(images, tier.name)
        latency = 1000 * (self.clock() - start)
        self.observe(latency)
        return outputs, tier, latency


PROTOCOLS = ("grpc", "rest")


def connect(
    server: str, model_name: str, protocol: str = "grpc", timeout: float = 30.0
) -> PSSClient:
    """A `PSSClient` for ``server`` (``host:port``) over ``grpc`` or ``rest``
    (`PROTOCOLS`)."""
    if protocol == "grpc":
        return PSSClient(GrpcTransport(server, model_name, timeout))
    if protocol == "rest":
        return PSSClient(RestTransport(server, model_name, timeout))
    raise ValueError(f"protocol {protocol!r} is unknown; use one of {PROTOCOLS}.")
