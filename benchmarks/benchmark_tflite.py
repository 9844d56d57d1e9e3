"""Compares TFLite precisions per tier: size, accuracy, agreement, latency.

    python benchmarks/benchmark_tflite.py --job_dir=jobs/quickstart

Converts every retained tier of the job as float32, fp16, int8 (post-training)
and int8 after quantization-aware fine-tuning (--qat_epochs), each verified
with the LiteRT interpreter against the tier's serving signature on the
validation set (pss_keras.tflite.converter.convert), and prints one table: file size,
validation top-1 (the SavedModel's and each file's), top-1 agreement with the
SavedModel, and batch-1 latency (median). Writes JSON with the manifests.

    python benchmarks/benchmark_tflite.py --full_size=mobilenet_v1,mobilenet_v2

times full-size subnets instead (the largest and smallest of a randomly
initialized 1000-class supernet at 224/128 px; int8 calibrated on random
pixels): file size and batch-1 latency, float32 vs int8, at 1 and 2 threads.
Latency does not depend on the weights' values; accuracy is not measured.

    python benchmarks/benchmark_tflite.py --multi_signature

compares one float32 .tflite per tier with one multi-signature .tflite that
holds every tier of the job (one signature runner per tier).
"""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("job_dir", "jobs/quickstart", "A finished training job.")
flags.DEFINE_list("modes", ["none", "fp16", "int8", "qat"], "Which conversions to compare.")
flags.DEFINE_integer("qat_epochs", 2, "Epochs of quantization-aware fine-tuning.", lower_bound=1)
flags.DEFINE_float("qat_lr", 0.001, "Peak learning rate of QAT fine-tuning.")
flags.DEFINE_enum("io_dtype", "float32", ["float32", "uint8", "int8"], "int8 models' I/O type.")
flags.DEFINE_integer("num_threads", 1, "Interpreter threads for latency.", lower_bound=1)
flags.DEFINE_integer("latency_repeats", 200, "Batch-1 runs per tier (median).", lower_bound=1)
flags.DEFINE_list(
    "full_size", [], "Time full-size random-weight subnets of these models instead of a job."
)
flags.DEFINE_bool("multi_signature", False, "Compare separate files with one multi-signature file.")
flags.DEFINE_string("output", "bench_results/tflite.json", "JSON output path.")
F = flags.FLAGS

_SETTINGS = {
    "none": dict(quantize="none"),
    "fp16": dict(quantize="fp16"),
    "int8": dict(quantize="int8"),
    "qat": dict(quantize="int8"),
}


def full_size(models):
    import numpy as np

    from pss_keras.cost.flops import count_mflops
    from pss_keras.supernet import extraction
    from pss_keras.supernet.model import Supernet
    from pss_keras.tflite.model_conversion import convert_model
    from pss_keras.tflite.runner import TFLiteRunner

    rows = []
    print(f"{'subnet':<28}{'MFLOPs':>8}{'mode':>8}{'MB':>8}{'1 thread ms':>13}{'2 threads ms':>14}")
    for model_name in models:
        net = Supernet(model_name)
        for config in (net.space.largest(), net.space.smallest()):
            r = config.resolution
            model = extraction.extract_subnet(net, config, fold_bn=True, pixel_input=True)
            rng = np.random.default_rng(0)
            pixels = rng.uniform(0, 255, (8, 1, r, r, 3)).astype(np.float32)
            for mode in ("none", "int8"):
                content = convert_model(
                    model, r, mode, (lambda p=pixels: iter(p)) if mode == "int8" else None
                )
                row = {
                    "model": model_name,
                    "resolution": r,
                    "mflops": count_mflops(config, net.num_classes, net.width_scale),
                    "mode": "float32" if mode == "none" else "int8",
                    "size_bytes": len(content),
                }
                for threads in (1, 2):
                    runner = TFLiteRunner(content, num_threads=threads)
                    row[f"latency_ms_{threads}"] = runner.latency_ms(pixels[0], F.latency_repeats)
                rows.append(row)
                label = f"{model_name} {'max' if config == net.space.largest() else 'min'} r{r}"
                print(
                    f"{label:<28}{row['mflops']:>8.1f}{row['mode']:>8}"
                    f"{row['size_bytes'] / 2**20:>8.2f}{row['latency_ms_1']:>13.2f}"
                    f"{row['latency_ms_2']:>14.2f}"
                )
    print(f"latency: batch 1, median of {F.latency_repeats}")
    return rows


