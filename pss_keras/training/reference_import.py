"""An official PSS-Net checkpoint as a job directory, ready to export,
convert, evaluate and fine-tune like a job trained here.

`import_reference` reads the file (`load_reference_checkpoint`: no torch,
an allowlisted unpickler), checks every pool subnet's FLOPs against the
count the reference recorded, and writes ``job_dir`` as training would
(`pss_keras.jobs.directory`): the run configuration with the reference's
architecture (symmetric padding, BN epsilon 1e-5) and search space, the
supernet's weights, a checkpoint in this project's format whose pools are
the file's (so ``evaluate.py`` can re-select), the class names (ImageNet's
wnids, TFDS imagenet2012's order, for a 1000-class file) and the retained
tiers, as the reference reports them: each non-empty pool's best-scored
subnet, plus the space's smallest and largest.

Batch norm: a released file holds one set of running statistics, those of
the last subnet its final validation calibrated (the smallest), so every
tier is calibrated afresh on ``calibration`` images (the reference's post-BN
calibration: training transform, a few batches). Without them the tiers
are written without statistics and export refuses them, saying what to
pass. With ``validation`` images each tier's top-1 is measured; without,
tiers carry no top-1 (NaN) and budget choices order them by cost.

Nothing is written under ``job_dir`` until everything was read and
computed: the job is assembled in a hidden sibling folder and renamed into
place, so a refused file or a failed calibration leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from pss_keras.cost import flops
from pss_keras.cost import tables as tables_lib
from pss_keras.data import image_files
from pss_keras.data.decoding import DatasetError
from pss_keras.jobs import directory as jobs
from pss_keras.jobs import tiers as tiers_lib
from pss_keras.jobs.config import METRIC_TYPES, DataConfig, TrainConfig
from pss_keras.supernet import reference_checkpoint as reference
from pss_keras.supernet import specs
from pss_keras.training import preflight, reference_tiers
from pss_keras.training.checkpoints import Checkpointer
from pss_keras.training.evaluation import SubnetEvaluator
from pss_keras.utils.fileio import current_umask

LATENCY_TYPES = tuple(m for m in METRIC_TYPES if m != "flops")
# How a job says it was imported (weights_origin.json); a re-import replaces only such a job.
IMPORTED_FROM = "the official PSS-Net checkpoint"


@dataclasses.dataclass(frozen=True)
class ImportData:
    """Where an import's images come from.

    Attributes:
        calibration: a folder of training images (any layout) or a prepared
            TFDS name; None: tiers written uncalibrated (export refuses).
        validation: a folder of class folders named by the model's classes
            (ImageNet wnids); None: no top-1 measured.
        data_dir: TFDS's data directory for a TFDS ``calibration``.
        calib_batches, batch_size: calibration batches and their size.
        eval_batch_size: batch size of the validation pass.
        seed: which calibration images and crops.
    """

    calibration: str | None = None
    validation: str | None = None
    data_dir: str | None = None
    calib_batches: int = 8
    batch_size: int = 64
    eval_batch_size: int = 64
    seed: int = 0


def run_config(job_dir: str, model_name: str, grids: dict, lut_paths: dict, data) -> TrainConfig:
    """The imported job's `TrainConfig`: the reference's space, architecture
    and targets (FLOPs, and the latency types given a table), a fine-tuning
    run's defaults for the rest."""
    flops_grid = grids.get("flops")
    latency = [m for m in grids if m != "flops" and m in lut_paths]
    return TrainConfig(
        job_dir=job_dir,
        data=DataConfig(
            dataset="imagenet2012", image_size=224, batch_size=data.batch_size,
            eval_batch_size=data.eval_batch_size,
        ),
        model_name=model_name,
        padding=reference.REFERENCE_PADDING,
        bn_epsilon=reference.REFERENCE_BN_EPSILON,
        **{k: v for k, v in reference.REFERENCE_SPACE.items()},
        flops_targets=(
            (flops_grid.start, flops_grid.stop, flops_grid.step)
            if flops_grid else reference_tiers.DEFAULT_FLOPS_TARGETS[model_name]
        ),
        metric_types=("flops", *latency),
        latency_targets=tuple((grids[m].start, grids[m].stop, grids[m].step) for m in latency),
        lut_paths=tuple(os.path.abspath(lut_paths[m]) for m in latency),
        calib_batches=data.calib_batches,
        selection="val_best_of_topk",
        retain_bounds=True,
    )  # fmt: skip


