import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_train_config

from pss_keras import data, evaluation, layers, training
from pss_keras.checkpoints import Checkpointer
from pss_keras.supernet import Supernet


def _setup(config, seed=0):
    pipelines = data.Pipelines(config.data)
    keras.utils.set_random_seed(seed)
    supernet = training.build_supernet(config, pipelines.num_classes)
    sampler = training.build_samplers(config, supernet.space)
    trainer = training.PSSTrainer(supernet, weight_decay=config.weight_decay)
    optimizer = training.build_optimizer(config, pipelines.steps_per_epoch)
    trainer.compile(optimizer=optimizer, jit_compile=False)
    optimizer.build(trainer.trainable_variables)
    return pipelines, supernet, sampler, trainer


def test_train_step_runs_three_subnets_and_updates_one_pool(
    tiny_image_folder, tmp_path, monkeypatch
):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    pipelines, supernet, sampler, trainer = _setup(config)
    calls = []
    original = supernet._forward

    def spy(inputs, training, subnet, bn_stats, moments):
        calls.append(subnet)
        return original(inputs, training, subnet, bn_stats, moments)

    monkeypatch.setattr(supernet, "_forward", spy)
    traces = []
    original_step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda d: traces.append(1) or original_step(d))
    callback = training.PSSCallback(trainer, sampler)
    step_logs = []
    recorder = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: step_logs.append(
            {k: float(v) for k, v in logs.items()}
        )
    )
    trainer.fit(
        pipelines.train_epoch(0).take(1),
        epochs=1,
        steps_per_epoch=1,
        verbose=0,
        callbacks=[callback, recorder],
        shuffle=False,
    )
    # Three forward passes in the step: largest, candidate (a variable), smallest.
    assert len(calls) == 3
    static = tf.get_static_value
    np.testing.assert_array_equal(static(calls[0]), supernet.space.encode(supernet.space.largest()))
    assert calls[1] is trainer.candidate_code
    np.testing.assert_array_equal(
        static(calls[2]), supernet.space.encode(supernet.space.smallest())
    )
    filled = [key for key, pool in sampler.pools.items() if len(pool)]
    assert filled == [(callback.candidate.metric_type, callback.candidate.target_index)]
    pool = sampler.pools[filled[0]]
    logs = step_logs[0]
    assert pool.scores[callback.candidate.config] == pytest.approx(
        logs["candidate_score"], rel=1e-6
    )
    assert logs["cand_target"] == callback.candidate.target and logs["cand_from_pool"] == 0.0
    assert logs["p_space"] == 1.0 and logs["temperature"] == 1.0  # epoch 0 of the schedules
    for key in ("loss_max", "loss_candidate", "loss_min"):
        assert np.isfinite(logs[key]) and logs[key] >= 0
    # More steps and another fit() with other candidates: no retracing.
    for epoch in (1, 2):
        trainer.fit(
            pipelines.train_epoch(epoch),
            epochs=1,
            steps_per_epoch=pipelines.steps_per_epoch,
            verbose=0,
            callbacks=[callback],
            shuffle=False,
        )
    assert len(traces) == 1
    assert sum(len(p) for p in sampler.pools.values()) > 1


def test_weight_decay_only_on_conv_and_dense_kernels():
    net = Supernet("mobilenet_v2", num_classes=10, width_scale=0.25)
    trainer = training.PSSTrainer(net)
    decayed = {v.path for v in trainer.trainable_variables if trainer.decayed(v)}
    assert "block_2_expand/kernel" in decayed and "classifier/kernel" in decayed
    assert "block_2_depthwise/kernel" not in decayed
    assert not any(p.endswith(("gamma", "beta", "bias")) for p in decayed)
    n_conv = sum(
        isinstance(layer, (layers.SwitchableConv2D, layers.SwitchableDense))
        for layer in net.switchable_layers
    )
    assert len(decayed) == n_conv


