"""Times the converted tiers on this device and chooses one per latency budget.

    python scripts/choose_tflite_tier.py --tflite_dir=saved_models/quickstart_tflite/int8 \
        --budget_ms=0.1,0.2

Prints each tier (resolution, MFLOPs, the job's validation top-1 and top-5,
the median batch-1 time here, dominated or not), the machine, and per budget
the chosen tier: the most accurate one within it (pss_keras.tflite.chooser,
the logic an app mirrors); for tiers without a measured top-1 (n/a: a job
imported without validation data), the one with the most MFLOPs within it.
Errors are one line, exit status 1.
"""

import math
import sys

from absl import app, flags

flags.DEFINE_string(
    "tflite_dir",
    "saved_models/quickstart_tflite/int8",
    "A folder written by scripts/convert_tflite.py (.tflite files and manifest.json).",
)
flags.DEFINE_list("budget_ms", [], "Latency budgets in ms, one tier chosen for each.")
flags.DEFINE_integer("num_threads", 1, "Interpreter threads, as the app runs them.", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "Untimed invokes per tier first.", lower_bound=0)
flags.DEFINE_integer("repeats", 30, "Timed batch-1 invokes per tier (median).", lower_bound=1)
F = flags.FLAGS


def main(argv):
    del argv
    from pss_keras.tflite import chooser as tflite_chooser

    try:
        budgets = [float(b) for b in F.budget_ms]
    except ValueError:
        sys.exit(f"error: --budget_ms takes milliseconds (e.g. 5,10), got {','.join(F.budget_ms)}")
    try:
        chooser = tflite_chooser.OnDeviceChooser(
            F.tflite_dir, num_threads=F.num_threads, warmup=F.warmup, repeats=F.repeats
        )
        print(chooser.format_table())
        for budget in budgets:
            tier = chooser.choose(budget)
            top1 = "n/a" if math.isnan(tier.top1) else f"{tier.top1:.3f}"
            print(
                f"budget {budget:g} ms: {tier.name} ({chooser.timings_ms[tier.name]:.3f} ms "
                f"here, top1 {top1})"
            )
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
