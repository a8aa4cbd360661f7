"""Loose image files and folders: :class:`FileSource` (the ``files`` kind); folders are walked by
:mod:`bnstats.inputs.walk`, and one file is read by :mod:`bnstats.inputs.reads` (safely, with read-ahead)."""

from __future__ import annotations

import bisect
import contextvars
import functools
import itertools
import os
from collections.abc import Callable, Sequence

from ..decoding import tiff
from .base import InputOptions, Source, SourceError, file_version
from .digests import Digest
from .reads import in_page_cache, prefetch, read_file
from .keys import PackedKeys, packed_sorted
from .walk import SortedNames, walk


#: who is told of a folder walk as it starts, ``watcher(source, keys)`` (keys still being filled): set by
#: :class:`bnstats.inputs.listing.ListingInProgress`, which counts the keys while the walk goes on
WALK_WATCHER: contextvars.ContextVar = contextvars.ContextVar("bnstats_walk_watcher", default=None)


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

    reads_folders = True

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
        self._folders_named = listing.folders  # the walk looked at each path named: not again (_named)
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
        folders = set()
        walked = self.__dict__.get("_folders_named")  # the folders among the paths, as the listing found them

        def files():
            named = ((path, walked is not None) for path in self.paths)
            for path, known in itertools.chain(named, ((path, False) for path in self.found_under)):
                normal = os.path.normpath(os.path.join(self.base, path))
                if path in walked if known else os.path.isdir(normal):  # one stat a path: the walk's
                    folders.add(normal)
                else:
                    yield normal

        # a --files-from list of a million files: sorted by runs, packed, looked up by bisection
        named = SortedNames(packed_sorted(files())) if len(self.paths) > PackedKeys.BLOCK else set(files())
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
        # the paths sent are the folders' absolute paths: the walk's record of the folders named (as spelled,
        # 'data') must name them so, or a worker takes each for a file (classes '', masks by base name)
        state["_folders_named"] = frozenset(state["paths"])
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
