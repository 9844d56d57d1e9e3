"""Benchmark rigs, not part of the library's API (`import pss_keras` loads none).

load_test   an open-loop load generator and its timelines
soak        a long run of a served model under load
"""
