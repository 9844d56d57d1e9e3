"""Sends images to a PSS model in TF Serving and prints the top-5 classes.

    python scripts/query.py --server=localhost:8500 --model_name=quickstart --tier=flops_1p6m cat.jpg
    python scripts/query.py --max_mflops=2 cat.jpg             # most accurate tier within 2 MFLOPs
    python scripts/query.py --latency_budget_ms=5 cat.jpg      # ... within 5 ms (see --latency_source)
    python scripts/query.py --list_tiers
    python scripts/query.py --protocol=rest --server=localhost:8501 ...
    python scripts/query.py --encoded cat.jpg                 # send the file's bytes

Images (JPEG, PNG, BMP, GIF) are decoded here and sent as raw uint8 pixels;
with --encoded the files' bytes are sent as they are (to the tier's
<tier>_bytes signature) and the server decodes them. Either way the model
resizes, crops and normalizes them itself. A budget chooses the most accurate
tier within it; for tiers without a measured top-1 (a job imported from an
official PSS-Net checkpoint without validation data: ``-`` in --list_tiers),
the one with the most MFLOPs within it.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

flags.DEFINE_string("server", "localhost:8500", "host:port of TF Serving (gRPC 8500, REST 8501).")
flags.DEFINE_enum("protocol", "grpc", ["grpc", "rest"], "Transport.")
flags.DEFINE_string("model_name", "quickstart", "Model name in TF Serving.")
flags.DEFINE_string("tier", None, "Tier (signature) to use, e.g. flops_1p6m.")
flags.DEFINE_float("max_mflops", None, "Use the most accurate tier within this many MFLOPs.")
flags.DEFINE_float("latency_budget_ms", None, "Use the most accurate tier within this latency.")
flags.DEFINE_enum(
    "latency_source", "auto", ["auto", "measured", "predicted"],
    "Latency the budget is compared with: measured (at export, the serving path), predicted "
    "(the run's look-up table), auto (predicted when its table was built with "
    "--runtime=tensorflow, else measured).",
)  # fmt: skip
flags.DEFINE_bool("list_tiers", False, "Print the served tiers and exit.")
flags.DEFINE_bool(
    "encoded", False,
    "Send each image file's bytes (JPEG/PNG/GIF/BMP) for the server to decode, instead of "
    "decoded pixels: smaller requests; needs an export with <tier>_bytes signatures.",
)  # fmt: skip
flags.DEFINE_float("timeout", 30.0, "Request timeout in seconds.")
F = flags.FLAGS


def _read_image(path, encoded: bool):
    """The file's bytes (``encoded``; checked to decode) or its pixels."""
    import tensorflow as tf

    try:
        data = tf.io.read_file(path)
        pixels = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
        raise ValueError(f"Cannot read image {path}: {e.message.splitlines()[0]}") from None
    return data.numpy() if encoded else pixels


def _cell(value, width, spec):
    """A right-aligned table cell; ``-`` for a value the server did not give."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def main(argv):
    paths = argv[1:]
    from pss_keras import serving

    client = serving.connect(F.server, F.model_name, F.protocol, F.timeout)
    try:
        tiers = client.tiers()
        if F.list_tiers:
            print(
                f"{'tier':<24}{'MFLOPs':>9}{'params':>11}{'res':>5}{'val top1':>10}"
                f"{'export ms':>11}{'predicted ms':>14}"
            )
            for t in tiers:
                print(
                    f"{t.name:<24}{_cell(t.mflops, 9, '.2f')}{_cell(t.params, 11, ',')}"
                    f"{_cell(t.resolution, 5, 'd')}{_cell(t.top1, 10, '.3f')}"
                    f"{_cell(t.latency_ms, 11, '.2f')}{_cell(t.predicted_latency_ms, 14, '.3f')}"
                )
            if client.tier_source == "metadata":
                print(
                    "tiers from GetModelMetadata (the model has no usable tier table): "
                    "names only, no cost, accuracy or latency; choose one with --tier"
                )
                return
            if any(t.top1 is None for t in tiers):
                print(
                    "val top1 -: not measured (a job without validation data); a budget "
                    "chooses the tier with the most MFLOPs within it"
                )
            tables = sorted({t.latency_table for t in tiers if t.latency_table})
            print("export ms: measured at export (batch 1, the served computation)")
            for table in tables:
                print(f"predicted ms: the run's look-up table, {table}")
            return
        if not paths:
            raise ValueError("Give one or more image files (or --list_tiers).")
        if F.tier and (F.max_mflops is not None or F.latency_budget_ms is not None):
            raise ValueError(
                "Use --tier or a budget (--max_mflops / --latency_budget_ms), not both."
            )
        if F.tier:
            tier = F.tier
        elif F.max_mflops is not None or F.latency_budget_ms is not None:
            tier = client.choose_tier(F.max_mflops, F.latency_budget_ms, F.latency_source).name
        elif client.tier_source == "metadata":
            if F.encoded:
                raise ValueError(
                    "Name a tier with --tier: this server's tiers come from metadata, which "
                    "has no costs to find the largest by, and encoded images have no default."
                )
            tier = None  # no costs to find the largest by: serving_default
        else:
            tier = max(tiers, key=lambda t: t.mflops).name
        for path in paths:
            outputs = client.predict(_read_image(path, F.encoded), tier)
            print(f"{path} [{tier or 'serving_default'}]")
            for rank, (index, name) in enumerate(
                zip(outputs["top5_indices"][0], outputs["top5_classes"][0]), start=1
            ):
                print(
                    f"  {rank}. {name} (class {int(index)}): {outputs['probabilities'][0][int(index)]:.3f}"
                )
    except (ValueError, serving.ServingError) as e:
        sys.exit(f"error: {e}")
    finally:
        client.close()


if __name__ == "__main__":
    app.run(main)
