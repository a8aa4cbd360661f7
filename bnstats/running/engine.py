"""Running the work locally: partitions -> tallies on worker processes -> one tally.

The sorted keys of a selection are cut into partitions (tasks). Each is
counted by :func:`bnstats.running.count.count_partition` — in this process, or in a
worker process — into a small tally; only tallies (and, for observers,
per-image moments) travel between processes, never pixels. The parent merges
tallies in partition order and feeds observers in item order, so the result
does not depend on the number of workers (bit for bit: integer states add
exactly, and float states see the same merge sequence whatever the worker
count). Running on a Dask cluster is ``bnstats.running.cluster``.
"""

from __future__ import annotations

import collections
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from . import interrupts
from ..statistics.tally import Tally
from .count import CountSpec, count_partition
from ..decoding.decode import DecodeOptions
from ..observers.base import Observer, feed
from ..inputs.base import Partition, Source
from ..inputs.files import FileSource
from ..statistics.formulas import LayoutError

# Items per task. Small lists get small chunks (progress, balance across
# workers); large ones up to MAX_CHUNK_SIZE, which keeps the parent's
# per-chunk cost (IPC wake-ups, merging) near 1% of a core: with 16-file
# chunks it took ~20% of one, slowing -j2 by ~10% on 2 cores. The size
# depends on the list length alone, never on the worker count, so float
# results are the same for any -j.
CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 128


class Interrupted(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) stopped :func:`compute` between two partitions.

    ``tally`` holds every partition merged so far and ``done`` how many items
    of the list they cover: a consistent state to checkpoint. ``signum`` is
    the signal.
    """

    def __init__(self, tally: Tally, done: int, signum: int = signal.SIGINT):
        super().__init__(f"{interrupts.signal_name(signum)} after {done} files")
        self.tally, self.done, self.signum = tally, done, signum


class WorkerLost(RuntimeError):
    """A worker process died (killed by a signal, e.g. out of memory) while counting a partition.

    Like :class:`Interrupted` it carries the consistent partial state:
    ``tally`` (every partition merged before the lost one) and ``done``.
    """

    def __init__(self, message: str, tally: Tally | None = None, done: int = 0):
        super().__init__(message)
        self.tally, self.done = tally, done


def chunk_size_for(count: int) -> int:
    """Items per partition for a list of ``count`` items (about 32 partitions, 16..128 items)."""
    return min(MAX_CHUNK_SIZE, max(CHUNK_SIZE, count // 32))


def chunked(keys: Sequence[str], size: int = CHUNK_SIZE) -> list[list[str]]:
    """Cut the item list into consecutive chunks of ``size`` items."""
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


def default_workers() -> int:
    """All cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def uses_pool(workers: int | None, partitions: int) -> bool:
    """The rule for when worker processes run: more than one worker and more than one partition."""
    return (workers or default_workers()) > 1 and partitions > 1


def make_spec(options=None, strict=False, group_roots=None, observers=(), spec=None) -> CountSpec:
    """The :class:`CountSpec` for the convenience arguments of :func:`compute`."""
    if spec is None:
        spec = CountSpec(options or DecodeOptions(), strict=strict, group_by=group_roots is not None)
    return replace(spec, per_image=True) if observers and not spec.per_image else spec


