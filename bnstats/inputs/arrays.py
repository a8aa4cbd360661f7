"""Numpy and IDX arrays as inputs: one row of an array is one image.

``.npy`` files are memory-mapped and read in slices of rows; ``.npz`` files
hold several arrays (every one is counted, or only ``--key NAME``), each read
as a stream from the zip; IDX files (``train-images-idx3-ubyte``, optionally
``.gz``: MNIST, Fashion-MNIST, KMNIST, EMNIST) are read the same way. No
array is ever loaded whole.

Shapes, with the channels last unless ``--channel-axis`` says otherwise:

* ``(N, H, W, C)``: N images of C channels (``--channel-axis 1`` for
  ``(N, C, H, W)``);
* ``(N, H, W)``: N one-channel images;
* ``(N, C)``: N tabular rows, each one "pixel" of C channels;
* ``(N,)``: N values, one channel.

Channels are named as an image's (``L``, ``R G B``, ``R G B A``, ``B1..Bn``),
but a float array of 4 channels as ``C0..C3`` (see :func:`array_bands`).

``uint8``/``uint16`` take the exact path with unit scale 255/65535 as images
do; ``int8``/``int16`` are exact too, in their own units; wider integers,
booleans and floats are counted in float64 in their own units (``max_value``
1). Complex, object and structured arrays are refused.

Item keys are ``FILE:ROW`` (``FILE:ARRAY:ROW`` in an ``.npz``), the row
zero-padded so that keys sort in row order. A task covers a range of rows;
rows are read and counted in batches of a few megabytes.

A header's row count is checked against the bytes the file (or ``.npz``
member, or inflated ``.gz``) holds before any row is listed: the rows
present are counted, and the rows missing are one skip entry naming their
range, ``FILE:FIRST-LAST`` (keys' zero-padding), "file ends after row N of M
declared (truncated?)". A compressed ``.npz`` member that declares more than
:func:`bnstats.limits.inflate_budget` of its compressed size is one skip
entry, unread. ``.npy`` files, raw IDX files and stored (uncompressed)
``.npz`` members are memory-mapped; a compressed member or ``.gz`` IDX is
inflated once per task, front to back, and cut into at most
:data:`COMPRESSED_TASKS` tasks (each inflates from the start of the stream
to its rows).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..decoding.image import ArrayImage, array_bands
from .arrayfiles import ArrayInfo, DamagedArrayError, RowStream, is_array_file, list_arrays, read_rows
from .base import InputOptions, Partition
from .containers import ContainerSource
from .keys import KeyChain, RowKeys, sorted_ranges

BATCH_BYTES = 4 * 2**20  # rows read and counted at once
NAMED = 10  # arrays a note names, at most
# a compressed stream is inflated from its start by every task that reads it: few tasks, so the stream
# is inflated about (COMPRESSED_TASKS + 1) / 2 times in all (once per 4 MiB batch took 80x the .npy's time)
COMPRESSED_TASKS = 4


def as_images(rows: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Rows of any supported shape as ``(N, H, W, C)`` images (see the module docstring)."""
    if channel_axis is not None and channel_axis != rows.ndim - 1:
        rows = np.moveaxis(rows, channel_axis, -1)
    if rows.ndim == 1:
        return rows.reshape(-1, 1, 1, 1)
    if rows.ndim == 2:
        return rows.reshape(rows.shape[0], 1, 1, rows.shape[1])
    if rows.ndim == 3:
        return rows[..., None] if channel_axis is None else rows.reshape(rows.shape[0], 1, *rows.shape[1:])
    return rows


