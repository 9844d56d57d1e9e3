"""The client against TF Serving (when installed) or the stand-in server,
and its handling of TF Serving's answers through fake transports."""

import dataclasses
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from pss_keras.benchmarking import soak
from pss_keras.export import saved_model as export
from pss_keras.serving import client as serving
from pss_keras.testing import model_server
from pss_keras.testing.model_server import ModelRefused, ModelServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "pss"


def _start_server(base_path):
    """tensorflow_model_server on ``base_path`` when on PATH or named by
    TF_MODEL_SERVER (in its own process, `soak.ServerProcess`), else the
    stand-in in this process (which loads the latest version as it does)."""
    binary = soak.server_binary()
    if binary:
        return soak.ServerProcess(base_path, MODEL, binary, wait_s=60)
    return ModelServer(base_path, MODEL).start()


@pytest.fixture(scope="module")
def served(trained_job, tmp_path_factory):
    config, _ = trained_job
    base = tmp_path_factory.mktemp("serving") / MODEL
    summary = export.export(config.job_dir, str(base), latency_repeats=3)
    server = _start_server(str(base))
    loaded = tf.saved_model.load(summary["path"])
    yield server, summary, loaded
    server.stop()


def _address(server, protocol):
    return server.grpc_address if protocol == "grpc" else server.rest_address


@pytest.fixture(params=["grpc", "rest"])
def client(request, served):
    c = serving.connect(_address(served[0], request.param), MODEL, request.param, timeout=30)
    yield c
    c.close()