def compute(
    keys: Sequence[str],
    options: DecodeOptions | None = None,
    *,
    source: Source | None = None,
    spec: CountSpec | None = None,
    workers: int | None = None,
    strict: bool = False,
    group_roots: Sequence[str] | None = None,
    tally: Tally | None = None,
    start: int = 0,
    on_chunk: Callable[[Tally, int], None] | None = None,
    observers: Sequence[Observer] = (),
    chunk_size: int | None = None,
) -> Tally:
    """Count the items ``keys`` of ``source`` on ``workers`` processes (default: all cores).

    ``source`` defaults to image files (``keys`` are paths, classes under
    ``group_roots``); ``spec`` defaults to one made of ``options``,
    ``strict`` and ``group_roots``. Resumes from ``tally`` after the first
    ``start`` items when given (a checkpoint). ``on_chunk(tally, done)`` is
    called in this process after each partition is merged, in item order:
    the place for progress bars and checkpoints. ``observers`` are fed every
    image's moments in item order (their ``finish()`` is left to the caller);
    when one is ``satisfied()`` the run stops after that partition, the
    items after it not counted. ``chunk_size`` overrides the items per
    partition (it must not depend on the worker count).

    Ctrl-C, SIGTERM or SIGHUP (in the main thread) lets the partition being
    merged finish and then raises :class:`Interrupted`, which carries the
    consistent partial tally; a second signal raises a plain
    KeyboardInterrupt at once. A worker process that dies (e.g. killed by
    the out-of-memory killer) raises :class:`WorkerLost`, with the tally
    merged so far.
    """
    source = source if source is not None else FileSource(group_roots or [])
    spec = make_spec(options, strict, group_roots, observers, spec)
    tally = tally if tally is not None else Tally.for_spec(spec)
    # sized by the whole list, so a resumed run cuts the rest as the first run did
    partitions = source.partitions(keys[start:], chunk_size or chunk_size_for(len(keys)))
    done = start
    parts = _map_partitions(partitions, spec, workers)
    # a stop signal waits for the next boundary, at most interrupts.STOP_GRACE seconds: a read from a stalled
    # server may never end, so then the wait is interrupted (StopWaiting), never a merge (critical)
    with interrupts.deferred(interrupt_waits=True) as stop_signal:
        try:
            for partition, part in zip(partitions, parts):
                with interrupts.critical():
                    _merge(tally, part.tally, partition)
                    feed(observers, part.images or (), tally.stats.max_value, tally.bands)
                    done += len(partition)
                    if on_chunk is not None:
                        on_chunk(tally, done)
                if stop_signal():
                    raise Interrupted(tally, done, stop_signal())
                if any(observer.satisfied() for observer in observers):
                    break
        except interrupts.StopWaiting as exc:  # the partition being counted is dropped: the merged ones stand
            raise Interrupted(tally, done, exc.signum) from None
        except WorkerLost as exc:
            exc.tally, exc.done = tally, done  # partitions merge in order: a consistent prefix
            raise
        finally:
            parts.close()  # stops the worker pool at once on errors and signals
    return tally


def _merge(tally: Tally, part: Tally, partition: Partition) -> None:
    """Merge a partition's tally; a layout clash names the partition's first counted item."""
    try:
        tally.merge(part)
    except LayoutError as exc:  # within a partition count_partition names the item; here too
        skipped = {s["path"] for s in part.skipped}
        first = next(k for k in partition.keys if k not in skipped)
        raise LayoutError(f"{first}: {exc}") from None


def _map_partitions(partitions: list[Partition], spec: CountSpec, workers: int | None):
    """Yield the :class:`~bnstats.running.count.Part` of each partition, in order, from this process or a pool.

    A task sent to a worker is a run of consecutive partitions, as many as
    take about :data:`TASK_SECONDS` (measured on the tasks done so far): on
    thumbnails a partition takes a millisecond, and one round trip per
    partition cost the parent a fifth of a core. Partitions stay the unit
    of the result, so how they are grouped changes nothing in it.

    The pool keeps at most two tasks per worker submitted ahead (constant
    memory however long the list) and yields results strictly in partition
    order. A worker that dies breaks the pool (``BrokenProcessPool``, where
    ``multiprocessing.Pool`` would wait forever for the lost task): that
    becomes :class:`WorkerLost` naming the cause and the partition.
    """
    tasks = [(p.source, p.keys, spec) for p in partitions]
    if not uses_pool(workers, len(partitions)):
        for task in tasks:
            yield count_partition(*task)
        return
    count = min(workers or default_workers(), len(partitions))
    ahead = 2 * count
    context = _context()
    # for task k in flight, slots[2 * (k % ahead)] holds the pid of the worker counting it (0: none)
    # and the next slot the partition it is at: at most `ahead` tasks are in flight, so they never clash
    slots = context.RawArray("q", 2 * ahead)
    pool = ProcessPoolExecutor(count, mp_context=context, initializer=_worker_init, initargs=(os.getpid(), slots))
    # Forked workers must never finalize the caller's objects: collected there, an unreachable dask
    # Client's __del__ waits for an event loop the fork left behind. Frozen objects are never collected,
    # in the workers forked while they are frozen; the caller's own collector resumes once they exist.
    freezing = gc.get_freeze_count() == 0  # a caller who froze objects already keeps them frozen, as they were
    if freezing:
        gc.freeze()
    # pid -> Process, kept here: the pool forgets its processes once it breaks, and there is
    # no public way to see them (or kill them) before Python 3.14
    processes: dict = {}
    pending: collections.deque = collections.deque()  # the futures of the tasks in flight, in order
    submitted = done = 0  # partitions submitted, and yielded
    tasks_sent = 0
    seconds = partitions_timed = 0.0  # worker time and partitions of the tasks returned so far
    # a forced exit (a stop signal while the parent waits on a stalled worker) takes the workers along
    with interrupts.on_forced_exit(lambda: _kill(processes)):
        try:
            while done < len(tasks):
                try:
                    while len(pending) < ahead and submitted < len(tasks):
                        size = _task_size(seconds, partitions_timed, len(tasks) - submitted, count)
                        group = tasks[submitted : submitted + size]
                        future = pool.submit(_count_task, tasks_sent % ahead, submitted, group)
                        pending.append(future)
                        submitted += len(group)
                        tasks_sent += 1
                        processes.update(pool._processes.copy())  # copy(): atomic while the pool's thread runs
                        if freezing:
                            gc.unfreeze()  # the first submit forked the workers
                            freezing = False
                    parts, error, took = pending[0].result()
                    pending.popleft()
                except BrokenProcessPool:  # from result(), or from submit() once the pool noticed first
                    raise WorkerLost(_lost_worker_message(partitions, done, ahead, slots, processes)) from None
                seconds += took
                partitions_timed += len(parts) + (error is not None)
                for part in parts:
                    done += 1
                    yield part
                if error is not None:
                    exc, where = error
                    raise exc from _WorkerTraceback(where)
        finally:
            if freezing:
                gc.unfreeze()
            if done < len(tasks):  # an error, a signal or a lost worker: stop the workers now, not after their tasks
                _kill(processes)
            pool.shutdown(wait=True, cancel_futures=True)


