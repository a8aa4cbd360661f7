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
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import child_pids, processes_mentioning, reaped, wait_until_counting, wait_until_reading

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


def start(*args, cwd, ignoring: tuple[int, ...] = ()) -> subprocess.Popen:
    """``python -m bnstats ARGS`` in its own process group (so it can be reaped whole), started ignoring the
    signals ``ignoring`` (as nohup starts a command); the others have their usual actions (conftest.py)."""
    def ignore():
        for signum in ignoring:
            signal.signal(signum, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "bnstats", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, cwd=cwd,
                            preexec_fn=ignore if ignoring else None)


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


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_a_run_started_ignoring_hangups_survives_one_as_nohup_means(slow, tmp_path):
    """``nohup bnstats compute ...``: the hangup it was started ignoring stays ignored (a closed terminal does not
    stop the run); Ctrl-C and SIGTERM still stop it."""
    proc = start("compute", slow, "-j", "1", "-q", "-o", tmp_path / "out.json", cwd=tmp_path,
                 ignoring=(signal.SIGHUP,))
    with reaped(proc):
        wait_until_reading(proc, slow)
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, lines(err)
    assert json.loads((tmp_path / "out.json").read_text())["images"] > 0


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
    job.ComputeJob.run = lambda self, on_chunk=None, **kw: run(self, on_chunk=lambda t, d: (on_chunk(t, d), first_signal(t, d)), **kw)
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


@pytest.mark.slow
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


@pytest.fixture
def stalled(scripted):
    """A server that answers HEAD with a size and then, to a GET, sends the headers and nothing more."""
    gets = threading.Event()
    release = threading.Event()

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.flush()
            gets.set()
            release.wait(30)  # the body never comes (until the test ends)

    server = scripted(respond)
    server.gets = gets
    yield server
    release.set()


def run_and_stop(args, server, signum, tmp_path, then=None):
    """``bnstats compute ARGS`` in a process, stopped by ``signum`` (and ``then`` a moment later) once it waits on
    the server: (seconds, exit code, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "bnstats", "compute", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert server.gets.wait(20), "bnstats never asked for an object"
        time.sleep(0.3)  # well inside the read
        started = time.monotonic()
        proc.send_signal(signum)
        if then is not None:
            time.sleep(0.1)
            proc.send_signal(then)
        out, err = proc.communicate(timeout=10)
        return time.monotonic() - started, proc.returncode, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("workers, signum", [(1, signal.SIGTERM), (2, signal.SIGTERM), (1, signal.SIGINT),
                                             (2, signal.SIGHUP)])
def test_a_stop_signal_ends_a_stalled_read_at_once(stalled, workers, signum, tmp_path):
    """The read waits inside fsspec's loop thread (or a worker does): no partition boundary comes. The run ends
    within a second or so, exit 128 + signal, the checkpoint saved, one line, no traceback."""
    urls = f"{stalled.url}/img-{{00..39}}.jpg"  # 40 objects: several partitions
    ck = tmp_path / "ck.json"
    took, code, out, err = run_and_stop([urls, "-j", str(workers), "--checkpoint", ck], stalled, signum, tmp_path)
    assert took < 2.5, err
    assert code == 128 + signum, err
    assert "Traceback" not in err and "Stopped" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    stop = "bnstats: interrupted" if signum == signal.SIGINT else f"bnstats: stopped by {signal.Signals(signum).name}"
    assert lines[-1] == stop and len(lines) <= 2, lines
    assert ck.exists() and "progress saved to" in err


@pytest.mark.slow
def test_a_second_signal_decides_the_exit_code_and_the_one_line(stalled, tmp_path):
    """SIGTERM, then Ctrl-C while the first waits: one line and its code (130), never a Stopped traceback."""
    took, code, out, err = run_and_stop([f"{stalled.url}/img-{{00..39}}.jpg", "-j", "1"], stalled, signal.SIGTERM,
                                        tmp_path, then=signal.SIGINT)
    assert took < 2.5 and code == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["bnstats: interrupted"]


@pytest.mark.slow
def test_stop_waiting_interrupts_a_blocked_wait_never_a_critical_block():
    """In process: the deferred block's watchdog interrupts a wait on a lock, and waits for a critical block."""
    from bnstats.running import interrupts

    def signal_soon():
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()

    started = time.monotonic()
    with pytest.raises(interrupts.StopWaiting):
        with interrupts.deferred(interrupt_waits=True):
            signal_soon()
            threading.Event().wait(10)  # a read that never returns
    assert time.monotonic() - started < interrupts.STOP_GRACE + 1

    finished = []
    with pytest.raises(interrupts.StopWaiting):
        with interrupts.deferred(interrupt_waits=True):
            signal_soon()
            with interrupts.critical():
                time.sleep(interrupts.STOP_GRACE + 0.3)  # a long merge: not interrupted
                finished.append(1)
            threading.Event().wait(10)
    assert finished == [1]


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_and_wait_for_the_family(proc, tmp_path, texts):
    """SIGKILL ``proc``; assert every process it had started is gone within 2 s."""
    import psutil

    family = descendants(proc.pid)
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(family, timeout=2)
    try:
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline()[-6:] for p in alive]
        assert not any(processes_mentioning(text) for text in texts)
    finally:
        for p in alive:
            p.kill()


def start_bnstats(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "bnstats", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=cwd, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_compute(slow_data, tmp_path):
    """SIGKILL (the OOM killer's) to bnstats compute: its workers are gone within 2 s (PDEATHSIG)."""
    proc = start_bnstats("compute", slow_data, "-j", "2", "-q", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while len(descendants(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        time.sleep(0.2)
        kill_and_wait_for_the_family(proc, tmp_path, [str(slow_data)])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def stalls_on_second_read(scripted):
    """A server with small JPEGs that answers each one's first GET (compare's probe) and stalls on the next."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, "JPEG")
    body, seen, stalls, release = buffer.getvalue(), set(), threading.Event(), threading.Event()

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "GET":
            return
        if handler.path not in seen:
            seen.add(handler.path)
            handler.wfile.write(body)
            return
        handler.wfile.flush()
        stalls.set()
        release.wait(30)

    server = scripted(respond)
    server.gets = stalls
    yield server
    release.set()


@pytest.mark.slow
def test_no_process_outlives_a_killed_compare(stalls_on_second_read, tmp_path):
    """SIGKILL to bnstats compare while its streaming side waits on a server: the side, forked by
    multiprocessing's fork server (which lives as long as its children), lived on with its workers, the server
    and the resource tracker. The side now watches bnstats itself."""
    server = stalls_on_second_read
    proc = start_bnstats("compare", f"{server.url}/img-{{00..39}}.jpg", "-j", "2", cwd=tmp_path)
    try:
        assert server.gets.wait(30), proc.stderr.read() if proc.poll() is not None else "no read"
        time.sleep(0.3)
        kill_and_wait_for_the_family(proc, tmp_path, [str(tmp_path), server.url])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
