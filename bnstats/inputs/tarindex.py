"""Walking a tar's headers for the listing: damage stepped over and logged (skip entries ``ARCHIVE:@offset
N``), hard and symbolic links resolved inside the archive, oversized header records refused, and a
compressed tar inflated within its :class:`~bnstats.limits.InflationBudget`."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import posixpath
import tarfile

from ..limits import InflationBudget
from .archives import compressed_tar, size_of, stored_parts
from .stores import open_input


# -- walking a tar's headers: damage, links, compression ---------------------------------------------------


BLOCK = tarfile.BLOCKSIZE
LINK_DEPTH = 32  # links followed from one member at most (a loop of symbolic links ends here)


class TarLog:
    """What a pass over a tar's headers met besides members: damaged blocks, and where and how it ended.

    Python's tarfile takes the first bad header after byte 0 for the end of the archive: a shard with one
    damaged header was counted as its prefix, silently. Opened with ``ignore_zeros`` it steps over bad
    blocks one at a time to the next valid header (as GNU tar does, "Skipping to next header"); this log
    keeps where, so that every damaged region is a skip entry and the members after it still count.
    """

    def __init__(self):
        self.damaged: list[tuple[int, int]] = []  # (first bad byte, the next valid header) of each region
        self.start: int | None = None  # the region being stepped over
        self.trailing = False  # ... which began after an end-of-archive marker (two zero blocks)
        self.zeros = 0  # zero blocks since the last header
        self.end: int | None = None  # where the pass stopped
        self.cut = False  # ... inside a header or a member's data
        self.members = 0
        self.depth = 0  # headers read inside a header (GNU long names, pax): one member
        self.after_end: int | None = None  # the first member after an end-of-archive marker (cat a.tar b.tar)

    def member(self, offset: int) -> None:
        if self.members and self.zeros >= 2 and self.after_end is None:  # tar x stops at the marker; tar -i not
            self.after_end = offset
        if self.start is not None:
            self.damaged.append((self.start, offset))
            self.start = None
        self.zeros = 0
        self.members += 1

    def zero(self) -> None:
        if self.start is None:
            self.zeros += 1

    def invalid(self, offset: int) -> None:
        if self.start is None:
            self.trailing = self.zeros >= 2
            self.start = offset if self.trailing else offset - BLOCK * self.zeros  # a zeroed header: from it
        self.zeros = 0

    def stopped(self, offset: int, cut: bool) -> None:
        if self.end is None:
            self.end, self.cut = offset, cut

    def problems(self, archive: str) -> list[dict]:
        """A skip entry ``ARCHIVE:@offset N`` per damaged region, and one for an archive cut short."""
        out = [_damage(archive, start, f"damaged tar header at byte {start}: skipped {end - start:,} bytes to "
                                       f"the next valid header at byte {end}; what they held is not counted")
               for start, end in self.damaged]
        if self.start is not None and not self.trailing:  # (bytes after the end-of-archive marker are no member)
            what = "not a tar archive: no valid header" if not self.members and not self.start else \
                f"damaged tar header at byte {self.start}: no valid header after it"
            out.append(_damage(archive, self.start, f"{what}; the rest of the archive is not counted"))
        elif self.start is None and self.cut:
            out.append(_damage(archive, self.end or 0, f"archive is cut short before byte {self.end}: the member "
                                                       "there is incomplete and anything after it is missing"))
        elif self.start is None and self.members and not self.zeros and self.end is not None:
            out.append(_damage(archive, self.end, f"archive ends at byte {self.end} without its end-of-archive "
                                                  "marker: it may be cut short (members after it are missing)"))
        return out


def _damage(archive: str, offset: int, error: str) -> dict:
    return {"path": f"{archive}:@offset {offset}", "error": error}


MAX_HEADER_RECORD = 1 << 20  # bytes of a pax or GNU long-name record (a path, xattrs): tarfile reads it whole


class _TrackedInfo(tarfile.TarInfo):
    """A TarInfo whose reading of headers reports to a :class:`TarLog` (a subclass per pass sets ``log``)."""

    log: TarLog

    def _proc_pax(self, tarfile_):
        self._check_record()
        return super()._proc_pax(tarfile_)

    def _proc_gnulong(self, tarfile_):
        self._check_record()
        return super()._proc_gnulong(tarfile_)

    def _check_record(self) -> None:
        """A pax or long-name header claiming gigabytes is damage, stepped over like any bad header:
        tarfile would read it whole (a MemoryError, or every member after it taken for its record)."""
        if self.size > MAX_HEADER_RECORD:
            raise tarfile.InvalidHeaderError(f"a {self.size:,}-byte extended header record")

    @classmethod
    def fromtarfile(cls, tar):
        log, offset = cls.log, tar.offset
        log.depth += 1
        outer = log.depth == 1  # not the header after a long name's: tarfile reports its errors as the outer's
        try:
            info = super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            if outer:
                log.zero()
            raise
        except tarfile.SubsequentHeaderError as exc:  # a long name or pax header whose next header is bad
            if outer:
                log.invalid(offset)
            raise tarfile.InvalidHeaderError(str(exc)) from None
        except tarfile.InvalidHeaderError:
            if outer:
                log.invalid(offset)
            raise
        except tarfile.TruncatedHeaderError:
            if outer:
                log.stopped(offset, cut=True)
            raise
        except tarfile.EmptyHeaderError:
            if outer:
                log.stopped(offset, cut=False)
            raise
        finally:
            log.depth -= 1
        if outer:
            log.member(info.offset)
        return info


@contextlib.contextmanager
def open_tar(path: str, options, log: TarLog, stream: bool):
    """An open tarfile of ``path`` that steps over damage into ``log``; a compressed one inflated here,
    within the archive's :class:`~bnstats.limits.InflationBudget` (raises LimitError past it)."""
    tracked = type("_Tracked", (_TrackedInfo,), {"log": log})
    with open_input(path, options, stream=stream) as f:
        data = _inflating(f, path) if compressed_tar(path) else f
        with tarfile.open(fileobj=data, mode="r|" if data is not f or stream else "r:", ignore_zeros=True,
                          tarinfo=tracked) as tar:
            yield tar


