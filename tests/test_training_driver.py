"""pss_keras.training.driver: train() (what a run writes, resume, failing
fast, mixed precision, a train-only folder's split and the run header),
evaluate_job and at_chance."""

import dataclasses
import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_train_config
from training_helpers import _warnings, tensorboard_steps, tensorboard_values

from pss_keras.cost.flops import count_mflops
from pss_keras.data import pipelines as data
from pss_keras.jobs import directory as jobs
from pss_keras.jobs.directory import RETAINED
from pss_keras.supernet.model import Supernet
from pss_keras.supernet.specs import SubnetConfig
from pss_keras.training import driver as training
from pss_keras.training.callbacks import PSSCallback
from pss_keras.utils import fileio


@pytest.mark.heavy
def test_train_resumes_from_the_previous_checkpoint_when_the_latest_is_cut(job_copy):
    config, _ = job_copy  # the shared tiny run, 3 epochs done
    checkpoints = os.path.join(config.job_dir, "checkpoints")
    with open(os.path.join(checkpoints, "epoch-0003", "supernet.weights.h5"), "r+b") as f:
        f.truncate(1000)
    summary = training.train(dataclasses.replace(config, epochs=4))
    assert summary["resumed_from_epoch"] == 2 and summary["retained"]
    with open(os.path.join(checkpoints, "latest")) as f:
        assert f.read().strip() == "epoch-0004"


def test_final_weights_that_would_not_fit_are_refused_before_hdf5_writes(job_copy, monkeypatch):
    """Review of #14: the checkpoints checked the free space first (h5py/h5py#914:
    HDF5 can crash the process on a full disk), the final supernet.weights.h5
    did not. Now it does, with the checkpoints' estimate, and a re-run of
    the finished job (every epoch done) only writes it and selects."""
    config, _ = job_copy
    weights = os.path.join(config.job_dir, jobs.WEIGHTS)
    net = training.build_supernet(config, 10)
    net.load_weights(weights)
    size = os.path.getsize(weights)
    assert size <= fileio.weights_file_bytes(net.weights) <= 1.5 * size
    os.remove(weights)
    usage = shutil.disk_usage(config.job_dir)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=size // 2))
    writes = []
    monkeypatch.setattr(Supernet, "save_weights", lambda self, path: writes.append(path))
    with pytest.raises(fileio.DiskFullError) as caught:
        training.train(config)
    assert writes == [] and not os.path.exists(weights)
    assert re.fullmatch(
        rf"Out of disk space writing {re.escape(weights)} \([\d.]+ kB free on .*, about [\d.]+ "
        r"[kM]B needed\): free space on .* and re-run; .* is as it was; training is complete in "
        r"the last checkpoint, so the re-run only writes the weights and retains the subnets\.",
        str(caught.value),
    )


def test_train_writes_retained_subnets(trained_job):
    config, summary = trained_job
    job = config.job_dir
    supernet = training.build_supernet(config, 10)
    with open(os.path.join(job, RETAINED)) as f:
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
        # Statistics for exactly this subnet's batch norms, at its widths.
        subnet = SubnetConfig.from_dict(entry["config"])
        stats = jobs.load_bn_stats(job, entry)
        channels = supernet.bn_channels(subnet)
        assert set(stats) == set(channels)
        for name, (mean, variance) in stats.items():
            assert mean.shape == variance.shape == (channels[name],), name
            assert np.all(np.isfinite(mean)) and np.all(variance >= 0), name
        assert entry["mflops"] == pytest.approx(
            count_mflops(subnet, 10, config.width_scale), rel=1e-6
        )
    # One tier per target at most, named by its target.
    assert len({e["name"] for e in retained}) == len(retained)
    # The final weights are the last checkpoint's, which `latest` names.
    ckpt_dir = os.path.join(job, "checkpoints")
    with open(os.path.join(ckpt_dir, "latest")) as f:
        assert f.read().strip() == "epoch-0003"
    supernet.load_weights(os.path.join(job, "supernet.weights.h5"))
    final = [w.numpy() for w in supernet.weights]
    supernet.load_weights(os.path.join(ckpt_dir, "epoch-0003", "supernet.weights.h5"))
    for a, w in zip(final, supernet.weights):
        np.testing.assert_array_equal(a, w.numpy(), err_msg=w.path)
    # TensorBoard: the three losses of the sandwich step, logged every step
    # (the fixture's tensorboard_update_freq=1).
    steps = tensorboard_steps(os.path.join(job, "logs"))
    assert {"batch_loss_max", "batch_loss_candidate", "batch_loss_min"} <= set(steps), steps
    # One fit() per run: the step axis runs on across epochs (one point per
    # step of the 3 epochs, no step written twice).
    per_step = steps["batch_loss_max"]
    assert len(per_step) == len(set(per_step)) == 3 * 8, per_step
    assert steps["epoch_loss_max"] == [0, 1, 2]


