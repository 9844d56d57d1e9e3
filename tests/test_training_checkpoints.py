"""pss_keras.training.checkpoints: save, restore, keep, damage and a full disk."""

import errno
import json
import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_train_config
from training_helpers import _setup

from pss_keras.data import pipelines as data
from pss_keras.jobs.config import TrainConfig
from pss_keras.supernet.model import Supernet
from pss_keras.training.callbacks import PSSCallback
from pss_keras.training.checkpoints import Checkpointer, checkpoint_name
from pss_keras.training.preflight import build_samplers
from pss_keras.utils import fileio


def test_checkpoint_names_sort_in_training_order():
    names = [
        checkpoint_name(0, 3),
        checkpoint_name(1),
        checkpoint_name(1, 120),
        checkpoint_name(2),
        checkpoint_name(10, 1),
    ]
    assert names == [
        "epoch-0000-step-000003",
        "epoch-0001",
        "epoch-0001-step-000120",
        "epoch-0002",
        "epoch-0010-step-000001",
    ]
    assert sorted(reversed(names)) == names


@pytest.mark.heavy
def test_checkpoint_round_trip_continues_identically(tiny_image_folder, tmp_path):
    config = tiny_train_config(tmp_path / "job", tiny_image_folder)
    pipelines, supernet, sampler, trainer = _setup(config, seed=0)
    callback = PSSCallback(trainer, sampler)
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
        callbacks=[PSSCallback(trainer2, sampler2)],
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


