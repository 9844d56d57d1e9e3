"""Full-size serving cost per export mode, with no training.

    python benchmarks/benchmark_serving.py
    python benchmarks/benchmark_serving.py --models=mobilenet_v1 --tier_counts=4 --repeats=10

For each architecture and tier count, writes a synthetic job (random
weights, `pss_keras.testing.synthetic_job`: N tiers across the FLOPs range at full
width, 128..224 px, 1000 classes), exports it in every mode, then, each in
a fresh process, loads the SavedModel as TF Serving does
(`model_server.ServedModel`: a session restores the variables, runs the
init op, replays the warm-up requests) and measures:

* disk: the version folder's size (``variables/`` beside it);
* load: seconds until the model answers (restore, init, warm-up), and the
  warm-up's share (one request per signature: TF Serving builds each
  signature's executor then, as it would on that signature's first request);
* RSS: the process's resident-memory growth over the load, and after the
  timed requests;
* latency: median ms of the largest and the smallest tier at batch 1 and 32
  (224 x 224 uint8 images, every output fetched as TF Serving does), all
  modes loaded in one process and timed in alternating rounds, so that a
  drift of the machine's speed does not favour one mode.

The row ``supernet graph`` is the shared mode's graph before issue #15 (the
supernet's forward with the tier's code and BN statistics as constants),
measured only at the smallest tier count and not like the others: a
`tf.function` in its own process returning logits only, median of
``--repeats`` calls. Its ratios are indicative: the starting point.

Prints one table per architecture (ratios to standalone) and writes JSON
with the machine.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", ["mobilenet_v1", "mobilenet_v2"], "Architectures.")
flags.DEFINE_list(
    "tier_counts", ["4", "42"], "Tiers per export (the paper's FLOPs grid keeps ~42)."
)
flags.DEFINE_list("modes", None, "Export modes (default: all).")
flags.DEFINE_list("batches", ["1", "32"], "Batch sizes timed.")
flags.DEFINE_integer("repeats", 30, "Timed calls per tier, batch and mode (median; 3 rounds).")
flags.DEFINE_float("width_scale", 1.0, "Supernet width scale (1.0: MobileNet).")
flags.DEFINE_list("resolution_range", ["128", "224"], "Smallest and largest resolution.")
flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
flags.DEFINE_integer("threads", 0, "Session intra/inter-op threads (0: TensorFlow's default).")
flags.DEFINE_string("work_dir", None, "Where jobs and exports go (default: a temporary folder).")
flags.DEFINE_string("output", "bench_results/serving_speed.json", "JSON output path.")
flags.DEFINE_string("measure", None, "Internal: JSON spec of one measurement in this process.")
F = flags.FLAGS

BASELINE = "supernet graph"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _folder_mb(path) -> float:
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total / 2**20


def _pixels(batch, size):
    import numpy as np

    return np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), np.uint8)


def measure_load(spec: dict) -> dict:
    """In a fresh process: load one version as TF Serving does."""
    from pss_keras.testing.served_model import ServedModel

    warm_up, warmup_s = ServedModel._warm_up, []

    def timed_warm_up(self):
        start = time.perf_counter()
        try:
            return warm_up(self)
        finally:
            warmup_s.append(time.perf_counter() - start)

    ServedModel._warm_up = timed_warm_up
    before = _rss_mb()
    start = time.perf_counter()
    model = ServedModel(spec["path"], threads=spec["threads"] or None)
    load_s = time.perf_counter() - start
    rss = _rss_mb() - before
    for tier in spec["tiers"]:  # the timed requests, once each
        model.predict(tier, {"images": _pixels(max(spec["batches"]), spec["image_size"])})
    return {
        "load_s": load_s,
        "warmup_s": warmup_s[0],  # of load_s: replaying the warm-up requests
        "rss_after_load_mb": rss,
        "rss_after_requests_mb": _rss_mb() - before,
        "warmup_requests": model.warmup_requests,
    }


def measure_latency(spec: dict) -> dict:
    """In one process, every mode's version loaded, timed in alternating
    rounds so that a drift of the machine's speed hits every mode alike:
    ``{mode: {"tier/batch": median ms}}``."""
    import numpy as np

    from pss_keras.testing.served_model import ServedModel

    models = {mode: ServedModel(path, threads=spec["threads"] or None)
              for mode, path in spec["paths"].items()}  # fmt: skip
    samples = {mode: {} for mode in models}
    rounds = 3
    per_round = max(1, -(-spec["repeats"] // rounds))
    for _ in range(rounds):
        for tier in spec["tiers"]:
            for batch in spec["batches"]:
                inputs = {"images": _pixels(batch, spec["image_size"])}
                for mode, model in models.items():
                    model.predict(tier, inputs)  # warm
                    for _ in range(per_round):
                        start = time.perf_counter()
                        model.predict(tier, inputs)
                        elapsed = (time.perf_counter() - start) * 1e3
                        samples[mode].setdefault(f"{tier}/{batch}", []).append(elapsed)
    return {
        mode: {"latency_ms": {k: float(np.median(v)) for k, v in timed.items()}}
        for mode, timed in samples.items()
    }


def measure_supernet_graph(spec: dict) -> dict:
    """In a fresh process: the pre-#15 shared graph (the supernet's forward
    with the tier's code and statistics as constants), traced."""
    import tensorflow as tf

    from pss_keras.data.preprocessing import preprocess
    from pss_keras.jobs import directory as jobs
    from pss_keras.utils import timing

    job = jobs.Job(spec["job_dir"])
    latency = {}
    for entry in job.retained:
        if entry.name not in spec["tiers"]:
            continue
        config, stats = job.tier(entry)
        code = tf.constant(job.supernet.space.encode(config))
        constants = {k: (tf.constant(m), tf.constant(v)) for k, (m, v) in stats.items()}

        @tf.function
        def forward(images, code=code, constants=constants):
            x = preprocess(images, job.image_size)
            return job.supernet(x, training=False, subnet=code, bn_stats=constants)

        for batch in spec["batches"]:
            images = tf.constant(_pixels(batch, spec["image_size"]))
            latency[f"{entry.name}/{batch}"] = timing.median_ms(
                lambda images=images, forward=forward: forward(images).numpy(), spec["repeats"]
            )
    return {"latency_ms": latency}


