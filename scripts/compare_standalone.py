"""One supernet or N separate models: inherited tiers against subnets trained alone.

    python scripts/compare_standalone.py --seeds=0   # ~2-2.5 h a seed on 2 CPU cores

Per seed, into --job_root/seed<k>/: trains the PSS supernet of the sampling
study (same recipe), picks four of its retained tiers across the cost range
(the cheapest, the costliest, the nearest to 1/3 and 2/3 of the way), and
scores four arms per tier (pss_keras.training.studies):
inherited, standalone_equal_epochs, standalone_equal_compute, finetuned.

After every arm it rewrites docs/results/<name>.json (every seed so far:
each arm's top-1, top-5, epochs, training FLOPs and wall time, the machine
of each seed) and docs/results/<name>.png (top-1 vs MFLOPs, the arms' means
over seeds), so each finished arm can be committed. Re-running resumes an
interrupted arm and reuses finished ones; seeds run on other days (or
machines) add to the same JSON, each with its own machine record.
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import study_flags  # noqa: E402  (scripts/: the flags the study scripts share)
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string(
    "name", "imagenette_mbv1_w05_standalone", "Result name (docs/results/<name>.*)."
)
flags.DEFINE_string("job_root", "jobs/compare_standalone", "Where every seed's jobs go.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds to run, one after the other.")
flags.DEFINE_list(
    "arms",
    ["inherited", "finetuned", "standalone_equal_compute", "standalone_equal_epochs"],
    "Arms to run, in this order, for every chosen tier.",
)
flags.DEFINE_integer("num_tiers", 4, "Tiers of the supernet compared (spread over its range).")
flags.DEFINE_integer("finetune_epochs", 3, "Epochs of the finetuned arm.")
flags.DEFINE_float("finetune_lr", 0.01, "Peak learning rate of the finetuned arm (cosine).")
study_flags.define()
F = flags.FLAGS


def _supernet_config(dataset: str, seed: int):
    job_dir = os.path.join(F.job_root, f"seed{seed}", "supernet")
    return study_flags.train_config(job_dir, dataset, seed)


def _arm_config(supernet, tier: dict, arm: str, epochs: int):
    """The run of one arm for one tier (None for inherited: nothing to train)."""
    from pss_keras.jobs.directory import with_subnet

    if arm == "inherited":
        return None
    job_dir = os.path.join(os.path.dirname(supernet.job_dir), arm, tier["name"])
    single = with_subnet(dataclasses.replace(supernet, init_from=supernet.job_dir), tier["name"])
    if arm == "finetuned":
        return dataclasses.replace(
            single, job_dir=job_dir, epochs=F.finetune_epochs, lr=F.finetune_lr, warmup_epochs=0.0
        )
    return dataclasses.replace(single, job_dir=job_dir, init_from="", epochs=epochs)


def _run_seed(seed: int, dataset: str, record: dict, write) -> None:
    from pss_keras.supernet import specs
    from pss_keras.training import studies as study
    from pss_keras.training.dry_run import dry_run
    from pss_keras.utils.machine import machine_description, machine_record

    supernet = _supernet_config(dataset, seed)
    supernet.validate()
    plan, _ = dry_run(supernet)
    images = plan.data.num_train // F.batch_size * F.batch_size  # whole batches an epoch
    logging.info("Seed %d: supernet into %s", seed, supernet.job_dir)
    served, seconds = study.train_timed(supernet)
    space = specs.SearchSpace(**supernet.space_kwargs(len(plan.data.class_names)))
    mflops = study.supernet_image_mflops(
        *(study.count(space, c) for c in (space.largest(), space.smallest())),
        targets=study.flops_targets(supernet),
    )
    cost = study.training_flops(mflops, images, supernet.epochs)
    seed_record = record["seeds"].setdefault(str(seed), {"arms": {}})
    seed_record.update(
        machine=seed_record.get("machine") or machine_record(),
        images_per_epoch=images,
        supernet={
            "job_dir": supernet.job_dir, "epochs": supernet.epochs, "wall_seconds": round(seconds, 1),
            "image_mflops": round(mflops, 3), "training_flops": cost, "tiers_served": len(served),
            "tiers": [{k: t[k] for k in ("name", "mflops", "top1", "top5")} for t in served],
        },
    )  # fmt: skip
    settings = supernet.to_dict()
    for key in ("job_dir", "seed"):
        settings.pop(key)
    settings["data"].pop("seed")
    record["settings"] = settings
    chosen = study.pick_tiers(served, F.num_tiers)
    write()
    for arm in F.arms:
        for tier in chosen:
            epochs = {
                "standalone_equal_epochs": supernet.epochs,
                "standalone_equal_compute": study.equal_compute_epochs(
                    supernet.epochs, mflops, len(served), tier["mflops"]
                ),
                "finetuned": F.finetune_epochs,
            }.get(arm, 0)
            config = _arm_config(supernet, tier, arm, epochs)
            row = {"tier": tier["name"], "mflops": tier["mflops"], "epochs": epochs,
                   "machine": machine_description()}  # fmt: skip
            share = {"training_flops": cost / len(served), "wall_seconds": seconds / len(served)}
            if config is None:
                row.update(top1=tier["top1"], top5=tier["top5"], own_training_flops=0.0,
                           own_wall_seconds=0.0, supernet_share=share)  # fmt: skip
            else:
                logging.info("Seed %d: %s of %s into %s", seed, arm, tier["name"], config.job_dir)
                (trained,), spent = study.train_timed(config)
                row.update(
                    top1=trained["top1"], top5=trained["top5"], job_dir=config.job_dir,
                    own_training_flops=study.training_flops(tier["mflops"], images, epochs),
                    own_wall_seconds=round(spent, 1),
                    supernet_share=share if arm == "finetuned" else None,
                )  # fmt: skip
            seed_record["arms"].setdefault(arm, {})[tier["name"]] = row
            write()


def main(argv):
    del argv
    from pss_keras.training import studies as study
    from pss_keras.training.preemption import TrainingInterrupted
    from pss_keras.utils import timing

    unknown = sorted(set(F.arms) - set(study.ARMS))
    if unknown:
        sys.exit(f"error: unknown arm(s) {unknown}; use {list(study.ARMS)}.")
    path = os.path.join(F.output_dir, f"{F.name}.json")
    record = {"seeds": {}}
    if os.path.exists(path):  # seeds run earlier (maybe on another machine) stay
        with open(path) as f:
            record = json.load(f)
    record.update(
        name=F.name,
        command=" ".join(["python", "scripts/compare_standalone.py", *sys.argv[1:]]),
        cost_rule=study.COST_RULE,
        finetune={"epochs": F.finetune_epochs, "lr": F.finetune_lr},
    )

    def write():
        record["summary"] = study.summarize(record["seeds"])
        timing.write_benchmark(path, {k: v for k, v in record.items() if k != "machine"})
        study.plot(record, os.path.join(F.output_dir, f"{F.name}.png"))

    try:
        dataset = study_flags.dataset()
        for seed in F.seeds:
            _run_seed(int(seed), dataset, record, write)
    except ValueError as e:
        sys.exit(f"error: {e}")
    except TrainingInterrupted as e:  # SIGTERM / Ctrl-C: the same command resumes
        print(e, file=sys.stderr)
        sys.exit(e.exit_status)
    print(study.format_summary(record["summary"]))


if __name__ == "__main__":
    app.run(main)
