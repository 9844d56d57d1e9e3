"""The soak (pss_keras.benchmarking.soak): the stand-in in its own process,
soaked over both transports; the soak's accounting with fake clients."""

import os

import numpy as np
import pytest
from serving_fixtures import MODEL, _address, _rename_signature, _with_warmup

from pss_keras.benchmarking import soak
from pss_keras.serving import client as serving

pytest_plugins = ["serving_fixtures"]


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
