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
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace

from . import interrupts
from ..statistics.tally import Tally
from .count import CountSpec, count_partition
from .pool import IDLE, WorkerDied, WorkerPool, lost_message
from ..observers.base import Observer, feed
from ..inputs.base import GrowingPartitions, Partition, Source
from ..inputs.files import FileSource
from ..inputs.keys import known_sorted
from ..inputs.listing import GrowingKeys
from ..statistics.formulas import LayoutError

# Items per task. Small lists get small chunks (progress, balance across
# workers); large ones up to MAX_CHUNK_SIZE, which keeps the parent's
# per-chunk cost (IPC wake-ups, merging) near 1% of a core: with 16-file
# chunks it took ~20% of one, slowing -j2 by ~10% on 2 cores. The size
# depends on the list length alone, never on the worker count, so float
# results are the same for any -j.
CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 128
PARTITIONS = 32  # aimed at for a list of up to PARTITIONS * MAX_CHUNK_SIZE items


class Interrupted(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) stopped :func:`count_selection` between two partitions.

    ``tally`` holds every partition merged so far and ``done`` how many items
    of the list they cover: a consistent state to checkpoint. ``signum`` is
    the signal.
    """

    saved_to: str | None = None  # the checkpoint the job saved the partial state to, if any

    def __init__(self, tally: Tally, done: int, signum: int = signal.SIGINT):
        super().__init__(f"{interrupts.signal_name(signum)} after {done} files")
        self.tally, self.done, self.signum = tally, done, signum


class WorkerLost(RuntimeError):
    """A worker process died (killed by a signal, e.g. out of memory) while counting a partition.

    Like :class:`Interrupted` it carries the consistent partial state:
    ``tally`` (every partition merged before the lost one) and ``done``.
    """

    saved_to: str | None = None  # the checkpoint the job saved the partial state to, if any

    def __init__(self, message: str, tally: Tally | None = None, done: int = 0):
        super().__init__(message)
        self.tally, self.done = tally, done


def chunk_size_for(count: int) -> int:
    """Items per partition for a list of ``count`` items (about 32 partitions, 16..128 items)."""
    return min(MAX_CHUNK_SIZE, max(CHUNK_SIZE, count // PARTITIONS))


def _partitions(keys: Sequence[str], source: Source, start: int, chunk_size: int | None) -> Sequence[Partition]:
    """The partitions of ``keys`` after the first ``start``, cut as the whole list is (a resumed run cuts the
    rest as the first run did); keys still being listed (:class:`GrowingKeys`) are cut as they come."""
    if isinstance(keys, GrowingKeys):
        if start:
            raise ValueError("a run resumed from a checkpoint counts a finished list, not one being listed")
        # from MAX_CHUNK_SIZE * PARTITIONS items on every list is cut in partitions of MAX_CHUNK_SIZE: a walk
        # that has found as many is cut as it goes on, as the finished list will be
        size = chunk_size or chunk_size_for(keys.wait_for(MAX_CHUNK_SIZE * PARTITIONS))
        return GrowingPartitions(source, keys, size)
    size = chunk_size or chunk_size_for(len(keys))
    if not known_sorted(keys):  # a sample, in its random order: not runs of one input each
        return source.sample_partitions(keys[start:], source.sample_size(keys, size))
    return source.partitions(keys[start:], size)


def _has(partitions: Sequence[Partition], index: int) -> bool:
    """Whether partition ``index`` exists (for a list still being listed: waiting until that is known)."""
    return partitions.has(index) if isinstance(partitions, GrowingPartitions) else index < len(partitions)


def _ready(partitions: Sequence[Partition]) -> int:
    """How many partitions can be made now (all of them, but for a list still being listed)."""
    return partitions.ready() if isinstance(partitions, GrowingPartitions) else len(partitions)


def default_workers() -> int:
    """All cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def uses_pool(workers: int | None, partitions: int) -> bool:
    """The rule for when worker processes run: more than one worker and more than one partition."""
    return (workers or default_workers()) > 1 and partitions > 1


