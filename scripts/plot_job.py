"""Plots a PSS run: its tiers' accuracy against MFLOPs, and its pools' best
scores over the epochs.

    python scripts/plot_job.py --job_dir=jobs/quickstart
    # -> jobs/quickstart/plots/tiers.png, jobs/quickstart/plots/pool_scores.png
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

flags.DEFINE_string("job_dir", None, "Job directory of a training run.", required=True)
flags.DEFINE_string("output_dir", None, "Where the PNGs go (default: <job_dir>/plots).")
F = flags.FLAGS


def main(argv):
    del argv
    from pss_keras.jobs import directory as jobs
    from pss_keras.utils import plots

    try:
        tiers = jobs.read_retained(F.job_dir)
    except ValueError as e:
        sys.exit(f"error: {e}")
    out = F.output_dir or os.path.join(F.job_dir, "plots")
    name = os.path.basename(os.path.normpath(F.job_dir))
    print(plots.plot_tiers({name: tiers}, os.path.join(out, "tiers.png"), title=name))
    if all(t.get("selected_on") == "single" for t in tiers):
        print("(one subnet trained alone: no pools, no pool scores to plot)")
        return
    scores = plots.read_pool_scores(os.path.join(F.job_dir, jobs.LOGS, "pss"))
    if not scores:
        sys.exit(f"error: no pool scores in {F.job_dir}/{jobs.LOGS}/pss (TensorBoard logs).")
    print(plots.plot_pool_scores(scores, os.path.join(out, "pool_scores.png"), title=name))


if __name__ == "__main__":
    app.run(main)
