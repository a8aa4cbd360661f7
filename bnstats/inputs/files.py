"""Loose image files and folders: :class:`FileSource` (the ``files`` kind), the folder walk, and reading
one file safely (:func:`read_file`: regular files only, within ``BNSTATS_MAX_FILE_BYTES``), with the
page-cache probe and read-ahead that keep a cold folder's reads overlapped with decoding."""

from __future__ import annotations

import functools
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .. import limits
from ..decoding import tiff
from .base import IMG_EXTENSIONS, InputOptions, ItemError, Source, file_version
from .digests import files_digest


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class FileSource(Source):
    """Image files named directly, and folders walked recursively.

    Keys are paths as the user spelled them (relative paths stay relative), and
    ``PATH:PAGE`` for each page of a multi-page TIFF (:func:`bnstats.decoding.tiff.page_keys`);
    reading resolves them against the working directory of the process that
    made the source, so Dask workers elsewhere read the same files. Classes
    are ImageFolder's: an image's top-level folder under a folder named, or
    that folder itself for images directly in it (see :func:`class_of`).
    Identities are described in the module docstring.
    """

    options_read = frozenset({"ext"})

    @classmethod
    def claims(cls, path: str) -> bool:
        return True

    def __init__(self, paths: Sequence[str], options: InputOptions | None = None):
        super().__init__(paths, options)
        self.base = os.getcwd()

    #: kinds that may claim files found in folders (set by the caller that knows them)
    other_kinds: Callable[[str], bool] | None = None

    def list_items(self) -> list[str]:
        listing = walk(self.paths, self.options.extensions(), self.other_kinds)
        self.listing_errors, self.ignored, self.found = listing.errors, listing.ignored, listing.others
        # a multi-page TIFF is one item per page, FILE:PAGE (bnstats.decoding.tiff); any other file is one item
        return [k for key in listing.keys for k in tiff.page_keys(key, os.path.join(self.base, key))]

    def read(self, keys):
        files = [tiff.split_page_key(key) for key in keys]
        absolute = [os.path.join(self.base, file) for file, _ in files]
        if absolute and not in_page_cache(absolute[0]):  # files in memory need no read-ahead
            prefetch(list(dict.fromkeys(absolute)))
        last = [None, None]  # the pages of one file come together: its bytes are read once for them

        def read_page(path, page):
            if last[0] != path:
                last[:] = path, read_file(path)
            return tiff.TiffPage(last[1], page)

        for key, path, (_, page) in zip(keys, absolute, files):
            load = functools.partial(read_file, path) if page is None else functools.partial(read_page, path, page)
            yield (key,), load

    def class_of(self, key: str) -> str:
        key = tiff.split_page_key(key)[0]
        root = self._root_of(key)
        if root is None:
            return ""
        name, parts = root
        return parts[0] if len(parts) > 1 else name

    def identity(self, key: str) -> str:
        return self._identity(key, {})

    def _identity(self, key: str, real_folders: dict) -> str:
        file, page = tiff.split_page_key(key)
        if page is not None:  # a page: the file's identity and the page, as the key names it
            return self._identity(file, real_folders) + key[len(file) :]
        # realpath costs a stat per path part: once per folder, not per file
        folder, name = os.path.split(os.path.join(self.base, key))
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        return os.path.join(real_folders[folder], name)

    def portable_identity(self, key: str) -> str:
        file, page = tiff.split_page_key(key)
        if page is not None:
            return self.portable_identity(file) + key[len(file) :]
        folder, sep, name = key.rpartition(os.sep)
        folder = folder or sep  # "/a.png": the root folder
        if name and name not in (".", ".."):  # the files of one folder share its prefix: found once
            prefix = self._prefix_of(folder)
            if prefix is not None:
                return "/".join([*prefix, name])
        root = self._root_of(key)
        if root is not None:
            name, parts = root
            return "/".join([name, *parts])
        if os.path.normpath(os.path.join(self.base, key)) in self._named_files:
            return os.path.basename(os.path.normpath(key))  # a file named on the command line
        return key  # a key given from Python, under no path named: as spelled

    def fingerprint(self, keys):
        real_folders: dict = {}
        names, versions = [], []
        for key in keys:
            name = self._identity(key, real_folders)
            names.append(name)
            versions.append(f"{name}\0{file_version(os.path.join(self.base, tiff.split_page_key(key)[0]))}")
        return {**files_digest(names), "contents": files_digest(versions)["digest"]}

    @functools.cached_property
    def _named(self) -> tuple[list[tuple[str, str]], set[str]]:
        """``(absolute path, name)`` of each folder named, outermost first; and the files named."""
        named = {os.path.normpath(os.path.join(self.base, p)) for p in self.paths}
        folders = {p for p in named if os.path.isdir(p)}
        return [(r, os.path.basename(r)) for r in sorted(folders, key=len)], named - folders

    @property
    def _roots(self) -> list[tuple[str, str]]:
        return self._named[0]

    @property
    def _named_files(self) -> set[str]:
        return self._named[1]

    def __getstate__(self):  # what a worker needs: not the caches of the listing
        state = dict(self.__dict__)
        state.pop("_named", None)
        state.pop("_prefixes", None)
        state.pop("found", None)
        return state

    def _folder_prefix(self, folder: str) -> tuple[str, ...] | None:
        """The parts of the portable name of a folder under a path named (the outermost such path's name,
        then the folders below it), or None."""
        path = os.path.normpath(os.path.join(self.base, folder))
        for root, name in self._roots:
            root = root.rstrip(os.sep)
            if path == root or (not root and path == os.sep):
                return (name,)
            if path.startswith(root + os.sep):
                return (name, *path[len(root) + 1 :].split(os.sep))
        return None

    def _prefix_of(self, folder: str) -> tuple[str, ...] | None:
        """:meth:`_folder_prefix`, found once per folder."""
        prefixes = self.__dict__.setdefault("_prefixes", {})
        if folder not in prefixes:
            prefixes[folder] = self._folder_prefix(folder)
        return prefixes[folder]

    def _root_of(self, key: str) -> tuple[str, list[str]] | None:
        """The name of the outermost path named that holds ``key``, and ``key``'s parts below it."""
        folder, name = os.path.split(os.path.normpath(os.path.join(self.base, key)))
        prefix = self._prefix_of(folder)
        return None if prefix is None else (prefix[0], [*prefix[1:], name])


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


