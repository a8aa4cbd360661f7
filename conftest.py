"""Collection settings for the whole repository (the tests' fixtures live in tests/conftest.py)."""

import os
import signal
from pathlib import Path

# pytest-xdist runs one worker per core: a worker whose torch/OpenMP or
# OpenBLAS pool also takes every core oversubscribes the machine, and those
# pools spin while they wait (test_torch.py took 3x as long on 2 cores). Each
# worker computes on one thread; set before numpy or torch is imported, and
# inherited by the real ``python -m bnstats`` processes the tests start.
# A variable the user set is left as it is.
# Started from a script's background job (`pytest &`) or under nohup, this process would ignore SIGINT or
# SIGHUP, and so would every bnstats process the tests start (an ignored signal is inherited, and bnstats
# keeps it ignored, as nohup means): the tests that stop a run with a real signal need the usual actions.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
for _signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
    if _signum is not None and signal.getsignal(_signum) is signal.SIG_IGN:
        signal.signal(_signum, signal.SIG_DFL)

if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

# --doctest-modules would import every module of the package in every worker
# (torch among them: seconds of CPU each); only the modules that hold an
# example (a line starting ">>>") are collected for doctests.
_HERE = Path(__file__).parent
collect_ignore = [
    str(path.relative_to(_HERE)) for path in sorted((_HERE / "bnstats").rglob("*.py"))
    if not any(line.lstrip().startswith(">>>") for line in path.read_text().splitlines())
]
