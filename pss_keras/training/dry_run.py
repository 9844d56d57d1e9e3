"""A run's dry run: everything the run would check and build before its
first step, without training or writing into its job directory
(``scripts/train.py --dry_run``): its `pss_keras.training.run_plan.RunPlan`
and the one line it would stop with.
"""

from __future__ import annotations

import os

from pss_keras.jobs import directory as jobs
from pss_keras.jobs.config import TrainConfig
from pss_keras.supernet import specs
from pss_keras.training import preflight, run_plan


def dry_run(config: TrainConfig) -> tuple[run_plan.RunPlan, str]:
    """Everything a run would check and build before its first step,
    without training or writing into ``config.job_dir``.

    Validates the settings (and, for an existing job directory, that they
    match its run), reads the latency tables, builds every metric type's map,
    and counts the data from its index (nothing decoded; a dataset that
    cannot be opened is reported, not raised, so everything else is still
    shown).

    Returns:
        ``(plan, problem)``: ``problem`` is "" when the run's settings would
        start, else the one line it would stop with (e.g. a map that reaches
        no target). Data that cannot be opened or used as set is in
        ``plan.data_error``, not a problem: a run is often planned on
        another machine than the one that holds its data.

    Raises:
        ValueError: a bad setting, table or resume, with one line.
    """
    from pss_keras.data.pipelines import Pipelines
    from pss_keras.data.sources import load_source
    from pss_keras.training import distribution

    config.validate()
    jobs.check_resume(config.job_dir, config)
    strategy, replicas = distribution.planned_strategy(config.strategy)
    tables = preflight.load_latency_tables(config, specs.SearchSpace(**config.space_kwargs(1)))
    problem = preflight.replicas_problem(config.data.batch_size, replicas)
    data, data_error = None, ""
    try:
        # A TFDS dataset that is not prepared is reported, not downloaded.
        source = load_source(config.data, jobs.read_split(config.job_dir), prepare=False)
    except ValueError as e:  # DatasetError: not on this machine, or not readable
        data_error = f"not opened: {e}"
    else:
        try:
            data = run_plan.DataCounts.of(Pipelines(config.data, source=source), checked=False)
        except ValueError as e:  # e.g. more minival or batch than examples
            data = run_plan.DataCounts.of_source(source, config.data)
            data_error = f"not usable as set: {e}"
    # The run's own space: the classifier's FLOPs depend on the class count.
    classes = len(data.class_names) if data is not None else run_plan.ASSUMED_CLASSES
    space = specs.SearchSpace(**config.space_kwargs(classes))
    maps = ()
    if config.subnet is None:  # one subnet trained alone: no maps, no pools
        conditionals = preflight.build_maps(config, space, tables, log=False)
        maps = tuple(
            run_plan.MapReport.of(
                c, run_plan.map_source(c.grid.metric_type, tables), config.num_map_samples
            )
            for c in conditionals
        )
        try:
            preflight.prioritized_sampler(config, conditionals)
        except ValueError as e:
            problem = problem or str(e)
    resume = run_plan.resume_state(config.job_dir)
    plan = run_plan.RunPlan(
        config=config,
        strategy=strategy,
        replicas=replicas,
        maps=maps,
        data=data,
        data_error=data_error,
        resume=resume,
        weights=_planned_weights(config, resume),
    )
    return plan, problem


def _planned_weights(config: TrainConfig, resume: str) -> str:
    """The header's weights line of a dry run (the import itself is done,
    and fully checked, by the run: `pretrained.initialize_supernet`).

    Raises:
        ValueError: an ``init_from`` path that does not exist.
    """
    if resume != "new run":
        return "from the job's latest checkpoint (a resume never imports --init_from)"
    if not config.init_from:
        return f"random initialization (seed {config.seed})"
    if config.init_from != "imagenet" and not os.path.exists(config.init_from):
        raise ValueError(
            f"--init_from={config.init_from} does not exist; give imagenet, a keras.applications "
            ".h5 weights file or another run's --job_dir."
        )
    return f"imported from {config.init_from} at the run's start (--init_from)"
