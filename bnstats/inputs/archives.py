"""Tar (WebDataset) and zip archives as inputs, read without extracting.

Item keys are ``ARCHIVE:MEMBER``; members are listed, filtered and sorted by
name like the files of a folder: hidden ones (a path part starting with
``.``, ``__MACOSX/``) ignored, and by default every member whose name ends
in an image extension. A member is counted under its stored name, however
odd (``../x.png``, ``/abs/x.png``: nothing is extracted). A hard link counts
with its target's data (GNU tar stores a second name of a file so), a
symbolic link with the member it points to inside the archive; a link to
nothing in the archive, a sparse member or a device is a skip entry.

``--ext`` in an archive names a member's whole WebDataset extension: a
sample's key is the member path up to the first dot of its basename and the
rest is its extension (``n01440764_10026.seg.png`` → key
``n01440764_10026``, extension ``seg.png``), so ``--ext png`` leaves out the
``.seg.png`` masks and ``--ext seg.png`` takes them (a note says what was
left out so). Loose files in folders keep the last-suffix rule.

``--group-by class``: a member's class is its top-level folder inside the
archive (ImageFolder's rule, the archive as the folder named); a member at
the root is of the archive's class (its name without the suffix).

*Uncompressed tar* (``.tar``, the usual WebDataset shard): listing reads
the 512-byte headers and seeks over the data, and the index (each member's
data offset and size) lets a task read any range of members with one open
file and a seek per member — so one large shard still uses every core.

*Compressed tar* (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``): a
stream cannot seek, so listing decompresses it once and one task reads each
archive front to back, counting the members of its range in stored order.
What it inflates is counted against the archive's
:class:`~bnstats.limits.InflationBudget` (stepping over a member's data
inflates it too): past it, the rest of the archive is not read, one skip
entry says so.

*Zip* (``.zip``): the central directory gives the members; a task opens the
archive once and reads its range of members. A zip whose members declare
more than its inflation budget is refused before any is inflated, and a
member is inflated a chunk at a time, never past its declared size (nor the
per-file bound), its CRC checked.

Damage never shortens an archive silently. A damaged tar header is stepped
over to the next valid header (as GNU tar does) and listed as a skip entry
``ARCHIVE:@offset N``; so is a tar cut short (inside a header or a member,
or without its end-of-archive marker). Bytes after the end-of-archive marker
are ignored, as GNU tar does. Any other damage (a corrupt gzip stream, a bad
zip directory) is one skip entry naming the archive and the last member
read; every member before it is counted.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
import posixpath
from array import array
from collections.abc import Callable, Iterator, Sequence

from .. import limits
from ..limits import LimitError
from .base import ItemError, Partition, SourceError
from .stores import open_input
from .keys import KeyChain, PackedKeys, chain_sorted, position_of
from .options import IMG_EXTENSIONS
from .containers import ContainerSource

TAR_SUFFIXES = (".tar",)
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def compressed_tar(path: str) -> bool:
    """A compressed tar (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``): read as a stream, front to back."""
    return path.lower().endswith(COMPRESSED_TAR_SUFFIXES)


def _hidden(name: str) -> bool:
    """A member under a hidden folder or named like a hidden file (``.x``), or macOS's ``__MACOSX/``.

    ``.`` and ``..`` parts are not hidden: ``tar -C dir .`` names every member ``./NAME``, and a member
    stored as ``../x.png`` is counted under that name (nothing is extracted, so it points nowhere).
    """
    return any((part.startswith(".") and part not in (".", "..")) or part == "__MACOSX"
               for part in name.split("/") if part)


def webdataset_extension(name: str) -> str:
    """A member's extension as WebDataset defines it: all of its base name after the first dot, lower case
    (``n0144_10026.seg.png`` -> ``seg.png``; the part before is the sample's key)."""
    base = name.rsplit("/", 1)[-1]
    return base.split(".", 1)[1].lower() if "." in base else ""


def stored_parts(name: str) -> list[str]:
    """A member's path parts, without the ``.`` and empty parts of ``./a/b`` and ``/a/b``."""
    return [part for part in name.split("/") if part not in ("", ".")]


class ArchiveSource(ContainerSource):
    """What tar and zip sources share: member filtering, keys, runs of keys per archive."""

    options_read = frozenset({"ext", "storage_options"})

    def __init__(self, paths, options=None):
        super().__init__(paths, options)
        self.index: dict[str, MemberIndex | dict] = {}  # archive -> member -> (data offset, size)

    #: the :mod:`array` typecodes of the numbers :meth:`_list` gives a member (a tar: data offset and size)
    index_typecodes = "qq"

    def wanted(self, name: str) -> bool:
        """A member that counts: not hidden, with an image extension, or with ``--ext``, whose WebDataset
        extension (see :func:`webdataset_extension`) is one of those named (``--ext png`` leaves out
        ``x.seg.png``, ``--ext seg.png`` takes it)."""
        if _hidden(name):
            return False
        if not self.options.ext:
            return name.lower().endswith(IMG_EXTENSIONS)
        return webdataset_extension(name) in self._ext_names

    @property
    def _ext_names(self) -> frozenset:
        return frozenset(e.lower().lstrip(".") for e in self.options.ext)

    def _longer_extension(self, name: str) -> str | None:
        """The WebDataset extension of a member that ``--ext`` leaves out although its name ends in one of
        them (``x.seg.png`` under ``--ext png``): worth a note, never dropped silently."""
        if not self.options.ext or _hidden(name) or self.wanted(name):
            return None
        extension = webdataset_extension(name)
        return extension if extension.endswith(tuple("." + e for e in self._ext_names)) else None

    def class_of(self, key: str) -> str:
        """The member's top-level folder inside its archive (ImageFolder's rule, the archive as the folder
        named); a member at the archive's root: the archive's name without its suffix."""
        archive, member = self.split(key)
        parts = stored_parts(member)
        if len(parts) > 1:
            return parts[0]
        base = posixpath.basename(archive.rstrip("/"))
        for suffix in sorted(TAR_SUFFIXES + COMPRESSED_TAR_SUFFIXES + (".zip",), key=len, reverse=True):
            if base.lower().endswith(suffix):
                return base[: -len(suffix)]
        return base

    def list_items(self) -> Sequence[str]:
        """The keys of every archive's members, sorted, held packed (a member costs a few bytes, not a string
        and a dict entry: shards of millions of members), and each archive's :class:`MemberIndex`."""
        parts = []
        self.listing_errors = []  # archives that could not be read to the end, damage, links that lead nowhere
        self.listing_notes = []
        for path in self.paths:
            self._left_out: dict[str, int] = {}
            index = self.index[path] = MemberIndex(self._list(path), self.index_typecodes)
            parts.append(PackedKeys.of(f"{path}:{name}" for name in index.names))
            offsets = index.offsets
            if self._ranged(path) and any(b < a for a, b in zip(offsets, itertools.islice(offsets, 1, None))):
                self.listing_notes.append(
                    f"{path}: its members are not stored in name order, the order they are read in, so they are "
                    "fetched in many small requests (slow): write shards with sorted members (tar --sort=name)")
            if self._left_out:
                counts = ", ".join(f"{ext} {n}" for ext, n in sorted(self._left_out.items()))
                self.listing_notes.append(
                    f"{path}: --ext {','.join(self.options.ext)} left out members whose WebDataset extension is "
                    f"longer ({counts}): name those to count them too (e.g. --ext {min(self._left_out)})")
        keys = chain_sorted(parts)
        if not isinstance(keys, KeyChain):  # an archive's path begins with another's ARCHIVE: their keys interleave
            self._refuse_keys_listed_twice(keys)
        return keys

    def _refuse_keys_listed_twice(self, keys: Sequence[str]) -> None:
        """Two archives listing one key (``a.tar``'s member ``b.tar:m.png``, ``a.tar:b.tar``'s ``m.png``): one
        would be read twice and the other never. A :class:`SourceError` naming both."""
        for key, after in zip(keys, itertools.islice(keys, 1, None)):
            if key == after:
                owners = [path for path in self.paths if key.startswith(path + ":") and
                          key[len(path) + 1 :] in self.index[path]]
                raise SourceError(f"{key} is a member of both {' and '.join(owners)}: the two cannot be told "
                                  "apart; rename one archive or leave one of them out")

    def split(self, key: str) -> tuple[str, str]:
        """``(archive, member)``; where another archive's path begins with ``ARCHIVE:`` (``a.tar`` and
        ``a.tar:b.tar``), the archive whose index holds the member."""
        for nested, family in self._families.items():
            if key.startswith(nested + ":"):
                for path in family:  # the longest first
                    index = self.index.get(path)
                    if key.startswith(path + ":") and index is not None and key[len(path) + 1 :] in index:
                        return path, key[len(path) + 1 :]
        return super().split(key)

    @functools.cached_property
    def _families(self) -> dict[str, list[str]]:
        """Each archive whose ``ARCHIVE:`` another one's path begins with, and those paths and its own, the
        longest first (none, nearly always)."""
        return {nested: sorted((path for path in self.paths if path == nested or path.startswith(nested + ":")),
                               key=len, reverse=True) for nested in self._nested}

    def _consider(self, name: str) -> bool:
        """``wanted(name)``, noting a member that ``--ext`` leaves out only for its longer extension."""
        if self.wanted(name):
            return True
        extension = self._longer_extension(name)
        if extension is not None:
            left_out = self.__dict__.setdefault("_left_out", {})
            left_out[extension] = left_out.get(extension, 0) + 1
        return False

    def _list(self, path: str) -> dict[str, tuple[int, int]]:
        raise NotImplementedError

    def _ranged(self, path: str) -> bool:
        """Whether the archive's members are fetched as byte ranges of consecutive members (in key order)."""
        return False

    def for_keys(self, keys: Sequence[str]) -> "ArchiveSource":
        """A source of the archives ``keys`` are in, holding the index entries of those keys alone."""
        runs: dict[str, list[str]] = {}
        for archive, run in self.runs(keys):
            runs.setdefault(archive, []).extend(run)
        part = type(self)(list(runs), self.options)
        part.index = {archive: self._chunk_members(archive, run) for archive, run in runs.items()}
        return part

    def _read_indexed(self, archive: str, run: Sequence[str], index, read: Callable) -> Iterator:
        """``((key,), load)`` of each member of ``run``: the archive opened once, ``read(f, entry)`` of each
        member's index entry; an archive gone since the listing makes each member a skip entry."""
        try:
            f = open_input(archive, self.options)
        except (OSError, ValueError) as exc:
            for key in run:
                yield (key,), failing(exc)
            return
        with f:
            for key in run:
                entry = index[key[len(archive) + 1 :]]
                yield (key,), lambda entry=entry: read(f, entry)

    def _chunk_members(self, archive: str, chunk: Sequence[str]) -> dict[str, tuple[int, int]]:
        """The index entries of ``chunk``'s members: what a task of them is sent (not the whole archive's)."""
        index, start = self.index[archive], len(archive) + 1
        return {key[start:]: index[key[start:]] for key in chunk}


class MemberIndex:
    """One archive's members that count, by name: the names packed and sorted, each one's numbers (a tar's data
    offset and size; a zip's header offset, sizes, CRC, method and flags) in arrays, a column each (~20-50
    bytes a member, where a dict entry of a name and a tuple took ~250). ``index[name]`` is the tuple of
    numbers, as the dict it replaces gave."""

    def __init__(self, members: dict[str, tuple[int, ...]], typecodes: str = "qq"):
        names = sorted(members)
        self.names = PackedKeys.of(names)
        self.outsized: dict[str, tuple[int, ...]] = {}  # members with a number no column holds: see _outsized
        try:
            self.columns = [array(code, [members[name][column] for name in names])
                            for column, code in enumerate(typecodes)]
        except OverflowError:
            self.columns = self._outsized(members, names, typecodes)

    def _outsized(self, members: dict, names: list[str], typecodes: str) -> list[array]:
        """The columns, where a damaged or hostile header holds a number past a column's type (a tar's base-256
        size field holds up to 2**88): that member's numbers kept exactly in ``outsized`` (it is then skipped
        as too large, as any), zeros in the columns."""
        columns = [array(code) for code in typecodes]
        for name in names:
            numbers = members[name]
            try:
                probe = [array(code, [number]) for code, number in zip(typecodes, numbers)]
            except OverflowError:
                self.outsized[name] = tuple(numbers)
                probe = [array(code, [0]) for code in typecodes]
            for column, number in zip(columns, probe):
                column.extend(number)
        return columns

    @property
    def offsets(self) -> array:
        return self.columns[0]

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, name: str) -> tuple[int, ...]:
        at = self.names.find(name)
        if at < 0:
            raise KeyError(name)
        if self.outsized and name in self.outsized:
            return self.outsized[name]
        return tuple(column[at] for column in self.columns)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and self.names.find(name) >= 0

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def __iter__(self):
        return iter(self.names)


