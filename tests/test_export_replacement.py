"""pss_keras.export.replacement: a tier fine-tuned alone replaces its
inherited tier in a new export version of the original job."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import _one_line, tiny_train_config

from pss_keras.data import preprocessing
from pss_keras.export import replacement
from pss_keras.export import saved_model as export
from pss_keras.jobs import directory as jobs
from pss_keras.supernet import extraction
from pss_keras.training import driver as training


@pytest.fixture(scope="module")
def fine_tuned(trained_job, tiny_image_folder, tmp_path_factory):
    """The trained job's cheapest tier fine-tuned alone for one epoch:
    (source config, tier name, fine-tuned job directory)."""
    source, summary = trained_job
    name = summary["retained"][0]["name"]
    config = tiny_train_config(
        tmp_path_factory.mktemp("fine_tuned") / "job", tiny_image_folder, epochs=1,
        init_from=source.job_dir,
    )  # fmt: skip
    training.train(jobs.with_subnet(config, name))
    return source, name, config.job_dir


def _reference(job, tier, images):
    subnet, stats = job.tier(tier)

    @tf.function
    def logits(t):
        return job.supernet(
            preprocessing.preprocess(t, job.image_size), subnet=subnet, bn_stats=stats
        )

    return logits(tf.constant(images)).numpy()


@pytest.mark.heavy
def test_a_fine_tuned_tier_replaces_its_inherited_one_in_a_new_version(fine_tuned, tmp_path):
    source, name, tuned_dir = fine_tuned
    out = str(tmp_path / "export")
    first = export.export(source.job_dir, out, latency_repeats=1)
    summary = export.export(source.job_dir, out, latency_repeats=1, replace={name: tuned_dir})
    assert (first["version"], summary["version"]) == (1, 2)  # a new version; 1 untouched
    job, tuned = jobs.Job(source.job_dir), jobs.Job(tuned_dir)
    (tuned_tier,) = tuned.retained
    inherited = next(t for t in job.retained if t.name == name)
    assert summary["replaced_tiers"] == {
        name: {"job_dir": tuned_dir, "tier": name, "inherited_top1": inherited.top1}
    }
    row = next(t for t in summary["tiers"] if t["name"] == name)
    assert (row["top1"], row["top5"]) == (tuned_tier.top1, tuned_tier.top5)
    assert (row["metric_type"], row["target"]) == (inherited.metric_type, inherited.target)
    with open(os.path.join(summary["path"], "assets.extra", "tiers.json")) as f:
        assert json.load(f)["replaced_tiers"] == summary["replaced_tiers"]
    loaded = tf.saved_model.load(summary["path"])
    images = np.random.default_rng(0).integers(0, 256, (3, 45, 61, 3)).astype(np.uint8)
    for tier in job.retained:
        owner = tuned if tier.name == name else job
        expected = _reference(owner, tuned_tier if tier.name == name else tier, images)
        got = loaded.signatures[tier.name](images=tf.constant(images))["logits"].numpy()
        np.testing.assert_allclose(got, expected, atol=5e-5 * np.abs(expected).max(), rtol=0)

    # The replaced tier's weights are its own variables, besides the shared
    # supernet's: exactly those of its standalone (BN-folded) subnet.
    def stored(version):
        shapes = tf.train.list_variables(os.path.join(version, "variables", "variables"))
        return len(shapes), sum(int(np.prod(shape)) for _, shape in shapes)

    extracted = extraction.extract_subnet(
        tuned.supernet, *tuned.tier(tuned_tier), fold_bn=True, name=name
    )
    (n_after, size_after), (n_before, size_before) = stored(summary["path"]), stored(first["path"])
    assert n_after - n_before == len(extracted.weights)
    assert size_after - size_before == sum(int(np.prod(w.shape)) for w in extracted.weights)


@pytest.mark.heavy
def test_bad_replacements_in_one_line(fine_tuned, trained_job, tmp_path):
    source, name, tuned_dir = fine_tuned
    _, summary = trained_job
    other = summary["retained"][-1]["name"]
    out = str(tmp_path / "export")
    cases = [
        ({"flops_9m": tuned_dir}, r"--replace_tier=flops_9m=.*: .* exports no tier flops_9m "),
        (
            {other: tuned_dir},
            rf"--replace_tier={other}=.*: that job has no tier of {other}'s subnet .* \(its tiers: "
            rf"{name}\); fine-tune it with: scripts/train.py --init_from=.* --subnet={other}\.",
        ),
        ({name: str(tmp_path / "nope")}, r".*nope has no run_config.json"),
    ]
    for replace, message in cases:
        with pytest.raises(ValueError) as caught:
            export.export(source.job_dir, out, latency_repeats=1, replace=replace)
        assert re.fullmatch(message + ".*", _one_line(caught.value)), caught.value
    assert not os.path.exists(out)  # nothing written


def test_parse_replacements():
    assert replacement.parse_replacements(["a=j/1", "b=j=2"]) == {"a": "j/1", "b": "j=2"}
    assert replacement.parse_replacements([]) == {}
    with pytest.raises(ValueError, match=r"^--replace_tier=a: give TIER=JOB, e.g. "):
        replacement.parse_replacements(["a"])
    with pytest.raises(ValueError, match=r"^--replace_tier names tier a twice\.$"):
        replacement.parse_replacements(["a=x", "a=y"])


@pytest.mark.slow
def test_export_script_replaces_a_tier(fine_tuned, tmp_path, run_script):
    source, name, tuned_dir = fine_tuned
    out = tmp_path / "export"
    flags = ["scripts/export.py", f"--job_dir={source.job_dir}", f"--export_dir={out}"]
    result = run_script(*flags, "--latency_repeats=1", f"--replace_tier={name}={tuned_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out / '1'} (shared weights" in result.stdout
    assert f"\n{name}: the weights of {tuned_dir} (its tier {name}; inherited top-1 was " in (
        result.stdout
    )
    result = run_script(*flags, f"--replace_tier={name}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --replace_tier={name}: give TIER=JOB, e.g. flops_12m=jobs/flops_12m_ft (the tier "
        "of --job_dir and the job that fine-tuned it)."
    )
    assert sorted(os.listdir(out)) == ["1"]