class ArraySource(ContainerSource):
    """Rows of ``.npy``, ``.npz`` and IDX arrays (see the module docstring)."""

    options_read = frozenset({"key", "channel_axis"})
    #: ``(path, options) -> [ArrayInfo]``: the checked arrays of one input (a subclass reads other containers)
    lister = staticmethod(list_arrays)

    def reads_option(self, name: str) -> bool:
        if name == "key":  # the array of an .npz or HDF5 file: an .npy or IDX file holds one array, of no name
            return any(path.lower().endswith((".npz", ".h5", ".hdf5")) for path in self.paths)
        return super().reads_option(name)

    @classmethod
    def claims(cls, path: str) -> bool:
        return is_array_file(path)

    def __init__(self, paths, options: InputOptions | None = None):
        super().__init__(paths, options)
        self._arrays: dict[str, ArrayInfo] = {}  # key prefix -> array

    def _prefix(self, info: ArrayInfo) -> str:
        return info.path if info.member is None else f"{info.path}:{info.member}"

    def list_items(self) -> Sequence[str]:
        keys, errors, notes = [], [], []
        for path, infos in self.inspected(self.lister, DamagedArrayError, errors):
            if len(infos) > 1:  # said, never silent: images and masks of one shape would be counted together
                names = ", ".join(str(info.member) for info in infos[:NAMED])  # a file of 20,000 datasets: 1 line
                names += f", and {len(infos) - NAMED:,} more" if len(infos) > NAMED else ""
                notes.append(f"{path}: {len(infos)} arrays counted together ({names}); --key NAME counts one")
            for info in infos:
                prefix = self._prefix(info)
                self._arrays[prefix] = info
                keys.append(RowKeys(prefix, _width(info), 0, info.present))
                missing = _missing(info, prefix)
                if missing is not None:
                    errors.append(missing)
                if info.copies > 1:
                    errors.append({"path": prefix, "error": f"the .npz stores {info.member}.npy {info.copies} "
                                   "times: only the last copy is counted (as numpy.load reads it)"})
        self.listing_errors = sorted(errors, key=lambda e: e["path"])
        self.listing_notes = notes
        return sorted_ranges(keys)

    def _locate(self, key: str) -> tuple[ArrayInfo, int]:
        prefix, row = key.rsplit(":", 1)
        if prefix not in self._arrays:
            for path in self.paths:
                try:
                    infos = self.lister(path, self.options)
                except DamagedArrayError:  # listed as a skip entry, no key of it is read
                    continue
                for info in infos:
                    self._arrays[self._prefix(info)] = info
        return self._arrays[prefix], int(row)

    def partitions(self, keys, size):
        # a task is a run of rows of one array; bigger than for files, since rows are cheap. Tasks are cut at
        # multiples of a row count of the array's own, so a resumed run cuts the rest as the first run did
        out = []
        for run in _row_runs(keys):
            prefix = run.prefix if isinstance(run, RowKeys) else run[0].rsplit(":", 1)[0]
            info = self._arrays[prefix]
            rows = max(size, BATCH_BYTES // max(info.row_bytes, 1))
            if not info.random_access:  # a stream: each task inflates it from the start, so few tasks
                rows = max(rows, -(-info.present // COMPRESSED_TASKS))
            elif info.chunk_rows:  # whole chunks per task (HDF5, Zarr): no chunk decompressed by two
                rows = -(-rows // info.chunk_rows) * info.chunk_rows
            first = _first_row(run)
            cuts = [first, *range((first // rows + 1) * rows, first + len(run), rows), first + len(run)]
            for lo, hi in zip(cuts, cuts[1:]):
                part = type(self)([info.path], self.options)  # its own file: never every path named, per task
                part._arrays = {prefix: info}
                out.append(Partition(part, run[lo - first : hi - first]))
        return out

    def read(self, keys):
        for run in _row_runs(keys):  # consecutive rows of one array: read in slices
            info, first = self._locate(run[0])
            run = run if isinstance(run, RowKeys) else list(run)
            # one stream for the run: each batch inflates only its own rows (the loads are called in order)
            stream = RowStream(info) if not info.random_access else None
            try:
                for lo, hi in _batches(info, first, len(run)):
                    batch = run[lo - first : hi - first]
                    start = lo

                    def load(start=start, count=len(batch)):
                        rows = read_rows(info, start, start + count, stream)
                        return row_images(rows, self.options.channel_axis, info.nodata)

                    yield batch, load  # a range of keys, never a tuple of them: 4 MiB of rows are 262,144 keys
            finally:
                if stream is not None:
                    stream.close()


def _batches(info: ArrayInfo, first: int, count: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the batches of rows ``first:first + count``: BATCH_BYTES of rows each, or for HDF5
    whole chunks where a chunk holds more rows than that: h5py inflates a whole chunk for any slice of it, so a
    chunk of 256 rows read 4 rows at a time was inflated 64 times (60 MB of file: 56 s). The chunk is one batch,
    at most the bytes-per-file bound (:func:`bnstats.inputs.zarr.refusal`), as a Zarr chunk is."""
    rows = max(1, BATCH_BYTES // max(info.row_bytes, 1))
    stop = first + count
    if info.library == "hdf5" and info.chunk_rows and info.chunk_rows > rows:
        rows = info.chunk_rows
        cuts = [first, *range((first // rows + 1) * rows, stop, rows), stop]  # on the chunks' boundaries
    else:
        cuts = [*range(first, stop, rows), stop]
    return list(zip(cuts, cuts[1:]))


def row_images(rows: np.ndarray, channel_axis: int | None = None, nodata: tuple | None = None) -> ArrayImage:
    """Rows of an array as a batch of images ``(N, H, W, C)``, named by :func:`array_bands`; ``nodata``: the
    value the array declares (:attr:`ArrayInfo.nodata`)."""
    images = as_images(rows, channel_axis)
    return ArrayImage(images, array_bands(images.dtype, images.shape[-1]), nodata=nodata)


def _width(info: ArrayInfo) -> int:
    """Digits of a row number in keys: those of the last declared row."""
    return len(str(max(info.shape[0] - 1, 0)))


def _missing(info: ArrayInfo, prefix: str) -> dict | None:
    """The one skip entry for an array's rows that cannot be read (``PREFIX:FIRST-LAST``), or None."""
    declared, present = info.shape[0], info.present
    if present >= declared:
        return None
    width = _width(info)
    where = f"{prefix}:{present:0{width}d}-{declared - 1:0{width}d}"
    if info.refused is not None:
        return {"path": prefix, "error": info.refused}
    holder = "member" if info.member is not None else "file"
    ends = f"ends after row {present - 1:,}" if present else "holds no whole row"
    return {"path": where, "error": f"{holder} {ends} of {declared:,} declared (truncated?)"}


def _first_row(run) -> int:
    return run.start if isinstance(run, RowKeys) else int(run[0].rsplit(":", 1)[1])


def _row_runs(keys):
    """Runs of keys that are consecutive rows of one array: the ranges themselves when ``keys`` is a range or
    a chain of ranges, else found key by key (row − position is constant along a run)."""
    parts = keys.parts if isinstance(keys, KeyChain) else (keys,)
    for part in parts:
        if isinstance(part, RowKeys):
            yield part
            continue

        def run_of(item):
            position, key = item
            prefix, row = key.rsplit(":", 1)
            return prefix, int(row) - position

        for _, run in itertools.groupby(enumerate(part), key=run_of):
            yield [key for _, key in run]
