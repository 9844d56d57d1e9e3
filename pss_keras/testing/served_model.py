"""A SavedModel version loaded and run as tensorflow_model_server does.

TF Serving loads a SavedModel version through the C++ ``SavedModelBundle``:
a session over the MetaGraph tagged ``serve``, with the variables restored
by the graph's own restore op. A request runs by the names its SignatureDef
gives: each input alias is fed to its tensor name, each output alias is
fetched from its tensor name. Before the version becomes available, every
request in ``assets.extra/tf_serving_warmup_requests`` is replayed through
that same path, and a failing one makes the load fail: the server refuses
the model.

This module does the same in Python: `ServedModel` is a ``tf.compat.v1``
Session with its own Graph, loaded by
``tf.compat.v1.saved_model.loader.load(sess, ["serve"], model_dir)``, which
runs requests with ``sess.run`` on the SignatureDef's tensor names and
replays the warm-up file at load (`ModelRefused` when a request fails).
A request TF Serving would reject raises `RequestError` with its status
code's name and message. `version_dir` finds the version to load in a base
path, as TF Serving's default version policy does.
`pss_keras.testing.model_server` serves a `ServedModel` over gRPC and REST.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
# TF Serving reads at most this many warm-up records
# (servables/tensorflow/saved_model_warmup_util.cc).
MAX_WARMUP_RECORDS = 1000
# TensorFlow's error codes are gRPC's: the name a failed run is reported with.
_CODE_NAMES = {
    getattr(tf.errors, name): name
    for name in (
        "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    )
}  # fmt: skip


def type_string(dtype) -> str:
    """TensorFlow's C++ name of a dtype (``tf.DType``, DataType enum or numpy
    dtype), as its messages print it (``float`` for float32, ``uint8``,
    ``string``): DataTypeString in tensorflow/core/framework/types.cc."""
    return types_pb2.DataType.Name(tf.dtypes.as_dtype(dtype).as_datatype_enum)[3:].lower()


class RequestError(Exception):
    """A request TF Serving would reject: ``code`` is its status code's name
    (NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT), the message its text."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ModelRefused(RuntimeError):
    """The model cannot be served (not a SavedModel, or its warm-up failed);
    TF Serving would not make the version available."""


def _ndarray(alias: str, value) -> np.ndarray:
    """An input as an array: as given, or read from a TensorProto.

    Raises:
        RequestError: INVALID_ARGUMENT ``tensor parsing error: <alias>``
            for a TensorProto that does not hold its shape's values (TF's
            saved_model/util.cc GetInputValues).
    """
    if not isinstance(value, tensor_pb2.TensorProto):
        return np.asarray(value)
    try:
        return tf.make_ndarray(value)
    except (TypeError, ValueError):
        raise RequestError("INVALID_ARGUMENT", f"tensor parsing error: {alias}") from None


def _input_values(sig, inputs: dict) -> dict:
    """``{alias: array}`` of the signature's inputs, checked as TF Serving
    checks a request: the count (servables/tensorflow/predict_util.cc
    VerifyRequestInputsSize), then names, defaults and parsing (TF's
    saved_model/util.cc GetInputValues).

    Raises:
        RequestError: INVALID_ARGUMENT, with TF Serving's messages.
    """
    names, defaults = sorted(sig.inputs), sig.defaults
    if len(inputs) > len(names) or (len(inputs) < len(names) and not defaults):
        sent = sorted(inputs)
        raise RequestError(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {len(inputs)}!={len(names)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(names)}}}). "
            f"Sent extra: {{{','.join(sorted(set(sent) - set(names)))}}}. "
            f"Missing but required: {{{','.join(sorted(set(names) - set(sent)))}}}.",
        )
    values = {}
    for alias in names:
        if alias not in inputs and alias not in defaults:
            raise RequestError(
                "INVALID_ARGUMENT",
                f"Signature input alias: {alias}(feed name: {sig.inputs[alias].name}) not "
                "found in request and no default value provided. Inputs expected to be in "
                f"the request {{{','.join(sorted(inputs))}}}, or default input alias set: "
                f"{','.join(sorted(defaults))}",
            )
        values[alias] = _ndarray(alias, inputs[alias] if alias in inputs else defaults[alias])
    used = sorted(set(inputs) & set(names))
    if inputs and len(used) != len(inputs):
        raise RequestError(
            "INVALID_ARGUMENT",
            f"Inputs contains invalid name. Used request inputs: {','.join(used)}, "
            f"request input: {','.join(sorted(inputs))}",
        )
    return values


