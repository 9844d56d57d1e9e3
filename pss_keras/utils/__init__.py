"""Helpers every stage uses.

fileio   atomic, durable writes; disk-full handling
timing   the one timing loop; the machine record of benchmarks
losses   cross-entropy and the distillation loss (training and QAT)
plots    PNG plots of results (matplotlib)
"""