def _images(shape=(2, 40, 52, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_tiers_are_discovered_through_predict(client, served):
    _, summary, _ = served
    tiers = client.tiers()
    assert [t.name for t in tiers] == [t["name"] for t in summary["tiers"]]
    assert [t.mflops for t in tiers] == sorted(t.mflops for t in tiers)
    assert all(t.latency_ms > 0 and 0 <= t.top1 <= 1 for t in tiers)


def test_each_tier_returns_that_tiers_outputs(client, served):
    _, summary, loaded = served
    images = _images()
    for tier in summary["tiers"]:
        out = client.predict(images, tier["name"])
        expected = loaded.signatures[tier["name"]](images=tf.constant(images))
        np.testing.assert_allclose(out["logits"], expected["logits"].numpy(), atol=1e-5)
        np.testing.assert_array_equal(out["top5_indices"], expected["top5_indices"].numpy())
        assert list(out["top5_classes"][0]) == [
            c.decode() for c in expected["top5_classes"].numpy()[0]
        ]
    default = client.predict(images[0])  # one image, serving_default
    assert default["logits"].shape == (1, 10)


# -- loading as TF Serving does --------------------------------------------


def _warmup_logs(path):
    warmup = os.path.join(path, "assets.extra", export.WARMUP_FILE)
    return [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(warmup)
    ]


def test_stand_in_loads_by_session_and_replays_the_warm_up(served):
    server, summary, _ = served
    if not isinstance(server, ModelServer):
        pytest.skip("tensorflow_model_server is serving; its loading is its own")
    model = server.model
    assert isinstance(model.session, tf.compat.v1.Session) and model.session.graph is model.graph
    # Every request of the export's warm-up file ran at load: one per signature.
    assert model.warmup_requests == len(_warmup_logs(summary["path"])) == len(summary["tiers"]) + 2
    # The base path was given: the latest (only) version is served.
    assert (server.version, server.model_dir) == (summary["version"], summary["path"])


def _with_warmup(path, tmp_path, edit):
    """A copy of the SavedModel at ``path`` whose warm-up requests are
    ``edit(requests)``."""
    copy = tmp_path / "model" / "1"
    shutil.copytree(path, copy)
    logs = _warmup_logs(path)
    requests = [log.predict_log.request for log in logs]
    edit(requests)
    with tf.io.TFRecordWriter(str(copy / "assets.extra" / export.WARMUP_FILE)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return str(copy)


def _image_request(requests):
    return next(r for r in requests if "images" in r.inputs)


def _rename_signature(requests):
    _image_request(requests).model_spec.signature_name = "flops_9999m"


def _wrong_shape(requests):
    _image_request(requests).inputs["images"].CopyFrom(
        tf.make_tensor_proto(np.zeros((1, 8, 8, 4), np.uint8))
    )


def _wrong_dtype(requests):
    _image_request(requests).inputs["images"].CopyFrom(
        tf.make_tensor_proto(np.zeros((1, 8, 8, 3), np.float32))
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            _rename_signature,
            r"warm-up request 1 of .* \(signature 'flops_9999m'\) failed: "
            r'FAILED_PRECONDITION: Serving signature key "flops_9999m" not found\.$',
        ),
        (_wrong_shape, r"warm-up request 1 .* failed: INVALID_ARGUMENT: input images has shape "),
        (
            _wrong_dtype,
            r"warm-up request 1 .* failed: INVALID_ARGUMENT: Expects arg\[0\] to be uint8 but "
            r"float is provided$",
        ),
    ],
    ids=["missing_signature", "wrong_shape", "wrong_dtype"],
)
def test_stand_in_refuses_a_model_whose_warm_up_fails(served, tmp_path, edit, message):
    """As TF Serving does, the load fails on the first failing warm-up
    request, and no port is opened for the model."""
    _, summary, _ = served
    path = _with_warmup(summary["path"], tmp_path, edit)
    with pytest.raises(ModelRefused, match=rf"^Refused {re.escape(path)}: {message}"):
        ModelServer(path, MODEL)
    # The same copy with the export's own warm-up requests loads.
    ok = ModelServer(_with_warmup(summary["path"], tmp_path / "ok", lambda r: None), MODEL)
    assert ok.model.warmup_requests == len(summary["tiers"]) + 2
    ok.model.close()


def test_stand_in_refuses_a_corrupt_warm_up_file(served, tmp_path):
    _, summary, _ = served
    path = _with_warmup(summary["path"], tmp_path, lambda r: None)
    warmup = os.path.join(path, "assets.extra", export.WARMUP_FILE)
    with open(warmup, "r+b") as f:
        f.truncate(os.path.getsize(warmup) - 3)  # the last record cut short
    with pytest.raises(ModelRefused, match=r"cannot read warm-up record \d+ of "):
        ModelServer(path, MODEL)
    with pytest.raises(ModelRefused, match="neither a SavedModel nor a base path"):
        ModelServer(str(tmp_path / "nothing"), MODEL)


@pytest.fixture
def closed_sessions(monkeypatch):
    """The tf.compat.v1 Sessions closed during the test."""
    closed, close = [], tf.compat.v1.Session.close

    def record(session):
        closed.append(session)
        close(session)

    monkeypatch.setattr(tf.compat.v1.Session, "close", record)
    return closed


def test_stand_in_closes_its_session_when_the_warm_up_breaks(served, monkeypatch, closed_sessions):
    """Not only a refused request: any failure of the warm-up closes the
    session it loaded."""
    _, summary, _ = served

    def broken(self, signature, inputs):
        raise KeyError("broken")

    monkeypatch.setattr(model_server.ServedModel, "predict", broken)
    with pytest.raises(KeyError, match="broken"):
        model_server.ServedModel(summary["path"])
    assert len(closed_sessions) == 1


def test_serve_closes_the_model_when_a_port_is_taken(served, closed_sessions):
    _, summary, _ = served
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = model_server.ServeConfig(
            summary["path"], MODEL, port=0, rest_api_port=taken.getsockname()[1]
        )
        with pytest.raises(OSError):
            model_server.serve(config, ready=lambda line: None)
    assert len(closed_sessions) == 1


# -- tiers without the tiers signature: GetModelMetadata ----------------------


class _NoTiersModel(tf.Module):
    """A SavedModel with two tiers and no ``tiers`` signature: ``wide`` takes
    32 x 32 images, ``narrow`` 24 x 24 (alphabetical order is not input
    order); ``serving_default`` is the wide one; ``scale`` takes floats, so
    it is not a tier."""

    def _tier(self, images, scale):
        x = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2])
        return {"logits": tf.concat([x * scale, -x], axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="images")])
    def wide(self, images):
        return self._tier(images, 2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 24, 24, 3], tf.uint8, name="images")])
    def narrow(self, images):
        return self._tier(images, 1.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def scale(self, x):
        return {"y": 3.0 * x}


@pytest.fixture(scope="module")
def no_tiers_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("no_tiers") / MODEL
    module = _NoTiersModel()
    signatures = {"wide": module.wide, "narrow": module.narrow, "scale": module.scale}
    tf.saved_model.save(
        module, str(base / "1"), signatures={**signatures, "serving_default": module.wide}
    )
    server = _start_server(str(base))
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_tiers_fall_back_to_model_metadata(no_tiers_server, protocol):
    c = serving.connect(_address(no_tiers_server, protocol), MODEL, protocol, timeout=30)
    try:
        tiers = c.tiers()
        assert c.tier_source == "metadata"
        # By input resolution (from the signature defs), not by name.
        assert [(t.name, t.resolution) for t in tiers] == [("narrow", 24), ("wide", 32)]
        assert all(
            t.mflops is None and t.top1 is None and t.latency_ms is None and t.params is None
            for t in tiers
        )
        # Predict by name still works, on the named tier.
        images = np.full((2, 24, 24, 3), 10, np.uint8)
        np.testing.assert_allclose(
            c.predict(images, "narrow")["logits"], [[10] * 3 + [-10] * 3] * 2
        )
        with pytest.raises(
            serving.ServingError, match=r"Unknown tier 'scale'; the server has \['narrow', 'wide'\]"
        ):
            c.predict(images, "scale")
        # Budgets and accuracy need the tiers signature's table.
        needs = (
            r"needs each tier's MFLOPs, accuracy and latency, which only the model's 'tiers' "
            r"signature gives; this server's tiers come from GetModelMetadata \(names and input "
            r"shapes only\)\. Choose a tier by name: \['narrow', 'wide'\]\.$"
        )
        with pytest.raises(serving.ServingError, match="^choose_tier " + needs):
            c.choose_tier(max_mflops=100)
        with pytest.raises(serving.ServingError, match="^choose_tier "):
            c.choose_tier()
        with pytest.raises(serving.ServingError, match="^AdaptiveTierPolicy " + needs):
            serving.AdaptiveTierPolicy(tiers, objective_ms=10)
    finally:
        c.close()


def test_query_script_lists_metadata_tiers_and_refuses_a_budget(no_tiers_server, run_script):
    common = [f"--server={no_tiers_server.grpc_address}", f"--model_name={MODEL}"]
    listed = run_script("scripts/query.py", *common, "--list_tiers")
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = [line.split() for line in listed.stdout.splitlines()[1:3]]
    assert rows == [
        ["narrow", "-", "-", "24", "-", "-", "-"],
        ["wide", "-", "-", "32", "-", "-", "-"],
    ]
    assert "tiers from GetModelMetadata" in listed.stdout
    budget = run_script("scripts/query.py", *common, "--max_mflops=5", "unused.png")
    assert budget.returncode == 1
    assert "choose_tier needs each tier's MFLOPs" in budget.stderr.strip().splitlines()[-1]


def test_tiers_signature_is_preferred_to_metadata(client):
    assert client.tiers()[0].mflops is not None and client.tier_source == "tiers"


@pytest.mark.parametrize(
    "status", ["NOT_FOUND", "HTTP 404", "UNREACHABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "HTTP 503"]
)
def test_only_a_missing_tiers_signature_falls_back_to_metadata(status):
    """No model, no server or a failing one: the error is passed on as it
    is, and the metadata is not asked for."""

    class Transport(_TableTransport):
        def predict(self, signature, inputs):
            raise serving.ServingError(f"failed ({status})", status)

        def metadata(self):
            raise AssertionError("metadata must not be asked for")

    with pytest.raises(serving.ServingError, match=rf"^failed \({status}\)$"):
        serving.PSSClient(Transport([])).tiers()


def test_metadata_fallback_needs_an_image_signature(monkeypatch):
    class Transport(_TableTransport):
        def predict(self, signature, inputs):
            raise serving.ServingError("rejected (FAILED_PRECONDITION)", "FAILED_PRECONDITION")

        def metadata(self):
            return {"scale": {"inputs": {"x": ("float", (None,))}, "outputs": {}}}

    with pytest.raises(
        serving.ServingError,
        match=r"^The model has no tier: the tiers signature was refused \(rejected "
        r"\(FAILED_PRECONDITION\)\) and its metadata lists no image signature",
    ):
        serving.PSSClient(Transport([])).tiers()


# TF Serving's answer to GET /v1/models/<name>/metadata (its REST API
# documentation's example, trimmed): the SignatureDefMap in proto3 JSON, int64
# sizes as strings, under metadata.signature_def.signature_def.
REST_METADATA = {
    "model_spec": {"name": "pss", "signature_name": "", "version": "3"},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "flops_1m": {
                    "inputs": {
                        "images": {
                            "dtype": "DT_UINT8",
                            "tensor_shape": {
                                "dim": [
                                    {"size": "-1", "name": ""},
                                    {"size": "-1", "name": ""},
                                    {"size": "-1", "name": ""},
                                    {"size": "3", "name": ""},
                                ],
                                "unknown_rank": False,
                            },
                            "name": "serving_flops_1m_images:0",
                        }
                    },
                    "outputs": {
                        "logits": {
                            "dtype": "DT_FLOAT",
                            "tensor_shape": {"dim": [{"size": "-1"}, {"size": "10"}]},
                            "name": "StatefulPartitionedCall:0",
                        }
                    },
                    "method_name": "tensorflow/serving/predict",
                },
                "any_rank": {
                    "inputs": {
                        "images": {"dtype": "DT_UINT8", "tensor_shape": {"unknown_rank": True}}
                    },
                    "method_name": "tensorflow/serving/predict",
                },
                "__saved_model_init_op": {
                    "outputs": {"__saved_model_init_op": {"name": "NoOp"}},
                },
            }
        }
    },
}


