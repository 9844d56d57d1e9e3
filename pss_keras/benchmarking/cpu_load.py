"""The CPU a load test runs on: pinning, and processes that compete for it.

`split_cpus` divides the CPUs this process may use between the server
(with the processes competing with it) and the load generator; `pin_to`
pins a child process to its share; `CpuHogs` are the competing processes,
real busy-looping interpreters, started and stopped as a timeline says
(`pss_keras.benchmarking.load_test`).

Nothing here reads flags or imports training code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

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
