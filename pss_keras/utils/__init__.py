"""Helpers every stage uses.

fileio   atomic, durable writes; disk-full handling
timing   the one timing loop; a benchmark's JSON
machine  the one machine record (CPU model, ISA flags, cores, GPUs)
losses   cross-entropy and the distillation loss (training and QAT)
plots    PNG plots of results (matplotlib)
"""
