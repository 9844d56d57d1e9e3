"""Served tiers under real, changing load: open-loop requests, competing processes, phases.

The pieces of ``benchmarks/adaptive_serving.py``, which shows that a tier
policy holds a latency objective while the machine's free CPU changes:

- `Phase` / `default_timeline`: a scripted timeline (idle, one competing
  CPU-bound process, two, a request-rate step, idle again).
- `CpuHogs`: the competing processes, real busy-looping interpreters,
  started and stopped as the timeline says.
- `run_timeline`: an **open-loop** load generator. Requests are scheduled
  in advance at the phase's rate (Poisson arrivals), sent at their
  scheduled time whatever the server is doing, and each latency runs from
  the *scheduled* time to the answer: a slow server cannot hide its queue
  by slowing the sender down (coordinated omission). How late the
  generator itself sends is recorded (it shares the CPU), and timeouts and
  errors count as misses.
- `summarize` / `best_fixed_tier`: per-phase figures (requests within the
  objective, percentiles, accuracy delivered, tier switches) and the best
  single tier a calibration pass finds.

Nothing here reads flags or imports training code.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np

# Share of requests that must be within the objective for a phase to meet it.
MEETS = 0.99


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of the timeline.

    Attributes:
        name: shown in tables and plots.
        seconds: how long it lasts.
        rate: requests per second (Poisson arrivals).
        hogs: competing CPU-bound processes running during it.
    """

    name: str
    seconds: float
    rate: float
    hogs: int = 0

    def __post_init__(self):
        if not self.seconds > 0 or not self.rate > 0 or self.hogs < 0:
            raise ValueError(
                f"Phase {self.name!r} needs seconds > 0, rate > 0 and hogs >= 0, got "
                f"{self.seconds}, {self.rate}, {self.hogs}."
            )


def default_timeline(seconds: float, rate: float, step: float = 2.0) -> list[Phase]:
    """Idle; 1 competing process; 2; the rate times ``step`` on an idle
    machine; idle again. ``seconds`` per phase."""
    return [
        Phase("idle", seconds, rate),
        Phase("1 busy process", seconds, rate, hogs=1),
        Phase("2 busy processes", seconds, rate, hogs=2),
        Phase(f"rate x{step:g}", seconds, rate * step),
        Phase("idle again", seconds, rate),
    ]


