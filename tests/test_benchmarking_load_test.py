"""The open-loop load generator (pss_keras.benchmarking.load_test): phases,
the Poisson schedule, run_timeline, idle latency; the timelines plot and
benchmarks/adaptive_serving.py end to end.

No server: `send` is a fake that records its calls, raises or sleeps. Every
timing assertion here is a lower bound that sleeping guarantees on any
machine (a request cannot be answered before the requests queued ahead of
it have slept), never a speed figure.
"""

import collections
import math
import struct
import threading
import time

import numpy as np
import pytest

from pss_keras.benchmarking import cpu_load, load_summary, load_test
from pss_keras.benchmarking.load_test import Phase, Request
from pss_keras.utils import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Recorder:
    """A fake transport: records every tier it is sent, in call order."""

    def __init__(self, fail=(), message="refused"):
        self.sent, self.fail, self.message = [], set(fail), message
        self.lock = threading.Lock()

    def __call__(self, tier):
        with self.lock:
            self.sent.append(tier)
        if tier in self.fail:
            raise RuntimeError(self.message)


def _counting_choose():
    """``choose()`` returning t0, t1, ... (each request a tier of its own)."""
    counter = iter(range(10**9))
    return lambda: f"t{next(counter)}"


@pytest.mark.parametrize(
    "seconds, rate, hogs, got",
    [(0, 1, 0, "0, 1, 0"), (1, 0, 0, "1, 0, 0"), (1, 1, -1, "1, 1, -1"),
     (float("nan"), 1, 0, "nan, 1, 0"), (-2.5, 3, 1, "-2.5, 3, 1")],
)  # fmt: skip
def test_phase_refuses_empty_or_negative_settings(seconds, rate, hogs, got):
    message = f"Phase 'bad' needs seconds > 0, rate > 0 and hogs >= 0, got {got}."
    with pytest.raises(ValueError) as e:
        Phase("bad", seconds, rate, hogs)
    assert str(e.value) == message


def test_phase_accepts_positive_settings_and_is_frozen():
    phase = Phase("ok", 0.5, 0.001, hogs=3)
    assert (phase.name, phase.seconds, phase.rate, phase.hogs) == ("ok", 0.5, 0.001, 3)
    assert Phase("no hogs", 1, 1).hogs == 0
    with pytest.raises(AttributeError):
        phase.rate = 2


def test_default_timeline_has_five_phases_with_the_rate_step():
    phases = load_test.default_timeline(12.0, 4.0, step=2.5)
    assert [p.name for p in phases] == [
        "idle", "1 busy process", "2 busy processes", "rate x2.5", "idle again"
    ]  # fmt: skip
    assert [p.hogs for p in phases] == [0, 1, 2, 0, 0]
    assert [p.rate for p in phases] == [4.0, 4.0, 4.0, 10.0, 4.0]
    assert [p.seconds for p in phases] == [12.0] * 5
    default = load_test.default_timeline(3.0, 5.0)
    assert default[3].name == "rate x2" and default[3].rate == 10.0
    assert [p.rate for p in default] == [5.0, 5.0, 5.0, 10.0, 5.0]


LONG = [Phase("fast", 10.0, 1000.0), Phase("slow", 10.0, 50.0), Phase("mid", 5.0, 200.0)]


