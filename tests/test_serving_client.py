"""PSSClient and connect (pss_keras.serving.client): tiers from the
tiers signature or metadata, choose_tier, predict, scripts/query.py;
against TF Serving (when installed) or the stand-in, and fake transports."""

import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from serving_fixtures import MODEL, ROOT, _address, _images, _start_server

from pss_keras import serving
from pss_keras.jobs.tiers import TIER_TABLE_SIGNATURE, TIERS_SIGNATURE

pytest_plugins = ["serving_fixtures"]


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

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def narrow_bytes(self, image_bytes):
        images = tf.map_fn(
            lambda b: tf.image.resize(tf.io.decode_image(b, 3, expand_animations=False), [24, 24]),
            image_bytes,
            fn_output_signature=tf.float32,
        )
        return self._tier(images, 1.0)


class _OldExport(_NoTiersModel):
    """An export from before ``tier_table``: its tier table is the
    input-less ``tiers`` signature (which TF Serving's REST API refuses)."""

    @tf.function(input_signature=[])
    def tiers(self):
        return {
            "names": tf.constant(["narrow", "wide"]),
            "metric_types": tf.constant(["flops", "flops"]),
            "targets": tf.constant([1.0, 2.0]),
            "mflops": tf.constant([1.0, 2.0]),
            "params": tf.constant([10, 20], tf.int64),
            "resolutions": tf.constant([24, 32]),
            "top1": tf.constant([0.5, 0.6]),
            "latency_ms": tf.constant([1.0, 2.0]),
        }


def _serve_module(module, base, extra=()):
    signatures = {"wide": module.wide, "narrow": module.narrow, "scale": module.scale}
    signatures |= {name: getattr(module, name) for name in ("narrow_bytes", *extra)}
    tf.saved_model.save(
        module, str(base / "1"), signatures={**signatures, "serving_default": module.wide}
    )
    return _start_server(str(base))


@pytest.fixture(scope="module")
def no_tiers_server(tmp_path_factory):
    server = _serve_module(_NoTiersModel(), tmp_path_factory.mktemp("no_tiers") / MODEL)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def old_export_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("old_export") / MODEL
    server = _serve_module(_OldExport(), base, extra=("tiers",))
    yield server
    server.stop()


@pytest.mark.parametrize("protocol, source", [("grpc", "tiers"), ("rest", "metadata")])
def test_an_old_export_answers_through_tiers_or_metadata(old_export_server, protocol, source):
    """A model exported before ``tier_table``: gRPC reads its input-less
    ``tiers`` signature; TF Serving's REST API refuses that signature
    ("Failed to get input map"), so REST falls back to metadata."""
    c = serving.connect(_address(old_export_server, protocol), MODEL, protocol, timeout=30)
    try:
        tiers = c.tiers()
        assert c.tier_source == source
        assert [t.name for t in tiers] == ["narrow", "wide"]
        assert [t.mflops for t in tiers] == ([1.0, 2.0] if source == "tiers" else [None, None])
        # The old table has no encoded-image column; metadata finds narrow_bytes.
        expected = ["", ""] if source == "tiers" else ["narrow_bytes", ""]
        assert [t.bytes_signature for t in tiers] == expected
        with pytest.raises(serving.ServingError, match="Tier 'wide' takes no encoded images"):
            c.predict([b"\xff\xd8"], "wide")
    finally:
        c.close()


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
        # The encoded-image signature is narrow's, not a tier of its own.
        assert [t.bytes_signature for t in tiers] == ["narrow_bytes", ""]
        png = tf.io.encode_png(np.full((30, 20, 3), 10, np.uint8)).numpy()
        np.testing.assert_allclose(
            c.predict([png], "narrow")["logits"], [[10] * 3 + [-10] * 3], rtol=1e-6
        )
        with pytest.raises(serving.ServingError, match="^Name a tier for encoded images"):
            c.predict([png])
        # Budgets and accuracy need the tier table.
        needs = (
            r"needs each tier's MFLOPs and latency, which only the tier table "
            r"\('tier_table' signature\) gives; this server's tiers come from GetModelMetadata "
            r"\(names and input shapes only\)\. Choose a tier by name: \['narrow', 'wide'\]\.$"
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


def test_tier_table_signature_is_preferred_to_metadata(client):
    assert client.tiers()[0].mflops is not None and client.tier_source == "tier_table"


def test_tiers_are_read_from_the_first_table_signature_that_answers():
    """New client, old export over gRPC: ``tier_table`` is missing
    (FAILED_PRECONDITION), ``tiers`` answers."""

    class Transport(_TableTransport):
        def predict(self, signature, inputs):
            if signature == TIER_TABLE_SIGNATURE:
                self.calls.append(signature)
                raise serving.ServingError("not found", "FAILED_PRECONDITION")
            return super().predict(signature, inputs)

    client = serving.PSSClient(Transport(TABLE))
    assert [t.name for t in client.tiers()] == ["a", "b", "e", "c", "d"]
    assert client.tier_source == "tiers"
    assert client.transport.calls == [TIER_TABLE_SIGNATURE, TIERS_SIGNATURE]


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
        match=r"^The model has no tier: its tier table was refused \(tier_table: rejected "
        r"\(FAILED_PRECONDITION\); tiers: rejected \(FAILED_PRECONDITION\)\) and its metadata "
        r"lists no image signature",
    ):
        serving.PSSClient(Transport([])).tiers()


