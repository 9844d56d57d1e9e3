"""Choosing a tier on the device: time the converted tiers here, pick by budget.

A folder written by ``scripts/convert_tflite.py`` holds one ``.tflite`` per
tier and ``manifest.json``, whose rows carry each tier's validation top-1
from the training job (``top1``) and the file's sha256. Which tier an app
should run depends on this device's speed, which the conversion machine's
``latency_ms`` does not tell, so the choice is made here in two steps. It is
the logic an Android or iOS app mirrors with its own LiteRT interpreter:

1. Once, at install or first launch (`time_tiers`): read the manifest and
   check each file against its sha256 (`read_tiers`), then time each tier
   with the interpreter settings the app will use (thread count): a few
   warm-up invokes, then the median wall time of ``repeats`` batch-1
   invokes on a fixed input. Cache the timings ``{tier: ms}`` with the
   app's data; time again when the files (their sha256) or the thread
   count change.
2. Whenever a budget is set (a frame rate, a battery saver mode; `choose_tier`):
   the most accurate tier whose timing is within the budget; of equally
   accurate tiers, the faster. A dominated tier (another is no slower and
   at least as accurate: `dominant_tiers`) is never chosen. No tier within
   the budget is an error naming the fastest tier and its timing, for the
   app to fall back or relax the budget. Tiers without a measured top-1
   (NaN: a job imported from an official PSS-Net checkpoint without
   validation data) are never dominated, and when any tier has none the
   choice goes by cost: the most MFLOPs (then the slowest) within the budget.

`OnDeviceChooser` does both: ``OnDeviceChooser(folder).choose(budget_ms)``,
with ``timings_ms=`` to start from cached timings instead of timing again.

This module loads LiteRT and NumPy only: no TensorFlow and no training code,
as on a phone.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os

import numpy as np

from pss_keras.jobs.tiers import split_dominated
from pss_keras.tflite.manifest import MANIFEST, file_digest
from pss_keras.tflite.runner import TFLiteRunner
from pss_keras.utils import machine

__all__ = [
    "OnDeviceChooser",
    "TFLiteTier",
    "choose_tier",
    "dominant_tiers",
    "format_tiers",
    "read_tiers",
    "time_tiers",
]


@dataclasses.dataclass(frozen=True)
class TFLiteTier:
    """One converted tier, as its folder's manifest describes it.

    Attributes:
        name: tier name, e.g. ``flops_1p6m``.
        path: its ``.tflite`` file.
        resolution: input size R (the app feeds R x R RGB pixels).
        mflops: its cost.
        top1: the job's validation top-1 of the tier (the float model with
            calibrated statistics; the file's own agreement with it is the
            manifest's ``verification``); NaN when the job has none (a job
            imported without validation data: NaN or null in the manifest).
        top5: the job's validation top-5 (None if the manifest lacks it;
            NaN when the job has none).
    """

    name: str
    path: str
    resolution: int
    mflops: float
    top1: float
    top5: float | None = None


def read_tiers(folder: str) -> list[TFLiteTier]:
    """The tiers of a folder of converted tiers, each file checked.

    Args:
        folder: written by ``scripts/convert_tflite.py`` (``<tier>.tflite``
            and ``manifest.json``).

    Returns:
        The tiers in the manifest's order (cheapest first).

    Raises:
        ValueError: one line naming the file and the conversion command that
            writes it again, when the manifest is missing or unreadable, a
            file it names is missing or does not match its sha256, or a tier
            lacks its validation top-1 (a manifest older than that field).
    """
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        raise ValueError(
            f"{path} does not exist: {folder} is not a folder of converted tiers; write one "
            f"with python scripts/convert_tflite.py --job_dir=<job> --output_dir={folder}"
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"Cannot read {path} ({e}); convert again with this version: "
            f"{_convert_command(folder, {})}"
        ) from None
    if not isinstance(manifest, dict):
        manifest = {}
    again = f"convert again with this version: {_convert_command(folder, manifest)}"
    rows = manifest.get("tiers")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"Cannot read {path} (it lists no tiers); {again}")
    tiers = []
    for row in rows:
        try:
            name, file, sha256 = str(row["name"]), str(row["file"]), str(row["sha256"])
            resolution, mflops = int(row["resolution"]), float(row["mflops"])
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"Cannot read {path} (a tier row lacks {e}); {again}") from None
        # null: NaN (not measured) as strict JSON writes it; a missing key: an old manifest.
        top1, top5 = (
            math.nan if k in row and row[k] is None else row.get(k) for k in ("top1", "top5")
        )
        if not isinstance(top1, (int, float)) or isinstance(top1, bool):
            raise ValueError(
                f"{path}: tier {name} has no validation top-1 (a manifest from before tiers "
                f"carried it); {again}"
            )
        if os.path.basename(file) != file:
            raise ValueError(f"Cannot read {path} (tier {name}'s file {file!r} is a path); {again}")
        file_path = os.path.join(folder, file)
        try:
            with open(file_path, "rb") as f:
                content = f.read()
        except FileNotFoundError:
            raise ValueError(f"{path} names {file}, which is missing; {again}") from None
        if file_digest(content) != sha256:
            raise ValueError(
                f"{file_path} does not match the sha256 that {path} records (a corrupt or "
                f"replaced file); {again}"
            )
        tiers.append(
            TFLiteTier(
                name=name,
                path=file_path,
                resolution=resolution,
                mflops=mflops,
                top1=float(top1),
                top5=float(top5) if isinstance(top5, (int, float)) else None,
            )
        )
    return tiers


def _convert_command(folder: str, manifest: dict) -> str:
    """The command that writes ``folder`` again, from what its manifest says."""
    command = (
        f"python scripts/convert_tflite.py --job_dir={manifest.get('job_dir') or '<job>'} "
        f"--output_dir={folder} --quantize={manifest.get('quantize') or '<none|fp16|int8>'}"
    )
    if manifest.get("io_dtype") not in (None, "float32"):
        command += f" --io_dtype={manifest['io_dtype']}"
    if manifest.get("qat_epochs"):
        command += f" --qat_epochs={manifest['qat_epochs']}"
    return command


def time_tiers(
    folder: str,
    num_threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    clock=None,
) -> dict[str, float]:
    """Times each tier of a folder with LiteRT on this device.

    Args:
        folder: a folder of converted tiers (`read_tiers` checks it).
        num_threads: interpreter threads, as the app will run them.
        warmup: untimed invokes first (allocation, caches, kernel set-up).
        repeats: timed batch-1 invokes; their median is the timing.
        clock: a function returning seconds (default `time.perf_counter`),
            read before and after each timed invoke; tests pass a scripted
            clock.

    Returns:
        ``{tier name: median milliseconds}``.

    Raises:
        ValueError: as `read_tiers`, or for settings out of range.
    """
    return _time(read_tiers(folder), num_threads, warmup, repeats, clock)


def _time(tiers, num_threads, warmup, repeats, clock) -> dict[str, float]:
    if num_threads < 1 or warmup < 0 or repeats < 1:
        raise ValueError(
            f"Timing needs num_threads >= 1, warmup >= 0 and repeats >= 1; got num_threads="
            f"{num_threads}, warmup={warmup}, repeats={repeats}."
        )
    timings = {}
    for tier in tiers:
        runner = TFLiteRunner(model_path=tier.path, num_threads=num_threads)
        r = tier.resolution
        # Fixed pixels, as at conversion: latency does not depend on the values.
        pixels = np.random.default_rng(0).uniform(0, 255, (1, r, r, 3)).astype(np.float32)
        timings[tier.name] = runner.latency_ms(pixels, repeats, warmup=warmup, clock=clock)
    return timings


def _timings_of(tiers, timings_ms) -> dict[str, float]:
    """Each tier's timing, checked (every tier timed, positive and finite)."""
    missing = [t.name for t in tiers if t.name not in timings_ms]
    if missing:
        raise ValueError(
            f"No timing for tier(s) {missing} (timings cover {sorted(timings_ms)}); time the "
            "tiers of this folder again."
        )
    bad = {t.name: timings_ms[t.name] for t in tiers if not 0 < timings_ms[t.name] < math.inf}
    if bad:
        raise ValueError(f"Timings must be positive milliseconds, got {bad}.")
    return {t.name: float(timings_ms[t.name]) for t in tiers}


