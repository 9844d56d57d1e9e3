"""Files written by pss_keras 0.1 (the flat layout) load, resume and serve.

tests/data/legacy_0_1 holds a tiny job directory (run configuration,
weights, calibrated statistics, the last checkpoint), its SavedModel export
and the outputs both gave under that code (its README says how they were
made). Moving the package must not change what these files mean.
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy_0_1")


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(LEGACY, "expected.json")) as f:
        record = json.load(f)
    images = np.random.default_rng(record["image_seed"]).integers(
        0, 256, size=record["image_shape"], dtype=np.uint8
    )
    return record, images


@pytest.fixture
def legacy_job(tmp_path):
    """A copy of the old job (the tests write into it)."""
    return shutil.copytree(os.path.join(LEGACY, "job"), tmp_path / "job")


def _close(ours, reference):
    """Within 1e-4 of the largest absolute reference value (float rounding
    differs between CPUs; a wrong weight would be off by far more)."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4 * np.abs(reference).max())


def test_an_old_job_loads_and_gives_its_logits(legacy_job, expected):
    from pss_keras.jobs.directory import Job
    from pss_keras.supernet.extraction import extract_subnet

    record, images = expected
    job = Job(str(legacy_job))
    (tier,) = job.retained
    assert tier.name == record["tier"]
    config, stats = job.tier(tier)
    model = extract_subnet(job.supernet, config, stats, pixel_input=True)
    _close(model(images.astype("float32")), record["extracted_logits"])


def test_an_old_export_serves(expected):
    from pss_keras.testing.served_model import ServedModel

    record, images = expected
    served = ServedModel(os.path.join(LEGACY, "export", "1"))
    outputs = served.predict(record["tier"], {"images": images})
    for name, values in record["export_outputs"].items():
        _close(outputs[name], values)
    tiers = served.predict("tiers", {})
    assert [n.decode() for n in tiers["names"]] == [record["tier"]]


def test_an_old_job_exports_as_it_did(legacy_job, tmp_path, expected):
    """The new export of the old job answers as the old export did."""
    from pss_keras.export.saved_model import export
    from pss_keras.testing.served_model import ServedModel

    record, images = expected
    summary = export(str(legacy_job), str(tmp_path / "export"), latency_repeats=1)
    outputs = ServedModel(summary["path"]).predict(record["tier"], {"images": images})
    for name, values in record["export_outputs"].items():
        _close(outputs[name], values)


def test_an_old_checkpoint_resumes(legacy_job, tmp_path):
    """train() over the old job directory resumes from its last checkpoint
    (every epoch done: no step is trained) and retains the same tier."""
    import h5py

    from pss_keras.jobs import directory as jobs
    from pss_keras.training.driver import train

    with open(os.path.join(LEGACY, "job", jobs.RETAINED)) as f:
        old_tiers = [r["name"] for r in json.load(f)]
    config = jobs.read_run_config(str(legacy_job))
    config = dataclasses.replace(
        config,
        job_dir=str(legacy_job),
        data=dataclasses.replace(config.data, data_dir=str(tmp_path / "data")),
    )
    summary = train(config)
    assert [r["name"] for r in summary["retained"]] == old_tiers
    old_weights = os.path.join(LEGACY, "job", jobs.WEIGHTS)
    new_weights = os.path.join(legacy_job, jobs.WEIGHTS)
    with h5py.File(old_weights) as old, h5py.File(new_weights) as new:
        names = []
        old.visit(lambda n: names.append(n) if isinstance(old[n], h5py.Dataset) else None)
        assert names
        for name in names:
            np.testing.assert_array_equal(new[name][()], old[name][()], err_msg=name)