def test_evaluate_job_reproduces_the_selection(job_copy):
    config, summary = job_copy  # evaluate_job rewrites retained_subnets.json
    tf.random.set_seed(1234)  # the caller's global seed must not change the batches
    again = training.evaluate_job(config.job_dir, progress=False)
    assert [(e["name"], e["config"], e["top1"]) for e in again] == [
        (e["name"], e["config"], e["top1"]) for e in summary["retained"]
    ]
    with pytest.raises(ValueError, match="not a PSS job directory"):
        training.evaluate_job(os.path.dirname(config.job_dir) + "/nope")


@pytest.mark.heavy
def test_resume_after_interruption_matches_uninterrupted(trained_job, tmp_path, monkeypatch):
    straight, straight_summary = trained_job  # the uninterrupted run: 3 epochs of 8 steps
    expected = Supernet.from_config(training.build_supernet(straight, 10).get_config())
    expected.load_weights(os.path.join(straight.job_dir, "supernet.weights.h5"))

    interrupted = dataclasses.replace(straight, job_dir=str(tmp_path / "interrupted"))
    original = PSSCallback.on_epoch_end

    def crash_after_first(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(PSSCallback, "on_epoch_end", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        training.train(interrupted)
    assert not os.path.exists(os.path.join(interrupted.job_dir, RETAINED))
    monkeypatch.setattr(PSSCallback, "on_epoch_end", original)
    summary = training.train(interrupted)
    assert summary["resumed_from_epoch"] == 1
    # TensorBoard's step axis goes on where the killed process stopped (the
    # crash may lose that process's last unflushed events, never a step).
    per_step = tensorboard_steps(os.path.join(interrupted.job_dir, "logs"))["batch_loss_max"]
    assert len(per_step) == len(set(per_step)) and per_step[-8:] == list(range(17, 25)), per_step
    resumed = training.build_supernet(interrupted, 10)
    resumed.load_weights(os.path.join(interrupted.job_dir, "supernet.weights.h5"))
    for a, b in zip(expected.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    straight_retained = straight_summary["retained"]
    assert [e["config"] for e in summary["retained"]] == [e["config"] for e in straight_retained]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(flops_targets=(5.0, 1.0, 1.0)), "is empty"),
        (dict(pool_size=0), "pool_size=0"),
        (dict(model_name="resnet"), "model 'resnet' is unknown"),
        (dict(epochs=0), "epochs=0"),
        (
            dict(subnet=SubnetConfig("mobilenet_v1", 40, (1.0,) * 14)),
            r"^The subnet mobilenet_v1-r40-w1,.* is not in this run's space: resolution=40 is "
            r"not on this supernet's grid 16..32 step 8\.$",
        ),
    ],
)
def test_bad_settings_fail_fast(tmp_path, overrides, message):
    config = tiny_train_config(tmp_path / "job", "unused", **overrides)
    with pytest.raises(ValueError, match=message):
        training.train(config)
    assert not os.path.exists(tmp_path / "job")


@pytest.mark.heavy
def test_bfloat16_run_trains_and_exports_float32(tiny_image_folder, tmp_path):
    from pss_keras.export import saved_model as export

    config = tiny_train_config(tmp_path / "job", tiny_image_folder, epochs=1)
    # lr 0.03, not the suite's 0.1: at 0.1 a bfloat16 run went NaN at step 3
    # in one full-suite run of several (not when run alone); this test is
    # about bfloat16 training finitely and exporting float32, not about the
    # rate's margin.
    config = dataclasses.replace(
        config, mixed_precision="bfloat16", tensorboard_update_freq=1, lr=0.03
    )
    training.train(config)
    losses = tensorboard_values(os.path.join(config.job_dir, "logs"), "batch_loss_max")
    assert len(losses) == 8 and np.isfinite(losses).all(), losses
    job = jobs.Job(config.job_dir)
    assert {v.dtype for v in job.supernet.weights} == {"float32", "int32"}
    summary = export.export(config.job_dir, str(tmp_path / "export"), latency_repeats=1)
    loaded = tf.saved_model.load(summary["path"])
    images = tf.zeros([1, 40, 40, 3], tf.uint8)
    for tier in summary["tiers"]:
        outputs = loaded.signatures[tier["name"]](images=images)
        assert outputs["probabilities"].dtype == tf.float32, outputs


