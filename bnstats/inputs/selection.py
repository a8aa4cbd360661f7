"""The items of one run: :class:`Selection` (a source and its sorted keys, one shard of them, with the
listing problems to report and what the result covers), :class:`MixedSource` (several kinds as one sorted
sequence) and :func:`shard`."""

from __future__ import annotations

import bisect
import copy
import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .base import Source, gather_streams
from .digests import combine_digests, files_digest
from .files import FileSource
from .keys import KeyChain, is_lazy, known_sorted, merge_sorted


class MixedSource(Source):
    """Several sources as one sorted sequence; each partition stays within one source.

    The sources' sorted keys interleave in runs (:func:`~bnstats.inputs.keys.merge_sorted`): the owner of a
    key is found by bisection over the runs' first keys, so no structure here grows with the items.
    """

    def __init__(self, parts: Sequence[Source]):
        super().__init__(KeyChain([part.paths for part in parts]))  # one after the other (a chain: not copied)
        self.parts = list(parts)
        self._starts: list[str] = []  # the first key of each run, sorted
        self._owners: list[Source] = []  # the source of each run

    def kinds(self) -> list[Source]:
        return [kind for part in self.parts for kind in part.kinds()]

    def __getstate__(self):
        # a task reads through the parts (each sends what it needs): not every path named of every part
        return {**self.__dict__, "paths": []}

    def reads_option(self, name: str) -> bool:
        return any(part.reads_option(name) for part in self.parts)

    @classmethod
    def of_listed(cls, listed: Sequence[tuple[Source, Sequence[str]]]) -> tuple["MixedSource", Sequence[str]]:
        """Sources already listed, with their sorted keys, as one source and its sorted keys."""
        mixed = cls([part for part, _ in listed])
        runs = merge_sorted([keys for _, keys in listed])
        for which, run in runs:
            mixed._starts.append(run[0])
            mixed._owners.append(listed[which][0])
        errors, ignored, notes = [], Counter(), []
        for part, _ in listed:
            errors += part.listing_errors
            ignored.update(part.ignored)
            notes += part.listing_notes
        mixed.listing_errors = sorted(errors, key=lambda e: e["path"])
        mixed.ignored, mixed.listing_notes = dict(ignored), sorted(notes)
        return mixed, KeyChain([run for _, run in runs])

    def list_items(self) -> Sequence[str]:
        listed = []
        for part in self.parts:
            keys = part.list_items()
            listed.append((part, keys if is_lazy(keys) else sorted(keys)))
        mixed, keys = self.of_listed(listed)
        self._starts, self._owners = mixed._starts, mixed._owners
        self.listing_errors, self.ignored, self.listing_notes = mixed.listing_errors, mixed.ignored, mixed.listing_notes
        return keys

    def _run_of(self, key: str) -> int:
        """The index of the run that holds ``key`` (the last run starting at or before it)."""
        if not self._starts:
            self.list_items()
        return max(0, bisect.bisect_right(self._starts, key) - 1)

    def _owner_of(self, key: str) -> Source:
        return self._owners[self._run_of(key)]

    def _runs(self, keys: Sequence[str]) -> Iterator[tuple[Source, Sequence[str]]]:
        """Consecutive keys grouped by the source that owns them (slices of ``keys``, never copied whole)."""
        if not known_sorted(keys):  # a sample's keys, in their random order: found key by key
            start = 0
            for owner, run in itertools.groupby(keys, key=self._owner_of):
                stop = start + sum(1 for _ in run)
                yield owner, keys[start:stop]
                start = stop
            return
        start = 0
        while start < len(keys):
            owner_index = self._run_of(keys[start])
            if owner_index + 1 < len(self._starts):  # the run ends before the next run's first key
                stop = bisect.bisect_left(keys, self._starts[owner_index + 1], lo=start)
            else:
                stop = len(keys)
            stop = max(stop, start + 1)
            yield self._owners[owner_index], keys[start:stop]
            start = stop

    def read(self, keys):
        if self.streams() and not known_sorted(keys):  # a sample's: each stream read once, not once per run
            keys = gather_streams(keys, self.stream_of)
        for owner, run in self._runs(keys):
            yield from owner.read(run)

    def class_of(self, key: str) -> str:
        return self._owner_of(key).class_of(key)

    def tells_classes(self) -> bool:
        return all(part.tells_classes() for part in self.parts)

    def identity(self, key: str) -> str:
        return self._owner_of(key).identity(key)

    def portable_identity(self, key: str) -> str:
        return self._owner_of(key).portable_identity(key)

    def portable_identities(self, keys):
        for owner, run in self._runs(keys):
            yield from owner.portable_identities(run)

    def fingerprint(self, keys):
        parts = [owner.fingerprint(run) for owner, run in self._runs(keys)]
        return {**combine_digests(parts), **combine_digests(parts, "contents")}

    def partitions(self, keys, size):
        return KeyChain([owner.partitions(run, size) for owner, run in self._runs(keys)])  # a chain of sequences

    def streams(self) -> bool:
        return any(part.streams() for part in self.parts)

    def stream_of(self, key: str) -> str | None:
        return self._owner_of(key).stream_of(key)

    def streamed(self, keys):
        return sum(owner.streamed(run) for owner, run in self._runs(keys) if owner.streams())

    def for_keys(self, keys):
        """This source with each input that holds an index (archives) narrowed to what ``keys`` need."""
        narrowed = {}
        for owner, run in self._runs(keys):
            narrowed.setdefault(id(owner), (owner, []))[1].extend(run)
        subs = {key: owner.for_keys(run) for key, (owner, run) in narrowed.items()}
        if all(subs[key] is owner for key, (owner, _) in narrowed.items()):
            return self
        mixed = copy.copy(self)
        mixed._owners = [subs.get(id(owner), owner) for owner in self._owners]
        mixed.parts = [subs.get(id(part), part) for part in self.parts]
        return mixed


