"""The local worker processes: a :class:`WorkerPool` that owns them, and what runs inside each.

Each worker is a :class:`multiprocessing.Process` with one duplex pipe to
the parent. The parent sends a task (a run of consecutive partitions) down a
worker's pipe and reads results from the pipes in the order the tasks were
sent to that worker; it waits on every pipe *and* every worker's sentinel at
once (:func:`multiprocessing.connection.wait`), so a worker that dies — the
out-of-memory killer's SIGKILL — is noticed at once, with its exit status,
without reading any private attribute of a library pool. A shared array
says which partition each worker is counting, so the error can name it.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence

from . import interrupts

IDLE = -1  # a worker's progress entry between two tasks


class WorkerDied(Exception):
    """A worker process ended while the pool was running; :meth:`WorkerPool.lost_message` says which."""


class WorkerPool:
    """``count`` worker processes, each running ``work(progress, index, first, tasks)`` on what it is sent.

    :meth:`submit` sends a task to the worker with the fewest in flight,
    :meth:`result` waits for one task's result (raising :class:`WorkerDied`
    if a worker ended meanwhile), :meth:`close` ends the workers (at once
    with ``kill=True``). The processes are the pool's own, listed in
    :attr:`processes`.
    """

    def __init__(self, count: int, work: Callable):
        context = _context()
        self.progress = context.RawArray("q", [IDLE] * count)  # per worker: the partition it counts
        self.processes, self.connections = [], []
        for index in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, os.getpid(), work, self.progress, index),
                                      name=f"bnstats-worker-{index}", daemon=True)
            with _stop_signals_blocked():  # the child runs none of this process's handlers (see _serve)
                process.start()
            theirs.close()
            self.processes.append(process)
            self.connections.append(ours)
        self.sent = [collections.deque() for _ in range(count)]  # per worker: its task ids in flight, in order
        self.results: dict = {}

    def submit(self, task_id, first: int, tasks: Sequence) -> None:
        """Send task ``task_id`` (partitions ``first``, ``first + 1``, ... as ``tasks``) to the least busy worker."""
        index = min(range(len(self.processes)), key=lambda i: len(self.sent[i]))
        try:
            self.connections[index].send((first, tasks))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise WorkerDied() from None
        self.sent[index].append(task_id)

    def result(self, task_id):
        """Wait for the result of ``task_id``; :class:`WorkerDied` if any worker ends first."""
        while task_id not in self.results:
            self._receive()
        return self.results.pop(task_id)

    def _receive(self) -> None:
        """Read what the ready workers sent; a worker whose sentinel is ready and has nothing left to read died."""
        by_handle = {conn: index for index, conn in enumerate(self.connections)}
        sentinels = {process.sentinel: index for index, process in enumerate(self.processes)}
        ready = multiprocessing.connection.wait([*by_handle, *sentinels])
        for handle in ready:
            if handle in by_handle:
                index = by_handle[handle]
                try:
                    value = handle.recv()
                except (EOFError, OSError):
                    raise WorkerDied() from None
                self.results[self.sent[index].popleft()] = value
        for handle in ready:
            if handle in sentinels and not self.connections[sentinels[handle]].poll():
                raise WorkerDied()

    def dead(self) -> dict[int, int | None]:
        """Worker index -> exit code of every worker that has ended (waiting a moment for the kernel's status)."""
        ready = set(multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=1))
        ended = {}
        for index, process in enumerate(self.processes):
            if process.sentinel in ready:
                process.join(1)
                ended[index] = process.exitcode
        return ended

    def kill(self) -> None:
        """Kill every worker still running (an error, a signal, a lost worker: their tasks are not wanted)."""
        for process in self.processes:
            if process.exitcode is None:
                process.kill()

    def close(self, kill: bool = False) -> None:
        """End the workers: ask them to stop (or ``kill`` them), and wait for them."""
        if kill:
            self.kill()
        for conn in self.connections:
            try:
                if not kill:
                    conn.send(None)
            except OSError:
                pass
            conn.close()
        for process in self.processes:
            process.join()


