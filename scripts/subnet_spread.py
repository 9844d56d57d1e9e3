"""Is there anything to prioritize? The spread of random subnets of one cost.

    python scripts/subnet_spread.py   # estimated 1-1.2 h on 2 CPU cores (training ~40 min)

Trains (or resumes, or reuses) one supernet with uniform sampling (every
candidate from the conditional sampler: p_space fixed at 1.0, as
compare_sampling.py's uniform arm) into --job_root/uniform_seed<k>, on
Imagenette by default, over a wide space (MobileNetV1 x0.5, multipliers
0.5-1.0, 32-128 px: 0.83..48.7 MFLOPs; 5 FLOPs targets 5..37 step 8).
Then, for every target (a band: subnets whose MFLOPs round to it), draws
--subnets_per_band different subnets from the run's conditional sampler
(seeded by --random_seed and the target) and measures each one: post-BN
calibration on --calib_batches training batches, top-1 on the job's own
minival and on the validation split, and the pools' score (negative
cross-entropy, batch statistics) on one fixed training batch and its mean
over --score_batches (every subnet the same batches: epoch --epochs of the
training order, which training never read).

Writes docs/results/<name>.json after every band (per band: best minus
median validation top-1, Kendall tau of minival / score / MFLOPs vs
validation, every subnet; the verdict across bands; settings, command,
machine) and docs/results/<name>.png (validation top-1 vs MFLOPs, one
colour per band). Re-running resumes: bands already in the JSON are kept.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import study_flags  # noqa: E402  (scripts/: the flags the study scripts share)
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("name", "imagenette_mbv1_w05_spread", "Result name (docs/results/<name>.*).")
flags.DEFINE_string("job_root", "jobs/subnet_spread", "Where the supernet's job goes.")
flags.DEFINE_integer("random_seed", 0, "Seed of the supernet's run and of the subnets drawn.")
flags.DEFINE_integer("subnets_per_band", 30, "Different random subnets measured per target.")
flags.DEFINE_integer("score_batches", 10, "Training batches the mean score is taken over.")
study_flags.define(
    resolution_range=["32", "128"], width_mult_range=["0.5", "1.0"],
    flops_targets=["5", "37", "8"], minival_examples=1500,
)  # fmt: skip
F = flags.FLAGS


def _config(dataset: str):
    job_dir = os.path.join(F.job_root, f"uniform_seed{F.random_seed}")
    # uniform: every candidate from the conditional sampler
    return study_flags.train_config(job_dir, dataset, F.random_seed, p_space=(1.0, 1.0))


def _band(bench, scoring, k: int) -> dict:
    """Band ``k`` of the grid: its subnets drawn and measured, each with
    the pools' score on the ``scoring`` batches (one and their mean)."""
    import numpy as np

    from pss_keras.benchmarking import subnet_spread as study

    grid = bench.sampler.grid
    rng = np.random.default_rng([F.random_seed, k])
    configs = study.draw_distinct(lambda r: bench.sample(k, r), F.subnets_per_band, rng)
    rows = []
    for i, config in enumerate(configs):
        row = bench.measure(config)
        scores = bench.batch_scores(config, scoring)
        rows.append({**row, "score_1": scores[0], "score_10": sum(scores) / len(scores)})
        logging.info("%s %d/%d: val top-1 %.3f (%s)", grid.name(k), i + 1, len(configs),
                     rows[-1]["val_top1"], config.name)  # fmt: skip
    return study.band_statistics(grid.value(k), grid.name(k), rows)


def _settings(config) -> dict:
    settings = config.to_dict()
    settings.pop("job_dir")
    return {
        "training": settings,
        "subnets_per_band": F.subnets_per_band,
        "draw_seed": F.random_seed,
        "calib_batches": F.calib_batches,
        "score_batches": F.score_batches,
        "score_epoch": config.epochs,
    }


def _run(path: str) -> dict:
    from pss_keras.benchmarking import subnet_spread as study
    from pss_keras.jobs import directory as jobs
    from pss_keras.training import studies
    from pss_keras.training.subnet_bench import SubnetBench
    from pss_keras.utils import timing
    from pss_keras.utils.machine import machine_description

    config = _config(study_flags.dataset())
    config.validate()
    previous = None
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    record = study.start_record(previous, _settings(config))
    record.update(
        name=F.name,
        command=" ".join(["python", "scripts/subnet_spread.py", *sys.argv[1:]]),
        seed=F.random_seed,
        units=study.UNITS,
    )
    jobs.check_resume(config.job_dir, config)  # a finished job is reused: it must be this run
    logging.info("Supernet (uniform sampling) into %s", config.job_dir)
    _, seconds = studies.train_timed(config)
    record["training"] = {"job_dir": config.job_dir, "wall_seconds": round(seconds, 1)}

    def write():
        timing.write_benchmark(path, {key: v for key, v in record.items() if key != "machine"})

    write()
    bench = SubnetBench(config.job_dir, calib_batches=F.calib_batches)
    # Epoch --epochs of the training order, which training never read:
    # every subnet is scored on the same batches.
    scoring = bench.data.scoring(config.epochs, F.score_batches)
    title = (f"{F.name}: {F.model_name} x{F.width_scale}, uniform, {F.epochs} epochs, "
             f"seed {F.random_seed}")  # fmt: skip
    for k in bench.sampler.trainable:
        if bench.sampler.grid.value(k) in study.done_targets(record):
            continue
        with bench.data.pipelines.bad_image_errors():
            band = _band(bench, scoring, k)
        band["machine"] = machine_description()
        study.add_band(record, band)
        write()
        study.plot(record, os.path.join(F.output_dir, f"{F.name}.png"), title=title)
    return record


def main(argv):
    del argv
    from pss_keras.benchmarking import subnet_spread as study

    record = study_flags.run(_run, os.path.join(F.output_dir, f"{F.name}.json"))
    if not record["bands"]:
        sys.exit("error: no target of the grid has subnets other than the largest or smallest.")
    print("\n" + study.format_table(record))


if __name__ == "__main__":
    app.run(main)
