"""Client for a PSS model served by TF Serving: tiers, tier choice, queries.

The server runs one SavedModel from `pss_keras.export.saved_model`; every request names
the tier (signature) it wants, so the subnet switches per request with no
reload. This module discovers the tiers through the ``tiers`` signature
(or, when that is unavailable, their names through GetModelMetadata:
`tiers_from_metadata`), chooses a tier from a FLOPs or latency budget (the
most accurate tier within it), or adapts the tier to observed latency
(`AdaptiveTierPolicy`: a percentile objective over a sliding window, with
hysteresis, never a dominated tier), over gRPC (tensorflow-serving-api's
PredictionService) or REST.
"""

from __future__ import annotations

import collections
import json
import math
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from pss_keras.jobs.tiers import (
    TIERS_SIGNATURE,
    ServedTier,
    served_tiers_from_outputs,
    split_dominated,
)


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


def dominant_tiers(tiers, latency_source: str = "auto") -> tuple[list[Tier], list[Tier]]:
    """Splits tiers into those worth serving and the dominated ones.

    A tier is dominated when another costs no more (`tier_latency_ms`, then
    MFLOPs) and is at least as accurate: choosing it would spend more for
    no accuracy. Of tiers equal in both, the first kept is the cheaper by
    MFLOPs.

    Returns:
        (kept tiers, cheapest first and each more accurate than the one
        before; dominated tiers).

    Raises:
        ServingError: if the tiers came from metadata (no cost or accuracy).
    """
    tiers = list(tiers)
    _require_tier_table(tiers, "Choosing among tiers")
    return split_dominated(tiers, lambda t: tier_latency_ms(t, latency_source))


class _TimedPolicy:
    """What both tier policies share: their checked settings, and one request
    timed on the current tier."""

    @staticmethod
    def _checked(tiers, objective_ms: float, headroom: float, who: str) -> list:
        """The tiers as a list, after the checks both policies make."""
        if not objective_ms > 0:
            raise ValueError(f"objective_ms must be positive, got {objective_ms}.")
        if not 0 < headroom < 1:
            raise ValueError(f"headroom must be in (0, 1), got {headroom}.")
        tiers = list(tiers)
        if not tiers:
            raise ValueError("No tiers to adapt between.")
        _require_tier_table(tiers, who)
        return tiers

    def choose(self) -> Tier:
        """The tier for the next request (the current one; `AdaptiveTierPolicy`
        may choose a cheaper one for a request queued behind others)."""
        return self.tier

    def predict(self, client: PSSClient, images) -> tuple[dict, Tier, float]:
        """One request on the tier `choose` gives, timed with ``clock``;
        returns (outputs, tier used, ms)."""
        tier = self.choose()
        start = self.clock()
        outputs = client.predict(images, tier.name)
        latency = 1000 * (self.clock() - start)
        self.observe(latency, tier)
        return outputs, tier, latency