def test_rest_metadata_is_read_as_tf_serving_writes_it(monkeypatch):
    requests = []

    def urlopen(request, timeout):
        requests.append(request)
        return _Response(json.dumps(REST_METADATA).encode())

    monkeypatch.setattr(serving.urllib.request, "urlopen", urlopen)
    signatures = serving.RestTransport("127.0.0.1:8501", MODEL).metadata()
    assert requests[0].full_url == "http://127.0.0.1:8501/v1/models/pss/metadata"
    assert requests[0].get_method() == "GET"
    assert signatures["flops_1m"] == {
        "inputs": {"images": ("uint8", (None, None, None, 3))},
        "outputs": {"logits": ("float", (None, 10))},
    }
    assert signatures["any_rank"]["inputs"] == {"images": ("uint8", None)}
    tiers = serving.tiers_from_metadata(signatures)
    assert [(t.name, t.resolution) for t in tiers] == [("any_rank", None), ("flops_1m", None)]


def test_stand_in_metadata_matches_tf_servings_rest_format(served):
    """The stand-in's REST metadata has the shape of TF Serving's (above)."""
    server, summary, _ = served
    with urllib.request.urlopen(f"{server.rest_address}/v1/models/{MODEL}/metadata") as r:
        payload = json.loads(r.read())
    defs = payload["metadata"]["signature_def"]["signature_def"]
    name = summary["tiers"][0]["name"]
    images = defs[name]["inputs"]["images"]
    assert images["dtype"] == "DT_UINT8"
    assert [d["size"] for d in images["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    assert payload["model_spec"]["name"] == MODEL


# -- choose_tier -------------------------------------------------------------


class _TableTransport:
    """Answers only the ``tiers`` signature, with the table a server would send
    (float32 numbers, bytes strings, in export order)."""

    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def predict(self, signature, inputs):
        self.calls.append(signature)
        assert signature == serving.TIERS_SIGNATURE and inputs == {}

        def column(i, dtype):
            return np.array([r[i] for r in self.rows], dtype)

        return {
            "names": np.array([r[0].encode() for r in self.rows], object),
            "metric_types": np.array([b"flops"] * len(self.rows), object),
            "targets": column(1, np.float32),
            "mflops": column(1, np.float32),
            "params": np.arange(len(self.rows), dtype=np.int64),
            "resolutions": np.full(len(self.rows), 32, np.int32),
            "top1": column(2, np.float32),
            "latency_ms": column(3, np.float32),
        }

    def close(self):
        pass


# name, MFLOPs, top-1, latency ms. Accuracy is not monotone in cost: within
# most budgets the largest (or slowest) tier that fits is NOT the most accurate.
TABLE = [
    ("d", 40.0, 0.85, 30.0),
    ("a", 10.0, 0.60, 4.0),
    ("c", 30.0, 0.70, 12.0),
    ("b", 20.0, 0.80, 9.0),
    ("e", 25.0, 0.80, 20.0),  # as accurate as b, dearer and slower: b wins the tie
]


@pytest.fixture
def table_client():
    return serving.PSSClient(_TableTransport(TABLE))


def test_tiers_table_is_read_once_and_sorted_by_cost(table_client):
    assert table_client.tier_names() == ["a", "b", "e", "c", "d"]
    t = table_client.tiers()[1]
    assert (t.name, t.metric_type, t.mflops, t.top1, t.latency_ms) == pytest.approx(
        ("b", "flops", 20.0, 0.80, 9.0)
    )
    table_client.tiers()
    assert table_client.transport.calls == ["tiers"]
    table_client.tiers(refresh=True)
    assert table_client.transport.calls == ["tiers", "tiers"]


@pytest.mark.parametrize(
    "budget, expected",
    [
        # FLOPs: c (30) and e (25) are dearer than b and less (or no more) accurate.
        (dict(max_mflops=35), "b"),
        (dict(max_mflops=20), "b"),  # a budget equal to a tier's cost fits it
        (dict(max_mflops=19.9), "a"),
        (dict(max_mflops=40), "d"),
        # Latency: c (12 ms) and e (20 ms) fit 25 ms and are slower than b.
        (dict(latency_budget_ms=25), "b"),
        (dict(latency_budget_ms=8.9), "a"),
        (dict(latency_budget_ms=30), "d"),
        # Both: each budget excludes what the other allows.
        (dict(max_mflops=40, latency_budget_ms=10), "b"),
        (dict(max_mflops=15, latency_budget_ms=100), "a"),
        # No budget: every tier fits, the most accurate wins.
        ({}, "d"),
    ],
)
def test_choose_tier_picks_the_most_accurate_within_budget(table_client, budget, expected):
    assert table_client.choose_tier(**budget).name == expected


def test_choose_tier_breaks_accuracy_ties_for_the_cheaper_tier():
    rows = [("big", 30.0, 0.7, 5.0), ("small", 10.0, 0.7, 5.0), ("mid", 20.0, 0.7, 5.0)]
    for order in (rows, rows[::-1]):
        c = serving.PSSClient(_TableTransport(order))
        assert c.choose_tier(max_mflops=30).name == "small"
        assert c.choose_tier(latency_budget_ms=5).name == "small"


def test_choose_tier_fits_a_budget_equal_to_a_float32_cost():
    # The table is float32: 1.1 arrives as 1.10000002384..., above a budget of 1.1.
    c = serving.PSSClient(_TableTransport([("x", 1.1, 0.5, 0.3), ("y", 2.0, 0.9, 0.7)]))
    assert c.choose_tier(max_mflops=1.1).name == "x"
    assert c.choose_tier(latency_budget_ms=0.3).name == "x"


def test_choose_tier_names_the_cheapest_when_nothing_fits(table_client):
    with pytest.raises(
        serving.ServingError,
        match=r"^No tier fits max_mflops=9\.0, latency_budget_ms=None; "
        r"the cheapest is a \(10\.00 MFLOPs, 4\.00 ms\)\.$",
    ):
        table_client.choose_tier(max_mflops=9.0)
    with pytest.raises(serving.ServingError, match=r"latency_budget_ms=3\.0; the cheapest is a "):
        table_client.choose_tier(max_mflops=100, latency_budget_ms=3.0)


def test_choose_tier_through_the_servers_tier_table(client):
    tiers = client.tiers()
    # Only the cheapest tier fits its own cost (a float32 round trip).
    assert client.choose_tier(max_mflops=tiers[0].mflops) == tiers[0]
    # Every tier fits the largest one's cost.
    assert client.choose_tier(max_mflops=tiers[-1].mflops).top1 == max(t.top1 for t in tiers)
    with pytest.raises(
        serving.ServingError, match=f"No tier fits.*the cheapest is {tiers[0].name}"
    ):
        client.choose_tier(max_mflops=tiers[0].mflops / 2)


# -- errors ------------------------------------------------------------------


def test_bad_requests_are_refused_before_sending(client):
    names = client.tier_names()
    with pytest.raises(
        serving.ServingError, match=rf"Unknown tier 'flops_1m'; the server has \['{names[0]}'"
    ):
        client.predict(_images(), "flops_1m")
    with pytest.raises(serving.ServingError, match="must be uint8 RGB pixels"):
        client.predict(_images().astype(np.float32))
    with pytest.raises(
        serving.ServingError, match=r"\[batch, height, width, 3\].*\(2, 40, 52, 4\)"
    ):
        client.predict(_images((2, 40, 52, 4)))


def test_server_rejections_carry_the_status_through_the_transport(client, served):
    """The server's status reaches the caller as a ServingError naming it: the
    gRPC code, or the HTTP status plus the ``error`` of the JSON body."""
    protocol = "grpc" if isinstance(client.transport, serving.GrpcTransport) else "rest"
    status = {  # TF Serving's status per failure, as each protocol reports it
        "grpc": dict(signature="FAILED_PRECONDITION", dtype="INVALID_ARGUMENT", model="NOT_FOUND"),
        "rest": dict(signature="HTTP 400", dtype="HTTP 400", model="HTTP 404"),
    }[protocol]
    rejected = "^TF Serving rejected the request"
    with pytest.raises(
        serving.ServingError, match=rf'{rejected} \({status["signature"]}\): .*"nope"'
    ):
        client.transport.predict("nope", {"images": _images()})
    with pytest.raises(serving.ServingError, match=rf"{rejected} \({status['dtype']}\): "):
        client.transport.predict(client.tier_names()[0], {"images": _images().astype(np.float32)})
    other = serving.connect(_address(served[0], protocol), "no_such_model", protocol)
    try:
        with pytest.raises(
            serving.ServingError, match=rf"{rejected} \({status['model']}\): .*no_such_model"
        ):
            other.tiers()
    finally:
        other.close()


def _post(url, body):
    """(HTTP status, JSON body) of a POST with ``body`` as raw JSON text."""
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(
    "images, message",
    [
        ("[[[[1, 2, 3]]], [[[1, 2]]]]", "input images: lists of unequal lengths"),
        ("[]", r"input images has shape \[0\]"),
    ],
    ids=["ragged", "empty"],
)
def test_malformed_rest_inputs_get_http_400_with_a_message(served, images, message):
    """Nested lists numpy cannot make a tensor of, and an empty list, are
    the client's mistake: HTTP 400 and why, not a dropped connection."""
    server, summary, _ = served
    url = f"{server.rest_address}/v1/models/{MODEL}:predict"
    body = (
        f'{{"signature_name": "{summary["tiers"][0]["name"]}", "inputs": {{"images": {images}}}}}'
    )
    status, answer = _post(url, body)
    assert status == 400 and answer["error"]
    if isinstance(server, ModelServer):
        assert re.search(message, answer["error"])


def test_unreadable_grpc_tensor_is_invalid_argument(served):
    """A TensorProto whose bytes do not fill its shape (make_ndarray's
    ValueError) is INVALID_ARGUMENT, as TF Serving answers it."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    server, summary, _ = served
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = summary["tiers"][0]["name"]
    tensor = tf.make_tensor_proto(np.zeros((1, 2, 2, 3), np.uint8))
    tensor.tensor_content = tensor.tensor_content[:5]
    request.inputs["images"].CopyFrom(tensor)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class _RpcError(grpc.RpcError):
    """What a grpc stub raises: an RpcError with the call's code and details."""

    def __init__(self, code, details):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _Stub:
    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def Predict(self, request, timeout):  # noqa: N802 (grpc's name)
        self.calls.append((request, timeout))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def grpc_transport():
    t = serving.GrpcTransport("127.0.0.1:8500", MODEL, timeout=7.0)  # the channel is lazy
    yield t
    t.close()


REJECTED = "TF Serving rejected the request"
GRPC_UNREACHABLE = (
    "Cannot reach TF Serving at 127.0.0.1:8500 over gRPC ({}): is the server running and "
    "the port right (gRPC default 8500)?"
)

# Status codes and details as tensorflow_model_server sends them: NOT_FOUND from
# core/basic_manager.cc, FAILED_PRECONDITION from servables/tensorflow/
# predict_util.cc, INVALID_ARGUMENT from predict_util.cc and the TF runtime;
# UNAVAILABLE and DEADLINE_EXCEEDED come from grpc itself on the client side.
GRPC_CASES = [
    (
        "NOT_FOUND",
        "Servable not found for request: Latest(pss)",
        f"{REJECTED} (NOT_FOUND): Servable not found for request: Latest(pss)",
    ),
    (
        "FAILED_PRECONDITION",
        'Serving signature key "flops_1m" not found.',
        f'{REJECTED} (FAILED_PRECONDITION): Serving signature key "flops_1m" not found.',
    ),
    (
        "INVALID_ARGUMENT",
        "Expects arg[0] to be uint8 but float is provided",
        f"{REJECTED} (INVALID_ARGUMENT): Expects arg[0] to be uint8 but float is provided",
    ),
    (
        "INVALID_ARGUMENT",
        "input size does not match signature: 2!=1 len({images,x}) != len({images}). "
        "Sent extra: {x}. Missing but required: {}.",
        f"{REJECTED} (INVALID_ARGUMENT): input size does not match signature: 2!=1 "
        "len({images,x}) != len({images}). Sent extra: {x}. Missing but required: {}.",
    ),
    (
        "RESOURCE_EXHAUSTED",
        "Received message larger than max (8388653 vs. 4194304)",
        f"{REJECTED} (RESOURCE_EXHAUSTED): Received message larger than max (8388653 vs. 4194304)",
    ),
    (
        "UNAVAILABLE",
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8500: "
        "Failed to connect to remote host: Connection refused",
        GRPC_UNREACHABLE.format("UNAVAILABLE"),
    ),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", GRPC_UNREACHABLE.format("DEADLINE_EXCEEDED")),
]


@pytest.mark.parametrize("code, details, message", GRPC_CASES)
def test_grpc_status_codes_become_serving_errors(grpc_transport, code, details, message):
    grpc_transport._stub = stub = _Stub(_RpcError(getattr(grpc.StatusCode, code), details))
    with pytest.raises(serving.ServingError) as e:
        grpc_transport.predict("flops_1m", {"images": _images()})
    assert str(e.value) == message
    unreachable = code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert e.value.status == ("UNREACHABLE" if unreachable else code)
    assert e.value.__suppress_context__  # one error, not a chained grpc traceback
    assert stub.calls[0][1] == 7.0  # the transport's timeout is the call's deadline


def test_grpc_request_and_response_conversion(grpc_transport):
    response = predict_pb2.PredictResponse()
    response.outputs["logits"].CopyFrom(tf.make_tensor_proto(np.eye(2, 3, dtype=np.float32)))
    response.outputs["top5_classes"].CopyFrom(tf.make_tensor_proto(np.array([[b"cat"], [b"dog"]])))
    grpc_transport._stub = stub = _Stub(response)
    images = _images()
    out = grpc_transport.predict("flops_2m", {"images": images})
    request, _ = stub.calls[0]
    assert (request.model_spec.name, request.model_spec.signature_name) == (MODEL, "flops_2m")
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["images"]), images)
    assert request.inputs["images"].dtype == tf.uint8.as_datatype_enum
    np.testing.assert_array_equal(out["logits"], np.eye(2, 3))
    assert out["top5_classes"].tolist() == [[b"cat"], [b"dog"]]


