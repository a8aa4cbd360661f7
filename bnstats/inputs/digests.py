"""Digests of lists of names: ``{"count", "digest"}`` records that identify which items a run read,
additive across shards (what reports, checkpoints and ``merge`` compare)."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence


class Digest:
    """A :func:`files_digest` built one name at a time (constant memory)."""

    __slots__ = ("count", "total")

    def __init__(self):
        self.count, self.total = 0, 0

    def add(self, name: str) -> None:
        self.count += 1
        self.total += int.from_bytes(hashlib.sha256(os.fsencode(name)).digest(), "big")

    def add_all(self, names: Iterable[str]) -> None:
        """:meth:`add` each of ``names`` (one loop in C's reach: a million names cost ~1 s less)."""
        sha256, from_bytes = hashlib.sha256, int.from_bytes
        encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsencode's, once
        total = count = 0
        for count, name in enumerate(names, 1):
            total += from_bytes(sha256(name.encode(encoding, errors)).digest(), "big")
        self.count += count
        self.total += total

    def record(self) -> dict:
        """``{"count", "digest"}`` of the names added."""
        return {"count": self.count, "digest": f"{self.total % 2**256:064x}"}


def files_digest(names: Iterable[str]) -> dict:
    """``{"count", "digest"}`` identifying a list of names, additive across shards.

    The digest is the sum of the names' SHA-256 values modulo 2**256, so the
    parts of a split add up to the whole run's digest, and ``merge`` can
    refuse the same part given twice.
    """
    digest = Digest()
    digest.add_all(names)
    return digest.record()


class DigestInBackground(Mapping):
    """A :func:`files_digest` record computed on a thread while the run counts, read when it is needed (a
    result's ``files``): 10 million array rows took ~11 s of SHA-256 before the first row was counted.
    Pickled, it is the finished record."""

    def __init__(self, compute: Callable[[], dict]):
        self._record: dict | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(compute,), name="bnstats-digest", daemon=True)
        self._thread.start()

    def _run(self, compute) -> None:
        try:
            self._record = compute()
        except BaseException as exc:  # noqa: BLE001 - raised where the record is read
            self._error = exc

    def record(self) -> dict:
        """The finished record (waiting for it)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._record

    def __getitem__(self, name):
        return self.record()[name]

    def __iter__(self):
        return iter(self.record())

    def __len__(self) -> int:
        return len(self.record())

    def __reduce__(self):
        return dict, (self.record(),)


BACKGROUND_NAMES = 1 << 17  # lists longer than this have their digest computed while they are counted


def listing_digest(names: Callable[[], Iterable[str]], count: int) -> Mapping:
    """:func:`files_digest` of ``names()``: at once for a short list, else on a thread (see
    :class:`DigestInBackground`)."""
    if count <= BACKGROUND_NAMES:
        return files_digest(names())
    return DigestInBackground(lambda: files_digest(names()))


def combine_digests(digests: Sequence[dict], field: str = "digest") -> dict:
    """The ``{"count", field}`` of the union of disjoint lists, from theirs (the sums add up)."""
    total = sum(int(d[field], 16) for d in digests) % 2**256
    return {"count": sum(d["count"] for d in digests), field: f"{total:064x}"}