# --- One subnet trained alone ------------------------------------------------------------------

SUBNET = SubnetConfig("mobilenet_v1", 24, (0.8,) * 14)


def _messages(caplog, prefix):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


@pytest.mark.heavy
def test_one_subnet_from_scratch_is_one_tier_that_exports_and_converts(
    tiny_image_folder, tmp_path, caplog
):
    from pss_keras.export import saved_model as export
    from pss_keras.tflite import converter as tflite

    config = tiny_train_config(
        tmp_path / "job", tiny_image_folder, epochs=1, subnet=SUBNET, tensorboard_update_freq=1,
        validate_every=1,
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        summary = training.train(config)
    # --validate_every validates the subnet itself (calibrated BN).
    (validated,) = _messages(caplog, "epoch 1: validation top-1 ")
    assert re.fullmatch(r"epoch 1: validation top-1 subnet [\d.]+ \(calibrated BN\)", validated)
    mflops = count_mflops(SUBNET, 10, 0.25)
    assert _messages(caplog, "subnet  ") == [
        f"subnet        one subnet alone: {SUBNET.name}, {mflops:,.2f} MFLOPs, from scratch; "
        "plain cross-entropy, no pools"
    ]
    assert not _messages(caplog, "targets  ")  # no maps, no pools
    (tier,) = summary["retained"]
    name = "flops_" + f"{round(mflops, 2):g}".replace(".", "p") + "m"
    assert (tier["name"], tier["selected_on"], tier["metric_type"]) == (name, "single", "flops")
    assert SubnetConfig.from_dict(tier["config"]) == SUBNET and tier["pool_score"] is None
    assert tier["target"] == round(mflops, 3) and 0 <= tier["top1"] <= tier["top5"] <= 1
    stats = jobs.load_bn_stats(config.job_dir, tier)  # calibrated after training
    channels = training.build_supernet(config, 10).bn_channels(SUBNET)
    assert {k: v[0].shape for k, v in stats.items()} == {k: (c,) for k, c in channels.items()}
    assert jobs.read_run_config(config.job_dir).subnet == SUBNET
    state = os.path.join(config.job_dir, "checkpoints", "epoch-0001", "pss_state.json")
    with open(state) as f:
        assert json.load(f)["sampler"] == {"subnet": SUBNET.to_dict()}  # no pools
    losses = tensorboard_values(os.path.join(config.job_dir, "logs"), "batch_loss")
    assert len(losses) == 8 and np.isfinite(losses).all(), losses
    again = training.evaluate_job(config.job_dir, progress=False)
    assert [(e["name"], e["top1"]) for e in again] == [(name, tier["top1"])]
    # Its one tier exports and converts like any job's.
    exported = export.export(config.job_dir, str(tmp_path / "export"), latency_repeats=1)
    assert [t["name"] for t in exported["tiers"]] == [name] and exported["default_tier"] == name
    loaded = tf.saved_model.load(exported["path"])
    assert loaded.signatures[name](images=tf.zeros([2, 40, 40, 3], tf.uint8))["logits"].shape == (
        2,
        10,
    )
    out = tmp_path / "tflite"
    manifest = tflite.convert(
        config.job_dir, str(out), tflite.ConvertConfig(latency_repeats=1), progress=False
    )
    (converted,) = manifest["tiers"]
    assert converted["name"] == name and (out / converted["file"]).stat().st_size > 0
    assert converted["verification"]["top1_agreement"] >= 0.98, converted["verification"]


@pytest.mark.heavy
def test_a_tier_of_a_job_fine_tuned_alone(trained_job, tiny_image_folder, tmp_path, caplog):
    source, summary = trained_job
    name = summary["retained"][-1]["name"]
    subnet = SubnetConfig.from_dict(summary["retained"][-1]["config"])
    config = tiny_train_config(
        tmp_path / "job", tiny_image_folder, epochs=1, init_from=source.job_dir
    )
    config = jobs.with_subnet(config, name)
    assert (config.subnet, config.subnet_name) == (subnet, name)
    with caplog.at_level(logging.INFO):
        retained = training.train(config)["retained"]
    assert _messages(caplog, "subnet  ")[0].endswith(
        f"from {source.job_dir} tier {name}; plain cross-entropy, no pools"
    )
    assert [(e["name"], e["config"], e["selected_on"]) for e in retained] == [
        (name, subnet.to_dict(), "single")
    ]
    assert f"the supernet of job {source.job_dir}" in jobs.read_weights_origin(config.job_dir)
    # It started from the job's weights: what the subnet does not use (a
    # depthwise kernel's further channels: no gradient, no weight decay)
    # is still the job's, and what it uses has moved.
    tuned, inherited = (jobs.Job(j).supernet for j in (config.job_dir, source.job_dir))
    widths, partial = tuned.bn_channels(subnet), 0
    for layer in tuned.switchable_layers:
        if layer.name.endswith("_depthwise"):
            c = widths[f"{layer.name}_bn"]
            a = layer.kernel.numpy()
            b = inherited.get_layer_by_name(layer.name).kernel.numpy()
            np.testing.assert_array_equal(a[..., c:, :], b[..., c:, :], err_msg=layer.name)
            assert not np.allclose(a[..., :c, :], b[..., :c, :]), layer.name
            partial += c < a.shape[2]
    assert partial  # some layer of the subnet is narrower than the supernet's


@pytest.mark.heavy
def test_a_tier_distilled_from_the_jobs_largest_subnet(
    trained_job, tiny_image_folder, tmp_path, caplog
):
    source, summary = trained_job
    name = summary["retained"][0]["name"]
    config = tiny_train_config(
        tmp_path / "job", tiny_image_folder, epochs=1, init_from=source.job_dir,
        distill_from_largest=True,
    )  # fmt: skip
    config = jobs.with_subnet(config, name)
    with caplog.at_level(logging.INFO):
        (tier,) = training.train(config)["retained"]
    assert _messages(caplog, "subnet  ")[0].endswith(
        f"tier {name}; distilled from the largest subnet of {source.job_dir} (KL divergence), "
        "no pools"
    )
    assert _messages(caplog, "Teacher: the largest subnet of the supernet of job")
    assert tier["name"] == name and tier["selected_on"] == "single"
    # A distilling run needs its teacher's job and class count.
    with pytest.raises(ValueError, match="classifies 3 classes and this run's data"):
        training.train(dataclasses.replace(config, job_dir=str(tmp_path / "j2"),
                                           init_from=str(_three_class_job(tmp_path))))  # fmt: skip


def _three_class_job(tmp_path):
    job = tmp_path / "three"
    job.mkdir()
    (job / jobs.WEIGHTS).write_bytes(b"")
    (job / jobs.CLASSES).write_text('["a", "b", "c"]')
    return job


# --- at_chance ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "top1s, classes, expected",
    [
        ([0.1, 0.11, 0.09], 10, True),
        ([0.119, 0.081], 10, True),  # within the 0.02 margin
        ([0.121], 10, False),  # just outside
        ([0.079], 10, False),
        ([0.1, 0.1, 0.6], 10, False),  # one tier learned
        ([0.5], 2, True),
        ([0.53], 2, False),
        ([], 10, False),  # no tier: nothing to judge
    ],
)
def test_at_chance(top1s, classes, expected):
    retained = [{"top1": t} for t in top1s]
    assert training.at_chance(retained, classes) is expected


