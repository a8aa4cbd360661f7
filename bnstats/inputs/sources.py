"""What the user named -> a sorted sequence of items, and a reader for each.

A *source* turns the paths given on the command line into items: each has a
stable string *key* (a file's path as the user spelled it; later an archive
member ``ARCHIVE:MEMBER`` or an array row ``FILE:ROW``) that names it in skip
lists, orders it and shards it. The rules every source keeps:

* **Ordering.** Items are sorted by key, always, so that every worker count,
  shard split and resume sees the same sequence.
* **Naming.** A key is the item's display name; keys are unique within a run.
* **Identity.** Digests do not use the key as spelled (``photos/a.jpg`` and
  ``/data/photos/a.jpg`` are one file). :meth:`Source.identity` is the
  item's canonical name on this machine, which checkpoints use, and
  :meth:`Source.fingerprint` digests those names with each item's size and
  modification time, so a resume refuses items changed since the checkpoint.
  :meth:`Source.portable_identity` names the item the same way on every
  machine, for the ``files`` digest of reports that ``merge`` combines. For
  files: the identity is the absolute path with the folders' symlinks
  resolved; the portable identity is the path below the folder named on the
  command line, prefixed with that folder's own name (``photos/cat/1.jpg``
  for ``/data/photos/cat/1.jpg`` under ``/data/photos``; the outermost folder
  named when folders nest; a file named directly: its base name; a key under
  no path named, as a list of paths given from Python: the key as spelled).
  The base class uses the key for both.
* **Listing problems.** ``list_items()`` does not raise for a part it cannot
  list (an unreadable folder): it records ``{"path", "error"}`` entries in
  ``listing_errors``, and extensions of files it passed over in ``ignored``.
  :func:`select` puts them on the :class:`Selection`; a run lists the
  errors in ``skipped`` (or fails with ``--strict``). With ``--shard`` only
  shard 0 reports them, so that merged shards equal the whole run.
* **Partitioning.** The engine cuts the sorted keys into partitions (tasks)
  with :meth:`Source.partitions`; a partition belongs to one source, which
  reads it with :meth:`Source.read` — in a worker process or on a Dask
  worker, so a source is small and picklable and holds no open files.
* **Reading.** ``read(keys)`` yields ``(key, load)`` in order, ``load()``
  returning the item's encoded bytes or a decoded
  :class:`~bnstats.decoding.decode.ArrayImage`; ``load`` raises for an item that
  cannot be read, and the caller lists it as skipped (:class:`ItemError`
  for a refusal described by its message alone, e.g. "not a regular file
  (FIFO)"). Files are read only if they are regular files of at most
  :data:`MAX_FILE_BYTES`.

A new input kind is one :class:`Source` subclass with a ``claims(path)``
class method, registered in ``bnstats.registry`` (group ``sources``); :func:`select` picks
the kind for each path (folders and loose image files: :class:`FileSource`)
and mixes kinds in one sorted sequence.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ..decoding import tiff

IMG_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".pbm", ".pnm",
    ".jfif", ".jpe", ".jif",
)

MAX_FILE_BYTES = 1 << 30
"""Files larger than this (1 GiB) are skipped unread: no image dataset holds such files, a mistake can."""


class NoImagesError(Exception):
    """The given paths hold no images."""


class SourceError(Exception):
    """An input as a whole cannot be read (an array of an unsupported type, a broken archive index):
    a one-line error naming it, not a skipped item."""


class ItemError(Exception):
    """A source refuses an item (not a regular file, too large); skip lists show the message alone."""


class ForkSafeLock:
    """A lock for caches that tasks on threads (Dask) share, made anew in a forked child: a worker
    forked while another thread held it must not wait on it forever."""

    def __init__(self):
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


def files_digest(names: Iterable[str]) -> dict:
    """``{"count", "digest"}`` identifying a list of names, additive across shards.

    The digest is the sum of the names' SHA-256 values modulo 2**256, so the
    parts of a split add up to the whole run's digest, and ``merge`` can
    refuse the same part given twice.
    """
    count, total = 0, 0
    for name in names:
        count += 1
        total += int.from_bytes(hashlib.sha256(os.fsencode(name)).digest(), "big")
    return {"count": count, "digest": f"{total % 2**256:064x}"}


def combine_digests(digests: Sequence[dict], field: str = "digest") -> dict:
    """The ``{"count", field}`` of the union of disjoint lists, from theirs (the sums add up)."""
    total = sum(int(d[field], 16) for d in digests) % 2**256
    return {"count": sum(d["count"] for d in digests), field: f"{total:064x}"}


@dataclass(frozen=True)
class InputOptions:
    """How inputs are read, for every kind that cares: ``ext`` (extensions that count, in folders and
    archives; none: the image extensions), ``key`` (one array of an ``.npz``), ``channel_axis`` (arrays),
    ``storage_options`` (URLs), ``column`` and ``group_column`` (Parquet)."""

    ext: tuple[str, ...] = ()
    key: str | None = None
    channel_axis: int | None = None
    #: ``(KEY, value)`` pairs for fsspec filesystems (``--storage-option``): URLs only
    storage_options: tuple[tuple[str, object], ...] = ()
    #: the image column of Parquet files (``--column``; None: detected)
    column: str | None = None
    #: the label column of Parquet files for ``--group-by COLUMN``
    group_column: str | None = None

    def extensions(self) -> tuple[str, ...]:
        """The suffixes a file's name must end with to count (lower case, with the dot); archive members
        match ``--ext`` by their whole WebDataset extension instead (:mod:`bnstats.inputs.archives`)."""
        return tuple("." + e.lower().lstrip(".") for e in self.ext) if self.ext else IMG_EXTENSIONS


class Source:
    """A kind of input: items with sorted keys, read in partitions (see the module docstring)."""

    @classmethod
    def claims(cls, path: str) -> bool:
        """True if ``path`` (as given by the user) is this kind of input."""
        return False

    def __init__(self, paths: Sequence[str], options: InputOptions | None = None):
        self.paths = [os.fspath(p) for p in paths]
        self.options = options or InputOptions()

    #: files of other kinds (archives, arrays) that a walk of folders came upon
    found: Sequence[str] = ()

    #: ``{"path", "error"}`` of what the last ``list_items()`` could not list (e.g. an unreadable folder)
    listing_errors: Sequence[dict] = ()
    #: extension -> how many files the last ``list_items()`` passed over as not images
    ignored: Mapping[str, int] = MappingProxyType({})
    #: what the last ``list_items()`` found that the user should know (one line each, shown as warnings)
    listing_notes: Sequence[str] = ()

    def list_items(self) -> list[str]:
        """The keys of every item, without duplicates (possibly none); :func:`bnstats.inputs.select.open_and_list`
        sorts them, whatever order the paths were named in.

        Records what it could not list in ``listing_errors`` rather than raising.
        """
        raise NotImplementedError

    def read(self, keys: Sequence[str]) -> Iterator[tuple[str, Callable[[], object]]]:
        """``(key, load)`` for each key, in order; ``load()`` gives bytes or an ArrayImage."""
        raise NotImplementedError

    def class_of(self, key: str) -> str:
        """The class of an item for ``--group-by class`` (``""`` when it has none)."""
        return ""

    def tells_classes(self) -> bool:
        """Whether :meth:`class_of` knows classes (a kind that overrides it); ``--group-by class`` is refused
        for inputs that cannot tell them, rather than counted as one class ``""``."""
        return type(self).class_of is not Source.class_of

    def identity(self, key: str) -> str:
        """The item's canonical name on this machine (checkpoints): the key unless overridden."""
        return key

    def portable_identity(self, key: str) -> str:
        """The item's name on any machine (the ``files`` digest of reports): the key unless overridden."""
        return key

    def fingerprint(self, keys: Sequence[str]) -> dict:
        """What a checkpoint records of ``keys``: ``{"count", "digest", "contents"}``.

        ``digest`` covers the identities (which items), ``contents`` also
        each item's version (for files: size and modification time), so a
        resume can tell a different list from changed items. The base class
        knows no versions: ``contents`` equals ``digest``.
        """
        names = files_digest(self.identity(k) for k in keys)
        return {**names, "contents": names["digest"]}

    def partitions(self, keys: Sequence[str], size: int) -> list["Partition"]:
        """Cut ``keys`` (a run of this source's sorted keys) into tasks of ``size`` items."""
        return [Partition(self, list(keys[i : i + size])) for i in range(0, len(keys), size)]


