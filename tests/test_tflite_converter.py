"""TFLite conversion of retained tiers (pss_keras.tflite.converter), checked
with the LiteRT interpreter; the float conversion is conftest's float_manifest."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from tflite_helpers import _convert, _dtypes

from pss_keras.data import decoding as data
from pss_keras.jobs import directory as jobs
from pss_keras.supernet import extraction
from pss_keras.tflite import converter as tflite
from pss_keras.utils import fileio


def test_float_files_match_the_serving_signature(trained_job, float_manifest):
    config, summary = trained_job
    out, manifest = float_manifest
    names = [e["name"] for e in summary["retained"]]
    assert sorted(t["name"] for t in manifest["tiers"]) == sorted(names)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["mode"] == "float32" and manifest["io_dtype"] == "float32"
    assert manifest["class_names"] == jobs.Job(config.job_dir).class_names
    assert manifest["latency"]["num_threads"] == 1 and manifest["latency"]["batch"] == 1
    for tier in manifest["tiers"]:
        path = out / tier["file"]
        assert tier["file"] == f"{tier['name']}.tflite"
        assert path.stat().st_size == tier["size_bytes"] > 0
        r = tier["resolution"]
        assert tier["input"]["shape"] == [-1, r, r, 3] and tier["input"]["dtype"] == "float32"
        assert tier["output"]["shape"] == [-1, len(manifest["class_names"])]
        assert tier["latency_ms"] > 0
        v = tier["verification"]
        assert v["examples"] == 60  # the whole validation set of the tiny folder
        # Float32 TFLite vs the SavedModel signature: same math, different
        # kernels and order (BN folded, normalization as the first layer).
        # This 3-epoch tiny net amplifies float32 rounding (its own eager vs
        # graph outputs differ by 3e-5 relative); the quickstart job's tiers
        # agree to 1.3e-6 (README).
        assert v["max_rel_logit_diff"] < 1e-3, v
        assert v["top1_agreement"] >= 0.98, v
        assert v["meets_target"] == (v["max_rel_logit_diff"] < 1e-4)
        assert _dtypes(path) <= {"float32", "int32"}
        # The conversion itself: the file vs the Keras model it came from.
        job = jobs.Job(config.job_dir)
        entry = next(e for e in job.retained if e.name == tier["name"])
        assert tier["top1"] == entry.top1 and tier["top5"] == entry.top5  # the job's accuracy
        subnet, stats = job.tier(entry)
        model = extraction.extract_subnet(
            job.supernet, subnet, stats, fold_bn=True, pixel_input=True
        )
        x = np.random.default_rng(0).uniform(0, 255, (4, r, r, 3)).astype("float32")
        expected = model(x).numpy()
        got = tflite.TFLiteRunner(model_path=str(path))(x)
        assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    # Readable like any other file there (not mkstemp's 0600).
    modes = {(out / n).stat().st_mode & 0o777 for n in os.listdir(out)}
    assert len(modes) == 1, modes


def test_bad_requests(trained_job, tmp_path):
    config, _ = trained_job
    with pytest.raises(ValueError, match=r"Unknown tier\(s\) \['flops_9m'\]; the job has"):
        _convert(trained_job, tmp_path, tiers=["flops_9m"])
    with pytest.raises(ValueError, match="has no run_config.json"):
        tflite.convert(str(tmp_path / "nope"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="io_dtype=uint8 needs quantize=int8"):
        tflite.ConvertConfig(quantize="fp16", io_dtype="uint8").validate()
    with pytest.raises(ValueError, match="qat_epochs=2 needs quantize=int8"):
        tflite.ConvertConfig(qat_epochs=2).validate()
    with pytest.raises(ValueError, match="quantize='int4' is unknown"):
        tflite.ConvertConfig(quantize="int4").validate()
    with pytest.raises(ValueError, match="representative_images >= 1"):
        tflite.ConvertConfig(quantize="int8", representative_images=0).validate()
    with pytest.raises(ValueError, match="qat_lr must be positive, got 0.0"):
        tflite.ConvertConfig(quantize="int8", qat_epochs=1, qat_lr=0.0).validate()


def test_int8_without_the_training_data(trained_job, tmp_path):
    config, _ = trained_job
    job = tmp_path / "job"
    shutil.copytree(config.job_dir, job, ignore=shutil.ignore_patterns("checkpoints"))
    run = json.loads((job / "run_config.json").read_text())
    run["data"]["dataset"] = str(tmp_path / "moved_away")
    (job / "run_config.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="int8 quantization needs training images .*moved_away"):
        tflite.convert(str(job), str(tmp_path / "out"), tflite.ConvertConfig(quantize="int8"))
    with pytest.raises(ValueError, match="verification needs validation images"):
        tflite.convert(str(job), str(tmp_path / "out"))
    # Float conversion itself needs no data: skip verification.
    manifest = tflite.convert(
        str(job), str(tmp_path / "out"), tflite.ConvertConfig(verify_images=0), progress=False
    )
    assert manifest["reference"] is None
    assert all("verification" not in t for t in manifest["tiers"])


def test_a_bad_validation_image_is_named_with_the_jobs_setting(trained_job, tmp_path):
    """Review of #14: a bad validation image met by verification showed
    TensorFlow's trace (outside any bad-image handling), and the message
    suggested train.py's --bad_images=skip, a flag convert_tflite.py lacks:
    its data settings are the job's run_config.json."""
    config, _ = trained_job
    job = tmp_path / "job"
    shutil.copytree(config.job_dir, job, ignore=shutil.ignore_patterns("checkpoints"))
    folder = tmp_path / "images"
    shutil.copytree(config.data.dataset, folder)
    (folder / "val" / "ring" / "zz_empty.jpg").write_bytes(b"")
    run = json.loads((job / "run_config.json").read_text())
    run["data"]["dataset"] = str(folder)
    (job / "run_config.json").write_text(json.dumps(run))
    tier = json.loads((job / "retained_subnets.json").read_text())[0]["name"]
    with pytest.raises(data.BadImageError) as caught:
        tflite.convert(
            str(job), str(tmp_path / "out"), tflite.ConvertConfig(latency_repeats=1), [tier],
            progress=False,
        )  # fmt: skip
    assert str(caught.value) == (
        f"Cannot decode 1 validation image(s): {folder / 'val' / 'ring' / 'zz_empty.jpg'}. "
        'Remove or replace them, or set "bad_images": "skip" in the "data" section of '
        f"{job / 'run_config.json'} to go on without them."
    )
    assert not (tmp_path / "out").exists()
    # Doing what it says works.
    run["data"]["bad_images"] = "skip"
    (job / "run_config.json").write_text(json.dumps(run))
    pipelines = tflite._pipelines(jobs.Job(str(job)), tflite.ConvertConfig())
    assert sum(1 for _ in pipelines.validation_examples()) == 60


