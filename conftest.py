"""Collection settings for the whole repository (the tests' fixtures live in tests/conftest.py)."""

import importlib.util
import os

# pytest-xdist runs one worker per core: a worker whose torch/OpenMP or
# OpenBLAS pool also takes every core oversubscribes the machine, and those
# pools spin while they wait (test_torch.py took 3x as long on 2 cores). Each
# worker computes on one thread; set before numpy or torch is imported, and
# inherited by the real ``python -m bnstats`` processes the tests start.
# A variable the user set is left as it is.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

# bnstats/torch/ imports torch: its doctests are collected only where torch is installed
collect_ignore = [] if importlib.util.find_spec("torch") else ["bnstats/torch"]
