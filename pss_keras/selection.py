"""End-of-training selection: the best subnet of every pool becomes a tier.

For each target's pool, the top-k subnets by pool score are calibrated
(post-BN calibration on training batches) and evaluated on minival; the
best is retained, evaluated on the validation split and recorded in the job
directory (`pss_keras.jobs`).
"""

from __future__ import annotations

import keras

from pss_keras import data as data_lib
from pss_keras import flops, jobs, sampling
from pss_keras.evaluation import SubnetEvaluator
from pss_keras.supernet import Supernet


def retain_subnets(
    supernet: Supernet,
    sampler: sampling.PrioritizedSampler,
    pipelines: data_lib.Pipelines,
    job_dir: str,
    topk: int = 5,
    calib_batches: int = 8,
    progress: bool = True,
) -> list[dict]:
    """Calibrates and scores the top-k of every pool, keeps the best per target.

    The best subnet of a pool is chosen on minival (held-out training data);
    its reported ``top1`` / ``top5`` are then measured on the validation
    split, so no reported figure is selected on itself. Calibrated statistics
    go to ``<job_dir>/bn_stats/<tier>.npz``; the list to
    ``<job_dir>/retained_subnets.json`` (`pss_keras.jobs`).

    Returns:
        The retained tiers as written (``RetainedTier.to_dict()`` records).
    """
    evaluator = SubnetEvaluator(supernet)
    space = supernet.space
    pools = [(key, pool) for key, pool in sorted(sampler.pools.items()) if len(pool)]
    bar = keras.utils.Progbar(len(pools), unit_name="pool") if progress else None
    retained = []
    for (metric_type, k), pool in pools:
        grid = sampler.samplers[metric_type].grid
        config, stats, minival, score = _best_in_pool(
            evaluator, pool.top(topk), pipelines, calib_batches
        )
        validation = evaluator.evaluate(config, stats, pipelines.validation())
        name = grid.name(k)
        retained.append(
            jobs.RetainedTier(
                name=name,
                config=config,
                metric_type=metric_type,
                target=grid.value(k),
                mflops=flops.count_mflops(config, space.num_classes, space.width_scale),
                params=flops.count_params(config, space.num_classes, space.width_scale),
                top1=validation["top1"],
                top5=validation["top5"],
                minival_top1=minival["top1"],
                pool_score=score,
                bn_stats=jobs.save_bn_stats(job_dir, name, stats),
            )
        )
        if bar is not None:
            bar.add(1, [("val_top1", validation["top1"])])
    return jobs.write_retained(job_dir, retained)


def _best_in_pool(evaluator, candidates, pipelines, calib_batches):
    """``(config, bn_stats, minival, pool_score)`` of the candidate best on minival."""
    best = None
    for config, score in candidates:
        stats = evaluator.calibrate(config, pipelines.train_epoch(0), calib_batches)
        minival = evaluator.evaluate(config, stats, pipelines.minival())
        if best is None or minival["top1"] > best[2]["top1"]:
            best = (config, stats, minival, score)
    return best
