"""Runs pytest on the files given as arguments (the Bazel py_test entry point)."""

import sys

import pytest

if __name__ == "__main__":
    # One file per Bazel target, and Bazel runs targets in parallel: no
    # xdist workers on top (pytest.ini asks for 2).
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-n", "0", *sys.argv[1:]]))