def test_poisson_schedule_is_deterministic_per_seed():
    a, b = load_test.poisson_schedule(LONG, seed=3), load_test.poisson_schedule(LONG, seed=3)
    assert a == b
    other = load_test.poisson_schedule(LONG, seed=4)
    assert other != a
    assert load_test.poisson_schedule(LONG) == load_test.poisson_schedule(LONG, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_poisson_schedule_stays_in_its_phases_at_their_rates(seed):
    schedule = load_test.poisson_schedule(LONG, seed=seed)
    times = np.array([t for t, _ in schedule])
    index = np.array([i for _, i in schedule])
    assert np.all(np.diff(times) > 0)  # strictly increasing send times
    assert np.all(np.diff(index) >= 0)  # phases in order
    starts = np.cumsum([0.0] + [p.seconds for p in LONG])
    for i, phase in enumerate(LONG):
        mine = times[index == i]
        assert np.all(mine >= starts[i]) and np.all(mine < starts[i + 1])
        expected = phase.rate * phase.seconds
        # A Poisson count: standard deviation sqrt(n); 5 of them.
        assert abs(len(mine) - expected) < 5 * math.sqrt(expected), (i, len(mine))
        gaps = np.diff(mine)
        # Exponential gaps: the mean of n has standard deviation (1/rate)/sqrt(n).
        assert abs(gaps.mean() - 1 / phase.rate) < 5 / phase.rate / math.sqrt(len(gaps))


def test_poisson_schedule_of_a_rare_phase_can_be_empty():
    phases = [Phase("a", 0.2, 100), Phase("blink", 0.001, 0.001), Phase("c", 0.2, 100)]
    counts = collections.Counter(i for _, i in load_test.poisson_schedule(phases, seed=0))
    assert counts[1] == 0 and counts[0] > 5 and counts[2] > 5


def test_run_timeline_sends_every_scheduled_request_once_in_order():
    phases = [Phase("a", 0.15, 200), Phase("b", 0.15, 100)]
    schedule = load_test.poisson_schedule(phases, seed=5)
    send, observed = Recorder(), []
    requests = load_test.run_timeline(
        send, _counting_choose(), phases,
        observe=lambda ms, tier, failed: observed.append((ms, tier, failed)),
        seed=5, max_inflight=1,
    )  # fmt: skip
    n = len(schedule)
    assert n > 20
    assert [(r.scheduled, r.phase) for r in requests] == schedule
    # choose() ran once per request, in send order; each tier went to send once.
    assert [r.tier for r in requests] == [f"t{k}" for k in range(n)]
    assert send.sent == [f"t{k}" for k in range(n)]  # one client thread: in order
    assert all(r.error is None for r in requests)
    # observe saw every request's latency with its tier.
    assert observed == [(r.latency_ms, r.tier, False) for r in requests]
    for r in requests:
        assert r.send_lag_ms >= -1e-6  # never sent before it was due
        assert r.latency_ms >= r.send_lag_ms


def test_run_timeline_with_many_threads_still_sends_each_request_once():
    phases = [Phase("a", 0.2, 300)]
    send = Recorder()
    requests = load_test.run_timeline(send, _counting_choose(), phases, seed=2, max_inflight=8)
    assert len(requests) == len(load_test.poisson_schedule(phases, seed=2)) > 30
    assert sorted(send.sent) == sorted(r.tier for r in requests)
    assert len(set(send.sent)) == len(send.sent)
    assert all(not math.isnan(r.latency_ms) for r in requests)


def test_choose_is_asked_at_each_requests_send_time():
    """choose() runs when the request is due, not when it is scheduled, so
    a policy's current tier (changed by observe) is what gets sent."""
    phases = [Phase("a", 0.3, 100)]
    now = time.perf_counter
    begun = []

    def clock():
        t = now()
        if not begun:
            begun.append(t)  # run_timeline reads the clock first for its start
        return t

    asked = []

    def choose():
        asked.append(now() - begun[0])
        return "x"

    requests = load_test.run_timeline(Recorder(), choose, phases, seed=1, clock=clock)
    assert len(asked) == len(requests) > 10
    for at, r in zip(asked, requests):
        assert at >= r.scheduled - 1e-6


def test_on_phase_runs_once_per_phase_in_order_even_for_an_empty_phase():
    phases = [Phase("a", 0.2, 100), Phase("blink", 0.001, 0.001, hogs=2), Phase("c", 0.2, 100)]
    counts = collections.Counter(i for _, i in load_test.poisson_schedule(phases, seed=0))
    assert counts[1] == 0  # the middle phase gets no request
    events = []
    requests = load_test.run_timeline(
        Recorder(), lambda: events.append("choose") or "x", phases,
        on_phase=lambda p: events.append(p.name), seed=0,
    )  # fmt: skip
    assert [e for e in events if e != "choose"] == ["a", "blink", "c"]
    # Each phase is announced before the first request of that phase is chosen.
    assert events.index("a") == 0
    assert events.index("blink") == events.index("c") - 1 == counts[0] + 1
    assert events.count("choose") == len(requests) == counts[0] + counts[2]


def test_failures_are_recorded_timed_and_observed():
    phases = [Phase("a", 0.2, 150)]
    tiers = iter(range(10**9))
    choose = lambda: ("ok", "bad")[next(tiers) % 2]  # noqa: E731
    send = Recorder(fail={"bad"}, message="server said no\nsecond line\nthird")
    observed = []
    requests = load_test.run_timeline(
        send,
        choose,
        phases,
        seed=4,
        observe=lambda ms, tier, failed: observed.append((ms, tier, failed)),
    )
    assert len(requests) > 10
    assert [r.tier for r in requests] == [("ok", "bad")[k % 2] for k in range(len(requests))]
    for r in requests:
        assert r.error == (None if r.tier == "ok" else "server said no")  # first line only
        assert not math.isnan(r.latency_ms) and r.latency_ms >= r.send_lag_ms
    assert sorted(observed) == sorted((r.latency_ms, r.tier, r.error is not None) for r in requests)
    assert sum(tier == "bad" and failed for _, tier, failed in observed) == len(requests) // 2
    assert not any(failed for _, tier, failed in observed if tier != "bad")


@pytest.mark.parametrize(
    "error, recorded",
    [(KeyError(), "KeyError()"), (RuntimeError("x" * 500), "x" * 200),
     (TimeoutError("deadline exceeded"), "deadline exceeded")],
)  # fmt: skip
def test_failure_messages_are_one_short_line(error, recorded):
    def send(tier):
        raise error

    requests = load_test.run_timeline(send, lambda: "t", [Phase("a", 0.05, 200)], seed=0)
    assert requests and all(r.error == recorded for r in requests)


def test_latency_runs_from_the_scheduled_time_not_the_send():
    """Coordinated omission: ~90 requests due within 0.1 s, one client
    thread, each answer taking 10 ms. The k-th request cannot be answered
    before (k+1) x 10 ms, so its latency is at least that less its
    scheduled time, however fast the machine; a closed-loop generator would
    report about 10 ms for every one."""
    phases = [Phase("burst", 0.1, 1000)]
    service_ms = []

    def send(tier):
        t = time.perf_counter()
        time.sleep(0.010)
        service_ms.append(1000 * (time.perf_counter() - t))

    requests = load_test.run_timeline(send, lambda: "t", phases, seed=0, max_inflight=1)
    n = len(requests)
    assert n > 60
    for k, r in enumerate(requests):
        assert r.latency_ms >= 10 * (k + 1) - 1000 * r.scheduled - 1, k
        # ... and it waited in the client for the k requests ahead of it:
        # queueing (queue_ms), not the generator's lateness (send_lag_ms).
        assert r.send_lag_ms + r.queue_ms >= 10 * k - 1000 * r.scheduled - 1, k
    assert np.median([r.queue_ms for r in requests]) > 5 * np.median(
        [r.send_lag_ms for r in requests]
    )
    latency = np.array([r.latency_ms for r in requests])
    # The median request is ~n/2 x 10 ms late, far above one answer's 10 ms.
    assert np.median(latency) > 20 * np.median(service_ms)
    assert latency[-1] >= 10 * n - 100 - 1
    summary = load_summary.summarize(requests, phases, objective_ms=50.0, top1={"t": 1.0})
    # Only the first few requests can be within 50 ms: (k+1) x 10 - 1000 x t <= 50.
    assert summary["phases"][0]["within_objective"] < 0.25


def test_max_requests_refuses_a_long_timeline_before_sending():
    phases = [Phase("a", 1.0, 100)]
    n = len(load_test.poisson_schedule(phases, seed=0))
    send = Recorder()
    message = (
        f"The timeline would send {n} requests, more than max_requests=10; "
        "shorten the phases or lower the rate."
    )
    with pytest.raises(ValueError) as e:
        load_test.run_timeline(send, lambda: "t", phases, max_requests=10, seed=0)
    assert str(e.value) == message
    assert send.sent == []
    # Exactly at the limit it runs.
    short = [Phase("a", 0.1, 100)]
    m = len(load_test.poisson_schedule(short, seed=0))
    assert len(load_test.run_timeline(send, lambda: "t", short, max_requests=m, seed=0)) == m


def test_progress_reports_every_50_requests_and_the_end():
    phases = [Phase("a", 0.25, 500)]
    calls = []
    requests = load_test.run_timeline(
        Recorder(), lambda: "t", phases, seed=0, progress=lambda d, t: calls.append((d, t))
    )
    n = len(requests)
    assert n > 100
    assert calls == [(k, n) for k in range(0, n, 50)] + [(n, n)]


def test_stop_when_ends_the_timeline_at_a_phase_end():
    """stop_when runs at each phase end with what was sent so far; True
    stops there: later phases neither start nor send."""
    phases = [Phase("a", 0.15, 200), Phase("b", 0.15, 200), Phase("c", 0.15, 200)]
    schedule = load_test.poisson_schedule(phases, seed=3)
    counts = collections.Counter(i for _, i in schedule)
    asked, started = [], []

    def stop_when(ended, requests, now):
        asked.append((ended, len(requests), now))
        return ended == 1

    send = Recorder()
    requests = load_test.run_timeline(
        send, lambda: "t", phases, seed=3, stop_when=stop_when,
        on_phase=lambda p: started.append(p.name),
    )  # fmt: skip
    assert started == ["a", "b"]  # c never started
    assert len(requests) == len(send.sent) == counts[0] + counts[1]
    assert [(r.scheduled, r.phase) for r in requests] == schedule[: len(requests)]
    assert all(not math.isnan(r.latency_ms) for r in requests)  # every sent one answered
    assert [(e, n) for e, n, _ in asked] == [(0, counts[0]), (1, counts[0] + counts[1])]
    assert asked[0][2] >= 0.15 - 1e-3 and asked[1][2] >= 0.30 - 1e-3  # at the phase ends
    # Never stopping runs it all.
    assert len(load_test.run_timeline(Recorder(), lambda: "t", phases, seed=3,
                                      stop_when=lambda *a: False)) == len(schedule)  # fmt: skip


def test_idle_latency_is_the_median_after_warm_up_interleaving_tiers(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(load_test.time, "perf_counter", lambda: clock[0])
    # Seconds per call, per tier: two warm-up calls of 100 s, then the timed ones.
    durations = {"a": [100, 100, 0.001, 0.005, 0.003], "b": [100, 100, 0.002, 0.009, 0.002]}
    calls = []

    def send(name):
        calls.append(name)
        clock[0] += durations[name].pop(0)

    result = load_test.idle_latency_ms(send, ["a", "b"], repeats=3, warmup=2)
    assert result == {"a": pytest.approx(3.0), "b": pytest.approx(2.0)}
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3  # warm-up, then interleaved
    assert durations == {"a": [], "b": []}


def test_idle_latency_defaults_and_real_clock():
    sent = collections.Counter()
    result = load_test.idle_latency_ms(lambda name: sent.update([name]), ["x", "y", "z"])
    assert sent == {"x": 55, "y": 55, "z": 55}  # 5 warm-up + 50 timed each
    assert set(result) == {"x", "y", "z"} and all(v >= 0 for v in result.values())


def test_plot_load_timelines_writes_a_png(tmp_path):
    phases = load_test.default_timeline(1.0, 4.0)
    fixed = [Request(0.1 + 0.4 * k, k // 3, "small", latency_ms=2.0 + k) for k in range(12)]
    adaptive = [Request(0.2 + 0.4 * k, k // 3, ("small", "large")[k % 2], 5.0) for k in range(12)]
    adaptive[4].error, adaptive[4].latency_ms = "deadline exceeded", 5000.0
    path = tmp_path / "out" / "timelines.png"
    path.parent.mkdir()
    returned = plots.plot_load_timelines(
        {"fixed_smallest": fixed, "adaptive": adaptive}, phases, ["small", "large"], 10.0,
        str(path), title="two policies",
    )  # fmt: skip
    assert returned == str(path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    # figsize (9, 1.9 x 2 panels + 0.8) at 110 dpi.
    assert width == 990 and abs(height - 506) <= 1
    assert [p.name for p in path.parent.iterdir()] == ["timelines.png"]  # no temp file left


def test_on_phase_reaches_a_trailing_empty_phase():
    phases = [Phase("a", 0.2, 100), Phase("blink", 0.001, 0.001)]
    assert all(i == 0 for _, i in load_test.poisson_schedule(phases, seed=0))
    names = []
    load_test.run_timeline(Recorder(), lambda: "t", phases, on_phase=lambda p: names.append(p.name))
    assert names == ["a", "blink"]


def test_on_phase_waits_for_the_phase_start():
    """Phase b starts at 1.0 s; with seed 4 phase a gets no request, so
    on_phase(b) (starting a competing process) runs at once, a second early."""
    phases = [Phase("a", 1.0, 2), Phase("b", 0.3, 20, hogs=1)]
    schedule = load_test.poisson_schedule(phases, seed=4)
    assert [i for _, i in schedule].count(0) == 0 and len(schedule) > 2
    now, begun, called = time.perf_counter, [], {}

    def clock():
        t = now()
        if not begun:
            begun.append(t)
        return t

    load_test.run_timeline(
        Recorder(), lambda: "t", phases, seed=4, clock=clock,
        on_phase=lambda p: called.setdefault(p.name, now() - begun[0]),
    )  # fmt: skip
    assert called["b"] >= 1.0 - 1e-3


def test_an_error_with_an_empty_first_line_earns_no_accuracy():
    def send(tier):
        raise RuntimeError("\nthe reason on line two")

    phases = [Phase("a", 0.05, 200)]
    requests = load_test.run_timeline(send, lambda: "t", phases, seed=0)
    summary = load_summary.summarize(requests, phases, objective_ms=1e6, top1={"t": 0.9})
    assert summary["phases"][0]["errors"] == len(requests) > 0
    assert summary["overall"]["within_objective"] == 0.0
    assert summary["overall"]["mean_top1"] == 0.0  # failures credit 0 ...
    assert all(r.error for r in requests)  # ... and are drawn as failed (plots test `if r.error`)


def test_a_failing_observe_is_raised_not_hung():
    """An exception in observe (a policy's bug) ends the timeline with that
    exception instead of waiting forever for its request."""

    def observe(ms, tier, failed):
        raise ZeroDivisionError("policy bug")

    phases = [Phase("a", 0.05, 200)]
    outcome = []

    def run():
        try:
            load_test.run_timeline(Recorder(), lambda: "t", phases, observe=observe)
        except ZeroDivisionError as e:
            outcome.append(str(e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and outcome == ["policy bug"]


@pytest.mark.heavy
def test_the_benchmark_runs_end_to_end(tmp_path, run_script):
    """benchmarks/adaptive_serving.py on a tiny random export (3 tiers), with
    one-second phases: every output field is there and consistent."""
    import json

    from pss_keras.testing import synthetic_job

    job = tmp_path / "job"
    synthetic_job.write(str(job))
    out = tmp_path / "adaptive.json"
    policies = ["fixed_smallest", "best_fixed", "adaptive", "median5"]
    result = run_script(
        "benchmarks/adaptive_serving.py", f"--job_dir={job}", "--server=standin",
        "--phase_seconds=1", "--calibration_seconds=1", "--repeats=2", "--rate=15",
        f"--policies={','.join(policies)}", f"--output={out}",
        f"--requests_output={tmp_path / 'requests.csv'}", "--request_size=tier", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    # Each tier got images at its own resolution (the synthetic job's differ).
    assert record["request_size"] == "tier"
    assert len({t["resolution"] for t in record["tiers"]}) > 1
    for t in record["tiers"]:
        assert f"{t['name']} {t['resolution']}" in record["request_image"]
    assert record["machine"]["cores"] >= 1 and record["rate"] == 15
    assert record["server"].startswith("stand-in") and record["export"]["mode"] == "shared"
    cpus = record["cpus"]  # --server_cpus=auto: the generator gets the last CPU to itself
    server, client = cpu_load.split_cpus("auto")
    assert (cpus["server_and_busy_processes"], cpus["load_generator"]) == (server, client)
    n = len(server) if server else 1
    assert cpus["busy_processes"] == [0, n, 2 * n, 0, 0]
    if server:
        assert record["server"].endswith(f"pinned to CPUs {server}")
    tiers = record["tiers"]
    assert len(tiers) == 3 and all(t["idle_ms"] > 0 and 0 <= t["top1"] <= 1 for t in tiers)
    assert record["objective_ms"] > 0 and record["calibration"]["best_fixed"] in {
        t["name"] for t in tiers
    }
    assert list(record["policies"]) == policies
    names = [p["name"] for p in record["timeline"]]
    assert names == ["idle", "1 busy process", "2 busy processes", "rate x2", "idle again"]
    top1 = {t["name"]: t["top1"] for t in tiers}
    kept = [t for t in tiers if not t["dominated"]]
    smallest = min(kept, key=lambda t: t["idle_ms"])["name"]
    for policy, r in record["policies"].items():
        assert r["repeats"] == 2 and [p["name"] for p in r["phases"]] == names
        total = 0
        for phase in r["phases"]:
            for key in ("within_objective", "p50_ms", "p99_ms", "mean_top1", "switches"):
                lo, hi = phase[f"{key}_spread"]
                assert lo - 1e-9 <= phase[key] <= hi + 1e-9
            assert phase["p50_ms"] <= phase["p95_ms"] <= phase["p99_ms"]
            total += sum(phase["tiers"].values())
        assert total == 2 * r["overall"]["requests"]  # tiers sum over both repeats
        assert 0 <= r["overall"]["within_objective"] <= 1
        # Credited only within the objective, a policy never earns more.
        assert r["overall"]["mean_top1_in_time"] <= r["overall"]["mean_top1"] + 1e-9
        assert "gap_closed" in r["overall"]
        if policy == "fixed_smallest":
            assert all(set(p["tiers"]) == {smallest} for p in r["phases"])
            assert all(p["switches"] == 0 for p in r["phases"])
            assert r["overall"]["mean_top1"] <= top1[smallest] + 1e-9
    # The full calibration ran every tier through every phase; the oracle
    # takes, per phase, the most accurate tier that held the objective.
    calibration = record["calibration"]
    assert calibration["full"] is True
    assert set(calibration["within_objective"]) == {t["name"] for t in kept}
    assert all(None not in v for v in calibration["within_objective"].values())
    oracle = record["oracle"]
    assert [row["name"] for row in oracle["phases"]] == names
    for i, row in enumerate(oracle["phases"]):
        held = [n for n, w in calibration["within_objective"].items() if w[i] >= 0.99]
        assert row["tier"] == (max(held, key=top1.get) if held else None)
    # The adapting policies' own moves and shed requests, per repeat.
    assert record["adaptive"]["queueing"] is True and record["adaptive"]["backlog"] == 1.5
    assert record["adaptive"]["percentile"] == 99 and record["adaptive"]["window"] == 100
    assert set(record["policy_moves"]) == {"adaptive", "median5"}
    for moves in record["policy_moves"].values():
        assert len(moves) == 2
        assert all(m["switches"] >= 0 and m["shed"] >= 0 for m in moves)
    assert all(m["shed"] == 0 for m in record["policy_moves"]["median5"])
    assert (tmp_path / "adaptive.png").read_bytes()[:8] == PNG_SIGNATURE
    import csv

    with open(tmp_path / "requests.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "policy", "repeat", "phase", "scheduled_s", "tier", "latency_ms", "send_lag_ms",
        "queue_ms", "error",
    ]  # fmt: skip
    for policy, r in record["policies"].items():
        mine = [row for row in rows if row["policy"] == policy]
        assert len(mine) == 2 * r["overall"]["requests"]
        assert {row["repeat"] for row in mine} == {"1", "2"}
        assert {row["phase"] for row in mine} <= set(names)
    # Calibration ran the largest and the cheapest tier, and the others most
    # accurate first down to best_fixed; the rest were not run.
    calibration = {row["policy"] for row in rows if row["policy"] not in policies}
    calib = record["calibration"]
    ran = set(calib["within_objective"])
    assert calibration == {f"calibration {name}" for name in ran}
    best = calib["best_fixed"]
    largest = max(kept, key=lambda t: t["idle_ms"])["name"]
    assert {largest, smallest, best} <= ran
    assert ran | set(calib["not_calibrated"]) == {t["name"] for t in kept}
    assert all(top1[n] < top1[best] for n in calib["not_calibrated"])
    assert calib["phase_seconds"] == 1
    assert "within the objective" in result.stdout and "machine: " in result.stdout


def test_the_benchmark_refuses_bad_settings_in_one_line(tmp_path, run_script):
    result = run_script("benchmarks/adaptive_serving.py", "--policies=fixed_largest,bogus")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --policies has unknown ['bogus']; use some of fixed_largest, fixed_smallest, "
        "best_fixed, adaptive, median5."
    )
    result = run_script("benchmarks/adaptive_serving.py", "--job_dir=x", "--backlog=-1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the adaptive policy's settings (--percentile, --window, --headroom, --backlog): "
        "backlog must be positive (or 0: off), got -1.0."
    )
    result = run_script("benchmarks/adaptive_serving.py", f"--job_dir={tmp_path / 'none'}")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(tmp_path / "none") in last


def test_held_out_timeline_differs_from_the_tuning_one():
    tuning = load_test.default_timeline(30.0, 4.0)
    held = load_test.held_out_timeline(30.0, 4.0, long_seconds=100.0)
    assert [(p.name, p.seconds, p.rate, p.hogs) for p in held] == [
        ("1 busy process", 30.0, 4.0, 1), ("3 busy processes", 30.0, 4.0, 3),
        ("idle, long", 100.0, 4.0, 0), ("rate x1.5", 30.0, 6.0, 0),
        ("2 busy processes", 30.0, 4.0, 2),
    ]  # fmt: skip
    # Three busy processes and a rate of 1.5x: load the tuning timeline never had.
    assert max(p.hogs for p in tuning) == 2 and {p.rate for p in tuning} == {4.0, 8.0}
