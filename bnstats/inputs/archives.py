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

import bz2
import contextlib
import gzip
import lzma
import os
import posixpath
import struct
import tarfile
import zipfile
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .. import limits
from ..limits import InflationBudget, LimitError
from .remote import ATTEMPTS, describe_remote_error, filesystem, is_http, open_input, retried
from .base import IMG_EXTENSIONS, ContainerSource, ForkSafeLock, ItemError, Partition, SourceError, is_url

TAR_SUFFIXES = (".tar",)
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SPAN_BYTES = 8 * 2**20  # a shard in object storage is fetched in byte ranges up to this large
FIRST_SPAN_BYTES = 2**20  # (a task's first range is this large),
TASK_BYTES = 16 * 2**20  # and a task reads about this much of a shard,
MIN_TASKS = 8  # in this many tasks at least when there is less data
SPANS_AHEAD = 2  # this many ahead of the one being decoded,
SPAN_GAP = 2**16  # and a range goes on over gaps (headers, left-out members) up to this size


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


def _stored_parts(name: str) -> list[str]:
    """A member's path parts, without the ``.`` and empty parts of ``./a/b`` and ``/a/b``."""
    return [part for part in name.split("/") if part not in ("", ".")]


class ArchiveSource(ContainerSource):
    """What tar and zip sources share: member filtering, keys, runs of keys per archive."""

    def __init__(self, paths, options=None):
        super().__init__(paths, options)
        self.index: dict[str, dict[str, tuple[int, int]]] = {}  # archive -> member -> (offset, size)

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
        parts = _stored_parts(member)
        if len(parts) > 1:
            return parts[0]
        base = posixpath.basename(archive.rstrip("/"))
        for suffix in sorted(TAR_SUFFIXES + COMPRESSED_TAR_SUFFIXES + (".zip",), key=len, reverse=True):
            if base.lower().endswith(suffix):
                return base[: -len(suffix)]
        return base

    def list_items(self) -> list[str]:
        keys = []
        self.listing_errors = []  # archives that could not be read to the end, damage, links that lead nowhere
        self.listing_notes = []
        for path in self.paths:
            self._left_out: dict[str, int] = {}
            members = self._list(path)
            self.index[path] = members
            names = sorted(members)
            keys += [f"{path}:{name}" for name in names]
            offsets = [members[name][0] for name in names]
            if self._ranged(path) and any(b < a for a, b in zip(offsets, offsets[1:])):
                self.listing_notes.append(
                    f"{path}: its members are not stored in name order, the order they are read in, so they are "
                    "fetched in many small requests (slow): write shards with sorted members (tar --sort=name)")
            if self._left_out:
                counts = ", ".join(f"{ext} {n}" for ext, n in sorted(self._left_out.items()))
                self.listing_notes.append(
                    f"{path}: --ext {','.join(self.options.ext)} left out members whose WebDataset extension is "
                    f"longer ({counts}): name those to count them too (e.g. --ext {min(self._left_out)})")
        return keys

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

    def _sub(self, archive: str, members: dict) -> "ArchiveSource":
        part = type(self)([archive], self.options)
        part.index = {archive: members}
        return part


