"""The items of one run: :class:`Selection` (a source and its sorted keys, one shard of them, with the
listing problems to report and what the result covers), :class:`MixedSource` (several kinds as one sorted
sequence) and :func:`shard`."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .base import Source
from .digests import combine_digests, files_digest
from .files import FileSource


class MixedSource(Source):
    """Several sources as one sorted sequence; each partition stays within one source."""

    def __init__(self, parts: Sequence[Source]):
        super().__init__([p for part in parts for p in part.paths])
        self.parts = list(parts)
        self._owner: dict[str, Source] = {}

    def kinds(self) -> list[Source]:
        return [kind for part in self.parts for kind in part.kinds()]

    def reads_option(self, name: str) -> bool:
        return any(part.reads_option(name) for part in self.parts)

    @classmethod
    def of_listed(cls, listed: Sequence[tuple[Source, list[str]]]) -> tuple["MixedSource", list[str]]:
        """Sources already listed, with their keys, as one source and its sorted keys."""
        mixed = cls([part for part, _ in listed])
        errors, ignored, notes = [], Counter(), []
        for part, keys in listed:
            for key in keys:
                mixed._owner.setdefault(key, part)
            errors += part.listing_errors
            ignored.update(part.ignored)
            notes += part.listing_notes
        mixed.listing_errors = sorted(errors, key=lambda e: e["path"])
        mixed.ignored, mixed.listing_notes = dict(ignored), sorted(notes)
        return mixed, sorted(mixed._owner)

    def list_items(self) -> list[str]:
        mixed, keys = self.of_listed([(part, part.list_items()) for part in self.parts])
        self._owner, self.listing_errors, self.ignored = mixed._owner, mixed.listing_errors, mixed.ignored
        self.listing_notes = mixed.listing_notes
        return keys

    def _runs(self, keys: Sequence[str]) -> Iterator[tuple[Source, list[str]]]:
        """Consecutive keys grouped by the source that owns them."""
        if not self._owner:
            self.list_items()
        for owner, run in itertools.groupby(keys, key=self._owner.__getitem__):
            yield owner, list(run)

    def read(self, keys):
        for owner, run in self._runs(keys):
            yield from owner.read(run)

    def class_of(self, key: str) -> str:
        return self._owner[key].class_of(key)

    def tells_classes(self) -> bool:
        return all(part.tells_classes() for part in self.parts)

    def identity(self, key: str) -> str:
        return self._owner[key].identity(key)

    def portable_identity(self, key: str) -> str:
        return self._owner[key].portable_identity(key)

    def fingerprint(self, keys):
        parts = [owner.fingerprint(run) for owner, run in self._runs(keys)]
        return {**combine_digests(parts), **combine_digests(parts, "contents")}

    def partitions(self, keys, size):
        return [p for owner, run in self._runs(keys) for p in owner.partitions(run, size)]


def shard(paths: Sequence[str], index: int, count: int) -> list[str]:
    """Shard ``index`` (0-based) of ``count`` contiguous, near-equal parts.

    Contiguous slices of the sorted list keep each machine's reads local to
    its folders; shard sizes differ by at most one.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1}, got {index}")
    n = len(paths)
    return list(paths[index * n // count : (index + 1) * n // count])


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
    keys: list[str]
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
            files = files_digest(self.source.portable_identity(key) for key in self.keys)
        listing = self.listing if self.listing is not None else files
        ranges = [list(span)] if span[1] > span[0] else []
        return {**files, "covers": [{"list": {"count": listing["count"], "digest": listing["digest"]},
                                     "ranges": ranges}]}

    def __len__(self) -> int:
        return len(self.keys)


def as_selection(items: "Selection | Sequence[str]") -> Selection:
    """A selection as it is, or a list of image paths (from Python) as one."""
    return items if isinstance(items, Selection) else Selection(FileSource([]), list(items))
