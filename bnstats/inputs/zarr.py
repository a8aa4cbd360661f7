"""Zarr stores (v2 and v3) as array inputs: the :class:`ZarrSource` kind, each array's rows as images.

A store is a folder (``store.zarr/``, or any folder holding ``.zarray``,
``.zgroup`` or ``zarr.json``) or an fsspec URL ending in ``.zarr``
(``s3://bucket/train.zarr``, opened with ``--storage-option``). A folder walk
that comes upon a ``*.zarr`` folder counts it as one store and does not walk
into its chunks. The ``.npy`` row rules apply (:mod:`bnstats.inputs.arrays`):
``(N, H, W, C)``, ``(N, H, W)``, ``(N, C)``, ``(N,)``, ``--channel-axis`` for
``(N, C, H, W)``; every numeric array of a store's groups counts, or only
``--key group/array``. Keys are ``STORE:ROW`` for a store that is one array,
``STORE:ARRAY:ROW`` otherwise.

Rows are read through zarr in whole chunks (whole shards for a sharded v3
array): a task is a run of whole chunks, so no chunk is decompressed by two
tasks, and each task opens the store itself (a source holds only the path
and options). Up to :data:`~bnstats.inputs.arrays.BATCH_BYTES` of chunks are
read at once (zarr fetches and decodes them concurrently) and counted a chunk
at a time: a chunk whose bytes cannot be decoded is a skip entry for each of
its rows, and the rows of the other chunks still count.

What zarr itself defines is kept: a chunk the store does not hold *is* the
array's ``fill_value`` there (Zarr writes no chunk that holds only it), so its
rows are counted as that value, and the listing warns once per array how many
chunks that is (the store's files are listed once per run: for this, for the
bound below, and for the version a resume checks). Before any row is read,
the declared shape is checked against :mod:`bnstats.limits`: a row over the pixel or image-bytes
bound, a chunk over the bytes-per-file bound, or an array declaring more data
than the inflation ratio allows of the bytes the store holds (10¹² rows in a
store of a few kilobytes), is one skip entry naming the array, never an
allocation. A damaged ``.zarray``/``zarr.json`` is a skip entry naming the
store. Needs the ``zarr`` extra (``pip install "bnstats[zarr]"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections.abc import Iterator

import numpy as np

from .. import limits
from ..decoding.nodata import attribute_nodata
from .arrayfiles import ArrayInfo, DamagedArrayError, check_arrays, check_one_kind, is_pixel_dtype
from . import arrays
from .arrays import ArraySource, _row_runs
from .base import InputOptions, SourceError, is_url, require

SUFFIX = ".zarr"
METADATA = (".zarray", ".zgroup", "zarr.json")  # a folder holding one of these is a store (v2, v3)


def load_zarr():
    """zarr, or a one-line SourceError naming the ``zarr`` extra."""
    return require("zarr", "Zarr stores", "zarr")


def is_zarr_store(path: str) -> bool:
    """A ``*.zarr`` path or URL, or a local folder holding Zarr metadata (a walk asks with a folder's path and a
    trailing separator)."""
    stripped = path.rstrip("/" + os.sep)
    if stripped.lower().endswith(SUFFIX):
        return True
    if is_url(path) or not os.path.isdir(stripped):
        return False
    return any(os.path.isfile(os.path.join(stripped, name)) for name in METADATA)


def _root(path: str) -> str:
    """The store's root as zarr takes it: without trailing separators."""
    return path.rstrip("/" + os.sep) or path


def open_store(path: str, options: InputOptions):
    """A read-only zarr store for a folder or a URL (the URL's filesystem made with the storage options)."""
    load_zarr()
    from zarr.storage import FsspecStore, LocalStore

    if not is_url(path):
        if os.path.exists(_root(path)) and not os.path.isdir(_root(path)):
            raise NotADirectoryError("a file, not a store's folder (zipped Zarr stores are not read yet)")
        if not os.path.isdir(_root(path)):
            raise FileNotFoundError("no such folder")
        return LocalStore(_root(path), read_only=True)
    from .stores import filesystem

    filesystem(path, options)  # fsspec present, the endpoint listens: one line now, not retries later
    return FsspecStore.from_url(_root(path), storage_options=dict(options.storage_options), read_only=True)


