"""Client for a PSS model served by TF Serving: tiers, tier choice, queries.

The server runs one SavedModel from `pss_keras.export`; every request names
the tier (signature) it wants, so the subnet switches per request with no
reload. This module discovers the tiers through the ``tiers`` signature,
chooses a tier from a FLOPs or latency budget (the most accurate tier within
it), or adapts the tier to observed latency (`AdaptiveTierPolicy`), over
gRPC (tensorflow-serving-api's PredictionService) or REST.
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
    """A request failed; the message says what and, where it can, how to fix it."""


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
            code = e.code()
            if code in (self._grpc.StatusCode.UNAVAILABLE, self._grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServingError(
                    f"Cannot reach TF Serving at {self.address} over gRPC ({code.name}): is the "
                    "server running and the port right (gRPC default 8500)?"
                ) from None
            raise ServingError(
                f"TF Serving rejected the request ({code.name}): {e.details()}"
            ) from None
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

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
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except (ValueError, AttributeError):
                message = e.reason
            raise ServingError(
                f"TF Serving rejected the request (HTTP {e.code}): {message}"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServingError(
                f"Cannot reach TF Serving at {self.base_url} over REST ({reason}): is the server "
                "running and the port right (REST default 8501)?"
            ) from None
        outputs = payload.get("outputs", payload.get("predictions"))
        if isinstance(outputs, dict):
            return {k: np.asarray(v) for k, v in outputs.items()}
        return {"output": np.asarray(outputs)}

    def close(self):
        pass


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

    def tiers(self, refresh: bool = False) -> list[Tier]:
        """The served tiers, cheapest first (read once from ``tiers``)."""
        if self._tiers is None or refresh:
            self._tiers = served_tiers_from_outputs(self.transport.predict(TIERS_SIGNATURE, {}))
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
            ServingError: if no tier fits, naming the cheapest one.
        """
        tiers = self.tiers()
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
        self.tiers = sorted(tiers, key=lambda t: t.mflops)
        if not self.tiers:
            raise ValueError("No tiers to adapt between.")
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


def connect(
    server: str, model_name: str, protocol: str = "grpc", timeout: float = 30.0
) -> PSSClient:
    """A `PSSClient` for ``server`` (``host:port``) over ``grpc`` or ``rest``."""
    if protocol == "grpc":
        return PSSClient(GrpcTransport(server, model_name, timeout))
    if protocol == "rest":
        return PSSClient(RestTransport(server, model_name, timeout))
    raise ValueError(f"protocol {protocol!r} is unknown; use grpc or rest.")
