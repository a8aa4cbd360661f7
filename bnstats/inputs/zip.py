"""Members of zip archives (:class:`ZipSource`): the central directory lists them, and a task is sent its
members' entries (offsets, sizes, CRC, method: no directory parsed again in a worker), opens the archive
once and inflates each member a chunk at a time, never past its declared size nor the per-file bound, its
CRC checked; a zip declaring more than its inflation budget is refused before any member is inflated."""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import zipfile
import zlib

from .. import limits
from ..limits import InflationBudget, LimitError
from .archives import ArchiveSource, RunPartitions, copies_left_out, even_cuts, failing, size_of, too_large
from .base import ForkSafeLock, ItemError, SourceError, is_url
from .stores import describe_remote_error, is_http, open_input


class ZipSource(ArchiveSource):
    """Members of zip archives (see the module docstring)."""

    index_typecodes = "qqqIHH"  # header offset, compressed and inflated sizes, CRC-32, method, flags: see _entry

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
                members = {i.filename: _entry(i) for i in listed}  # a name stored twice: its last copy
                _check_declared(path, size_of(f, path), members)
                copies: dict[str, int] = {}
                for i in listed:
                    copies[i.filename] = copies.get(i.filename, 0) + 1
                self.listing_errors += copies_left_out(path, members, copies, "as unzip and zipfile read it")
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
        spans = [(start, even_cuts(stop - start, size)) for _, start, stop in self.spans(keys)]
        return RunPartitions(self, keys, spans)

    def read(self, keys):
        for archive, run in self.runs(keys):
            if self.index.get(archive):  # a task: its members' entries came with it (no directory parsed again)
                yield from self._read_listed(archive, run, self.index[archive])
                continue
            try:  # keys given from Python, not listed here: the archive's own directory
                z = _open_zip(archive, self.options)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                for key in run:
                    yield (key,), failing(exc)
                continue
            for key in run:
                yield (key,), lambda name=key[len(archive) + 1 :]: _read_zip_member(z, name)

    def _read_listed(self, archive, run, index):
        """The members of ``run``, by the entries the listing found: the archive opened once, a seek each."""
        yield from self._read_indexed(archive, run, index, _read_entry)


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
    declared = sum(entry[2] for entry in members.values())
    budget = InflationBudget(compressed, path)
    if declared > budget.allowed:
        raise LimitError(f"its members declare {declared:,} bytes in all, over {budget.allowed:,}: more than "
                         f"{budget.limits.ratio}× its size of {compressed:,} bytes (a decompression bomb? raise it "
                         f"with {budget.limits.variable('ratio')})")


INFLATE_CHUNK = 1 << 20  # a member is inflated this much at a time, and its size checked in between
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader


def _entry(info: zipfile.ZipInfo) -> tuple[int, int, int, int, int, int]:
    """What reading a member needs of its directory entry: header offset, compressed and inflated sizes, CRC,
    compression method and flags (a task is sent these, and parses no directory)."""
    return info.header_offset, info.compress_size, info.file_size, info.CRC, info.compress_type, info.flag_bits


def _read_zip_member(z: zipfile.ZipFile, name: str) -> bytes:
    """A member of an open zip, by name (see :func:`_read_entry`), read under the zip's lock (tasks on threads
    share an open zip)."""
    with z._lock:
        return _read_entry(z.fp, _entry(z.getinfo(name)))


def _read_entry(f, entry: tuple[int, int, int, int, int, int]) -> bytes:
    """A zip member's bytes from the open archive ``f``, by its directory entry (:func:`_entry`), inflated a
    chunk at a time and never past its declared size nor the per-file bound: zipfile itself inflates a bzip2
    or LZMA chunk whole (7 KiB declared as 1000 bytes took 8 GiB). Its CRC is checked."""
    header_offset, compress_size, file_size, crc, method, flags = entry
    limit = limits.current().file_bytes
    if file_size > limit:
        raise too_large(file_size)
    if compress_size > limit:
        raise too_large(compress_size)
    if flags & 0x1:
        raise ItemError("encrypted member: cannot be read")
    data = _inflate(method, _raw_at(f, header_offset, compress_size), file_size)
    if zlib.crc32(data) != crc:
        raise zipfile.BadZipFile("CRC check failed: the member is damaged")
    return data


def _raw_member(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's compressed bytes, read under the zip's lock."""
    with z._lock:
        return _raw_at(z.fp, info.header_offset, info.compress_size)


def _raw_at(f, header_offset: int, compress_size: int) -> bytes:
    """The compressed bytes of the member whose local header is at ``header_offset``."""
    f.seek(header_offset)
    header = f.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != zipfile.stringFileHeader:
        raise zipfile.BadZipFile("bad local file header: the member is damaged")
    fields = _LOCAL_HEADER.unpack(header)
    f.seek(fields[zipfile._FH_FILENAME_LENGTH] + fields[zipfile._FH_EXTRA_FIELD_LENGTH], os.SEEK_CUR)
    raw = f.read(compress_size)
    if len(raw) < compress_size:
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
