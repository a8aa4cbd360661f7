"""Listing in the background: :func:`~bnstats.inputs.select.select` in a thread, so counting can start while a
folder is still being walked.

A folder's walk yields its keys already sorted (``bnstats.inputs.files``),
packed in blocks as they come; the keys of a sealed block are final. A
:class:`ListingInProgress` runs the whole of ``select()`` in a thread —
the walk, the digest of the list, the notes — and hands out the walk's keys
as a :class:`~bnstats.inputs.listing.GrowingKeys`, with the source to read them
with. What counts them (``bnstats.running.job``) keeps its result only if
the finished selection :meth:`~ListingInProgress.confirms` that those were
its keys. A folder that also holds archives, arrays or volumes interleaves
their items: the count stops as soon as the walk finds the first of them
(:class:`~bnstats.inputs.listing.ListingChanged`), and the run counts the
finished selection instead, from the start.

Only a run of exactly one local folder, with no option but those the
folder walk reads, is listed so (:meth:`ListingInProgress.possible`): any
other is listed first, as before.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence

from .base import InputOptions, Source, is_url
from .files import WALK_WATCHER, FileSource
from .keys import PackedKeys, same_keys
from .selection import Selection


class ListingInProgress:
    """``select(paths, options=options)`` running in a thread; :meth:`walk` gives its keys as they come."""

    POLL = 0.05  # seconds between looks at the thread: a stop signal in the main thread is seen between

    @staticmethod
    def possible(paths: Sequence[str], options: InputOptions = InputOptions()) -> bool:
        """Whether the items of ``paths`` can be counted while listed: one local folder, and no option given
        that only another kind of input reads (an option no input reads must be refused before counting)."""
        if len(paths) != 1 or is_url(paths[0]) or not os.path.isdir(paths[0]):
            return False
        return all(getattr(options, f.name) == f.default or f.name in FileSource.options_read
                   for f in dataclasses.fields(options) if "flag" in f.metadata)

    def __init__(self, paths: Sequence[str], options: InputOptions = InputOptions()):
        from .select import select  # the module that lists: it imports this one's neighbours

        self.paths = [os.fspath(p) for p in paths]
        self.finished = threading.Event()
        self._started = threading.Event()  # a folder's walk began, or select() ended without one
        self._walks: list[tuple[Source, Source, PackedKeys]] = []  # (source, its copy to read with, keys)
        self._others: list = []
        self._selection: Selection | None = None
        self._error: BaseException | None = None
        context = contextvars.copy_context()
        context.run(WALK_WATCHER.set, self._watch)
        self._thread = threading.Thread(target=context.run, args=(self._select, select, self.paths, options),
                                        name="bnstats-listing", daemon=True)
        self._thread.start()

    def _watch(self, source: Source, keys: PackedKeys, others: list) -> None:
        # a copy made before the walk fills the source's caches: read in this thread while the other one walks
        self._walks.append((source, copy.copy(source), keys))
        self._others = others  # files of other kinds found: their items will interleave with these keys
        self._started.set()

    def _select(self, select, paths, options) -> None:
        try:
            self._selection = select(paths, options=options)
        except BaseException as exc:  # noqa: BLE001 - raised again in the thread that asks for the result
            self._error = exc
        finally:
            self.finished.set()
            self._started.set()

    def _wait(self, event: threading.Event) -> None:
        while not event.wait(self.POLL):
            pass

    def walk(self) -> tuple[Source, GrowingKeys] | None:
        """The source to read with and the keys of the folder's walk, final as they come; None if the
        listing turned out to be no single folder walk (then use :meth:`result`)."""
        self._wait(self._started)
        if len(self._walks) != 1:
            return None
        _, reader, keys = self._walks[0]
        others = self._others
        return reader, GrowingKeys(keys, self.finished, spoiled=lambda: bool(others))

    def result(self) -> Selection:
        """The selection, once listed (raising what ``select()`` raised)."""
        self._wait(self.finished)
        if self._error is not None:
            raise self._error
        return self._selection

    def confirms(self, selection: Selection) -> bool:
        """Whether ``selection``'s items are exactly the keys :meth:`walk` gave, of the source read."""
        if len(self._walks) != 1:
            return False
        source, _, keys = self._walks[0]
        return selection.source is source and selection.keys is keys and selection.shard is None


class ListingChanged(Exception):
    """The walk found items of another kind: the keys counted so far are not the selection's sequence."""


class GrowingKeys(Sequence):
    """The keys of a :class:`PackedKeys` that a walk in another thread is still filling.

    The keys of its sealed blocks are final, and all of them once
    ``finished`` is set: :meth:`ready` says how many can be read now and
    :meth:`wait_for` waits for more. Reading past them waits too, and
    ``len`` waits for the end of the walk. What counts while the walk goes
    on (``bnstats.running.engine``) reads only keys that are final, and stops
    (:class:`ListingChanged`) once ``spoiled()`` says they will not be the
    selection's.
    """

    POLL = 0.02  # seconds between looks at a walk that has not sealed a block yet (a stop signal is seen between)

    def __init__(self, packed: PackedKeys, finished, spoiled=lambda: False):
        self.packed, self.finished, self.spoiled = packed, finished, spoiled

    def ready(self) -> int:
        """How many keys are final now (the walk's sealed blocks; every key once it has ended)."""
        return len(self.packed) if self.finished.is_set() else self.packed.sealed()

    def wait_for(self, count: int) -> int:
        """Wait until ``count`` keys are final or the walk has ended; how many are final then.
        :class:`ListingChanged` once the walk has found items of another kind (``spoiled``)."""
        while True:
            if self.spoiled():
                raise ListingChanged("the folder also holds items of other kinds")
            ready = self.ready()
            if ready >= count or self.finished.is_set():
                return self.ready()
            self.finished.wait(self.POLL)

    def __len__(self) -> int:
        return self.wait_for(float("inf"))

    def __getitem__(self, index):
        if isinstance(index, slice) and index.step in (None, 1) and index.start is not None and index.start >= 0 \
                and index.stop is not None and index.stop >= 0:
            return self.packed[index.start : min(index.stop, self.wait_for(index.stop))]
        if isinstance(index, int) and index >= 0:
            self.wait_for(index + 1)
            return self.packed[index]
        len(self)  # from the end, or a step: the whole walk first
        return self.packed[index]

    def __iter__(self) -> Iterator[str]:
        position = 0
        while position < self.wait_for(position + 1):
            stop = self.ready()
            yield from self.packed._range(position, stop)
            position = stop

    __eq__ = same_keys
    __hash__ = None

    def __repr__(self) -> str:
        return f"GrowingKeys({self.ready()} keys final{', walk ended' if self.finished.is_set() else ''})"