def tar_members(tar, log: TarLog):
    """The members of an open tar in stored order; where its data ends inside a member, the log says so."""
    while True:
        try:
            info = tar.next()
        except (tarfile.ReadError, EOFError):  # "unexpected end of data": cut inside a member
            log.stopped(tar.offset, cut=True)
            return
        if info is None:
            return
        yield info
        tar.members.clear()  # tarfile keeps every TarInfo it read (for getmembers): a shard's worth


class Entry:
    """What the listing keeps of a member's header: its type, data offset, size, link target and whether it
    is sparse; the methods of :class:`tarfile.TarInfo` that :func:`resolve_members` asks."""

    __slots__ = ("type", "offset_data", "size", "linkname", "sparse", "name")

    def __init__(self, name: str, type_: bytes, offset_data: int, size: int, linkname: str, sparse: bool):
        self.name, self.type, self.offset_data, self.size = name, type_, offset_data, size
        self.linkname, self.sparse = linkname, sparse

    @classmethod
    def of(cls, info: tarfile.TarInfo) -> "Entry | tuple[int, int]":
        """What the listing keeps of ``info``: ``(data offset, size)`` for a regular member (most of them:
        a tuple is the smallest), else an Entry."""
        if info.isreg() and not info.issparse():
            return info.offset_data, info.size
        return cls(info.name, info.type, info.offset_data, info.size, info.linkname or "", info.issparse())

    def isdir(self) -> bool:
        return self.type == tarfile.DIRTYPE

    def isreg(self) -> bool:
        return self.type in tarfile.REGULAR_TYPES

    def islnk(self) -> bool:
        return self.type == tarfile.LNKTYPE

    def issym(self) -> bool:
        return self.type == tarfile.SYMTYPE

    def issparse(self) -> bool:
        return self.sparse


