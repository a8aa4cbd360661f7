"""Signals and worker processes, through real subprocesses (``python -m bnstats``).

A killed worker fails the run in one line (and saves the checkpoint) instead
of hanging it; SIGTERM and SIGHUP stop a run like Ctrl-C (checkpoint, one
line, exit 128+signum); workers never outlive the parent nor print
tracebacks; Ctrl-C while bnstats is still importing exits 130 quietly.
Every wait has a timeout, and every process group is killed afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import child_pids, reaped, wait_until_counting, wait_until_reading

from bnstats.inputs.files import FileSource

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and POSIX signals")

TIMEOUT = 30  # seconds: far above any expected wait, so a hang fails the test instead of CI


@pytest.fixture(scope="module")
def slow(tmp_path_factory) -> Path:
    """240 links to one 1500x1500 JPEG: a few seconds on 2 cores, 1.5 MB on disk."""
    d = tmp_path_factory.mktemp("slow")
    yy, xx = np.mgrid[0:1500, 0:1500]
    noise = np.random.default_rng(3).integers(0, 32, (1500, 1500, 3), np.uint8)
    pixels = np.stack([xx % 256, yy % 256, (xx ^ yy) % 256], -1).astype(np.uint8) ^ noise
    first = d / "img_0000.jpg"
    Image.fromarray(pixels).save(first, quality=90)
    for i in range(1, 240):
        try:
            os.link(first, d / f"img_{i:04d}.jpg")
        except OSError:
            os.symlink(first, d / f"img_{i:04d}.jpg")
    return d


def start(*args, cwd) -> subprocess.Popen:
    """``python -m bnstats ARGS`` in its own process group (so it can be reaped whole)."""
    return subprocess.Popen([sys.executable, "-m", "bnstats", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, cwd=cwd)


def live_in_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def wait_for_no_group(pgid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while live_in_group(pgid):
        assert time.monotonic() < deadline, f"processes left over: {live_in_group(pgid)}"
        time.sleep(0.02)


def lines(text: bytes) -> list[str]:
    return [line for line in text.decode(errors="replace").splitlines() if line.strip()]


# -- 1. a killed worker -----------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_worker_fails_in_one_line_and_saves_the_checkpoint(slow, tmp_path):
    """kill -9 of one worker (what the OOM killer does): exit 1 naming the cause and the partition."""
    ck = tmp_path / "ck.json"
    proc = start("compute", slow, "-j", "2", "--checkpoint", ck, "-o", tmp_path / "out.json", cwd=tmp_path)
    with reaped(proc):
        wait_until_counting(proc)
        time.sleep(0.3)  # a partition or two merged: the checkpoint has something in it
        assert proc.poll() is None, "bnstats finished early: make the dataset bigger"
        os.kill(child_pids(proc.pid)[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=TIMEOUT)  # before the fix: hangs forever
        wait_for_no_group(proc.pid)
    message = lines(err)
    assert proc.returncode == 1, message
    assert len(message) == 1, message
    assert "Traceback" not in message[0]
    assert "SIGKILL" in message[0] and "out of memory" in message[0], message
    assert str(slow / "img_") in message[0] and "files" in message[0], message  # first key, how many
    assert "ck.json" in message[0], message
    assert out == b"" and not (tmp_path / "out.json").exists()
    saved = json.loads(ck.read_text())
    assert 0 <= saved["files_done"] < 240
    assert saved["files_done"] % 16 == 0  # whole partitions, merged in order


# -- 2. SIGTERM / SIGHUP --------------------------------------------------------------------------------


@pytest.mark.parametrize("signum,target,workers", [
    (signal.SIGTERM, "pid", 2),    # docker stop, Kubernetes, kill PID
    (signal.SIGTERM, "group", 2),  # a scheduler signalling the whole job
    (signal.SIGHUP, "group", 2),   # the terminal went away
    (signal.SIGTERM, "pid", 1),    # in-process
], ids=["term-pid", "term-group", "hup-group", "term-j1"])
@pytest.mark.slow
def test_sigterm_and_sighup_save_the_checkpoint_and_exit_128_plus_signum(slow, tmp_path, signum, target, workers):
    ck = tmp_path / "ck.json"
    proc = start("compute", slow, "-j", workers, "--checkpoint", ck, "-o", tmp_path / "out.json", cwd=tmp_path)
    with reaped(proc):
        if workers > 1:
            wait_until_counting(proc)
        else:
            wait_until_reading(proc, slow)
        assert proc.poll() is None, "bnstats finished early: make the dataset bigger"
        if target == "group":
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=TIMEOUT)
        wait_for_no_group(proc.pid)
    message = lines(err)
    assert proc.returncode == 128 + signum, message
    assert not any("Traceback" in line or "Error" in line for line in message), message
    assert any("ck.json" in line for line in message), message
    assert len(message) <= 2, message
    assert out == b"" and not (tmp_path / "out.json").exists()
    saved = json.loads(ck.read_text())
    # whole partitions: those merged before the signal (the ones being counted are dropped after
    # interrupts.STOP_GRACE, so that a run waiting on a stalled read stops too)
    assert 0 <= saved["files_done"] < 240 and saved["files_done"] % 16 == 0


def test_workers_die_silently_with_their_parent(slow, tmp_path):
    """The parent killed outright: its workers stop at once and print nothing (no BrokenPipeError)."""
    proc = start("compute", slow, "-j", "2", cwd=tmp_path)
    with reaped(proc):
        wait_until_counting(proc)
        workers = child_pids(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=TIMEOUT)  # EOF once the workers, holding stderr too, are gone
        assert workers
        wait_for_no_group(proc.pid)
    assert err == b"", err.decode(errors="replace")[-2000:]


SECOND_SIGNAL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    from bnstats import __main__
    from bnstats.running import checkpoint

    save = checkpoint.Checkpoint.save

    def save_slowly(self, *args, **kwargs):
        if sys.argv[-1] == "stop":  # set below: the final save, after the first signal
            os.kill(os.getpid(), signal.SIGTERM)  # a second one, half-way through the save
            os.kill(os.getpid(), signal.SIGINT)
        return save(self, *args, **kwargs)

    checkpoint.Checkpoint.save = save_slowly

    def first_signal(tally, done):
        if done >= 32 and sys.argv[-1] != "stop":
            sys.argv.append("stop")
            os.kill(os.getpid(), signal.SIGTERM)

    from bnstats.running import job
    run = job.ComputeJob.run
    job.ComputeJob.run = lambda self, on_chunk=None: run(self, on_chunk=lambda t, d: (on_chunk(t, d), first_signal(t, d)))
    sys.argv = ["bnstats"] + sys.argv[1:]
    __main__.main()
""")