@dataclass(frozen=True)
class Partition:
    """One unit of work: consecutive keys that one source reads."""

    source: Source
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


# -- loose image files and folders -----------------------------------------------------


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str) -> bool:
    """True for ``scheme://...``: a URL read through fsspec (``bnstats.inputs.remote``), not a local path."""
    return bool(_URL.match(str(path)))


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
            yield key, functools.partial(read_file, path) if page is None else functools.partial(read_page, path, page)

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


_URL_VERSION: list = []  # how an object's version is read (ETag and size): bnstats.inputs.remote registers it


def register_url_version(read: Callable[[str, "InputOptions"], str]) -> None:
    """Set how a URL's version is read for resume checks (the module that knows the stores calls this)."""
    _URL_VERSION[:] = [read]


def file_version(path: str) -> str:
    """What tells a file's versions apart for a resume: its size and modification time."""
    try:
        st = os.stat(path)
        return f"{st.st_size} {st.st_mtime_ns}"
    except OSError as exc:
        return type(exc).__name__  # unreadable now: the read will say why


class ContainerSource(Source):
    """Items inside files (archive members, array rows): keys ``CONTAINER:PART``.

    The identity is the container's real path and the part; the portable
    identity the container's base name and the part; a resume checks each
    container's size and modification time.
    """

    def split(self, key: str) -> tuple[str, str]:
        """``(container, part)`` of a key (container paths may themselves contain ``:``)."""
        last = self.__dict__.get("_last_container")  # keys come in runs of one container: try it first
        if last is not None and key.startswith(last + ":"):
            return last, key[len(last) + 1 :]
        for container in self.paths:
            if key.startswith(container + ":"):
                self._last_container = container
                return container, key[len(container) + 1 :]
        raise KeyError(key)

    def identity(self, key: str) -> str:
        container, part = self.split(key)
        return f"{self._real(container)}:{part}"

    def _real(self, container: str) -> str:
        """The container's canonical name on this machine (its real path; a URL as it is), found once."""
        real = self.__dict__.setdefault("_reals", {})
        if container not in real:
            real[container] = container if is_url(container) else os.path.realpath(container)
        return real[container]

    def portable_identity(self, key: str) -> str:
        container, part = self.split(key)
        return f"{os.path.basename(container)}:{part}"

    def fingerprint(self, keys):
        names, entries = [], []
        for container, run in self.runs(keys):  # the real path and version once per container
            real, version, start = self._real(container), self.version(container), len(container) + 1
            for key in run:
                names.append(f"{real}:{key[start:]}")
                entries.append(f"{names[-1]}\0{version}")
        return {**files_digest(names), "contents": files_digest(entries)["digest"]}

    def version(self, container: str) -> str:
        """What tells a container's versions apart: size and mtime of a file, ETag and size of an object."""
        if is_url(container):
            return _URL_VERSION[0](container, self.options) if _URL_VERSION else ""
        return file_version(container)

    def runs(self, keys: Sequence[str]) -> Iterator[tuple[str, list[str]]]:
        """``(container, [keys])`` for consecutive keys of one container."""
        for container, run in itertools.groupby(keys, key=lambda key: self.split(key)[0]):
            yield container, list(run)


