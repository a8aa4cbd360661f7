"""Helpers shared by the CLI-level tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

from click.testing import CliRunner

from bnstats.cli import main


def cli(*args, expect: int | None = None):
    """``bnstats ARGS`` in-process; never a traceback, never an uncaught exception."""
    result = CliRunner().invoke(main, [str(a) if isinstance(a, int) else os.fspath(a) for a in args])
    assert "Traceback" not in result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r} (a real run prints a traceback)") from result.exception
    if expect is not None:
        assert result.exit_code == expect, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def cli_json(*args) -> dict:
    """Stdout of a successful ``bnstats ARGS``, parsed."""
    return json.loads(cli(*args, expect=0).stdout)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def child_pids(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def wait_until_counting(proc, timeout: float = 20) -> None:
    """Return once ``proc`` (``bnstats compute -j N``, N > 1) has its worker pool up."""
    deadline = time.monotonic() + timeout
    while not child_pids(proc.pid):
        assert proc.poll() is None, "bnstats finished before its workers started: make the dataset bigger"
        assert time.monotonic() < deadline, "no worker processes appeared"
        time.sleep(0.02)



@contextlib.contextmanager
def reaped(proc):
    """Inside the block ``proc`` may fail an assertion; its process group never outlives it."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