def _predicted_us(tables: dict, config: specs.SubnetConfig) -> dict:
    return {m: round(table.predict_us(config), 3) for m, table in sorted(tables.items())}


def _measure(
    evaluator, tier: reference_tiers.PlannedTier, calibration, validation, calib_batches
) -> tuple:
    """A tier's statistics (None uncalibrated) and ``(top1, top5)`` (NaN unmeasured)."""
    if calibration is None:
        return None, (math.nan, math.nan)
    stats = evaluator.calibrate(tier.config, calibration, calib_batches)
    if validation is None:
        return stats, (math.nan, math.nan)
    result = evaluator.evaluate(tier.config, stats, validation)
    return stats, (result["top1"], result["top5"])


def _record(
    job_dir, tier: reference_tiers.PlannedTier, stats, accuracy, tables, space
) -> tiers_lib.RetainedTier:
    top1, top5 = accuracy
    return tiers_lib.RetainedTier(
        name=tier.name,
        config=tier.config,
        metric_type=tier.metric_type,
        target=tier.target,
        mflops=flops.count_mflops(tier.config, space.num_classes, space.width_scale),
        params=flops.count_params(tier.config, space.num_classes, space.width_scale),
        top1=top1,
        top5=top5,
        minival_top1=math.nan,
        pool_score=tier.pool_score,
        bn_stats=jobs.save_bn_stats(job_dir, tier.name, stats) if stats is not None else "",
        selected_on=tier.selected_on,
        candidates=tier.candidates,
        predicted_us=_predicted_us(tables, tier.config),
    )


def _check_job_dir(job_dir: str) -> None:
    """Refuses a ``job_dir`` that holds anything but an earlier import."""
    if not os.path.exists(job_dir):
        return
    if not os.path.isdir(job_dir):
        raise ValueError(f"--job_dir={job_dir} is a file; give a new directory.")
    if not os.listdir(job_dir):
        return
    origin = jobs.read_weights_origin(job_dir) or ""
    if not origin.startswith(IMPORTED_FROM):
        raise ValueError(
            f"--job_dir={job_dir} already holds files that are not an imported checkpoint; "
            "give a new directory (an earlier import there would be replaced)."
        )


def _fill_pools(sampler, pools: dict, grids: dict) -> int:
    """The file's pools into ``sampler``'s (targets its maps reach); returns
    how many subnets went in."""
    count = 0
    for metric_type, targets in pools.items():
        if metric_type not in sampler.samplers:
            continue
        for target, entries in targets.items():
            pool = sampler.pools.get((metric_type, grids[metric_type].index(float(target))))
            if pool is None:
                continue
            for config, score, _ in entries[: pool.capacity]:
                pool.scores[config] = score
                count += 1
    return count


def _write_checkpoint(staging, config, supernet, tables, pools, grids, last_epoch) -> None:
    """This project's checkpoint of the imported state: weights, a fresh
    optimizer, the file's pools (for ``evaluate.py``'s re-selection)."""
    sampler = preflight.build_samplers(config, supernet.space, tables)
    filled = _fill_pools(sampler, pools, grids)
    logging.info("Checkpoint pools: %d subnets of the file's pools.", filled)
    optimizer = keras.optimizers.SGD(momentum=config.momentum, nesterov=config.nesterov)
    optimizer.build(supernet.trainable_variables)
    checkpointer = Checkpointer(
        os.path.join(staging, jobs.CHECKPOINTS), supernet, optimizer, sampler, keep=1
    )
    checkpointer.save(epoch=min(int(last_epoch) + 1, config.epochs))


