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
import collections
import heapq
import itertools
import json
import os
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence


def same_keys(keys: Sequence[str], other) -> bool:
    """Sequence equality: the same keys in the same order, whatever holds them (a list, a range, a chain)."""
    return isinstance(other, Sequence) and not isinstance(other, str) and len(keys) == len(other) and all(
        a == b for a, b in zip(keys, other))


def position_of(index: int, length: int, what: str) -> int:
    """``index`` (negative: from the end) as a position in ``0..length-1``; IndexError past either end."""
    position = index + length if index < 0 else index
    if not 0 <= position < length:
        raise IndexError(f"{what} index out of range")
    return position


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
        return self.key(self.start + position_of(index, len(self), "RowKeys"))

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
        part, offset = self._locate(position_of(index, len(self), "KeyChain"))
        return self.parts[part][offset]

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self.parts)

    def __reduce__(self):
        return KeyChain, (self.parts,)

    __eq__ = same_keys
    __hash__ = None

    def __repr__(self) -> str:
        return f"KeyChain({len(self)} keys in {len(self.parts)} parts)"


def is_lazy(keys) -> bool:
    """Whether ``keys`` is a range, chain or packed list (sorted by construction), not a list of strings."""
    return isinstance(keys, (RowKeys, KeyChain, PackedKeys, KeyView))


def known_sorted(keys: Sequence[str]) -> bool:
    """Whether ``keys`` are in sorted order: ranges, chains and packed lists are by construction, a list is
    checked; anything else (a sample's keys, in their random order) is not taken to be."""
    if is_lazy(keys):
        return True
    if isinstance(keys, (list, tuple)):
        return all(a <= b for a, b in zip(keys, itertools.islice(keys, 1, None)))
    return False


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


SORT_RUN = 1 << 16  # strings sorted in memory at a time by packed_sorted (~7 MB of paths)


def packed_sorted(items: Iterable[str], run: int | None = None) -> "PackedKeys":
    """``sorted(items)``, packed, without holding every item as a string: runs of ``run`` (:data:`SORT_RUN`)
    items are sorted and packed, then the packed runs merged (a few bytes an item, one run of strings)."""
    run = run or SORT_RUN
    runs, chunk = [], []
    for item in items:
        chunk.append(item)
        if len(chunk) == run:
            chunk.sort()
            runs.append(PackedKeys.of(chunk))
            chunk = []
    chunk.sort()
    if not runs:
        return PackedKeys.of(chunk)
    runs.append(PackedKeys.of(chunk))
    del chunk
    return PackedKeys.of(heapq.merge(*runs))


def chain_sorted(parts: Sequence[Sequence[str]]) -> Sequence[str]:
    """Sorted sequences of keys (one an input, as an archive's members) as one sorted sequence: a chain where
    they follow one another (the usual case: an input's keys begin with its own name), else a sorted list."""
    parts = sorted((part for part in parts if len(part)), key=lambda part: part[0])
    if all(a[len(a) - 1] < b[0] for a, b in zip(parts, parts[1:])):
        return KeyChain(parts)
    return sorted(key for part in parts for key in part)


def sorted_ranges(ranges: Sequence[RowKeys]) -> Sequence[str]:
    """Row ranges of several files as one sorted sequence of keys: a chain of the ranges in key order, or
    (where a file's name makes another's keys interleave with its own: ``a.npy`` and ``a.npy:0.npy``) a
    sorted list."""
    ranges = sorted((r for r in ranges if len(r)), key=lambda r: r.prefix + ":")
    if all(a[len(a) - 1] < b[0] for a, b in zip(ranges, ranges[1:])):
        return KeyChain(ranges)
    return sorted(key for r in ranges for key in r)


