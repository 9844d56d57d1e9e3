"""CPU pinning and the competing busy processes (pss_keras.benchmarking.cpu_load)."""

import os
import sys
import time

import pytest

from pss_keras.benchmarking import cpu_load


def test_cpu_hogs_start_and_stop_real_processes():
    with cpu_load.CpuHogs() as hogs:
        assert hogs.running == 0
        hogs.set(2)
        procs = list(hogs._procs)
        assert hogs.running == 2 and len(procs) == 2
        assert all(p.poll() is None for p in procs)
        assert all(p.args == [sys.executable, "-c", cpu_load._HOG, str(os.getpid())] for p in procs)
        hogs.set(1)
        assert hogs.running == 1
        assert procs[0].poll() is None and procs[1].poll() is not None  # the last one stopped
        hogs.set(1)  # already so: nothing started
        assert hogs._procs == procs[:1]
        hogs.set(2)
        procs += [p for p in hogs._procs if p not in procs]
        assert hogs.running == 2 and len(procs) == 3
    assert hogs.running == 0 and hogs._procs == []
    assert all(p.poll() is not None for p in procs)


def test_cpu_hogs_stop_when_the_block_raises():
    with pytest.raises(RuntimeError, match="in the block"):
        with cpu_load.CpuHogs() as hogs:
            hogs.set(1)
            procs = list(hogs._procs)
            raise RuntimeError("in the block")
    assert len(procs) == 1 and procs[0].poll() is not None


@pytest.mark.parametrize(
    "text, server, client",
    [
        ("auto", [0, 1, 2], [3]),  # the generator gets the last CPU to itself
        ("none", None, None),
        (" None ", None, None),
        ("1", [1], [0, 2, 3]),
        ("0-1,3", [0, 1, 3], [2]),
        ("3,0", [0, 3], [1, 2]),
        ("0-3", [0, 1, 2, 3], [0, 1, 2, 3]),  # nothing left: the generator shares them
    ],
)
def test_split_cpus_gives_the_server_and_the_generator_their_cpus(
    monkeypatch, text, server, client
):
    monkeypatch.setattr(cpu_load.os, "sched_getaffinity", lambda pid: {3, 1, 0, 2})
    assert cpu_load.split_cpus(text) == (server, client)


def test_split_cpus_does_not_pin_on_one_cpu_or_without_affinity(monkeypatch):
    monkeypatch.setattr(cpu_load.os, "sched_getaffinity", lambda pid: {5})
    assert cpu_load.split_cpus("auto") == (None, None)
    assert cpu_load.split_cpus("5") == ([5], [5])
    monkeypatch.delattr(cpu_load.os, "sched_getaffinity")
    assert cpu_load.split_cpus("auto") == (None, None)
    assert cpu_load.split_cpus("none") == (None, None)
    with pytest.raises(ValueError, match=r"^CPU pinning needs Linux .*; use 'none'\.$"):
        cpu_load.split_cpus("0")


NOT_A_LIST = "is not 'auto', 'none' or a list such as '1' or '0-2,4'."


@pytest.mark.parametrize(
    "text, message",
    [
        ("x", f"server CPUs 'x' {NOT_A_LIST}"),
        ("1-", f"server CPUs '1-' {NOT_A_LIST}"),
        ("3-1", f"server CPUs '3-1' {NOT_A_LIST}"),
        ("1,,2", f"server CPUs '1,,2' {NOT_A_LIST}"),
        (
            "2-9",
            "server CPUs '2-9' names CPUs [4, 5, 6, 7, 8, 9] this process may not use; "
            "it may use [0, 1, 2, 3].",
        ),  # fmt: skip
    ],
)
def test_split_cpus_refuses_bad_lists_in_one_line(monkeypatch, text, message):
    monkeypatch.setattr(cpu_load.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    with pytest.raises(ValueError) as e:
        cpu_load.split_cpus(text)
    assert str(e.value) == message


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_busy_processes_run_on_the_cpus_they_are_given():
    cpu = max(os.sched_getaffinity(0))
    assert cpu_load.pin_to(None) is None
    with cpu_load.CpuHogs(cpus=[cpu]) as pinned, cpu_load.CpuHogs() as free:
        pinned.set(2)
        free.set(1)
        assert [os.sched_getaffinity(p.pid) for p in pinned._procs] == [{cpu}, {cpu}]
        assert os.sched_getaffinity(free._procs[0].pid) == os.sched_getaffinity(0)
    assert pinned.cpus == [cpu] and free.cpus is None


def test_a_busy_process_exits_when_its_parent_is_gone(tmp_path):
    """A benchmark killed with SIGKILL leaves no busy process behind: each
    one watches its parent."""
    import subprocess

    code = (
        "import subprocess, sys; from pss_keras.benchmarking import cpu_load\n"
        "hogs = cpu_load.CpuHogs(); hogs.set(1); p = hogs._procs[0]\n"
        "print(p.pid, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state in ("Z", "X"):  # exited; waits for init to reap it
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        pytest.fail("the busy process outlived its parent by 30 s")
