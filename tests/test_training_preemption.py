"""Preemption: SIGTERM / SIGINT checkpoint at the next step boundary, step
checkpoints (--checkpoint_every_steps), and a resume from inside an epoch
that reproduces the uninterrupted run."""

import os
import signal
import time

import numpy as np
import pytest
from conftest import start_script_until, tiny_train_config, tiny_train_flags

from pss_keras.jobs.directory import RETAINED
from pss_keras.training import driver as training
from pss_keras.training import preemption
from pss_keras.training.preemption import TrainingInterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _weights(config):
    net = training.build_supernet(config, 10)
    net.load_weights(os.path.join(config.job_dir, "supernet.weights.h5"))
    return net.weights


def test_interrupted_message_and_exit_status():
    e = preemption.TrainingInterrupted(signal.SIGTERM, "/j/checkpoints/epoch-0001-step-000004", "X")
    assert e.exit_status == 143 and e.checkpoint.endswith("step-000004")
    assert str(e) == (
        "Stopped by SIGTERM at X: checkpoint /j/checkpoints/epoch-0001-step-000004 written; "
        "run the same command to resume."
    )
    assert preemption.TrainingInterrupted(signal.SIGINT, None, "X").exit_status == 130


@pytest.mark.heavy
def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(
    trained_job, tiny_image_folder, tmp_path, monkeypatch
):
    straight, _ = trained_job  # 3 epochs, never stopped

    # Checkpoints every 3 steps as well; SIGTERM arrives during step 5 of
    # epoch 1 (8 steps an epoch): the step ends, is checkpointed, and the run stops.
    job = tiny_train_config(
        tmp_path / "job", tiny_image_folder, epochs=3, checkpoint_every_steps=3,
        keep_checkpoints=20, tensorboard_update_freq=1,
    )  # fmt: skip
    original = preemption.StepCheckpoint.on_train_batch_end

    def signal_at_step_5(self, batch, logs=None):
        if self.epoch == 0 and batch == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the callback's handler
        return original(self, batch, logs)

    monkeypatch.setattr(preemption.StepCheckpoint, "on_train_batch_end", signal_at_step_5)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as caught:
        training.train(job)
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    assert caught.value.exit_status == 143
    assert caught.value.checkpoint == os.path.join(
        job.job_dir, "checkpoints", "epoch-0000-step-000005"
    )
    assert "at epoch 1, step 5 of 8" in str(caught.value)
    checkpoints = os.path.join(job.job_dir, "checkpoints")
    assert sorted(os.listdir(checkpoints)) == [
        "epoch-0000-step-000003", "epoch-0000-step-000005", "latest",
    ]  # fmt: skip
    assert not os.path.exists(os.path.join(job.job_dir, RETAINED))

    monkeypatch.setattr(preemption.StepCheckpoint, "on_train_batch_end", original)
    summary = training.train(job)
    assert summary["resumed_from_epoch"] == 0
    assert sorted(os.listdir(checkpoints)) == [
        "epoch-0000-step-000003", "epoch-0000-step-000005",
        "epoch-0000-step-000006",  # the resumed rest of epoch 1 counts its steps on
        "epoch-0001", "epoch-0001-step-000003", "epoch-0001-step-000006", "epoch-0002",
        "epoch-0002-step-000003", "epoch-0002-step-000006", "epoch-0003", "latest",
    ]  # fmt: skip
    # The same weights and tiers as the run never stopped (same machine:
    # the tolerance covers float reassociation), and the step axis goes on.
    for a, b in zip(_weights(straight), _weights(job)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    from training_helpers import tensorboard_steps

    per_step = tensorboard_steps(os.path.join(job.job_dir, "logs"))["batch_loss_max"]
    # (A stopped process may lose its last unflushed events, never a step.)
    assert len(per_step) == len(set(per_step)) and per_step[-19:] == list(range(6, 25)), per_step
    import json

    with open(os.path.join(straight.job_dir, RETAINED)) as f:
        expected = [e["config"] for e in json.load(f)]
    assert [e["config"] for e in summary["retained"]] == expected


@pytest.mark.heavy
def test_one_subnet_alone_resumed_after_sigterm_matches_uninterrupted(
    tiny_image_folder, tmp_path, monkeypatch
):
    from pss_keras.supernet.specs import SubnetConfig

    subnet = SubnetConfig("mobilenet_v1", 24, (0.8,) * 14)
    straight = tiny_train_config(tmp_path / "straight", tiny_image_folder, subnet=subnet)
    training.train(straight)  # 2 epochs of 8 steps, never stopped
    job = tiny_train_config(tmp_path / "job", tiny_image_folder, subnet=subnet)
    original = preemption.StepCheckpoint.on_train_batch_end

    def signal_at_step_3(self, batch, logs=None):
        if self.epoch == 1 and batch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the callback's handler
        return original(self, batch, logs)

    monkeypatch.setattr(preemption.StepCheckpoint, "on_train_batch_end", signal_at_step_3)
    with pytest.raises(TrainingInterrupted) as caught:
        training.train(job)
    assert "at epoch 2, step 3 of 8" in str(caught.value)
    assert caught.value.checkpoint.endswith("epoch-0001-step-000003")
    assert not os.path.exists(os.path.join(job.job_dir, RETAINED))
    monkeypatch.setattr(preemption.StepCheckpoint, "on_train_batch_end", original)
    summary = training.train(job)
    assert summary["resumed_from_epoch"] == 1
    for a, b in zip(_weights(straight), _weights(job)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    assert [e["config"] for e in summary["retained"]] == [subnet.to_dict()]


@pytest.mark.slow
def test_train_script_stops_on_sigterm_within_30_s_and_resumes(
    tiny_image_folder, tmp_path, run_script
):
    job = tmp_path / "job"
    flags = tiny_train_flags(job, tiny_image_folder, epochs=3)
    log = tmp_path / "stderr.txt"  # a file, not a pipe: nothing blocks the script's logging
    with open(log, "w") as err:
        proc = start_script_until(job / "checkpoints" / "epoch-0001", *flags, stderr=err)
        try:
            sent = time.time()
            proc.send_signal(signal.SIGTERM)  # during epoch 2
            proc.wait(60)
            took = time.time() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 143, stderr[-3000:]
    assert took < 30, took
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Stopped by SIGTERM at epoch 2, step "), last
    assert "run the same command to resume" in last and "Traceback" not in stderr
    written = last.split("checkpoint ")[1].split(" written")[0]
    assert os.path.isdir(written) and os.path.basename(written).startswith("epoch-0001")
    assert not (job / "retained_subnets.json").exists()
    result = run_script(*flags, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {written}" in result.stderr
    assert (job / "retained_subnets.json").exists()


def test_a_signal_after_the_last_step_stops_at_the_fit_end():
    from pss_keras.training import preemption

    class Checkpointer:
        def latest(self):
            return "/j/checkpoints/epoch-0003"

    step = preemption.StepCheckpoint(Checkpointer(), steps_per_epoch=8, first_epoch=2)
    step.received = 15  # SIGTERM, e.g. during the last epoch's checkpoint or validation
    with pytest.raises(preemption.TrainingInterrupted) as caught:
        step.on_train_end()
    assert caught.value.checkpoint == "/j/checkpoints/epoch-0003"
    assert "at the end of epoch 3" in str(caught.value) and caught.value.exit_status == 143
