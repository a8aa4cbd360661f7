"""What the user named -> a sorted sequence of items, and a reader for each.

A *source* turns the paths given on the command line into items: each has a
stable string *key* (a file's path as the user spelled it; later an archive
member ``ARCHIVE:MEMBER`` or an array row ``FILE:ROW``) that names it in skip
lists, orders it, shards it and identifies it in digests and checkpoints.
The rules every source keeps:

* **Ordering.** Items are sorted by key, always, so that every worker count,
  shard split and resume sees the same sequence.
* **Naming.** A key is the item's display name and its identity; keys are
  unique within a run.
* **Partitioning.** The engine cuts the sorted keys into partitions (tasks)
  with :meth:`Source.partitions`; a partition belongs to one source, which
  reads it with :meth:`Source.read` — in a worker process or on a Dask
  worker, so a source is small and picklable and holds no open files.
* **Reading.** ``read(keys)`` yields ``(key, load)`` in order, ``load()``
  returning the item's encoded bytes or a decoded
  :class:`~bnstats.decode.ArrayImage`; ``load`` raises for an item that
  cannot be read, and the caller lists it as skipped.

A new input kind is one :class:`Source` subclass with a ``claims(path)``
class method, registered with :func:`register_source`; :func:`select` picks
the kind for each path (folders and loose image files: :class:`FileSource`)
and mixes kinds in one sorted sequence.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

IMG_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".pbm", ".pnm",
)


class NoImagesError(Exception):
    """The given paths hold no images."""


class SourceError(Exception):
    """An input as a whole cannot be read (an array of an unsupported type, a broken archive index):
    a one-line error naming it, not a skipped item."""


class Source:
    """A kind of input: items with sorted keys, read in partitions (see the module docstring)."""

    @classmethod
    def claims(cls, path: str) -> bool:
        """True if ``path`` (as given by the user) is this kind of input."""
        return False

    def __init__(self, paths: Sequence[str]):
        self.paths = [os.fspath(p) for p in paths]

    def list_items(self) -> list[str]:
        """The keys of every item, sorted, without duplicates (possibly none)."""
        raise NotImplementedError

    def read(self, keys: Sequence[str]) -> Iterator[tuple[str, Callable[[], object]]]:
        """``(key, load)`` for each key, in order; ``load()`` gives bytes or an ArrayImage."""
        raise NotImplementedError

    def class_of(self, key: str) -> str:
        """The class of an item for ``--group-by class`` (``""`` when it has none)."""
        return ""

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


SOURCE_KINDS: list[type[Source]] = []


def register_source(cls: type[Source]) -> type[Source]:
    """Make a :class:`Source` subclass claim the paths it recognises (a class decorator).

    Later registrations are asked first; :class:`FileSource` takes what no
    other kind claims.
    """
    SOURCE_KINDS.insert(0, cls)
    return cls


# -- loose image files and folders -----------------------------------------------------


def has_image_extension(path: str) -> bool:
    """True if the file name ends in a known image extension (any case)."""
    return path.lower().endswith(IMG_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class FileSource(Source):
    """Image files named directly, and folders walked recursively.

    Keys are paths as the user spelled them (relative paths stay relative);
    reading resolves them against the working directory of the process that
    made the source, so Dask workers elsewhere read the same files. Classes
    are ImageFolder's: an image's top-level folder under a folder named.
    """

    @classmethod
    def claims(cls, path: str) -> bool:
        return True

    def __init__(self, paths: Sequence[str]):
        super().__init__(paths)
        self.base = os.getcwd()

    def list_items(self) -> list[str]:
        return _walk_images(self.paths)

    def read(self, keys):
        absolute = [os.path.join(self.base, key) for key in keys]
        prefetch(absolute)
        for key, path in zip(keys, absolute):
            yield key, functools.partial(_read_file, path)

    def class_of(self, key: str) -> str:
        return class_of(key, self.paths)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _walk_images(paths: Iterable[str]) -> list[str]:
    """All image files under ``paths``, sorted by path, without duplicates."""
    found = {}  # real path -> the path as first spelled: one entry per file
    walked = set()  # real paths of folders walked: symlink loops end here
    for root in paths:
        root = os.fspath(root)
        if os.path.isdir(root):
            for folder, dirs, files in os.walk(root, followlinks=True):
                real = os.path.realpath(folder)  # once per folder: realpath costs a stat per path part
                if real in walked:
                    dirs[:] = []
                    continue
                walked.add(real)
                dirs[:] = [d for d in dirs if not _is_hidden(d)]
                for name in files:
                    if not _is_hidden(name) and has_image_extension(name):
                        found.setdefault(os.path.join(real, name), os.path.join(folder, name))
        elif has_image_extension(root):
            found.setdefault(os.path.realpath(root), root)
    return sorted(found.values())


def iter_image_paths(paths: Iterable[str]) -> list[str]:
    """All image files under ``paths``, sorted by path, without duplicates.

    A file named directly is taken if it has an image extension; a folder is
    walked recursively, skipping hidden entries. Raises
    :class:`NoImagesError` if nothing is found.
    """
    paths = list(paths)
    found = _walk_images(paths)
    if not found:
        raise NoImagesError("no images found under " + ", ".join(map(str, paths)))
    return found


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
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def class_of(path: str, roots: Sequence[str]) -> str:
    """The ImageFolder class of ``path``: its top-level folder under a root.

    Files directly in a root (or named on the command line) get ``""``.
    """
    for root in roots:
        root = os.fspath(root)
        if os.path.isdir(root):
            rel = os.path.relpath(path, root)
            if not rel.startswith(os.pardir):
                parts = rel.split(os.sep)
                return parts[0] if len(parts) > 1 else ""
    return ""


register_source(FileSource)


# -- several kinds at once -----------------------------------------------------------------


class MixedSource(Source):
    """Several sources as one sorted sequence; each partition stays within one source."""

    def __init__(self, parts: Sequence[Source]):
        super().__init__([p for part in parts for p in part.paths])
        self.parts = list(parts)
        self._owner: dict[str, Source] = {}

    def list_items(self) -> list[str]:
        self._owner = {}
        for part in self.parts:
            for key in part.list_items():
                self._owner.setdefault(key, part)
        return sorted(self._owner)

    def _runs(self, keys: Sequence[str]) -> Iterator[tuple[Source, list[str]]]:
        """Consecutive keys grouped by the source that owns them."""
        if not self._owner:
            self.list_items()
        run: list[str] = []
        owner = None
        for key in keys:
            if self._owner[key] is not owner and run:
                yield owner, run
                run = []
            owner = self._owner[key]
            run.append(key)
        if run:
            yield owner, run

    def read(self, keys):
        for owner, run in self._runs(keys):
            yield from owner.read(run)

    def class_of(self, key: str) -> str:
        return self._owner[key].class_of(key)

    def partitions(self, keys, size):
        return [p for owner, run in self._runs(keys) for p in owner.partitions(run, size)]


def open_source(paths: Sequence[str]) -> Source:
    """The source for what the user named: each path goes to the first kind that claims it."""
    groups: dict[type[Source], list[str]] = {}
    for path in paths:
        path = os.fspath(path)
        kind = next(k for k in SOURCE_KINDS if k.claims(path))
        groups.setdefault(kind, []).append(path)
    sources = [kind(group) for kind, group in groups.items()]
    return sources[0] if len(sources) == 1 else MixedSource(sources)


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
    """The items of one run: a source and its sorted keys (one shard of them, with ``shard``)."""

    source: Source
    keys: list[str]
    shard: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.keys)


def select(paths: Sequence[str], shard_of: tuple[int, int] | None = None) -> Selection:
    """Open ``paths`` and list their items (one shard ``(K, N)`` of them if given).

    Raises :class:`NoImagesError` if the paths hold no items at all.
    """
    source = open_source(paths)
    keys = source.list_items()
    if not keys:
        raise NoImagesError("no images found under " + ", ".join(map(os.fspath, paths)))
    if shard_of is not None:
        keys = shard(keys, *shard_of)
    return Selection(source, keys, shard_of)