def _fetches(sig, output_filter) -> dict:
    """``{output alias: tensor name}`` to fetch: all the signature's outputs,
    or those of ``output_filter`` (predict_util.cc PreProcessPrediction).

    Raises:
        RequestError: INVALID_ARGUMENT for an unknown or repeated alias.
    """
    chosen = []
    for alias in output_filter:
        if alias not in sig.outputs:
            raise RequestError(
                "INVALID_ARGUMENT",
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(sig.outputs))}}}.",
            )
        if alias in chosen:
            raise RequestError("INVALID_ARGUMENT", f"duplicate output tensor alias: {alias}")
        chosen.append(alias)
    return {alias: sig.outputs[alias].name for alias in chosen or sig.outputs}


def version_dir(model_dir: str) -> tuple[str, int | None]:
    """The SavedModel to serve: ``model_dir`` itself when it holds
    ``saved_model.pb``, else its highest integer version (TF Serving's
    default version policy, "latest"). Returns (path, version or None).

    Raises:
        ModelRefused: if there is neither.
    """
    if os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        name = os.path.basename(os.path.normpath(model_dir))
        return model_dir, int(name) if name.isdigit() else None
    versions = []
    if os.path.isdir(model_dir):
        versions = [
            int(n)
            for n in os.listdir(model_dir)
            if n.isdigit() and os.path.exists(os.path.join(model_dir, n, "saved_model.pb"))
        ]
    if not versions:
        raise ModelRefused(
            f"{model_dir} is neither a SavedModel nor a base path with integer versions "
            "holding one (saved_model.pb)."
        )
    return os.path.join(model_dir, str(max(versions))), max(versions)