def _in_fresh_process(spec: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--measure={json.dumps(spec)}"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if out.returncode != 0:
        what = spec.get("path") or spec.get("job_dir") or "the exports"
        sys.exit(f"error: measuring {what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_one(work_dir, model_name, n_tiers, modes, batches) -> dict:
    """One synthetic job of ``n_tiers``, exported and measured per mode."""
    from pss_keras.export import saved_model as export
    from pss_keras.jobs import directory as jobs
    from pss_keras.testing import synthetic_job

    # Keyed by every setting of the job, so a reused --work_dir never serves
    # a job written with other flags.
    key = (
        f"{model_name}_{n_tiers}_w{F.width_scale:g}_r{'-'.join(F.resolution_range)}"
        f"_c{F.num_classes}"
    )
    job_dir = os.path.join(work_dir, key, "job")
    if not os.path.exists(os.path.join(job_dir, jobs.RETAINED)):
        synthetic_job.write(
            job_dir, model_name, F.width_scale, tuple(int(r) for r in F.resolution_range),
            tiers=n_tiers, num_classes=F.num_classes,
        )  # fmt: skip
    retained = sorted(jobs.read_retained(job_dir), key=lambda t: t["mflops"])
    smallest, largest = retained[0], retained[-1]
    timed = [largest["name"], smallest["name"]]
    result = {
        "model": model_name, "tiers": n_tiers, "image_size": int(F.resolution_range[1]),
        "largest": {k: largest[k] for k in ("name", "mflops")},
        "smallest": {k: smallest[k] for k in ("name", "mflops")},
        "modes": {},
    }  # fmt: skip
    common = dict(tiers=timed, batches=batches, repeats=F.repeats, image_size=result["image_size"])
    paths = {}
    for mode in modes:
        print(f"{model_name}, {n_tiers} tiers: exporting {mode} ...", flush=True)
        start = time.perf_counter()
        summary = export.export(
            job_dir, os.path.join(work_dir, key, mode), mode,
            latency_repeats=1,
        )  # fmt: skip
        export_s = time.perf_counter() - start
        print(f"  exported in {export_s:.0f} s; loading in a fresh process ...", flush=True)
        measured = _in_fresh_process(dict(common, path=summary["path"], threads=F.threads))
        result["modes"][mode] = dict(
            measured,
            export_s=export_s,
            disk_mb=_folder_mb(summary["path"]),
            variables_mb=_folder_mb(os.path.join(summary["path"], "variables")),
        )
        paths[mode] = summary["path"]
    print(f"  timing {', '.join(modes)} in one process ...", flush=True)
    timed = _in_fresh_process(dict(common, paths=paths, threads=F.threads))
    for mode, r in timed.items():
        result["modes"][mode].update(r)
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)  # disk: 42 standalone tiers are large
    if n_tiers == min(int(n) for n in F.tier_counts):
        print(f"  {BASELINE} (pre-#15 shared graph) ...", flush=True)
        result["modes"][BASELINE] = _in_fresh_process(dict(common, job_dir=job_dir))
    return result


def print_table(result: dict, batches) -> None:
    modes = result["modes"]
    ref = modes.get("standalone", {}).get("latency_ms", {})
    print(
        f"\n{result['model']}, {result['tiers']} tiers, {result['image_size']} px input; "
        f"largest {result['largest']['name']}, smallest {result['smallest']['name']}; "
        f"median of {3 * -(-F.repeats // 3)} (3 rounds), ms (x standalone)"
    )
    cols = [(which, b) for which in ("largest", "smallest") for b in batches]
    head = "".join(f"{f'{w} b{b}':>20}" for w, b in cols)
    print(f"{'mode':<16}{'disk MB':>9}{'load s':>8}{'warm-up s':>10}{'RSS MB':>8}{head}")
    for mode, r in modes.items():
        cells = ""
        for which, b in cols:
            ms = r["latency_ms"][f"{result[which]['name']}/{b}"]
            key = f"{result[which]['name']}/{b}"
            ratio = f" ({ms / ref[key]:.2f}x)" if key in ref else ""
            cells += f"{f'{ms:.2f}{ratio}':>20}"
        disk = f"{r['disk_mb']:.1f}" if "disk_mb" in r else "-"
        load = f"{r['load_s']:.2f}" if "load_s" in r else "-"
        warm = f"{r['warmup_s']:.2f}" if "warmup_s" in r else "-"
        rss = f"{r['rss_after_load_mb']:.0f}" if "rss_after_load_mb" in r else "-"
        print(f"{mode:<16}{disk:>9}{load:>8}{warm:>10}{rss:>8}{cells}")


def main(argv):
    del argv
    if F.measure:
        spec = json.loads(F.measure)
        fn = (
            measure_load if "path" in spec
            else measure_latency if "paths" in spec
            else measure_supernet_graph
        )  # fmt: skip
        print(json.dumps(fn(spec)))
        return
    from pss_keras.export import saved_model as export
    from pss_keras.utils import timing

    modes = F.modes or list(export.MODES)
    unknown = sorted(set(modes) - set(export.MODES))
    if unknown:
        sys.exit(f"error: --modes has {unknown}; use some of {list(export.MODES)}.")
    batches = [int(b) for b in F.batches]
    results = []
    work = F.work_dir or tempfile.mkdtemp(prefix="pss_serving_bench_")
    try:
        for model_name in F.models:
            for n in F.tier_counts:
                results.append(run_one(work, model_name, int(n), modes, batches))
                print_table(results[-1], batches)
    finally:
        if not F.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    for r in results:
        print_table(r, batches)
    timing.write_benchmark(
        F.output,
        {
            "runs": results, "repeats": F.repeats, "threads": F.threads,
            "width_scale": F.width_scale, "resolution_range": F.resolution_range,
            "num_classes": F.num_classes,
        },
    )  # fmt: skip


if __name__ == "__main__":
    app.run(main)