def test_a_second_signal_during_the_final_save_does_not_interrupt_it(sample_data, tmp_path):
    ck = tmp_path / "ck.json"
    script = tmp_path / "second.py"
    script.write_text(SECOND_SIGNAL_DURING_SAVE)
    proc = subprocess.run([sys.executable, str(script), "compute", str(sample_data), "-j", "1",
                           "--checkpoint", str(ck), "-q"],
                          capture_output=True, timeout=TIMEOUT, cwd=tmp_path, start_new_session=True)
    message = lines(proc.stderr)
    assert proc.returncode == 128 + signal.SIGTERM, message
    assert not any("Traceback" in line for line in message), message
    assert any("progress saved to" in line for line in message), message
    assert 32 <= json.loads(ck.read_text())["files_done"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bnstats-")] == []


# -- 3. Ctrl-C while starting up ------------------------------------------------------------------------


def _maps(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()
    except OSError:
        return ""


@pytest.mark.slow
def test_ctrl_c_while_importing_exits_130_without_traceback(slow, tmp_path):
    """SIGINT while numpy, Pillow and click are being imported (numpy's core is loaded, the CLI not yet)."""
    for attempt in range(3):
        proc = start("compute", slow, "-j", "2", cwd=tmp_path)
        with reaped(proc):
            deadline = time.monotonic() + TIMEOUT
            while "_multiarray_umath" not in _maps(proc.pid):
                assert proc.poll() is None and time.monotonic() < deadline
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=TIMEOUT)
        assert b"Traceback" not in err, err.decode(errors="replace")
        assert proc.returncode == 130, err.decode(errors="replace")
        assert len(lines(err)) == 1 and out == b""


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (the SigCgt mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) >> (signum - 1) & 1)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0, 0.001, 0.003, 0.01, 0.03])
def test_ctrl_c_from_the_first_moment_never_shows_a_traceback(slow, tmp_path, delay):
    """Ctrl-C pressed (three times, to the group) right after bnstats' first line ran.

    That moment is when SIGTERM gets a handler. Earlier, the interpreter is
    still starting (sys.stdin/stdout set-up, ``site``): a SIGINT there makes
    CPython itself print a fatal error, which no program can prevent.
    """
    proc = start("compute", slow, "-j", "2", cwd=tmp_path)
    with reaped(proc):
        deadline = time.monotonic() + TIMEOUT
        while not _catches(proc.pid, signal.SIGTERM):
            assert proc.poll() is None and time.monotonic() < deadline, "bnstats never handled SIGTERM"
        time.sleep(delay)
        for press in range(3):
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.002)
        out, err = proc.communicate(timeout=TIMEOUT)
    assert b"Traceback" not in err, err.decode(errors="replace")
    assert proc.returncode == 130, err.decode(errors="replace")
    assert lines(err) == ["bnstats: interrupted"] and out == b""