class ServedModel:
    """One SavedModel version loaded as TF Serving loads it, warmed up.

    Args:
        model_dir: the version's directory (``saved_model.pb`` inside).
        threads: intra- and inter-op threads of its session (None:
            TensorFlow's default). Given, the session gets its own pools,
            so two models in one process do not share them.

    Attributes:
        signature_defs: ``{signature: SignatureDef}``, the ones it serves.
        all_signature_defs: the MetaGraph's, the init op's too: what
            GetModelMetadata lists.
        input_dtypes: ``{signature: {input alias: tf.DType}}``.
        warmup_requests: how many warm-up requests ran at load.

    Raises:
        ModelRefused: if the SavedModel does not load, or a warm-up request
            fails (the message names the request and TF Serving's status).
    """

    def __init__(self, model_dir: str, threads: int | None = None):
        self.model_dir, self.threads = model_dir, threads
        config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
        if threads:
            config.intra_op_parallelism_threads = threads
            config.inter_op_parallelism_threads = threads
            config.use_per_session_threads = True
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        try:
            with self.graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self.session, [SERVE_TAG], model_dir
                )
        except (OSError, RuntimeError, ValueError, tf.errors.OpError) as e:
            self.session.close()
            raise ModelRefused(f"Cannot load the SavedModel at {model_dir}: {e}") from None
        # The TF2 SavedModel's init op is stored as a signature: TF Serving
        # runs it at load and lists it in the metadata; the stand-in does not
        # run it on request.
        self.all_signature_defs = dict(meta_graph.signature_def)
        self.signature_defs = {
            k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")
        }
        self.input_dtypes = {
            name: {k: tf.dtypes.as_dtype(t.dtype) for k, t in sig.inputs.items()}
            for name, sig in self.signature_defs.items()
        }
        self.warmup_requests = self._warm_up()

    def predict(self, signature: str, inputs: dict, output_filter=()) -> dict:
        """Runs ``signature`` on ``inputs`` ``{alias: array or TensorProto}``
        the way TF Serving's Predict does (servables/tensorflow/predict_util.cc
        RunPredict): checked against the SignatureDef, then ``sess.run``
        fetching its output tensor names (``output_filter``'s aliases only,
        when given) with the inputs fed to its input tensor names. Returns
        ``{output alias: array}``.

        Thread-safe (a Session's run is).

        Raises:
            RequestError: FAILED_PRECONDITION for an unknown signature,
                INVALID_ARGUMENT for missing, extra, unreadable, mistyped or
                misshaped inputs, an unknown or repeated output alias, or a
                failure of the graph on them.
        """
        signature = signature or DEFAULT_SIGNATURE
        sig = self.signature_defs.get(signature)
        if sig is None:
            raise RequestError(
                "FAILED_PRECONDITION", f'Serving signature key "{signature}" not found.'
            )
        values = _input_values(sig, inputs)
        fetches = _fetches(sig, output_filter)
        feed = self._feed(sig, self.input_dtypes[signature], values)
        try:
            return self.session.run(fetches, feed_dict=feed)
        except tf.errors.OpError as e:
            raise RequestError(_CODE_NAMES.get(e.error_code, "UNKNOWN"), e.message) from None

    @staticmethod
    def _feed(sig, dtypes: dict, values: dict) -> dict:
        """``{tensor name: array}`` to feed, its dtypes and shapes checked:
        TF Serving leaves that to the session (which refuses another dtype);
        a Python Session would cast silently.

        Raises:
            RequestError: INVALID_ARGUMENT.
        """
        feed = {}
        for position, alias in enumerate(sorted(sig.inputs)):
            value, dtype = values[alias], dtypes[alias]
            if value.dtype != dtype.as_numpy_dtype:
                sent = tf.string if value.dtype == object else value.dtype
                raise RequestError(
                    "INVALID_ARGUMENT",
                    f"Expects arg[{position}] to be {type_string(dtype)} but "
                    f"{type_string(sent)} is provided",
                )
            shape = tf.TensorShape(sig.inputs[alias].tensor_shape)
            if not shape.is_compatible_with(value.shape):
                raise RequestError(
                    "INVALID_ARGUMENT",
                    f"input {alias} has shape {list(value.shape)}, the signature expects "
                    f"{shape.as_list() if shape.rank is not None else 'any'}",
                )
            feed[sig.inputs[alias].name] = value
        return feed

    def _warm_up(self) -> int:
        """Replays the warm-up file through `predict`; returns the count.

        TF Serving does this before the version becomes available and fails
        the load on the first failing request; so does this.
        """
        path = os.path.join(self.model_dir, WARMUP_PATH)
        if not os.path.exists(path):
            return 0
        count = 0
        try:
            for count, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator(), 1):
                if count > MAX_WARMUP_RECORDS:
                    raise ModelRefused(
                        f"Refused {self.model_dir}: {path} has more than {MAX_WARMUP_RECORDS} "
                        "warm-up records, the most TF Serving reads."
                    )
                log = prediction_log_pb2.PredictionLog.FromString(record)
                if log.WhichOneof("log_type") != "predict_log":
                    raise ModelRefused(
                        f"Refused {self.model_dir}: warm-up record {count} of {path} is a "
                        f"{log.WhichOneof('log_type')}; this stand-in replays only predict_log."
                    )
                request = log.predict_log.request
                try:
                    self.predict(request.model_spec.signature_name, dict(request.inputs))
                except RequestError as e:
                    raise ModelRefused(
                        f"Refused {self.model_dir}: warm-up request {count} of {path} "
                        f"(signature {request.model_spec.signature_name or DEFAULT_SIGNATURE!r}) "
                        f"failed: {e.code}: {e}"
                    ) from None
        except (tf.errors.OpError, ValueError) as e:  # a truncated or corrupt record
            self.session.close()
            raise ModelRefused(
                f"Refused {self.model_dir}: cannot read warm-up record {count + 1} of {path}: {e}"
            ) from None
        except BaseException:  # ModelRefused, or anything unforeseen: no session left open
            self.session.close()
            raise
        return count

    def metadata(self) -> get_model_metadata_pb2.SignatureDefMap:
        """What GetModelMetadata's ``signature_def`` field carries."""
        defs = get_model_metadata_pb2.SignatureDefMap()
        for k, v in self.all_signature_defs.items():
            defs.signature_def[k].CopyFrom(v)
        return defs

    def close(self):
        self.session.close()
