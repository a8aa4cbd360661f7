"""The source protocol: what an input kind is (:class:`Source`), its unit of work (:class:`Partition`),
its errors, its options (:class:`InputOptions`) and the base of kinds whose items live inside files
(:class:`~bnstats.inputs.containers.ContainerSource`, in its own module).

What the user named -> a sorted sequence of items, and a reader for each.

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
  :func:`~bnstats.inputs.select.select` puts them on the :class:`~bnstats.inputs.selection.Selection`; a run lists the
  errors in ``skipped`` (or fails with ``--strict``). With ``--shard`` only
  shard 0 reports them, so that merged shards equal the whole run.
* **Partitioning.** The engine cuts the sorted keys into partitions (tasks)
  with :meth:`Source.partitions`; a partition belongs to one source, which
  reads it with :meth:`Source.read` — in a worker process or on a Dask
  worker, so a source is small and picklable and holds no open files.
* **Reading.** ``read(keys)`` yields ``(keys, load)`` in order: always a
  tuple of keys, one key for one item, or the keys of consecutive array rows
  read as one batch (one :class:`~bnstats.decoding.image.ArrayImage` of
  several images), so that every item has one shape; ``load()``
  returning the item's encoded bytes or a decoded
  :class:`~bnstats.decoding.image.ArrayImage`; ``load`` raises for an item that
  cannot be read, and the caller lists it as skipped (:class:`ItemError`
  for a refusal described by its message alone, e.g. "not a regular file
  (FIFO)"). Files are read only if they are regular files of at most
  ``limits.current().file_bytes`` (``BNSTATS_MAX_FILE_BYTES``).

A new input kind is one :class:`Source` subclass with a ``claims(path)``
class method, registered in ``bnstats.registry`` (group ``sources``); :func:`bnstats.inputs.select.select` picks
the kind for each path (folders and loose image files: :class:`~bnstats.inputs.files.FileSource`)
and mixes kinds in one sorted sequence.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .digests import files_digest
from .keys import is_lazy, position_of
from .options import InputOptions



class NoImagesError(Exception):
    """The given paths hold no images."""


class SourceError(Exception):
    """An input as a whole cannot be read (an array of an unsupported type, a broken archive index):
    a one-line error naming it, not a skipped item."""


def require(module: str, what: str, extra: str):
    """The optional ``module`` that reading ``what`` needs, imported; else a one-line :class:`SourceError` naming
    the package and the extra that brings it (``pip install "bnstats[EXTRA]"``)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise SourceError(f'reading {what} needs {package}: pip install "bnstats[{extra}]"') from None


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