class TarSource(ArchiveSource):
    """Members of tar archives, compressed or not (see the module docstring)."""

    @classmethod
    def claims(cls, path: str) -> bool:
        return path.lower().endswith(TAR_SUFFIXES + COMPRESSED_TAR_SUFFIXES)

    @staticmethod
    def compressed(path: str) -> bool:
        return path.lower().endswith(COMPRESSED_TAR_SUFFIXES)

    def _ranged(self, path: str) -> bool:
        return is_url(path) and not self.compressed(path)

    def _list(self, path: str) -> dict[str, tuple[int, int]]:
        entries: dict = {}
        last = None
        log = _TarLog()

        # read front to back where seeking gains nothing (compressed) or may not be served (HTTP: every header
        # is read anyway, and a server without range requests answers a plain GET)
        stream = self.compressed(path) or is_http(path)

        copies: dict[str, int] = {}

        def read_headers():
            nonlocal last, log
            entries.clear()
            copies.clear()
            log = _TarLog()
            with _open_tar(path, self.options, log, stream) as tar:
                for info in _members(tar, log):
                    last = info.name
                    entries[info.name] = info  # a name stored twice: the last copy, as tar extracts it
                    copies[info.name] = copies.get(info.name, 0) + 1

        try:  # a store's passing failure is tried again; damage is not
            retried(read_headers, ATTEMPTS if is_url(path) else 1, permanent=(tarfile.TarError, EOFError, LimitError))
        except SourceError:
            raise
        except LimitError as exc:  # a compressed tar inflating past its budget: what came before still counts
            where = f"at or after member {last}" if last else "at its start"
            self.listing_errors.append({"path": path, "error": f"{exc}; stopped {where}: the rest of the archive "
                                                                "was not read"})
        except Exception as exc:  # noqa: BLE001 - damaged, missing, or a store's error: one line
            where = f" after member {last}" if last else ""
            error = describe_remote_error(exc) if str(exc) else f"{type(exc).__name__}: damaged archive"
            self.listing_errors.append({"path": path, "error": f"{error}{where}"})
        self.listing_errors += log.problems(path)
        if log.after_end is not None:
            self.listing_notes.append(
                f"{path}: members after its end-of-archive marker (from byte {log.after_end}: archives joined "
                "with cat?) are counted too, as tar --ignore-zeros reads them (plain tar x stops at the marker)")
        members, problems = _resolve_members(entries, self._consider)
        self.listing_errors += [{"path": f"{path}:{name}", "error": error} for name, error in problems]
        self.listing_errors += _copies_left_out(path, members, copies, "as tar extracts it")
        return members

    def partitions(self, keys, size):
        out = []
        runs = list(self.runs(keys))
        task_bytes = _task_bytes([self.index[a][k[len(a) + 1 :]][1] for a, run in runs if is_url(a)
                                  and not self.compressed(a) for k in run], size)
        for archive, run in runs:
            index = self.index[archive]
            if self.compressed(archive):
                chunks = [run]  # a stream is read by one task
            elif is_url(archive):
                chunks = _by_bytes(run, [index[k[len(archive) + 1 :]][1] for k in run], task_bytes)
            else:
                chunks = [run[i : i + size] for i in range(0, len(run), size)]
            for chunk in chunks:
                members = {k[len(archive) + 1 :]: index[k[len(archive) + 1 :]] for k in chunk}
                out.append(Partition(self._sub(archive, members), chunk))
        return out

    def read(self, keys):
        for archive, run in self.runs(keys):
            if self.compressed(archive):
                yield from self._read_stream(archive, run)
            else:
                yield from self._read_seeking(archive, run)

    def _read_seeking(self, archive, run):
        index = self.index.get(archive) or self._relist(archive)
        if self._ranged(archive):
            yield from self._read_ranges(archive, run, index)
            return
        try:
            f = open_input(archive, self.options)
        except (OSError, ValueError) as exc:  # gone since the listing: each member is skipped
            for key in run:
                yield key, _fail(exc)
            return
        with f:
            for key in run:
                offset, size = index[key[len(archive) + 1 :]]
                yield key, lambda offset=offset, size=size: _read_at(f, offset, size)

    def _read_ranges(self, archive, run, index):
        """A shard in object storage: runs of members fetched as byte ranges of up to ``SPAN_BYTES``.

        Each span is one request, and the next ones are fetched on a small
        thread pool while this one's members are decoded, so the store's
        latency overlaps decoding. A server that ignores range requests
        (it answers a range with the whole object) gets the shard read front
        to back instead.
        """
        fs = filesystem(archive, self.options)
        members = [(key, *index[key[len(archive) + 1 :]]) for key in run]
        spans = list(_spans(members))
        pool = ThreadPoolExecutor(SPANS_AHEAD)
        try:
            fetches: deque = deque()
            for i, span in enumerate(spans):
                if not fetches:  # the first range alone: a server that ignores ranges sends the whole shard once
                    fetches.append(pool.submit(_fetch_range, fs, archive, span))
                done = fetches.popleft()
                data = done.exception() or done.result()
                if isinstance(data, _RangesIgnored):
                    for pending in fetches:
                        pending.cancel()
                    yield from self._read_stream(archive, [key for s in spans[i:] for key, _, _ in s])
                    return
                while len(fetches) < SPANS_AHEAD and i + 1 + len(fetches) < len(spans):  # the next ones, ahead
                    fetches.append(pool.submit(_fetch_range, fs, archive, spans[i + 1 + len(fetches)]))
                start = span[0][1]
                for key, offset, size in span:
                    yield key, _fail(data) if isinstance(data, BaseException) else \
                        (lambda data=data, at=offset - start, size=size: _member(data, at, size))
        finally:
            # not waiting for ranges under way: a stop signal must not wait on a server that stopped sending
            pool.shutdown(wait=False, cancel_futures=True)

    def _read_stream(self, archive, run):
        """The members of ``run`` read front to back (a compressed tar, or a server without ranges): each
        regular member's data once, for every key the listing pointed at it (a hard link's key too)."""
        index = self.index.get(archive) or self._relist(archive)
        wanted: dict[int, list[str]] = {}  # data offset -> keys
        for key in run:
            wanted.setdefault(index[key[len(archive) + 1 :]][0], []).append(key)
        done = set()
        log = _TarLog()  # the listing reported the damage
        try:
            with _open_tar(archive, self.options, log, stream=True) as tar:
                for info in _members(tar, log):
                    keys = wanted.get(info.offset_data)
                    if keys is None or not info.isreg() or info.offset_data in done:
                        continue
                    data = _read_member(tar, info)
                    done.add(info.offset_data)
                    for key in keys:
                        yield key, _fail(data) if isinstance(data, Exception) else (lambda data=data: data)
                    if len(done) == len(wanted):  # the rest of the stream is other tasks' members
                        break
        except LimitError as exc:  # inflated past the archive's budget: the listing said so too
            error = exc
        except Exception as exc:  # noqa: BLE001 - damage, or the store's error (aiohttp's are no OSError)
            error = exc
        else:
            error = None
        for offset, keys in wanted.items():  # members the stream ended before
            if offset not in done:
                failure = ItemError(f"not read: {error}") if isinstance(error, LimitError) else \
                    OSError(f"archive ended before this member ({error or 'missing'})")
                for key in keys:
                    yield key, _fail(failure)

    def _relist(self, archive):
        self.index[archive] = self._list(archive)
        return self.index[archive]


