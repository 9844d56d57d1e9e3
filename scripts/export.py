"""Exports a trained PSS job as a multi-signature SavedModel for TF Serving.

    python scripts/export.py --job_dir=jobs/quickstart --export_dir=saved_models/quickstart
    saved_model_cli show --all --dir saved_models/quickstart/1
    python scripts/export.py --job_dir=jobs/quickstart --replace_tier=flops_1p6m=jobs/quickstart_ft

Writes <export_dir>/<new version>/ (never overwrites a version): one
signature per retained tier, serving_default (the largest tier) and `tiers`.
--replace_tier=TIER=JOB serves TIER with JOB's weights (a tier fine-tuned
alone: scripts/train.py --init_from=... --subnet=TIER), stored as its own.
"""

import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

flags.DEFINE_string("job_dir", "jobs/quickstart", "A finished training job.")
flags.DEFINE_string("export_dir", None, "Model base path (default saved_models/<job name>).")
flags.DEFINE_enum(
    "export_mode",
    "shared",
    ["shared", "shared_lowmem", "standalone"],
    "shared: weights once on disk, each tier's folded kernels built at load (standalone "
    "speed, memory per tier); shared_lowmem: weights once on disk and in memory, folded per "
    "request (slower small tiers at batch 1); standalone: a folded copy per tier on disk and "
    "in memory. Figures: docs/serving_speed.md.",
)
flags.DEFINE_list("tiers", [], "Tiers to export (default: all retained).")
flags.DEFINE_integer("latency_repeats", 20, "Runs per tier for the recorded batch-1 latency.")
flags.DEFINE_multi_string(
    "replace_tier", [],
    "TIER=JOB (repeatable): serve TIER with the weights of JOB's tier of the same subnet (a tier "
    "fine-tuned alone with train.py --init_from=<this job> --subnet=TIER), as a standalone "
    "subnet with its own variables; the other tiers are this job's.",
)  # fmt: skip
F = flags.FLAGS


def _accuracy(top1) -> str:
    """A tier's top-1, or n/a (an imported checkpoint's tiers without validation data)."""
    return f"{top1:.3f}" if top1 is not None and math.isfinite(top1) else "n/a"


def main(argv):
    del argv
    from pss_keras.export import saved_model as export
    from pss_keras.export.replacement import parse_replacements

    export_dir = F.export_dir or os.path.join(
        "saved_models", os.path.basename(os.path.normpath(F.job_dir))
    )
    try:
        replace = parse_replacements(F.replace_tier)
        summary = export.export(
            F.job_dir, export_dir, F.export_mode, F.tiers or None, F.latency_repeats, replace
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(
        f"wrote {summary['path']} ({summary['mode']} weights, default tier {summary['default_tier']})"
    )
    print(f"{'signature':<16}{'MFLOPs':>9}{'res':>5}{'val top1':>10}{'batch-1 ms':>12}")
    for t in summary["tiers"]:
        print(
            f"{t['name']:<16}{t['mflops']:>9.2f}{t['resolution']:>5}{_accuracy(t['top1']):>10}"
            f"{t['latency_ms']:>12.2f}"
        )
    for name, source in summary.get("replaced_tiers", {}).items():
        print(
            f"{name}: the weights of {source['job_dir']} (its tier {source['tier']}; inherited "
            f"top-1 was {_accuracy(source['inherited_top1'])})"
        )
    print("input: " + summary["input"])
    print(
        f"also: <tier>_bytes ({summary['encoded_input'].split(', in')[0]}), serving_default "
        f"({summary['default_tier']}), tier_table and tiers (the tier table)"
    )


if __name__ == "__main__":
    app.run(main)