def test_a_failed_conversion_leaves_the_output_as_it_was(trained_job, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"old": true}')
    calls = []
    real = tflite.convert_model

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("converter crashed")
        return real(*args, **kwargs)

    monkeypatch.setattr(tflite, "convert_model", failing)
    with pytest.raises(RuntimeError, match="converter crashed"):
        _convert(trained_job, out, verify_images=0)
    assert sorted(os.listdir(out)) == ["manifest.json"]
    assert json.loads((out / "manifest.json").read_text()) == {"old": True}


@pytest.mark.parametrize("where", [".tflite", "manifest.json"])
def test_a_full_disk_leaves_the_output_as_it_was(trained_job, tmp_path, disk_full, where):
    """Issue #14: a disk that fills up midway through a .tflite file or the
    manifest changes nothing an app would pick up and leaves no temporary.
    (The manifest used to be written after the old one was removed and the
    new files moved in.)"""
    _, summary = trained_job
    tier = summary["retained"][0]["name"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"old": true}')
    (out / f"{tier}.tflite").write_bytes(b"old")
    disk_full(where, after=20)
    with pytest.raises(OSError) as caught:
        _convert(trained_job, out, verify_images=0, latency_repeats=1, tiers=[tier])
    assert sorted(os.listdir(out)) == sorted(["manifest.json", f"{tier}.tflite"])
    assert json.loads((out / "manifest.json").read_text()) == {"old": True}
    assert (out / f"{tier}.tflite").read_bytes() == b"old"
    assert _says_disk_full(caught.value, out, f"nothing in {out} was changed")
    with pytest.raises(fileio.DiskFullError) as caught:  # into a folder not there before
        _convert(trained_job, tmp_path / "new", verify_images=0, latency_repeats=1, tiers=[tier])
    assert not (tmp_path / "new").exists()
    assert _says_disk_full(caught.value, tmp_path / "new", f"{tmp_path / 'new'} was not created")


def _says_disk_full(error, path, left) -> bool:
    return bool(
        re.fullmatch(
            rf"Out of disk space writing {re.escape(str(path))} \(.* free on .*\): free space on "
            rf".* and re-run; {re.escape(left)}\.",
            str(error),
        )
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--job_dir=/nonexistent/job"], "error: /nonexistent/job has no run_config.json"),
        (["--quantize=fp16", "--io_dtype=uint8"], "error: io_dtype=uint8 needs quantize=int8"),
    ],
)
def test_script_errors_in_one_line(tmp_path, flags, message):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "scripts/convert_tflite.py", f"--output_dir={tmp_path}/out", *flags],
        cwd=root,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(message), last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
