"""The folder walk: the image files under the folders named, sorted by path without holding them (each
folder's entries visited in key order, keys packed as they come), and what it passed over."""

from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .keys import KeyChain, PackedKeys, is_lazy, merge_sorted, packed_sorted
from .options import IMG_EXTENSIONS


class SortedNames:
    """A set of many names held packed (:class:`~bnstats.inputs.keys.PackedKeys`, sorted): ``name in names``."""

    __slots__ = ("packed",)

    def __init__(self, packed: PackedKeys):
        self.packed = packed

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and self.packed.find(name) >= 0

    def __len__(self) -> int:
        return len(self.packed)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def file_identity(path: str, real_folder=os.path.realpath) -> str:
    """What tells two spellings of one file apart: its folder's real path (``real_folder``, symlinks resolved)
    and its name, as the walk sees the files it finds (a symlinked folder is the folder; a symlinked file is a
    file of its own)."""
    folder, _, name = os.path.abspath(path).rpartition(os.sep)
    if not folder or folder.endswith(":"):  # in the root folder (/a.png, C:\\a.png)
        folder, name = os.path.split(os.path.abspath(path))
    real = real_folder(folder)
    return os.path.join(real, name) if real.endswith(os.sep) else real + os.sep + name


class NamedFiles:
    """The files named directly among ``paths`` (the folders' positions go to ``folders``), one per file,
    under the spelling named first, held as arrays: a 64-bit hash of each file's path and its position,
    sorted by hash (a --files-from list of a million files: ~25 bytes a file, where a dict entry of the path
    took ~300). Paths whose hashes are equal are told apart by the paths themselves: two files are never
    taken for one.

    A file's path is its folder's real path and its name, as the walk sees its files: ``link/a.png``
    through a symlinked folder is the ``real/a.png`` of a folder walked, or named again (a symlinked file
    is a file of its own, as in a folder walked). One ``realpath`` per folder, not per file."""

    def __init__(self, paths: Sequence[str], folders: list[int]):
        hashes, positions = array("q"), array("q")
        self._real_folders: dict[str, str] = {}
        for index, path in enumerate(paths):
            if os.path.isdir(path):
                folders.append(index)
            else:
                hashes.append(hash(self._real(path)))
                positions.append(index)
        self.paths = paths
        order = np.lexsort((np.frombuffer(positions, np.int64), np.frombuffer(hashes, np.int64)))
        self.hashes = np.frombuffer(hashes, np.int64)[order]
        self.positions = np.frombuffer(positions, np.int64)[order]
        self.kept = np.zeros(len(paths), bool)  # by position: a file counted as named
        self.kept[self.positions] = True
        for start, stop in _runs_of_equal(self.hashes):  # the same file named twice (or a hash shared)
            seen = set()
            for position in self.positions[start:stop]:  # in the order named
                path = self._real(paths[position])
                self.kept[position] = path not in seen
                seen.add(path)

    def _real(self, path: str) -> str:
        """:func:`file_identity`, its folders' real paths found once each."""
        return file_identity(path, self._real_folder)

    def _real_folder(self, folder: str) -> str:
        """``os.path.realpath(folder)``, built on its parent's when it is not a link itself: a list of a file
        a folder costs a ``lstat`` a folder, not one per part of its path."""
        cache = self._real_folders
        real = cache.get(folder)
        if real is not None:
            return real
        if len(cache) >= 4096:  # a list is mostly grouped by folder: a few in hand suffice
            cache.clear()
        names = []
        at = folder
        while True:
            real = cache.get(at)
            if real is not None:
                break
            parent, name = os.path.split(at)
            if not name or parent == at or os.path.islink(at):  # the root, or a link: resolved whole
                real = cache[at] = os.path.realpath(at)
                break
            names.append(name)
            at = parent
        for name in reversed(names):
            at = os.path.join(at, name)
            real = cache[at] = os.path.join(real, name)
        return real

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, path: str) -> int | None:
        """The position of the file named whose path (its folder's real path and its name) is ``path``, if
        one was (and is still counted)."""
        value = hash(path)
        at = int(np.searchsorted(self.hashes, value))
        while at < len(self.hashes) and self.hashes[at] == value:
            position = int(self.positions[at])
            if self.kept[position] and self._real(self.paths[position]) == path:
                return position
            at += 1
        return None

    def drop(self, position: int) -> None:
        """The file named at ``position`` is counted as a walked folder's (named after it), not as named."""
        self.kept[position] = False

    def items(self, expand: Callable[[str], list[str]]) -> Sequence[str]:
        """The sorted keys of the files counted as named (``expand``: a file's items), packed when many."""
        items = (item for index, path in enumerate(self.paths) if self.kept[index] for item in expand(path))
        if int(self.kept.sum()) <= PackedKeys.BLOCK:
            return sorted(items)
        return packed_sorted(items)  # a --files-from list: sorted by runs, packed as a walk's keys are