def _tiny_checkpointer(directory, keep=2):
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25, resolution_range=(16, 32))
    sampler = build_samplers(
        TrainConfig(
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
    return Checkpointer(str(directory), net, opt, sampler, keep=keep)


def test_a_damaged_latest_checkpoint_gives_way_to_the_previous(tmp_path, caplog):
    """Issue: a truncated latest checkpoint blocked resume with 'does not fit
    this supernet'. Now it is reported as damaged and the one before is used."""
    ckpt = _tiny_checkpointer(tmp_path)
    for epoch in (1, 2):
        ckpt.save(epoch)
    first, second = str(tmp_path / "epoch-0001"), str(tmp_path / "epoch-0002")
    assert ckpt.damage(first) is None and ckpt.latest_usable() == second
    weights = tmp_path / "epoch-0002" / "supernet.weights.h5"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    assert ckpt.latest() == second  # the pointer still names it
    with caplog.at_level("WARNING"):
        assert ckpt.latest_usable() == first
    assert f"Checkpoint {second} is damaged (supernet.weights.h5 has {size // 2:,} bytes, " in (
        caplog.text
    )
    with pytest.raises(ValueError, match=r"epoch-0002 is damaged: supernet.weights.h5 has"):
        ckpt.restore(second)
    assert ckpt.restore(first)["epoch"] == 1
    # One flipped byte (same size) is caught by the checksum.
    optimizer = tmp_path / "epoch-0001" / "optimizer.npz"
    content = bytearray(optimizer.read_bytes())
    content[len(content) // 2] ^= 0xFF
    optimizer.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"Every checkpoint in .* is damaged \(epoch-0002: "
                       r"supernet.weights.h5 has .*; epoch-0001: optimizer.npz does not match "
                       r"the checksum"):  # fmt: skip
        ckpt.latest_usable()
    # A cut state file is damage too; a checkpoint from before files were
    # recorded is checked for presence only.
    ckpt.save(3)
    state = tmp_path / "epoch-0003" / "pss_state.json"
    full = state.read_text()
    state.write_text(full[: len(full) // 2])
    assert "pss_state.json is unreadable" in ckpt.damage(str(tmp_path / "epoch-0003"))
    old = json.loads(full)
    del old["files"]
    state.write_text(json.dumps(old))
    assert ckpt.damage(str(tmp_path / "epoch-0003")) is None


def test_keep_and_prune_checkpoints(tmp_path):
    ckpt = _tiny_checkpointer(tmp_path, keep=2)
    for epoch in (1, 2, 3):
        ckpt.save(epoch)
    os.makedirs(tmp_path / ".epoch-0004-killed")  # what a kill -9 mid-write leaves
    assert (tmp_path / "latest").read_text() == "epoch-0003\n"
    ckpt.save(4)
    assert sorted(os.listdir(tmp_path)) == ["epoch-0003", "epoch-0004", "latest"]
    assert ckpt.latest() == str(tmp_path / "epoch-0004")
    # A pointer to a checkpoint that is gone is no checkpoint.
    (tmp_path / "latest").write_text("epoch-0009\n")
    assert ckpt.latest() is None
    (tmp_path / "latest").write_text("epoch-0004\n")
    os.remove(tmp_path / "epoch-0004" / "optimizer.npz")
    with pytest.raises(ValueError, match="is incomplete: optimizer.npz is missing"):
        ckpt.restore(str(tmp_path / "epoch-0004"))


@pytest.mark.parametrize("where", ["weights", "optimizer.npz", "pss_state.json", "latest"])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, disk_full, monkeypatch, where):
    """Issue #14: a disk that fills up midway through a checkpoint leaves the
    previous one intact and named by `latest`, nothing of the new one (not
    even a whole one `latest` does not name), and one line saying so."""
    ckpt = _tiny_checkpointer(tmp_path)
    first = ckpt.save(1)
    if where == "weights":  # h5py fails after part of the file is written

        def save_weights(path):
            with open(path, "wb") as f:
                f.write(b"\x89HDF" * 100)
            raise OSError(errno.ENOSPC, "Can't synchronously write data (error message = "
                          "'No space left on device')")  # fmt: skip

        monkeypatch.setattr(ckpt.supernet, "save_weights", save_weights)
    else:
        disk_full(where, after=5)
    with pytest.raises(ValueError) as caught:  # what scripts/train.py prints in one line
        ckpt.save(2)
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001", "latest"]  # no temporary either
    assert ckpt.latest_usable() == first and ckpt.restore(first)["epoch"] == 1
    assert re.fullmatch(
        rf"Out of disk space writing {re.escape(str(tmp_path / 'epoch-0002'))} \(.* free on .*, "
        r"about [\d.]+ [kM]B needed\): free space on .* and re-run; the previous checkpoint "
        rf"{re.escape(first)} is intact and still the latest\.",
        str(caught.value),
    )
    monkeypatch.undo()  # space freed: the next save works
    second = ckpt.save(2)
    assert second == str(tmp_path / "epoch-0002") and ckpt.latest() == second


def test_re_saving_the_latest_epoch_leaves_its_pointer_alone(tmp_path, disk_full):
    """Re-saving the epoch `latest` names (a resume saving the same epoch)
    replaces that folder; `latest` already names it and is not rewritten,
    so a full disk there cannot fail the save after the previous folder was
    replaced (the message said it was intact)."""
    ckpt = _tiny_checkpointer(tmp_path)
    first = ckpt.save(1)
    state = tmp_path / "epoch-0001" / "pss_state.json"
    before = json.loads(state.read_text())["files"]
    variable = ckpt.supernet.weights[0]
    variable.assign(variable + 1.0)
    failed = disk_full("latest", after=0)
    assert ckpt.save(1) == first and failed == []
    assert (tmp_path / "latest").read_text() == "epoch-0001\n"
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001", "latest"]
    after = json.loads(state.read_text())["files"]
    assert after["supernet.weights.h5"]["sha256"] != before["supernet.weights.h5"]["sha256"]
    assert ckpt.damage(first) is None


def test_a_checkpoint_that_would_not_fit_is_refused_before_hdf5_writes(tmp_path, monkeypatch):
    """HDF5 can crash the process after a write fails with ENOSPC
    (h5py/h5py#914): a checkpoint larger than the free space is refused first."""
    ckpt = _tiny_checkpointer(tmp_path)
    first = ckpt.save(1)
    size = fileio.tree_bytes(first)
    assert size <= ckpt._needed_bytes() <= 1.5 * size  # the estimate covers it, not wildly
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=size // 2))
    writes = []
    monkeypatch.setattr(ckpt.supernet, "save_weights", writes.append)
    with pytest.raises(fileio.DiskFullError, match=r"\([\d.]+ [kM]B free on .*, about "
                       r"[\d.]+ MB needed\): free space on .* and re-run; the previous checkpoint "
                       r".*epoch-0001 is intact and still the latest\.$"):  # fmt: skip
        ckpt.save(2)
    assert writes == [] and sorted(os.listdir(tmp_path)) == ["epoch-0001", "latest"]


def test_optimizer_state_is_restored_by_name(tmp_path, rng):
    """A reordered optimizer (same variables, other order) restores correctly."""
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25, resolution_range=(16, 32))
    sampler = build_samplers(
        tiny_train_config(tmp_path / "job", "unused", flops_targets=(0.2, 0.6, 0.2)), net.space
    )
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build(net.trainable_variables)
    for v in opt.variables:
        v.assign(rng.normal(size=v.shape).astype(v.dtype))
    path = Checkpointer(str(tmp_path / "ckpt"), net, opt, sampler).save(1)
    reordered = keras.optimizers.SGD(0.1, momentum=0.9)
    reordered.build(list(reversed(net.trainable_variables)))
    Checkpointer(str(tmp_path / "ckpt"), net, reordered, sampler).restore(path)
    expected = {v.path.split("/", 1)[1]: v.numpy() for v in opt.variables}
    got = {v.path.split("/", 1)[1]: v.numpy() for v in reordered.variables}
    assert sorted(got) == sorted(expected) and len(got) > 20
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    # Another optimizer (Adam's variables) is refused by name, not assigned.
    adam = keras.optimizers.Adam(0.1)
    adam.build(net.trainable_variables)
    with pytest.raises(ValueError, match="does not fit this optimizer: missing"):
        Checkpointer(str(tmp_path / "ckpt"), net, adam, sampler).restore(path)
    # A checkpoint written by position (before this format) is not resumed.
    # Such checkpoints also predate the recorded file sizes and checksums.
    np.savez(os.path.join(path, "optimizer.npz"), v00000=np.zeros(()), v00001=np.zeros(()))
    state_path = os.path.join(path, "pss_state.json")
    with open(state_path) as f:
        state = json.load(f)
    del state["files"]
    with open(state_path, "w") as f:
        json.dump(state, f)
    with pytest.raises(ValueError, match="stores the optimizer by position"):
        Checkpointer(str(tmp_path / "ckpt"), net, reordered, sampler).restore(path)