def test_at_chance_margin():
    assert training.at_chance([{"top1": 0.14}], 10, margin=0.05)
    assert not training.at_chance([{"top1": 0.14}], 10)


# --- A run on a train-only folder: its split kept; the run header --------------------------------


def _load(path, **kwargs):
    return data.load_source(data.DataConfig(dataset=str(path), image_size=32, **kwargs))


def _images(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".png"))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def split_job(tiny_image_folder, tmp_path_factory):
    """A one-epoch tiny run on a train-only folder, its rate set by the batch rule:
    (config, summary, folder, logged messages)."""
    root = tmp_path_factory.mktemp("own") / "train_only"
    shutil.copytree(os.path.join(tiny_image_folder, "train"), root / "train")
    config = tiny_train_config(
        tmp_path_factory.mktemp("own_job") / "job", str(root), epochs=1, lr=0.8, lr_batch_size=128
    )
    handler, logger = _Records(), logging.getLogger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        summary = training.train(config)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return config, summary, root, handler.messages


def _header_line(messages, key):
    lines = [m for m in messages if m.startswith(f"{key} ")]
    assert len(lines) == 1, (key, lines)
    return lines[0]


@pytest.mark.heavy  # trains a tiny run (module fixture)
def test_run_header_states_the_rate_in_use_and_the_data(split_job):
    config, summary, root, messages = split_job
    assert config.lr_in_use == pytest.approx(0.1)
    lr = _header_line(messages, "lr")
    assert lr.split()[1] == "0.1" and "peak in use" in lr
    assert "0.8 for a batch of 128 -> 0.1 at the global batch 16 (linear rule)" in lr
    assert "warm-up" not in lr  # scaled down: none
    # 160 images: 2 a class held out for validation, 20 of the rest for minival.
    data_line = _header_line(messages, "data")
    assert data_line == (
        f"data          {root}: 120 train + 20 minival (held out of train, chooses the tiers), "
        "20 validation; 10 classes"
    )
    classes = _header_line(messages, "classes")
    assert "disc 14" in classes and "dots 14" in classes
    assert _header_line(messages, "job dir").endswith("(new run)")
    assert "global 16" in _header_line(messages, "batch")
    assert _header_line(messages, "weights").startswith("weights       random initialization")
    # The header comes before the first epoch's report.
    first_epoch = next(i for i, m in enumerate(messages) if m.startswith("epoch 1:"))
    assert messages.index(lr) < first_epoch
    assert summary["num_classes"] == 10
    saved = json.load(open(os.path.join(config.job_dir, jobs.RUN_CONFIG)))
    assert saved["lr_in_use"] == pytest.approx(0.1) and saved["lr"] == 0.8


