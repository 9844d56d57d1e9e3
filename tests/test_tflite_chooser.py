"""The on-device tier chooser (pss_keras.tflite.chooser) on a job's int8 files.

Timings are injected (a cache, or a scripted clock), so every choice asserted
here follows from the tiers' accuracy and those timings, never from wall time.
"""

import dataclasses
import json
import math
import re
import shutil
import statistics
import subprocess
import sys

import pytest

from pss_keras.jobs import directory as jobs
from pss_keras.tflite import chooser as tflite_chooser
from pss_keras.tflite import converter as tflite
from pss_keras.tflite import manifest as tflite_manifest


@pytest.fixture(scope="module")
def int8_tiers(trained_job, tmp_path_factory):
    """The tiny job's tiers converted to int8 once: (folder, manifest)."""
    config, _ = trained_job
    out = tmp_path_factory.mktemp("chooser") / "int8"
    settings = tflite.ConvertConfig(
        quantize="int8", representative_images=8, verify_images=0, latency_repeats=1
    )
    return out, tflite.convert(config.job_dir, str(out), settings, progress=False)


def _by_accuracy(folder):
    """The folder's tiers, least accurate first (ties by name)."""
    return sorted(tflite_chooser.read_tiers(str(folder)), key=lambda t: (t.top1, t.name))


def _first_best(tiers):
    """The first of ``tiers`` (sorted by accuracy) with the highest top-1."""
    return next(t for t in tiers if t.top1 == tiers[-1].top1)


def test_manifest_rows_carry_the_jobs_accuracy(trained_job, int8_tiers):
    config, _ = trained_job
    out, manifest = int8_tiers
    retained = jobs.Job(config.job_dir).retained
    assert [row["name"] for row in manifest["tiers"]] == [e.name for e in retained]
    assert len(retained) >= 2
    for row, entry in zip(manifest["tiers"], retained):
        assert row["top1"] == entry.top1 and row["top5"] == entry.top5
    assert json.loads((out / "manifest.json").read_text()) == manifest
    tiers = tflite_chooser.read_tiers(str(out))
    assert [(t.name, t.top1, t.top5) for t in tiers] == [(e.name, e.top1, e.top5) for e in retained]
    assert all(t.path == str(out / f"{t.name}.tflite") for t in tiers)
    # The conversion's table shows it.
    lines = tflite_manifest.format_manifest(manifest).splitlines()
    assert "job top1" in lines[0]
    for line, entry in zip(lines[1:], retained):
        assert line.split()[0] == entry.name and f"{entry.top1:.3f}" in line.split()