def _install(staging: str, job_dir: str) -> None:
    """Moves the assembled job into place (an earlier import there is replaced)."""
    old = None
    if os.path.exists(job_dir):
        parent = os.path.dirname(os.path.abspath(job_dir))
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(job_dir)}-replaced-", dir=parent)
        os.rename(job_dir, os.path.join(old, "job"))
    os.rename(staging, job_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def import_reference(
    checkpoint: str,
    model_name: str,
    job_dir: str,
    data: ImportData | None = None,
    lut_paths: dict | None = None,
    topk: int = 5,
    progress: bool = True,
) -> list[tiers_lib.RetainedTier]:
    """Writes ``job_dir`` from an official PSS-Net checkpoint (module docstring).

    Args:
        checkpoint: the ``.pt`` file.
        model_name: ``mobilenet_v1`` or ``mobilenet_v2``.
        job_dir: a new directory (or an earlier import, which is replaced).
        data: calibration and validation images (`ImportData`).
        lut_paths: ``{latency type: table file}`` (the reference's ``.pkl``
            tables or your own): every tier's latency is predicted with
            each; a type the file has pools for also keeps its targets in
            the run configuration and its pools in the checkpoint.
        topk: candidates kept per pool.

    Returns:
        The retained tiers, cheapest first.

    Raises:
        ValueError: one line (`CheckpointError` for the file, `DatasetError`
            for images); nothing is written then.
    """
    data = data or ImportData()
    lut_paths = dict(lut_paths or {})
    _check_job_dir(job_dir)
    loaded = reference.load_reference_checkpoint(checkpoint, model_name)
    supernet, rest = loaded.supernet, loaded.checkpoint
    space = supernet.space
    try:
        pools = reference.reference_pools(rest.get("arch_pools"), space)
    except ValueError as e:
        raise reference.ReferenceCheckpointError(f"{checkpoint}: arch_pools: {e}") from None
    reference_tiers.check_pool_flops(pools, checkpoint)
    target_lists = (rest.get("arch_pools") or {}).get("infer_metric_target_list") or {}
    grids = {
        m: reference_tiers.target_grid(m, target_lists.get(m) or list(t))
        for m, t in pools.items()
        if t
    }
    unknown = sorted(set(lut_paths) - set(LATENCY_TYPES))
    if unknown:
        raise ValueError(f"--lut_dirs names {unknown}; latency tables are for {LATENCY_TYPES}.")
    tables = {m: tables_lib.load_table(p) for m, p in sorted(lut_paths.items())}
    for table in tables.values():
        table.check_space(space)
    config = run_config(job_dir, model_name, grids, lut_paths, data)
    config.validate()
    names = reference_tiers.class_names(supernet.num_classes)
    planned = reference_tiers.plan_tiers(pools, grids, space, topk)
    calibration = validation = None
    if data.calibration:
        calibration = image_files.calibration_batches(
            data.calibration, data.calib_batches, data.batch_size, 224, data.seed, data.data_dir
        )
    if data.validation:
        validation = image_files.labelled_folder(data.validation, names, 224, data.eval_batch_size)
    parent = os.path.dirname(os.path.abspath(job_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(job_dir)}-importing-", dir=parent)
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 is not a job's
    try:
        retained = _assemble(
            staging, config, supernet, planned, calibration, validation, tables, data, progress
        )
        jobs.write_classes(staging, names)
        jobs.write_weights_origin(staging, f"{IMPORTED_FROM} {os.path.abspath(checkpoint)}")
        _write_checkpoint(
            staging, config, supernet, tables, pools, grids, rest.get("last_epoch", 0)
        )
        _install(staging, job_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(retained, key=lambda t: t.mflops)


def _assemble(staging, config, supernet, planned, calibration, validation, tables, data, progress):
    """Writes the job's files into ``staging``; returns the retained tiers."""
    jobs.write_run_config(staging, config)
    supernet.save_weights(os.path.join(staging, jobs.WEIGHTS))
    for metric_type, table in tables.items():
        table.save(jobs.latency_table_path(staging, metric_type))
    evaluator = SubnetEvaluator(supernet)
    bar = keras.utils.Progbar(len(planned), unit_name="tier") if progress and calibration else None
    retained = []
    for tier in planned:
        try:
            stats, accuracy = _measure(evaluator, tier, calibration, validation, data.calib_batches)
        except tf.errors.OpError as e:  # a tf.data decode error names no file
            bad = image_files.first_bad_file(data.validation) if validation else None
            if bad is None:
                raise
            raise DatasetError(f"{bad} cannot be decoded as an image; remove or replace it.") from e
        retained.append(_record(staging, tier, stats, accuracy, tables, supernet.space))
        if bar is not None:
            bar.add(1, [("top1", accuracy[0])] if validation is not None else [])
    jobs.write_retained(staging, retained)
    return retained