def count_selection(
    keys: Sequence[str],
    *,
    source: Source | None = None,
    spec: CountSpec | None = None,
    workers: int | None = None,
    tally: Tally | None = None,
    start: int = 0,
    on_chunk: Callable[[Tally, int], None] | None = None,
    observers: Sequence[Observer] = (),
    chunk_size: int | None = None,
) -> Tally:
    """Count the items ``keys`` of ``source`` on ``workers`` processes (default: all cores).

    ``source`` defaults to image files (``keys`` are paths); ``spec`` to
    the default :class:`CountSpec`. Resumes from ``tally`` after the first
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
    source = source if source is not None else FileSource([])
    spec = spec if spec is not None else CountSpec()
    if observers and not spec.per_image:  # observers are fed every image's moments
        spec = replace(spec, per_image=True)
    tally = tally if tally is not None else Tally.for_spec(spec)
    partitions = _partitions(keys, source, start, chunk_size)
    done = start
    results = _map_partitions(partitions, spec, workers)
    # a stop signal waits for the next boundary, at most interrupts.STOP_GRACE seconds: a read from a stalled
    # server may never end, so then the wait is interrupted (StopWaiting), never a merge (critical)
    with interrupts.deferred(interrupt_waits=True) as stop_signal:
        try:
            for partition, counted in zip(partitions, results):
                with interrupts.critical():
                    _merge(tally, counted.tally, partition)
                    feed(observers, counted.images or (), tally.stats.max_value, tally.bands)
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
            # stops the worker pool at once on errors and signals; critical, as the save that follows: on a loaded
            # machine stopping the pool outlasted the forced exit's grace and the checkpoint was never saved
            with interrupts.critical():
                results.close()
    return tally


def _merge(tally: Tally, other: Tally, partition: Partition) -> None:
    """Merge a partition's tally; a layout clash names the partition's first counted item."""
    try:
        tally.merge(other)
    except LayoutError as exc:  # within a partition count_partition names the item; here too
        skipped = {s["path"] for s in other.skipped}
        first = next(k for k in partition.keys if k not in skipped)
        raise LayoutError(f"{first}: {exc}") from None


def _map_partitions(partitions: Sequence[Partition], spec: CountSpec, workers: int | None):
    """Yield the :class:`~bnstats.running.count.Counted` of each partition, in order, from this process or a pool.

    A task sent to a worker is a run of consecutive partitions, as many as
    take about :data:`TASK_SECONDS` (measured on the tasks done so far): on
    thumbnails a partition takes a millisecond, and one round trip per
    partition cost the parent a fifth of a core. Partitions stay the unit
    of the result, so how they are grouped changes nothing in it.

    The pool keeps at most two tasks per worker submitted ahead (constant
    memory however long the list) and yields results strictly in partition
    order. A worker that dies is seen at once (its sentinel, see
    :class:`~bnstats.running.pool.WorkerPool`): that becomes
    :class:`WorkerLost` naming the cause and the partition.
    """
    def tasks(start: int, stop: int) -> list:  # made when sent: a million files are not a list of tasks
        return [(p.source, p.keys, spec) for p in partitions[start:stop]]

    if not uses_pool(workers, 1 + _has(partitions, 1)):
        for partition in partitions:
            yield count_partition(partition.source, partition.keys, spec)
        return
    count = min(workers or default_workers(), max(2, _ready(partitions)))
    ahead = 2 * count
    # Forked workers must never finalize the caller's objects: collected there, an unreachable dask
    # Client's __del__ waits for an event loop the fork left behind. Frozen objects are never collected,
    # in the workers forked while they are frozen; the caller's own collector resumes once they exist.
    freezing = gc.get_freeze_count() == 0  # a caller who froze objects already keeps them frozen, as they were
    if freezing:
        gc.freeze()
    try:
        pool = WorkerPool(count, count_task)
    finally:
        if freezing:
            gc.unfreeze()
    pending: collections.deque = collections.deque()  # the ids of the tasks in flight, in order
    submitted = done = 0  # partitions submitted, and yielded
    tasks_sent = 0
    seconds = partitions_timed = 0.0  # worker time and partitions of the tasks returned so far
    # a forced exit (a stop signal while the parent waits on a stalled worker) takes the workers along
    with interrupts.on_forced_exit(pool.kill):
        complete = False
        try:
            while _has(partitions, done):
                try:
                    while len(pending) < ahead and _has(partitions, submitted):
                        left = max(1, _ready(partitions) - submitted)  # of a list being listed: those ready
                        task = tasks(submitted, submitted + _task_size(seconds, partitions_timed, left, count))
                        pool.submit(tasks_sent, submitted, task)
                        pending.append(tasks_sent)
                        submitted += len(task)
                        tasks_sent += 1
                    done_here, error, took = pool.result(pending.popleft())
                except WorkerDied:
                    raise WorkerLost(lost_message(pool, partitions, done)) from None
                seconds += took
                partitions_timed += len(done_here) + (error is not None)
                for counted in done_here:
                    done += 1
                    yield counted
                if error is not None:
                    exc, where = error
                    raise exc from WorkerTraceback(where)
            complete = True
        finally:
            # an error, a signal or a lost worker: stop the workers now, not after their tasks
            pool.close(kill=not complete)


TASK_SECONDS = 0.02  # worker time aimed at per task (several partitions of thumbnails, one of photos)
MAX_TASK_PARTITIONS = 16


def _task_size(seconds: float, timed: float, left: int, workers: int) -> int:
    """Partitions in the next task: about TASK_SECONDS of work, one until a task has been timed, and
    never more than an even share of what is left (the last tasks stay small, the workers busy)."""
    if not timed or seconds <= 0:
        return 1
    size = int(TASK_SECONDS / (seconds / timed))
    return max(1, min(size, MAX_TASK_PARTITIONS, left // (2 * workers)))


def count_task(progress, index: int, first: int, tasks: Sequence[tuple[Source, Sequence[str], CountSpec]]):
    """In worker ``index``: count consecutive partitions (``first`` is the first one's index).

    Returns ``(counted, error, seconds)``. An error in one partition comes
    back, with its traceback as text, after the partitions counted before it, which the
    parent merges first, as if each partition had been a task. ``progress``
    (shared with the parent) says which partition this worker is counting.
    """
    started = time.perf_counter()
    counted, error = [], None
    try:
        for offset, task in enumerate(tasks):
            progress[index] = first + offset
            try:
                counted.append(count_partition(*task))
            except Exception as exc:  # noqa: BLE001 - raised in the parent, in its turn
                error = (exc, "".join(traceback.format_exception(exc)))
                break
    finally:
        progress[index] = IDLE
    return counted, error, time.perf_counter() - started


class WorkerTraceback(Exception):
    """The cause attached to an error raised in a worker: its traceback there, as text."""

    def __str__(self) -> str:
        return "\n" + self.args[0]
