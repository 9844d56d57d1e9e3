"""Shared fixtures: tiny supernets (width 0.5, resolutions 32..64)."""

import dataclasses
import errno
import os
import random
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Helper modules shared by several test files: their asserts report like a test's.
pytest.register_assert_rewrite(
    "latency_helpers", "supernet_helpers", "tflite_helpers", "training_helpers"
)

TINY = dict(num_classes=10, width_scale=0.5, resolution_range=(32, 64), resolution_step=8)


# The costliest files first, by their own time (--durations on 2 cores,
# without the session fixtures they share): the quickstart run, the
# distributed and training runs, the serving and load-test runs, exports and
# TFLite conversions, latency-table builds, data pipelines. pytest.ini runs
# the suite on 2 xdist workers a file at a time (--dist loadfile, in this
# order), so a long file started last cannot keep one worker busy alone at
# the end. Files that share a costly session fixture start together (served:
# the serving ones; float_manifest: the TFLite ones), so each worker builds it
# early, not at the end for a test of a second. The other files follow in
# their usual order.
COSTLIEST_FIRST = (
    "test_train_script.py",  # ~4.5 min
    "test_training_distribution.py",  # 275 s
    "test_training_driver.py",  # 270 s
    "test_training_preemption.py",  # 100 s
    "test_serving_client.py",  # 45 s (+ served: 60 s)
    "test_serving_adaptive_policy.py",  # 7 s (+ served)
    "test_benchmarking_load_test.py",  # 85 s
    "test_training_preflight.py",  # 80 s
    "test_scripts.py",  # not re-measured: its old rank
    "test_training_trainer.py",  # 75 s
    "test_training_subnet_trainer.py",  # 10 s
    "test_export_saved_model.py",  # 75 s
    "test_export_replacement.py",  # 95 s (its fine-tuned job: 35 s)
    "test_tflite_converter.py",  # 55 s (+ float_manifest: 20 s)
    "test_tflite_qat.py",  # 35 s
    "test_tflite_model_conversion.py",  # 30 s
    "test_tflite_verification.py",  # 25 s
    "test_tflite_runner.py",  # 1 s (+ float_manifest)
    "test_export_tier_graph.py",  # 60 s
    "test_tflite_chooser.py",  # not re-measured: its old rank
    "test_cost_latency_measurement.py",  # 60 s
    "test_training_checkpoints.py",  # 50 s
    "test_data_decoding.py",  # 45 s
    "test_data_pipelines.py",  # 45 s
    "test_training_callbacks.py",  # 40 s
    "test_training_selection.py",  # 35 s
    "test_training_run_plan.py",  # 30 s
    "test_supernet_model.py",  # 25 s
    "test_supernet_keras_applications.py",  # 25 s
    "test_package.py",  # 25 s
    "test_training_evaluation.py",  # 25 s
    "test_training_divergence.py",  # 25 s
    "test_legacy_files.py",  # 25 s
    "test_supernet_pretrained.py",  # 20 s
    "test_testing_served_model.py",  # 15 s
    "test_benchmarking_soak.py",  # 15 s
    "test_supernet_extraction.py",  # 15 s
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return COSTLIEST_FIRST.index(name) if name in COSTLIEST_FIRST else len(COSTLIEST_FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a module


@pytest.fixture(scope="session")
def tiny_supernets():
    """One tiny supernet per architecture, shared by the tests that only read it."""
    import keras

    from pss_keras.supernet.model import Supernet

    keras.utils.set_random_seed(0)
    return {name: Supernet(name, **TINY) for name in ("mobilenet_v1", "mobilenet_v2")}


@pytest.fixture
def run_script():
    """Runs a script of the repository as a user does: ``run_script(path, *flags)``."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def run(*args, timeout=300):
        return subprocess.run(
            [sys.executable, *args], cwd=root, capture_output=True, text=True, env=env,
            timeout=timeout,
        )  # fmt: skip

    return run


def start_script_until(exists, *args, stderr=None, timeout=300):
    """Starts a script of the repository (``args``: its path and flags) as
    `run_script` runs it, and returns the running process once the path
    ``exists`` does (e.g. a checkpoint folder), to signal or kill it then.

    ``stderr``: a file to write it to; by default discarded.
    """
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=root, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + timeout
        while not os.path.exists(exists):
            assert proc.poll() is None, f"the script ended before {exists} existed"
            assert time.time() < deadline, f"no {exists} within {timeout} s"
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        raise
    return proc


class _FillingFile:
    """A file whose disk fills up after ``budget`` bytes: that many are
    written, then ``write`` raises ENOSPC as the kernel does."""

    def __init__(self, f, budget: int):
        self._f, self._budget = f, budget

    def write(self, data):
        if len(data) > self._budget:
            self._f.write(data[: self._budget])
            self._f.flush()
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)
        self._budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(marker, after=100)``: from now on, Python writes to a file
    whose name contains ``marker`` fail with ENOSPC after ``after`` bytes
    (``open().write``, ``json.dump``, ``np.savez``), as when the disk fills up
    midway. Returns the paths that failed."""
    import builtins
    import io

    real_open = io.open
    failed = []

    def fill(marker: str, after: int = 100):
        def filling_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            name = (
                os.path.basename(os.fsdecode(file))
                if isinstance(file, (str, bytes, os.PathLike))
                else ""
            )
            if marker in name and any(c in mode for c in "wax+"):
                failed.append(os.fspath(file))
                return _FillingFile(f, after)
            return f

        monkeypatch.setattr(builtins, "open", filling_open)
        monkeypatch.setattr(io, "open", filling_open)
        return failed

    return fill


def _one_line(error) -> str:
    text = str(error)
    assert "\n" not in text
    return text


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def py_rng():
    """For `SearchSpace.random`: its default (the `random` module) depends on
    whatever ran before."""
    return random.Random(1234)


@pytest.fixture(autouse=True)
def _independent_random_state():
    """Every test starts from the same global seeds (Python, NumPy, TF, Keras)
    and leaves no global TF seed behind, so no result depends on test order."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(20251125)
    yield
    tf.random.set_seed(None)


def random_bn_stats(model, config, rng):
    """Non-trivial per-subnet BN statistics, so that tests notice if they are ignored."""
    return {
        name: (
            rng.normal(0.0, 0.2, c).astype("float32"),
            rng.uniform(0.5, 2.0, c).astype("float32"),
        )
        for name, c in model.bn_channels(config).items()
    }


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory):
    """A small generated image folder (10 classes, 16 train / 6 val each, 32 px)."""
    from pss_keras.data import toydata

    root = tmp_path_factory.mktemp("data") / "shapes"
    return str(toydata.make_synthetic_shapes(str(root), 16, 6, image_size=32, seed=1))


def shared_data_folder(env_var: str, name: str) -> str:
    """A folder of optional reference data: the one ``$env_var`` names, else
    ``shared/data/<name>`` beside the repository's folder (docs/testing.md)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get(env_var) or os.path.join(root, "..", "shared", "data", name)


def tiny_train_config(job_dir, dataset, **overrides):
    """A PSS run that takes seconds: width 0.25, 16..32 px, 3 targets."""
    from pss_keras.cost.flops import count_mflops
    from pss_keras.jobs import config as data
    from pss_keras.jobs.config import TrainConfig
    from pss_keras.supernet.specs import SearchSpace

    space = SearchSpace("mobilenet_v1", (16, 32), 8, (0.75, 1.0), 0.25, 10)
    lo = count_mflops(space.smallest(), 10, 0.25)
    hi = count_mflops(space.largest(), 10, 0.25)
    step = round((hi - lo) / 2, 3)
    kwargs = dict(
        job_dir=str(job_dir),
        data=data.DataConfig(
            dataset=dataset,
            image_size=32,
            batch_size=16,
            eval_batch_size=64,
            minival_examples=20,
            crop_scale=(0.6, 1.0),
        ),
        model_name="mobilenet_v1",
        width_scale=0.25,
        resolution_range=(16, 32),
        flops_targets=(round(lo, 3), round(lo + 2 * step, 3), step),
        num_map_samples=3000,
        pool_size=3,
        epochs=2,
        lr=0.1,
        calib_batches=2,
        topk=2,
        verbose=0,
    )
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


@pytest.fixture(scope="session")
def trained_job(tiny_image_folder, tmp_path_factory):
    """A finished tiny PSS run (3 epochs): (TrainConfig, train() summary)."""
    from pss_keras.training import driver as training

    config = tiny_train_config(
        tmp_path_factory.mktemp("trained") / "job",
        tiny_image_folder,
        epochs=3,
        tensorboard_update_freq=1,
    )
    return config, training.train(config)


def tiny_train_flags(job_dir, dataset, epochs=3):
    """scripts/train.py and its flags for a run like `tiny_train_config`."""
    return [
        "scripts/train.py",
        f"--job_dir={job_dir}",
        f"--dataset={dataset}",
        "--width_scale=0.25",
        "--resolution_range=16,32",
        "--infer_metric_target_range_starts=0.2",
        "--infer_metric_target_range_stops=0.8",
        "--infer_metric_target_steps=0.3",
        "--gen_map_num=3000",
        "--pool_size=3",
        f"--epochs={epochs}",
        "--batch_size=16",
        "--lr_batch_size=16",  # the flag's default lr (0.3) as given
        "--nofail_at_chance",  # a 3-epoch run may be at chance, depending on the CPU
        "--eval_batch_size=64",
        "--minival_examples=20",
        "--calib_batches=2",
        "--valid_topk=2",
        "--verbose=2",
    ]


# -- pss_keras.data tests (tests/test_data_*.py; helpers in data_helpers.py) ----------
@pytest.fixture(scope="session")
def tiny_tfds(tiny_image_folder, tmp_path_factory):
    """``(name, data_dir)``: the tiny folder as a prepared TFDS dataset (its
    builder can be registered once per process); copy ``data_dir`` to alter it."""
    from data_helpers import _as_tfds_dataset

    data_dir = tmp_path_factory.mktemp("tfds")
    return _as_tfds_dataset(tiny_image_folder, data_dir), str(data_dir)


@pytest.fixture
def bad_folders(tiny_image_folder, tmp_path):
    """The tiny folder with a garbage and a truncated .jpg in train/, and the
    same folder with good images under those names (same files, same
    order, same record indices)."""
    from data_helpers import _GARBAGE, _TRUNCATED, _jpeg, _with_images

    bad = {_GARBAGE: b"<html><body>404 Not Found</body></html>", _TRUNCATED: _jpeg(1)[:400]}
    good = {_GARBAGE: _jpeg(2), _TRUNCATED: _jpeg(1)}
    return (
        _with_images(tiny_image_folder, tmp_path / "bad", bad),
        _with_images(tiny_image_folder, tmp_path / "repaired", good),
    )


# -- training, jobs and TFLite tests: copies and conversions of the shared trained job ---
@pytest.fixture
def job_copy(trained_job, tmp_path):
    """The shared trained job, copied: for tests that write into a job."""
    config, summary = trained_job
    copy = tmp_path / "job"
    shutil.copytree(config.job_dir, copy)
    return dataclasses.replace(config, job_dir=str(copy)), summary


@pytest.fixture(scope="session")
def float_manifest(trained_job, tmp_path_factory):
    """The trained job's tiers converted to float32 TFLite: (folder, manifest).
    Once per worker, for the converter, model conversion, runner, QAT and
    verification tests (tests/test_tflite_*.py; helpers in tflite_helpers.py)."""
    from tflite_helpers import _convert

    out = tmp_path_factory.mktemp("tflite") / "float32"
    return out, _convert(trained_job, out)