def test_checkpoint_round_trip_continues_identically(tiny_image_folder, tmp_path):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    pipelines, supernet, sampler, trainer = _setup(config, seed=0)
    callback = training.PSSCallback(trainer, sampler)
    batches = list(pipelines.train_epoch(0).take(4))

    def ds(i, j):
        stacked = tuple(tf.concat([b[k] for b in batches[i:j]], 0) for k in (0, 1))
        return tf.data.Dataset.from_tensor_slices(stacked).batch(16)

    trainer.fit(ds(0, 2), epochs=1, verbose=0, callbacks=[callback], shuffle=False)
    ckpt = Checkpointer(str(tmp_path / "ckpt"), supernet, trainer.optimizer, sampler)
    path = ckpt.save(1)
    assert ckpt.latest() == path and sorted(os.listdir(path)) == sorted(
        ["optimizer.npz", "pss_state.json", "supernet.weights.h5"]
    )
    trainer.fit(ds(2, 4), epochs=1, verbose=0, callbacks=[callback], shuffle=False)
    expected = [w.numpy() for w in supernet.weights]

    _, supernet2, sampler2, trainer2 = _setup(config, seed=123)
    state = Checkpointer(str(tmp_path / "ckpt"), supernet2, trainer2.optimizer, sampler2).restore(
        path
    )
    assert state["epoch"] == 1 and int(trainer2.optimizer.iterations.numpy()) == 2
    trainer2.fit(
        ds(2, 4),
        epochs=1,
        verbose=0,
        callbacks=[training.PSSCallback(trainer2, sampler2)],
        shuffle=False,
    )
    # Same candidates (restored random state and pools), same weights.
    for a, b, w in zip(expected, [w.numpy() for w in supernet2.weights], supernet.weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=w.path)
    pools = {k: p.scores for k, p in sampler.pools.items()}
    pools2 = {k: p.scores for k, p in sampler2.pools.items()}
    assert {k: set(v) for k, v in pools.items()} == {k: set(v) for k, v in pools2.items()}
    for key, scores in pools.items():
        for config, score in scores.items():
            assert pools2[key][config] == pytest.approx(score, rel=1e-4, abs=1e-5)


def test_keep_and_prune_checkpoints(tmp_path):
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25, resolution_range=(16, 32))
    sampler = training.build_samplers(
        training.TrainConfig(
            job_dir="x",
            model_name="mobilenet_v1",
            width_scale=0.25,
            resolution_range=(16, 32),
            flops_targets=(0.2, 0.6, 0.2),
            num_map_samples=500,
            data=data.DataConfig(image_size=32),
        ),
        net.space,
    )
    opt = keras.optimizers.SGD(0.1)
    opt.build(net.trainable_variables)
    ckpt = Checkpointer(str(tmp_path), net, opt, sampler, keep=2)
    for epoch in (1, 2, 3):
        ckpt.save(epoch)
    os.makedirs(tmp_path / ".epoch-0004-killed")  # what a kill -9 mid-write leaves
    ckpt.save(4)
    assert sorted(os.listdir(tmp_path)) == ["epoch-0003", "epoch-0004", "latest"]
    os.remove(tmp_path / "epoch-0004" / "optimizer.npz")
    with pytest.raises(ValueError, match="is incomplete: optimizer.npz is missing"):
        ckpt.restore(str(tmp_path / "epoch-0004"))


def test_train_writes_retained_subnets(trained_job):
    config, summary = trained_job
    job = config.job_dir
    with open(os.path.join(job, training.RETAINED)) as f:
        retained = json.load(f)
    assert retained == json.loads(json.dumps(summary["retained"]))
    assert len(retained) >= 2
    for entry in retained:
        assert set(entry) >= {
            "config",
            "metric_type",
            "target",
            "mflops",
            "params",
            "top1",
            "top5",
            "bn_stats",
        }
        assert 0.0 <= entry["top1"] <= entry["top5"] <= 1.0
        assert abs(entry["mflops"] - entry["target"]) <= config.flops_targets[2] / 2 + 1e-9
        stats = training.load_bn_stats(job, entry)
        assert "stem_conv_bn" in stats
    assert os.path.exists(os.path.join(job, "supernet.weights.h5"))
    assert os.path.exists(os.path.join(job, "checkpoints", "epoch-0003"))
    assert os.listdir(os.path.join(job, "logs"))  # TensorBoard events


def test_evaluate_job_reproduces_the_selection(trained_job):
    config, summary = trained_job
    tf.random.set_seed(1234)  # the caller's global seed must not change the batches
    again = training.evaluate_job(config.job_dir, progress=False)
    assert [(e["name"], e["config"], e["top1"]) for e in again] == [
        (e["name"], e["config"], e["top1"]) for e in summary["retained"]
    ]
    with pytest.raises(ValueError, match="not a PSS job directory"):
        training.evaluate_job(os.path.dirname(config.job_dir) + "/nope")


