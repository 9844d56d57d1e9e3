"""Soak test of the served model: 16 concurrent clients, mixed tiers, gRPC and REST.

    python benchmarks/benchmark_serving_soak.py                        # tiny random export
    python benchmarks/benchmark_serving_soak.py --export_dir=saved_models/quickstart
    python benchmarks/benchmark_serving_soak.py --server_binary=/usr/bin/tensorflow_model_server

Starts the server in its own process on 127.0.0.1 (tensorflow_model_server
when on PATH, named by TF_MODEL_SERVER or given by --server_binary, else the
stand-in, `pss_keras.testing.model_server`), then sends --requests requests over
gRPC and as many over REST from --clients threads, every request on the
next tier in turn (one image of the export's input size). Prints, per
transport and tier, requests, errors, p50 and p99 latency (ms, as the
client sees it), with the server and, under the table, the machine
(`pss_keras.utils.timing.write_benchmark`); writes JSON. Without
--export_dir it exports a tiny supernet with random weights first
(`pss_keras.testing.synthetic_job`: MobileNetV1 at width 0.25, 16..32 px, 3 tiers;
no training, no download). Measured on 2 CPU cores with the tiny export: about
65 s in all (30 s of it the export), zero errors; it exits with an error if
any request failed or the time limit cut a transport short.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

flags.DEFINE_string("export_dir", None, "Model base path (versions inside); default: tiny random.")
flags.DEFINE_string("model_name", "pss", "Model name the requests use.")
flags.DEFINE_enum("server", "auto", ["auto", "standin", "binary"], "Which server to soak.")
flags.DEFINE_string("server_binary", None, "tensorflow_model_server (default: from PATH).")
flags.DEFINE_integer("threads", None, "Server intra/inter-op threads (default: cores).", 1)
flags.DEFINE_integer("clients", 16, "Concurrent client threads.", lower_bound=1)
flags.DEFINE_integer("requests", 2000, "Requests per transport.", lower_bound=1)
flags.DEFINE_float("max_seconds", 600.0, "Time limit per transport.", lower_bound=1)
flags.DEFINE_list("protocols", ["grpc", "rest"], "Transports to soak, in order.")
flags.DEFINE_string("output", "bench_results/serving_soak.json", "JSON output path.")
F = flags.FLAGS


def main(argv):
    del argv
    from pss_keras.benchmarking import soak
    from pss_keras.export import saved_model as export
    from pss_keras.testing import synthetic_job
    from pss_keras.testing.served_model import version_dir
    from pss_keras.utils import timing

    binary = F.server_binary or soak.server_binary()
    if F.server == "binary" and not binary:
        sys.exit("error: --server=binary but no tensorflow_model_server (--server_binary).")
    binary = binary if F.server != "standin" else None
    threads = F.threads or os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = F.export_dir
        if export_dir is None:
            export_dir = os.path.join(tmp, F.model_name)
            print("exporting a tiny supernet with random weights ...", flush=True)
            job_dir = os.path.join(tmp, "job")
            synthetic_job.write(job_dir)
            export.export(job_dir, export_dir, latency_repeats=3)
        with open(os.path.join(version_dir(export_dir)[0], "assets.extra", "tiers.json")) as f:
            exported = json.load(f)
        tiers = [t["name"] for t in exported["tiers"]]
        server = soak.ServerProcess(export_dir, F.model_name, binary, threads)
        try:
            label = server.label
            results = [
                soak.run_soak(
                    server.grpc_address if protocol == "grpc" else server.rest_address,
                    F.model_name,
                    protocol,
                    tiers,
                    F.requests,
                    F.clients,
                    exported["image_size"],
                    F.max_seconds,
                )
                for protocol in F.protocols
            ]
        finally:
            server.stop()
    print(f"server: {label}; export: {F.export_dir or 'tiny random (width 0.25, 16..32 px)'}")
    print(f"{F.clients} clients, batch 1, {exported['image_size']} px images, tiers in turn\n")
    print(soak.format_table(results))
    for r in results:
        for error in r["first_errors"]:
            print(f"{r['protocol']} error: {error}")
    timing.write_benchmark(
        F.output,
        {
            "server": label,
            "export_dir": F.export_dir,
            "image_size": exported["image_size"],
            "results": results,
        },
    )
    if any(r["errors"] or r["requests"] < F.requests for r in results):
        sys.exit("error: the soak had errors or hit its time limit")


if __name__ == "__main__":
    app.run(main)