# -- walking a tar's headers: damage, links, compression ---------------------------------------------------


BLOCK = tarfile.BLOCKSIZE
LINK_DEPTH = 32  # links followed from one member at most (a loop of symbolic links ends here)


class _TarLog:
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
    """A TarInfo whose reading of headers reports to a :class:`_TarLog` (a subclass per pass sets ``log``)."""

    log: _TarLog

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
def _open_tar(path: str, options, log: _TarLog, stream: bool):
    """An open tarfile of ``path`` that steps over damage into ``log``; a compressed one inflated here,
    within the archive's :class:`~bnstats.limits.InflationBudget` (raises LimitError past it)."""
    tracked = type("_Tracked", (_TrackedInfo,), {"log": log})
    with open_input(path, options, stream=stream) as f:
        data = _inflating(f, path) if TarSource.compressed(path) else f
        with tarfile.open(fileobj=data, mode="r|" if data is not f or stream else "r:", ignore_zeros=True,
                          tarinfo=tracked) as tar:
            yield tar


def _members(tar, log: _TarLog):
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


def _resolve_members(entries: dict, wanted) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """``(members, problems)``: each wanted member's ``(data offset, size)`` and ``(name, error)`` for the
    wanted ones that cannot be read.

    A hard link reads its target's data (GNU tar stores a second name of a file so), a symbolic link the
    member it points to inside the archive; a link to nothing in the archive, a sparse member or a device
    is a problem, never left out silently.
    """
    by_path = {posixpath.normpath("/".join(_stored_parts(name)) or "."): info for name, info in entries.items()}
    members, problems = {}, []
    for name, info in entries.items():
        if info.isdir() or not wanted(name):
            continue
        target, error = _target(info, by_path)
        if error is not None:
            problems.append((name, error))
        else:
            members[name] = (target.offset_data, target.size)
    return members, sorted(problems)


def _copies_left_out(archive: str, members: dict, copies: dict[str, int], rule: str) -> list[dict]:
    """One skip entry per counted member whose name the archive stores more than once: only its last copy
    is read (a folder cannot hold two files of one name), and the earlier copies must not vanish silently."""
    return [{"path": f"{archive}:{name}", "error": f"stored {copies[name]} times in the archive: only the "
             f"last copy is counted ({rule})"} for name in sorted(members) if copies.get(name, 1) > 1]


