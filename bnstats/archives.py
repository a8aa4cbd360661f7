"""Tar (WebDataset) and zip archives as inputs, read without extracting.

Item keys are ``ARCHIVE:MEMBER``; members are listed, filtered and sorted by
name like the files of a folder: regular members only, hidden ones (a path
part starting with ``.``, ``__MACOSX/``) ignored, and by default every
member whose name ends in an image extension (``--ext`` chooses others, e.g.
``--ext jpg`` to leave out WebDataset's ``.seg.png`` masks).

*Uncompressed tar* (``.tar``, the usual WebDataset shard): listing reads
the 512-byte headers and seeks over the data, and the index (each member's
data offset and size) lets a task read any range of members with one open
file and a seek per member — so one large shard still uses every core. In
WebDataset layout a sample's key is the member path up to the first dot of
its basename and the rest is its extension (``n01440764_10026.seg.png`` →
key ``n01440764_10026``, extension ``seg.png``); members are named in full.

*Compressed tar* (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``): a
stream cannot seek, so listing decompresses it once and one task reads each
archive front to back, counting the members of its range in stored order.

*Zip* (``.zip``): the central directory gives the members; a task opens the
archive once and reads its range of members.

A damaged archive is one skipped entry naming it (and the last member read);
every member before the damage is counted.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .remote import ATTEMPTS, describe_remote_error, filesystem, is_http, open_input, retried
from .sources import ContainerSource, ForkSafeLock, Partition, SourceError, is_url, register_source

TAR_SUFFIXES = (".tar",)
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_MEMBER_BYTES = 2**30  # a member claiming more is skipped, not read (a zip bomb, a damaged header)
SPAN_BYTES = 8 * 2**20  # a shard in object storage is fetched in byte ranges up to this large
FIRST_SPAN_BYTES = 2**20  # (a task's first range is this large),
TASK_BYTES = 16 * 2**20  # and a task reads about this much of a shard,
MIN_TASKS = 8  # in this many tasks at least when there is less data
SPANS_AHEAD = 2  # this many ahead of the one being decoded,
SPAN_GAP = 2**16  # and a range goes on over gaps (headers, left-out members) up to this size


def _hidden(name: str) -> bool:
    """A member under a hidden folder or named like a hidden file (``.x``), or macOS's ``__MACOSX/``.

    ``.`` parts are not hidden: ``tar -C dir .`` names every member ``./NAME``.
    """
    return any((part.startswith(".") and part != ".") or part == "__MACOSX" for part in name.split("/") if part)


class ArchiveSource(ContainerSource):
    """What tar and zip sources share: member filtering, keys, runs of keys per archive."""

    def __init__(self, paths, options=None):
        super().__init__(paths, options)
        self.index: dict[str, dict[str, tuple[int, int]]] = {}  # archive -> member -> (offset, size)

    def wanted(self, name: str) -> bool:
        """A member that counts: not hidden, with an image extension (or one of ``--ext``)."""
        return not _hidden(name) and name.lower().endswith(self.options.extensions())

    def list_items(self) -> list[str]:
        keys = []
        self.listing_errors = []  # archives that could not be read to the end
        self.listing_notes = []
        for path in self.paths:
            members = self._list(path)
            self.index[path] = members
            names = sorted(members)
            keys += [f"{path}:{name}" for name in names]
            offsets = [members[name][0] for name in names]
            if self._ranged(path) and any(b < a for a, b in zip(offsets, offsets[1:])):
                self.listing_notes.append(
                    f"{path}: its members are not stored in name order, the order they are read in, so they are "
                    "fetched in many small requests (slow): write shards with sorted members (tar --sort=name)")
        return keys

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
        members = {}
        last = None

        # read front to back where seeking gains nothing (compressed) or may not be served (HTTP: every header
        # is read anyway, and a server without range requests answers a plain GET)
        stream = self.compressed(path) or is_http(path)

        def read_headers():
            nonlocal last
            members.clear()
            with open_input(path, self.options, stream=stream) as f, \
                    tarfile.open(fileobj=f, mode="r|*" if stream else "r:") as tar:
                for info in tar:
                    last = info.name
                    if info.isreg() and self.wanted(info.name):
                        members[info.name] = (info.offset_data, info.size)

        try:  # a store's passing failure is tried again; damage is not
            retried(read_headers, ATTEMPTS if is_url(path) else 1, permanent=(tarfile.TarError, EOFError))
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - damaged, missing, or a store's error: one line
            where = f" after member {last}" if last else ""
            error = describe_remote_error(exc) if str(exc) else f"{type(exc).__name__}: damaged archive"
            self.listing_errors.append({"path": path, "error": f"{error}{where}"})
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
        with ThreadPoolExecutor(SPANS_AHEAD) as pool:
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

    def _read_stream(self, archive, run):
        wanted = {key[len(archive) + 1 :]: key for key in run}
        listed = self.index.get(archive) or {}
        seen = set()
        try:
            with open_input(archive, self.options, stream=True) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for info in tar:
                    key = wanted.get(info.name)
                    if key is None or not info.isreg() or info.name in seen:
                        continue
                    if info.name in listed and listed[info.name][0] != info.offset_data:
                        continue  # a name stored twice: the copy the listing kept (the last), as every read
                    data = _read_member(tar, info)
                    seen.add(info.name)
                    yield key, _fail(data) if isinstance(data, Exception) else (lambda data=data: data)
                    if len(seen) == len(wanted):  # the rest of the stream is other tasks' members
                        break
        except Exception as exc:  # noqa: BLE001 - damage, or the store's error (aiohttp's are no OSError)
            error = exc
        else:
            error = None
        for name, key in wanted.items():  # members the stream ended before
            if name not in seen:
                yield key, _fail(OSError(f"archive ended before this member ({error or 'missing'})"))

    def _relist(self, archive):
        self.index[archive] = self._list(archive)
        return self.index[archive]


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
        if size > MAX_MEMBER_BYTES:  # alone, never fetched: its own skip entry, not its neighbours'
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
    if span[0][2] > MAX_MEMBER_BYTES:
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
    if size > MAX_MEMBER_BYTES:
        raise _too_large(size)
    f.seek(offset)
    data = f.read(size)
    if len(data) < size:
        raise OSError("archive is truncated inside this member")
    return data


def _read_member(tar, info) -> bytes | Exception:
    if info.size > MAX_MEMBER_BYTES:
        return _too_large(info.size)
    return tar.extractfile(info).read()


def _too_large(size: int) -> OSError:
    return OSError(f"member of {size} bytes is over the {MAX_MEMBER_BYTES} byte limit")


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
                return {i.filename: (0, i.file_size) for i in z.infolist()
                        if not i.is_dir() and self.wanted(i.filename)}
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - damaged, missing, or a store's error: one line
            self.listing_errors.append({"path": path, "error": describe_remote_error(exc)})
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


def _read_zip_member(z: zipfile.ZipFile, name: str) -> bytes:
    info = z.getinfo(name)
    if info.file_size > MAX_MEMBER_BYTES:
        raise _too_large(info.file_size)
    return z.read(info)


register_source(TarSource)
register_source(ZipSource)