@dataclass
class Listing:
    """What a walk found: sorted ``keys``, ``errors`` (``{"path", "error"}``), ``ignored`` extensions,
    and ``others``: files in the folders that another kind of input claims (archives, arrays)."""

    keys: list[str]
    errors: list[dict]
    ignored: dict[str, int]
    others: list[str] = field(default_factory=list)


def walk(paths: Iterable[str], extensions: tuple[str, ...] = IMG_EXTENSIONS,
         other_kinds: Callable[[str], bool] | None = None) -> Listing:
    """List the image files under ``paths``, sorted by path, without duplicates.

    A file named directly is taken whatever its extension; folders are
    walked recursively, taking files that end in one of ``extensions``,
    setting aside files that ``other_kinds`` claims (archives, arrays: read by
    their own sources) and counting the rest by extension in ``ignored``
    (hidden files and folders are passed over silently). A folder that
    cannot be read is recorded in ``errors``, never left out silently.
    """
    others = []
    found = {}  # real path -> the path as first spelled: one entry per file
    walked = set()  # real paths of folders walked: symlink loops end here
    errors = {}  # real path -> error entry: a folder reached twice is reported once
    ignored: Counter = Counter()

    def failed(exc: OSError) -> None:
        path = exc.filename if exc.filename is not None else root
        errors.setdefault(os.path.realpath(path), {"path": os.fspath(path), "error": describe_os_error(exc)})

    for root in paths:
        root = os.fspath(root)
        if os.path.isdir(root):
            for folder, dirs, files in os.walk(root, onerror=failed, followlinks=True):
                real = os.path.realpath(folder)  # once per folder: realpath costs a stat per path part
                if real in walked:
                    dirs[:] = []
                    continue
                walked.add(real)
                dirs[:] = [d for d in dirs if not _is_hidden(d)]
                # os.path.join per file costs more than the walk itself: the folders' prefixes, once
                real_prefix = real if real.endswith(os.sep) else real + os.sep
                prefix = folder if folder.endswith(os.sep) else folder + os.sep
                for name in files:
                    if _is_hidden(name):
                        continue
                    if name.lower().endswith(extensions):
                        found.setdefault(real_prefix + name, prefix + name)
                    elif other_kinds is not None and other_kinds(name):
                        others.append(os.path.join(folder, name))
                    else:
                        ignored[os.path.splitext(name)[1].lower()] += 1
        else:  # named directly: taken whatever its name (no realpath: a list of a million files stays fast)
            found.setdefault(os.path.abspath(root), root)
    return Listing(sorted(found.values()), sorted(errors.values(), key=lambda e: e["path"]), dict(ignored),
                   sorted(others))


def describe_os_error(exc: OSError) -> str:
    """``PermissionError: Permission denied``: the type and the system's message, without the path."""
    return f"{type(exc).__name__}: {exc.strerror}" if exc.strerror else f"{type(exc).__name__}: {exc}"


def ignored_note(ignored: Mapping[str, int]) -> str:
    """One line saying how many files a walk passed over, by extension (most first)."""
    total = sum(ignored.values())
    counts = sorted(ignored.items(), key=lambda item: (-item[1], not item[0], item[0]))  # "no extension" last
    listed = ", ".join(f"{ext or 'no extension'} {n}" for ext, n in counts)
    what = "file that is not an image" if total == 1 else "files that are not images"
    return f"ignored {total} {what} by extension ({listed})"


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
