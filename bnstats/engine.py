"""Running the work: files -> per-chunk tallies -> one merged tally.

Serially, on worker processes (:func:`compute`) or on a Dask cluster
(:func:`compute_dask`).

The sorted file list is cut into fixed-size chunks. Each chunk is counted by
:func:`count_files` (in this process, in a worker process, or as a Dask task)
into a small :class:`Tally`: statistics state, skipped files, per-class
states. Only tallies travel between processes, never pixels. The parent
merges tallies in chunk order, so the result does not depend on the number of
workers (bit for bit: integer states add exactly, and float states see the
same merge sequence whatever the worker count).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .batchnorm import BatchNormTracker, image_moments
from .decode import DecodeError, DecodeOptions, decode_file, prefetch
from .sources import class_of
from .stats import LayoutError, RunningStats

# Files per task. Small lists get small chunks (progress, balance across
# workers); large ones up to MAX_CHUNK_SIZE, which keeps the parent's
# per-chunk cost (IPC wake-ups, merging) near 1% of a core: with 16-file
# chunks it took ~20% of one, slowing -j2 by ~10% on 2 cores. The size
# depends on the list length alone, never on the worker count, so float
# results are the same for any -j.
CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 128


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`compute` between two chunks.

    ``tally`` holds every chunk merged so far and ``done`` how many files of
    the list they cover: a consistent state to checkpoint.
    """

    def __init__(self, tally: "Tally", done: int):
        super().__init__(f"interrupted after {done} files")
        self.tally, self.done = tally, done


class UnreadableImage(Exception):
    """An image could not be read and ``strict`` was set."""

    def __init__(self, path: str, error: str):
        super().__init__(path, error)  # args must rebuild it: it crosses process boundaries
        self.path, self.error = path, error

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


@dataclass
class Tally:
    """The mergeable result of counting some files.

    ``stats`` is the overall state; ``groups`` maps ImageFolder class names
    to their own states (only with grouping); ``bands`` names the channels;
    ``skipped`` lists ``{"path", "error"}`` of unreadable files; ``notes``
    holds one-time warnings for the user.
    """

    stats: RunningStats = field(default_factory=RunningStats)
    bands: tuple[str, ...] | None = None
    skipped: list[dict] = field(default_factory=list)
    groups: dict[str, RunningStats] | None = None
    notes: set[str] = field(default_factory=set)
    # per-image moments in file order, only when asked for (BatchNorm
    # simulation); consumed by compute() and never merged
    moments: list[tuple] | None = None

    def merge(self, other: "Tally") -> "Tally":
        """Fold ``other`` (counted after this one) into this tally; returns self."""
        if other.bands is not None:
            self._check_bands(other.bands)
        self.stats.merge(other.stats)
        self.skipped.extend(other.skipped)
        if other.groups is not None:
            self.groups = self.groups if self.groups is not None else {}
            for name, state in other.groups.items():
                self.groups.setdefault(name, RunningStats()).merge(state)
        self.notes |= other.notes
        return self

    def _check_bands(self, bands: tuple[str, ...]) -> None:
        if self.bands is None:
            self.bands = bands
        elif bands != self.bands:
            raise LayoutError(
                f"bands {''.join(bands)} differ from earlier images' {''.join(self.bands)}; "
                "use --mode rgb or --mode gray to convert every image to one layout"
            )


