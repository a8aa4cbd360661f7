"""Running the work on a Dask ``distributed`` cluster: ``--scheduler``.

The same partitions as a local run become :func:`count_tally` tasks on the
workers; their tallies are merged on the cluster in a tree of
:func:`merge_tallies` tasks, keeping partition order, and only the final
tally comes back. Integer data gives the local result bit for bit. Sources
resolve their items themselves (image files against the working directory
of the process that listed them), so workers need the same paths, e.g. a
shared filesystem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..statistics.tally import Tally
from .count import CountSpec, count_partition
from .engine import chunk_size_for
from ..inputs.base import Source
from ..inputs.files import FileSource

DASK_FANIN = 8  # tallies merged per reduce task
DASK_EXTRA = 'pip install "bnstats[dask]"'


class DaskError(Exception):
    """Dask is not installed, or the scheduler cannot be reached."""


def count_tally(source: Source, keys: list[str], spec: CountSpec) -> Tally:
    """One partition's tally (a Dask task)."""
    return count_partition(source, keys, spec).tally


def merge_tallies(*parts: Tally) -> Tally:
    """Merge tallies in the order given (the reduce step of the Dask tree)."""
    merged = Tally(groups={} if any(p.groups is not None for p in parts) else None)
    for part in parts:
        merged.merge(part)
    return merged


def connect(scheduler, timeout=None):
    """A ``distributed.Client`` for a scheduler address (or the client given).

    ``timeout`` defaults to Dask's own ``distributed.comm.timeouts.connect``
    setting (environment: ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s``).
    """
    try:
        from distributed import Client
    except ImportError:
        raise DaskError(f"--scheduler needs Dask: {DASK_EXTRA}") from None
    if isinstance(scheduler, Client):
        return scheduler
    if timeout is None:
        import dask

        timeout = dask.config.get("distributed.comm.timeouts.connect")
    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, ValueError) as exc:
        raise DaskError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None


def count_on_dask(
    keys: Sequence[str],
    *,
    scheduler,
    source: Source | None = None,
    spec: CountSpec | None = None,
    on_chunk: Callable[[Tally, int], None] | None = None,
    chunk_size: int | None = None,
    timeout=None,
) -> Tally:
    """Count the items ``keys`` of ``source`` on a Dask cluster.

    ``scheduler`` is a scheduler address (``tcp://host:8786``) or a
    ``distributed.Client``. Arguments as for :func:`bnstats.running.engine.count_selection`.
    ``on_chunk(tally, done)`` reports progress with an empty tally; skipped
    items arrive with the result. Partitions are cut as in a local run
    (``chunk_size_for``) unless ``chunk_size`` is given.
    """
    source = source if source is not None else FileSource([])
    spec = spec if spec is not None else CountSpec()
    partitions = source.partitions(list(keys), chunk_size or chunk_size_for(len(keys)))
    client = connect(scheduler, timeout)
    try:
        return _reduce_on_dask(client, partitions, spec, on_chunk)
    finally:
        if client is not scheduler:
            client.close()


def _reduce_on_dask(client, partitions, spec, on_chunk) -> Tally:
    from distributed import as_completed

    if not partitions:
        return Tally.for_spec(spec)
    leaves = client.map(count_tally, [p.source for p in partitions], [p.keys for p in partitions],
                        spec=spec, pure=False)
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([client.submit(merge_tallies, *below[i : i + DASK_FANIN], pure=False)
                       for i in range(0, len(below), DASK_FANIN)])
    sizes = {leaf.key: len(p) for leaf, p in zip(leaves, partitions)}
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