class _Response(io.BytesIO):
    """What urlopen returns (a context manager with read())."""


def _http_error(status, reason, body):
    url = "http://127.0.0.1:8501/v1/models/pss:predict"
    return urllib.error.HTTPError(url, status, reason, {}, io.BytesIO(body))


REST_UNREACHABLE = (
    "Cannot reach TF Serving at http://127.0.0.1:8501 over REST ({}): is the server running "
    "and the port right (REST default 8501)?"
)

# HTTP statuses and bodies as tensorflow_model_server's REST API sends them:
# http_server.cc ToHTTPStatusCode (NOT_FOUND -> 404; INVALID_ARGUMENT and
# FAILED_PRECONDITION -> 400; UNAVAILABLE -> 503; DEADLINE_EXCEEDED -> 504),
# and util/json_tensor.cc MakeJsonFromStatus (a pretty-printed {"error": ...}).
# An unknown signature is INVALID_ARGUMENT over REST
# (http_rest_api_handler.cc GetInfoMap), a JSON value of the wrong type too
# (json_tensor.cc TypeError).
REST_CASES = [
    (
        _http_error(
            404, "Not Found", b'{\n    "error": "Servable not found for request: Latest(pss)"\n}'
        ),
        f"{REJECTED} (HTTP 404): Servable not found for request: Latest(pss)",
    ),
    (
        _http_error(
            400,
            "Bad Request",
            b'{\n    "error": "Serving signature name: \\"flops_1m\\" not found in signature def"\n}',
        ),
        f'{REJECTED} (HTTP 400): Serving signature name: "flops_1m" not found in signature def',
    ),
    (
        _http_error(
            400,
            "Bad Request",
            b'{\n    "error": "JSON Value: 0.5 Type: Number is not of expected type: uint8"\n}',
        ),
        f"{REJECTED} (HTTP 400): JSON Value: 0.5 Type: Number is not of expected type: uint8",
    ),
    (
        _http_error(503, "Service Unavailable", b'{ "error": "Servable is unavailable" }'),
        f"{REJECTED} (HTTP 503): Servable is unavailable",
    ),
    # Not TF Serving's JSON (a proxy's page, an empty body, JSON without
    # "error"): the HTTP reason phrase stands in.
    (
        _http_error(502, "Bad Gateway", b"<html>502 Bad Gateway</html>"),
        f"{REJECTED} (HTTP 502): Bad Gateway",
    ),
    (_http_error(504, "Gateway Timeout", b""), f"{REJECTED} (HTTP 504): Gateway Timeout"),
    (_http_error(400, "Bad Request", b'"not an object"'), f"{REJECTED} (HTTP 400): Bad Request"),
    (_http_error(400, "Bad Request", b'{"message": "x"}'), f"{REJECTED} (HTTP 400): Bad Request"),
    # No answer at all.
    (
        urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
        REST_UNREACHABLE.format("[Errno 111] Connection refused"),
    ),
    (TimeoutError("timed out"), REST_UNREACHABLE.format("timed out")),
]