def lost_message(pool: WorkerPool, partitions: Sequence, done: int) -> str:
    """What died and what it was counting: the cause (e.g. SIGKILL), the partition's first key and size."""
    dead = pool.dead()
    # a dead worker's progress entry: the partition it was counting (IDLE: between two tasks)
    lost = sorted((pool.progress[i], i) for i in dead if pool.progress[i] != IDLE)
    # a worker killed between two tasks was counting nothing: name the next partition (and the first dead
    # worker's exit); else the first partition lost, and the exit of the worker that was counting it
    index, worker = lost[0] if lost else (done, next(iter(dead), None))
    partition, code = partitions[index], dead.get(worker)
    if code is not None and code < 0:
        cause = f"was killed by {interrupts.signal_name(-code)}"
        if -code == getattr(signal, "SIGKILL", None):
            cause += " (out of memory?)"  # what the OOM killer sends; or someone ran kill -9
    elif code is not None:
        cause = f"exited unexpectedly with code {code}"
    else:
        cause = "stopped unexpectedly"
    where = "while counting" if lost else "before counting"
    return f"a worker process {cause} {where} {len(partition)} files from {partition.keys[0]}"


# -- inside a worker --------------------------------------------------------------------------------------


def _serve(conn, parent_pid: int, work: Callable, progress, index: int) -> None:
    """A worker's loop: take a task, run it, send back its result, until told to stop (or the parent is gone).

    A thread reads the tasks as they come, so the parent never blocks sending one while this process
    blocks sending a result (both can exceed a pipe's buffer).
    """
    _ignore_stop_signals(parent_pid)
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_read_tasks, args=(conn, tasks), name="bnstats-tasks", daemon=True).start()
    while (task := tasks.get()) is not None:
        first, group = task
        result = work(progress, index, first, group)
        if os.getppid() != parent_pid:  # the parent is gone: nobody reads the result; end without a traceback
            os._exit(0)
        try:
            conn.send(result)
        except OSError:  # the parent closed the pipe: it is stopping
            os._exit(0)
        except Exception as exc:  # noqa: BLE001 - a result that cannot be pickled: the parent raises it
            conn.send(([], (RuntimeError(f"a worker could not send its result: {exc}"),
                            "".join(traceback.format_exception(exc))), 0.0))
    os._exit(0)


def _read_tasks(conn, tasks: queue.SimpleQueue) -> None:
    try:
        while True:
            task = conn.recv()
            tasks.put(task)
            if task is None:
                return
    except (EOFError, OSError):  # the parent is gone or stopping
        tasks.put(None)


@contextlib.contextmanager
def _stop_signals_blocked():
    """Block the stop signals in this thread for the block (a worker's fork): a child starts with them
    blocked, so a signal to the whole group at that moment never runs the parent's handler copied into it
    (one that starts a thread in the middle of the child's fork hooks made Python print a KeyError). The
    parent's signal arrives when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ignore_stop_signals(parent_pid: int) -> None:
    # Only the parent decides when to stop (it defers to a partition boundary,
    # saves the checkpoint, then kills the workers): a Ctrl-C to the whole
    # process group, or a scheduler's SIGTERM to it, must not end workers
    # half-way or make them print tracebacks. The worker started with them
    # blocked (_stop_signals_blocked): ignored first, a pending one is dropped.
    for signum in interrupts.STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, interrupts.STOP_SIGNALS)
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before that took effect
        os._exit(0)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process (SIGKILL: silently) when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl (an unusual libc): rely on the getppid checks
        pass


def die_with(pid: int) -> None:
    """End this process (``os._exit``, silently) as soon as process ``pid`` ends: for a process whose parent
    is not that one (``compare``'s sides are forked by multiprocessing's fork server, which outlives a killed
    bnstats as long as they live), so neither PDEATHSIG nor ``getppid`` can tell. A daemon thread waits on a
    pidfd (Linux); elsewhere it polls."""
    threading.Thread(target=_wait_for_exit, args=(pid,), name="bnstats-die-with", daemon=True).start()


def _wait_for_exit(pid: int) -> None:
    import select

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux, an old kernel): poll
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # readable once the process has ended
        os._exit(1)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except OSError:  # alive, another user's (a reused pid would be too: unlikely within the run)
            pass
        time.sleep(0.5)


def _context():
    # fork starts workers in milliseconds and shares the imported modules;
    # elsewhere (macOS, Windows) use the platform default.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()