def _target(info, by_path: dict):
    """The regular member whose data ``info`` holds (itself, or the end of its links), or an error."""
    seen = info
    for _ in range(LINK_DEPTH):
        if info.issparse():
            return None, "sparse member: not supported (store it without --sparse)"
        if info.isreg():
            return info, None
        if not (info.islnk() or info.issym()):
            return None, f"not a regular member ({_TYPE_NAMES.get(info.type, 'special member')})"
        if info.issym() and info.linkname.startswith("/"):
            return None, f"symbolic link to {info.linkname}, outside the archive: not counted"
        base = "" if info.islnk() else posixpath.dirname("/".join(_stored_parts(info.name)))
        path = posixpath.normpath(posixpath.join(base, "/".join(_stored_parts(info.linkname))))
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
            return _Inflated(opener(raw), InflationBudget(_size_of(f, path), path))
    return raw


def _size_of(f, path: str) -> int:
    """The compressed size of an open file (0, the budget's floor, when the store does not say)."""
    try:
        return os.fstat(f.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        size = getattr(f, "size", None)
        return size if isinstance(size, int) else 0


def _task_bytes(sizes: list[int], size: int) -> float:
    """Bytes per task for shards in object storage: about ``TASK_BYTES``, in at least ``MIN_TASKS`` tasks.

    Every task waits once for its first range; tasks this large make that
    wait small next to their decoding. With little data, fewer but larger
    tasks than the usual ``size`` items, never fewer than ``MIN_TASKS`` (so
    that every core has work) unless the usual count is smaller.
    """
    total = sum(sizes)
    usual = -(-len(sizes) // max(size, 1))
    tasks = max(min(usual, -(-total // TASK_BYTES)), min(usual, MIN_TASKS), 1)
    return total / tasks


def _by_bytes(run: list[str], sizes: list[int], task_bytes: float) -> list[list[str]]:
    """One shard's members cut evenly in bytes into tasks of about ``task_bytes``."""
    tasks = max(1, round(sum(sizes) / task_bytes)) if task_bytes else 1
    total = sum(sizes)
    out, start, done = [], 0, 0
    for i, member in enumerate(sizes):
        done += member
        if len(out) < tasks - 1 and done * tasks >= total * (len(out) + 1):
            out.append(run[start : i + 1])
            start = i + 1
    out.append(run[start:])
    return [chunk for chunk in out if chunk]


def _spans(members):
    """Consecutive members (in key order) grouped into byte ranges with small gaps.

    The first range is ``FIRST_SPAN_BYTES`` and the next ones up to
    ``SPAN_BYTES``: a task waits for one small request, and the large ones
    behind it are fetched while it decodes, in as few requests as the memory
    bound allows (each costs a store ~2.5 ms of CPU, moto's on these cores:
    growing the ranges by doubling made one request more per 8 MiB shard, and
    S3 shards 0.79x local ones at -j2 rather than 0.84x). A member over the
    size limit is a span of its own.
    """
    span: list = []
    limit = FIRST_SPAN_BYTES
    for member in members:
        _, offset, size = member
        if size > limits.current().file_bytes:  # alone, never fetched: its own skip entry, not its neighbours'
            if span:
                yield span
            yield [member]
            span = []
            continue
        if span:
            start, end = span[0][1], span[-1][1] + span[-1][2]
            if not (end <= offset <= end + SPAN_GAP and offset + size - start <= limit):
                yield span
                span, limit = [], SPAN_BYTES
        span.append(member)
    if span:
        yield span


class _RangesIgnored(Exception):
    """The server sent more than the range asked for: it does not do range requests."""


def _fetch_range(fs, url: str, span) -> bytes:
    start, end = span[0][1], span[-1][1] + span[-1][2]
    if span[0][2] > limits.current().file_bytes:
        raise _too_large(span[0][2])
    data = retried(lambda: fs.cat_file(url, start=start, end=end))
    if len(data) > end - start:
        raise _RangesIgnored
    return data


def _member(data: bytes, at: int, size: int) -> bytes:
    if at + size > len(data):
        raise OSError("archive is truncated inside this member")
    return data[at : at + size]


def _read_at(f, offset: int, size: int) -> bytes:
    if size > limits.current().file_bytes:
        raise _too_large(size)
    f.seek(offset)
    data = f.read(size)
    if len(data) < size:
        raise OSError("archive is truncated inside this member")
    return data


def _read_member(tar, info) -> bytes | Exception:
    if info.size > limits.current().file_bytes:
        return _too_large(info.size)
    return tar.extractfile(info).read()


def _too_large(size: int) -> ItemError:
    """A member whose (declared or inflated) size is over the per-file bound: skipped, not read."""
    try:
        limits.current().check_file_bytes(size, "member")
    except LimitError as exc:
        return ItemError(str(exc))
    raise AssertionError(f"{size} bytes are within the limit")


def _fail(exc: Exception):
    def load():
        raise exc
    return load


class ZipSource(ArchiveSource):
    """Members of zip archives (see the module docstring)."""

    @classmethod
    def claims(cls, path: str) -> bool:
        return path.lower().endswith(".zip")

    def _list(self, path: str) -> dict[str, tuple[int, int]]:
        try:
            with open_input(path, self.options) as f, zipfile.ZipFile(f) as z:
                if not z.infolist() and z.start_dir > 0:  # unzip: "N extra bytes ... zipfile is empty"
                    raise zipfile.BadZipFile(
                        f"its end record lists no member, yet {z.start_dir:,} bytes come before it (damaged, or "
                        "a second end record in its comment): no member of it was read")
                listed = [i for i in z.infolist() if not i.is_dir() and self._consider(i.filename)]
                members = {i.filename: (0, i.file_size) for i in listed}  # a name stored twice: its last copy
                _check_declared(path, _size_of(f, path), members)
                copies: dict[str, int] = {}
                for i in listed:
                    copies[i.filename] = copies.get(i.filename, 0) + 1
                self.listing_errors += _copies_left_out(path, members, copies, "as unzip and zipfile read it")
                return members
        except SourceError:
            raise
        except LimitError as exc:
            self.listing_errors.append({"path": path, "error": f"{exc}: no member of it was read"})
            return {}
        except Exception as exc:  # noqa: BLE001 - damaged, missing, or a store's error: one line
            error = describe_remote_error(exc)
            if is_http(path) and isinstance(exc, ValueError) and "range requests" in str(exc):  # fsspec's advice
                error = ("the server does not answer range requests, which a zip needs (its index is at its "
                         "end): download it first, or pack the images as a tar, which is read front to back")
            self.listing_errors.append({"path": path, "error": error})
            return {}

    def partitions(self, keys, size):
        out = []
        for archive, run in self.runs(keys):
            for i in range(0, len(run), size):
                chunk = run[i : i + size]
                out.append(Partition(self._sub(archive, {}), chunk))
        return out

    def read(self, keys):
        for archive, run in self.runs(keys):
            try:
                z = _open_zip(archive, self.options)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                for key in run:
                    yield key, _fail(exc)
                continue
            for key in run:
                yield key, lambda name=key[len(archive) + 1 :]: _read_zip_member(z, name)


_ZIPS: dict = {}  # (archive, size, mtime) -> (pid, ZipFile): the last few local zips this process read
_ZIPS_KEPT = 4
_ZIPS_LOCK = ForkSafeLock()


def _open_zip(archive: str, options) -> zipfile.ZipFile:
    """An open zip, its central directory parsed once per process rather than once per task.

    A zip of 100,000 members takes ~0.5 s to parse; a worker reads many
    tasks of it. Local zips are kept open (the last few, keyed by size and
    modification time, so a rewritten file is parsed again); URLs are opened
    per task.
    """
    if is_url(archive):
        return zipfile.ZipFile(open_input(archive, options))
    st = os.stat(archive)
    key = (archive, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # a replaced file differs
    with _ZIPS_LOCK:
        entry = _ZIPS.get(key)
        if entry is not None and entry[0] == os.getpid():  # not one inherited from the parent: its offset is shared
            return entry[1]
        z = zipfile.ZipFile(archive)  # owns its file: closed when the last task using it lets go
        while len(_ZIPS) >= _ZIPS_KEPT:
            _ZIPS.pop(next(iter(_ZIPS)))  # closed when no task holds it any more
        _ZIPS[key] = (os.getpid(), z)
        return z


def _check_declared(path: str, compressed: int, members: dict) -> None:
    """Refuse a zip whose members declare more bytes in all than its budget (ratio × its size): thousands of
    members of zeros are refused before one is inflated. A member is then never inflated past its
    declared size (:func:`_read_zip_member`), so no task inflates more than the budget."""
    declared = sum(size for _, size in members.values())
    budget = InflationBudget(compressed, path)
    if declared > budget.allowed:
        raise LimitError(f"its members declare {declared:,} bytes in all, over {budget.allowed:,}: more than "
                         f"{budget.limits.ratio}× its size of {compressed:,} bytes (a decompression bomb? raise it "
                         f"with {budget.limits.variable('ratio')})")


INFLATE_CHUNK = 1 << 20  # a member is inflated this much at a time, and its size checked in between
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader


def _read_zip_member(z: zipfile.ZipFile, name: str) -> bytes:
    """A zip member's bytes, inflated a chunk at a time and never past its declared size nor the per-file
    bound: zipfile itself inflates a bzip2 or LZMA chunk whole (7 KiB declared as 1000 bytes took 8 GiB)."""
    info = z.getinfo(name)
    limit = limits.current().file_bytes
    if info.file_size > limit:
        raise _too_large(info.file_size)
    if info.compress_size > limit:
        raise _too_large(info.compress_size)
    if info.flag_bits & 0x1:
        raise ItemError("encrypted member: cannot be read")
    data = _inflate(info.compress_type, _raw_member(z, info), info.file_size)
    if zlib.crc32(data) != info.CRC:
        raise zipfile.BadZipFile("CRC check failed: the member is damaged")
    return data


def _raw_member(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's compressed bytes, read under the zip's lock (tasks on threads share an open zip)."""
    with z._lock:
        z.fp.seek(info.header_offset)
        header = z.fp.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or header[:4] != zipfile.stringFileHeader:
            raise zipfile.BadZipFile("bad local file header: the member is damaged")
        fields = _LOCAL_HEADER.unpack(header)
        z.fp.seek(fields[zipfile._FH_FILENAME_LENGTH] + fields[zipfile._FH_EXTRA_FIELD_LENGTH], os.SEEK_CUR)
        raw = z.fp.read(info.compress_size)
    if len(raw) < info.compress_size:
        raise zipfile.BadZipFile("archive is truncated inside this member")
    return raw


def _inflate(method: int, raw: bytes, declared: int) -> bytes:
    """``raw`` inflated by zip compression ``method``, stopping past ``declared`` bytes (an error)."""
    if method == zipfile.ZIP_STORED:
        inflater = None
    elif method == zipfile.ZIP_DEFLATED:
        inflater = zlib.decompressobj(-15)
    elif method == zipfile.ZIP_BZIP2:
        inflater = bz2.BZ2Decompressor()
    elif method == zipfile.ZIP_LZMA:
        inflater, raw = _lzma_inflater(raw)
    else:
        raise ItemError(f"compression method {method} is not supported (store, deflate, bzip2 or LZMA are)")
    if inflater is None:
        out, done = [raw], True
    else:
        out, done = _inflated_chunks(inflater, raw, declared)
    data = b"".join(out)
    if len(data) > declared:
        raise ItemError(f"member inflates past its declared size of {declared:,} bytes (damaged, or a "
                        "decompression bomb): not counted")
    if not done or len(data) < declared:
        raise zipfile.BadZipFile(f"member ends after {len(data):,} of its {declared:,} bytes: it is damaged")
    return data


def _inflated_chunks(inflater, raw: bytes, declared: int) -> tuple[list[bytes], bool]:
    """Chunks of at most :data:`INFLATE_CHUNK`, stopping once past ``declared``; and whether the data ended."""
    out, total, pending = [], 0, raw
    while total <= declared:  # one byte past the declared size is enough to tell a lie
        chunk = inflater.decompress(pending, min(INFLATE_CHUNK, declared + 1 - total))
        total += len(chunk)
        out.append(chunk)
        if inflater.eof:
            return out, True
        if hasattr(inflater, "unconsumed_tail"):  # zlib: input left over past max_length
            pending = inflater.unconsumed_tail
            if not pending and not chunk:
                return out, False
        else:
            pending = b""
            if inflater.needs_input:
                return out, False
    return out, inflater.eof


def _lzma_inflater(raw: bytes):
    """Zip's LZMA: a 4-byte header (version, properties' size), LZMA1 properties, then raw LZMA1 data."""
    if len(raw) < 4:
        raise zipfile.BadZipFile("LZMA member too short: it is damaged")
    size = struct.unpack("<H", raw[2:4])[0]
    filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, raw[4 : 4 + size])]
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters), raw[4 + size :]



