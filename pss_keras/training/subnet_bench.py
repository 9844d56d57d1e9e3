"""Finished jobs opened for measuring single subnets: the studies' bench
(scripts/subnet_spread.py, scripts/compare_sampling_paired.py).

`BenchData` holds what every subnet is measured on: the job's own data
split (its minival, the validation split) and the calibration batches, read
once and cached. Two jobs of one seed pair share one (`BenchData.check_pair`
refuses jobs whose data settings or split differ), so a subnet of one arm
is measured inside the other arm's supernet on exactly the same images.

`SubnetBench` is one job's supernet with its conditional sampler (the map
rebuilt from the run's seed, as a resume rebuilds it) and, on demand, its
pools as the last checkpoint holds them (`SubnetBench.pool_top`: the same
state the end-of-run selection and `pss_keras.training.driver.evaluate_job`
choose from). Each subnet is calibrated (post-BN) and scored on minival and
validation (`SubnetBench.measure`), or given the pools' own score on fixed
training batches (`SubnetBench.batch_scores`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from pss_keras.data.pipelines import Pipelines
from pss_keras.jobs import directory as jobs
from pss_keras.supernet import specs
from pss_keras.training import checkpoints, preflight, studies
from pss_keras.training.evaluation import SubnetEvaluator


class BenchData:
    """The images a job's subnets are measured on, read once.

    Args:
        job_dir: a finished job (its data settings and split are used).
        calib_batches: training batches of post-BN calibration (the first
            ones of epoch 0, the same for every subnet).
    """

    def __init__(self, job_dir: str, calib_batches: int = 8):
        config = jobs.read_run_config(job_dir)
        self.config = config.data
        self.split = jobs.read_split(job_dir)
        self.pipelines = Pipelines(
            config.data, skip_hint=jobs.skip_bad_images_hint(job_dir), split=self.split
        )
        self.calib_batches = int(calib_batches)
        # Cached on first read: every subnet sees the same batches and images.
        self.calibration = self.pipelines.calibration(self.calib_batches)
        self.minival = self.pipelines.minival()
        self.validation = self.pipelines.validation()

    def check_pair(self, job_dir: str, data_config) -> None:
        """Refuses a job whose images differ from these (another data
        setting, seed or split): its subnets would not be measured alike.

        Raises:
            ValueError: naming the job.
        """
        if data_config != self.config or jobs.read_split(job_dir) != self.split:
            raise ValueError(
                f"{job_dir} was trained on other data settings or another split than the job "
                "this bench was opened on; a pair must share its data, seed and split."
            )

    def scoring(self, epoch: int, count: int):
        """``count`` augmented training batches of epoch ``epoch`` (one no
        run of ``epoch`` epochs read), cached: the batches every subnet's
        pool score is taken on."""
        return self.pipelines.train_epoch(epoch).take(count).cache()


class SubnetBench:
    """One finished job's supernet, opened for measuring its subnets.

    Args:
        job_dir: the job (``retained_subnets.json`` and the weights written).
        data: the images to measure on (a pair's shared `BenchData`); by
            default the job's own.
        calib_batches: batches of post-BN calibration when ``data`` is None.

    Raises:
        ValueError: an unfinished job, a run without FLOPs targets, or
            ``data`` of other images.
    """

    def __init__(self, job_dir: str, data: BenchData | None = None, calib_batches: int = 8):
        job = jobs.Job(job_dir)
        self.job_dir, self.config, self.supernet = job_dir, job.config, job.supernet
        if data is None:
            data = BenchData(job_dir, calib_batches)
        else:
            data.check_pair(job_dir, job.config.data)
        self.data = data
        self.maps = preflight.build_maps(
            job.config, job.supernet.space, job.latency_tables(), log=False
        )
        flops_maps = [m for m in self.maps if m.grid.metric_type == "flops"]
        if not flops_maps:
            raise ValueError(f"{job_dir} has no FLOPs targets; the studies measure FLOPs bands.")
        self.sampler = flops_maps[0]
        self.evaluator = SubnetEvaluator(job.supernet)
        self.pools_checkpoint: dict | None = None
        self._pools = None

    def bands(self) -> list[tuple[int, float, str]]:
        """``(index, target MFLOPs, name)`` of every target candidates are
        drawn for (`pss_keras.training.sampling.ConditionalSampler.trainable`)."""
        grid = self.sampler.grid
        return [(k, grid.value(k), grid.name(k)) for k in self.sampler.trainable]

    def sample(self, k: int, rng: np.random.Generator) -> specs.SubnetConfig:
        """A random subnet of band ``k`` from the run's conditional sampler."""
        return self.sampler.sample(k, rng)

    def measure(self, config: specs.SubnetConfig | dict) -> dict:
        """Calibrates ``config`` (a config or its ``to_dict()``) on the
        bench's batches and scores it.

        Returns:
            ``config`` (as a dict), ``mflops``, ``minival_top1``,
            ``val_top1``, ``val_top5`` (fractions).
        """
        if isinstance(config, dict):
            config = specs.SubnetConfig.from_dict(config)
        d = self.data
        stats = self.evaluator.calibrate(config, d.calibration, d.calib_batches)
        minival = self.evaluator.evaluate(config, stats, d.minival)
        validation = self.evaluator.evaluate(config, stats, d.validation)
        return {
            "config": config.to_dict(),
            "mflops": round(studies.count(self.supernet.space, config), 4),
            "minival_top1": minival["top1"],
            "val_top1": validation["top1"],
            "val_top5": validation["top5"],
        }

    def batch_scores(self, config: specs.SubnetConfig, batches) -> list[float]:
        """The pools' score of ``config`` on each batch (negative
        cross-entropy with batch statistics, as training scores it)."""
        return [-loss for loss in self.evaluator.batch_losses(config, batches)]

    def pool_top(self, k: int, count: int) -> list[tuple[specs.SubnetConfig, float]]:
        """The ``count`` best subnets of band ``k``'s pool with their scores,
        best first, as the job's last usable checkpoint holds them (the
        pools the end-of-run selection chose from; `pools_checkpoint` says
        which checkpoint, its epoch and the run's epochs)."""
        if self._pools is None:
            self._pools = self._final_pools()
        return self._pools.pools[("flops", k)].top(count)

    def _final_pools(self):
        """The run's prioritized sampler with its last checkpoint's state."""
        directory = os.path.join(self.job_dir, jobs.CHECKPOINTS)
        path = checkpoints.Checkpointer(directory, None, None, None).latest_usable()
        if path is None:
            raise ValueError(f"{self.job_dir} has no checkpoint to read its pools from.")
        with open(os.path.join(path, checkpoints.STATE)) as f:
            state = json.load(f)
        sampler = preflight.prioritized_sampler(self.config, self.maps)
        sampler.load_state_dict(state["sampler"])
        self.pools_checkpoint = {
            "checkpoint": os.path.basename(path),
            "epoch": int(state["epoch"]),
            "step": int(state.get("step", 0)),
            "run_epochs": int(self.config.epochs),
        }
        return sampler
