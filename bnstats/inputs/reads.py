"""Reading one file safely (:func:`read_file`: regular files only, within ``BNSTATS_MAX_FILE_BYTES``), and the
page-cache probe and read-ahead that keep a cold folder's reads overlapped with decoding."""

from __future__ import annotations

import os
import stat

from .. import limits
from .base import ItemError


def read_file(path: str) -> bytes:
    """The bytes of a regular file of at most ``limits.current().file_bytes``; :class:`ItemError` otherwise.

    Opening with O_NONBLOCK and checking the open descriptor means a FIFO
    never blocks and ``/dev/zero`` is never read, even when swapped in after
    the walk.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ItemError(f"not a regular file ({_file_kind(st.st_mode)})")
        limit = limits.current().file_bytes
        if st.st_size > limit:
            raise ItemError(f"file too large: {st.st_size} bytes (limit {limit})")
        chunks, total = [], 0
        while True:  # normally one read: the whole file, one byte short of what was asked (end of file)
            # no more than that (a small file asked for in 1 MiB got a fresh 1 MiB buffer from the C library
            # every time, its pages faulted in again: 6% of a folder of photos), and 1 MiB reads if it grew
            want = min(st.st_size + 1 if not chunks else 1 << 20, limit + 1 - total)
            chunk = os.read(fd, want)
            if not chunk:
                break
            if not chunks and len(chunk) == st.st_size < want:
                return chunk
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while we read it
                raise ItemError(f"file too large: over {limit} bytes")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
             (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")]
    return next((name for test, name in kinds if test(mode)), "special file")


def in_page_cache(path: str) -> bool:
    """True if the start of ``path`` is in the page cache (Linux's ``RWF_NOWAIT``); False when unsure.

    One file stands for the files around it: a partition's files are read
    together, so they are cached together or not at all.
    """
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.preadv(fd, [bytearray(1)], 0, nowait) >= 0
    except OSError:  # EAGAIN: not cached (or not supported by this filesystem)
        return False
    finally:
        os.close(fd)


def prefetch(paths) -> None:
    """Ask the kernel to start reading files we are about to decode.

    ``posix_fadvise(WILLNEED)`` returns at once; the reads overlap with
    decoding the files before them. A no-op where it is unavailable.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block here either
        except OSError:
            continue
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