def open_array(info: ArrayInfo, options: InputOptions):
    """The zarr array ``info`` names, opened read-only (in the process that reads it)."""
    zarr = load_zarr()
    return zarr.open_array(store=open_store(info.path, options), path=info.member or "", mode="r")


def zarr_arrays(path: str, options: InputOptions, files: dict | None = None) -> list[ArrayInfo]:
    """The numeric arrays of a store (or only ``--key``'s), checked; a damaged store is a
    :class:`DamagedArrayError`, a key it lacks or a misfit option a one-line :class:`SourceError`. ``files``:
    the store's :func:`store_files`, if listed already."""
    zarr = load_zarr()
    try:
        with warnings.catch_warnings():  # zarr's warnings about stray files: Python's lines, not the run's
            warnings.simplefilter("ignore")
            node = zarr.open(store=open_store(path, options), mode="r")
            arrays = _arrays_of(zarr, node)
        names = _chosen(path, arrays, options.key)
        if not names:
            raise DamagedArrayError(f"{path}: holds no array of numbers (arrays: "
                                    f"{', '.join(sorted(name for name in arrays if name)) or 'none'})")
        files = store_files(path, options) if files is None else files
        infos = [_info(path, name, arrays[name], files, options) for name in names]
    except SourceError:  # DamagedArrayError too: a skip entry naming the store
        raise
    except Exception as exc:  # noqa: BLE001 - zarr and the stores raise many types for damaged metadata
        raise DamagedArrayError(f"cannot read {path}: {_describe(path, exc)}") from None
    check_arrays(path, infos, options)
    check_one_kind(path, infos)  # images beside labels: counted together, the labels would be pixels
    return infos


