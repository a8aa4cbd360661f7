"""The folder walk: the image files under the folders named, sorted by path without holding them (each
folder's entries visited in key order, keys packed as they come), and what it passed over."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .keys import KeyChain, PackedKeys, merge_sorted
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


@dataclass
class Listing:
    """What a walk found: sorted ``keys`` (packed: :class:`~bnstats.inputs.keys.PackedKeys`, or a chain of
    them), ``errors`` (``{"path", "error"}``), ``ignored`` extensions, and ``others``: files in the folders that
    another kind of input claims (archives, arrays)."""

    keys: Sequence[str]
    errors: list[dict]
    ignored: dict[str, int]
    others: list[str] = field(default_factory=list)


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
    paths = [os.fspath(p) for p in paths]
    named: dict[str, tuple[int, str]] = {}  # files named directly: absolute path -> (argument index, spelling)
    for index, path in enumerate(paths):
        if not os.path.isdir(path):  # named directly: taken whatever its name (no realpath: a list of a
            named.setdefault(os.path.abspath(path), (index, path))  # million files stays fast)
    walked: set[str] = set()  # real paths of folders walked: symlink loops end here
    errors: dict[str, dict] = {}  # real path -> error entry: a folder reached twice is reported once
    ignored: Counter = Counter()
    others: list[str] = []
    dropped: set[str] = set()  # named files that a folder named before them already holds
    walks = []
    for index, root in enumerate(paths):
        if not os.path.isdir(root):
            continue
        keys = PackedKeys()
        if on_start is not None:
            on_start(keys, others)
        for real, key in _sorted_walk(root, extensions, other_kinds, expand, walked, errors, ignored, others):
            earlier = named.get(real)
            if earlier is not None:
                if earlier[0] < index:
                    continue  # named before this folder: counted under that spelling
                dropped.add(real)
            keys.append(key)
        walks.append(keys.close())
    loose = sorted(item for real, (_, path) in named.items() if real not in dropped for item in expand(path))
    if len(loose) > PackedKeys.BLOCK:  # a --files-from list: its keys packed, as a walk's are
        loose = PackedKeys.of(loose)
    parts = [keys for keys in walks if len(keys)] + ([loose] if loose else [])
    if len(parts) == 1:
        found = parts[0]
    else:  # several folders, or folders and files named: one sorted sequence, by runs
        found = KeyChain([run for _, run in merge_sorted(parts)])
    return Listing(found, sorted(errors.values(), key=lambda e: e["path"]), dict(ignored), sorted(others))


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