def count_files(
    paths: Sequence[str],
    options: DecodeOptions = DecodeOptions(),
    strict: bool = False,
    group_roots: Sequence[str] | None = None,
    moments: bool = False,
) -> Tally:
    """Count the pixels of ``paths`` into one :class:`Tally`.

    This is the unit of work a worker process or a Dask task runs, and the
    function to call from your own Ray/Dask/Spark job: it takes a list of
    paths and returns a picklable, mergeable tally. Unreadable files are
    listed in ``tally.skipped`` (or raise :class:`UnreadableImage` with
    ``strict``). With ``group_roots``, per-class states are kept too, the
    class of a file being its top-level folder under one of the roots. With
    ``moments``, ``tally.moments`` lists each image's moments in order.
    """
    tally = Tally(groups={} if group_roots is not None else None, moments=[] if moments else None)
    prefetch(paths)
    for path in paths:
        try:
            decoded = decode_file(path, options)
        except (DecodeError, LayoutError):
            raise
        except Exception as exc:  # Pillow raises many types for bad data
            error = _describe(exc)
            if strict:
                raise UnreadableImage(path, error) from None
            tally.skipped.append({"path": path, "error": error})
            continue
        try:
            tally._check_bands(decoded.bands)
            if group_roots is None:
                _count(tally.stats, decoded)
            else:  # count the image once, add it to the total and to its class
                image = _count(RunningStats(), decoded)
                tally.stats.merge(image)
                tally.groups.setdefault(class_of(path, group_roots), RunningStats()).merge(image)
        except LayoutError as exc:
            raise LayoutError(f"{path}: {exc}") from None
        tally.notes.update(decoded.notes)
        if moments:
            tally.moments.append(image_moments(decoded.counts, decoded.pixels))
    return tally


def _count(state: RunningStats, decoded) -> RunningStats:
    """Add one decoded image to ``state``; returns it."""
    if decoded.counts is not None:
        state.update_histogram(decoded.counts)
    else:
        state.update(decoded.pixels, images=1)
    return state


def _describe(exc: BaseException) -> str:
    """One line for a skipped file: the error type and message."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", message)  # Pillow names its buffer
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def chunk_size_for(count: int) -> int:
    """Files per chunk for a list of ``count`` files (about 32 chunks, 16..128 files)."""
    return min(MAX_CHUNK_SIZE, max(CHUNK_SIZE, count // 32))


def chunked(paths: Sequence[str], size: int = CHUNK_SIZE) -> list[list[str]]:
    """Cut the file list into consecutive chunks of ``size`` files."""
    return [list(paths[i : i + size]) for i in range(0, len(paths), size)]


def default_workers() -> int:
    """All cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def compute(
    paths: Sequence[str],
    options: DecodeOptions = DecodeOptions(),
    *,
    workers: int | None = None,
    strict: bool = False,
    group_roots: Sequence[str] | None = None,
    tally: Tally | None = None,
    start: int = 0,
    on_chunk: Callable[[Tally, int], None] | None = None,
    batchnorm: BatchNormTracker | None = None,
) -> Tally:
    """Count all of ``paths`` on ``workers`` processes (default: all cores).

    Resumes from ``tally`` after the first ``start`` files when given (a
    checkpoint). ``on_chunk(tally, files_done)`` is called in this process
    after each chunk is merged, in file order: the place for progress bars
    and checkpoints. ``batchnorm`` is fed every image's moments in file order
    (its last, partial batch is left for the caller to ``finish()``).

    Ctrl-C (in the main thread) lets the chunk being merged finish and then
    raises :class:`Interrupted`, which carries the consistent partial tally;
    a second Ctrl-C raises a plain KeyboardInterrupt at once.
    """
    workers = workers or default_workers()
    tally = tally if tally is not None else Tally(groups={} if group_roots is not None else None)
    # sized by the whole list, so a resumed run cuts the rest as the first run did
    chunks = chunked(paths[start:], chunk_size_for(len(paths)))
    done = start
    parts = _map_chunks(chunks, options, strict, group_roots, batchnorm is not None, workers)
    with _deferred_interrupt() as interrupted:
        try:
            for chunk, part in zip(chunks, parts):
                try:
                    tally.merge(part)
                except LayoutError as exc:  # within a chunk count_files names the file; here too
                    skipped = {s["path"] for s in part.skipped}
                    first = next(p for p in chunk if p not in skipped)
                    raise LayoutError(f"{first}: {exc}") from None
                for image in part.moments or ():
                    batchnorm.add(image, tally.stats.max_value)
                done += len(chunk)
                if on_chunk is not None:
                    on_chunk(tally, done)
                if interrupted():
                    raise Interrupted(tally, done)
        finally:
            parts.close()  # stops the worker pool at once on errors and Ctrl-C
    return tally


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn the first Ctrl-C into a flag checked between chunks.

    A KeyboardInterrupt raised in the middle of a merge would leave the tally
    half-updated; deferring it to a chunk boundary keeps every partial state
    consistent and checkpointable. Outside the main thread signals cannot be
    handled, and nothing changes.
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