@pytest.mark.parametrize("error, message", REST_CASES)
def test_rest_statuses_become_serving_errors(monkeypatch, error, message):
    requests = []

    def urlopen(request, timeout):
        requests.append((request, timeout))
        raise error

    monkeypatch.setattr(serving.urllib.request, "urlopen", urlopen)
    t = serving.RestTransport("127.0.0.1:8501", MODEL, timeout=7.0)
    with pytest.raises(serving.ServingError) as e:
        t.predict("flops_1m", {"images": _images()})
    assert str(e.value) == message
    code = getattr(error, "code", None)
    assert e.value.status == (f"HTTP {code}" if code else "UNREACHABLE")
    assert e.value.__suppress_context__
    assert requests[0][1] == 7.0


def test_rest_request_and_response_conversion(monkeypatch):
    requests, answers = [], []

    def urlopen(request, timeout):
        requests.append(request)
        return _Response(json.dumps(answers.pop(0)).encode())

    monkeypatch.setattr(serving.urllib.request, "urlopen", urlopen)
    t = serving.RestTransport("http://127.0.0.1:8501/", MODEL)
    images = _images((1, 2, 2, 3))
    answers.append({"outputs": {"logits": [[0.5, 1.5]], "top5_classes": [["cat"]]}})
    out = t.predict("flops_2m", {"images": images})
    request = requests[0]
    assert request.full_url == "http://127.0.0.1:8501/v1/models/pss:predict"
    assert request.get_method() == "POST"
    assert request.get_header("Content-type") == "application/json"
    assert json.loads(request.data) == {
        "signature_name": "flops_2m",
        "inputs": {"images": images.tolist()},
    }
    np.testing.assert_array_equal(out["logits"], [[0.5, 1.5]])
    assert out["top5_classes"].tolist() == [["cat"]]
    # One output: TF Serving sends the bare tensor, in columnar or row format.
    answers += [{"outputs": [[1, 2]]}, {"predictions": [[3, 4]]}]
    np.testing.assert_array_equal(t.predict("x", {})["output"], [[1, 2]])
    np.testing.assert_array_equal(t.predict("x", {})["output"], [[3, 4]])