def resolve_members(entries: dict, wanted) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """``(members, problems)``: each wanted member's ``(data offset, size)`` and ``(name, error)`` for the
    wanted ones that cannot be read. ``entries``: name -> ``(data offset, size)`` of a regular member, else
    its :class:`Entry`.

    A hard link reads its target's data (GNU tar stores a second name of a file so), a symbolic link the
    member it points to inside the archive; a link to nothing in the archive, a sparse member or a device
    is a problem, never left out silently.
    """
    by_path = None  # every member by its normalised path: made only for an archive that holds links
    members, problems = {}, []
    for name, entry in entries.items():
        if type(entry) is tuple:  # a regular member: its own data
            if wanted(name):
                members[name] = entry
            continue
        if entry.isdir() or not wanted(name):
            continue
        if by_path is None and (entry.islnk() or entry.issym()):
            by_path = {posixpath.normpath("/".join(stored_parts(n)) or "."): e for n, e in entries.items()}
        target, error = _target(entry, by_path or {})
        if error is not None:
            problems.append((name, error))
        else:
            members[name] = target
    return members, sorted(problems)


def _target(info, by_path: dict):
    """The ``(data offset, size)`` of the regular member whose data ``info`` holds (itself, or the end of its
    links), or an error."""
    seen = info
    for _ in range(LINK_DEPTH):
        if type(info) is tuple:
            return info, None
        if info.issparse():
            return None, "sparse member: not supported (store it without --sparse)"
        if info.isreg():
            return (info.offset_data, info.size), None
        if not (info.islnk() or info.issym()):
            return None, f"not a regular member ({_TYPE_NAMES.get(info.type, 'special member')})"
        if info.issym() and info.linkname.startswith("/"):
            return None, f"symbolic link to {info.linkname}, outside the archive: not counted"
        base = "" if info.islnk() else posixpath.dirname("/".join(stored_parts(info.name)))
        path = posixpath.normpath(posixpath.join(base, "/".join(stored_parts(info.linkname))))
        kind = "hard link" if info.islnk() else "symbolic link"
        if path.startswith("../") or path == ".." or path not in by_path:
            return None, f"{kind} to {info.linkname}, which is not a member of the archive: not counted"
        info = by_path[path]
    return None, f"{seen.linkname}: too many levels of symbolic links"


_TYPE_NAMES = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}


class _Rewound:
    """A file read front to back whose first bytes (read to tell its compression) are given back first."""

    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.f.read(n)
        if n is None or n < 0:
            data, self.head = self.head + self.f.read(), b""
            return data
        data, self.head = self.head[:n], self.head[n:]
        return data if len(data) == n else data + self.f.read(n - len(data))


class _Inflated:
    """The inflated bytes of a compressed tar, each one counted against the archive's budget as it comes."""

    def __init__(self, inner, budget: InflationBudget):
        self.inner, self.budget = inner, budget

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n if n is not None and n >= 0 else 1 << 20)  # never unbounded
        self.budget.spend(len(data))
        return data


_DECOMPRESSORS = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")), (b"BZh", bz2.BZ2File),
                  (b"\xfd7zXZ\x00", lzma.LZMAFile))


def _inflating(f, path: str):
    """``f`` inflated (gzip, bzip2, xz: told by its first bytes) within the archive's budget: ratio × its
    size, past the floor (:class:`~bnstats.limits.InflationBudget`); a plain tar so named: as it is."""
    head = f.read(6)
    raw = _Rewound(head, f)
    for magic, opener in _DECOMPRESSORS:
        if head.startswith(magic):
            return _Inflated(opener(raw), InflationBudget(size_of(f, path), path))
    return raw
