"""Converts a trained job's retained tiers to TFLite, verified against the SavedModel.

    python scripts/convert_tflite.py --job_dir=jobs/quickstart --quantize=int8
    python scripts/convert_tflite.py --job_dir=jobs/quickstart --quantize=int8 --qat_epochs=2

Writes <output_dir>/<tier>.tflite (default output_dir:
saved_models/<job name>_tflite/<float32|fp16|int8|qat_int8>) and manifest.json
(tier, resolution, MFLOPs, size, input/output tensors, quantization, top-1
agreement and logit difference against the served model, accuracy, latency).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("job_dir", "jobs/quickstart", "A finished training job.")
flags.DEFINE_string(
    "output_dir", None, "Where the .tflite files go (default saved_models/<job>_tflite/<mode>)."
)
flags.DEFINE_list("tiers", [], "Tiers to convert (default: all retained).")
flags.DEFINE_enum("quantize", "none", ["none", "fp16", "int8"], "Weight/activation precision.")
flags.DEFINE_enum(
    "io_dtype",
    "float32",
    ["float32", "uint8", "int8"],
    "Input/output type of int8 models (uint8: camera pixels as they are).",
)
flags.DEFINE_integer(
    "representative_images", 200, "Training images calibrating int8 ranges.", lower_bound=1
)
flags.DEFINE_integer(
    "qat_epochs", 0, "Quantization-aware fine-tuning epochs before int8 conversion.", lower_bound=0
)
flags.DEFINE_float("qat_lr", 0.001, "Peak learning rate of QAT fine-tuning.")
flags.DEFINE_integer(
    "verify_images", 1000, "Validation images for the agreement check (0: skip).", lower_bound=0
)
flags.DEFINE_string(
    "saved_model", None, "Verify against this exported version dir (default: in process)."
)
flags.DEFINE_integer("num_threads", 1, "Interpreter threads for latency.", lower_bound=1)
flags.DEFINE_integer("latency_repeats", 50, "Batch-1 runs per tier (median).", lower_bound=1)
flags.DEFINE_string("dataset_dir", None, "TFDS data_dir, if it moved since training.")
flags.DEFINE_bool("progress", True, "Progress bars.")
F = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel writer logs every step at INFO
    from pss_keras.tflite import converter as tflite
    from pss_keras.tflite import manifest as tflite_manifest

    config = tflite.ConvertConfig(
        quantize=F.quantize,
        io_dtype=F.io_dtype,
        representative_images=F.representative_images,
        qat_epochs=F.qat_epochs,
        qat_lr=F.qat_lr,
        verify_images=F.verify_images,
        num_threads=F.num_threads,
        latency_repeats=F.latency_repeats,
        saved_model=F.saved_model,
        data_dir=F.dataset_dir,
    )
    output_dir = F.output_dir or os.path.join(
        "saved_models", os.path.basename(os.path.normpath(F.job_dir)) + "_tflite", config.mode_name
    )
    try:
        manifest = tflite.convert(F.job_dir, output_dir, config, F.tiers or None, F.progress)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {output_dir}/ ({manifest['mode']}, io {manifest['io_dtype']})")
    print(tflite_manifest.format_manifest(manifest))
    missed = [
        t
        for t in manifest["tiers"]
        if t.get("verification") and not t["verification"]["meets_target"]
    ]
    if missed:
        print(f"warning: {[t['name'] for t in missed]} miss the target ({manifest['target']}).")
        for t in missed:
            v = t["verification"]
            print(
                f"  {t['name']}: logit SQNR {v['logit_sqnr_db']:.1f} dB; the changed top-1 "
                f"predictions had reference margins up to {v['max_flipped_margin']:.3f} "
                "(near-tied logits flip under quantization noise; see README, TFLite)."
            )


if __name__ == "__main__":
    app.run(main)