@pytest.mark.heavy  # trains a tiny run (module fixture)
def test_a_run_saves_the_split_of_a_train_only_folder(split_job):
    config, _, root, _ = split_job
    split = jobs.read_split(config.job_dir)
    assert split == _load(root, val_fraction=0.1, seed=config.data.seed).split
    assert len(split["validation"]) == 20 and len(split["train"]) == 140
    # The split records paths relative to the folder, so the folder may move.
    assert not any(os.path.isabs(r) for r in split["train"] + split["validation"])


@pytest.mark.heavy  # trains a tiny run (module fixture)
def test_evaluation_reads_the_jobs_split(split_job, monkeypatch, caplog):
    config, summary, root, _ = split_job
    seen = []

    class Spy(data.Pipelines):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.source)

    monkeypatch.setattr(data, "Pipelines", Spy)
    added = root / "train" / "disc" / "zz_added.png"
    shutil.copy(root / "train" / "disc" / _images(root / "train" / "disc")[0], added)
    try:
        with caplog.at_level(logging.WARNING):
            retained = training.evaluate_job(config.job_dir, progress=False)
    finally:
        os.remove(added)
    (source,) = seen
    assert source.split == jobs.read_split(config.job_dir)
    assert (source.num_train, source.num_validation) == (140, 20)
    assert any(
        "1 image(s) that the run's saved split does not list" in m for m in _warnings(caplog)
    )
    # The same tiers, the same top-1 on the same 20 validation images.
    assert [(t["name"], t["config"], t["top1"]) for t in retained] == [
        (t["name"], t["config"], t["top1"]) for t in summary["retained"]
    ]


@pytest.mark.heavy  # trains a tiny run (module fixture)
def test_evaluation_names_an_image_of_the_split_that_is_gone(split_job):
    config, _, root, _ = split_job
    gone = jobs.read_split(config.job_dir)["validation"][0]
    kept = root.parent / "kept.png"
    shutil.move(root / gone, kept)
    try:
        with pytest.raises(data.DatasetError, match="lacks 1 image") as info:
            training.evaluate_job(config.job_dir, progress=False)
    finally:
        shutil.move(kept, root / gone)
    assert gone in str(info.value)