TASK_SECONDS = 0.02  # worker time aimed at per task (several partitions of thumbnails, one of photos)
MAX_TASK_PARTITIONS = 16


def _task_size(seconds: float, timed: float, left: int, workers: int) -> int:
    """Partitions in the next task: about TASK_SECONDS of work, one until a task has been timed, and
    never more than an even share of what is left (the last tasks stay small, the workers busy)."""
    if not timed or seconds <= 0:
        return 1
    size = int(TASK_SECONDS / (seconds / timed))
    return max(1, min(size, MAX_TASK_PARTITIONS, left // (2 * workers)))


def _lost_worker_message(partitions: list[Partition], done: int, ahead: int, slots, processes) -> str:
    """What died and what it was counting: the cause (e.g. SIGKILL), the partition's first key and size."""
    workers = list(processes.values())
    # the dead ones' sentinels are ready; join() then waits the moment until the
    # kernel has its exit status (a bare exitcode may still be None)
    ready = set(multiprocessing.connection.wait([p.sentinel for p in workers], timeout=1))
    dead = {}
    for process in workers:
        if process.sentinel in ready:
            process.join(1)
            deadline = time.monotonic() + 1
            # the pool's own thread may be reaping it at this moment: its status lands on the
            # shared Process object a moment later
            while process.exitcode is None and time.monotonic() < deadline:
                time.sleep(0.005)
            dead[process.pid] = process.exitcode
    # the in-flight tasks' slots: which one a dead worker was counting, and at which partition
    lost = sorted((slots[2 * k + 1], slots[2 * k]) for k in range(ahead) if slots[2 * k] in dead)
    # a worker killed between two tasks was counting nothing: name the next partition (and the first dead
    # worker's exit); else the first partition lost, and the exit of the worker that was counting it
    index, pid = lost[0] if lost else (done, next(iter(dead), None))
    partition, code = partitions[index], dead.get(pid)
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


def _kill(processes) -> None:
    for process in list(processes.values()):
        if process.exitcode is None:
            process.kill()


# In a worker: the parent's pid and the shared slots (see _map_partitions).
_parent_pid = 0
_slots = None


def _count_task(slot: int, first: int, tasks: Sequence[tuple[Source, Sequence[str], CountSpec]]):
    """Count consecutive partitions (``first`` is the first one's index): ``(parts, error, seconds)``.

    An error in one partition comes back, with its traceback as text, after
    the parts before it, which the parent merges first, as if each partition
    had been a task.
    """
    started = time.perf_counter()
    parts, error = [], None
    _slots[2 * slot + 1] = first  # the partition before the pid: a lost worker never names a stale one
    _slots[2 * slot] = os.getpid()
    try:
        for index, task in enumerate(tasks):
            _slots[2 * slot + 1] = first + index
            try:
                parts.append(count_partition(*task))
            except Exception as exc:  # noqa: BLE001 - raised in the parent, in its turn
                error = (exc, "".join(traceback.format_exception(exc)))
                break
    finally:
        _slots[2 * slot] = 0
    if os.getppid() != _parent_pid:  # the parent is gone: nobody reads the result; end without a traceback
        os._exit(0)
    return parts, error, time.perf_counter() - started


class _WorkerTraceback(Exception):
    """The cause attached to an error raised in a worker: its traceback there, as text."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def _worker_init(parent_pid: int, slots) -> None:
    global _parent_pid, _slots
    _parent_pid, _slots = parent_pid, slots
    # Only the parent decides when to stop (it defers to a partition boundary,
    # saves the checkpoint, then kills the workers): a Ctrl-C to the whole
    # process group, or a scheduler's SIGTERM to it, must not end workers
    # half-way or make them print tracebacks.
    for signum in interrupts.STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
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
    import threading

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
