"""Times importing an official PSS-Net checkpoint at the released size.

    python benchmarks/benchmark_import_checkpoint.py --repeats=3 \
        --output=bench_results/import_checkpoint.json

For MobileNetV1 and MobileNetV2 with a 1000-class head, writes a file in
the official layout with random weights
(`pss_keras.testing.torch_writer.reference_like_checkpoint`, a temporary
folder), then times three stages, each call in a fresh process (after its
imports; the median of --repeats processes):

  read    `read_checkpoint`: the allowlisted unpickler and the storages
  load    `load_reference_checkpoint`: the read, the state dict mapped onto
          a newly built `Supernet`, the pools parsed
  import  `import_reference` without calibration into a new job directory:
          the load, the FLOPs check, the job's files and its checkpoint

TensorFlow's and Keras's import, paid once by every process that loads,
is not in these figures; the table shows it apart (``TF import s``, in the
import process). Target: an import under 10 s on 2 cores. Prints a table,
the machine, and writes --output JSON when given. Takes about 30 s a
repeat on 2 cores.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

MODELS = ("mobilenet_v1", "mobilenet_v2")
STAGES = ("read", "load", "import")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Fresh processes per stage (median).", lower_bound=1)
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs of the files.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON output path (none: only print).")
_MEASURE = flags.DEFINE_enum("measure", None, list(STAGES), "Internal: time one stage, print JSON.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Internal: the file --measure reads.")
_MODEL = flags.DEFINE_enum("model_name", "mobilenet_v1", list(MODELS), "Internal: its model.")
_JOB_DIR = flags.DEFINE_string("job_dir", None, "Internal: a new job directory for --measure.")


def measure(stage: str, checkpoint: str, model_name: str, job_dir: str) -> dict:
    """Seconds of one ``stage`` in this process (run fresh: the script
    calls itself with ``--measure``), and of its imports."""
    start = time.perf_counter()
    if stage != "read":
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        from pss_keras.training import reference_import
    from pss_keras.supernet import reference_checkpoint, torch_files
    from pss_keras.utils import timing

    imports_s = time.perf_counter() - start
    work = {
        "read": lambda: torch_files.read_checkpoint(checkpoint),
        "load": lambda: reference_checkpoint.load_reference_checkpoint(checkpoint, model_name),
        "import": lambda: reference_import.import_reference(
            checkpoint, model_name, job_dir, progress=False
        ),
    }[stage]
    seconds = timing.median_ms(work, repeats=1, warmup=0) / 1000.0
    return {"seconds": seconds, "imports_s": imports_s}


def _run_stage(stage: str, path: str, model_name: str, job_dir: str) -> dict:
    command = [
        sys.executable, os.path.abspath(__file__), f"--measure={stage}",
        f"--checkpoint={path}", f"--model_name={model_name}", f"--job_dir={job_dir}",
    ]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"error: --measure={stage} {model_name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def benchmark_model(model_name: str, num_classes: int, repeats: int, folder: str) -> dict:
    """Writes the file, then times every stage in ``repeats`` fresh processes."""
    from pss_keras.testing import torch_writer

    path = os.path.join(folder, f"{model_name}.pt")
    start = time.perf_counter()
    torch_writer.reference_like_checkpoint(path, model_name, num_classes)
    row = {
        "model": model_name,
        "classes": num_classes,
        "file_mb": os.path.getsize(path) / 1e6,
        "write_s": time.perf_counter() - start,
    }
    for stage in STAGES:
        runs = [
            _run_stage(stage, path, model_name, os.path.join(folder, f"job_{model_name}_{r}"))
            for r in range(repeats)
        ]
        row[f"{stage}_s"] = statistics.median(r["seconds"] for r in runs)
        row[f"{stage}_runs_s"] = [r["seconds"] for r in runs]
        if stage == "import":
            row["tf_import_s"] = statistics.median(r["imports_s"] for r in runs)
    return row


def main(argv):
    del argv
    if _MEASURE.value:
        result = measure(_MEASURE.value, _CHECKPOINT.value, _MODEL.value, _JOB_DIR.value)
        print(json.dumps(result))
        return
    from pss_keras.utils import machine, timing

    with tempfile.TemporaryDirectory() as folder:
        rows = [benchmark_model(m, _CLASSES.value, _REPEATS.value, folder) for m in MODELS]
    print(f"median of {_REPEATS.value} fresh processes per stage (imports excluded)")
    print(
        f"{'model':<14}{'classes':>8}{'file MB':>9}{'read s':>8}{'load s':>8}{'import s':>10}"
        f"{'TF import s':>13}"
    )
    for r in rows:
        print(
            f"{r['model']:<14}{r['classes']:>8}{r['file_mb']:>9.1f}{r['read_s']:>8.2f}"
            f"{r['load_s']:>8.2f}{r['import_s']:>10.2f}{r['tf_import_s']:>13.2f}"
        )
    result = {"repeats": _REPEATS.value, "processes": "fresh, one per stage and repeat"}
    result["rows"] = rows
    if _OUTPUT.value:
        timing.write_benchmark(_OUTPUT.value, result)
    else:
        machine.print_machine()


if __name__ == "__main__":
    app.run(main)
