"""The base of kinds whose items live inside files: :class:`ContainerSource` (archive members, array rows,
HDF5 and Parquet rows), keys ``CONTAINER:PART``, with identities, versions and runs of keys per container."""

from __future__ import annotations

import bisect
import functools
import itertools
import os
from collections.abc import Callable, Iterator, Sequence

from .base import Source, file_version, is_url, url_version
from .digests import Digest
from .keys import KeyChain, RowKeys, known_sorted


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
        # else each ":" of the key, as the end of a container's path: a sample's keys change container nearly
        # every key, and trying every container named in turn took hours for 10,000 shards
        found = None  # (position among the paths named, where the container's path ends)
        at = key.find(":")
        while at >= 0:
            named = self._positions.get(key[:at])
            if named is not None and (found is None or named < found[0]):  # the first named, as before
                found = (named, at)
            at = key.find(":", at + 1)
        if found is None:
            raise KeyError(key)
        container = key[: found[1]]
        self._last_container = container
        return container, key[found[1] + 1 :]

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        """Each container's path and its first position among the paths named (:meth:`split`)."""
        positions: dict[str, int] = {}
        for position, path in enumerate(self.paths):
            positions.setdefault(path, position)
        return positions

    def inspected(self, inspect: Callable, damaged: type[Exception], errors: list) -> Iterator[tuple[str, object]]:
        """``(path, inspect(path, options))`` for each container that can be read; a damaged one (``damaged``
        raised) is a skip entry in ``errors`` naming it, and the others still count."""
        for path in self.paths:
            try:
                yield path, inspect(path, self.options)
            except damaged as exc:
                errors.append({"path": path, "error": str(exc).removeprefix(f"cannot read {path}: ")
                               .removeprefix(f"{path}: ")})

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

    def portable_identities(self, keys):
        for container, run in self.runs(keys):  # the base name once per container
            base, start = os.path.basename(container) + ":", len(container) + 1
            if isinstance(run, KeyChain) and len(run.parts) == 1:
                run = run.parts[0]
            if isinstance(run, RowKeys) and run.prefix == container:  # rows: their names, not keys then cut
                width = run.width
                yield from (f"{base}{row:0{width}d}" for row in range(run.start, run.stop))
                continue
            for key in run:
                yield base + key[start:]

    def fingerprint(self, keys):
        names, entries = Digest(), Digest()
        for container, run in self.runs(keys):  # the real path and version once per container
            real, version, start = self._real(container), self.version(container), len(container) + 1
            for key in run:
                name = f"{real}:{key[start:]}"
                names.add(name)
                entries.add(f"{name}\0{version}")
        return {**names.record(), "contents": entries.record()["digest"]}

    def version(self, container: str) -> str:
        """What tells a container's versions apart: size and mtime of a file, ETag and size of an object."""
        if is_url(container):
            return url_version(container, self.options)
        return file_version(container)

    @functools.cached_property
    def _nested(self) -> frozenset[str]:
        """The containers whose keys may interleave with another's (found once, not per run): those whose
        ``CONTAINER:`` another container's path starts with, and those others (``a.tar``, ``a.tar:b.tar``)."""
        paths = sorted(self.paths)
        nested = set()
        for path in paths:
            after = bisect.bisect_left(paths, path + ":")
            longer = list(itertools.takewhile(lambda other: other.startswith(path + ":"),
                                              itertools.islice(paths, after, None)))
            if longer:
                nested.update([path, *longer])
        return frozenset(nested)

    def runs(self, keys: Sequence[str]) -> Iterator[tuple[str, Sequence[str]]]:
        """``(container, keys)`` for consecutive keys of one container: slices of ``keys``, never copied whole.

        A container's keys are the sorted keys from ``CONTAINER:`` up to ``CONTAINER;`` (";" follows ":"), found
        by bisection; only where another container's path itself starts with ``CONTAINER:`` are keys told apart
        one by one.
        """
        for container, start, stop in self.spans(keys):
            yield container, keys[start:stop]

    def spans(self, keys: Sequence[str]) -> Iterator[tuple[str, int, int]]:
        """``(container, start, stop)``: the positions of :meth:`runs`, for a caller that keeps them (a slice of a
        few packed keys is a list: thousands of shards' runs held as slices would be every key)."""
        if not known_sorted(keys):  # a sample's keys, in their random order: consecutive keys of one container
            start = 0
            for container, run in itertools.groupby(keys, key=lambda key: self.split(key)[0]):
                stop = start + sum(1 for _ in run)
                yield container, start, stop
                start = stop
            return
        start = 0
        while start < len(keys):
            container = self.split(keys[start])[0]
            if container in self._nested:
                stop = start + sum(1 for _ in itertools.takewhile(
                    lambda key: self.split(key)[0] == container, (keys[i] for i in range(start, len(keys)))))
            else:
                stop = bisect.bisect_left(keys, container + ";", lo=start)
            yield container, start, stop
            start = stop