@pytest.fixture
def unused_address():
    """A localhost address nobody listens on: the port stays bound, without
    listen(), for the whole test, so no other process can take it meanwhile
    and a connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_unreachable_server_names_the_address(protocol, unused_address):
    c = serving.connect(unused_address, MODEL, protocol, timeout=10)
    with pytest.raises(
        serving.ServingError, match=f"^Cannot reach TF Serving at .*{unused_address}"
    ):
        c.tiers()
    c.close()


def test_eight_concurrent_clients_with_mixed_tiers(served):
    server, summary, loaded = served
    names = [t["name"] for t in summary["tiers"]]
    errors, checked = [], []

    def worker(i):
        protocol = "grpc" if i % 2 else "rest"
        address = server.grpc_address if protocol == "grpc" else server.rest_address
        c = serving.connect(address, MODEL, protocol)
        try:
            for j in range(6):
                tier = names[(i + j) % len(names)]
                images = _images((1, 36, 36, 3), seed=100 * i + j)
                out = c.predict(images, tier)
                expected = loaded.signatures[tier](images=tf.constant(images))["logits"].numpy()
                np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
                checked.append(tier)
        except Exception as e:  # collected for the assertion below
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(checked) == 48 and set(checked) == set(names)


def _tiers(*mflops):
    return [serving.Tier(f"t{m}", "flops", m, m, 0, 32, 0.5 + m / 100, 1.0) for m in mflops]


def test_median_step_policy_steps_down_and_back_up():
    """The earlier policy (median of a few requests), kept for comparison."""
    policy = serving.MedianStepPolicy(_tiers(1, 2, 3), objective_ms=10, window=3, headroom=0.5)
    assert policy.tier.name == "t3"
    for _ in range(3):
        policy.observe(15)  # objective missed
    assert policy.tier.name == "t2"
    for _ in range(3):
        policy.observe(12)
    assert policy.tier.name == "t1"
    for _ in range(3):
        policy.observe(11)  # already the cheapest: stays
    assert policy.tier.name == "t1"
    policy.observe(2)
    assert policy.tier.name == "t1"  # median of the last 3 (11, 11, 2) still misses
    policy.observe(2)
    assert policy.tier.name == "t2"  # median 2 < headroom: back up, window cleared
    for _ in range(3):
        policy.observe(7)  # between headroom and objective: stay
    assert policy.tier.name == "t2" and policy.switches == 3
    with pytest.raises(ValueError, match="objective_ms must be positive"):
        serving.MedianStepPolicy(_tiers(1), objective_ms=0)


class _SimulatedClock:
    """Seconds that pass only when a simulated request takes time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _SimulatedLoad:
    """Wraps a transport: every request still reaches the server, and then
    the clock advances by that tier's cost alone times ``load`` (the requests
    a saturated server would be serving at once)."""

    def __init__(self, transport, clock, cost_ms):
        self.transport, self.clock, self.cost_ms = transport, clock, cost_ms
        self.load, self.sent = 1, []

    def predict(self, signature, inputs):
        outputs = self.transport.predict(signature, inputs)
        if signature in self.cost_ms:
            self.sent.append(signature)
            self.clock.now += self.cost_ms[signature] * self.load / 1000
        return outputs

    def close(self):
        self.transport.close()


