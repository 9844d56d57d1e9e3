"""Benchmark rigs, not part of the library's API (`import pss_keras` loads none).

load_test      the open-loop load generator: phases, timelines, idle latency
cpu_load       CPU pinning, and busy processes that compete with the server
load_summary   a timeline's figures, their means over repeats, the best fixed tier
load_simulation  a timeline on a modelled server (developing a tier policy in seconds)
soak           a long run of a served model under load, and the server's process
subnet_spread  random subnets of one cost: is there anything to prioritize
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "Phase": "load_test",
    "default_timeline": "load_test",
    "held_out_timeline": "load_test",
    "poisson_schedule": "load_test",
    "Request": "load_test",
    "run_timeline": "load_test",
    "idle_latency_ms": "load_test",
    "split_cpus": "cpu_load",
    "pin_to": "cpu_load",
    "CpuHogs": "cpu_load",
    "MEETS": "load_summary",
    "summarize": "load_summary",
    "meets": "load_summary",
    "phase_missed": "load_summary",
    "best_fixed_tier": "load_summary",
    "aggregate": "load_summary",
    "ServerModel": "load_simulation",
    "simulate_timeline": "load_simulation",
    "TierStats": "soak",
    "run_soak": "soak",
    "format_table": "soak",
    "server_binary": "soak",
    "ServerProcess": "soak",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