class AdaptiveTierPolicy(_TimedPolicy):
    """Holds a latency objective on a percentile of recent requests, at the
    most accurate tier that meets it.

    Every observed latency is divided by the cost of the tier that served
    it (its idle latency, `tier_latency_ms`), so one sliding window of the
    last ``window`` requests describes how loaded the server is whichever
    tiers served them; the window's ``percentile`` of that ratio times a
    tier's cost estimates the tier's percentile latency right now.

    - **Down**, as soon as the current tier's estimate exceeds
      ``objective_ms`` (a full window is needed): to the most accurate tier
      whose estimate is within ``headroom * objective_ms`` (the cheapest if
      none), several tiers at once if the load demands.
    - **Up**, when at least ``hold`` requests have passed since the last
      move: to the most accurate tier whose estimate is within ``headroom *
      objective_ms`` (not past a tier whose probe failed, see below). Up
      needs the estimate below the headroom, down needs it above the
      objective: between the two the policy stays (hysteresis).
    - **Back-off**: a step up undone while most of the probed tier's
      requests missed and the tier it left still meets the objective
      (judged on the other tiers' requests in the window) is a failed
      probe: the policy returns to the tier it left, forgets the
      probed tier's requests, and each failed probe in a row doubles
      ``hold`` (up to ``max_hold``). A probe that holds for two windows
      (and ``hold``) resets it, as does a load well below the last
      failure's (by the headroom). A step down with more load behind it
      (the tier left would miss too) is not a failed probe. While the probed
      tier is what fails, a steady phase of N requests sees at most
      `max_steady_switches` (N) switches, about ``2 * log2(N / hold)``, and
      none while the estimate is right to within a factor 1 / headroom.
    - **Queueing** (``queueing=True``): a tier's cost also decides how long
      requests queue for it. With this client's request rate (from
      ``clock``, over the window) and the window's median slowdown, each
      tier's utilization of the server is estimated, and its estimate is
      scaled by ``(1 - u_current) / (1 - u_tier)`` (an M/M/1 queue's
      growth): a step up to a tier that would load the server to 1 or more
      is never taken, and a step down lands higher when the cheaper tier
      also queues less. Off, an estimate is the window's ratio times the
      cost alone (the model above).
    - **Backlog** (``backlog=k``): `choose` gives a request the tier above
      unless the requests this client has in flight (chosen, not yet
      observed) would make it miss: if ``k`` x the window's median
      slowdown x (the in-flight requests' cost + the tier's cost) exceeds
      the objective, that request goes to the most accurate cheaper tier
      that fits (the cheapest if none), and ``shed`` counts it. The
      current tier does not move, so a burst of arrivals is absorbed
      without a switch of the policy. Needs `choose` for every request
      (as `predict` does) and `observe` for each.
    - Failures count as at least twice the objective (``observe(...,
      failed=True)``); an infinite latency as 1000 x the objective; NaN
      is refused.
    - Dominated tiers (more cost, no more accuracy: `dominant_tiers`) are
      never chosen.
    - Safe to share between client threads: ``predict`` and ``observe``
      hold a lock; a latency is credited to the tier that served it, which
      may not be the current one once requests overlap.

    Args:
        tiers: the served tiers (from the ``tiers`` signature).
        objective_ms: the latency objective.
        percentile: which percentile of the window must meet it (95 or 99
            as serving objectives are stated; 50 for a median).
        window: requests per estimate; at least ``100 / (100 - percentile)``
            (20 for p95, 100 for p99), so that the percentile is not just
            the window's largest value.
        headroom: fraction of the objective a tier's estimate must be below
            to be stepped up to (or landed on by a step down).
        hold: requests after a move before a step up (default ``window``).
        max_hold: the most ``hold`` grows to after failed probes (default
            ``64 * hold``).
        latency_source: the tiers' cost (see `tier_latency_ms`).
        start: tier name to start from (default: the most accurate).
        clock: what `predict` times requests with, and ``queueing``
            measures the request rate with: seconds (default
            `time.perf_counter`); tests pass a simulated clock.
        queueing: scale the estimates by each tier's queueing (above).
        backlog: margin on the predicted wait behind this client's
            requests in flight (above; 1.5 leaves room for the wait's
            spread); None: every request gets the current tier.
    """

    def __init__(
        self,
        tiers,
        objective_ms: float,
        percentile: float = 95.0,
        window: int | None = None,
        headroom: float = 0.7,
        hold: int | None = None,
        max_hold: int | None = None,
        latency_source: str = "auto",
        start: str | None = None,
        clock=time.perf_counter,
        history: int = 100_000,
        queueing: bool = False,
        backlog: float | None = None,
    ):
        tiers = self._checked(tiers, objective_ms, headroom, "AdaptiveTierPolicy")
        if backlog is not None and not backlog > 0:
            raise ValueError(f"backlog must be positive (or None: off), got {backlog}.")
        if not 0 < percentile < 100:
            raise ValueError(f"percentile must be in (0, 100), got {percentile}.")
        smallest = math.ceil(100 / (100 - percentile) - 1e-9)
        window = smallest if window is None else int(window)
        if window < smallest:
            raise ValueError(
                f"window={window} is too short for a p{percentile:g} objective: it needs at "
                f"least {smallest} requests (100 / (100 - percentile)), or the percentile is "
                "only the window's largest value."
            )
        self.tiers, self.dominated = dominant_tiers(tiers, latency_source)
        self._cost = {t.name: tier_latency_ms(t, latency_source) for t in tiers}
        if any(not c > 0 for c in self._cost.values()):
            raise ValueError(f"Every tier needs a positive latency to scale by, got {self._cost}.")
        names = [t.name for t in self.tiers]
        if start is not None and start not in names:
            why = "it is dominated" if start in self._cost else "it is not a tier"
            raise ValueError(f"start={start!r}: {why}; choose one of {names}.")
        self.index = names.index(start) if start else len(self.tiers) - 1
        self.objective_ms = float(objective_ms)
        self.percentile = float(percentile)
        self.window = window
        self.headroom = float(headroom)
        self.base_hold = window if hold is None else int(hold)
        self.max_hold = 64 * self.base_hold if max_hold is None else int(max_hold)
        self.hold = self.base_hold
        self.clock = clock
        self.switches = 0
        # (tier name, latency ms) of the last ``history`` observations.
        self.history = collections.deque(maxlen=history)
        self._ratios = collections.deque(maxlen=window)
        self._since_move = 0
        self._last_move = None
        self._failed_probes = 0
        self._probed_from = None
        self._failed_tier = None
        self._load_at_failure = None
        self._ready = False
        self.queueing = bool(queueing)
        self.backlog = None if backlog is None else float(backlog)
        self.shed = 0
        self._times = collections.deque(maxlen=window)  # clock at each observation
        self._in_flight = []  # (tier name, clock at choose) of requests chosen, not observed
        self._lock = threading.Lock()

    @property
    def tier(self) -> Tier:
        with self._lock:
            return self.tiers[self.index]

    def choose(self) -> Tier:
        """The tier for the next request, counted as in flight until its
        `observe`: the current tier, or with ``backlog`` a cheaper one when
        the requests in flight would make it miss the objective."""
        with self._lock:
            now = self.clock()
            # A request never observed (its caller dropped it) stops counting
            # once it is older than any latency the policy takes in.
            stale = now - self.objective_ms  # 1000 x the objective, in seconds
            self._in_flight = [(n, t) for n, t in self._in_flight if t >= stale]
            index = self.index
            if self.backlog and self._in_flight and self._ready and self._ratios:
                slowdown = self.backlog * self._ratio(percentile=50)
                ahead = sum(self._cost[n] for n, _ in self._in_flight)
                fits = [
                    i
                    for i in range(index + 1)
                    if slowdown * (ahead + self._cost[self.tiers[i].name]) <= self.objective_ms
                ]
                served = max(fits) if fits else 0
                if served < index:
                    self.shed += 1
                    index = served
            tier = self.tiers[index]
            self._in_flight.append((tier.name, now))
            return tier

    def estimate_ms(self, tier: Tier | str) -> float | None:
        """The tier's estimated percentile latency now (None before a full window)."""
        name = tier if isinstance(tier, str) else tier.name
        if name not in self._cost:
            raise ValueError(f"Unknown tier {name!r}; the policy has {sorted(self._cost)}.")
        with self._lock:
            if not self._ready or len(self._ratios) < self.window // 2:
                return None
            names = [t.name for t in self.tiers]
            # A dominated tier (not in the list) gets no queueing factor.
            factor = self._queue_factors()[names.index(name)] if name in names else 1.0
            return self._ratio() * self._cost[name] * factor

    def max_steady_switches(self, requests: int) -> int:
        """The most switches in a steady phase of ``requests`` requests once
        settled, when the probed tier itself is what fails (its latency is
        more than its cost says, every time): one failed probe (up and back
        down) per ``hold``, which doubles up to ``max_hold`` (so about
        2 log2(N / hold) switches, then linear in N beyond the cap). Noisy
        latencies near the objective can add switches: each is a real
        miss of the percentile."""
        probes, hold, seen = 0, self.base_hold, 0
        while seen + hold <= requests:
            seen += hold + 1
            probes += 1
            hold = min(2 * hold, self.max_hold)
        return 2 * probes

    def observe(
        self, latency_ms: float, tier: Tier | str | None = None, failed: bool = False
    ) -> Tier:
        """Records one request's latency; returns the tier for the next request.

        Args:
            latency_ms: how long the request took (infinite is taken as
                1000 x the objective).
            tier: the tier that served it (default: the current one).
            failed: the request failed (an error, a timeout): counted as at
                least twice the objective, however fast the failure came.

        Raises:
            ValueError: for an unknown tier, or a latency that is NaN or
                negative.
        """
        latency_ms = float(latency_ms)
        if math.isnan(latency_ms) or latency_ms < 0:
            raise ValueError(f"latency_ms must be a duration, got {latency_ms}.")
        if failed:
            latency_ms = max(latency_ms, 2 * self.objective_ms)
        latency_ms = min(latency_ms, 1000 * self.objective_ms)
        with self._lock:
            name = self.tiers[self.index].name if tier is None else getattr(tier, "name", tier)
            if name not in self._cost:
                raise ValueError(f"Unknown tier {name!r}; the policy has {sorted(self._cost)}.")
            self.history.append((name, latency_ms))
            for i, (n, _) in enumerate(self._in_flight):
                if n == name:  # the oldest request in flight on that tier
                    del self._in_flight[i]
                    break
            if self.queueing:
                self._times.append(self.clock())
            if name != self._failed_tier:  # late answers of a failed probe say nothing of load
                self._ratios.append((name, latency_ms / self._cost[name]))
            self._since_move += 1
            # The first decision waits for a full window; after a failed
            # probe's requests are forgotten, half a window will do.
            self._ready = self._ready or len(self._ratios) == self.window
            if self._ready and len(self._ratios) >= self.window // 2:
                self._decide(self._ratio())
            return self.tiers[self.index]

    def _ratio(self, skip: str | None = None, percentile: float | None = None) -> float:
        """The window's ``percentile`` (default: the policy's) of latency / cost."""
        ratios = [r for n, r in self._ratios if n != skip]
        q = self.percentile if percentile is None else percentile
        return float(np.percentile(ratios, q)) if ratios else 0.0

    def _reset_back_off(self) -> None:
        self._failed_probes, self.hold, self._load_at_failure = 0, self.base_hold, None

    def _queue_factors(self) -> list[float]:
        """Each tier's estimate multiplier for queueing (1 without a rate)."""
        ones = [1.0] * len(self.tiers)
        times = self._times
        if not self.queueing or len(times) < 10 or not times[-1] > times[0]:
            return ones
        rate = (len(times) - 1) / (1000 * (times[-1] - times[0]))  # requests per ms
        load = [rate * self._ratio(percentile=50) * self._cost[t.name] for t in self.tiers]
        current = min(load[self.index], 0.9)
        return [(1 - current) / (1 - u) if u < 1 else math.inf for u in load]

    def _decide(self, ratio: float) -> None:
        costs = [self._cost[t.name] * f for t, f in zip(self.tiers, self._queue_factors())]
        target = self.headroom * self.objective_ms
        if self._last_move == "up" and self._since_move > max(2 * self.window, self.hold):
            self._reset_back_off()  # the last step up held
            self._last_move = "held"
        if self._load_at_failure is not None and ratio < self.headroom * self._load_at_failure:
            self._reset_back_off()  # the load fell well below the last failure's: try again soon
        if ratio * costs[self.index] > self.objective_ms and self.index > 0:
            current = self.tiers[self.index].name
            # Right after a step up, a probe failed when most of the probed
            # tier's requests missed and the other tiers' requests say the
            # tier it left still meets the objective; otherwise more load.
            load = self._ratio(skip=current)
            own = [r * costs[self.index] for n, r in self._ratios if n == current]
            misses_from_start = sum(ms > self.objective_ms for ms in own) * 2 > len(own)
            if (
                self._last_move == "up"
                and misses_from_start
                and load * costs[self._probed_from] <= self.objective_ms
            ):
                self._failed_probes += 1
                self._load_at_failure = load
                index = self._probed_from
                # What the probed tier met says how it runs, not how loaded the
                # server is: forget it (the window refills at the tier left).
                self._failed_tier = current
                kept = [(n, r) for n, r in self._ratios if n != current]
                self._ratios = collections.deque(kept, maxlen=self.window)
            else:  # more load: as far down as the estimate says
                self._reset_back_off()
                fits = [i for i in range(self.index) if ratio * costs[i] <= target]
                index = max(fits) if fits else 0
            self.hold = min(self.base_hold * 2**self._failed_probes, self.max_hold)
            self._move(index, "down")
        elif (
            self.index < len(self.tiers) - 1
            and self._since_move >= self.hold
            and ratio * costs[self.index + 1] <= target
        ):
            # Up to the most accurate tier the estimate puts within the
            # headroom, but not past a tier whose probe failed.
            names = [t.name for t in self.tiers]
            top = names.index(self._failed_tier) if self._failed_tier else len(names) - 1
            fits = [i for i in range(self.index + 1, top + 1) if ratio * costs[i] <= target]
            self._probed_from = self.index
            self._move(max(fits), "up")
            if self.tiers[self.index].name == self._failed_tier:
                self._failed_tier = None

    def _move(self, index: int, direction: str) -> None:
        self.index = index
        self.switches += 1
        self._since_move = 0
        self._last_move = direction