class PackedKeys(Sequence):
    """A sorted list of arbitrary keys (file paths) held compressed: blocks of :data:`BLOCK` keys, each one
    zlib-compressed text, with each block's first key for bisection.

    Paths under one folder share long prefixes, so a million of them take a
    few megabytes instead of the ~110 bytes a Python string costs each.
    Reading a key decompresses its block (the last one is kept); a slice of
    up to :data:`BLOCK` keys is a plain list, a longer one a view.
    """

    BLOCK = 1024

    def __init__(self):
        self._blocks: list[bytes] = []
        self._firsts: list[str] = []
        self._pending: list[str] = []
        self._count = 0
        self._json: set[int] = set()  # blocks stored as JSON: one of their keys holds a NUL (see _seal)

    @classmethod
    def of(cls, keys) -> "PackedKeys":
        """``keys`` (sorted) packed."""
        packed = cls()
        for key in keys:
            packed.append(key)
        return packed.close()

    def append(self, key: str) -> None:
        """Add the next key (keys are appended in sorted order)."""
        self._pending.append(key)
        self._count += 1
        if len(self._pending) == self.BLOCK:
            self._seal()

    def _seal(self) -> None:
        if self._pending:
            self._firsts.append(self._pending[0])
            text = "\0".join(self._pending)
            if text.count("\0") != len(self._pending) - 1:  # a key holds a NUL (a PAX tar member's name may):
                self._json.add(len(self._blocks))  # the block as JSON, which splits nothing
                text = json.dumps(self._pending)
            self._blocks.append(zlib.compress(text.encode("utf-8", "surrogateescape"), 1))
            self._pending = []

    def sealed(self) -> int:
        """How many keys are in sealed blocks: final, while appends go on in another thread."""
        return min(self._count, len(self._blocks) * self.BLOCK)

    def close(self) -> "PackedKeys":
        """Seal the last block; the keys are complete."""
        self._seal()
        return self

    def __len__(self) -> int:
        return self._count

    def block(self, index: int) -> list[str]:
        """The keys of block ``index``."""
        if index == len(self._blocks):  # still being filled
            return self._pending
        return _decompressed(self, index)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if stop - start <= self.BLOCK:
                return list(self._range(start, stop))
            return KeyView(self, start, stop)
        index = position_of(index, self._count, "PackedKeys")
        return self.block(index // self.BLOCK)[index % self.BLOCK]

    def find(self, key: str) -> int:
        """The position of ``key``, or -1: one block read (each block's first key says which), not a bisection
        over every position (each probe of which may decompress a block)."""
        block = bisect.bisect_right(self._firsts, key) - 1
        if self._pending and key >= self._pending[0]:
            block = len(self._blocks)  # the block still being filled
        if block < 0:
            return -1
        keys = self.block(block)
        at = bisect.bisect_left(keys, key)
        return block * self.BLOCK + at if at < len(keys) and keys[at] == key else -1

    def _range(self, start: int, stop: int) -> Iterator[str]:
        """The keys from position ``start`` to ``stop``, block by block."""
        while start < stop:
            block, offset = divmod(start, self.BLOCK)
            keys = self.block(block)
            take = min(stop - start, len(keys) - offset)
            yield from keys[offset : offset + take]
            start += take

    def __iter__(self) -> Iterator[str]:
        return self._range(0, self._count)

    def __getstate__(self):
        return {"_blocks": self._blocks, "_firsts": self._firsts, "_pending": self._pending, "_count": self._count,
                "_json": self._json}

    def __setstate__(self, state):
        self._json = set()
        self.__dict__.update(state)

    __eq__ = same_keys
    __hash__ = None

    def __repr__(self) -> str:
        return f"PackedKeys({self._count} keys, {sum(map(len, self._blocks))} bytes)"


_BLOCKS: collections.OrderedDict = collections.OrderedDict()  # (id, block) -> (PackedKeys, its keys), last used last
_BLOCKS_KEPT = 4  # blocks kept decompressed in all: per store, thousands of shards would hold thousands of blocks
_BLOCKS_LOCK = threading.Lock()  # a walk packs keys on a thread while the counting reads them


def _renew_lock() -> None:  # a worker forked while the walk's thread held the lock must not wait on it forever
    global _BLOCKS_LOCK
    _BLOCKS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_lock)


def _decompressed(packed: PackedKeys, index: int) -> list[str]:
    """The keys of ``packed``'s sealed block ``index``, decompressed once for a run of reads of it (a few of the
    blocks last read, of any store, are kept: a chunk's keys and its archive's index are read side by side)."""
    key = (id(packed), index)
    with _BLOCKS_LOCK:
        found = _BLOCKS.get(key)
        if found is not None and found[0] is packed:
            _BLOCKS.move_to_end(key)
            return found[1]
    text = zlib.decompress(packed._blocks[index]).decode("utf-8", "surrogateescape")
    keys = json.loads(text) if index in packed._json else text.split("\0")
    with _BLOCKS_LOCK:
        _BLOCKS[key] = (packed, keys)
        _BLOCKS.move_to_end(key)
        while len(_BLOCKS) > _BLOCKS_KEPT:
            _BLOCKS.popitem(last=False)
    return keys


class KeyView(Sequence):
    """Positions ``start..stop`` of a :class:`PackedKeys` (a shard, or what a resume has left)."""

    __slots__ = ("packed", "start", "stop")

    def __init__(self, packed: PackedKeys, start: int, stop: int):
        self.packed, self.start, self.stop = packed, start, max(start, stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self.packed[self.start + start : self.start + max(start, stop)]
        return self.packed[self.start + position_of(index, len(self), "KeyView")]

    def __iter__(self) -> Iterator[str]:
        return self.packed._range(self.start, self.stop)

    __eq__ = same_keys
    __hash__ = None