# Busy-loops, and exits once its parent is gone (a benchmark killed by
# SIGKILL must not leave busy processes behind).
_HOG = """
import os, sys
parent = int(sys.argv[1])  # given, not read: the parent may be gone before this runs
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


def split_cpus(server_cpus="auto") -> tuple[list[int] | None, list[int] | None]:
    """The CPUs of the server (and the processes competing with it) and of
    the load generator, from the CPUs this process may use.

    Args:
        server_cpus: ``"auto"``: every CPU but the last, which the load
            generator gets to itself (a client on another machine, as in
            production: its own lateness then cannot pass for the server's);
            ``"none"``: no pinning, all share every CPU; or the server's CPUs
            as ``"1"``, ``"0-2"``, ``"0,2-3"`` (the generator gets the rest,
            or shares them when none is left).

    Returns:
        ``(server, client)`` sorted CPU lists, ``(None, None)`` for no
        pinning (also ``"auto"`` on one CPU or where the OS has no CPU
        affinity).

    Raises:
        ValueError: a list that cannot be read, or names CPUs this process
            may not use.
    """
    text = str(server_cpus).strip().lower()
    if text == "none" or not hasattr(os, "sched_getaffinity"):
        if text not in ("none", "auto"):
            raise ValueError("CPU pinning needs Linux (os.sched_setaffinity); use 'none'.")
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if text == "auto":
        if len(allowed) < 2:
            return None, None
        return allowed[:-1], allowed[-1:]
    cpus = set()
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        lo, hi = (int(match[1]), int(match[2] or match[1])) if match else (1, 0)
        if hi < lo:
            raise ValueError(
                f"server CPUs {server_cpus!r} is not 'auto', 'none' or a list such as '1' or "
                "'0-2,4'."
            )
        cpus.update(range(lo, hi + 1))
    missing = sorted(cpus - set(allowed))
    if missing:
        raise ValueError(
            f"server CPUs {server_cpus!r} names CPUs {missing} this process may not use; it "
            f"may use {allowed}."
        )
    rest = [c for c in allowed if c not in cpus]
    return sorted(cpus), rest or sorted(cpus)


def pin_to(cpus):
    """A ``preexec_fn`` that pins a child process to ``cpus`` before it
    runs (threads it starts inherit the set); None when ``cpus`` is None."""
    if cpus is None:
        return None
    cpus = frozenset(cpus)
    return lambda: os.sched_setaffinity(0, cpus)


class CpuHogs:
    """Competing CPU-bound processes (each a busy-looping Python interpreter).

    ``set(n)`` starts or stops processes until ``n`` run; `close` (also on
    leaving a ``with`` block) stops them all. Each is a process of its own,
    so the OS shares the cores between it, the server and the clients as it
    would with any other busy program; ``cpus`` pins them to the server's
    CPUs (see `split_cpus`), so they take CPU from the server only.
    """

    def __init__(self, cpus=None):
        self._procs = []
        self.cpus = None if cpus is None else sorted(cpus)

    def set(self, n: int) -> None:
        while len(self._procs) < n:
            self._procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _HOG, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    preexec_fn=pin_to(self.cpus),
                )
            )
        while len(self._procs) > n:
            _stop(self._procs.pop())

    @property
    def running(self) -> int:
        return sum(p.poll() is None for p in self._procs)

    def close(self) -> None:
        self.set(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def poisson_schedule(phases, seed: int = 0) -> list[tuple[float, int]]:
    """Send times (seconds from the start) and phase index of every request:
    exponential gaps at each phase's rate, within the phase."""
    rng = np.random.default_rng(seed)
    schedule, start = [], 0.0
    for i, phase in enumerate(phases):
        t = start + rng.exponential(1 / phase.rate)
        while t < start + phase.seconds:
            schedule.append((t, i))
            t += rng.exponential(1 / phase.rate)
        start += phase.seconds
    return schedule


@dataclasses.dataclass
class Request:
    """One request of a timeline.

    Attributes:
        scheduled: when it was due (seconds from the start).
        phase: index of its phase.
        tier: the tier it asked for.
        latency_ms: from ``scheduled`` to the answer (or the failure).
        send_lag_ms: from ``scheduled`` to the moment the generator handed
            it to the client's threads (the generator's own lateness: it
            shares the CPU).
        queue_ms: from that hand-over to the moment a client thread sent it
            (all threads busy with earlier requests: a slow server).
        error: why it failed (None when answered).
    """

    scheduled: float
    phase: int
    tier: str
    latency_ms: float = float("nan")
    send_lag_ms: float = float("nan")
    queue_ms: float = float("nan")
    error: str | None = None


def run_timeline(
    send,
    choose,
    phases,
    observe=None,
    on_phase=None,
    seed: int = 0,
    max_inflight: int = 16,
    max_requests: int = 100_000,
    clock=time.perf_counter,
    progress=None,
    stop_when=None,
) -> list[Request]:
    """Drives one timeline open-loop; returns every request sent, in send order.

    Args:
        send: ``send(tier_name) -> None``, one request (raises on failure;
            a timeout is the transport's).
        choose: ``choose() -> tier name`` for the next request (a fixed
            tier, or a policy's current tier).
        phases: the `Phase` list.
        observe: ``observe(latency_ms, tier_name, failed=...)`` after each
            request (failures included, with their elapsed time and
            ``failed=True``), e.g. a policy's.
        on_phase: ``on_phase(phase)`` when a phase starts (starts and stops
            the competing processes).
        seed: the arrival schedule's seed (the same for every policy).
        max_inflight: client threads; more requests due than threads wait
            in the client, and that wait is part of their latency.
        max_requests: refuses a timeline that would send more.
        clock: seconds.
        progress: ``progress(done, total)`` now and then (a progress bar).
        stop_when: ``stop_when(ended, requests, now) -> bool`` when a phase
            ends (``ended``: its index; ``requests``: those sent so far,
            the ones still in flight with a nan latency; ``now``: seconds
            since the start). True ends the timeline there: the later
            phases do not start and their requests are neither sent nor
            returned (a calibration that already knows its tier fails,
            see `phase_missed`).

    Raises:
        ValueError: if the schedule holds more than ``max_requests``.
    """
    schedule = poisson_schedule(phases, seed)
    if len(schedule) > max_requests:
        raise ValueError(
            f"The timeline would send {len(schedule)} requests, more than max_requests="
            f"{max_requests}; shorten the phases or lower the rate."
        )
    requests = [Request(t, i, "") for t, i in schedule]
    starts = np.cumsum([0.0] + [p.seconds for p in phases])
    done = threading.Semaphore(0)

    def call(request: Request, start: float, handed: float):
        try:
            request.queue_ms = 1000 * (clock() - handed)
            try:
                send(request.tier)
            except Exception as e:  # every failure is a miss, whatever its kind
                request.error = _first_line(e)
            request.latency_ms = 1000 * (clock() - start - request.scheduled)
            if observe is not None:
                observe(request.latency_ms, request.tier, failed=request.error is not None)
        finally:
            done.release()  # counted even if observe fails (raised below)

    def wait_until(t):
        wait = t - (clock() - start)
        if wait > 0:
            time.sleep(wait)

    futures, sent = [], 0
    pool = concurrent.futures.ThreadPoolExecutor(max_inflight)
    try:
        start, phase = clock(), -1

        def enter(last):  # every phase up to ``last`` starts at its own time
            nonlocal phase
            for k in range(phase + 1, last + 1):
                wait_until(starts[k])
                if k and stop_when is not None:
                    if stop_when(k - 1, requests[:sent], clock() - start):
                        return False
                if on_phase is not None:
                    on_phase(phases[k])
                phase = k
            return True

        for n, request in enumerate(requests):
            if not enter(request.phase):
                break
            wait_until(request.scheduled)
            request.tier = choose()
            handed = clock()
            request.send_lag_ms = 1000 * (handed - start - request.scheduled)
            futures.append(pool.submit(call, request, start, handed))
            sent += 1
            if progress is not None and n % 50 == 0:
                progress(n, len(requests))
        else:
            enter(len(phases) - 1)  # phases after the last request still start
        for _ in range(sent):
            done.acquire()
    finally:
        # An interrupted timeline drops the requests not yet sent.
        pool.shutdown(wait=True, cancel_futures=True)
    for future in futures:
        future.result()  # an observe that failed
    if progress is not None:
        progress(sent, len(requests))  # short of the total when stop_when ended it
    return requests[:sent]


def _first_line(e: Exception) -> str:
    """A failure's first non-empty line (its repr when it has none)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:200] if lines else repr(e)


def _percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def summarize(requests, phases, objective_ms: float, top1: dict) -> dict:
    """Per-phase and overall figures of one timeline.

    A failed request is a miss and delivers no accuracy (top-1 credit 0);
    its elapsed time enters the percentiles. ``switches``: changes of tier
    between consecutive requests of the phase, in send order.

    Returns:
        ``{"phases": [{"name", "requests", "errors", "within_objective",
        "p50_ms", "p95_ms", "p99_ms", "mean_top1", "switches", "tiers"
        ({name: requests}), "send_lag_p99_ms", "queue_p99_ms"}], "overall":
        {"requests", "within_objective", "mean_top1"}}``.
    """
    rows = []
    for i, phase in enumerate(phases):
        rs = [r for r in requests if r.phase == i]
        lat = [r.latency_ms for r in rs]
        ok = [r.error is None and r.latency_ms <= objective_ms for r in rs]
        credit = [0.0 if r.error is not None else top1[r.tier] for r in rs]
        tiers = {}
        for r in rs:
            tiers[r.tier] = tiers.get(r.tier, 0) + 1
        rows.append(
            {
                "name": phase.name,
                "requests": len(rs),
                "errors": sum(r.error is not None for r in rs),
                "within_objective": float(np.mean(ok)) if rs else None,
                "p50_ms": _percentile(lat, 50),
                "p95_ms": _percentile(lat, 95),
                "p99_ms": _percentile(lat, 99),
                "mean_top1": float(np.mean(credit)) if rs else None,
                "switches": sum(a.tier != b.tier for a, b in zip(rs, rs[1:])),
                "tiers": tiers,
                "send_lag_p99_ms": _percentile([r.send_lag_ms for r in rs], 99),
                "queue_p99_ms": _percentile([r.queue_ms for r in rs], 99),
            }
        )
    ok = [r.error is None and r.latency_ms <= objective_ms for r in requests]
    credit = [0.0 if r.error is not None else top1[r.tier] for r in requests]
    return {
        "phases": rows,
        "overall": {
            "requests": len(requests),
            "within_objective": float(np.mean(ok)) if requests else None,
            "mean_top1": float(np.mean(credit)) if requests else None,
        },
    }


def meets(summary: dict, phase: int) -> bool:
    """Whether a timeline kept >= 99 % of one phase's requests within the objective."""
    within = summary["phases"][phase]["within_objective"]
    return within is not None and within >= MEETS


def phase_missed(requests, phase: int, objective_ms: float, now: float) -> bool:
    """Whether a phase already certainly missed the objective (kept < 99 %
    within it) while some of its requests may still be in flight: failed
    requests, answers over the objective and requests in flight for longer
    than it are misses whatever the rest do. For `run_timeline`'s
    ``stop_when``."""
    rs = [r for r in requests if r.phase == phase]
    missed = sum(
        r.error is not None
        or (r.latency_ms > objective_ms if not math.isnan(r.latency_ms)
            else 1000 * (now - r.scheduled) > objective_ms)
        for r in rs
    )  # fmt: skip
    return bool(rs) and (len(rs) - missed) / len(rs) < MEETS


def best_fixed_tier(tiers, run) -> tuple[str, dict]:
    """The most accurate tier that meets the objective in every phase where
    the cheapest tier does, found running as few tiers as it can.

    The cheapest tier runs first (the phases where it meets are the ones
    every tier must meet); then the others, most accurate first, until one
    meets in all of those phases. The cheapest when none does.

    Args:
        tiers: cheapest first, with ``name`` and ``top1``.
        run: ``run(name, needed) -> summary`` (`summarize` of a timeline on
            that tier alone); ``needed``: the phases it must meet (None for
            the cheapest). It may end a timeline once a needed phase is
            missed (`phase_missed`): the phases not run have no requests,
            and do not meet.

    Returns:
        ``(name, {name: summary of every tier that ran})``.
    """
    cheapest = tiers[0].name
    summaries = {cheapest: run(cheapest, None)}
    phases = range(len(summaries[cheapest]["phases"]))
    needed = [i for i in phases if meets(summaries[cheapest], i)]
    for t in sorted(tiers, key=lambda t: t.top1, reverse=True):
        if t.name not in summaries:
            summaries[t.name] = run(t.name, needed)
        if all(meets(summaries[t.name], i) for i in needed):
            return t.name, summaries
    return cheapest, summaries  # not reached: the cheapest meets its own phases


def aggregate(runs: list[dict]) -> dict:
    """Means over repeated `summarize` results, with [min, max] spreads.

    Every numeric field ``x`` becomes the mean, beside ``x_spread``, over
    the repeats that have it (a phase without requests has None figures;
    None when no repeat has it); ``tiers`` sums the requests per tier over
    the repeats.
    """
    numeric = ("requests", "errors", "within_objective", "p50_ms", "p95_ms", "p99_ms",
               "mean_top1", "switches", "send_lag_p99_ms", "queue_p99_ms")  # fmt: skip

    def merge(rows):
        out = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if key == "tiers":
                total = {}
                for v in values:
                    for name, n in v.items():
                        total[name] = total.get(name, 0) + n
                out[key] = total
            elif key in numeric:
                values = [v for v in values if v is not None]
                out[key] = float(np.mean(values)) if values else None
                out[f"{key}_spread"] = [float(min(values)), float(max(values))] if values else None
            else:
                out[key] = values[0]
        return out

    return {
        "phases": [merge([r["phases"][i] for r in runs]) for i in range(len(runs[0]["phases"]))],
        "overall": merge([r["overall"] for r in runs]),
        "repeats": len(runs),
    }


def idle_latency_ms(send, tier_names, repeats: int = 50, warmup: int = 5) -> dict:
    """Each tier's median latency, one request at a time on an otherwise
    idle server, as a client sees it (transport included): {name: ms}.
    Tiers are interleaved, so a slow spell of the machine is shared."""
    for name in tier_names:
        for _ in range(warmup):
            send(name)
    times = {name: [] for name in tier_names}
    for _ in range(repeats):
        for name in tier_names:
            start = time.perf_counter()
            send(name)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: float(np.median(v)) for name, v in times.items()}
