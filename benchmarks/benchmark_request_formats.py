"""Request size and latency of pixels vs encoded images, over gRPC and REST.

    python benchmarks/benchmark_request_formats.py --job_dir=jobs/quickstart \\
        --images=imagenette2-224.tar

Exports the job (a temporary version), serves it in its own process (the
stand-in, or tensorflow_model_server when on PATH or named by
TF_MODEL_SERVER), and sends the same JPEG files one at a time as:

* ``uint8``: decoded by the client (`tf.io.decode_jpeg`), sent as pixels to
  the tier's signature (REST: a JSON list of numbers, as
  `pss_keras.serving.transports.RestTransport` writes it);
* ``jpeg``: the file's bytes to ``<tier>_bytes`` (REST: ``{"b64": ...}``),
  decoded by the server.

Prints per protocol and format the mean request size (REST: the JSON body;
gRPC: the serialized PredictRequest) and the p50 / p99 latency seen by the
client, and checks that both formats give the same answer for every tier
on every image (max |logit difference|, top-1 agreement). Formats and
protocols take turns in rounds, so a drift of the machine's speed does not
favour one. Writes JSON with the machine.
"""

import json
import os
import shutil
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

flags.DEFINE_string("job_dir", "jobs/quickstart", "A finished job to export and serve.")
flags.DEFINE_string(
    "images", None, "A folder of JPEG files, or a tar of them (read in place, JPEGs only)."
)
flags.mark_flag_as_required("images")
flags.DEFINE_integer("num_images", 50, "Images used (cycled over the requests).")
flags.DEFINE_integer("requests", 300, "Timed requests per protocol and format (3 rounds).")
flags.DEFINE_list("tiers", None, "Tiers timed (default: the cheapest and the costliest).")
flags.DEFINE_integer("threads", 0, "Server's TensorFlow threads (0: its default).")
flags.DEFINE_string("output", "bench_results/request_formats.json", "JSON output path.")
F = flags.FLAGS

FORMATS = ("uint8", "jpeg")
PROTOCOLS = ("grpc", "rest")


def read_jpegs(source: str, count: int) -> list[bytes]:
    """The first ``count`` JPEG files (by name) of a folder or a tar.

    Raises:
        ValueError: if ``source`` is missing or holds no JPEG.
    """
    is_jpeg = lambda name: name.lower().endswith((".jpg", ".jpeg"))  # noqa: E731
    if os.path.isdir(source):
        names = sorted(
            os.path.join(d, f) for d, _, files in os.walk(source) for f in files if is_jpeg(f)
        )[:count]
        files = [open(n, "rb").read() for n in names]
    elif os.path.isfile(source) and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and is_jpeg(m.name)),
                key=lambda m: m.name,
            )[:count]
            files = [tar.extractfile(m).read() for m in members]
    else:
        raise ValueError(f"--images={source} is neither a folder nor a tar file of JPEGs.")
    if not files:
        raise ValueError(f"--images={source} holds no .jpg/.jpeg file.")
    return files


