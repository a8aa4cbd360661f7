"""What the user named -> one :class:`~bnstats.inputs.selection.Selection`: the items of a run.

Paths come from the command line and from ``--files-from`` lists. A path
may hold a brace range or list, expanded here as a shell would
(``shards/train-{000000..000146}.tar``, ``{train,val}/``), so that quoting
it works the same on every shell. Each path goes to the kind of input that
claims it (``bnstats.registry``'s ``sources``: plugins, archives, arrays, then image
files and folders); archives and arrays found while walking a folder go to
their kinds too. All kinds' items form one sorted sequence.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import functools
import io
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence

from .. import limits
from .. import registry
from . import remote  # noqa: F401  registers how a URL's version is read (the input kinds: bnstats.registry)
from .base import InputOptions, NoImagesError, Source
from .digests import listing_digest
from .files import FileSource
from .walk import file_identity, ignored_note
from .keys import PackedKeys, is_lazy
from .selection import MixedSource, Selection, shard

_NUMERIC = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?")
MAX_NESTING = 64  # braces inside braces: deeper is no path anyone writes (and would exhaust the stack)


class InputError(ValueError):
    """A path or list of paths that cannot be used: one line for the user."""


class OptionNotRead(InputError):
    """An input option that no input of the run reads (``--key`` for a folder of images): refused, not ignored."""


class _Range:
    """``{lo..hi..step}``: numbers, zero-padded to the bounds' width when a bound is."""

    def __init__(self, lo: str, hi: str, step: str | None):
        padded = any(len(b.lstrip("-")) > 1 and b.lstrip("-").startswith("0") for b in (lo, hi))  # as bash: not "0"
        self.width = max(len(lo), len(hi)) if padded else 0
        self.lo, self.hi, self.step = int(lo), int(hi), abs(int(step or 1)) or 1
        if self.lo > self.hi:
            self.step = -self.step

    def count(self, cap: int) -> int:
        return (abs(self.hi - self.lo) // abs(self.step)) + 1  # arithmetic: never builds the range

    def names(self):
        stop = self.hi + (1 if self.step > 0 else -1)
        return (f"{v:0{self.width}d}" for v in range(self.lo, stop, self.step))


class _Choice:
    """``{a,b,c}``: each alternative (itself a pattern) in turn."""

    def __init__(self, options: list):
        self.options = options

    def count(self, cap: int) -> int:
        return min(cap, sum(option.count(cap) for option in self.options))

    def names(self):
        return (name for option in self.options for name in option.names())


class _Sequence:
    """Text and braces one after the other: every combination, the last brace varying fastest."""

    def __init__(self, parts: list):
        self.parts = parts

    def count(self, cap: int) -> int:
        total = 1
        for part in self.parts:
            total = min(cap, total * (part.count(cap) if not isinstance(part, str) else 1))
        return total

    def names(self):
        if all(isinstance(part, str) for part in self.parts):  # the common case: one name
            yield "".join(self.parts)
            return
        generators = [(lambda p=part: iter((p,))) if isinstance(part, str) else part.names for part in self.parts]
        yield from _combinations(generators)


def _combinations(generators) -> Iterator[str]:
    """Every name made of one name of each generator in turn, the last varying fastest.

    An odometer, not recursion (a pattern may have thousands of parts); each
    generator is re-run for every prefix, so memory stays one name per part.
    """
    if not generators:
        yield ""
        return
    iterators, prefixes = [generators[0]()], [""]
    while iterators:
        name = next(iterators[-1], None)
        if name is None:
            iterators.pop()
            prefixes.pop()
            continue
        current = prefixes[-1] + name
        if len(iterators) == len(generators):
            yield current
        else:
            iterators.append(generators[len(iterators)]())
            prefixes.append(current)


def _closing(pattern: str) -> dict[int, int]:
    """The index of the ``}`` that closes each ``{`` that is closed (as a shell pairs them: the innermost first).

    A ``{`` never closed, and a ``}`` that closes nothing, are literal.
    """
    opened, closing = [], {}
    for i, c in enumerate(pattern):
        if c == "{":
            opened.append(i)
        elif c == "}" and opened:
            closing[opened.pop()] = i
    return closing


def _parse(pattern: str, closing: dict[int, int], i: int = 0, depth: int = 0) -> tuple[_Sequence, int]:
    """The pattern from ``pattern[i]`` up to the end, or (inside braces) to the next ``,`` or ``}`` of this level."""
    parts: list = []
    text = []
    while i < len(pattern):
        c = pattern[i]
        if depth and c in ",}":
            break
        if c == "{" and i in closing:
            parts += ["".join(text), _group(pattern, closing, i, depth)]
            text = []
            i = closing[i] + 1
            continue
        text.append(c)
        i += 1
    parts.append("".join(text))
    return _Sequence([p for p in parts if p != ""]), i


def _group(pattern: str, closing: dict[int, int], i: int, depth: int):
    """The brace group ``pattern[i : closing[i] + 1]``: a range, a choice, or literal braces."""
    if depth >= MAX_NESTING:
        raise InputError(f"{_short(pattern)} nests braces more than {MAX_NESTING} deep")
    end, options, j = closing[i], [], i + 1
    while True:
        option, j = _parse(pattern, closing, j, depth + 1)
        options.append(option)
        if j >= end:  # every "}" inside a closed pair is closed inside it: the level ends at ours
            break
        j += 1  # past the ","
    if len(options) == 1:
        numeric = _NUMERIC.fullmatch(pattern[i + 1 : end])
        if numeric:
            try:
                return _Range(*numeric.groups())
            except ValueError:  # a bound of thousands of digits (Python refuses to convert it)
                raise InputError(f"{_short(pattern)}: a brace range bound is too long") from None
        return _Sequence(["{", *options[0].parts, "}"])  # no comma: literal braces (their inside expands)
    return _Choice(options)


def _tree(pattern: str) -> _Sequence:
    return _parse(pattern, _closing(pattern))[0]


def brace_count(pattern: str) -> int:
    """How many paths ``pattern`` expands to (computed, not expanded; at most ``BNSTATS_MAX_NAMES`` + 1)."""
    return _tree(pattern).count(limits.current().names + 1)


def expand_braces(pattern: str) -> Iterator[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar``; ``{x,y}`` -> ``x y``; nested braces work.

    Numeric ranges keep the width of zero-padded bounds; a step is ``{0..10..2}``.
    Braces without a comma or range, and an unclosed ``{``, are literal. A
    pattern without braces is itself. The paths are generated one by one, after
    their number is checked against ``BNSTATS_MAX_NAMES`` (an :class:`InputError`
    past it, before any is made).
    """
    tree = _tree(pattern)
    bound = limits.current().names
    count = tree.count(bound + 1)
    if count > bound:
        raise InputError(f"{_short(pattern)} expands to more than {bound:,} paths "
                         f"(raise the limit with {limits.current().variable('names')}, or use --files-from)")
    return tree.names()


def _short(text: str) -> str:
    """``text`` quoted, cut to 80 characters: a message stays one readable line."""
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "..."


MAX_LINE = 64 << 10  # bytes in one line of a --files-from list: 16 times PATH_MAX, and no path is longer


def read_file_list(path: str) -> tuple[PackedKeys, list[dict]]:
    """The paths listed in a file (``-``: standard input), one per line, and the lines that are no path.

    Blank lines and lines starting with ``#`` are ignored; other lines are
    taken as they are (leading and trailing spaces stripped). Relative paths
    are relative to the working directory, as on the command line. The list
    is read a line at a time: a line of more than :data:`MAX_LINE` characters
    (a binary file, ``/dev/zero``) is an :class:`InputError`; a line holding
    a NUL byte, which no file name can, is a skip entry ``{"path": "FILE:LINE",
    "error"}``.
    """
    paths, skipped = PackedKeys(), []  # in the list's order, packed: a list of a million paths is a few MB
    try:
        with _list_lines(path) as lines:
            for number, raw in enumerate(iter(lambda: lines.readline(MAX_LINE + 1), b""), 1):
                if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                    raise InputError(f"line {number} of the file list {path} is longer than {MAX_LINE:,} bytes: "
                                     "is it a list of paths, one a line?")
                if number == 1:  # a list saved by Notepad starts with a byte-order mark
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                line = raw.decode("utf-8", "surrogateescape").strip()
                if not line or line.startswith("#"):
                    continue
                if "\0" in line:
                    skipped.append({"path": f"{path}:{number}",
                                    "error": "the line holds a NUL byte, which no path can hold"})
                    continue
                paths.append(line)
    except OSError as exc:
        raise InputError(f"cannot read the file list {path}: {exc.strerror or exc}") from None
    return paths.close(), skipped


@contextlib.contextmanager
def _list_lines(path: str):
    """The list file (``-``: standard input) as a binary stream."""
    if path != "-":
        with open(path, "rb") as f:
            yield f
        return
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream without bytes under it (a test's StringIO)
        stream = io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))
    yield stream


def kind_of(path: str, kinds: Sequence[type[Source]] | None = None, folder: bool | None = None) -> type[Source]:
    """The kind of input that claims ``path`` (image files and folders when no other does); ``kinds``: the
    registered kinds, last registered first (looked up once for a long list of paths). A folder is claimed
    only by kinds that read folders (a Zarr store): one named like a file of another kind (Spark's
    ``data.parquet/``, ``x.npy/``) is walked. ``folder``: whether ``path`` is one, if the caller knows (a walk
    does); else the disk is asked, once a kind has claimed the path."""
    kinds = reversed(registry.load("sources").values()) if kinds is None else kinds  # registered last, asked first
    for kind in kinds:
        if kind.claims(path) and (kind.reads_folders or not (os.path.isdir(path) if folder is None else folder)):
            return kind
    raise AssertionError("loose files claim every path")


def _other_kind(name: str, extensions: tuple[str, ...] | None = None) -> bool:
    """True if a file found in a folder belongs to another kind than loose images. With ``--ext``
    (``extensions``) only files of those extensions count, archives aside (``--ext`` picks their members)."""
    kind = kind_of(name, folder=name.endswith(("/", os.sep)))  # the walk asks of files, and of folders with a "/"
    if kind is FileSource:
        return False
    if extensions is None or ("ext" in kind.options_read and not issubclass(kind, FileSource)):
        return True
    return name.rstrip("/" + os.sep).lower().endswith(extensions)


def open_and_list(paths: Sequence[str], options: InputOptions = InputOptions(),
                  found_under: Sequence[str] = (), named: set[str] | None = None) -> tuple[Source, list[str]]:
    """The source for ``paths`` and its keys, sorted here (possibly none; listing problems on the source).

    ``found_under``: the folders a walk found ``paths`` in; file kinds (volumes) take their classes and
    portable names from them, as the image files beside them do. ``named``: the containers (archives, arrays,
    stores) already taken, by :func:`_container_identity`; each counts once however often it is reached.
    """
    groups: dict[type[Source], PackedKeys | list[str]] = {}
    kinds = list(reversed(registry.load("sources").values()))
    for path in paths:  # a layout names the kind that reads the folders named; else each path's name does
        path = os.fspath(path)
        kind = registry.get("sources", options.layout) if options.layout else kind_of(path, kinds)
        groups.setdefault(kind, PackedKeys() if is_lazy(paths) else []).append(path)  # a long list stays packed
    groups = {kind: group.close() if isinstance(group, PackedKeys) else group for kind, group in groups.items()}
    named = set() if named is None else named
    # image files and objects are taken once by their own listings (the walk's, a prefix's set of URLs); a
    # long list of them stays packed
    groups = {kind: group if issubclass(kind, (FileSource, remote.RemoteSource)) else _each_once(group, named)
              for kind, group in groups.items()}
    groups = {kind: group for kind, group in groups.items() if len(group)}
    listed = []
    for kind, group in groups.items():
        source = kind(group, options)
        if isinstance(source, FileSource):
            source.found_under = tuple(found_under)
        if hasattr(source, "other_kinds"):  # folders and URL prefixes hold archives and parquet files too
            source.other_kinds = functools.partial(_other_kind, extensions=options.extensions() if options.ext
                                                   else None)
        keys = source.list_items()
        if not is_lazy(keys):  # a range or chain is sorted by construction, and never a list of every key
            keys = sorted(keys)  # the one order of items, whatever order the paths were named in
        listed.append((source, keys))
        if source.found:  # archives and arrays found in folders: read by their own kinds
            listed.append(open_and_list(source.found, options, found_under=source.paths, named=named))
    if len(listed) == 1:
        return listed[0]
    return MixedSource.of_listed(listed)


def _container_identity(path: str) -> str:
    """What tells two spellings of one archive, array file or store apart: :func:`walk.file_identity`, as for
    image files; a URL as spelled. Either without a trailing ``/`` (a store's folder)."""
    path = path.rstrip("/" + os.sep) or path
    return path if "://" in path else file_identity(path)


def _each_once(paths: Sequence[str], named: set[str]) -> list[str]:
    """``paths`` without those named before (in ``named``, which takes the rest): an ``.npy`` named twice, or
    named and found in a folder walked, was counted twice, where an image file counts once."""
    once = []
    for path in paths:
        identity = _container_identity(path)
        if identity not in named:
            named.add(identity)
            once.append(path)
    return once


def check_options_read(source: Source, options: InputOptions) -> None:
    """Refuse an option given (not its default) that no input of ``source`` reads, naming what it applies to.

    Only the fields that are command-line options (:func:`~bnstats.inputs.base.input_option`) are checked;
    ``group_column`` is checked by ``--group-by`` itself.
    """
    for option in dataclasses.fields(options):
        flag = option.metadata.get("flag")
        if flag is None or getattr(options, option.name) == option.default or source.reads_option(option.name):
            continue
        named = ", ".join(source.paths[:2]) + (f" and {len(source.paths) - 2} more" if len(source.paths) > 2 else "")
        raise OptionNotRead(f"{flag} applies to {option.metadata['applies_to']}, and no input here is one "
                            f"({named}): leave it out")


def select(paths: Iterable[str], shard_of: tuple[int, int] | None = None,
           options: InputOptions = InputOptions(), listed_errors: Sequence[dict] = ()) -> Selection:
    """Open ``paths`` and list their items (one shard ``(K, N)`` of them if given).

    ``listed_errors`` are skip entries found before listing (lines of a
    ``--files-from`` list that are no path); they come first among the
    selection's errors.

    Raises :class:`NoImagesError`
    if the paths hold no items at all (naming the first part that could not
    be read, if any). Listing errors go to the unsharded run or to shard 0
    only: each is reported once in merged shards, as in the whole run.
    """
    paths = paths if is_lazy(paths) else [os.fspath(p) for p in paths]
    source, keys = open_and_list(paths, options)
    check_options_read(source, options)
    errors = [*listed_errors, *source.listing_errors]
    if not keys:
        why = ""
        if errors:
            more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
            why = f" (cannot read {errors[0]['path']}: {errors[0]['error']}{more})"
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise NoImagesError("no images found under " + shown + why)
    notes = ([ignored_note(source.ignored)] if source.ignored else []) + list(source.listing_notes)
    listing = listing_digest(functools.partial(source.portable_identities, keys), len(keys))
    span = (0, len(keys))
    if shard_of is not None:
        index, count = shard_of
        span = (index * len(keys) // count, (index + 1) * len(keys) // count)
        keys = shard(keys, *shard_of)
        if index != 0:
            errors = []
    return Selection(source, keys, shard_of, errors, notes, listing, span)