def _toy_batches(rng, n_batches, batch=32, size=32):
    """Two classes a tiny net separates in a few steps: dark vs bright images."""
    out = []
    for _ in range(n_batches):
        labels = rng.integers(0, 2, batch)
        base = np.where(labels[:, None, None, None] == 1, 0.8, -0.8)
        images = base + rng.normal(0, 0.6, (batch, size, size, 3))
        out.append((images.astype("float32"), labels.astype("int32")))
    return out


def test_bn_calibration_changes_statistics_and_helps(rng):
    keras.utils.set_random_seed(0)
    net = Supernet("mobilenet_v1", num_classes=2, width_scale=0.25, resolution_range=(16, 32))
    trainer = training.PSSTrainer(net)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    train = _toy_batches(rng, 30)
    trainer.fit(
        tf.data.Dataset.from_tensor_slices(tuple(np.concatenate(x) for x in zip(*train))).batch(32),
        epochs=2,
        verbose=0,
        shuffle=False,
    )
    small = net.space.smallest()
    evaluator = evaluation.SubnetEvaluator(net)
    before = net.get_bn_stats(small)  # training never updates them: zeros / ones
    assert all(np.all(m == 0) and np.all(v == 1) for m, v in before.values())
    test = _toy_batches(rng, 4)
    uncalibrated = evaluator.evaluate(small, before, test)["top1"]
    stats = evaluator.calibrate(small, iter(train), num_batches=8)
    assert max(np.abs(m).max() for m, _ in stats.values()) > 1e-2
    assert any(np.abs(v - 1).max() > 1e-2 for _, v in stats.values())
    calibrated = evaluator.evaluate(small, stats, test)["top1"]
    assert calibrated >= 0.9 and calibrated > uncalibrated + 0.2, (uncalibrated, calibrated)
    np.testing.assert_array_equal(
        net.get_bn_stats(small)["stem_conv_bn"][0], stats["stem_conv_bn"][0]
    )


def test_resume_after_interruption_matches_uninterrupted(tiny_image_folder, tmp_path, monkeypatch):
    straight = tiny_train_config(tmp_path / "straight", tiny_image_folder)
    training.train(straight)
    expected = Supernet.from_config(training.build_supernet(straight, 10).get_config())
    expected.load_weights(os.path.join(straight.job_dir, "supernet.weights.h5"))

    interrupted = tiny_train_config(tmp_path / "interrupted", tiny_image_folder)
    original = training.PSSCallback.on_epoch_end

    def crash_after_first(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(training.PSSCallback, "on_epoch_end", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        training.train(interrupted)
    assert not os.path.exists(os.path.join(interrupted.job_dir, training.RETAINED))
    monkeypatch.setattr(training.PSSCallback, "on_epoch_end", original)
    summary = training.train(interrupted)
    assert summary["resumed_from_epoch"] == 1
    resumed = training.build_supernet(interrupted, 10)
    resumed.load_weights(os.path.join(interrupted.job_dir, "supernet.weights.h5"))
    for a, b in zip(expected.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    with open(os.path.join(straight.job_dir, training.RETAINED)) as f:
        straight_retained = json.load(f)
    assert [e["config"] for e in summary["retained"]] == [e["config"] for e in straight_retained]


def test_resume_with_other_settings_is_refused(trained_job):
    config, _ = trained_job
    import dataclasses

    with pytest.raises(ValueError, match="holds a run with other settings \\(lr\\)"):
        training.train(dataclasses.replace(config, lr=0.5))
    with pytest.raises(ValueError, match="other settings \\(batch_size\\)"):
        training._check_run_config(
            config.job_dir,
            dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=8)),
        )
    # The data's location may move between runs (a new disk, another machine).
    training._check_run_config(
        config.job_dir,
        dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir="/elsewhere")),
    )
    training._check_run_config(config.job_dir, config)  # leave the shared job as it was


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(flops_targets=(5.0, 1.0, 1.0)), "is empty"),
        (dict(pool_size=0), "pool_size=0"),
        (dict(model_name="resnet"), "model 'resnet' is unknown"),
        (dict(epochs=0), "epochs=0"),
    ],
)
def test_bad_settings_fail_fast(tmp_path, overrides, message):
    config = tiny_train_config(tmp_path / "job", "unused", **overrides)
    with pytest.raises(ValueError, match=message):
        training.train(config)
    assert not os.path.exists(tmp_path / "job")
