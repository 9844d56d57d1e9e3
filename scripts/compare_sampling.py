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
from absl import app, flags, logging  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("name", "imagenette_mbv1_w05", "Result name (docs/results/<name>.*).")
flags.DEFINE_string("job_root", "jobs/compare_sampling", "Where each arm's job goes.")
flags.DEFINE_list("arms", ["pss", "uniform"], "Arms to train: pss, uniform.")
flags.DEFINE_string("dataset", None, "Image folder or TFDS name (default: Imagenette tar).")
flags.DEFINE_string(
    "imagenette_tar",
    os.path.join(ROOT, "..", "shared", "data", "imagenette2-224.tar"),
    "Imagenette tar used when --dataset is not given.",
)
flags.DEFINE_string("data_cache", "/tmp/pss_keras_data", "Where the tar is unpacked.")
flags.DEFINE_string("model_name", "mobilenet_v1", "Architecture.")
flags.DEFINE_float("width_scale", 0.5, "Global width scale.")
flags.DEFINE_list("resolution_range", ["64", "128"], "min,max subnet resolution.")
flags.DEFINE_list("flops_targets", ["10", "45", "5"], "FLOPs targets start,stop,step (MFLOPs).")
flags.DEFINE_integer("epochs", 8, "Epochs per arm.")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_float("lr", 0.1, "Peak learning rate (cosine).")
flags.DEFINE_float("warmup_epochs", 0.5, "Linear warm-up epochs.")
flags.DEFINE_integer("minival_examples", 500, "Training images held out to choose tiers.")
flags.DEFINE_integer("gen_map_num", 100_000, "Subnets drawn for the conditional sampler.")
flags.DEFINE_integer("pool_size", 50, "Subnets per pool.")
flags.DEFINE_integer("valid_topk", 5, "Top subnets of every pool evaluated at the end.")
flags.DEFINE_integer("random_seed", 0, "Seed of every arm.")
flags.DEFINE_string("output_dir", os.path.join(ROOT, "docs", "results"), "Results folder.")
F = flags.FLAGS

ARMS = {"pss": {}, "uniform": {"p_space": (1.0, 1.0)}}


def _dataset() -> str:
    from pss_keras.training.studies import imagenette_folder

    return F.dataset or imagenette_folder(F.imagenette_tar, F.data_cache)


def _base_config(dataset: str):
    from pss_keras.jobs import config as data
    from pss_keras.jobs.config import TrainConfig

    resolution = tuple(int(v) for v in F.resolution_range)
    return TrainConfig(
        job_dir="",
        data=data.DataConfig(
            dataset=dataset,
            image_size=resolution[1],
            batch_size=F.batch_size,
            eval_batch_size=256,
            minival_examples=F.minival_examples,
            seed=F.random_seed,
        ),
        model_name=F.model_name,
        width_scale=F.width_scale,
        resolution_range=resolution,
        flops_targets=tuple(float(v) for v in F.flops_targets),
        num_map_samples=F.gen_map_num,
        pool_size=F.pool_size,
        epochs=F.epochs,
        lr=F.lr,
        warmup_epochs=F.warmup_epochs,
        topk=F.valid_topk,
        seed=F.random_seed,
        verbose=2,
    )


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
        base = _base_config(_dataset())
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