def request_bytes(protocol: str, signature: str, inputs: dict) -> int:
    """The size of the request the transport sends (REST body, gRPC message)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from pss_keras.serving.transports import _json_tensor

    if protocol == "rest":
        body = {
            "signature_name": signature,
            "inputs": {k: _json_tensor(v) for k, v in inputs.items()},
        }
        return len(json.dumps(body).encode())
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "pss", signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request.ByteSize()


def agreement(client, tiers, files) -> dict:
    """Per tier: max |logit difference| and top-1 agreement of the two formats."""
    import numpy as np
    import tensorflow as tf

    out = {}
    for tier in tiers:
        diffs, same = [], 0
        for data in files:
            pixels = tf.io.decode_jpeg(data, channels=3).numpy()
            a = client.predict(pixels, tier)["logits"][0]
            b = client.predict([data], tier)["logits"][0]
            diffs.append(float(np.abs(a - b).max()))
            same += int(a.argmax() == b.argmax())
        out[tier] = {"max_abs_logit_diff": max(diffs), "top1_agree": f"{same}/{len(files)}"}
    return out


def time_requests(clients, tiers, files, requests: int) -> dict:
    """``{(protocol, format, tier): [ms, ...]}``, formats and protocols in turns."""
    import tensorflow as tf

    pixels = [tf.io.decode_jpeg(f, channels=3).numpy() for f in files]
    times = {}
    per_round = max(1, requests // 3)
    for _ in range(3):
        for tier in tiers:
            for protocol in PROTOCOLS:
                for fmt in FORMATS:
                    client = clients[protocol]
                    ms = times.setdefault((protocol, fmt, tier), [])
                    for i in range(per_round):
                        image = [files[i % len(files)]] if fmt == "jpeg" else pixels[i % len(files)]
                        start = time.perf_counter()
                        client.predict(image, tier)
                        ms.append((time.perf_counter() - start) * 1e3)
    return times


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from pss_keras import serving
    from pss_keras.benchmarking import soak
    from pss_keras.export import saved_model
    from pss_keras.utils import timing

    files = read_jpegs(F.images, F.num_images)
    work = tempfile.mkdtemp(prefix="request_formats-")
    try:
        summary = saved_model.export(F.job_dir, os.path.join(work, "pss"), latency_repeats=3)
        names = [t["name"] for t in sorted(summary["tiers"], key=lambda t: t["mflops"])]
        tiers = F.tiers or sorted({names[0], names[-1]}, key=names.index)
        server = soak.ServerProcess(
            os.path.join(work, "pss"), "pss", soak.server_binary(), F.threads or None
        )
        clients = {
            "grpc": serving.connect(server.grpc_address, "pss", "grpc"),
            "rest": serving.connect(server.rest_address, "pss", "rest"),
        }
        try:
            checks = agreement(clients["grpc"], names, files)
            checks_rest = agreement(clients["rest"], tiers, files[:10])
            times = time_requests(clients, tiers, files, F.requests)
            label = server.label
        finally:
            for c in clients.values():
                c.close()
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sizes = {}
    for protocol in PROTOCOLS:
        for fmt in FORMATS:
            sizes[protocol, fmt] = float(
                np.mean(
                    [
                        request_bytes(
                            protocol,
                            tiers[0] + ("_bytes" if fmt == "jpeg" else ""),
                            {"image_bytes": np.array([f], object)}
                            if fmt == "jpeg"
                            else {"images": tf.io.decode_jpeg(f, channels=3).numpy()[None]},
                        )
                        for f in files
                    ]
                )
            )
    rows = []
    print(f"server: {label}; client in another process on the same machine; batch 1")
    print(f"{'protocol':<9}{'format':<7}{'tier':<16}{'request KB':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for (protocol, fmt, tier), ms in times.items():
        p50, p99 = (float(np.percentile(ms, q)) for q in (50, 99))
        kb = sizes[protocol, fmt] / 1e3
        print(f"{protocol:<9}{fmt:<7}{tier:<16}{kb:>11.1f}{p50:>9.2f}{p99:>9.2f}")
        rows.append(
            {
                "protocol": protocol,
                "format": fmt,
                "tier": tier,
                "request_bytes": sizes[protocol, fmt],
            }
            | {"p50_ms": p50, "p99_ms": p99, "requests": len(ms)}
        )
    print("same answer, uint8 vs jpeg (gRPC, every tier, every image):")
    for tier, check in checks.items():
        print(
            f"  {tier:<16} max |logit diff| {check['max_abs_logit_diff']:.2e}, top-1 {check['top1_agree']}"
        )
    timing.write_benchmark(
        F.output,
        {
            "command": "python benchmarks/benchmark_request_formats.py "
            + " ".join(
                f"--{k}={getattr(F, k)}" for k in ("job_dir", "images", "num_images", "requests")
            ),
            "server": label,
            "images": f"{len(files)} JPEGs from {F.images}",
            "rows": rows,
            "agreement_grpc": checks,
            "agreement_rest": checks_rest,
        },
    )


if __name__ == "__main__":
    app.run(main)