def read_file(path: str) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_FILE_BYTES`; :class:`ItemError` otherwise.

    Opening with O_NONBLOCK and checking the open descriptor means a FIFO
    never blocks and ``/dev/zero`` is never read, even when swapped in after
    the walk.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ItemError(f"not a regular file ({_file_kind(st.st_mode)})")
        limit = MAX_FILE_BYTES
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


def iter_image_paths(paths: Iterable[str]) -> list[str]:
    """All image files under ``paths``, sorted by path, without duplicates.

    A file named directly is taken whatever its extension; a folder is
    walked recursively, skipping hidden entries and files without an image
    extension. Raises :class:`NoImagesError` if nothing is found.
    """
    paths = list(paths)
    found = walk(paths).keys
    if not found:
        raise NoImagesError("no images found under " + ", ".join(map(str, paths)))
    return found


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



# -- several kinds at once -----------------------------------------------------------------


class MixedSource(Source):
    """Several sources as one sorted sequence; each partition stays within one source."""

    def __init__(self, parts: Sequence[Source]):
        super().__init__([p for part in parts for p in part.paths])
        self.parts = list(parts)
        self._owner: dict[str, Source] = {}

    @classmethod
    def of_listed(cls, listed: Sequence[tuple[Source, list[str]]]) -> tuple["MixedSource", list[str]]:
        """Sources already listed, with their keys, as one source and its sorted keys."""
        mixed = cls([part for part, _ in listed])
        errors, ignored, notes = [], Counter(), []
        for part, keys in listed:
            for key in keys:
                mixed._owner.setdefault(key, part)
            errors += part.listing_errors
            ignored.update(part.ignored)
            notes += part.listing_notes
        mixed.listing_errors = sorted(errors, key=lambda e: e["path"])
        mixed.ignored, mixed.listing_notes = dict(ignored), sorted(notes)
        return mixed, sorted(mixed._owner)

    def list_items(self) -> list[str]:
        mixed, keys = self.of_listed([(part, part.list_items()) for part in self.parts])
        self._owner, self.listing_errors, self.ignored = mixed._owner, mixed.listing_errors, mixed.ignored
        self.listing_notes = mixed.listing_notes
        return keys

    def _runs(self, keys: Sequence[str]) -> Iterator[tuple[Source, list[str]]]:
        """Consecutive keys grouped by the source that owns them."""
        if not self._owner:
            self.list_items()
        for owner, run in itertools.groupby(keys, key=self._owner.__getitem__):
            yield owner, list(run)

    def read(self, keys):
        for owner, run in self._runs(keys):
            yield from owner.read(run)

    def class_of(self, key: str) -> str:
        return self._owner[key].class_of(key)

    def tells_classes(self) -> bool:
        return all(part.tells_classes() for part in self.parts)

    def identity(self, key: str) -> str:
        return self._owner[key].identity(key)

    def portable_identity(self, key: str) -> str:
        return self._owner[key].portable_identity(key)

    def fingerprint(self, keys):
        parts = [owner.fingerprint(run) for owner, run in self._runs(keys)]
        return {**combine_digests(parts), **combine_digests(parts, "contents")}

    def partitions(self, keys, size):
        return [p for owner, run in self._runs(keys) for p in owner.partitions(run, size)]


def shard(paths: Sequence[str], index: int, count: int) -> list[str]:
    """Shard ``index`` (0-based) of ``count`` contiguous, near-equal parts.

    Contiguous slices of the sorted list keep each machine's reads local to
    its folders; shard sizes differ by at most one.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1}, got {index}")
    n = len(paths)
    return list(paths[index * n // count : (index + 1) * n // count])


@dataclass(frozen=True)
class Selection:
    """The items of one run: a source and its sorted keys (one shard of them, with ``shard``).

    ``errors`` are the listing problems this run reports in ``skipped``
    (``{"path", "error"}``; with a shard, only shard 0 has them); ``notes``
    are one-time remarks for the user (e.g. how many files were ignored).
    ``listing`` identifies the whole sorted list (``{"count", "digest"}`` of
    the portable identities) and ``span`` is the ``(start, stop)`` range of
    it that ``keys`` are: what a result covers, so that ``merge`` can refuse
    overlapping parts and say which are missing.
    """

    source: Source
    keys: list[str]
    shard: tuple[int, int] | None = None
    errors: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    listing: dict | None = None
    span: tuple[int, int] | None = None

    def coverage(self) -> dict:
        """The ``files`` record of a result of exactly these keys (see :meth:`covers`)."""
        span = self.span if self.span is not None else (0, len(self.keys))
        if self.listing is not None and span == (0, self.listing["count"]):
            files = dict(self.listing)  # the whole list: its digest is already known
        else:
            files = files_digest(self.source.portable_identity(key) for key in self.keys)
        listing = self.listing if self.listing is not None else files
        ranges = [list(span)] if span[1] > span[0] else []
        return {**files, "covers": [{"list": {"count": listing["count"], "digest": listing["digest"]},
                                     "ranges": ranges}]}

    def __len__(self) -> int:
        return len(self.keys)


def as_selection(items: "Selection | Sequence[str]") -> Selection:
    """A selection as it is, or a list of image paths (from Python) as one."""
    return items if isinstance(items, Selection) else Selection(FileSource([]), list(items))
