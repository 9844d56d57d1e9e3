"""The adaptive serving benchmark's timeline replayed on a modelled server,
in seconds: for developing a tier policy between real runs.

    python benchmarks/simulate_adaptive.py
    python benchmarks/simulate_adaptive.py --results=docs/results/adaptive_serving.json \
        --timeline=held_out --repeats=5 --output=/tmp/simulated.json

1. Reads a result of `benchmarks/adaptive_serving.py` (--results): the
   tiers with their idle latency and top-1, the objective, the rate, the
   timeline, the calibration (each tier's share within the objective per
   phase) and the adaptive policy's settings.
2. Fits the server model (`pss_keras.benchmarking.load_simulation.ServerModel`:
   one FIFO server thread, busy processes slowing it, lognormal spread) to
   that calibration, and prints how close it came; or takes
   --server_share, --hog_factor, --sigma as given.
3. Replays fixed_largest, fixed_smallest, best_fixed and adaptive on
   --timeline (the result's own, or held_out), --repeats arrival schedules
   (seeds 0..repeats-1: not the benchmark's own repeats' schedules),
   scored as the benchmark scores them (both accounting rules, the
   per-phase oracle, gap_closed); prints the table; --output writes it as
   JSON.

A simulation is no evidence for a policy: the real benchmark is. It says
where a policy loses accuracy or misses, in seconds.
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string(
    "results", os.path.join(ROOT, "docs", "results", "adaptive_serving.json"),
    "A result of benchmarks/adaptive_serving.py: tiers, objective, rate, calibration.",
)  # fmt: skip
flags.DEFINE_enum(
    "timeline", "same", ["same", "default", "held_out"],
    "same: the result's own timeline; default / held_out: as the benchmark's --timeline, "
    "with --phase_seconds.",
)  # fmt: skip
flags.DEFINE_float("phase_seconds", None, "Phase length (default: the result's).", 1.0)
flags.DEFINE_float("long_seconds", 100.0, "held_out: seconds of its long idle phase.", 1.0)
flags.DEFINE_integer("repeats", 5, "Arrival schedules (seeds 0..repeats-1).", lower_bound=1)
flags.DEFINE_float("server_share", None, "Server model (default: fitted to the calibration).")
flags.DEFINE_float("hog_factor", None, "Server model (default: fitted).")
flags.DEFINE_float("sigma", None, "Server model (default: fitted).")
flags.DEFINE_float("percentile", None, "adaptive (default: the result's setting).")
flags.DEFINE_float("headroom", None, "adaptive (default: the result's setting).")
flags.DEFINE_float("backlog", None, "adaptive (default: the result's setting); 0: off.")
flags.DEFINE_string("output", None, "Also write the table as JSON here.")
F = flags.FLAGS


def _load(path):
    try:
        with open(path) as f:
            record = json.load(f)
        keys = ("tiers", "objective_ms", "rate", "timeline", "calibration", "adaptive")
        missing = [k for k in keys if k not in record]
        if missing:
            raise ValueError(f"it lacks {missing}")
        return record
    except (OSError, ValueError) as e:
        sys.exit(
            f"error: --results={path}: {e}; give a JSON written by benchmarks/adaptive_serving.py."
        )


def _table(result, phases) -> str:
    lines = [f"{'policy':<15}" + "".join(f"{p.name[:16]:>18}" for p in phases)]
    lines[0] += f"{'top1 all':>10}{'in time':>9}{'gap':>7}"
    for name, r in result["policies"].items():
        cells = [
            f"{100 * row['within_objective']:>7.1f}% ({100 * row['within_objective_spread'][0]:.1f})"
            for row in r["phases"]
        ]  # fmt: skip
        o = r["overall"]
        gap = "-" if o["gap_closed"] is None else f"{o['gap_closed']:.2f}"
        lines.append(
            f"{name:<15}" + "".join(f"{c:>18}" for c in cells)
            + f"{o['mean_top1']:>10.4f}{o['mean_top1_in_time']:>9.4f}{gap:>7}"
        )  # fmt: skip
    oracle = result["oracle"]
    cells = [f"{row['tier'] or 'none held'}"[:16] for row in oracle["phases"]]
    total = oracle["overall"]["mean_top1_in_time"]
    lines.append(f"{'oracle':<15}" + "".join(f"{c:>18}" for c in cells) + f"{'':>10}{total:>9.4f}")
    lines.append(
        "(share within the objective per phase: mean (lowest) over the schedules; top-1 "
        f"credited for every answer / in time; gap: from best_fixed ({result['best_fixed']}, 0) "
        "to the oracle (1))"
    )
    return "\n".join(lines)


def _tiers(record):
    from pss_keras import serving

    tiers = [
        serving.Tier(t["name"], "flops", None, t["mflops"], None, t["resolution"], t["top1"],
                     t["idle_ms"])
        for t in record["tiers"] if not t.get("dominated")
    ]  # fmt: skip
    return sorted(tiers, key=lambda t: t.latency_ms)


def _model(record, measured, costs):
    """The server model: given by the flags, or fitted to the calibration."""
    from pss_keras.benchmarking import load_simulation

    given = (F.server_share, F.hog_factor, F.sigma)
    if all(v is not None for v in given):
        model = load_simulation.ServerModel(*given)
        print(f"server model (given): {model}")
        return model
    if any(v is not None for v in given):
        sys.exit("error: give all of --server_share, --hog_factor, --sigma, or none (fitted).")
    calibration = record["calibration"]
    calib = [dataclasses.replace(p, seconds=calibration["phase_seconds"]) for p in measured]
    print("fitting the server model to the calibration (75 candidates) ...", flush=True)
    model, rms = load_simulation.fit_server_model(
        calibration["within_objective"], calib, costs, record["objective_ms"]
    )
    print(f"server model: {model}; rms {100 * rms:.1f} points of within-objective share")
    return model


def _phases(measured, rate):
    from pss_keras.benchmarking import load_test

    seconds = F.phase_seconds or measured[0].seconds
    if F.timeline == "held_out":
        return load_test.held_out_timeline(seconds, rate, F.long_seconds)
    if F.timeline == "default":
        return load_test.default_timeline(seconds, rate)
    return [dataclasses.replace(p, seconds=F.phase_seconds or p.seconds) for p in measured]


def _settings(record) -> dict:
    """The adaptive policy's settings: the result's, with the flags given."""
    settings = dict(record["adaptive"])
    if F.percentile is not None and F.percentile != settings.get("percentile"):
        settings["window"] = None  # the new percentile's own default window
    for key in ("percentile", "headroom", "backlog"):
        if getattr(F, key) is not None:
            settings[key] = getattr(F, key)
    settings["backlog"] = settings.get("backlog") or None
    return settings


def main(argv):
    del argv
    from pss_keras import serving
    from pss_keras.benchmarking import load_simulation, load_test
    from pss_keras.utils import timing
    from pss_keras.utils.machine import print_machine

    record = _load(F.results)
    tiers = _tiers(record)
    objective, rate = record["objective_ms"], record["rate"]
    measured = [load_test.Phase(**p) for p in record["timeline"]]
    model = _model(record, measured, {t.name: t.latency_ms for t in tiers})
    phases = _phases(measured, rate)
    settings = _settings(record)
    try:
        serving.AdaptiveTierPolicy(tiers, objective, latency_source="measured", **settings)
    except ValueError as e:
        sys.exit(
            f"error: the adaptive policy's settings (--percentile, --headroom, --backlog): {e}"
        )

    def adaptive(clock):
        p = serving.AdaptiveTierPolicy(
            tiers, objective, latency_source="measured", clock=clock, **settings
        )
        return (lambda: p.choose().name), p.observe

    def fixed(name):
        return lambda clock: ((lambda: name), None)

    policies = {"fixed_largest": fixed(tiers[-1].name), "fixed_smallest": fixed(tiers[0].name)}
    result = load_simulation.compare_policies(
        {**policies, "adaptive": adaptive}, phases, tiers, objective, model,
        seeds=range(F.repeats),
    )  # fmt: skip
    best = result["alone"][result["best_fixed"]]
    best["overall"]["gap_closed"] = 0.0
    ordered = ("fixed_largest", "fixed_smallest", "best_fixed", "adaptive")
    result["policies"] = {n: best if n == "best_fixed" else result["policies"][n] for n in ordered}
    print(f"objective {objective:.1f} ms, rate {rate:.2f}/s, adaptive {settings}")
    print(_table(result, phases))
    out = {
        "command": " ".join(["python", "benchmarks/simulate_adaptive.py", *sys.argv[1:]]),
        "results": F.results,
        "model": dataclasses.asdict(model),
        "adaptive": settings,
        "timeline": [dataclasses.asdict(p) for p in phases],
        "repeats": F.repeats,
        **{k: result[k] for k in ("policies", "oracle", "best_fixed")},
    }
    if F.output:
        timing.write_benchmark(F.output, out)
    else:
        print_machine()


if __name__ == "__main__":
    app.run(main)