def test_median_step_policy_times_requests_with_its_clock():
    assert serving.MedianStepPolicy(_tiers(1), objective_ms=10).clock is time.perf_counter
    clock, sent = _SimulatedClock(), []

    class Client:
        def predict(self, images, tier):
            sent.append(tier)
            clock.now += 0.025  # each request takes 25 ms
            return {"tier": tier}

    policy = serving.MedianStepPolicy(_tiers(1, 2), objective_ms=10, window=1, clock=clock)
    outputs, tier, ms = policy.predict(Client(), None)
    assert (outputs, tier.name, ms) == ({"tier": "t2"}, "t2", pytest.approx(25))
    assert policy.history == [("t2", pytest.approx(25))] and policy.tier.name == "t1"
    clock.now += 100  # time between requests is not a request's latency
    _, tier, ms = policy.predict(Client(), None)
    assert (tier.name, ms) == ("t1", pytest.approx(25)) and sent == ["t2", "t1"]


def test_adaptive_policy_under_load(client, served):
    """The policy driving a real client: under 8x load every tier misses the
    objective, so after one window it jumps straight to the cheapest; without
    load every tier meets it with headroom, so after a window (the hold) it
    goes straight back to the largest. The requests reach the server; only their latency
    is simulated (a clock that advances by tier cost x load), so the outcome
    does not depend on the machine's speed."""
    _, _, loaded = served
    tiers = client.tiers()
    # Alone, 10 ms (cheapest) to 20 ms (largest): below headroom x objective
    # (0.7 x 60 = 42 ms). Under 8x load, 80 to 160 ms: above the objective.
    n = len(tiers)
    cost = {t.name: 10 + 10 * i / (n - 1) for i, t in enumerate(tiers)}
    clock = _SimulatedClock()
    load = _SimulatedLoad(client.transport, clock, cost)
    policy_client = serving.PSSClient(load)
    # Accuracy rising with cost, so that no tier is dominated (the tiny job's
    # own top-1 may tie at chance).
    simulated = [
        dataclasses.replace(t, latency_ms=cost[t.name], top1=0.5 + i / 100)
        for i, t in enumerate(policy_client.tiers())
    ]
    policy = serving.AdaptiveTierPolicy(
        simulated, objective_ms=60, latency_source="measured", clock=clock
    )
    kept = policy.tiers
    assert [t.name for t in kept] == [t.name for t in tiers] and n >= 2 and policy.window == 20
    images = _images((1, 32, 32, 3))
    expected = {
        t.name: loaded.signatures[t.name](images=tf.constant(images))["logits"].numpy()
        for t in tiers
    }

    def run(requests):
        for _ in range(requests):
            outputs, tier, ms = policy.predict(policy_client, images)
            np.testing.assert_allclose(outputs["logits"], expected[tier.name], atol=1e-5)
            assert ms == pytest.approx(cost[tier.name] * load.load)

    load.load = 8
    run(20)
    assert policy.tier == kept[0] and policy.switches == 1
    load.load = 1
    run(40)  # a window at the cheapest, then straight up to the largest, which stays
    assert policy.tier == kept[-1] and policy.switches == 2
    down = [kept[-1].name] * 20
    up = [kept[0].name] * 20 + [kept[-1].name] * 20
    assert [name for name, _ in policy.history] == down + up
    assert load.sent == down + up  # the tier the policy chose is the one requested
    assert [ms for _, ms in policy.history] == pytest.approx(
        [cost[name] * 8 for name in down] + [cost[name] for name in up]
    )


