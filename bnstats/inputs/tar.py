"""Members of tar archives (:class:`TarSource`, WebDataset shards) read in ranges: local archives by a
seek per member, shards in object storage by byte ranges of consecutive members fetched ahead (a few
threads), compressed tars front to back; what the listing found is in :mod:`bnstats.inputs.tarindex`."""

from __future__ import annotations

import tarfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .. import limits
from ..limits import LimitError
from .archives import (COMPRESSED_TAR_SUFFIXES, TAR_SUFFIXES, ArchiveSource, RunPartitions, compressed_tar,
                       copies_left_out, even_cuts, failing, too_large)
from .base import ItemError, SourceError, gather_streams, is_url
from .keys import known_sorted
from .stores import ATTEMPTS, describe_remote_error, filesystem, is_http, retried
from .tarindex import Entry, TarLog, open_tar, resolve_members, tar_members

SPAN_BYTES = 8 * 2**20  # a shard in object storage is fetched in byte ranges up to this large
FIRST_SPAN_BYTES = 2**20  # (a task's first range is this large),
TASK_BYTES = 16 * 2**20  # and a task reads about this much of a shard,
MIN_TASKS = 8  # in this many tasks at least when there is less data
SPANS_AHEAD = 2  # this many ahead of the one being decoded,
SPAN_GAP = 2**16  # and a range goes on over gaps (headers, left-out members) up to this size


class TarSource(ArchiveSource):
    """Members of tar archives, compressed or not (see the module docstring)."""

    @classmethod
    def claims(cls, path: str) -> bool:
        return path.lower().endswith(TAR_SUFFIXES + COMPRESSED_TAR_SUFFIXES)

    @staticmethod
    def compressed(path: str) -> bool:
        """A compressed tar: read front to back by one task."""
        return compressed_tar(path)

    def _ranged(self, path: str) -> bool:
        return is_url(path) and not self.compressed(path)

    def streams(self) -> bool:
        return any(self.compressed(path) for path in self.paths)

    def streamed(self, keys) -> int:
        return sum(stop - start for archive, start, stop in self.spans(keys) if self.compressed(archive))

    def stream_of(self, key: str) -> str | None:
        archive = self.split(key)[0]
        return archive if self.compressed(archive) else None

    def _list(self, path: str) -> dict[str, tuple[int, int]]:
        entries: dict = {}
        last = None
        log = TarLog()

        # read front to back where seeking gains nothing (compressed) or may not be served (HTTP: every header
        # is read anyway, and a server without range requests answers a plain GET)
        stream = self.compressed(path) or is_http(path)

        copies: dict[str, int] = {}

        def read_headers():
            nonlocal last, log
            entries.clear()
            copies.clear()
            log = TarLog()
            with open_tar(path, self.options, log, stream) as tar:
                for info in tar_members(tar, log):
                    last = info.name
                    if info.name in entries:  # a name stored twice: the last copy, as tar extracts it
                        copies[info.name] = copies.get(info.name, 1) + 1
                    entries[info.name] = Entry.of(info)  # not the TarInfo: several times its size

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
        members, problems = resolve_members(entries, self._consider)
        self.listing_errors += [{"path": f"{path}:{name}", "error": error} for name, error in problems]
        self.listing_errors += copies_left_out(path, members, copies, "as tar extracts it")
        return members

    def partitions(self, keys, size):
        spans = list(self.spans(keys))
        sizes = {archive: [self.index[archive][k[len(archive) + 1 :]][1] for k in keys[start:stop]]
                 for archive, start, stop in spans if self._ranged(archive)}  # shards in object storage: by bytes
        task_bytes = _task_bytes([n for found in sizes.values() for n in found], size)
        cut = []
        for archive, start, stop in spans:
            if self.compressed(archive):
                cuts = [0, stop - start]  # a stream is read by one task
            elif archive in sizes:
                cuts = _by_bytes(sizes[archive], task_bytes)
            else:
                cuts = even_cuts(stop - start, size)
            cut.append((start, cuts))
        return RunPartitions(self, keys, cut)

    def read(self, keys):
        if self.streams() and not known_sorted(keys):  # a sample's: each stream read once, not once per run
            keys = gather_streams(keys, self.stream_of)
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
        yield from self._read_indexed(archive, run, index, lambda f, entry: _read_at(f, *entry))

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
                    yield (key,), failing(data) if isinstance(data, BaseException) else \
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
        log = TarLog()  # the listing reported the damage
        try:
            with open_tar(archive, self.options, log, stream=True) as tar:
                for info in tar_members(tar, log):
                    keys = wanted.get(info.offset_data)
                    if keys is None or not info.isreg() or info.offset_data in done:
                        continue
                    data = _read_member(tar, info)
                    done.add(info.offset_data)
                    for key in keys:
                        yield (key,), failing(data) if isinstance(data, Exception) else (lambda data=data: data)
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
                    yield (key,), failing(failure)

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


def _by_bytes(sizes: list[int], task_bytes: float) -> list[int]:
    """Where one shard's tasks begin, cut evenly in bytes into tasks of about ``task_bytes``; then its length."""
    tasks = max(1, round(sum(sizes) / task_bytes)) if task_bytes else 1
    total = sum(sizes)
    cuts, done = [0], 0
    for i, member in enumerate(sizes):
        done += member
        if len(cuts) < tasks and done * tasks >= total * len(cuts) and i + 1 < len(sizes):
            cuts.append(i + 1)
    return cuts + [len(sizes)] if sizes else cuts


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
        raise too_large(span[0][2])
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
        raise too_large(size)
    f.seek(offset)
    data = f.read(size)
    if len(data) < size:
        raise OSError("archive is truncated inside this member")
    return data


def _read_member(tar, info) -> bytes | Exception:
    if info.size > limits.current().file_bytes:
        return too_large(info.size)
    return tar.extractfile(info).read()
