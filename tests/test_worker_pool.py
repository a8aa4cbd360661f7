"""The local worker pool: it owns its processes and sees a lost one by its sentinel (issue 23)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnstats.inputs.base import Partition
from bnstats.inputs.files import FileSource
from bnstats.running import engine, pool as pool_module
from bnstats.running.pool import IDLE, WorkerDied, WorkerPool, lost_message


def _echo(progress, index, first, tasks):
    """Return what was sent (a big payload both ways must not stall a pipe)."""
    return first, [len(t) for t in tasks], tasks


def _hang(progress, index, first, tasks):
    progress[index] = first
    time.sleep(60)


def _exit_3(progress, index, first, tasks):
    progress[index] = first
    os._exit(3)


def _partitions(count: int) -> list[Partition]:
    return [Partition(FileSource([]), [f"/data/p{i}/a.png", f"/data/p{i}/b.png"]) for i in range(count)]


def _wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_results_come_back_per_task_with_big_payloads_both_ways():
    pool = WorkerPool(2, _echo)
    try:
        big = "x" * (1 << 20)  # far past a pipe's buffer, sent while results of that size come back
        for task in range(6):
            pool.submit(task, 10 * task, [big, big[: task + 1]])
        for task in reversed(range(6)):
            first, sizes, _ = pool.result(task)
            assert (first, sizes) == (10 * task, [1 << 20, task + 1])
    finally:
        pool.close()
    assert [p.exitcode for p in pool.processes] == [0, 0]


def test_a_killed_worker_is_seen_at_once_and_named_with_its_partition():
    pool = WorkerPool(2, _hang)
    try:
        pool.submit(0, 0, ["task"])
        pool.submit(1, 3, ["task"])
        _wait_for(lambda: IDLE not in list(pool.progress))
        victim = next(i for i in range(2) if pool.progress[i] == 3)
        os.kill(pool.processes[victim].pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(WorkerDied):
            pool.result(0)
        assert time.monotonic() - started < 5  # not after the other worker's 60 s task
        message = lost_message(pool, _partitions(5), 0)
    finally:
        pool.close(kill=True)
    assert message == ("a worker process was killed by SIGKILL (out of memory?) while counting 2 files "
                       "from /data/p3/a.png")


def test_a_worker_that_exits_is_named_with_its_exit_code():
    pool = WorkerPool(1, _exit_3)
    try:
        pool.submit(0, 1, ["task"])
        with pytest.raises(WorkerDied):
            pool.result(0)
        message = lost_message(pool, _partitions(3), 0)
    finally:
        pool.close(kill=True)
    assert message == "a worker process exited unexpectedly with code 3 while counting 2 files from /data/p1/a.png"


def test_the_engine_reads_no_private_attribute_of_a_library_pool():
    for module in (engine, pool_module):
        text = Path(module.__file__).read_text()
        assert "_processes" not in text and "ProcessPoolExecutor" not in text


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(workers=st.integers(1, 3), sizes=st.lists(st.integers(0, 200_000), min_size=1, max_size=8),
       order=st.randoms(use_true_random=False))
def test_every_task_comes_back_whole_and_to_its_id(workers, sizes, order):
    """Any number of workers, tasks of any size, results asked for in any order: each task's own result."""
    pool = WorkerPool(workers, _echo)
    try:
        for task, size in enumerate(sizes):
            pool.submit(task, task, ["y" * size])
        wanted = list(range(len(sizes)))
        order.shuffle(wanted)
        for task in wanted:
            first, counted, _ = pool.result(task)
            assert (first, counted) == (task, [sizes[task]])
    finally:
        pool.close()


def _signal_state(progress, index, first, tasks):
    """What a worker runs its tasks with: the stop signals' handlers and which of them are blocked."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return [(signal.getsignal(s), s in blocked) for s in pool_module.interrupts.STOP_SIGNALS]


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_worker_starts_with_stop_signals_blocked_and_runs_them_ignored():
    """A signal to the whole group while a worker forks must never run the parent's handler in the child
    (it once started the parent's stop thread inside Python's fork hooks: a KeyError printed, exit 129 with
    noise): the fork happens with them blocked, the worker ignores them, then unblocks (a pending one is
    dropped), and the parent's mask is as it was."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    read, write = os.pipe()
    with pool_module._stop_signals_blocked():
        pid = os.fork()
        if pid == 0:  # the child: report its mask before anything else runs
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            os.write(write, bytes([all(s in mask for s in pool_module.interrupts.STOP_SIGNALS)]))
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"\x01"
    os.close(read)
    os.waitpid(pid, 0)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before

    pool = WorkerPool(1, _signal_state)
    try:
        pool.submit(0, 0, [])
        assert pool.result(0) == [(signal.SIG_IGN, False)] * len(pool_module.interrupts.STOP_SIGNALS)
    finally:
        pool.close()
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