def _map_chunks(chunks, options, strict, group_roots, moments, workers):
    """Yield the tally of each chunk, in order, from this process or a pool."""
    args = [(chunk, options, strict, group_roots, moments) for chunk in chunks]
    if workers <= 1 or len(chunks) <= 1:
        for a in args:
            yield count_files(*a)
        return
    pool = _context().Pool(min(workers, len(chunks)), initializer=_worker_init)
    try:
        yield from pool.imap(_count_chunk, args)
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C or an error: stop the workers now
        raise
    finally:
        pool.join()


def _count_chunk(args) -> Tally:
    return count_files(*args)


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


# -- Dask ------------------------------------------------------------------------

DASK_FANIN = 8  # tallies merged per reduce task


class DaskError(Exception):
    """Dask is not installed, or the scheduler cannot be reached."""


def merge_tallies(*parts: Tally) -> Tally:
    """Merge tallies in the order given (the reduce step of the Dask tree)."""
    merged = Tally(groups={} if any(p.groups is not None for p in parts) else None)
    for part in parts:
        merged.merge(part)
    return merged


def compute_dask(
    paths: Sequence[str],
    options: DecodeOptions = DecodeOptions(),
    *,
    scheduler,
    strict: bool = False,
    group_roots: Sequence[str] | None = None,
    on_chunk: Callable[[Tally, int], None] | None = None,
    chunk_size: int | None = None,
) -> Tally:
    """Count ``paths`` on a Dask ``distributed`` cluster.

    ``scheduler`` is a scheduler address (``tcp://host:8786``) or a
    ``distributed.Client``. Chunks of files become :func:`count_files` tasks
    on the workers (which must see the same paths, e.g. on a shared
    filesystem); their tallies are merged on the cluster in a tree of
    :func:`merge_tallies` tasks, keeping chunk order, and only the final
    tally comes back. Integer data gives the local result bit for bit.
    ``on_chunk(tally, files_done)`` reports progress with an empty tally;
    skipped files arrive with the result. Chunks are cut as in a local run
    (``chunk_size_for``) unless ``chunk_size`` is given.
    """
    chunk_size = chunk_size or chunk_size_for(len(paths))
    try:
        from distributed import Client
    except ImportError:
        raise DaskError('--scheduler needs Dask: pip install "bnstats[dask]"') from None
    if isinstance(scheduler, Client):
        client = scheduler
    else:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, ValueError) as exc:
            raise DaskError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    # Workers resolve paths against their own working directory: send absolute
    # ones, and report skipped files as the caller spelled them.
    absolute = [os.path.abspath(p) for p in paths]
    roots = None if group_roots is None else [os.path.abspath(r) for r in group_roots]
    try:
        tally = _reduce_on_dask(client, chunked(absolute, chunk_size), options, strict, roots, on_chunk)
    finally:
        if client is not scheduler:
            client.close()
    spelled = dict(zip(absolute, paths))
    for skip in tally.skipped:
        skip["path"] = spelled.get(skip["path"], skip["path"])
    return tally


def _reduce_on_dask(client, chunks, options, strict, group_roots, on_chunk) -> Tally:
    from distributed import as_completed

    if not chunks:
        return Tally(groups={} if group_roots is not None else None)
    leaves = client.map(count_files, chunks, options=options, strict=strict, group_roots=group_roots, pure=False)
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([client.submit(merge_tallies, *below[i : i + DASK_FANIN], pure=False)
                       for i in range(0, len(below), DASK_FANIN)])
    sizes = {leaf.key: len(chunk) for leaf, chunk in zip(leaves, chunks)}
    try:
        done = 0
        for leaf in as_completed(leaves):
            if leaf.status == "error":
                leaf.result()  # raises the task's exception (UnreadableImage, ...)
            done += sizes[leaf.key]
            if on_chunk is not None:
                on_chunk(Tally(), done)
        return levels[-1][0].result()
    except BaseException:  # an error or Ctrl-C: stop the work still queued
        client.cancel([future for level in levels for future in level])
        raise
