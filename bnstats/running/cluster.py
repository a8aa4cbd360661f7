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
    partitions = source.partitions(keys, chunk_size or chunk_size_for(len(keys)))
    client = connect(scheduler, timeout)
    try:
        return _reduce_on_dask(client, partitions, spec, on_chunk)
    finally:
        if client is not scheduler:
            client.close()


DASK_AHEAD = 64  # partitions submitted ahead of those done: the cluster never holds every partition at once


def _reduce_on_dask(client, partitions, spec, on_chunk) -> Tally:
    """Count ``partitions`` on the cluster and merge them in a tree of :data:`DASK_FANIN` tallies a node.

    The tree is that of consecutive groups of DASK_FANIN nodes, level by
    level, whatever the timing (float merges see one order). Partitions are
    submitted as earlier ones finish, at most :data:`DASK_AHEAD` ahead, and
    each full group is merged as soon as it is submitted: memory and the
    scheduler's graph stay bounded however many partitions there are.
    """
    from distributed import wait

    if not len(partitions):
        return Tally.for_spec(spec)
    levels: list[list] = [[]]  # per level, the nodes not yet merged into the level above (fewer than DASK_FANIN)
    in_flight: dict = {}  # leaf future -> items, in submission order
    submitted, done = 0, 0

    def add(level: int, node) -> None:
        if level == len(levels):
            levels.append([])
        levels[level].append(node)
        if len(levels[level]) == DASK_FANIN:
            group, levels[level] = levels[level], []
            add(level + 1, client.submit(merge_tallies, *group, pure=False))

    def settle(finished) -> None:
        nonlocal done
        for leaf in finished:
            if leaf.status == "error":
                leaf.result()  # raises the task's exception (UnreadableImage, ...)
            done += in_flight.pop(leaf)
            if on_chunk is not None:
                on_chunk(Tally(), done)

    try:
        while submitted < len(partitions) or in_flight:
            while submitted < len(partitions) and len(in_flight) < DASK_AHEAD:
                partition = partitions[submitted]
                leaf = client.submit(count_tally, partition.source, partition.keys, spec, pure=False)
                in_flight[leaf] = len(partition)
                add(0, leaf)
                submitted += 1
            finished = wait(list(in_flight), return_when="FIRST_COMPLETED").done
            settle([leaf for leaf in in_flight if leaf in finished])  # in submission order
        return _top(client, levels).result()
    except BaseException:  # an error or Ctrl-C: stop the work still queued
        client.cancel([*in_flight, *(node for level in levels for node in level)])
        raise


def _top(client, levels: list[list]):
    """The root of the tree whose full groups were merged as they came: the nodes left at each level are its
    last group there, merged into one node of the level above, as a tree of the whole list would."""
    carry = None  # the node the level below hands up
    for level, nodes in enumerate(levels):
        nodes = nodes + ([carry] if carry is not None else [])
        above = sum(len(n) for n in levels[level + 1 :])
        if len(nodes) == 1 and not above:
            return nodes[0]
        carry = client.submit(merge_tallies, *nodes, pure=False) if nodes else None
    return carry