def dominant_tiers(tiers, timings_ms) -> tuple[list[TFLiteTier], list[TFLiteTier]]:
    """Splits tiers into those worth running here and the dominated ones.

    A tier is dominated when another is no slower on this device (its
    timing, then MFLOPs) and at least as accurate (``top1``): running it
    would spend more time for no accuracy. A tier whose ``top1`` is NaN (no
    measured accuracy) is neither dominated nor dominating: always kept.

    Args:
        tiers: from `read_tiers`.
        timings_ms: ``{tier name: ms}`` from `time_tiers` (or a cache).

    Returns:
        (kept tiers, fastest first and, of those with a measured top-1, each
        more accurate than the one before; dominated tiers).

    Raises:
        ValueError: if a tier has no timing, or a timing is not positive.
    """
    ms = _timings_of(tiers, timings_ms)
    # split_dominated compares top-1s: only measured ones go through it.
    measured = [t for t in tiers if not math.isnan(t.top1)]
    kept, dominated = split_dominated(measured, lambda t: ms[t.name])
    unmeasured = [t for t in tiers if math.isnan(t.top1)]
    return sorted(kept + unmeasured, key=lambda t: (ms[t.name], t.mflops)), dominated


def choose_tier(tiers, timings_ms, budget_ms: float) -> TFLiteTier:
    """The most accurate tier whose timing here is within ``budget_ms``.

    Of equally accurate tiers the faster one; a dominated tier is never
    chosen (`dominant_tiers`). When a tier has no measured top-1 (NaN),
    accuracy cannot order them: the choice is then the kept tier with the
    most MFLOPs within the budget (of equal MFLOPs, the slower).

    Args:
        tiers: from `read_tiers`.
        timings_ms: ``{tier name: ms}`` from `time_tiers` (or a cache).
        budget_ms: the latency budget of one batch-1 inference (a timing
            equal to it fits).

    Raises:
        ValueError: if no tier fits (naming the fastest tier and its
            timing), the budget is not positive, or a tier has no timing.
    """
    if not budget_ms > 0:
        raise ValueError(f"budget_ms must be positive, got {budget_ms}.")
    kept, _ = dominant_tiers(tiers, timings_ms)
    fits = [t for t in kept if timings_ms[t.name] <= budget_ms]
    if not fits:
        fastest = kept[0]
        raise ValueError(
            f"No tier runs within {budget_ms:g} ms on this device: the fastest, {fastest.name}, "
            f"takes {timings_ms[fastest.name]:.3f} ms. Raise the budget or convert a smaller tier."
        )
    if any(math.isnan(t.top1) for t in tiers):
        return max(fits, key=lambda t: (t.mflops, timings_ms[t.name]))
    return fits[-1]  # kept tiers grow in accuracy with their timing