class RunPartitions(Sequence):
    """The partitions of runs of ``keys`` that each stay within one archive, made when asked for (a shard of a
    million members is not a list of partitions, nor thousands of shards a list of their keys): ``spans`` holds
    ``(start, cuts)`` per run, ``cuts`` where its partitions begin from ``start``, then its length; each is
    read by ``source.for_keys`` of its keys (its archive, with those members' index entries alone)."""

    def __init__(self, source: "ArchiveSource", keys: Sequence[str], spans: list[tuple[int, Sequence[int]]]):
        self.source, self.keys, self.spans = source, keys, spans
        self._ends = list(itertools.accumulate(len(cuts) - 1 for _, cuts in spans))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = position_of(index, len(self), "partition")
        run = bisect.bisect_right(self._ends, index)
        start, cuts = self.spans[run]
        i = index - (self._ends[run - 1] if run else 0)
        keys = self.keys[start + cuts[i] : start + cuts[i + 1]]
        return Partition(self.source.for_keys(keys), keys)


def even_cuts(count: int, size: int) -> list[int]:
    """Where partitions of ``size`` of ``count`` keys begin, then ``count``."""
    return [*range(0, count, size), count]


def copies_left_out(archive: str, members: dict, copies: dict[str, int], rule: str) -> list[dict]:
    """One skip entry per counted member whose name the archive stores more than once: only its last copy
    is read (a folder cannot hold two files of one name), and the earlier copies must not vanish silently."""
    return [{"path": f"{archive}:{name}", "error": f"stored {copies[name]} times in the archive: only the "
             f"last copy is counted ({rule})"} for name in sorted(members) if copies.get(name, 1) > 1]


def size_of(f, path: str) -> int:
    """The compressed size of an open file (0, the budget's floor, when the store does not say)."""
    try:
        return os.fstat(f.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        size = getattr(f, "size", None)
        return size if isinstance(size, int) else 0


def too_large(size: int) -> ItemError:
    """A member whose (declared or inflated) size is over the per-file bound: skipped, not read."""
    try:
        limits.current().check_file_bytes(size, "member")
    except LimitError as exc:
        return ItemError(str(exc))
    raise AssertionError(f"{size} bytes are within the limit")


def failing(exc: Exception):
    def load():
        raise exc
    return load
