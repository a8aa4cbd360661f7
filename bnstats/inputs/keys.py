"""Keys as ranges: sorted sequences of item keys that are never held one string per item.

An array, an IDX file or a Parquet file is a count of rows; its keys
``PREFIX:ROW`` (the row zero-padded, so that keys sort in row order) are
computed when named — in a skip entry, a digest, a partition's first key —
and never materialised all at once. :class:`RowKeys` is one such range;
:class:`KeyChain` joins sorted sequences (ranges, or lists of keys of kinds
that have no row numbers: files, archive members) into one sorted sequence;
:func:`merge_sorted` interleaves the sorted sequences of several inputs into
such a chain, by runs, without a list of every key.

Both are immutable :class:`~collections.abc.Sequence` objects: ``len``,
indexing, slicing (a slice is again a range or a chain, of a few numbers),
iteration. They pickle small, so a partition of a million rows sent to a
worker process is a few dozen bytes.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence


class RowKeys(Sequence):
    """The keys ``f"{prefix}:{row:0{width}d}"`` for ``row`` in ``range(start, stop)``: sorted by construction."""

    __slots__ = ("prefix", "width", "start", "stop")

    def __init__(self, prefix: str, width: int, start: int, stop: int):
        self.prefix, self.width, self.start, self.stop = prefix, width, start, max(start, stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def key(self, row: int) -> str:
        """The key of row ``row`` (an absolute row number)."""
        return f"{self.prefix}:{row:0{self.width}d}"

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return RowKeys(self.prefix, self.width, self.start + start, self.start + max(start, stop))
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("RowKeys index out of range")
        return self.key(self.start + index)

    def __iter__(self) -> Iterator[str]:
        prefix, width = self.prefix + ":", self.width
        return (f"{prefix}{row:0{width}d}" for row in range(self.start, self.stop))

    def __reduce__(self):
        return RowKeys, (self.prefix, self.width, self.start, self.stop)

    def __eq__(self, other) -> bool:
        if isinstance(other, RowKeys):
            return (self.prefix, self.width, self.start, self.stop) == (other.prefix, other.width, other.start,
                                                                        other.stop) or (not self and not other)
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"RowKeys({self.prefix!r}, rows {self.start}..{self.stop - 1})"


class KeyChain(Sequence):
    """Sorted sequences one after the other, as one sorted sequence (each part's keys before the next's)."""

    __slots__ = ("parts", "_ends")

    def __init__(self, parts: Sequence[Sequence[str]]):
        self.parts = tuple(part for part in parts if len(part))
        self._ends = list(itertools.accumulate(len(part) for part in self.parts))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _locate(self, index: int) -> tuple[int, int]:
        """The part holding position ``index`` and the position within it."""
        part = bisect.bisect_right(self._ends, index)
        return part, index - (self._ends[part - 1] if part else 0)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if stop <= start:
                return KeyChain(())
            first, offset = self._locate(start)
            last, end = self._locate(stop - 1)
            if first == last:
                return KeyChain((self.parts[first][offset : end + 1],))
            middle = self.parts[first + 1 : last]
            return KeyChain((self.parts[first][offset:], *middle, self.parts[last][: end + 1]))
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("KeyChain index out of range")
        part, offset = self._locate(index)
        return self.parts[part][offset]

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self.parts)

    def __reduce__(self):
        return KeyChain, (self.parts,)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and len(self) == len(other) and all(
            a == b for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        return f"KeyChain({len(self)} keys in {len(self.parts)} parts)"


def is_lazy(keys) -> bool:
    """Whether ``keys`` is a range or chain (sorted by construction), not a list of strings."""
    return isinstance(keys, (RowKeys, KeyChain))


def merge_sorted(sequences: Sequence[Sequence[str]]) -> list[tuple[int, Sequence[str]]]:
    """Interleave sorted sequences of distinct keys into runs ``(which, keys)`` in sorted order.

    A run is a slice of one sequence; the runs' keys, one after the other,
    are the sorted union. The slices are found by bisection (a range
    computes the key at a position), so a million rows of an array beside a
    folder of files cost a few runs, not a list of every key.
    """
    heads = [0] * len(sequences)
    runs: list[tuple[int, Sequence[str]]] = []
    live = [i for i, seq in enumerate(sequences) if len(seq)]
    while live:
        # the sequence whose next key is smallest (the first named, on a tie), and the next key of the others
        live.sort(key=lambda i: (sequences[i][heads[i]], i))
        which = live[0]
        seq, start = sequences[which], heads[which]
        if len(live) == 1:
            stop = len(seq)
        else:
            other = live[1]
            bound = sequences[other][heads[other]]
            if bound == seq[start]:  # a key two inputs both list: counted once, for the first named
                heads[other] += 1
                if heads[other] == len(sequences[other]):
                    live.remove(other)
                continue
            stop = bisect.bisect_left(seq, bound, lo=start)
        runs.append((which, seq[start:stop]))
        heads[which] = stop
        if stop == len(seq):
            live.remove(which)
    return runs


def sorted_ranges(ranges: Sequence[RowKeys]) -> Sequence[str]:
    """Row ranges of several files as one sorted sequence of keys: a chain of the ranges in key order, or
    (where a file's name makes another's keys interleave with its own: ``a.npy`` and ``a.npy:0.npy``) a
    sorted list."""
    ranges = sorted((r for r in ranges if len(r)), key=lambda r: r.prefix + ":")
    if all(a[len(a) - 1] < b[0] for a, b in zip(ranges, ranges[1:])):
        return KeyChain(ranges)
    return sorted(key for r in ranges for key in r)