def _runs_of_equal(values: np.ndarray) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each run of two or more equal values of a sorted array."""
    same = np.flatnonzero(values[1:] == values[:-1])
    start = None
    for i, at in enumerate(same):
        if start is None:
            start = at
        if i + 1 == len(same) or same[i + 1] != at + 1:
            yield int(start), int(at) + 2
            start = None


@dataclass
class Listing:
    """What a walk found: sorted ``keys`` (packed: :class:`~bnstats.inputs.keys.PackedKeys`, or a chain of
    them), ``errors`` (``{"path", "error"}``), ``ignored`` extensions, and ``others``: files in the folders that
    another kind of input claims (archives, arrays); ``folders``: the paths named that are folders (the rest
    are files named directly)."""

    keys: Sequence[str]
    errors: list[dict]
    ignored: dict[str, int]
    others: list[str] = field(default_factory=list)
    folders: frozenset[str] = frozenset()


def walk(paths: Iterable[str], extensions: tuple[str, ...] = IMG_EXTENSIONS,
         other_kinds: Callable[[str], bool] | None = None,
         expand: Callable[[str], list[str]] | None = None,
         on_start: Callable[[PackedKeys, list], None] | None = None) -> Listing:
    """List the image files under ``paths``, sorted by path, without duplicates.

    A file named directly is taken whatever its extension; folders are
    walked recursively, taking files that end in one of ``extensions``,
    setting aside files that ``other_kinds`` claims (archives, arrays: read by
    their own sources), and folders it claims when asked with their path and a
    trailing separator (a Zarr store: one input, its chunks not walked), and
    counting the rest by extension in ``ignored``
    (hidden files and folders are passed over silently). A folder that
    cannot be read is recorded in ``errors``, never left out silently.
    ``expand(key)`` gives the keys of a file's items (a multi-page TIFF's
    pages); default: the file's key alone.

    Each folder's entries are visited in the order of their keys (a
    folder's name followed by ``/``), so the walk yields keys already sorted
    and they are packed as they come: memory does not grow with the files
    (a few bytes each, compressed), only with the depth of the tree. A file
    reached twice (named directly, and in a folder walked) is counted once,
    under the spelling named first; a folder reached twice (a symlink loop)
    is walked once. ``on_start(keys, others)`` is told of each folder's keys
    as its walk starts (they may be read as their blocks are sealed) and of
    the list the files of other kinds are added to as they are found.
    """
    expand = expand or (lambda key: [key])
    paths = paths if is_lazy(paths) else [os.fspath(p) for p in paths]
    folders: list[int] = []  # the positions of the folders named
    named = NamedFiles(paths, folders)  # the files named directly (no realpath: a list of a million stays fast)
    walked: set[str] = set()  # real paths of folders walked: symlink loops end here
    errors: dict[str, dict] = {}  # real path -> error entry: a folder reached twice is reported once
    ignored: Counter = Counter()
    others: list[str] = []
    walks = []
    for index in folders:
        keys = PackedKeys()
        if on_start is not None:
            on_start(keys, others)
        for real, key in _sorted_walk(paths[index], extensions, other_kinds, expand, walked, errors, ignored,
                                      others):
            earlier = named.find(real) if named else None
            if earlier is not None:
                if earlier < index:
                    continue  # named before this folder: counted under that spelling
                named.drop(earlier)  # named after it: counted as found in it
            keys.append(key)
        walks.append(keys.close())
    loose = named.items(expand)
    parts = [keys for keys in walks if len(keys)] + ([loose] if loose else [])
    if len(parts) == 1:
        found = parts[0]
    else:  # several folders, or folders and files named: one sorted sequence, by runs
        found = KeyChain([run for _, run in merge_sorted(parts)])
    return Listing(found, sorted(errors.values(), key=lambda e: e["path"]), dict(ignored), sorted(others),
                   frozenset(paths[index] for index in folders))


def _sorted_walk(root: str, extensions, other_kinds, expand, walked: set, errors: dict, ignored: Counter,
                 others: list) -> Iterator[tuple[str, str]]:
    """``(real path, key)`` of each item (``expand``: a file's, or each page's) under the folder ``root``, in
    key order (symlinks followed).

    Each folder's entries are sorted by their keys' text (a folder's name
    followed by ``/``, as all its keys begin; a TIFF's pages as ``FILE:PAGE``),
    so the keys of the whole tree come out sorted. An explicit stack, not
    recursion: a tree may be deep.
    """
    def failed(exc: OSError, path: str) -> None:
        path = exc.filename if exc.filename is not None else path
        errors.setdefault(os.path.realpath(path), {"path": os.fspath(path), "error": describe_os_error(exc)})

    def entries(folder: str):
        """The folder's entries to visit, in key order: ``(text, real path or None, folder or None)``."""
        real = os.path.realpath(folder)  # once per folder: realpath costs a stat per path part
        if real in walked:
            return iter(())
        walked.add(real)
        try:
            with os.scandir(folder) as it:
                listed = list(it)
        except OSError as exc:
            failed(exc, folder)
            return iter(())
        # os.path.join per file costs more than the walk itself: the folders' prefixes, once
        real_prefix = real if real.endswith(os.sep) else real + os.sep
        prefix = folder if folder.endswith(os.sep) else folder + os.sep
        visit = []
        for entry in listed:
            name = entry.name
            if _is_hidden(name):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks, as os.walk(followlinks=True)
            except OSError:
                is_dir = False
            if is_dir and other_kinds is not None and other_kinds(prefix + name + os.sep):
                others.append(prefix + name)  # a folder that is one input (a Zarr store): not walked into
            elif is_dir:
                visit.append((prefix + name + os.sep, None, prefix + name))
            else:
                lower = name.lower()
                image = lower.endswith(extensions)
                # another kind's file (asked by path without an extension: the kinds may look inside it), never
                # an image because --ext names its extension (.npy, say); image files are not asked about
                claimed = other_kinds is not None and not (image and lower.endswith(IMG_EXTENSIONS)) and \
                    other_kinds(name if "." in name else prefix + name)
                if claimed:
                    others.append(prefix + name)
                elif image:
                    visit += [(key, real_prefix + name, None) for key in expand(prefix + name)]
                else:
                    ignored[os.path.splitext(name)[1].lower()] += 1
        visit.sort(key=lambda item: item[0])
        return iter(visit)

    stack = [entries(root)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif item[2] is not None:
            stack.append(entries(item[2]))
        else:
            yield item[1], item[0]


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