def test_query_script_prints_top5_from_the_right_tier(served, tmp_path):
    server, summary, loaded = served
    image = _images((1, 48, 48, 3))[0]
    path = tmp_path / "img.png"
    path.write_bytes(tf.io.encode_png(image).numpy())
    tier = summary["tiers"][1]["name"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def query(*flags):
        return subprocess.run(
            [
                sys.executable,
                "scripts/query.py",
                f"--server={server.grpc_address}",
                f"--model_name={MODEL}",
                *flags,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    result = query(f"--tier={tier}", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    expected = loaded.signatures[tier](images=tf.constant(image[None]))["top5_classes"].numpy()[0]
    assert f"[{tier}]" in result.stdout
    assert [line.split(". ", 1)[1].split(" (")[0] for line in result.stdout.splitlines()[1:6]] == [
        c.decode() for c in expected
    ]
    cheapest = summary["tiers"][0]
    result = query(f"--max_mflops={cheapest['mflops']}", str(path))
    assert result.returncode == 0 and f"[{cheapest['name']}]" in result.stdout
    result = query("--tier=flops_1m", str(path))
    assert (
        result.returncode == 1
        and "Unknown tier 'flops_1m'" in result.stderr.strip().splitlines()[-1]
    )
    rest = subprocess.run(
        [
            sys.executable,
            "scripts/query.py",
            "--protocol=rest",
            f"--server={server.rest_address}",
            f"--model_name={MODEL}",
            "--list_tiers",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert rest.returncode == 0 and all(t["name"] in rest.stdout for t in summary["tiers"])


# -- the stand-in as its own process, and the soak ---------------------------


def test_stand_in_runs_as_its_own_process_and_soaks_without_errors(served):
    """The stand-in in its own process on the export's base path (ports
    chosen by the OS and reported), soaked over both transports; a tier the
    model lacks is counted as an error, not a crash."""
    _, summary, _ = served
    base = os.path.dirname(summary["path"])
    names = [t["name"] for t in summary["tiers"]]
    pinned = hasattr(os, "sched_setaffinity")
    cpu = max(os.sched_getaffinity(0)) if pinned else None
    server = soak.ServerProcess(base, MODEL, threads=1, cpus=[cpu] if pinned else None)
    try:
        label = "stand-in (tf.compat.v1 Session), 1 threads"
        if pinned:  # the server and the threads it started run on that CPU only
            assert server.label == f"{label}, pinned to CPUs [{cpu}]"
            threads = os.listdir(f"/proc/{server.proc.pid}/task")
            assert len(threads) > 1
            assert all(os.sched_getaffinity(int(t)) == {cpu} for t in threads)
        else:
            assert server.label == label
        results = [
            soak.run_soak(_address(server, p), MODEL, p, names, requests=8 * len(names), clients=4)
            for p in ("grpc", "rest")
        ]
        bad = soak.run_soak(server.grpc_address, MODEL, "grpc", [names[0], "flops_1m"], 6, 2)
    finally:
        server.stop()
    assert server.proc.returncode is not None
    assert server.proc.stdout.closed and server._log.closed
    for r in results:
        assert (r["requests"], r["errors"], r["first_errors"]) == (8 * len(names), 0, [])
        assert {n: t["requests"] for n, t in r["tiers"].items()} == dict.fromkeys(names, 8)
    assert (bad["requests"], bad["errors"], bad["tiers"]["flops_1m"]["errors"]) == (6, 3, 3)
    assert 'Serving signature key "flops_1m" not found' in bad["first_errors"][0]
    table = soak.format_table(results).splitlines()
    assert len(table) == 2 + 2 * (len(names) + 1)
    assert table[2].startswith(f"| grpc | {names[0]} | 8 | 0 | ")


def test_stand_in_process_reports_a_refused_model(served, tmp_path):
    _, summary, _ = served
    path = _with_warmup(summary["path"], tmp_path, _rename_signature)
    with pytest.raises(
        RuntimeError,
        match=r"^The stand-in did not start: error: Refused .* FAILED_PRECONDITION: Serving ",
    ):
        soak.ServerProcess(path, MODEL)


# -- the soak's accounting, with fake clients ---------------------------------


class _FakeClient:
    """What `serving.connect` returns, answering every request at once, or,
    given ``clock`` and ``ms``, after ``ms[tier]``'s next value of that clock."""

    def __init__(self, clock=None, ms=None):
        self.transport, self.clock, self.ms = self, clock, ms
        self.closed = False

    def predict(self, tier, inputs):
        if self.clock is not None:
            self.clock[0] += self.ms[tier].pop(0) / 1000
        return {"logits": np.zeros((1, 10), np.float32)}

    def close(self):
        self.closed = True


def test_soak_refuses_an_unknown_protocol_before_any_client(monkeypatch):
    connected = []
    monkeypatch.setattr(serving, "connect", lambda *args: connected.append(args))
    with pytest.raises(
        ValueError, match=r"protocol 'http' is unknown; use one of \('grpc', 'rest'\)"
    ):
        soak.run_soak("127.0.0.1:1", MODEL, "http", ["a"], requests=4, clients=2)
    assert connected == []


def test_soak_counts_a_client_that_cannot_connect(monkeypatch):
    """The failed client is an error; the others send every request."""
    calls, clients = [], []

    def connect(address, model_name, protocol, timeout):
        calls.append(address)
        if len(calls) == 1:
            raise ConnectionError("no route")
        clients.append(_FakeClient())
        return clients[-1]

    monkeypatch.setattr(serving, "connect", connect)
    r = soak.run_soak("127.0.0.1:1", MODEL, "grpc", ["a", "b"], requests=12, clients=3)
    assert (r["requests"], r["errors"], r["connect_errors"]) == (12, 1, 1)
    assert r["first_errors"] == ["connect: ConnectionError('no route')"]
    assert {n: (t["requests"], t["errors"]) for n, t in r["tiers"].items()} == {
        "a": (6, 0),
        "b": (6, 0),
    }
    assert len(calls) == 3 and all(c.closed for c in clients)


def test_soak_percentiles_are_those_of_each_tiers_latencies(monkeypatch):
    clock = [0.0]
    ms = {"a": [1.0, 3.0, 5.0], "b": [2.0, 4.0, 100.0]}
    monkeypatch.setattr(soak.time, "perf_counter", lambda: clock[0])
    fake = _FakeClient(clock, {k: list(v) for k, v in ms.items()})
    monkeypatch.setattr(serving, "connect", lambda *args: fake)
    r = soak.run_soak("127.0.0.1:1", MODEL, "rest", ["a", "b"], requests=6, clients=1)
    assert r["tiers"]["a"]["p50_ms"] == pytest.approx(3.0)
    assert r["tiers"]["a"]["p99_ms"] == pytest.approx(4.96)  # 3 + 0.98 * (5 - 3)
    assert r["tiers"]["b"]["p50_ms"] == pytest.approx(4.0)
    assert r["tiers"]["b"]["p99_ms"] == pytest.approx(98.08)  # 4 + 0.98 * (100 - 4)
    assert r["seconds"] == pytest.approx(0.115)