# -- 4. what works stays ------------------------------------------------------------------------------


@pytest.mark.slow
def test_results_are_the_same_bytes_for_any_worker_count(tmp_path):
    """More partitions than the pool keeps in flight (2 per worker): merged strictly in order."""
    from helpers import cli

    rng = np.random.default_rng(9)
    for i in range(150):  # 10 partitions of 16
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), np.uint8)).save(tmp_path / f"{i:03d}.png")
    outputs = {j: cli("compute", tmp_path, "-j", j, "-q", expect=0).stdout for j in (1, 2, 3, 5)}
    assert len(set(outputs.values())) == 1, outputs


class _Collecting(FileSource):
    """A folder source that runs the garbage collector in the worker before reading (as any allocation may)."""

    def read(self, keys):
        import gc

        gc.collect()
        yield from super().read(keys)


class _Finalizer:
    """Unreachable garbage that says in which process it was finalized (a dask Client waits there forever)."""

    def __init__(self, path):
        self.path, self.cycle = path, self

    def __del__(self):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")


def test_workers_never_finalize_the_callers_garbage(tmp_path):
    import gc

    from bnstats.running.engine import count_selection

    for i in range(64):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    source = _Collecting([str(tmp_path)])
    keys = source.list_items()
    log = tmp_path / "finalized.txt"
    gc.disable()  # keep the garbage uncollected here until the workers exist
    try:
        _Finalizer(log)
        count_selection(keys, source=source, workers=2, chunk_size=16)
    finally:
        gc.enable()
    gc.collect()
    assert log.read_text().split() == [str(os.getpid())]  # finalized once, here, and never in a worker


def test_a_callers_own_gc_freeze_is_left_as_it_was(tmp_path):
    import gc

    from bnstats.running.engine import count_selection

    for i in range(40):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    source = FileSource([str(tmp_path)])
    keys = source.list_items()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        count_selection(keys, source=source, workers=2, chunk_size=8)
        assert gc.get_freeze_count() > frozen // 2 > 0  # still frozen (a few frozen objects may have been freed)
    finally:
        gc.unfreeze()
    count_selection(keys, source=source, workers=2, chunk_size=8)
    assert gc.get_freeze_count() == 0
