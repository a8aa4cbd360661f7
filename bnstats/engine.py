"""Running the work locally: partitions -> tallies on worker processes -> one tally.

The sorted keys of a selection are cut into partitions (tasks). Each is
counted by :func:`bnstats.count.count_partition` — in this process, or in a
worker process — into a small tally; only tallies (and, for observers,
per-image moments) travel between processes, never pixels. The parent merges
tallies in partition order and feeds observers in item order, so the result
does not depend on the number of workers (bit for bit: integer states add
exactly, and float states see the same merge sequence whatever the worker
count). Running on a Dask cluster is ``bnstats.cluster``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from .count import CountSpec, Tally, UnreadableImage, count_files, count_partition  # noqa: F401
from .decode import DecodeOptions
from .observers import Observer, feed
from .sources import FileSource, Partition, Source
from .stats import LayoutError

# Items per task. Small lists get small chunks (progress, balance across
# workers); large ones up to MAX_CHUNK_SIZE, which keeps the parent's
# per-chunk cost (IPC wake-ups, merging) near 1% of a core: with 16-file
# chunks it took ~20% of one, slowing -j2 by ~10% on 2 cores. The size
# depends on the list length alone, never on the worker count, so float
# results are the same for any -j.
CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 128


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`compute` between two partitions.

    ``tally`` holds every partition merged so far and ``done`` how many items
    of the list they cover: a consistent state to checkpoint.
    """

    def __init__(self, tally: Tally, done: int):
        super().__init__(f"interrupted after {done} files")
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
) -> Tally:
    """Count the items ``keys`` of ``source`` on ``workers`` processes (default: all cores).

    ``source`` defaults to image files (``keys`` are paths, classes under
    ``group_roots``); ``spec`` defaults to one made of ``options``,
    ``strict`` and ``group_roots``. Resumes from ``tally`` after the first
    ``start`` items when given (a checkpoint). ``on_chunk(tally, done)`` is
    called in this process after each partition is merged, in item order:
    the place for progress bars and checkpoints. ``observers`` are fed every
    image's moments in item order (their ``finish()`` is left to the caller).

    Ctrl-C (in the main thread) lets the partition being merged finish and
    then raises :class:`Interrupted`, which carries the consistent partial
    tally; a second Ctrl-C raises a plain KeyboardInterrupt at once.
    """
    source = source if source is not None else FileSource(group_roots or [])
    spec = make_spec(options, strict, group_roots, observers, spec)
    tally = tally if tally is not None else Tally.for_spec(spec)
    # sized by the whole list, so a resumed run cuts the rest as the first run did
    partitions = source.partitions(keys[start:], chunk_size_for(len(keys)))
    done = start
    parts = _map_partitions(partitions, spec, workers)
    with _deferred_interrupt() as interrupted:
        try:
            for partition, part in zip(partitions, parts):
                _merge(tally, part.tally, partition)
                feed(observers, part.images or (), tally.stats.max_value)
                done += len(partition)
                if on_chunk is not None:
                    on_chunk(tally, done)
                if interrupted():
                    raise Interrupted(tally, done)
        finally:
            parts.close()  # stops the worker pool at once on errors and Ctrl-C
    return tally


def _merge(tally: Tally, part: Tally, partition: Partition) -> None:
    """Merge a partition's tally; a layout clash names the partition's first counted item."""
    try:
        tally.merge(part)
    except LayoutError as exc:  # within a partition count_partition names the item; here too
        skipped = {s["path"] for s in part.skipped}
        first = next(k for k in partition.keys if k not in skipped)
        raise LayoutError(f"{first}: {exc}") from None


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn the first Ctrl-C into a flag checked between partitions.

    A KeyboardInterrupt raised in the middle of a merge would leave the tally
    half-updated; deferring it to a partition boundary keeps every partial
    state consistent and checkpointable. Outside the main thread signals
    cannot be handled, and nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def _map_partitions(partitions: list[Partition], spec: CountSpec, workers: int | None):
    """Yield the :class:`~bnstats.count.Part` of each partition, in order, from this process or a pool."""
    tasks = [(p.source, p.keys, spec) for p in partitions]
    if not uses_pool(workers, len(partitions)):
        for task in tasks:
            yield count_partition(*task)
        return
    pool = _context().Pool(min(workers or default_workers(), len(partitions)), initializer=_worker_init)
    try:
        yield from pool.imap(_count_task, tasks)
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C or an error: stop the workers now
        raise
    finally:
        pool.join()


def _count_task(task):
    return count_partition(*task)


def _worker_init() -> None:
    # The parent handles Ctrl-C and terminates the pool; workers must not
    # print their own KeyboardInterrupt tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _context():
    # fork starts workers in milliseconds and shares the imported modules;
    # elsewhere (macOS, Windows) use the platform default.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()