def _describe(path: str, exc: BaseException) -> str:
    """One line for what went wrong: the store's answer for a URL (access denied, HTTP 500), else the error."""
    if is_url(path):
        from .stores import describe_remote_error

        return describe_remote_error(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _arrays_of(zarr, node) -> dict[str | None, object]:
    """Every array of a node by its path in the store (None: the store is one array)."""
    if isinstance(node, zarr.Array):
        return {None: node}
    return {name: member for name, member in node.members(max_depth=None) if isinstance(member, zarr.Array)}


def _chosen(path: str, arrays: dict, key: str | None) -> list:
    """The arrays to count: ``key``'s (a leading ``/`` optional), else every numeric one, sorted."""
    if key is not None:
        wanted = key.strip("/")
        if wanted not in arrays:
            named = ", ".join(sorted(name for name in arrays if name is not None)) or "none: it is one array"
            raise SourceError(f"{path} has no array {key!r} (it has {named})")
        return [wanted]
    return sorted((name for name, array in arrays.items() if _numeric(array)), key=lambda name: name or "")


def _numeric(array) -> bool:
    """Pixel data: numbers of at least one axis (names, strings and scalars beside the images are not)."""
    try:
        dtype = np.dtype(array.dtype)
    except TypeError:  # a zarr data type numpy does not know (variable-length strings)
        return False
    return len(array.shape) >= 1 and is_pixel_dtype(dtype)


def _info(path: str, name: str | None, array, files: dict, options: InputOptions) -> ArrayInfo:
    """One array as an :class:`ArrayInfo` read in whole chunks (shards), refused if its declared sizes are
    over the bounds (see :func:`refusal`), with a note if chunks are not stored."""
    dtype = np.dtype(array.dtype)
    shape = tuple(int(n) for n in array.shape)
    chunks = getattr(array, "shards", None) or array.chunks  # a shard is what one read fetches and decodes
    if any(int(n) < 1 for n in chunks):
        where = f"array {name}" if name else "the array"
        raise DamagedArrayError(f"{path}: damaged metadata: {where} declares chunks of shape {tuple(chunks)}, "
                                "which hold nothing")
    chunks = tuple(int(n) for n in chunks)
    where = f"{path}:{name}" if name else path
    info = ArrayInfo(path, name, dtype, shape, 0, chunk_rows=chunks[0] if chunks else 1, library="zarr",
                     nodata=attribute_nodata(array.attrs, dtype, where))
    stored = sum(size for size, _ in files.values())
    refused = refusal(info, chunks, stored, options)
    if refused is not None:
        return dataclasses.replace(info, refused=refused)
    return dataclasses.replace(info, note=missing_note(path, name, array, chunks, files))


def refusal(info: ArrayInfo, chunks: tuple[int, ...], stored: int, options: InputOptions,
            container: str = "store") -> str | None:
    """Why an array's declared sizes cannot be read, or None: a row over the image bounds, a chunk over the
    bytes-per-file bound, or more data declared than the inflation ratio allows of the ``stored`` bytes (of the
    ``container``: a Zarr store, an HDF5 file)."""
    bound = limits.current()
    if len(info.shape) < 1 or any(n < 0 for n in info.shape) or len(info.shape) > 4:
        return None  # check_arrays says what is wrong with it
    bands = _bands(info.shape, options.channel_axis)
    row = int(np.prod(info.shape[1:], dtype=object))
    declared = info.shape[0] * row * info.dtype.itemsize
    chunk = int(np.prod(chunks, dtype=object)) * info.dtype.itemsize
    ratio_budget = limits.ratio_budget(stored, bound)
    try:
        bound.check_image(row // max(bands, 1), bands, info.dtype.itemsize, what="a row")
        bound.check_file_bytes(chunk, what="a chunk")
    except limits.LimitError as exc:
        return f"declares {exc}"
    if declared > ratio_budget:
        return (f"declares {declared:,} bytes of data in a {container} of {stored:,} bytes, over the bound of "
                f"{ratio_budget:,} (missing chunks read as the fill value: a hostile or empty store? raise it "
                f"with {bound.variable('ratio')})")
    return None


def _bands(shape: tuple[int, ...], channel_axis: int | None) -> int:
    """The channels of a row, as :func:`~bnstats.inputs.arrays.as_images` will find them."""
    if channel_axis is not None and 0 < channel_axis < len(shape):
        return shape[channel_axis]
    return shape[-1] if len(shape) in (2, 4) else 1


def store_files(path: str, options: InputOptions) -> dict[str, tuple[int, str]]:
    """Every file (object) of a store: its name under the store's root (``/``-separated) -> its bytes and its
    version (size and modification time; an object's ETag and size)."""
    if is_url(path):
        from .stores import filesystem, info_version

        fs = filesystem(path, options)
        root = fs._strip_protocol(_root(path))  # as the filesystem names its files: s3's bucket/key, an http URL
        try:
            found = fs.find(root, detail=True)
        except Exception as exc:  # noqa: BLE001 - unreachable, refused: a skip entry naming the store
            raise DamagedArrayError(f"cannot read {path}: {_describe(path, exc)}") from None
        return {name[len(root) + 1 :]: (int(entry.get("size") or 0), info_version(entry))
                for name, entry in found.items() if name.startswith(root + "/")}
    files, root = {}, _root(path)
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            st = os.stat(full)
            files[os.path.relpath(full, root).replace(os.sep, "/")] = (st.st_size, f"{st.st_size} {st.st_mtime_ns}")
    return files


def store_version(files: dict[str, tuple[int, str]]) -> str:
    """What tells a store's versions apart for a resume: a digest of its files' names and versions."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name][1]}\n".encode())
    return f"{len(files)} {digest.hexdigest()}"


def missing_note(path: str, name: str | None, array, chunks: tuple[int, ...], files: dict) -> str | None:
    """One line when the store holds fewer chunks (shards) of an array than its shape has: zarr reads their
    rows as the fill value, and they are counted so; None when every chunk is stored."""
    declared = 1
    for size, chunk in zip(array.shape, chunks):
        declared *= -(-int(size) // chunk)
    prefix = f"{name}/" if name else ""
    stored = sum(1 for file in files if file.startswith(prefix) and not _is_metadata(file.rsplit("/", 1)[-1]))
    if stored >= declared:
        return None
    where = f"{path}:{name}" if name else path
    fill = np.asarray(array.fill_value).item()
    return (f"{where}: {declared - stored:,} of {declared:,} chunks are not in the store: their rows are counted "
            f"as the fill value {fill}, as zarr reads them (Zarr stores no chunk that holds only it; a store "
            "copied in part?)")


def _is_metadata(name: str) -> bool:
    return name.startswith(".") or name == "zarr.json"  # .zarray, .zattrs, .zgroup, .zmetadata; v3's


class ZarrSource(ArraySource):
    """Rows of the arrays of Zarr stores (see the module docstring)."""

    options_read = frozenset({"key", "channel_axis", "storage_options"})
    reads_folders = True

    def lister(self, path: str, options: InputOptions) -> list[ArrayInfo]:
        """The store's arrays (:func:`zarr_arrays`), its files listed once for their bounds and its version."""
        files = store_files(path, options)
        self.__dict__.setdefault("_versions", {})[path] = store_version(files)
        return zarr_arrays(path, options, files)

    @classmethod
    def claims(cls, path: str) -> bool:
        return is_zarr_store(path)

    def __init__(self, paths, options: InputOptions | None = None):
        super().__init__([_root(os.fspath(p)) for p in paths], options)  # store.zarr/ is store.zarr in keys

    def reads_option(self, name: str) -> bool:
        if name == "key":  # any store may be a group of arrays
            return True
        return super(ArraySource, self).reads_option(name)  # Source's rule (storage options: URLs only)

    def list_items(self):
        load_zarr()  # a missing extra stops the run in one line, before any store is listed
        keys = super().list_items()
        notes = (info.note for info in self._arrays.values() if info.note)
        self.listing_notes = sorted([*self.listing_notes, *notes])
        return keys

    def version(self, container: str) -> str:
        """The version of the store as this run listed it (listed now if it was not)."""
        listed = self.__dict__.get("_versions", {}).get(container)
        if listed is not None:
            return listed
        try:
            return store_version(store_files(container, self.options))
        except Exception as exc:  # noqa: BLE001 - unreadable now: the read will say why
            return type(exc).__name__

    def read(self, keys):
        for run in _row_runs(keys):  # consecutive rows of one array
            info, first = self._locate(run[0])
            array = _Opened(info, self.options)  # opened by the first load: a store gone now skips rows, not the run
            yield from self._chunks_of(array, info, first, run)

    def _chunks_of(self, array: "_Opened", info: ArrayInfo, first: int, run) -> Iterator:
        """``(keys, load)`` per chunk of the run; up to BATCH_BYTES of chunks are read by one zarr call (the
        first load of a group), a group that fails is read again chunk by chunk, so a damaged chunk skips its
        rows alone."""
        step = info.chunk_rows
        group_rows = step * max(1, arrays.BATCH_BYTES // max(info.row_bytes * step, 1))
        stop = first + len(run)
        channel_axis = self.options.channel_axis
        groups = [first, *range((first // group_rows + 1) * group_rows, stop, group_rows), stop]
        for group_start, group_stop in zip(groups, groups[1:]):  # on chunk boundaries: group_rows is whole chunks
            read = _GroupRead(array, group_start, group_stop)
            cuts = [group_start, *range((group_start // step + 1) * step, group_stop, step), group_stop]
            for lo, hi in zip(cuts, cuts[1:]):

                def load(lo=lo, hi=hi, read=read):
                    return arrays.row_images(read.rows(lo, hi), channel_axis, info.nodata)

                yield run[lo - first : hi - first], load  # a range of keys (a slice of the run), not a tuple


class _Opened:
    """An array opened when its rows are first read (once for a run of rows), in the process that reads them."""

    def __init__(self, info: ArrayInfo, options: InputOptions):
        self.info, self.options, self._array = info, options, None

    def __getitem__(self, rows: slice) -> np.ndarray:
        if self._array is None:
            self._array = open_array(self.info, self.options)
        return self._array[rows]


class _GroupRead:
    """Rows ``start:stop`` of an array read by one zarr call when first asked for; if that read fails, each
    part asked for is read on its own (the failing chunk fails alone)."""

    def __init__(self, array: _Opened, start: int, stop: int):
        self.array, self.start, self.stop = array, start, stop
        self.data: np.ndarray | None = None
        self.failed = False

    def rows(self, lo: int, hi: int) -> np.ndarray:
        if self.data is None and not self.failed:
            try:
                self.data = self.array[self.start : self.stop]
            except Exception:  # noqa: BLE001 - read again by parts below, where the failure is named
                self.failed = True
        if self.data is not None:
            return self.data[lo - self.start : hi - self.start]
        return self.array[lo:hi]
