"""What every run checks and builds before its first step, shared by the
run (`pss_keras.training.driver.train`) and its dry run
(`pss_keras.training.dry_run.dry_run`): the replicas check, the latency
tables, the sampler's maps and the prioritized sampler.
"""

from __future__ import annotations

import logging
import os

from pss_keras.cost import tables as tables_lib
from pss_keras.jobs import directory as jobs
from pss_keras.jobs.config import TrainConfig
from pss_keras.supernet import specs
from pss_keras.training import sampling
from pss_keras.training.pools import TargetGrid


def replicas_problem(batch_size: int, replicas: int) -> str:
    """Why a global batch cannot be split over the replicas ("" if it can)."""
    if batch_size % replicas:
        return (
            f"batch_size={batch_size} (the global batch) must be divisible by "
            f"the {replicas} replicas."
        )
    return ""


def load_latency_tables(config: TrainConfig, space: specs.SearchSpace, job_dir=None) -> dict:
    """The run's latency tables ``{metric_type: table}``, each checked
    against the search space: the project's own (`latency.LatencyTable`) or
    the reference's (`reference_luts.ReferenceLatencyTable`, from a ``.pkl``
    file; the job keeps a JSON copy of it).

    A job directory that already holds a copy of a table (a resumed or
    finished run) must hold the same table: its copy is what the run was
    trained with. With ``job_dir`` (and the copy there), the copy is read.

    Raises:
        ValueError: a missing, damaged or mismatched table, or one that
            differs from the job's copy.
    """
    tables = {}
    for metric_type, _, path in config.target_ranges():
        if path is None:
            continue
        copy = jobs.latency_table_path(job_dir or config.job_dir, metric_type)
        if os.path.exists(copy) and (job_dir or not os.path.exists(path)):
            if not job_dir:
                logging.warning(
                    "%s is gone; resuming with the job's copy of the %s table (%s).",
                    path, metric_type, copy,
                )  # fmt: skip
            path = copy
        table = tables_lib.load_table(path)
        table.check_space(space)
        if os.path.exists(copy):
            saved = tables_lib.load_table(copy)
            if saved.digest() != table.digest():
                raise ValueError(
                    f"{config.job_dir} was trained with another {metric_type} table ({copy}) "
                    f"than {path}; resume with the same table or use a new --job_dir."
                )
        tables[metric_type] = table
    return tables


def build_maps(
    config: TrainConfig, space: specs.SearchSpace, tables: dict | None = None, log: bool = True
) -> list[sampling.ConditionalSampler]:
    """One conditional sampler's map per metric type (seeded, so a resumed
    run rebuilds the same ones).

    Args:
        tables: ``{metric_type: table}`` for the latency types
            (`load_latency_tables`).
        log: log what each map reaches (`sampling.log_map`).
    """
    tables = tables or {}
    conditionals = []
    for metric_type, targets, _ in config.target_ranges():
        grid = TargetGrid(metric_type, *targets)
        metric_fn = None if metric_type == "flops" else tables[metric_type].metric_fn()
        conditional = sampling.ConditionalSampler.build(
            space, grid, num_samples=config.num_map_samples, seed=config.seed, metric_fn=metric_fn
        )
        if log:
            sampling.log_map(conditional)
        conditionals.append(conditional)
    return conditionals


def prioritized_sampler(config: TrainConfig, conditionals) -> sampling.PrioritizedSampler:
    """The run's prioritized sampler over ``conditionals`` (`build_maps`),
    with empty pools.

    Raises:
        ValueError: a map that reaches no target a candidate can be drawn for.
    """
    return sampling.PrioritizedSampler(
        conditionals,
        pool_size=config.pool_size,
        pool_ema=config.pool_ema,
        p_space=config.p_space,
        temperature=config.temperature,
        epochs=config.epochs,
        seed=config.seed,
    )


def build_samplers(
    config: TrainConfig, space: specs.SearchSpace, tables: dict | None = None
) -> sampling.PrioritizedSampler:
    """The run's prioritized sampler: one map per metric type (`build_maps`)
    and empty pools.

    Args:
        tables: ``{metric_type: table}`` for the latency types
            (`load_latency_tables`).
    """
    return prioritized_sampler(config, build_maps(config, space, tables))
