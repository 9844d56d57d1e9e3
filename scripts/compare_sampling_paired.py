"""PSS vs uniform sampling with equal search, over paired seeds.

    python scripts/compare_sampling_paired.py --seeds=0,1,2,3,4   # estimated 2 h a pair on 2 CPU cores

For each seed of --seeds, one after the other, trains (or resumes, or
reuses) two supernets into --job_root/seed<k>/: ``pss`` (the method) and
``uniform`` (every candidate from the conditional sampler: p_space fixed
at 1.0), with the same seed (same initial weights, data order,
augmentation, minival and sampler map; the two settings may differ in
p_space and job_dir alone), over subnet_spread.py's space by default
(MobileNetV1 x0.5, multipliers 0.5-1.0, 32-128 px, 5 FLOPs targets 5..37
step 8, 24 epochs). Then per target, --candidates_per_band subnets per set,
each calibrated and scored on minival and validation: the pss pool's top,
the uniform pool's top, and as many random subnets of the target from the
uniform arm's sampler; each set's best on minival is chosen, each arm's
chosen subnets are scored inside the other arm's supernet, and the arms
are compared at matched FLOPs (pss_keras.benchmarking.paired_sampling).
Across the pairs: the decision rule (pss_keras.benchmarking.paired_stats).

Writes docs/results/<name>.json after every arm and every evaluation step
(a re-run resumes: finished arms are reused, finished steps kept) and
docs/results/<name>.png.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import study_flags  # noqa: E402  (scripts/: the flags the study scripts share)
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("name", "imagenette_mbv1_w05_paired", "Result name (docs/results/<name>.*).")
flags.DEFINE_string("job_root", "jobs/compare_sampling_paired", "Where each pair's jobs go.")
flags.DEFINE_list(
    "seeds",
    ["0", "1", "2", "3", "4"],
    "Seeds of the pairs, run one after the other (5: the number fixed in docs/benchmarks.md).",
)
flags.DEFINE_integer("candidates_per_band", 10, "Subnets scored per candidate set and target.")
flags.DEFINE_string(
    "spread_result",
    os.path.join(study_flags.ROOT, "docs", "results", "imagenette_mbv1_w05_spread.json"),
    "subnet_spread.py's JSON, for the number of pairs a 1-point effect needs (if present).",
)
study_flags.define(
    resolution_range=["32", "128"], width_mult_range=["0.5", "1.0"],
    flops_targets=["5", "37", "8"], minival_examples=1500,
)  # fmt: skip
F = flags.FLAGS

ARMS = {"pss": {}, "uniform": {"p_space": (1.0, 1.0)}}


def _configs(dataset: str, seed: int) -> dict:
    """Both arms' TrainConfigs of one seed."""
    root = os.path.join(F.job_root, f"seed{seed}")
    return {
        arm: study_flags.train_config(os.path.join(root, arm), dataset, seed, **overrides)
        for arm, overrides in ARMS.items()
    }


def _settings(config) -> dict:
    settings = config.to_dict()
    for key in ("job_dir", "seed", "p_space"):
        settings.pop(key)
    settings["data"].pop("seed")
    return {
        "training": settings,
        "arms": {
            arm: {"p_space": list(c.get("p_space", config.p_space))} for arm, c in ARMS.items()
        },
        "candidates_per_band": F.candidates_per_band,
        "calib_batches": F.calib_batches,
        "random_draw_seed": "numpy default_rng([pair seed, target index])",
    }


def _train(entry: dict, configs: dict, write) -> None:
    """Trains (or resumes, or reuses) both arms, recording each when done."""
    from pss_keras.jobs import directory as jobs
    from pss_keras.training import studies
    from pss_keras.utils.machine import machine_description

    for arm, config in configs.items():
        config.validate()
        jobs.check_resume(config.job_dir, config)  # a finished job is reused: it must be this run
        logging.info("Seed %d, arm %s: %s", config.seed, arm, config.job_dir)
        tiers, seconds = studies.train_timed(config)
        record = entry["arms"].setdefault(arm, {})
        record.update(job_dir=config.job_dir, p_space=list(config.p_space),
                      wall_seconds=round(seconds, 1))  # fmt: skip
        record["retained"] = [
            {k: t[k] for k in ("name", "mflops", "top1", "minival_top1")} for t in tiers
        ]
        entry["machine"].setdefault(arm, machine_description())
        write()


def _run_pair(record: dict, seed: int, dataset: str, write) -> None:
    from pss_keras.benchmarking import paired_sampling as paired
    from pss_keras.training.subnet_bench import BenchData, SubnetBench
    from pss_keras.utils.machine import machine_description

    configs = _configs(dataset, seed)
    paired.check_paired(configs["pss"].to_dict(), configs["uniform"].to_dict())
    entry = paired.seed_entry(record, seed)
    paired.add_command(entry, record["command"])
    _train(entry, configs, write)
    if paired.complete(entry):
        return
    data = BenchData(configs["pss"].job_dir, F.calib_batches)
    benches = {arm: SubnetBench(c.job_dir, data) for arm, c in configs.items()}
    with data.pipelines.bad_image_errors():
        paired.evaluate_pair(entry, benches, F.candidates_per_band, seed, write)
    entry["machine"].setdefault("evaluation", machine_description())
    write()


def _run(path: str) -> dict:
    from pss_keras.benchmarking import paired_summary as summary
    from pss_keras.utils import timing

    dataset = study_flags.dataset()
    seeds = [int(s) for s in F.seeds]
    base = _configs(dataset, seeds[0])["pss"]
    previous = None
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    record = summary.start_record(previous, _settings(base))
    record.update(
        name=F.name,
        command=" ".join(["python", "scripts/compare_sampling_paired.py", *sys.argv[1:]]),
        units=summary.UNITS,
    )
    if "power_plan" not in record and os.path.exists(F.spread_result):
        with open(F.spread_result) as f:
            spread = json.load(f)
        if spread.get("bands"):
            record["power_plan"] = summary.power_plan(
                spread, F.candidates_per_band, os.path.relpath(F.spread_result, study_flags.ROOT)
            )
    png = os.path.join(F.output_dir, f"{F.name}.png")
    title = f"{F.name}: {F.model_name} x{F.width_scale}, {F.epochs} epochs"

    def write():
        record["summary"] = summary.summarize(record)
        record["verdict"] = summary.verdict_sentence(record["summary"])
        timing.write_benchmark(path, {k: v for k, v in record.items() if k != "machine"})
        if record["summary"]["per_band"]:
            summary.plot(record, png, title=title)

    for seed in seeds:
        _run_pair(record, seed, dataset, write)
    return record


def main(argv):
    del argv
    from pss_keras.benchmarking import paired_summary as summary

    record = study_flags.run(_run, os.path.join(F.output_dir, f"{F.name}.json"))
    print("\n" + summary.format_table(record))


if __name__ == "__main__":
    app.run(main)
