"""The job directory's contract (pss_keras.jobs) and what deployment imports."""

import ast
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from pss_keras import jobs, serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_retained_tiers_round_trip_byte_for_byte(trained_job):
    config, summary = trained_job
    path = os.path.join(config.job_dir, jobs.RETAINED)
    with open(path) as f:
        text = f.read()
    tiers = [jobs.RetainedTier.from_dict(r) for r in json.loads(text)]
    assert [t.name for t in tiers] == [e["name"] for e in summary["retained"]]
    again = json.dumps([t.to_dict() for t in tiers], indent=2, sort_keys=False) + "\n"
    assert again == text
    job = jobs.Job(config.job_dir)
    assert [t.mflops for t in job.retained] == sorted(t.mflops for t in tiers)
    assert job.retained[0].resolution == job.retained[0].config.resolution


def test_tier_table_covers_every_served_field():
    fields = [f.name for f in dataclasses.fields(jobs.ServedTier)]
    assert [field for _, field, _ in jobs.TIER_TABLE] == fields
    assert serving.Tier is jobs.ServedTier
    outputs = {
        "names": [b"b", b"a"],
        "metric_types": [b"flops", b"flops"],
        "targets": [2.0, 1.0],
        "mflops": [2.1, 0.9],
        "params": [20, 10],
        "resolutions": [64, 32],
        "top1": [0.5, 0.7],
        "latency_ms": [3.0, 1.0],
    }
    tiers = jobs.served_tiers_from_outputs(outputs)
    assert tiers[0] == jobs.ServedTier("a", "flops", 1.0, 0.9, 10, 32, 0.7, 1.0)
    assert [t.name for t in tiers] == ["a", "b"]


def test_a_finished_job_is_required(tmp_path):
    with pytest.raises(ValueError, match="has no run_config.json: it needs a finished training"):
        jobs.Job(str(tmp_path))
    with pytest.raises(ValueError, match="is not a PSS job directory"):
        jobs.read_run_config(str(tmp_path))


TRAINING = {
    "training", "trainer", "callbacks", "selection", "sampling", "pools", "checkpoints",
    "evaluation", "synthetic_job",
}  # fmt: skip
# What serves a model needs no model building either (export and TFLite do).
SERVING_ONLY = TRAINING | {
    "supernet", "run_config", "flops", "extraction", "tier_graph", "export",
}  # fmt: skip


def _pss_imports(module: str) -> set[str]:
    """Every pss_keras module ``pss_keras/<module>.py`` imports, at the top
    or inside a function (so also what its functions load when called)."""
    with open(os.path.join(ROOT, "pss_keras", f"{module}.py")) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "pss_keras":
            names |= {f"pss_keras.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n.split(".")[1] for n in names if n.startswith("pss_keras.")}


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("serving", SERVING_ONLY),
        ("model_server", SERVING_ONLY),
        ("soak", SERVING_ONLY),
        ("export", TRAINING),
        ("tier_graph", TRAINING),
        ("tflite", TRAINING),
        ("tflite_chooser", SERVING_ONLY),
        ("load_test", SERVING_ONLY),
    ],
)
def test_deployment_functions_import_no_training_code(module, forbidden):
    """Also the imports inside functions, which importing the module alone
    does not run (a soak helper once built a training job that way)."""
    assert not _pss_imports(module) & forbidden
    assert {"jobs", "supernet"} <= _pss_imports("export")  # the parser sees imports


def test_deployment_imports_no_training_code():
    """Export, TFLite, the stand-in model server and the client load no
    training module; the client and the on-device tier chooser no TF."""
    code = (
        f"training = {sorted(TRAINING)!r}\n"
        "import sys\n"
        "import pss_keras.serving, pss_keras.tflite_chooser\n"
        "assert 'tensorflow' not in sys.modules, 'serving or the chooser imported TensorFlow'\n"
        "import pss_keras.export, pss_keras.tflite, pss_keras.model_server, pss_keras.soak\n"
        "loaded = [m for m in training if f'pss_keras.{m}' in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
