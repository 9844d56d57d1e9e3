"""The studies' bench: a job's pools from its last checkpoint, its bands,
measuring a subnet, one pair's shared data; the arms of a pair start from
the same weights. No training: a job written with random weights."""

import dataclasses
import json
import os

import numpy as np
import pytest
from conftest import tiny_train_config

from pss_keras.jobs import directory as jobs
from pss_keras.supernet import specs
from pss_keras.testing import synthetic_job
from pss_keras.training import checkpoints, driver, preflight, studies
from pss_keras.training.subnet_bench import BenchData, SubnetBench


def _job(job_dir, dataset, **overrides):
    """A finished-looking tiny job (random weights), its run config for
    ``dataset``, and a last checkpoint whose pools hold 3 scored subnets
    per target; returns the config and the sampler that was checkpointed."""
    synthetic_job.write(str(job_dir), width_scale=0.25, resolution_range=(16, 32))
    config = tiny_train_config(job_dir, dataset, **overrides)
    os.remove(os.path.join(str(job_dir), jobs.RUN_CONFIG))  # the run this job stands for
    jobs.write_run_config(str(job_dir), config)
    sampler = preflight.build_samplers(config, specs.SearchSpace(**config.space_kwargs(10)))
    rng = np.random.default_rng(0)
    for k in sampler.samplers["flops"].trainable:
        for i in range(3):
            config_k = sampler.samplers["flops"].sample(k, rng)
            sampler.pools[("flops", k)].update(config_k, -0.5 * i - 0.01 * k)
    folder = os.path.join(str(job_dir), jobs.CHECKPOINTS, "epoch-0002")
    os.makedirs(folder)
    for name in (checkpoints.WEIGHTS, checkpoints.OPTIMIZER):
        open(os.path.join(folder, name), "wb").close()
    with open(os.path.join(folder, checkpoints.STATE), "w") as f:
        json.dump({"epoch": 2, "step": 0, "sampler": sampler.state_dict()}, f)
    with open(os.path.join(str(job_dir), jobs.CHECKPOINTS, checkpoints.LATEST), "w") as f:
        f.write("epoch-0002\n")
    return config, sampler


@pytest.fixture
def bench_job(tiny_image_folder, tmp_path):
    return (tmp_path / "job", *_job(tmp_path / "job", tiny_image_folder))


def test_pools_come_from_the_last_checkpoint(bench_job):
    job_dir, config, sampler = bench_job
    bench = SubnetBench(str(job_dir), calib_batches=2)
    grid = bench.sampler.grid
    trainable = sampler.samplers["flops"].trainable
    assert bench.bands() == [(k, grid.value(k), grid.name(k)) for k in trainable]
    for k in trainable:
        assert bench.pool_top(k, 2) == sampler.pools[("flops", k)].top(2)
    assert bench.pools_checkpoint == {"checkpoint": "epoch-0002", "epoch": 2, "step": 0,
                                      "run_epochs": config.epochs}  # fmt: skip


def test_measure_scores_a_subnet_the_same_from_its_dict(bench_job):
    job_dir, _, _ = bench_job
    bench = SubnetBench(str(job_dir), calib_batches=2)
    k = bench.bands()[0][0]
    config = bench.sample(k, np.random.default_rng(1))
    row = bench.measure(config)
    assert row["config"] == config.to_dict()
    assert row["mflops"] == pytest.approx(studies.count(bench.supernet.space, config), abs=1e-4)
    assert all(0.0 <= row[key] <= 1.0 for key in ("minival_top1", "val_top1", "val_top5"))
    assert bench.measure(config.to_dict()) == row  # as the cross evaluation passes it
    scores = bench.batch_scores(config, bench.data.scoring(2, 2))  # epoch 2, 2 batches
    assert len(scores) == 2 and all(s < 0 for s in scores)


def test_a_pair_shares_its_data_and_refuses_other_data(bench_job, tiny_image_folder, tmp_path):
    job_dir, config, _ = bench_job
    data = BenchData(str(job_dir), calib_batches=2)
    twin = tmp_path / "twin"
    _job(twin, tiny_image_folder, p_space=(1.0, 1.0))
    assert SubnetBench(str(twin), data).data is data
    other = tmp_path / "other"
    _job(other, tiny_image_folder, data=dataclasses.replace(config.data, seed=1))
    with pytest.raises(ValueError, match="other data settings or another split"):
        SubnetBench(str(other), data)


def test_the_arms_of_a_pair_start_from_the_same_weights(tiny_image_folder, tmp_path):
    """`driver.train` seeds Python's random (Keras's initializers draw
    their seeds from it) with the run's seed just before building the
    supernet; p_space plays no part in it."""
    pss = tiny_train_config(tmp_path / "pss", tiny_image_folder, seed=3)
    uniform = dataclasses.replace(pss, job_dir=str(tmp_path / "uniform"), p_space=(1.0, 1.0))
    nets = []
    for config in (pss, uniform, dataclasses.replace(pss, seed=4)):
        driver._seed_run(config.seed)
        nets.append(driver.build_supernet(config, 10))
    same = [np.array_equal(a, b) for a, b in zip(nets[0].get_weights(), nets[1].get_weights())]
    other = [np.array_equal(a, b) for a, b in zip(nets[0].get_weights(), nets[2].get_weights())]
    assert same and all(same)
    assert not all(other)
