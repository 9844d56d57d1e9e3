"""End-of-training selection: the best subnet of every pool becomes a tier.

For each target's pool, the top-k subnets by pool score are calibrated
(post-BN calibration on training batches) and evaluated on minival and on
the validation split; the best on minival (or, with ``val_best_of_topk``,
on validation) is retained and recorded in the job directory
(`pss_keras.jobs.directory`). A run that trained one subnet alone retains
that one, calibrated and evaluated the same way (`retain_single`).
"""

from __future__ import annotations

import keras

from pss_keras.cost import flops
from pss_keras.data import pipelines as data_lib
from pss_keras.jobs import directory as jobs
from pss_keras.jobs import tiers as tiers_lib
from pss_keras.jobs.config import SELECTIONS
from pss_keras.supernet import specs
from pss_keras.supernet.model import Supernet
from pss_keras.training import sampling
from pss_keras.training.evaluation import SubnetEvaluator


def retain_subnets(
    supernet: Supernet,
    sampler: sampling.PrioritizedSampler,
    pipelines: data_lib.Pipelines,
    job_dir: str,
    topk: int = 5,
    calib_batches: int = 8,
    progress: bool = True,
    selection: str = "minival",
    bounds: bool = False,
) -> list[dict]:
    """Calibrates and scores the top-k of every pool, keeps the best per target.

    With ``selection="minival"`` (default) the best subnet of a pool is
    chosen on minival (held-out training data), so its reported ``top1`` /
    ``top5``, measured on the validation split, are not selected on
    themselves. ``val_best_of_topk`` chooses on the validation split, as the
    reference implementation does (to compare with the paper's numbers;
    optimistic by construction). Every top-k candidate's minival and
    validation accuracy is recorded either way. Calibrated statistics go to
    ``<job_dir>/bn_stats/<tier>.npz``; the list to
    ``<job_dir>/retained_subnets.json`` (`pss_keras.jobs.directory`).

    With ``bounds``, the space's smallest and largest subnets (the two the
    sandwich step trains on every batch, which the paper reports beside the
    pools' best) are calibrated, evaluated and retained as well, as tiers
    ``smallest`` and ``largest`` (``selected_on="sandwich"``: not chosen
    from a pool), unless a pool's tier is that very subnet. They widen the
    range a deployment can switch over: the pools' best sit at the top of
    their grid cells, so the cheapest pool tier costs about one grid step.

    Returns:
        The retained tiers as written (``RetainedTier.to_dict()`` records).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r} is unknown; use one of {SELECTIONS}.")
    evaluator = SubnetEvaluator(supernet)
    space = supernet.space
    pools = [(key, pool) for key, pool in sorted(sampler.pools.items()) if len(pool)]
    bar = keras.utils.Progbar(len(pools), unit_name="pool") if progress else None
    # The calibration batches, read (and their shuffle buffer filled) once
    # and reused by every candidate of every pool.
    calibration = pipelines.calibration(calib_batches)
    retained = []
    for (metric_type, k), pool in pools:
        grid = sampler.samplers[metric_type].grid
        rows = [
            _evaluate_candidate(evaluator, config, score, pipelines, calibration, calib_batches)
            for config, score in pool.top(topk)
        ]
        chosen_on = "minival_top1" if selection == "minival" else "top1"
        best = max(rows, key=lambda row: row[chosen_on])  # the first of equals
        retained.append(
            _retained_tier(
                grid.name(k),
                best,
                rows,
                metric_type,
                grid.value(k),
                "minival" if selection == "minival" else "validation",
                _predicted_us(sampler, best["config"]),
                space,
                job_dir,
            )
        )
        if bar is not None:
            bar.add(1, [("val_top1", best["top1"])])
    if bounds:
        retained = _with_bounds(
            retained, sampler, space, job_dir,
            lambda config: _evaluate_candidate(
                evaluator, config, None, pipelines, calibration, calib_batches
            ),
        )  # fmt: skip
    return jobs.write_retained(job_dir, retained)


def _with_bounds(retained, sampler, space, job_dir, evaluate) -> list:
    """``retained`` with the space's smallest subnet first and its largest
    last (each skipped when a pool's tier is that subnet)."""
    have = {t.config for t in retained}
    metric_type = min(sampler.samplers)  # "flops" when the run has it
    out = list(retained)
    for name, config in (("smallest", space.smallest()), ("largest", space.largest())):
        if config in have:
            continue
        row = evaluate(config)
        # Its own cost in the run's first metric (MFLOPs or predicted us).
        if metric_type == "flops":
            target = round(flops.count_mflops(config, space.num_classes, space.width_scale), 3)
        else:
            target = _predicted_us(sampler, config)[metric_type]
        tier = _retained_tier(
            name, row, [row], metric_type, target, "sandwich",
            _predicted_us(sampler, config), space, job_dir,
        )  # fmt: skip
        out = [tier, *out] if name == "smallest" else [*out, tier]
    return out


def retain_single(
    supernet: Supernet,
    config: specs.SubnetConfig,
    name: str,
    pipelines: data_lib.Pipelines,
    job_dir: str,
    tables: dict,
    calib_batches: int = 8,
) -> list[dict]:
    """The one tier of a run that trained ``config`` alone: calibrated on
    ``calib_batches`` training batches and evaluated on minival and
    validation as every retained tier is, recorded with
    ``selected_on="single"`` (``metric_type`` ``flops``, ``target`` its own
    MFLOPs, no pool score).

    Args:
        name: the tier's name ("" : by its MFLOPs, `single_tier_name`).
        tables: the run's latency tables ``{metric_type: table}``, for the
            tier's predicted latencies.

    Returns:
        The one-record list written to ``retained_subnets.json``.
    """
    space = supernet.space
    evaluator = SubnetEvaluator(supernet)
    row = _evaluate_candidate(
        evaluator, config, None, pipelines, pipelines.calibration(calib_batches), calib_batches
    )
    mflops = flops.count_mflops(config, space.num_classes, space.width_scale)
    arrays = specs.configs_to_arrays([config])
    predicted = {
        metric_type: round(float(table.metric_fn()(space, *arrays)[0]), 3)
        for metric_type, table in sorted(tables.items())
    }
    tier = _retained_tier(
        name or single_tier_name(mflops), row, [row], "flops", round(mflops, 3), "single",
        predicted, space, job_dir,
    )  # fmt: skip
    return jobs.write_retained(job_dir, [tier])


def single_tier_name(mflops: float) -> str:
    """A tier named by its MFLOPs: ``flops_12p34m`` (two decimals at most)."""
    return "flops_" + f"{round(mflops, 2):g}".replace(".", "p") + "m"


def _retained_tier(
    name, best, rows, metric_type, target, selected_on, predicted_us, space, job_dir
) -> tiers_lib.RetainedTier:
    """The tier record of ``best`` (one of the evaluated ``rows``), its
    statistics saved under ``name``; ``predicted_us``: its latency under
    each of the run's tables."""
    config = best["config"]
    return tiers_lib.RetainedTier(
        name=name,
        config=config,
        metric_type=metric_type,
        target=target,
        mflops=flops.count_mflops(config, space.num_classes, space.width_scale),
        params=flops.count_params(config, space.num_classes, space.width_scale),
        top1=best["top1"],
        top5=best["top5"],
        minival_top1=best["minival_top1"],
        pool_score=best["pool_score"],
        bn_stats=jobs.save_bn_stats(job_dir, name, best["stats"]),
        selected_on=selected_on,
        predicted_us=predicted_us,
        candidates=tuple(
            {key: value for key, value in row.items() if key != "stats"}
            | {"config": row["config"].to_dict()}
            for row in rows
        ),
    )


def _predicted_us(sampler, config) -> dict:
    """``config``'s latency under each of the run's look-up tables."""
    arrays = specs.configs_to_arrays([config])
    return {
        metric_type: round(float(s.metric_fn(s.space, *arrays)[0]), 3)
        for metric_type, s in sorted(sampler.samplers.items())
        if metric_type != "flops"
    }


def _evaluate_candidate(evaluator, config, score, pipelines, calibration, calib_batches) -> dict:
    """One top-k candidate: calibrated statistics, minival and validation accuracy."""
    stats = evaluator.calibrate(config, calibration, calib_batches)
    minival = evaluator.evaluate(config, stats, pipelines.minival())
    validation = evaluator.evaluate(config, stats, pipelines.validation())
    return {
        "config": config,
        "pool_score": score,
        "minival_top1": minival["top1"],
        "top1": validation["top1"],
        "top5": validation["top5"],
        "stats": stats,
    }