class Source:
    """A kind of input: items with sorted keys, read in partitions (see the module docstring)."""

    #: whether a local folder this kind claims is its own (a Zarr store; loose files walk any folder); other
    #: kinds claim files, and a folder named like one (Spark's ``data.parquet/``) is walked (see select.kind_of)
    reads_folders = False

    @classmethod
    def claims(cls, path: str) -> bool:
        """True if ``path`` (as given by the user) is this kind of input."""
        return False

    def __init__(self, paths: Sequence[str], options: InputOptions | None = None):
        # a --files-from list of a million paths stays packed (see bnstats.inputs.select.read_file_list)
        self.paths = paths if is_lazy(paths) else [os.fspath(p) for p in paths]
        self.options = options or InputOptions()

    #: the :class:`InputOptions` fields this kind reads (a capability it declares): an option that no input of a
    #: run reads is refused (:func:`bnstats.inputs.select.select`), never ignored
    options_read: frozenset[str] = frozenset()

    #: whether items are volumes (a capability the kind declares): the 2-D preprocessing options (resize, center
    #: crop) are refused for them in one line, never applied slice by slice
    volumes: bool = False

    def reads_option(self, name: str) -> bool:
        """Whether this source reads the :class:`InputOptions` field ``name``: one of :attr:`options_read`
        (``storage_options`` only when it has URLs)."""
        if name == "storage_options":
            return name in self.options_read and any(is_url(p) for p in self.paths)
        return name in self.options_read

    def kinds(self) -> list["Source"]:
        """The sources of one kind each that this one is made of: itself (several, for a mix of kinds)."""
        return [self]

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

    def read(self, keys: Sequence[str]) -> Iterator[tuple[tuple[str, ...], Callable[[], object]]]:
        """``(keys, load)`` in key order: ``keys`` a sequence, ``(key,)`` for one item (several for a batch of
        array rows: a range of keys, never a tuple of them); ``load()`` gives bytes or an ArrayImage (the batch's
        images, in its keys' order)."""
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

    def portable_identities(self, keys: Sequence[str]) -> Iterator[str]:
        """:meth:`portable_identity` of each of ``keys`` (sorted keys of this source), in order."""
        return map(self.portable_identity, keys)

    def fingerprint(self, keys: Sequence[str]) -> dict:
        """What a checkpoint records of ``keys``: ``{"count", "digest", "contents"}``.

        ``digest`` covers the identities (which items), ``contents`` also
        each item's version (for files: size and modification time), so a
        resume can tell a different list from changed items. The base class
        knows no versions: ``contents`` equals ``digest``.
        """
        names = files_digest(self.identity(k) for k in keys)
        return {**names, "contents": names["digest"]}

    def partitions(self, keys: Sequence[str], size: int) -> Sequence["Partition"]:
        """Cut ``keys`` (a run of this source's sorted keys) into tasks of ``size`` items: a sequence that makes
        each partition when it is asked for (a million files are not a list of partitions). A volume is megabytes
        of voxels: one a partition, so that a few volumes keep every worker busy (the size depends on the kind,
        never on the worker count: float results stay the same for any ``-j``)."""
        return EvenPartitions(self, keys, 1 if self.volumes else size)

    def sample_partitions(self, keys: Sequence[str], size: int) -> Sequence["Partition"]:
        """Cut a sample's keys, in their random order (items of any of the inputs in turn), into tasks of
        ``size`` items (see :meth:`sample_size`), each read by :meth:`for_keys` of them."""
        return EvenPartitions(self, keys, 1 if any(kind.volumes for kind in self.kinds()) else size, narrow=True)

    def sample_size(self, keys: Sequence[str], size: int) -> int:
        """The items per task of a sample's whole random order ``keys`` (a resumed run cuts its rest alike):
        ``size``; where members of streams are drawn (compressed tars: every task drawing from one reads it
        from its start), at least 1/:data:`STREAM_PASSES` of those members (tasks of 32 of a sample of 20,000
        members of one .tar.gz read it 600 times; now 8; beside other inputs, about 8 times over for the
        stream's share of the sample). The tasks stay runs of the random order: a stop after any of them
        counted a uniform sample."""
        if not any(kind.streams() for kind in self.kinds()):
            return size
        drawn_from = getattr(keys, "population", None)  # every key of the input, drawn: counted by runs, sorted
        streamed = self.streamed(drawn_from if drawn_from is not None else keys)
        return max(size, -(-streamed // STREAM_PASSES))

    def streams(self) -> bool:
        """Whether some of this source's items are read front to back, a stream a task (see :meth:`streamed`)."""
        return False

    def streamed(self, keys: Sequence[str]) -> int:
        """How many of ``keys`` are members of streams: a task reading any of them reads its stream from its
        start (a compressed tar's members); none, for most kinds."""
        return 0

    def stream_of(self, key: str) -> str | None:
        """The stream (a compressed tar) ``key`` is read from front to back, or None (most kinds)."""
        return None

    def for_keys(self, keys: Sequence[str]) -> "Source":
        """What a task reading ``keys`` is sent: this source, or (a kind that holds an index of its items, an
        archive's members) one that holds only what those keys need."""
        return self


@dataclass(frozen=True)
class Partition:
    """One unit of work: consecutive keys that one source reads (a slice of the run's keys: a list, or a
    range of rows that pickles in a few bytes)."""

    source: Source
    keys: Sequence[str]

    def __len__(self) -> int:
        return len(self.keys)


STREAM_PASSES = 8  # tasks at most that read the members of streams drawn in a sample (see Source.sample_size)


def gather_streams(keys: Sequence[str], stream_of: Callable[[str], str | None]) -> list[str]:
    """A task's keys of a sample (in their random order) with each stream's keys moved up to its first one: a
    task reads each stream once, not once per run of its keys between other inputs' (a stream yields its
    members in stored order anyway); the other keys keep their order."""
    by_stream: dict[str, list[str]] = {}
    for key in keys:
        stream = stream_of(key)
        if stream is not None:
            by_stream.setdefault(stream, []).append(key)
    out: list[str] = []
    for key in keys:
        stream = stream_of(key)
        if stream is None:
            out.append(key)
        elif stream in by_stream:
            out += by_stream.pop(stream)
    return out


class EvenPartitions(Sequence):
    """The partitions of ``size`` consecutive keys each (the last one shorter), made when asked for."""

    def __init__(self, source: Source, keys: Sequence[str], size: int, narrow: bool = False):
        self.source, self.keys, self.size, self.narrow = source, keys, size, narrow

    def __len__(self) -> int:
        return -(-len(self.keys) // self.size)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start = position_of(index, len(self), "partition") * self.size
        keys = self.keys[start : start + self.size]
        if self.narrow and not is_lazy(keys):  # a long part of a sample's order: a view that pickles every key
            keys = list(keys)
        return Partition(self.source.for_keys(keys) if self.narrow else self.source, keys)


class GrowingPartitions(Sequence):
    """:class:`EvenPartitions` of :class:`~bnstats.inputs.listing.GrowingKeys`: of a walk still going on.

    Partition ``n`` is made once its keys are final (waiting for them);
    :meth:`has` says whether it exists (waiting until that is known) and
    :meth:`ready` how many can be made now. The cut is the one
    :class:`EvenPartitions` makes of the finished list, so counting while
    the walk goes on gives the same partitions.
    """

    def __init__(self, source: Source, keys, size: int):
        self.source, self.keys, self.size = source, keys, size

    def has(self, index: int) -> bool:
        return self.keys.wait_for(index * self.size + 1) > index * self.size

    def ready(self) -> int:
        keys = self.keys.ready()
        return -(-keys // self.size) if self.keys.finished.is_set() else keys // self.size

    def __len__(self) -> int:
        return -(-len(self.keys) // self.size)

    def __getitem__(self, index):
        if isinstance(index, slice):
            stop = index.stop if index.stop is not None and index.stop >= 0 else len(self)
            return [self[i] for i in range(index.start or 0, stop) if self.has(i)]
        if index < 0:
            index += len(self)
        start = index * self.size
        ready = self.keys.wait_for(start + self.size)
        if not 0 <= start < ready:
            raise IndexError("partition index out of range")
        return Partition(self.source, self.keys.packed[start : min(ready, start + self.size)])


# -- loose image files and folders -----------------------------------------------------


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str) -> bool:
    """True for ``scheme://...``: a URL read through fsspec (``bnstats.inputs.remote``), not a local path."""
    return bool(_URL.match(str(path)))


_URL_VERSION: list = []  # how an object's version is read (ETag and size): bnstats.inputs.remote registers it


def register_url_version(read: Callable[[str, "InputOptions"], str]) -> None:
    """Set how a URL's version is read for resume checks (the module that knows the stores calls this)."""
    _URL_VERSION[:] = [read]


def url_version(url: str, options: "InputOptions") -> str:
    """What tells an object's versions apart (ETag and size), as the module that knows the stores reads it."""
    return _URL_VERSION[0](url, options) if _URL_VERSION else ""


def file_version(path: str) -> str:
    """What tells a file's versions apart for a resume: its size and modification time."""
    try:
        st = os.stat(path)
        return f"{st.st_size} {st.st_mtime_ns}"
    except OSError as exc:
        return type(exc).__name__  # unreadable now: the read will say why
