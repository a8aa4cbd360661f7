"""What the user named -> one :class:`~bnstats.sources.Selection`: the items of a run.

Paths come from the command line and from ``--files-from`` lists. A path
may hold a brace range or list, expanded here as a shell would
(``shards/train-{000000..000146}.tar``, ``{train,val}/``), so that quoting
it works the same on every shell. Each path goes to the kind of input that
claims it (``bnstats.sources.SOURCE_KINDS``: archives, arrays, then image
files and folders); archives and arrays found while walking a folder go to
their kinds too. All kinds' items form one sorted sequence.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence

from . import remote, archives, arrays, parquet  # noqa: F401  the built-in kinds register themselves
from .sources import (SOURCE_KINDS, FileSource, InputOptions, MixedSource, NoImagesError, Selection, Source,
                      files_digest, ignored_note, shard)

_BRACE = re.compile(r"\{([^{}]*)\}")
MAX_EXPANSION = 1_000_000  # paths one pattern may expand to


class InputError(ValueError):
    """A path or list of paths that cannot be used: one line for the user."""


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar``; ``{x,y}`` -> ``x y``; nested braces work.

    Numeric ranges keep the width of zero-padded bounds; a step is ``{0..10..2}``.
    A pattern without braces is itself.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    body = match.group(1)
    numeric = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?", body)
    if numeric:
        lo, hi, step = numeric.group(1), numeric.group(2), int(numeric.group(3) or 1)
        width = max(len(lo), len(hi)) if lo.lstrip("-").startswith("0") or hi.lstrip("-").startswith("0") else 0
        a, b = int(lo), int(hi)
        values = range(a, b + 1, step or 1) if a <= b else range(a, b - 1, -(step or 1))
        if len(values) > MAX_EXPANSION:
            raise InputError(f"{pattern!r} expands to more than {MAX_EXPANSION} paths")
        choices = [f"{v:0{width}d}" for v in values]
    elif "," in body:
        choices = body.split(",")
    else:  # not a brace expression: keep it literally
        return [head + "{" + body + "}" + p for p in expand_braces(tail)]
    return [p for choice in choices for p in expand_braces(head + choice + tail)]


def read_file_list(path: str) -> list[str]:
    """The paths listed in a file (``-``: standard input), one per line.

    Blank lines and lines starting with ``#`` are ignored; other lines are
    taken as they are (leading and trailing spaces stripped). Relative paths
    are relative to the working directory, as on the command line.
    """
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
    except OSError as exc:
        raise InputError(f"cannot read the file list {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def kind_of(path: str) -> type[Source]:
    """The kind of input that claims ``path`` (image files and folders when no other does)."""
    return next(kind for kind in SOURCE_KINDS if kind.claims(path))


def _other_kind(name: str) -> bool:
    """True if a file found in a folder belongs to another kind than loose images."""
    return kind_of(name) is not FileSource


def open_and_list(paths: Sequence[str], options: InputOptions = InputOptions()) -> tuple[Source, list[str]]:
    """The source for ``paths`` and its keys, sorted here (possibly none; listing problems on the source)."""
    groups: dict[type[Source], list[str]] = {}
    for path in paths:
        groups.setdefault(kind_of(os.fspath(path)), []).append(os.fspath(path))
    listed = []
    for kind, group in groups.items():
        source = kind(group, options)
        if hasattr(source, "other_kinds"):  # folders and URL prefixes hold archives and parquet files too
            source.other_kinds = _other_kind
        keys = sorted(source.list_items())  # the one order of items, whatever order the paths were named in
        listed.append((source, keys))
        if source.found:  # archives and arrays found in folders: read by their own kinds
            listed.append(open_and_list(source.found, options))
    if len(listed) == 1:
        return listed[0]
    return MixedSource.of_listed(listed)


def select(paths: Iterable[str], shard_of: tuple[int, int] | None = None,
           options: InputOptions = InputOptions()) -> Selection:
    """Open ``paths`` and list their items (one shard ``(K, N)`` of them if given).

    Raises :class:`NoImagesError`
    if the paths hold no items at all (naming the first part that could not
    be read, if any). Listing errors go to the unsharded run or to shard 0
    only: each is reported once in merged shards, as in the whole run.
    """
    paths = [os.fspath(p) for p in paths]
    source, keys = open_and_list(paths, options)
    errors = list(source.listing_errors)
    if not keys:
        why = ""
        if errors:
            more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
            why = f" (cannot read {errors[0]['path']}: {errors[0]['error']}{more})"
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise NoImagesError("no images found under " + shown + why)
    notes = ([ignored_note(source.ignored)] if source.ignored else []) + list(source.listing_notes)
    listing = files_digest(source.portable_identity(key) for key in keys)
    span = (0, len(keys))
    if shard_of is not None:
        index, count = shard_of
        span = (index * len(keys) // count, (index + 1) * len(keys) // count)
        keys = shard(keys, *shard_of)
        if index != 0:
            errors = []
    return Selection(source, keys, shard_of, errors, notes, listing, span)
