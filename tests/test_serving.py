"""The client against TF Serving (when installed) or the stand-in server."""

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from serving_server import ModelServer, free_port  # noqa: I001

from pss_keras import export, serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "pss"


def _real_server_binary():
    return os.environ.get("TF_MODEL_SERVER") or shutil.which("tensorflow_model_server")


class RealServer:
    """tensorflow_model_server as a subprocess (used when it is installed)."""

    def __init__(self, binary, base_path):
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--port={self.grpc_port}",
                f"--rest_api_port={self.rest_port}",
                f"--model_name={MODEL}",
                f"--model_base_path={base_path}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.rest_address}/v1/models/{MODEL}", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("tensorflow_model_server did not come up")

    grpc_address = property(lambda self: f"127.0.0.1:{self.grpc_port}")
    rest_address = property(lambda self: f"http://127.0.0.1:{self.rest_port}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def served(trained_job, tmp_path_factory):
    config, _ = trained_job
    base = tmp_path_factory.mktemp("serving") / MODEL
    summary = export.export(config.job_dir, str(base), latency_repeats=3)
    binary = _real_server_binary()
    server = (
        RealServer(binary, str(base)) if binary else ModelServer(summary["path"], MODEL).start()
    )
    loaded = tf.saved_model.load(summary["path"])
    yield server, summary, loaded
    server.stop()


@pytest.fixture(params=["grpc", "rest"])
def client(request, served):
    server = served[0]
    address = server.grpc_address if request.param == "grpc" else server.rest_address
    c = serving.connect(address, MODEL, request.param, timeout=30)
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


def test_budget_picks_the_most_accurate_tier_within_it(client):
    tiers = client.tiers()
    mid = tiers[len(tiers) // 2]
    chosen = client.choose_tier(max_mflops=mid.mflops)
    within = [t for t in tiers if t.mflops <= mid.mflops]
    assert chosen.mflops <= mid.mflops and chosen.top1 == max(t.top1 for t in within)
    assert client.choose_tier(latency_budget_ms=1e9).top1 == max(t.top1 for t in tiers)
    with pytest.raises(
        serving.ServingError, match=f"No tier fits.*the cheapest is {tiers[0].name}"
    ):
        client.choose_tier(max_mflops=tiers[0].mflops / 2)


def test_bad_requests_get_clear_errors(client):
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
    # The server's own answers, bypassing the client-side checks.
    with pytest.raises(serving.ServingError, match='Serving signature key "nope" not found'):
        client.transport.predict("nope", {"images": _images()})
    with pytest.raises(serving.ServingError, match="INVALID_ARGUMENT|HTTP 400"):
        client.transport.predict(names[0], {"images": _images().astype(np.float32)})


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_unreachable_server_names_the_address(protocol):
    address = f"127.0.0.1:{free_port()}"
    c = serving.connect(address, MODEL, protocol, timeout=2)
    with pytest.raises(serving.ServingError, match=f"Cannot reach TF Serving at .*{address}"):
        c.tiers()


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


def test_adaptive_policy_steps_down_and_back_up():
    policy = serving.AdaptiveTierPolicy(_tiers(1, 2, 3), objective_ms=10, window=3, headroom=0.5)
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
    assert policy.tier.name == "t2"
    with pytest.raises(ValueError, match="objective_ms must be positive"):
        serving.AdaptiveTierPolicy(_tiers(1), objective_ms=0)


def test_adaptive_policy_under_load(trained_job, tmp_path):
    """A loaded server gets slower; the policy steps down, then back up."""
    config, _ = trained_job
    summary = export.export(config.job_dir, str(tmp_path / MODEL), latency_repeats=1)
    # Simulated cost: alone, the largest tier takes ~20 ms and a cheaper one
    # proportionally less; with n requests in flight, n times as long.
    factor = 20.0 / max(t["mflops"] for t in summary["tiers"])
    server = ModelServer(summary["path"], MODEL, load_delay_ms_per_mflop=factor).start()
    try:
        c = serving.connect(server.grpc_address, MODEL, "grpc")
        tiers = c.tiers()
        largest = tiers[-1]
        # Met with headroom (< 30 ms) by every tier alone, missed under 8
        # parallel clients by all but the cheapest.
        objective = 60.0
        policy = serving.AdaptiveTierPolicy(tiers, objective_ms=objective, window=4, headroom=0.5)
        images = _images((1, 32, 32, 3))
        stop = threading.Event()

        def load():
            lc = serving.connect(server.grpc_address, MODEL, "grpc")
            while not stop.is_set():
                lc.predict(images, largest.name)
            lc.close()

        workers = [threading.Thread(target=load) for _ in range(8)]
        for w in workers:
            w.start()
        try:
            for _ in range(40):
                policy.predict(c, images)
                if policy.tier.name == tiers[0].name:
                    break
        finally:
            stop.set()
            for w in workers:
                w.join(60)
        assert policy.tier.name == tiers[0].name, policy.history
        under_load = len(policy.history)
        for _ in range(40):
            policy.predict(c, images)
            if policy.tier.name == largest.name:
                break
        assert policy.tier.name == largest.name, policy.history[under_load:]
        c.close()
    finally:
        server.stop()


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
