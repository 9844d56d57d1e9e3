"""scripts/train.py and scripts/evaluate.py as a user runs them."""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import start_script_until, tiny_train_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(*args):
    return [sys.executable, *args]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _run(*args, timeout=900):
    return subprocess.run(
        _cmd(*args), cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=timeout
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--infer_metric_target_range_stops=0.1"],
            "FLOPs target range 0.8..0.1 step 0.8 is empty",
        ),
        (["--pool_size=0"], "pool_size=0 must be at least 1"),
        (["--dataset=no_such_dataset_xyz"], "Unknown dataset 'no_such_dataset_xyz'"),
        (
            ["--infer_metric_types=latency_cpu"],
            "--lut_dirs: latency_cpu needs a latency table (your own .json from "
            "scripts/build_latency_lut.py, or the reference's .pkl from PSS-Net's scripts/lut/), "
            "got None",
        ),
        (["--resolution_range=32"], "--resolution_range needs two comma-separated values"),
        # Refused before any data is read (it used to fail after caching images).
        (["--resolution_range=64,32"], "resolution_range=(64, 32) must be (min, max)"),
        # One subnet alone: a bad multiplier count, a tier name without a job.
        (
            ["--subnet=48:0.8,1"],
            "error: --subnet '48:0.8,1' could not be read: stage_width_mults has 2 values but "
            "mobilenet_v1 has 14 stages.",
        ),
        (
            ["--subnet=flops_1p6m"],
            "error: --subnet=flops_1p6m is not a subnet, and a tier name needs --init_from=JOB",
        ),
    ],
)
def test_bad_flags_fail_fast_with_one_line(tmp_path, flags, message):
    job = tmp_path / "job"
    result = _run(
        "scripts/train.py",
        "--flagfile=quickstart.flags",
        f"--job_dir={job}",
        f"--dataset_dir={tmp_path}",
        *flags,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in result.stderr
    assert not job.exists()  # nothing half written
    assert not (tmp_path / "synthetic_shapes").exists()  # no data read for a bad setting


def test_a_corrupt_image_stops_training_with_one_line_naming_it(tmp_path, tiny_image_folder):
    """Issue #14: a garbage .jpg in an image folder ended train.py with TF's
    'Unknown image file format' stack trace and no file name. A cached set
    is checked as it is decoded, so this fails before training starts."""
    import shutil

    folder = tmp_path / "scraped"
    shutil.copytree(tiny_image_folder, folder)
    bad = folder / "train" / "cross" / "download.jpg"
    bad.write_bytes(b"<html>Access denied</html>")
    job = tmp_path / "job"
    result = _run(*tiny_train_flags(job, folder, epochs=1))
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Cannot decode 1 train image(s): ") and str(bad) in last, last
    assert "--bad_images=skip" in last and "Traceback" not in result.stderr
    assert not job.exists()  # stopped before anything was written


def test_unknown_model_is_rejected_by_the_flag_parser(tmp_path):
    job = tmp_path / "job"
    result = _run(
        "scripts/train.py", "--flagfile=quickstart.flags", f"--job_dir={job}",
        "--model_name=resnet50",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    # absl's own flag error, not a traceback that happens to name the model.
    assert "Traceback" not in result.stderr
    assert (
        "FATAL Flags parsing error: flag --model_name=resnet50: value should be one of "
        "<mobilenet_v1|mobilenet_v2>" in result.stderr
    ), result.stderr[-2000:]
    assert not job.exists()


def test_paper_flags_fail_clearly_without_imagenet(tmp_path):
    result = _run(
        "scripts/train.py",
        "--flagfile=mbv1.flags",
        f"--job_dir={tmp_path / 'job'}",
        f"--dataset_dir={tmp_path / 'tfds'}",
        f"--manual_dir={tmp_path / 'manual'}",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "error: Dataset 'imagenet2012' is not prepared" in last and "--manual_dir" in last
    assert not (tmp_path / "job").exists()


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume(tmp_path, tiny_image_folder):
    # The uninterrupted run the resumed one must reproduce.
    straight = tmp_path / "straight"
    result = _run(*tiny_train_flags(straight, tiny_image_folder, epochs=4))
    assert result.returncode == 0, result.stderr[-3000:]
    job = tmp_path / "job"
    flags = tiny_train_flags(job, tiny_image_folder, epochs=4)
    proc = start_script_until(job / "checkpoints" / "epoch-0002", *flags)
    try:
        proc.send_signal(signal.SIGKILL)  # mid-epoch 3, maybe mid-write
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (job / "retained_subnets.json").exists()
    # The kill may land before or after the `latest` pointer moved to
    # epoch-0002 (or even during epoch 3's write): resume from what it names.
    latest = (job / "checkpoints" / "latest").read_text().strip()
    resumed_epoch = int(latest.split("-")[1])
    assert resumed_epoch >= 1
    result = _run(*flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {job / 'checkpoints' / latest} (epoch {resumed_epoch} of 4)" in (
        result.stderr
    ), result.stderr[-3000:]
    retained = json.loads((job / "retained_subnets.json").read_text())
    assert retained and all(0 <= e["top1"] <= 1 for e in retained)
    assert sorted(os.listdir(job / "checkpoints")) == ["epoch-0003", "epoch-0004", "latest"]
    # Same final weights and the same retained subnets as the run that was
    # never killed (same machine: the tolerance covers float reassociation).
    import h5py
    import numpy as np

    def weights(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: (
                    out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            )
        return out

    expected = weights(straight / "supernet.weights.h5")
    got = weights(job / "supernet.weights.h5")
    assert sorted(got) == sorted(expected) and len(expected) > 50
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    straight_retained = json.loads((straight / "retained_subnets.json").read_text())
    assert [e["config"] for e in retained] == [e["config"] for e in straight_retained]
    evaluated = _run("scripts/evaluate.py", f"--job_dir={job}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    for entry in retained:
        assert entry["name"] in evaluated.stdout


@pytest.mark.slow
def test_quickstart_flags_run_end_to_end(tmp_path):
    job = tmp_path / "quickstart"
    result = _run(
        "scripts/train.py",
        "--flagfile=quickstart.flags",
        f"--job_dir={job}",
        f"--dataset_dir={tmp_path / 'data'}",
        "--verbose=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    retained = json.loads((job / "retained_subnets.json").read_text())
    assert [e["name"] for e in retained] == ["flops_0p8m", "flops_1p6m", "flops_2p4m", "flops_3p2m"]
    assert "Retained subnets" in result.stdout
    # One fit() per run: per-step TensorBoard scalars on unique steps (with
    # one fit per epoch, every epoch wrote its steps onto the same numbers).
    from training_helpers import tensorboard_steps

    per_step = tensorboard_steps(str(job / "logs" / "train"))["batch_loss_max"]
    assert len(per_step) == len(set(per_step)) > 40, per_step
    # It learns: the largest tier is far above chance (10 classes). Measured
    # 0.88-0.91 on three machines; the exact figures depend on the CPU.
    assert max(e["top1"] for e in retained) > 0.5
    # The trained tiers convert to TFLite and agree with the served model.
    # float32: logits within 1e-4 of their range (the target, asserted: pure
    # arithmetic, whatever the weights). int8 (post-training with integer
    # I/O, and after one QAT epoch): the logits' signal-to-quantization-noise
    # ratio. Measured 29.9-33.4 dB for PTQ on an AMD EPYC-trained job; with
    # the output zero point off by 4 steps 19.9 dB, with the input halved
    # 6.7 dB, BGR input 6.1 dB, normalized input -0.9 dB (tier flops_0p8m,
    # deliberately broken runner). The product's 98% top-1 agreement
    # target is reported (meets_target) but not asserted: on these tiny,
    # briefly trained nets it hinges on how many validation images have
    # near-tied logits, which depends on the CPU that trained them (measured
    # 0.943-0.997 per tier on Intel, 0.967-0.997 on AMD).
    for quantize, extra in (
        ("none", []),
        ("int8", ["--io_dtype=uint8"]),
        ("int8", ["--qat_epochs=1", "--tiers=flops_0p8m"]),
    ):
        out = tmp_path / f"tflite_{quantize}_{len(extra)}"
        result = _run(
            "scripts/convert_tflite.py",
            f"--job_dir={job}",
            f"--output_dir={out}",
            f"--quantize={quantize}",
            f"--dataset_dir={tmp_path / 'data'}",
            "--latency_repeats=5",
            "--progress=false",
            *extra,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        manifest = json.loads((out / "manifest.json").read_text())
        tiers = [e["name"] for e in retained]
        if "--qat_epochs=1" in extra:
            tiers = ["flops_0p8m"]
            assert all(t["qat"]["epoch_kl"][0] < 0.01 for t in manifest["tiers"])
        assert [t["name"] for t in manifest["tiers"]] == tiers
        for tier in manifest["tiers"]:
            v = tier["verification"]
            if quantize == "none":
                assert v["meets_target"], (quantize, tier["name"], v)
            else:
                assert v["logit_sqnr_db"] >= 20.0, (quantize, extra, tier["name"], v)
                # A miss is explained, never silent.
                assert v["meets_target"] or f"  {tier['name']}: logit SQNR" in result.stdout
            assert v["examples"] == 300
            assert (out / tier["file"]).stat().st_size == tier["size_bytes"]
        if quantize == "none":
            assert "warning" not in result.stdout


def test_train_script_refuses_mismatched_latency_flags(tmp_path, run_script):
    common = [
        "scripts/train.py",
        f"--job_dir={tmp_path / 'j'}",
        "--infer_metric_types=flops,latency_cpu",
    ]
    result = run_script(*common, "--lut_dirs=None", "--infer_metric_target_range_starts=1,2",
                        "--infer_metric_target_range_stops=2,3", "--infer_metric_target_steps=1,1")  # fmt: skip
    assert result.returncode != 0 and "--lut_dirs needs one entry per metric type" in result.stderr
    result = run_script(*common, f"--lut_dirs=None,{tmp_path / 'none.json'}",
                        "--infer_metric_target_range_starts=1,2",
                        "--infer_metric_target_range_stops=2,3", "--infer_metric_target_steps=1,1")  # fmt: skip
    assert result.returncode != 0 and "none.json does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.path.exists(tmp_path / "j") is False  # refused before anything is written