def _with_accuracies(out, folder):
    """A copy of the converted folder whose manifest gives the tiers
    distinct accuracies (0.5, 0.6, ... in manifest order): the tiny job's
    own top-1 may tie, and what it is depends on the CPU that trained it."""
    shutil.copytree(out, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for i, row in enumerate(manifest["tiers"]):
        row["top1"] = 0.5 + 0.1 * i
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_two_budgets_choose_two_tiers(int8_tiers, tmp_path):
    """Issue 18, item 7: done when two budgets pick different tiers on the
    int8 files, with injected timings. Timings grow with accuracy here, so
    a budget between the two fastest fits only the least accurate tier and
    one at the slowest timing fits the most accurate."""
    out = _with_accuracies(int8_tiers[0], tmp_path / "int8")
    tiers = _by_accuracy(out)
    lo, hi = tiers[0], tiers[-1]
    assert len(tiers) >= 2 and hi.top1 > lo.top1
    timings = {t.name: float(i + 1) for i, t in enumerate(tiers)}  # 1, 2, ... ms
    assert tflite_chooser.choose_tier(tiers, timings, 1.5).name == lo.name
    assert tflite_chooser.choose_tier(tiers, timings, float(len(tiers))).name == hi.name
    # The same through the chooser an app mirrors, from cached timings.
    chooser = tflite_chooser.OnDeviceChooser(str(out), timings_ms=timings)
    assert not chooser.timed_here and chooser.timings_ms == timings
    assert chooser.choose(1.5).name == lo.name
    assert chooser.choose(1e9).name == hi.name
    table = chooser.format_table().splitlines()
    assert table[-1] == "ms here: given (cached), not timed here"
    row = next(line.split() for line in table if line.split()[0] == hi.name)
    assert row[-2:] == [f"{timings[hi.name]:.3f}", "no"]


def test_a_dominated_tier_is_never_chosen(int8_tiers, tmp_path):
    """The least accurate tier made the slowest is dominated: whatever the
    budget, even one it fits, a faster tier at least as accurate wins."""
    out = _with_accuracies(int8_tiers[0], tmp_path / "int8")
    tiers = _by_accuracy(out)
    lo = tiers[0]
    timings = {t.name: float(i + 1) for i, t in enumerate(tiers[1:])}
    timings[lo.name] = float(len(tiers) + 1)  # slowest, least accurate
    kept, dominated = tflite_chooser.dominant_tiers(tiers, timings)
    assert lo.name in {t.name for t in dominated}
    assert [timings[t.name] for t in kept] == sorted(timings[t.name] for t in kept)
    assert all(a.top1 < b.top1 for a, b in zip(kept, kept[1:]))
    budgets = sorted(timings.values()) + [v + 0.5 for v in timings.values()] + [1e9]
    chosen = {tflite_chooser.choose_tier(tiers, timings, b).name for b in budgets}
    assert lo.name not in chosen
    assert tflite_chooser.choose_tier(tiers, timings, 1e9).name == _first_best(tiers).name
    # Equally accurate: the faster wins, whatever the order or MFLOPs.
    tied = [dataclasses.replace(t, top1=0.5) for t in tiers]
    fastest = min(timings, key=timings.get)
    assert tflite_chooser.choose_tier(tied, timings, 1e9).name == fastest
    assert tflite_chooser.choose_tier(tied[::-1], timings, 1e9).name == fastest


NAN = float("nan")


def _stand_in_folder(folder, rows):
    """A folder of tiers (name, MFLOPs, top-1) whose files are stand-in
    bytes: `read_tiers` checks only their sha256, and with given timings
    nothing runs them."""
    folder.mkdir()
    manifest = {"tiers": []}
    for name, mflops, top1 in rows:
        (folder / f"{name}.tflite").write_bytes(name.encode())
        digest = tflite_manifest.file_digest(name.encode())
        manifest["tiers"].append(
            dict(name=name, file=f"{name}.tflite", sha256=digest, resolution=32, mflops=mflops)
            | {"top1": top1, "top5": top1}
        )
    (folder / "manifest.json").write_text(json.dumps(manifest))  # NaN as JSON's NaN
    return str(folder)


def test_tiers_without_top1_are_all_kept_and_chosen_by_cost(tmp_path):
    """A job imported without validation data: top-1 NaN (or null). No tier
    is dominated, a budget takes the most MFLOPs within it, the table says n/a."""
    folder = _stand_in_folder(
        tmp_path / "imported", [("a", 1.0, NAN), ("b", 2.0, NAN), ("c", 3.0, None)]
    )
    tiers = tflite_chooser.read_tiers(folder)
    assert all(math.isnan(t.top1) and math.isnan(t.top5) for t in tiers)
    timings = {"a": 1.0, "b": 3.0, "c": 2.0}  # c: more MFLOPs than b, yet faster here
    kept, dominated = tflite_chooser.dominant_tiers(tiers, timings)
    assert [t.name for t in kept] == ["a", "c", "b"] and dominated == []
    assert tflite_chooser.choose_tier(tiers, timings, 1.0).name == "a"
    assert tflite_chooser.choose_tier(tiers, timings, 2.5).name == "c"
    assert tflite_chooser.choose_tier(tiers, timings, 1e9).name == "c"
    table = tflite_chooser.OnDeviceChooser(folder, timings_ms=timings).format_table()
    rows = [line.split() for line in table.splitlines()[1:4]]
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert all(r[3:5] == ["n/a", "n/a"] and r[-1] == "no" for r in rows)
    assert "nan" not in table and "top1 n/a: not measured" in table
    # Some measured: those are compared among themselves only, cost decides.
    folder = _stand_in_folder(
        tmp_path / "mixed", [("a", 1.0, 0.6), ("b", 2.0, 0.5), ("c", 3.0, NAN)]
    )
    tiers = tflite_chooser.read_tiers(folder)
    timings = {"a": 1.0, "b": 2.0, "c": 3.0}
    kept, dominated = tflite_chooser.dominant_tiers(tiers, timings)
    assert [t.name for t in kept] == ["a", "c"] and [t.name for t in dominated] == ["b"]
    assert tflite_chooser.choose_tier(tiers, timings, 2.5).name == "a"  # b: dominated
    assert tflite_chooser.choose_tier(tiers, timings, 1e9).name == "c"
    table = tflite_chooser.format_tiers(tiers, timings).splitlines()
    assert table[1].split()[3] == "0.600" and table[3].split()[3] == "n/a"


def test_a_budget_below_every_tier_names_the_fastest(int8_tiers):
    out, _ = int8_tiers
    tiers = _by_accuracy(out)
    timings = {t.name: 2.0 + i for i, t in enumerate(tiers)}
    with pytest.raises(ValueError) as caught:
        tflite_chooser.choose_tier(tiers, timings, 1.25)
    assert str(caught.value) == (
        f"No tier runs within 1.25 ms on this device: the fastest, {tiers[0].name}, takes "
        "2.000 ms. Raise the budget or convert a smaller tier."
    )
    with pytest.raises(ValueError, match="budget_ms must be positive, got 0"):
        tflite_chooser.choose_tier(tiers, timings, 0)
    partial = dict(list(timings.items())[1:])
    with pytest.raises(ValueError, match=rf"No timing for tier\(s\) \['{tiers[0].name}'\]"):
        tflite_chooser.OnDeviceChooser(str(out), timings_ms=partial)
    with pytest.raises(ValueError, match="Timings must be positive milliseconds"):
        tflite_chooser.choose_tier(tiers, {**timings, tiers[0].name: 0.0}, 5.0)


def _break(folder, how, manifest):
    name = manifest["tiers"][0]["name"]
    path = folder / "manifest.json"
    if how == "no manifest":
        path.unlink()
    elif how == "unreadable manifest":
        path.write_text('{"tiers": [')
    elif how == "missing file":
        (folder / f"{name}.tflite").unlink()
    elif how == "corrupt file":
        content = bytearray((folder / f"{name}.tflite").read_bytes())
        content[len(content) // 2] ^= 0xFF
        (folder / f"{name}.tflite").write_bytes(bytes(content))
    elif how == "no top1":  # a manifest written before rows carried it
        old = json.loads(path.read_text())
        del old["tiers"][0]["top1"], old["tiers"][0]["top5"]
        path.write_text(json.dumps(old))
    return name


@pytest.mark.parametrize(
    "how", ["no manifest", "unreadable manifest", "missing file", "corrupt file", "no top1"]
)
def test_a_broken_folder_says_what_to_do(int8_tiers, tmp_path, how):
    out, manifest = int8_tiers
    folder = tmp_path / "int8"
    shutil.copytree(out, folder)
    name = _break(folder, how, manifest)
    path = folder / "manifest.json"
    again = (
        "convert again with this version: python scripts/convert_tflite.py "
        f"--job_dir={manifest['job_dir']} --output_dir={folder} --quantize=int8"
    )
    expected = {
        "no manifest": (
            f"{path} does not exist: {folder} is not a folder of converted tiers; write one "
            f"with python scripts/convert_tflite.py --job_dir=<job> --output_dir={folder}"
        ),
        "unreadable manifest": re.escape(f"Cannot read {path} (")
        + ".*"
        + re.escape(
            "); convert again with this version: python scripts/convert_tflite.py "
            f"--job_dir=<job> --output_dir={folder} --quantize=<none|fp16|int8>"
        ),
        "missing file": f"{path} names {name}.tflite, which is missing; {again}",
        "corrupt file": (
            f"{folder / (name + '.tflite')} does not match the sha256 that {path} records (a "
            f"corrupt or replaced file); {again}"
        ),
        "no top1": (
            f"{path}: tier {name} has no validation top-1 (a manifest from before tiers carried "
            f"it); {again}"
        ),
    }[how]
    with pytest.raises(ValueError) as caught:
        tflite_chooser.read_tiers(str(folder))
    message = str(caught.value)
    assert "\n" not in message
    if how == "unreadable manifest":
        assert re.fullmatch(expected, message), message
    else:
        assert message == expected
    with pytest.raises(ValueError, match=re.escape(message[:40])):
        tflite_chooser.time_tiers(str(folder))  # timing reads the same way


class ScriptedClock:
    """A clock whose timed calls take the given seconds, in order."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.readings = []
        for i, d in enumerate(durations):
            self.readings += [10.0 * i, 10.0 * i + d]
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.readings[self.calls - 1]


def test_time_tiers_returns_the_medians_of_its_clock(int8_tiers):
    out, manifest = int8_tiers
    names = [row["name"] for row in manifest["tiers"]]
    repeats = 5
    per_tier = [[0.004, 0.001, 0.009 + i / 1000, 0.002, 0.003 * (i + 1)] for i in range(len(names))]
    clock = ScriptedClock([d for durations in per_tier for d in durations])
    timings = tflite_chooser.time_tiers(str(out), warmup=3, repeats=repeats, clock=clock)
    expected = {n: 1000 * statistics.median(d) for n, d in zip(names, per_tier)}
    assert list(timings) == names
    assert timings == pytest.approx(expected)
    assert clock.calls == 2 * repeats * len(names)  # warm-up invokes are not read
    chooser = tflite_chooser.OnDeviceChooser(
        str(out), warmup=0, repeats=repeats, clock=ScriptedClock(clock.durations)
    )
    assert chooser.timed_here and chooser.timings_ms == timings
    with pytest.raises(ValueError, match="repeats >= 1; got num_threads=1, warmup=5, repeats=0"):
        tflite_chooser.time_tiers(str(out), repeats=0)


def test_chooses_without_tensorflow(int8_tiers):
    """The chooser times real files with LiteRT alone, as an app would."""
    out, _ = int8_tiers
    code = (
        "import sys\n"
        "from pss_keras.tflite import chooser as tflite_chooser\n"
        f"chooser = tflite_chooser.OnDeviceChooser({str(out)!r}, warmup=1, repeats=3)\n"
        "assert all(ms > 0 for ms in chooser.timings_ms.values()), chooser.timings_ms\n"
        "print(chooser.choose(1e9).name)\n"
        "assert 'tensorflow' not in sys.modules, 'the chooser imported TensorFlow'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tiers = _by_accuracy(out)
    assert result.stdout.strip() in {t.name for t in tiers if t.top1 == tiers[-1].top1}


def _table(stdout):
    """The script's table rows: {tier: (top1, ms here, dominated)}."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[-1] in ("yes", "no"):
            rows[parts[0]] = (float(parts[3]), float(parts[5]), parts[-1] == "yes")
    return rows


def test_the_script_prints_the_tiers_and_a_choice_per_budget(int8_tiers, run_script):
    out, manifest = int8_tiers
    result = run_script(
        "scripts/choose_tflite_tier.py", f"--tflite_dir={out}", "--budget_ms=1e6,1e-6",
        "--warmup=1", "--repeats=3",
    )  # fmt: skip
    # The first budget fits every tier; the second none, which ends the run.
    assert result.returncode == 1, result.stderr[-2000:]
    rows = _table(result.stdout)
    assert sorted(rows) == sorted(t["name"] for t in manifest["tiers"])
    for t in manifest["tiers"]:
        assert rows[t["name"]][0] == pytest.approx(t["top1"], abs=5e-4)
    # Kept tiers grow in accuracy with their timing: the most accurate one is
    # chosen for the large budget, the least accurate is the fastest.
    kept = [(top1, name) for name, (top1, ms, dominated) in rows.items() if not dominated]
    best, fastest = max(kept)[1], min(kept)[1]
    assert rows[best][0] == max(r[0] for r in rows.values())
    assert f"budget 1e+06 ms: {best} (" in result.stdout
    assert "ms here: batch 1, median of 3 after 1 warm-up invokes, 1 thread(s)" in result.stdout
    assert "machine: " in result.stdout
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: No tier runs within 1e-06 ms on this device: the fastest, {fastest}, takes "
        )
    )
    result = run_script("scripts/choose_tflite_tier.py", f"--tflite_dir={out}", "--budget_ms=a")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --budget_ms takes milliseconds (e.g. 5,10), got a"
    missing = out.parent / "nothing"
    result = run_script("scripts/choose_tflite_tier.py", f"--tflite_dir={missing}")
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: {missing / 'manifest.json'} does not exist")


def test_the_script_prints_n_a_for_tiers_without_top1(int8_tiers, tmp_path, run_script):
    out, manifest = int8_tiers
    folder = tmp_path / "imported"
    shutil.copytree(out, folder)
    unmeasured = json.loads((folder / "manifest.json").read_text())
    for row in unmeasured["tiers"]:
        row["top1"] = row["top5"] = NAN
    (folder / "manifest.json").write_text(json.dumps(unmeasured))
    result = run_script(
        "scripts/choose_tflite_tier.py", f"--tflite_dir={folder}", "--budget_ms=1e6",
        "--warmup=0", "--repeats=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nan" not in result.stdout and "top1 n/a: not measured" in result.stdout
    largest = max(manifest["tiers"], key=lambda t: t["mflops"])["name"]
    assert f"budget 1e+06 ms: {largest} (" in result.stdout
    assert result.stdout.rstrip().endswith("here, top1 n/a)")