def shard(paths: Sequence[str], index: int, count: int) -> Sequence[str]:
    """Shard ``index`` (0-based) of ``count`` contiguous, near-equal parts.

    Contiguous slices of the sorted list keep each machine's reads local to
    its folders; shard sizes differ by at most one.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1}, got {index}")
    n = len(paths)
    return paths[index * n // count : (index + 1) * n // count]  # a list's slice, or a range's: never copied


@dataclass(frozen=True)
class Selection:
    """The items of one run: a source and its sorted keys (one shard of them, with ``shard``).

    ``errors`` are the listing problems this run reports in ``skipped``
    (``{"path", "error"}``; with a shard, only shard 0 has them); ``notes``
    are one-time remarks for the user (e.g. how many files were ignored).
    ``listing`` identifies the whole sorted list (``{"count", "digest"}`` of
    the portable identities) and ``span`` is the ``(start, stop)`` range of
    it that ``keys`` are: what a result covers, so that ``merge`` can refuse
    overlapping parts and say which are missing.
    """

    source: Source
    keys: Sequence[str]  # a list, or a range/chain of keys (bnstats.inputs.keys)
    shard: tuple[int, int] | None = None
    errors: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    listing: dict | None = None
    span: tuple[int, int] | None = None

    def coverage(self) -> dict:
        """The ``files`` record of a result of exactly these keys (see :meth:`covers`)."""
        span = self.span if self.span is not None else (0, len(self.keys))
        if self.listing is not None and span == (0, self.listing["count"]):
            files = dict(self.listing)  # the whole list: its digest is already known
        else:
            files = files_digest(self.source.portable_identities(self.keys))
        listing = self.listing if self.listing is not None else files
        ranges = [list(span)] if span[1] > span[0] else []
        covers = {**files, "covers": [{"list": {"count": listing["count"], "digest": listing["digest"]},
                                       "ranges": ranges}]}
        if getattr(self.source.options, "stack", None) == "volume":  # the items are files, not their pages:
            covers["stack"] = "volume"  # merge refuses parts counted the other way (the same pixels twice)
        return covers

    def __len__(self) -> int:
        return len(self.keys)


def as_selection(items: "Selection | Sequence[str]") -> Selection:
    """A selection as it is, or a list of image paths (from Python) as one."""
    return items if isinstance(items, Selection) else Selection(FileSource([]), list(items))
