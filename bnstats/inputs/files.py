"""Loose image files and folders: :class:`FileSource` (the ``files`` kind) and the folder walk; one file is
read by :mod:`bnstats.inputs.reads` (safely, with read-ahead)."""

from __future__ import annotations

import bisect
import contextvars
import functools
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ..decoding import tiff
from .base import InputOptions, Source, SourceError, file_version
from .options import IMG_EXTENSIONS
from .digests import Digest
from .reads import in_page_cache, prefetch, read_file
from .keys import KeyChain, PackedKeys, merge_sorted


#: who is told of a folder walk as it starts, ``watcher(source, keys)`` (keys still being filled): set by
#: :class:`bnstats.inputs.listing.ListingInProgress`, which counts the keys while the walk goes on
WALK_WATCHER: contextvars.ContextVar = contextvars.ContextVar("bnstats_walk_watcher", default=None)


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

    options_read = frozenset({"ext", "mask", "stack"})

    @classmethod
    def claims(cls, path: str) -> bool:
        return True

    def __init__(self, paths: Sequence[str], options: InputOptions | None = None):
        super().__init__(paths, options)
        self.base = os.getcwd()

    #: kinds that may claim files found in folders (set by the caller that knows them)
    other_kinds: Callable[[str], bool] | None = None
    #: the folders a walk found these files in (files of another file kind, e.g. volumes): their classes and
    #: portable names are taken under these folders, as for the images beside them
    found_under: tuple[str, ...] = ()

    def list_items(self) -> Sequence[str]:
        # a multi-page TIFF is one item per page, FILE:PAGE (bnstats.decoding.tiff); any other file is one item
        watcher = WALK_WATCHER.get()
        listing = walk(self.paths, self.options.extensions(), self.other_kinds, expand=self._items_of,
                       on_start=None if watcher is None else functools.partial(watcher, self))
        self.listing_errors, self.ignored, self.found = listing.errors, listing.ignored, listing.others
        self._refuse_pages_named_twice(listing.keys)
        return listing.keys

    def _refuse_pages_named_twice(self, keys: Sequence[str]) -> None:
        """A file literally named like a TIFF page (``b.tif:3``) listed beside that page of ``b.tif``: the two
        share one key (listed once, or twice), so one would be read twice or in the other's place. A
        :class:`SourceError` naming both."""
        literals = self.__dict__.get("_literal", set())
        for literal in sorted(literals):  # a handful at most: such names are rare
            file, page = tiff.split_page_key(literal)
            if self.options.stack != "volume" and self._pages_listed(keys, literal, literals) and \
                    literal in tiff.page_keys(file, os.path.join(self.base, file)):
                raise SourceError(f"{literal} is a file named like page {page} of {file}, which is listed too: "
                                  "the two cannot be told apart; rename the file or leave one of them out")

    @staticmethod
    def _pages_listed(keys: Sequence[str], literal: str, literals: set) -> bool:
        """Whether a page key of the TIFF ``literal`` is named like sits beside it in the sorted ``keys`` (the
        same key twice, or the TIFF's next or previous page; other literal names passed over)."""
        file = tiff.split_page_key(literal)[0]
        at = bisect.bisect_left(keys, literal)
        if at + 1 < len(keys) and keys[at + 1] == literal:
            return True
        for step, i in ((-1, at - 1), (1, at + 1)):
            while 0 <= i < len(keys) and keys[i] in literals:
                i += step
            if 0 <= i < len(keys) and tiff.split_page_key(keys[i])[0] == file and ":" in keys[i][len(file):]:
                return True
        return False

    def split_key(self, key: str) -> tuple[str, int | None]:
        """``(file key, index)`` of an item key: a TIFF's page (``a.tif:03``), else ``(key, None)`` (a file
        whose own name looks like a page's, ``b.tif:3``, is that file)."""
        if key in self.__dict__.get("_literal", ()):
            return key, None
        return tiff.split_page_key(key)

    def _items_of(self, key: str) -> list[str]:
        """A file's item keys: its pages for a multi-page TIFF (opened to count them), else itself (no path joined
        for the other files of a walk: this runs once per file listed); with ``--stack volume`` a TIFF too."""
        if ":" in key and tiff.split_page_key(key)[1] is not None and os.path.isfile(os.path.join(self.base, key)):
            self.__dict__.setdefault("_literal", set()).add(key)  # named like a page: not b.tif's page 3
            return [key]
        if not key.lower().endswith(tiff.TIFF_SUFFIXES) or self.options.stack == "volume":
            return [key]
        return tiff.page_keys(key, os.path.join(self.base, key))

    def read(self, keys):
        files = [self.split_key(key) for key in keys]
        absolute = [os.path.join(self.base, file) for file, _ in files]
        if absolute and not in_page_cache(absolute[0]):  # files in memory need no read-ahead
            prefetch(list(dict.fromkeys(absolute)))
        last = [None, None]  # the pages of one file come together: its bytes are read once for them

        def read_page(path, page):
            if last[0] != path:
                last[:] = path, read_file(path)
            return tiff.TiffPage(last[1], page)

        stacks = self.options.stack == "volume"
        for key, path, (_, page) in zip(keys, absolute, files):
            if page is not None:
                load = functools.partial(read_page, path, page)
            elif stacks and key.lower().endswith(tiff.TIFF_SUFFIXES):  # every page, as one volume
                load = functools.partial(_read_stack, path)
            else:
                load = functools.partial(read_file, path)
            yield (key,), load

    def class_of(self, key: str) -> str:
        key = self.split_key(key)[0]
        root = self._root_of(key)
        if root is None:
            return ""
        name, parts = root
        return parts[0] if len(parts) > 1 else name

    def relative_path(self, key: str) -> str:
        """The item's file below the folder named that holds it (``cat/1.png``); its name if named on its own."""
        file = self.split_key(key)[0]
        root = self._root_of(file)
        return "/".join(root[1]) if root is not None else os.path.basename(file)

    def identity(self, key: str) -> str:
        return self._identity(key, {})

    def _identity(self, key: str, real_folders: dict) -> str:
        file, page = self.split_key(key)
        if page is not None:  # a page: the file's identity and the page, as the key names it
            return self._identity(file, real_folders) + key[len(file) :]
        # realpath costs a stat per path part: once per folder, not per file
        folder, name = os.path.split(os.path.join(self.base, key))
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        return os.path.join(real_folders[folder], name)

    def portable_identity(self, key: str) -> str:
        file, page = self.split_key(key)
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

    def portable_identities(self, keys):
        """:meth:`portable_identity` of each key, found once per folder (a walk's keys come folder by folder, and
        so do the files of a ``--files-from`` list)."""
        folder_of = None  # the last folder seen, and what a plain file name in it is named by (see below)
        for key in keys:
            folder, sep, name = key.rpartition(os.sep)
            if not name or name in (".", "..") or ":" in name:  # a series folder, a page, a 4-D file's volume
                yield self.portable_identity(key)
                continue
            if folder != folder_of:
                folder_of, text, normal, root = folder, *self._names_in(folder or sep)
            if text is not None:  # under a folder named, as spelled
                yield text + name
            elif root is not None:  # under a folder named, once normalised
                yield root + name
            elif normal is not None and os.path.join(normal, name) in self._named_files:
                yield name  # a file named on its own
            else:
                yield key  # a key given from Python, under no path named: as spelled

    def _names_in(self, folder: str) -> tuple[str | None, str | None, str]:
        """What :meth:`portable_identity` names a plain file of ``folder`` by: the folder's portable prefix as
        spelled (``"cat/"``) or None; else as normalised, or None; and the folder's normalised absolute path."""
        prefix = self._prefix_of(folder)
        normal = os.path.normpath(os.path.join(self.base, folder))
        root = self._prefix_of(normal) if prefix is None else None
        return (None if prefix is None else "/".join(prefix) + "/", normal,
                None if root is None else "/".join(root) + "/")

    def fingerprint(self, keys):
        real_folders: dict = {}  # per folder, not per file
        names, versions = Digest(), Digest()
        for key in keys:
            name = self._identity(key, real_folders)
            names.add(name)
            versions.add(f"{name}\0{file_version(os.path.join(self.base, self.split_key(key)[0]))}")
        return {**names.record(), "contents": versions.record()["digest"]}

    @functools.cached_property
    def _named(self) -> tuple[list[tuple[str, str]], set[str]]:
        """``(absolute path, name)`` of each folder named, outermost first; and the files named."""
        folders, files = set(), []
        for path in (*self.paths, *self.found_under):
            normal = os.path.normpath(os.path.join(self.base, path))
            (folders.add if os.path.isdir(normal) else files.append)(normal)
        files.sort()
        # a --files-from list of a million files: packed and looked up by bisection, not a set of strings
        named = SortedNames(PackedKeys.of(files)) if len(files) > PackedKeys.BLOCK else set(files)
        return [(r, os.path.basename(r)) for r in sorted(folders, key=len)], named

    @property
    def _roots(self) -> list[tuple[str, str]]:
        return self._named[0]

    @property
    def _named_files(self) -> set[str]:
        return self._named[1]

    def __getstate__(self):
        # what a worker needs: the folders named (for classes and masks' paths), not every path named (a
        # --files-from list of a million files was sent with every task), nor the caches of the listing
        state = dict(self.__dict__)
        roots = self._named[0]
        for name in ("_named", "_prefixes", "found"):
            state.pop(name, None)
        state["paths"], state["found_under"] = [root for root, _ in roots], ()
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


def _read_stack(path: str) -> "tiff.TiffStack":
    return tiff.TiffStack(read_file(path))


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