def multi_signature(job_dir):
    import tensorflow as tf

    from pss_keras.jobs import directory as jobs
    from pss_keras.supernet import extraction
    from pss_keras.tflite import model_conversion as tflite_conversion
    from pss_keras.tflite.model_conversion import convert_model
    from pss_keras.tflite.runner import TFLiteRunner

    job = jobs.Job(job_dir)
    endpoints, separate = {}, {}
    for entry in job.retained:
        config, stats = job.tier(entry)
        r = config.resolution
        model = extraction.extract_subnet(
            job.supernet, config, stats, fold_bn=True, pixel_input=True, name=entry.name
        )
        separate[entry.name] = len(convert_model(model, r))
        endpoints[entry.name] = (model, r)
    with tempfile.TemporaryDirectory() as tmp:
        tflite_conversion.write_conversion_saved_model(endpoints, tmp)
        names = list(separate)
        content = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=names).convert()
    signatures = list(TFLiteRunner(content).interpreter.get_signature_list())
    assert sorted(signatures) == sorted(names), signatures
    for name, size in separate.items():
        print(f"{name:<14}{size / 1024:>10.1f} KB")
    total = sum(separate.values())
    print(f"{'separate, sum':<14}{total / 1024:>10.1f} KB")
    print(f"{'one file':<14}{len(content) / 1024:>10.1f} KB ({len(signatures)} signatures)")
    return {"separate_bytes": separate, "multi_signature_bytes": len(content)}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from pss_keras.tflite import converter as tflite
    from pss_keras.utils import timing

    if F.multi_signature:
        timing.write_benchmark(F.output, multi_signature(F.job_dir))
        return
    if F.full_size:
        timing.write_benchmark(F.output, {"full_size": full_size(F.full_size)})
        return

    unknown = [m for m in F.modes if m not in _SETTINGS]
    if unknown:
        sys.exit(f"error: unknown mode(s) {unknown}; use {sorted(_SETTINGS)}.")
    manifests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in F.modes:
            settings = dict(
                _SETTINGS[mode],
                num_threads=F.num_threads,
                latency_repeats=F.latency_repeats,
                qat_epochs=F.qat_epochs if mode == "qat" else 0,
                qat_lr=F.qat_lr,
                io_dtype=F.io_dtype if _SETTINGS[mode]["quantize"] == "int8" else "float32",
            )
            print(f"== {mode}")
            try:
                manifests[mode] = tflite.convert(
                    F.job_dir, os.path.join(tmp, mode), tflite.ConvertConfig(**settings)
                )
            except ValueError as e:
                sys.exit(f"error: {e}")
    _print_table(manifests)
    timing.write_benchmark(F.output, {"job_dir": F.job_dir, "manifests": manifests})


def _print_table(manifests: dict) -> None:
    """One row per tier: size, top-1, agreement and latency of every mode."""
    modes = list(manifests)
    first = manifests[modes[0]]
    names = [t["name"] for t in first["tiers"]]
    by = {m: {t["name"]: t for t in manifests[m]["tiers"]} for m in modes}
    header = f"{'tier':<12}{'MFLOPs':>7}{'res':>5}  {'SM top1':>7}"
    for title in ("KB", "top1", "agree", "ms"):
        header += "  " + " ".join(f"{title + ' ' + m:>11}" for m in modes)
    print(header)
    for name in names:
        t0 = by[modes[0]][name]
        line = f"{name:<12}{t0['mflops']:>7.2f}{t0['resolution']:>5}"
        line += f"  {t0['verification']['reference_top1']:>7.3f}"
        line += "  " + " ".join(f"{by[m][name]['size_bytes'] / 1024:>11.1f}" for m in modes)
        line += "  " + " ".join(f"{by[m][name]['verification']['top1']:>11.3f}" for m in modes)
        line += "  " + " ".join(
            f"{by[m][name]['verification']['top1_agreement']:>11.3f}" for m in modes
        )
        line += "  " + " ".join(f"{by[m][name]['latency_ms']:>11.3f}" for m in modes)
        print(line)
    print(
        f"validation images: {first['tiers'][0]['verification']['examples']}; latency: batch 1, "
        f"median of {F.latency_repeats}, {F.num_threads} thread(s), {first['latency']['runtime']}; "
        f"int8 I/O: {F.io_dtype}; qat: {F.qat_epochs} epoch(s), lr {F.qat_lr}"
    )


if __name__ == "__main__":
    app.run(main)