class MedianStepPolicy(_TimedPolicy):
    """The first adaptive policy, kept for comparison: steps down a tier when
    the median of the last few requests misses the objective, back up with
    headroom.

    `AdaptiveTierPolicy` replaced it: a median of 5 lets 2 of every 5
    requests miss, and it may choose dominated tiers (it orders them by
    MFLOPs alone); benchmarks/adaptive_serving.py measures both (policy
    ``median5``).

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
        tiers = self._checked(tiers, objective_ms, headroom, "MedianStepPolicy")
        self.tiers = sorted(tiers, key=lambda t: t.mflops)
        names = [t.name for t in self.tiers]
        self.index = names.index(start) if start else len(self.tiers) - 1
        self.objective_ms = float(objective_ms)
        self.window = int(window)
        self.headroom = float(headroom)
        self.clock = clock
        self._latencies = collections.deque(maxlen=self.window)
        self.history = []  # (tier name, latency ms) per observation
        self.switches = 0
        self._lock = threading.Lock()

    @property
    def tier(self) -> Tier:
        with self._lock:
            return self.tiers[self.index]

    def observe(
        self, latency_ms: float, tier: Tier | str | None = None, failed: bool = False
    ) -> Tier:
        """Records one request's latency (``tier``: the tier that served it,
        for the history; every latency counts; ``failed``: counted as twice
        the objective at least); returns the tier for the next one."""
        if failed:
            latency_ms = max(float(latency_ms), 2 * self.objective_ms)
        with self._lock:
            name = self.tiers[self.index].name if tier is None else getattr(tier, "name", tier)
            self.history.append((name, float(latency_ms)))
            self._latencies.append(float(latency_ms))
            if len(self._latencies) == self.window:
                median = float(np.median(self._latencies))
                if median > self.objective_ms and self.index > 0:
                    self.index -= 1
                    self.switches += 1
                    self._latencies.clear()
                elif (
                    median < self.headroom * self.objective_ms and self.index < len(self.tiers) - 1
                ):
                    self.index += 1
                    self.switches += 1
                    self._latencies.clear()
            return self.tiers[self.index]


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
