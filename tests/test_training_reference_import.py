"""An official PSS-Net checkpoint imported as a job
(pss_keras.training.reference_import, reference_tiers; scripts/import_checkpoint.py).

Files in the official layout are written by the test rig
(`pss_keras.testing.torch_writer.reference_like_checkpoint`: random weights,
a few pool entries with the reference's own config dicts); the fixtures the
official code wrote are used where present (skipped otherwise).
"""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import shared_data_folder

from pss_keras.jobs import directory as jobs
from pss_keras.supernet.reference_checkpoint import (
    ReferenceCheckpointError,
    load_reference_checkpoint,
    reference_pools,
)
from pss_keras.supernet.torch_files import CheckpointError, read_checkpoint
from pss_keras.testing.torch_writer import reference_like_checkpoint, write_torch_checkpoint
from pss_keras.training import reference_import
from pss_keras.training.checkpoints import Checkpointer
from pss_keras.training.evaluation import SubnetEvaluator

REFERENCE_LUTS = shared_data_folder("PSS_KERAS_REFERENCE_LUTS", "reference_luts")
REFERENCE_CHECKPOINTS = shared_data_folder(
    "PSS_KERAS_REFERENCE_CHECKPOINTS", "reference_checkpoints"
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One calibration batch of two images: seconds for a full-size supernet.
TINY = reference_import.ImportData(calib_batches=1, batch_size=2, eval_batch_size=8)


def _png(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(value)
    tf.io.write_file(path, tf.io.encode_png(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """``train/`` (four images) and ``val/`` (ten class folders, one image each)."""
    root = tmp_path_factory.mktemp("images")
    for i in range(4):
        _png(str(root / "train" / f"{i}.png"), i)
    for c in range(10):
        _png(str(root / "val" / f"n{c:08d}" / "0.png"), 100 + c)
    return str(root)


@pytest.fixture(scope="module")
def mbv2_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("checkpoints") / "checkpoint_249.pt")
    reference_like_checkpoint(path, "mobilenet_v2", num_classes=10, seed=1)
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory, mbv2_file, images):
    job_dir = str(tmp_path_factory.mktemp("jobs") / "pss_net_f_mbv2")
    data = reference_import.ImportData(
        calibration=os.path.join(images, "train"),
        validation=os.path.join(images, "val"),
        calib_batches=1,
        batch_size=2,
        eval_batch_size=8,
    )
    retained = reference_import.import_reference(
        mbv2_file, "mobilenet_v2", job_dir, data, progress=False
    )
    return job_dir, retained


def test_the_tiers_are_each_pools_best_and_the_bounds(imported, mbv2_file):
    job_dir, retained = imported
    loaded = load_reference_checkpoint(mbv2_file, "mobilenet_v2")
    pools = reference_pools(loaded.checkpoint["arch_pools"], loaded.supernet.space)
    best = {
        entries[0][0]: (target, entries) for target, entries in pools["flops"].items() if entries
    }
    assert len(best) >= 2
    space = loaded.supernet.space
    by_config = {t.config: t for t in retained}
    assert set(by_config) == set(best) | {space.smallest(), space.largest()}
    for config, (target, entries) in best.items():
        tier = by_config[config]
        assert tier.name == f"flops_{int(target)}m" and tier.target == float(target)
        assert tier.pool_score == entries[0][1] and tier.selected_on == "pool_score"
        assert [c["config"] for c in tier.candidates] == [e[0].to_dict() for e in entries[:5]]
    assert by_config[space.smallest()].name == "smallest"
    assert [t.mflops for t in retained] == sorted(t.mflops for t in retained)
    assert all(0.0 <= t.top1 <= 1.0 for t in retained)  # measured on val/


def test_the_job_records_the_reference_architecture_and_weights(imported, mbv2_file):
    job_dir, retained = imported
    job = jobs.Job(job_dir)
    assert (job.config.padding, job.config.bn_epsilon) == ("symmetric", 1e-5)
    assert job.config.resolution_range == (128, 224) and job.config.width_range == (0.75, 1.0)
    assert job.class_names == [f"class_{i}" for i in range(10)]
    assert jobs.read_weights_origin(job_dir).startswith(reference_import.IMPORTED_FROM)
    loaded = load_reference_checkpoint(mbv2_file, "mobilenet_v2").supernet
    tier = retained[1]
    config, stats = job.tier(tier)
    for net in (job.supernet, loaded):
        net.set_bn_stats(stats)
    x = tf.random.stateless_normal((1, config.resolution, config.resolution, 3), (1, 2))
    np.testing.assert_array_equal(
        job.supernet(x, subnet=config, training=False).numpy(),
        loaded(x, subnet=config, training=False).numpy(),
    )


def test_the_statistics_are_calibrated_on_the_given_images(imported, images, mbv2_file):
    job_dir, retained = imported
    batches = reference_import.image_files.calibration_batches(
        os.path.join(images, "train"), 1, 2, 224, seed=0
    )
    supernet = load_reference_checkpoint(mbv2_file, "mobilenet_v2").supernet
    file_stats = supernet.get_bn_stats(retained[-1].config)
    expected = SubnetEvaluator(supernet).calibrate(retained[-1].config, batches, 1)
    saved = jobs.load_bn_stats(job_dir, retained[-1])
    assert set(saved) == set(expected)
    for name, (mean, variance) in expected.items():
        np.testing.assert_allclose(saved[name][0], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(saved[name][1], variance, rtol=1e-5, atol=1e-6)
    name = sorted(expected)[0]
    assert not np.allclose(saved[name][0], file_stats[name][0])  # not the file's statistics


def test_the_checkpoint_holds_the_files_pools(imported):
    job_dir, retained = imported
    checkpoints = os.path.join(job_dir, jobs.CHECKPOINTS)
    latest = Checkpointer(checkpoints, None, None, None).latest()
    with open(os.path.join(latest, "pss_state.json")) as f:
        pools = json.load(f)["sampler"]["pools"]
    stored = {
        json.dumps(entry["config"], sort_keys=True)
        for pool in pools
        for entry in pool["pool"]["entries"]
    }
    for tier in retained:
        if tier.selected_on == "pool_score":
            assert json.dumps(tier.config.to_dict(), sort_keys=True) in stored


def _edited(tmp_path, source, edit, name="edited.pt"):
    """``source`` read, ``edit(checkpoint)`` applied, written to a new file."""
    checkpoint = read_checkpoint(source)
    checkpoint.pop("np_random_state")  # numpy's own arrays: not needed to refuse a file
    edit(checkpoint)
    path = str(tmp_path / name)
    write_torch_checkpoint(path, checkpoint)
    return path


def _first_pool_key(checkpoint):
    pools = checkpoint["arch_pools"]["pools"]["flops"]
    target = next(t for t, pool in pools.items() if pool)
    return pools[target], next(iter(pools[target]))


def _rekey(checkpoint, **fields):
    pool, key = _first_pool_key(checkpoint)
    config = ast.literal_eval(key)
    pool[str({**config, **fields})] = pool.pop(key)


def _bad_files(tmp_path, mbv2_file):
    with open(mbv2_file, "rb") as f:
        whole = f.read()
    (tmp_path / "text.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    return {
        "not a zip": (str(tmp_path / "text.pt"), "mobilenet_v2", CheckpointError),
        "truncated": (str(tmp_path / "cut.pt"), "mobilenet_v2", CheckpointError),
        "other model": (mbv2_file, "mobilenet_v1", ReferenceCheckpointError),
        "flops": (
            _edited(tmp_path, mbv2_file, lambda c: _rekey(c, infer_metric=123.0), "f.pt"),
            "mobilenet_v2",
            ReferenceCheckpointError,
        ),
        "pool of another model": (
            _edited(tmp_path, mbv2_file, lambda c: _rekey(c, model_name="mobilenet_v1"), "m.pt"),
            "mobilenet_v2",
            ReferenceCheckpointError,
        ),
    }


MESSAGES = {
    "not a zip": "text.pt: not a zip file, but a torch.save checkpoint is a zip",
    "truncated": "cut.pt: a truncated or corrupt zip file",
    "other model": "is a mobilenet_v2 supernet, not mobilenet_v1",
    "flops": "counts .* MFLOPs here, the file records 123.0: not this architecture",
    "pool of another model": "arch_pools: Reference subnet is a mobilenet_v1 config",
}


def test_a_bad_file_is_one_line_and_writes_nothing(tmp_path, mbv2_file, images):
    data = reference_import.ImportData(calibration=os.path.join(images, "train"))
    for what, (path, model, error) in _bad_files(tmp_path, mbv2_file).items():
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        job_dir = str(out / "job")
        with pytest.raises(error, match=MESSAGES[what]) as caught:
            reference_import.import_reference(path, model, job_dir, data, progress=False)
        assert "\n" not in str(caught.value), what
        assert os.listdir(out) == [], f"{what}: left {os.listdir(out)}"


def test_a_folder_of_other_files_or_an_unknown_table_is_refused(tmp_path, mbv2_file):
    job_dir = tmp_path / "busy"
    job_dir.mkdir()
    (job_dir / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds files that are not an imported"):
        reference_import.import_reference(mbv2_file, "mobilenet_v2", str(job_dir), TINY)
    assert os.listdir(job_dir) == ["notes.txt"]
    with pytest.raises(ValueError, match=r"--lut_dirs names \['latency_tpu'\]; latency tables"):
        reference_import.import_reference(
            mbv2_file, "mobilenet_v2", str(tmp_path / "new"), TINY, {"latency_tpu": "x.pkl"}
        )
    assert not os.path.exists(tmp_path / "new")


def test_without_calibration_the_job_is_written_and_export_refuses_it(tmp_path, mbv2_file):
    from pss_keras.export import saved_model

    job_dir = str(tmp_path / "uncalibrated")
    retained = reference_import.import_reference(mbv2_file, "mobilenet_v2", job_dir, progress=False)
    assert all(t.bn_stats == "" and np.isnan(t.top1) for t in retained)
    with pytest.raises(ValueError, match="no calibrated batch-norm statistics .* --calibration"):
        saved_model.export(job_dir, str(tmp_path / "export"), "shared", None, 1)
    assert not os.path.exists(tmp_path / "export") or not os.listdir(tmp_path / "export")
    # Importing again (now calibrated) replaces the earlier import.
    images = tmp_path / "train"
    _png(str(images / "a.png"), 1)
    again = reference_import.import_reference(
        mbv2_file,
        "mobilenet_v2",
        job_dir,
        TINY.__class__(calibration=str(images), batch_size=2, calib_batches=1),
        progress=False,
    )
    assert all(t.bn_stats for t in again) and np.isnan(again[0].top1)
    assert sorted(os.listdir(tmp_path)) == ["train", "uncalibrated"]


def test_a_1000_class_file_is_named_by_imagenet_wnids(tmp_path):
    path = str(tmp_path / "imagenet.pt")
    reference_like_checkpoint(path, "mobilenet_v1", num_classes=1000, seed=2)
    job_dir = str(tmp_path / "job")
    reference_import.import_reference(path, "mobilenet_v1", job_dir, progress=False)
    with open(os.path.join(job_dir, jobs.CLASSES)) as f:
        names = json.load(f)
    assert len(names) == 1000 and names == sorted(names) and len(set(names)) == 1000
    assert names[0] == "n01440764" and names[-1] == "n15075141"  # tench ... toilet tissue
    assert jobs.read_run_config(job_dir).data.dataset == "imagenet2012"


def test_the_script_imports_and_says_what_is_missing(tmp_path, mbv2_file):
    job_dir = str(tmp_path / "job")
    script = os.path.join(ROOT, "scripts", "import_checkpoint.py")
    base = [sys.executable, script, f"--checkpoint={mbv2_file}", "--model_name=mobilenet_v2"]
    bad = subprocess.run(
        [*base, f"--job_dir={job_dir}", "--lut_dirs=latency_cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 1 and not os.path.exists(job_dir)
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: --lut_dirs entry 'latency_cpu' is not TYPE=FILE (latency_cpu=L.pkl)."
    )
    good = subprocess.run(
        [*base, f"--job_dir={job_dir}"], capture_output=True, text=True, timeout=300
    )
    assert good.returncode == 0, good.stderr[-2000:]
    assert "smallest" in good.stdout and "largest" in good.stdout and " n/a" in good.stdout
    assert "The tiers are not calibrated: export refuses them" in good.stdout


def test_latency_tables_predict_every_tier(tmp_path, mbv2_file):
    """The reference's CPU table (a FLOPs-only file keeps FLOPs targets: the
    table predicts the tiers, and the job keeps a JSON copy of it)."""
    table = os.path.join(REFERENCE_LUTS, "mbv2_cpu.pkl")
    if not os.path.isfile(table):
        pytest.skip(f"no reference latency table {table}")
    from pss_keras.cost.tables import load_table

    job_dir = str(tmp_path / "job")
    retained = reference_import.import_reference(
        mbv2_file, "mobilenet_v2", job_dir, lut_paths={"latency_cpu": table}, progress=False
    )
    lut = load_table(table)
    for tier in retained:
        assert tier.predicted_us == {"latency_cpu": round(lut.predict_us(tier.config), 3)}
    assert tier.predicted_us["latency_cpu"] > retained[0].predicted_us["latency_cpu"]
    assert os.path.isfile(jobs.latency_table_path(job_dir, "latency_cpu"))
    assert jobs.read_run_config(job_dir).metric_types == ("flops",)
