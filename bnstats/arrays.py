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

``uint8``/``uint16`` take the exact path with unit scale 255/65535 as images
do; ``int8``/``int16`` are exact too, in their own units; wider integers,
booleans and floats are counted in float64 in their own units (``max_value``
1). Complex, object and structured arrays are refused.

Item keys are ``FILE:ROW`` (``FILE:ARRAY:ROW`` in an ``.npz``), the row
zero-padded so that keys sort in row order. A task covers a range of rows;
rows are read and counted in batches of a few megabytes.
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from .decode import ArrayImage, default_bands
from .sources import ContainerSource, InputOptions, Partition, SourceError, is_url, register_source

BATCH_BYTES = 4 * 2**20  # rows read and counted at once
IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAME = re.compile(r"idx\d-ubyte(\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class ArrayInfo:
    """Where one array's rows are: its file (and ``.npz`` member), dtype, shape, data offset."""

    path: str
    member: str | None
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    fortran: bool = False

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def is_array_file(path: str) -> bool:
    """``.npy``, ``.npz`` or an IDX file name."""
    lower = path.lower()
    return lower.endswith((".npy", ".npz")) or bool(_IDX_NAME.search(os.path.basename(path)))


def _check_dtype(info: ArrayInfo, name: str) -> None:
    if info.dtype.kind not in "uifb" or info.dtype.fields is not None:
        raise SourceError(f"{name}: arrays of {info.dtype} cannot be counted (complex, object and "
                          "structured arrays are not pixel data)")
    if len(info.shape) == 0:
        raise SourceError(f"{name}: a scalar is not a list of images")
    if len(info.shape) > 4:
        raise SourceError(f"{name}: an array of shape {info.shape} has more than 4 axes")


def _npy_header(f) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    return dtype, tuple(shape), fortran, f.tell()


def _idx_header(f) -> tuple[np.dtype, tuple[int, ...], int]:
    head = f.read(4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_TYPES:
        raise ValueError("not an IDX file (bad magic number)")
    ndim = head[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError("truncated IDX header")
    return np.dtype(IDX_TYPES[head[2]]), tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4)), 4 + 4 * ndim


def list_arrays(path: str, options: InputOptions) -> list[ArrayInfo]:
    """The arrays in one file (one, or each of an ``.npz``'s), checked, or a one-line :class:`SourceError`."""
    if is_url(path):
        raise SourceError(f"{path}: arrays (.npy, .npz, IDX) are read from local files only; copy it first")
    try:
        if path.lower().endswith(".npz"):
            infos = []
            with zipfile.ZipFile(path) as z:
                names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
                if options.key is not None:
                    if options.key not in names:
                        raise SourceError(f"{path} has no array {options.key!r} (it has {', '.join(names) or 'none'})")
                    names = [options.key]
                for name in sorted(names):
                    with z.open(name + ".npy") as f:
                        dtype, shape, fortran, offset = _npy_header(f)
                    infos.append(ArrayInfo(path, name, dtype, shape, offset, fortran))
        elif path.lower().endswith(".npy"):
            with open(path, "rb") as f:
                dtype, shape, fortran, offset = _npy_header(f)
            infos = [ArrayInfo(path, None, dtype, shape, offset, fortran)]
        else:
            with _open_idx(path) as f:
                dtype, shape, offset = _idx_header(f)
            infos = [ArrayInfo(path, None, dtype, shape, offset)]
    except SourceError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SourceError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    for info in infos:
        _check_dtype(info, path if info.member is None else f"{path}:{info.member}")
        if options.channel_axis is not None and not 0 < options.channel_axis < max(len(info.shape), 2):
            raise SourceError(f"{path}: --channel-axis {options.channel_axis} does not fit an array of shape "
                              f"{info.shape} (axis 0 is the image index)")
    return infos


def _open_idx(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def read_rows(info: ArrayInfo, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an array as stored: a view of the memory-mapped ``.npy``, else read into memory
    (counting brings any byte order to the native one, once)."""
    count = stop - start
    shape = (count, *info.shape[1:])
    if info.member is None and info.path.lower().endswith(".npy"):
        return np.load(info.path, mmap_mode="r")[start:stop]  # counted in place: no copy of the rows
    if info.fortran:  # a Fortran-ordered .npz member cannot be read a row at a time
        raise SourceError(f"{info.path}:{info.member} is stored in Fortran order: save it C-ordered")
    opener = (lambda: zipfile.ZipFile(info.path).open(info.member + ".npy")) if info.member else (
        lambda: _open_idx(info.path))
    with opener() as f:
        f.seek(info.offset + start * info.row_bytes)
        data = f.read(count * info.row_bytes)
    if len(data) < count * info.row_bytes:
        raise OSError(f"{info.path}: truncated array data")
    return np.frombuffer(data, info.dtype).reshape(shape)


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

    @classmethod
    def claims(cls, path: str) -> bool:
        return is_array_file(path)

    def __init__(self, paths, options: InputOptions | None = None):
        super().__init__(paths, options)
        self._arrays: dict[str, ArrayInfo] = {}  # key prefix -> array

    def _prefix(self, info: ArrayInfo) -> str:
        return info.path if info.member is None else f"{info.path}:{info.member}"

    def list_items(self) -> list[str]:
        keys = []
        for path in self.paths:
            for info in list_arrays(path, self.options):
                prefix = self._prefix(info)
                self._arrays[prefix] = info
                width = len(str(max(info.shape[0] - 1, 0)))
                keys += [f"{prefix}:{row:0{width}d}" for row in range(info.shape[0])]
        return sorted(keys)

    def _locate(self, key: str) -> tuple[ArrayInfo, int]:
        prefix, row = key.rsplit(":", 1)
        if prefix not in self._arrays:
            for path in self.paths:
                for info in list_arrays(path, self.options):
                    self._arrays[self._prefix(info)] = info
        return self._arrays[prefix], int(row)

    def partitions(self, keys, size):
        # a task is a run of rows of one array; bigger than for files, since rows are cheap
        out = []
        for prefix, run in itertools.groupby(keys, key=lambda key: key.rsplit(":", 1)[0]):
            run = list(run)
            info = self._arrays[prefix]
            rows = max(size, BATCH_BYTES // max(info.row_bytes, 1))
            for i in range(0, len(run), rows):
                part = ArraySource(self.paths, self.options)
                part._arrays = {prefix: info}
                out.append(Partition(part, run[i : i + rows]))
        return out

    def read(self, keys):
        for run in _row_runs(keys):  # consecutive rows of one array: read in slices
            info, first = self._locate(run[0])
            rows_per_batch = max(1, BATCH_BYTES // max(info.row_bytes, 1))
            for i in range(0, len(run), rows_per_batch):
                batch = run[i : i + rows_per_batch]
                start = first + i

                def load(start=start, count=len(batch)):
                    images = as_images(read_rows(info, start, start + count), self.options.channel_axis)
                    return ArrayImage(images, default_bands(images.shape[-1]))

                yield tuple(batch), load


def _row_runs(keys):
    """Runs of keys that are consecutive rows of one array (row − position is constant along a run)."""
    def run_of(item):
        position, key = item
        prefix, row = key.rsplit(":", 1)
        return prefix, int(row) - position

    for _, run in itertools.groupby(enumerate(keys), key=run_of):
        yield [key for _, key in run]


register_source(ArraySource)
