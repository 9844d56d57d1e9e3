"""Served tiers under real, changing load: the open-loop load generator and its timelines.

The pieces of ``benchmarks/adaptive_serving.py``, which shows that a tier
policy holds a latency objective while the machine's free CPU changes:

- `Phase` / `default_timeline`: a scripted timeline (idle, one competing
  CPU-bound process, two, a request-rate step, idle again).
- `run_timeline`: an **open-loop** load generator. Requests are scheduled
  in advance at the phase's rate (Poisson arrivals), sent at their
  scheduled time whatever the server is doing, and each latency runs from
  the *scheduled* time to the answer: a slow server cannot hide its queue
  by slowing the sender down (coordinated omission). How late the
  generator itself sends is recorded (it shares the CPU), and timeouts and
  errors count as misses.
- `idle_latency_ms`: each tier's latency on an idle server.

The competing processes and CPU pinning are in
`pss_keras.benchmarking.cpu_load`; a timeline's figures (per phase, the
best single tier a calibration pass finds) in
`pss_keras.benchmarking.load_summary`.

Nothing here reads flags or imports training code.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time

import numpy as np


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


def held_out_timeline(seconds: float, rate: float, long_seconds: float = 100.0) -> list[Phase]:
    """The timeline the adaptive policy is judged on, not tuned on: other
    loads in another order than `default_timeline`'s. 1 competing process;
    3; idle for ``long_seconds`` (the climb back from the heaviest load,
    and holding there); the rate times 1.5 on an idle machine; 2 competing
    processes. ``seconds`` per phase otherwise."""
    return [
        Phase("1 busy process", seconds, rate, hogs=1),
        Phase("3 busy processes", seconds, rate, hogs=3),
        Phase("idle, long", long_seconds, rate),
        Phase("rate x1.5", seconds, rate * 1.5),
        Phase("2 busy processes", seconds, rate, hogs=2),
    ]


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
    requests = _scheduled_requests(phases, seed, max_requests)
    loop = _OpenLoop(requests, phases, send, choose, observe, on_phase, stop_when, clock)
    pool = concurrent.futures.ThreadPoolExecutor(max_inflight)
    try:
        loop.run(pool, progress)
    finally:
        # An interrupted timeline drops the requests not yet sent.
        pool.shutdown(wait=True, cancel_futures=True)
    for future in loop.futures:
        future.result()  # an observe that failed
    if progress is not None:
        progress(loop.sent, len(requests))  # short of the total when stop_when ended it
    return requests[: loop.sent]


def _scheduled_requests(phases, seed: int, max_requests: int) -> list[Request]:
    """The timeline's requests, unsent, in schedule order (`poisson_schedule`).

    Raises:
        ValueError: if there are more than ``max_requests``.
    """
    schedule = poisson_schedule(phases, seed)
    if len(schedule) > max_requests:
        raise ValueError(
            f"The timeline would send {len(schedule)} requests, more than max_requests="
            f"{max_requests}; shorten the phases or lower the rate."
        )
    return [Request(t, i, "") for t, i in schedule]


class _OpenLoop:
    """The sending of one `run_timeline`: each request handed to the client
    threads at its scheduled time, each phase entered at its own, each
    answer timed from the schedule. ``sent`` and ``futures`` (one per
    request sent) are read once `run` returns."""

    def __init__(self, requests, phases, send, choose, observe, on_phase, stop_when, clock):
        self.requests, self.phases = requests, phases
        self.send, self.choose, self.observe = send, choose, observe
        self.on_phase, self.stop_when, self.clock = on_phase, stop_when, clock
        self.starts = np.cumsum([0.0] + [p.seconds for p in phases])
        self.done = threading.Semaphore(0)
        self.futures, self.sent, self.phase, self.start = [], 0, -1, None

    def run(self, pool, progress) -> None:
        """Sends the requests on ``pool`` (all, or up to the phase end where
        ``stop_when`` ended the timeline), then waits for their answers."""
        self.start = self.clock()
        for n, request in enumerate(self.requests):
            if not self._enter(request.phase):
                break
            self._wait_until(request.scheduled)
            request.tier = self.choose()
            handed = self.clock()
            request.send_lag_ms = 1000 * (handed - self.start - request.scheduled)
            self.futures.append(pool.submit(self._call, request, handed))
            self.sent += 1
            if progress is not None and n % 50 == 0:
                progress(n, len(self.requests))
        else:
            self._enter(len(self.phases) - 1)  # phases after the last request still start
        for _ in range(self.sent):
            self.done.acquire()

    def _call(self, request: Request, handed: float) -> None:
        """One request, on a client thread: sent, timed, observed."""
        try:
            request.queue_ms = 1000 * (self.clock() - handed)
            try:
                self.send(request.tier)
            except Exception as e:  # every failure is a miss, whatever its kind
                request.error = _first_line(e)
            request.latency_ms = 1000 * (self.clock() - self.start - request.scheduled)
            if self.observe is not None:
                failed = request.error is not None
                self.observe(request.latency_ms, request.tier, failed=failed)
        finally:
            self.done.release()  # counted even if observe fails (raised below)

    def _wait_until(self, t: float) -> None:
        wait = t - (self.clock() - self.start)
        if wait > 0:
            time.sleep(wait)

    def _enter(self, last: int) -> bool:
        """Starts every phase up to ``last``, each at its own time; False
        when ``stop_when`` ends the timeline instead."""
        for k in range(self.phase + 1, last + 1):
            self._wait_until(self.starts[k])
            if k and self.stop_when is not None:
                if self.stop_when(k - 1, self.requests[: self.sent], self.clock() - self.start):
                    return False
            if self.on_phase is not None:
                self.on_phase(self.phases[k])
            self.phase = k
        return True


def _first_line(e: Exception) -> str:
    """A failure's first non-empty line (its repr when it has none)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:200] if lines else repr(e)


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
