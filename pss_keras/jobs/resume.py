"""What may and may not change when a run resumes from its job directory.

`conflicts` compares a run's settings with the ``run_config.json`` its job
saved (`pss_keras.jobs.directory.check_resume` refuses a resume with any).
"""

from __future__ import annotations

import dataclasses
import math

from pss_keras.jobs.config import DERIVED, DataConfig, TrainConfig, json_round_trip


def conflicts(config: TrainConfig, saved: dict) -> list[str]:
    """Settings of ``config`` that differ from a saved run's ``to_dict()``.

    What may change between a run and its resume is ignored: the epoch
    count, logging, checkpoint retention, and where the data and the job
    live (a new disk, another machine).
    """
    current = json_round_trip(config.to_dict())
    ignore = {
        "epochs", "verbose", "tensorboard_update_freq", "keep_checkpoints", "job_dir",
        "strategy", "selection", "retain_bounds", "validate_every", "checkpoint_every_steps",
        # A resume never re-imports: its checkpoint holds the weights (a
        # distilling run reads its teacher from it again).
        "init_from",
        "subnet_name",  # names the one tier (the subnet itself is compared)
        # Tables may move; the job keeps a copy and compares contents.
        "lut_paths",
        # Compared as the rates in use (below): the same rate may be
        # spelled with or without the batch rule.
        "lr", "lr_batch_size", "warmup_epochs", *DERIVED,
    }  # fmt: skip
    # A setting added after the saved run was written had its default then.
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(config)
        if f.default is not dataclasses.MISSING
    }
    saved_raw = saved
    saved = {**json_round_trip(defaults), **saved}
    changed = sorted(
        k for k in current if k not in ignore | {"data"} and saved.get(k) != current[k]
    )
    # bad_images only decides what a damaged file does: with none, fail
    # and skip read the same batches, and a run stopped by one may go
    # on with --bad_images=skip.
    saved_data = {
        **json_round_trip(dataclasses.asdict(DataConfig(dataset=config.data.dataset))),
        **saved.get("data", {}),
    }
    data_changed = sorted(
        k
        for k in current["data"]
        if k not in ("data_dir", "manual_dir", "bad_images")
        and saved_data.get(k) != current["data"][k]
    )
    fields = {f.name for f in dataclasses.fields(config)}
    before = type(config).from_dict(
        {k: v for k, v in saved.items() if k in fields and k != "job_dir"}
        | {"job_dir": config.job_dir}
    )
    if not math.isclose(before.lr_in_use, config.lr_in_use, rel_tol=1e-9, abs_tol=1e-12):
        hint = ""
        if "lr_batch_size" not in saved_raw and config.lr_batch_size:
            hint = " (this job predates --lr_batch_size: pass --lr_batch_size=0)"
        changed.append(f"lr in use {before.lr_in_use:.6g} -> {config.lr_in_use:.6g}{hint}")
    # The automatic warm-up follows --epochs, which a resume may change.
    auto = before.warmup_epochs is None and config.warmup_epochs is None
    if not auto and not math.isclose(before.warmup_in_use, config.warmup_in_use, abs_tol=1e-12):
        changed.append(f"warm-up epochs {before.warmup_in_use:g} -> {config.warmup_in_use:g}")
    return changed + data_changed
