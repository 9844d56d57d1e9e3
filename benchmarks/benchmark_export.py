"""Compares the export modes on a trained job: size, load time, memory, latency.

    python benchmarks/benchmark_export.py --job_dir=jobs/quickstart

Exports the job in every mode (`export.MODES`, to a temporary folder),
then, each in a fresh process: loads the SavedModel (time, resident-memory
growth) and times every tier signature at batch 1 and batch 32 (median).
Prints a table and writes JSON. For full-size figures without training,
see benchmarks/benchmark_serving.py.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

flags.DEFINE_string("job_dir", "jobs/quickstart", "A finished training job.")
flags.DEFINE_integer("repeats", 30, "Timed calls per tier and batch size.")
flags.DEFINE_string("output", "bench_results/export.json", "JSON output path.")
flags.DEFINE_integer("image_size", 224, "Internal: input size for --measure_saved_model.")
F = flags.FLAGS

flags.DEFINE_string(
    "measure_saved_model", None, "Internal: measure this SavedModel in this process, print JSON."
)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_saved_model(path: str, repeats: int, size: int) -> dict:
    """Load time, resident-memory growth and per-tier latency of one SavedModel.

    Run in a fresh process (the script calls itself with
    ``--measure_saved_model``): the memory growth of a load is only
    meaningful in a process that has loaded nothing else.
    """
    import numpy as np
    import tensorflow as tf

    from pss_keras.utils import timing

    before = _rss_mb()
    start = time.perf_counter()
    model = tf.saved_model.load(path)
    load_s = time.perf_counter() - start
    with open(os.path.join(path, "assets.extra", "tiers.json")) as f:
        table = json.load(f)
    rows = []
    for tier in table["tiers"]:
        fn = model.signatures[tier["name"]]
        row = {"name": tier["name"]}
        for batch in (1, 32):
            pixels = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), np.uint8)
            images = tf.constant(pixels)
            row[f"batch{batch}_ms"] = timing.median_ms(
                lambda fn=fn, images=images: fn(images=images)["logits"].numpy(), repeats
            )
        rows.append(row)
    return {"load_s": load_s, "rss_mb": _rss_mb() - before, "tiers": rows}


def _size_mb(path):
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total / 2**20


def main(argv):
    del argv
    if F.measure_saved_model:
        print(json.dumps(measure_saved_model(F.measure_saved_model, F.repeats, F.image_size)))
        return
    from pss_keras.export import saved_model as export
    from pss_keras.utils import timing

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in export.MODES:
            try:
                summary = export.export(F.job_dir, os.path.join(tmp, mode), mode, latency_repeats=3)
            except ValueError as e:
                sys.exit(f"error: {e}")
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
            out = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    f"--measure_saved_model={summary['path']}",
                    f"--repeats={F.repeats}",
                    f"--image_size={summary['image_size']}",
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode] = dict(
                measured,
                size_mb=_size_mb(summary["path"]),
                variables_mb=_size_mb(os.path.join(summary["path"], "variables")),
            )
    print(f"job {F.job_dir}, median of {F.repeats}")
    print(f"{'mode':<12}{'size MB':>9}{'vars MB':>9}{'load s':>8}{'RSS MB':>8}")
    for mode, r in results.items():
        print(
            f"{mode:<12}{r['size_mb']:>9.2f}{r['variables_mb']:>9.2f}{r['load_s']:>8.2f}{r['rss_mb']:>8.1f}"
        )
    print(f"\n{'tier':<16}" + "".join(f"{m + ' b1 ms':>17}{m + ' b32 ms':>18}" for m in results))
    names = [t["name"] for t in results["shared"]["tiers"]]
    for i, name in enumerate(names):
        cells = "".join(
            f"{r['tiers'][i]['batch1_ms']:>17.2f}{r['tiers'][i]['batch32_ms']:>18.2f}"
            for r in results.values()
        )
        print(f"{name:<16}{cells}")
    timing.write_benchmark(F.output, results)


if __name__ == "__main__":
    app.run(main)