class _TableTransport:
    """Answers only the tier table (``tier_table`` with its ``dummy`` input,
    or ``tiers`` with none), with the table a server would send (float32
    numbers, bytes strings, in export order)."""

    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def predict(self, signature, inputs):
        self.calls.append(signature)
        assert (signature, inputs) in [(TIER_TABLE_SIGNATURE, {"dummy": 0}), (TIERS_SIGNATURE, {})]

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
    assert table_client.transport.calls == ["tier_table"]
    table_client.tiers(refresh=True)
    assert table_client.transport.calls == ["tier_table", "tier_table"]


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


# A job imported from an official checkpoint without validation data: NaN top-1.
NAN = float("nan")
UNMEASURED = [
    ("a", 10.0, NAN, 4.0),
    ("c", 30.0, NAN, 12.0),
    ("b", 20.0, NAN, 9.0),
    ("b_slow", 20.0, NAN, 11.0),  # b's MFLOPs, slower: the costlier of the two
]


@pytest.mark.parametrize(
    "budget, expected",
    [
        (dict(max_mflops=25), "b_slow"),
        (dict(max_mflops=19.9), "a"),
        (dict(latency_budget_ms=10), "b"),
        (dict(latency_budget_ms=11.5), "b_slow"),
        ({}, "c"),
    ],
)
def test_choose_tier_without_top1_picks_the_costliest_within_budget(budget, expected, caplog):
    c = serving.PSSClient(_TableTransport(UNMEASURED))
    assert all(t.top1 is None for t in c.tiers())  # NaN reads as "none"
    with caplog.at_level("WARNING", logger="pss_keras.serving.client"):
        assert c.choose_tier(**budget).name == expected
        assert c.choose_tier(**budget).name == expected
    said = [r.getMessage() for r in caplog.records if "no measured top-1" in r.getMessage()]
    assert len(said) == 1 and "picks by cost" in said[0]  # once per client


def test_choose_tier_with_some_tiers_unmeasured_picks_by_cost():
    # d is the most accurate measured tier; with e unmeasured, cost decides.
    rows = [("a", 10.0, 0.6, 4.0), ("d", 20.0, 0.9, 9.0), ("e", 30.0, NAN, 12.0)]
    c = serving.PSSClient(_TableTransport(rows))
    assert c.choose_tier(max_mflops=100).name == "e"
    assert c.choose_tier(max_mflops=25).name == "d"
    rows = [("a", 10.0, NAN, 4.0), ("d", 20.0, 0.5, 9.0), ("e", 30.0, 0.4, 12.0)]
    assert serving.PSSClient(_TableTransport(rows)).choose_tier().name == "e"


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


def test_encoded_images_give_the_prediction_of_their_pixels(client, served):
    """A JPEG and a PNG sent as bytes (b64 JSON over REST, a string tensor
    over gRPC) give what their pixels, decoded by the same decoder, give."""
    _, summary, _ = served
    rng = np.random.default_rng(5)
    files = [
        tf.io.encode_jpeg(rng.integers(0, 256, (44, 58, 3)).astype(np.uint8)).numpy(),
        tf.io.encode_png(rng.integers(0, 256, (37, 30, 3)).astype(np.uint8)).numpy(),
    ]
    for tier in summary["tiers"]:
        out = client.predict(files, tier["name"])
        for i, data in enumerate(files):
            pixels = tf.io.decode_image(data, channels=3).numpy()
            expected = client.predict(pixels, tier["name"])
            scale = np.abs(expected["logits"]).max()
            np.testing.assert_allclose(out["logits"][i], expected["logits"][0], atol=1e-5 * scale)
            assert list(out["top5_classes"][i]) == list(expected["top5_classes"][0])
    largest = max(summary["tiers"], key=lambda t: t["mflops"])["name"]
    np.testing.assert_array_equal(
        client.predict(files[0])["logits"], client.predict(files[0], largest)["logits"]
    )
    with pytest.raises(serving.ServingError, match="Unknown image file format"):
        client.predict([b"not an image"], largest)


def test_query_script_picks_the_same_tier_over_rest_and_grpc(served, run_script, tmp_path):
    """--max_mflops over REST reads the tier table through ``tier_table``
    (REST refuses the input-less ``tiers``) and picks gRPC's tier; --encoded
    sends the file's bytes and prints the same classes."""
    server, summary, _ = served
    path = tmp_path / "img.jpg"
    path.write_bytes(tf.io.encode_jpeg(_images((1, 48, 40, 3))[0]).numpy())
    budget = sorted(t["mflops"] for t in summary["tiers"])[1]
    outputs = {}
    for protocol, address in [("grpc", server.grpc_address), ("rest", server.rest_address)]:
        for encoded in ("--noencoded", "--encoded"):
            result = run_script(
                "scripts/query.py",
                f"--protocol={protocol}",
                f"--server={address}",
                f"--model_name={MODEL}",
                f"--max_mflops={budget}",
                encoded,
                str(path),
            )
            assert result.returncode == 0, result.stderr[-2000:]
            outputs[protocol, encoded] = result.stdout
    fits = [t for t in summary["tiers"] if t["mflops"] <= budget]
    chosen = max(fits, key=lambda t: (t["top1"], -t["mflops"]))["name"]
    assert all(f"[{chosen}]" in out for out in outputs.values()), outputs
    classes = [[line.split("(")[0] for line in out.splitlines()] for out in outputs.values()]
    assert all(c == classes[0] for c in classes), outputs
