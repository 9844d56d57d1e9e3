"""Prioritized (PSS) vs uniform subnet sampling: same data, budget and seed.

    python scripts/compare_sampling.py --name=imagenette_mbv1_w05   # ~2 h on 2 CPU cores

Trains one supernet per arm into --job_root/<arm>, then writes
docs/results/<name>.json (every arm's retained tiers: name, MFLOPs, top-1,
top-5, minival top-1; settings, machine, wall times) and
docs/results/<name>.png (validation top-1 vs MFLOPs, one line per arm).

Arms:
* ``pss``: the method (pools, p_space and temperature schedules).
* ``uniform``: every candidate drawn from the conditional sampler (p_space
  fixed at 1.0): the same map and targets, no prioritized pool sampling.
  Pools still record scores, so the end-of-run selection is the same.

Re-running with the same --job_root resumes unfinished arms and reuses
finished ones. The default data is Imagenette (../shared/data's tar,
unpacked once under --data_cache); any image folder or TFDS name works.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import study_flags  # noqa: E402  (scripts/: the flags the study scripts share)
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("name", "imagenette_mbv1_w05", "Result name (docs/results/<name>.*).")
flags.DEFINE_string("job_root", "jobs/compare_sampling", "Where each arm's job goes.")
flags.DEFINE_list("arms", ["pss", "uniform"], "Arms to train: pss, uniform.")
flags.DEFINE_integer("random_seed", 0, "Seed of every arm.")
study_flags.define(epochs=8, warmup_epochs=0.5)
F = flags.FLAGS

ARMS = {"pss": {}, "uniform": {"p_space": (1.0, 1.0)}}


def _run_arm(base, arm: str) -> dict:
    """Trains (or resumes, or reuses) one arm; returns its result record."""
    from pss_keras.training.studies import train_timed

    job_dir = os.path.join(F.job_root, arm)
    config = dataclasses.replace(base, job_dir=job_dir, **ARMS[arm])
    logging.info("Arm %s: %s", arm, job_dir)
    tiers, spent = train_timed(config)
    return {
        "job_dir": job_dir,
        "p_space": list(config.p_space),
        "wall_seconds": round(spent, 1),
        "tiers": [
            {k: t[k] for k in ("name", "mflops", "top1", "top5", "minival_top1", "pool_score")}
            for t in tiers
        ],
    }


def main(argv):
    del argv
    from pss_keras.utils import plots, timing

    unknown = sorted(set(F.arms) - set(ARMS))
    if unknown:
        sys.exit(f"error: unknown arm(s) {unknown}; use {sorted(ARMS)}.")
    try:
        base = study_flags.train_config("", study_flags.dataset(), F.random_seed)
        base.validate()
        results = {arm: _run_arm(base, arm) for arm in F.arms}
    except ValueError as e:
        sys.exit(f"error: {e}")
    settings = base.to_dict()
    del settings["job_dir"]
    record = {
        "name": F.name,
        "command": " ".join(["python", "scripts/compare_sampling.py", *sys.argv[1:]]),
        "settings": settings,
        "arms": results,
    }
    png = plots.plot_tiers(
        {arm: r["tiers"] for arm, r in results.items()},
        os.path.join(F.output_dir, f"{F.name}.png"),
        title=f"{F.name}: {F.model_name} x{F.width_scale}, {F.epochs} epochs, seed {F.random_seed}",
    )
    print(f"\n{'tier':<14}" + "".join(f"{arm + ' top1':>14}" for arm in results))
    names = [t["name"] for t in next(iter(results.values()))["tiers"]]
    for name in names:
        row = f"{name:<14}"
        for r in results.values():
            match = [t for t in r["tiers"] if t["name"] == name]
            row += f"{match[0]['top1']:>14.3f}" if match else f"{'-':>14}"
        print(row)
    for arm, r in results.items():
        print(f"{arm}: {r['wall_seconds'] / 60:.1f} min")
    timing.write_benchmark(os.path.join(F.output_dir, f"{F.name}.json"), record)
    print(f"wrote {png}")


if __name__ == "__main__":
    app.run(main)
