"""A soak test of a served PSS model: concurrent clients, mixed tiers, percentiles.

`run_soak` sends a fixed number of requests over one transport (gRPC or
REST) from concurrent client threads, each request on the next tier of a
mixed rotation, bounded by a request count and a wall-clock limit. It counts
errors and reports latency percentiles per tier. `ServerProcess` runs the
server in a process of its own on 127.0.0.1 (the stand-in,
`pss_keras.testing.model_server`, or tensorflow_model_server), so that the clients'
threads do not share its interpreter. A model to soak without training
comes from `pss_keras.testing.synthetic_job` (benchmarks/benchmark_serving_soak.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

from pss_keras.serving import client as serving
from pss_keras.serving import transports


@dataclasses.dataclass
class TierStats:
    """One tier's requests over one transport."""

    requests: int = 0
    errors: int = 0
    latencies_ms: list = dataclasses.field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


def run_soak(
    address: str,
    model_name: str,
    protocol: str,
    tiers: list[str],
    requests: int = 2000,
    clients: int = 16,
    image_size: int = 32,
    max_seconds: float = 600.0,
    timeout: float = 30.0,
    seed: int = 0,
) -> dict:
    """Sends ``requests`` requests from ``clients`` threads, tiers mixed.

    Request ``i`` (taken from one shared counter, so the count is exact)
    goes to ``tiers[i % len(tiers)]`` with one random uint8 image of
    ``image_size`` pixels; each client thread has its own `PSSClient` (a
    gRPC channel; REST opens a connection per request, as urllib does).
    Any failure, a refusal or a malformed answer, counts as an error; so
    does a client that cannot connect (``connect_errors``; the other
    clients send its requests). Clients stop taking requests after
    ``max_seconds``.

    Returns:
        ``{"protocol", "clients", "requests", "errors", "connect_errors",
        "seconds", "first_errors", "tiers": {name: {"requests", "errors",
        "p50_ms", "p99_ms"}}}``; ``requests`` below the asked count means the
        time limit was hit (or no client could connect).

    Raises:
        ValueError: for a protocol other than ``grpc`` or ``rest`` (before
            any client starts).
    """
    if protocol not in transports.PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is unknown; use one of {transports.PROTOCOLS}.")
    soak = _Soak(tiers, requests, image_size, max_seconds, seed)

    def connect():
        return serving.connect(address, model_name, protocol, timeout)

    start = time.perf_counter()
    threads = [threading.Thread(target=soak.client_loop, args=(connect,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return soak.result(protocol, clients, time.perf_counter() - start)


class _Soak:
    """What the client threads of one `run_soak` share: the request counter
    (under ``lock``), each tier's `TierStats`, the first errors, the images
    and the deadline."""

    def __init__(self, tiers, requests, image_size, max_seconds, seed):
        self.tiers = tiers
        self.stats = {name: TierStats() for name in tiers}
        self.lock, self.counter, self.first_errors = threading.Lock(), iter(range(requests)), []
        self.connect_errors = 0
        images = np.random.default_rng(seed).integers(0, 256, (8, 1, image_size, image_size, 3))
        self.images = images.astype(np.uint8)
        self.deadline = time.monotonic() + max_seconds

    def client_loop(self, connect) -> None:
        """One client thread: ``connect()``, then requests from the shared
        counter until it or the time runs out."""
        try:
            client = connect()
        except Exception as e:  # this client sends nothing; the others take its share
            with self.lock:
                self.connect_errors += 1
                self._note(f"connect: {e!r}")
            return
        try:
            while time.monotonic() < self.deadline:
                with self.lock:
                    i = next(self.counter, None)
                if i is None:
                    return
                self._send(client, i)
        finally:
            client.close()

    def _send(self, client, i: int) -> None:
        """Request ``i``: on the next tier of the rotation, timed, counted."""
        name = self.tiers[i % len(self.tiers)]
        start = time.perf_counter()
        try:
            outputs = client.transport.predict(name, {"images": self.images[i % len(self.images)]})
            ok = outputs["logits"].shape[0] == 1
            error = None if ok else f"{name}: logits of shape {outputs['logits'].shape}"
        except Exception as e:  # a soak counts every failure, not only refusals
            error = f"{name}: {e if isinstance(e, transports.ServingError) else repr(e)}"
        ms = 1000 * (time.perf_counter() - start)
        with self.lock:
            s = self.stats[name]
            s.requests += 1
            if error:
                s.errors += 1
                self._note(error)
            else:
                s.latencies_ms.append(ms)

    def _note(self, error: str) -> None:
        """Keeps the first 5 errors (called under ``lock``)."""
        if len(self.first_errors) < 5:
            self.first_errors.append(error)

    def result(self, protocol: str, clients: int, seconds: float) -> dict:
        """`run_soak`'s answer, once every client thread has ended."""
        stats = self.stats.values()
        return {
            "protocol": protocol,
            "clients": clients,
            "requests": sum(s.requests for s in stats),
            "errors": self.connect_errors + sum(s.errors for s in stats),
            "connect_errors": self.connect_errors,
            "seconds": seconds,
            "first_errors": self.first_errors,
            "tiers": {
                name: {
                    "requests": s.requests,
                    "errors": s.errors,
                    "p50_ms": s.percentile(50),
                    "p99_ms": s.percentile(99),
                }
                for name, s in self.stats.items()
            },
        }


def format_table(results: list[dict]) -> str:
    """A Markdown table: one row per transport and tier, then its total."""
    lines = [
        "| transport | tier | requests | errors | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def ms(v):
        return f"{v:.2f}" if v is not None else "-"

    for r in results:
        for name, t in r["tiers"].items():
            lines.append(
                f"| {r['protocol']} | {name} | {t['requests']} | {t['errors']} | "
                f"{ms(t['p50_ms'])} | {ms(t['p99_ms'])} |"
            )
        rate = r["requests"] / r["seconds"] if r["seconds"] else 0.0
        lines.append(
            f"| {r['protocol']} | all ({r['clients']} clients, {r['seconds']:.1f} s, "
            f"{rate:.0f} req/s) | {r['requests']} | {r['errors']} | | |"
        )
    return "\n".join(lines)


def server_binary() -> str | None:
    """tensorflow_model_server as named by ``TF_MODEL_SERVER``, else from
    PATH; None when neither has it (then the stand-in serves)."""
    return os.environ.get("TF_MODEL_SERVER") or shutil.which("tensorflow_model_server")


class ServerProcess:
    """A model server in its own process, on 127.0.0.1 only.

    The stand-in (``binary=None``) is `pss_keras.testing.model_server.serve_json`
    in a fresh interpreter, on ports 0: it reports the ports it bound (no
    race with other processes). tensorflow_model_server must be told its
    ports, which come from `pss_keras.testing.model_server.free_port` and are
    retried if taken meanwhile (a port taken by a process that also sets
    SO_REUSEPORT, or an HTTP server on the REST port that answers the
    readiness probe, would go unnoticed: a residual race).

    Args:
        model_dir: the model's base path (versions inside) or, for the
            stand-in only, one version.
        model_name: the name requests use.
        binary: path of tensorflow_model_server (None: the stand-in; see
            `server_binary`).
        threads: TensorFlow intra- and inter-op threads of the server
            (None: its default).
        wait_s: how long loading and warm-up may take.
        cpus: CPUs the server process is pinned to (None: any; see
            `pss_keras.benchmarking.cpu_load.split_cpus`).

    Raises:
        RuntimeError: if the server exits or does not come up in time,
            with the end of its log.
    """

    def __init__(
        self,
        model_dir: str,
        model_name: str,
        binary: str | None = None,
        threads: int | None = None,
        wait_s: float = 300.0,
        cpus=None,
    ):
        self.model_name, self.binary, self.threads = model_name, binary, threads
        self.cpus = None if cpus is None else sorted(cpus)
        self.proc = self._reader = None
        self._log = tempfile.TemporaryFile()
        if binary:
            self._start_binary(os.path.abspath(model_dir), wait_s)
        else:
            self._start_standin(model_dir, wait_s)

    @property
    def label(self) -> str:
        """What serves the requests, for benchmark tables."""
        from pss_keras.testing.model_server import standin_label

        pinned = f", pinned to CPUs {self.cpus}" if self.cpus is not None else ""
        if not self.binary:
            return standin_label(self.threads) + pinned
        threads = f"{self.threads} threads" if self.threads else "default threads"
        version = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, timeout=60
        )
        text = (version.stdout + version.stderr).strip().splitlines()
        return f"{text[0] if text else 'tensorflow_model_server'}, {threads}{pinned}"

    def _pin(self):
        from pss_keras.benchmarking.cpu_load import pin_to

        return pin_to(self.cpus)

    def _start_standin(self, model_dir, wait_s):
        from pss_keras.testing.model_server import ServeConfig

        config = ServeConfig(model_dir, self.model_name, port=0, rest_api_port=0)
        config = dataclasses.replace(config, threads=self.threads)
        code = "import sys; from pss_keras.testing import model_server; model_server.serve_json(sys.argv[1])"
        args = [sys.executable, "-c", code, json.dumps(dataclasses.asdict(config))]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._log, env=env, preexec_fn=self._pin()
        )
        lines = queue.Queue()

        def read():
            for line in self.proc.stdout:
                lines.put(line.decode())
            lines.put("")

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        grpc_address = rest_address = None
        deadline = time.monotonic() + wait_s
        while grpc_address is None or rest_address is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if not line or time.monotonic() > deadline:
                self._terminate()  # its log is complete once it has exited
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"The stand-in did not start: {tail}")
            if line.startswith("Running gRPC ModelServer at "):
                grpc_address = line.split(" at ", 1)[1].split()[0]
            elif line.startswith("Exporting HTTP/REST API at:"):
                rest_address = line.split("at:", 1)[1].split()[0]
        self.grpc_address, self.rest_address = grpc_address, rest_address

    def _start_binary(self, base_path, wait_s, attempts=3):
        from pss_keras.testing.model_server import free_port

        for _ in range(attempts):
            grpc_port, rest_port = free_port(), free_port()
            args = [
                self.binary, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                f"--model_name={self.model_name}", f"--model_base_path={base_path}",
            ]  # fmt: skip
            if self.threads:
                args += [
                    f"--tensorflow_intra_op_parallelism={self.threads}",
                    f"--tensorflow_inter_op_parallelism={self.threads}",
                ]
            self.proc = subprocess.Popen(
                args, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=self._pin()
            )
            self.grpc_address = f"127.0.0.1:{grpc_port}"
            self.rest_address = f"http://127.0.0.1:{rest_port}"
            state = self._wait_until_available(wait_s)
            if state == "available":
                return
            self._terminate()
            if state == "timeout":
                break
        tail = self._log_tail()
        self.stop()
        raise RuntimeError(f"tensorflow_model_server did not start: {tail}")

    def _wait_until_available(self, wait_s):
        deadline = time.monotonic() + wait_s
        url = f"{self.rest_address}/v1/models/{self.model_name}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited"  # most likely a port taken since free_port()
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    status = json.loads(response.read())
                if any(v["state"] == "AVAILABLE" for v in status["model_version_status"]):
                    return "available"
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        return "timeout"

    def _log_tail(self) -> str:
        """The server log's last line (its reason, for the stand-in), then
        the log's end."""
        self._log.seek(0)
        log = self._log.read().decode(errors="replace")
        lines = [line for line in log.splitlines() if line.strip()]
        return f"{lines[-1] if lines else '(no output)'}\n{log[-2000:]}"

    def _terminate(self):
        """Ends the server process (if running) and closes its output pipe."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(10)  # it ends at the pipe's end, once the process is gone
        if self.proc.stdout is not None and (self._reader is None or not self._reader.is_alive()):
            self.proc.stdout.close()

    def stop(self):
        """Stops the server and closes its log (safe to call twice)."""
        self._terminate()
        self._log.close()