def format_tiers(tiers, timings_ms) -> str:
    """A table: tier, resolution, MFLOPs, top-1, timing here, dominated or not.

    An accuracy the job did not measure (NaN) shows ``n/a``, one the
    manifest lacks ``-``; a last line says when choices go by cost.
    """
    _, dominated = dominant_tiers(tiers, timings_ms)
    dominated = {t.name for t in dominated}
    lines = [f"{'tier':<14}{'res':>5}{'MFLOPs':>8}{'top1':>7}{'top5':>7}{'ms here':>9}  dominated"]
    for t in tiers:
        lines.append(
            f"{t.name:<14}{t.resolution:>5}{t.mflops:>8.2f}{_accuracy(t.top1)}"
            f"{_accuracy(t.top5)}{timings_ms[t.name]:>9.3f}  "
            f"{'yes' if t.name in dominated else 'no'}"
        )
    if any(math.isnan(t.top1) for t in tiers):
        lines.append(
            "top1 n/a: not measured (a job without validation data); a budget chooses by "
            "cost: the most MFLOPs within it"
        )
    return "\n".join(lines)


def _accuracy(value, width: int = 7) -> str:
    """A right-aligned accuracy cell: ``-`` if missing, ``n/a`` if NaN."""
    if value is None:
        return f"{'-':>{width}}"
    return f"{'n/a':>{width}}" if math.isnan(value) else f"{value:>{width}.3f}"


def _runtime() -> str:
    try:
        return f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
    except importlib.metadata.PackageNotFoundError:
        return "ai-edge-litert"


class OnDeviceChooser:
    """The tiers of a folder, timed on this device, and the choice per budget.

    Args:
        folder: a folder of converted tiers (`read_tiers` checks it).
        num_threads, warmup, repeats, clock: how to time them (`time_tiers`).
        timings_ms: cached ``{tier name: ms}`` from an earlier
            ``chooser.timings_ms`` on this device with the same files and
            threads; given, nothing is timed.

    Attributes:
        tiers: `TFLiteTier` per tier, cheapest first.
        timings_ms: ``{tier name: median ms}`` on this device.

    Raises:
        ValueError: as `read_tiers`, or if ``timings_ms`` misses a tier.
    """

    def __init__(
        self,
        folder: str,
        num_threads: int = 1,
        warmup: int = 5,
        repeats: int = 30,
        timings_ms: dict | None = None,
        clock=None,
    ):
        self.folder = folder
        self.num_threads = num_threads
        self.warmup = warmup
        self.repeats = repeats
        self.tiers = read_tiers(folder)
        self.timed_here = timings_ms is None
        if timings_ms is None:
            timings_ms = _time(self.tiers, num_threads, warmup, repeats, clock)
        self.timings_ms = _timings_of(self.tiers, timings_ms)

    def choose(self, budget_ms: float) -> TFLiteTier:
        """The tier to run within ``budget_ms`` (`choose_tier`)."""
        return choose_tier(self.tiers, self.timings_ms, budget_ms)

    def format_table(self) -> str:
        """The tiers' table (`format_tiers`) and where the timings come from."""
        if self.timed_here:
            cpu = machine.cpu_record()
            where = (
                f"batch 1, median of {self.repeats} after {self.warmup} warm-up invokes, "
                f"{self.num_threads} thread(s), {_runtime()}\n"
                f"machine: {cpu['cpu_model']}, {cpu['cores']} cores ({', '.join(cpu['isa'])})"
            )
        else:
            where = "given (cached), not timed here"
        return f"{format_tiers(self.tiers, self.timings_ms)}\nms here: {where}"
