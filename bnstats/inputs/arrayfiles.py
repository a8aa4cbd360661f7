"""The array files themselves, for :mod:`bnstats.inputs.arrays`: ``.npy``, ``.npz`` and IDX headers read and
checked (dtype, declared rows against the bytes present, an ``.npz`` member's inflation budget) into
:class:`ArrayInfo`, and rows read from them (memory-mapped, or inflated front to back by a
:class:`RowStream`)."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import os
import re
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from .. import limits
from .base import InputOptions, SourceError, is_url

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
    #: rows the data holds (None: as declared); fewer is a truncated file, whose missing rows are one skip entry
    rows: int | None = None
    #: where the data starts in the file itself when it can be memory-mapped (``.npy``, raw IDX, a stored
    #: ``.npz`` member), else None: a stream to inflate
    mapped: int | None = None
    #: why no row is read (a member over the inflation bound), else None
    refused: str | None = None
    #: times an ``.npz`` stores this member's name (numpy.load and zipfile read the last copy only)
    copies: int = 1
    #: an HDF5 dataset or Zarr array (``member`` its name, None for a store that is one array): the rows of one
    #: chunk (a Zarr shard), read through ``library``; None for other files
    chunk_rows: int | None = None
    #: the library that reads the array's rows: ``"hdf5"`` (h5py) or ``"zarr"``; empty for numpy's files
    library: str = ""
    #: what the user should know of the array, shown as a warning (a Zarr array's chunks that are not stored)
    note: str | None = None
    #: the nodata value its attributes declare (netCDF/CF ``_FillValue``), for
    #: :func:`bnstats.decoding.nodata.declared_options`; None where none is (numpy's files declare none)
    nodata: tuple | None = None

    @property
    def random_access(self) -> bool:
        """Whether any rows can be read without the ones before them (memory-mapped, HDF5, Zarr)."""
        return self.mapped is not None or self.chunk_rows is not None

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def present(self) -> int:
        """The rows that are read: those the data holds, none if refused."""
        if self.refused is not None:
            return 0
        return self.shape[0] if self.rows is None else min(self.rows, self.shape[0])

    def rows_in(self, data_bytes: int) -> int:
        """How many whole rows ``data_bytes`` bytes of data (after the header) hold, at most the declared."""
        if not self.shape or self.row_bytes == 0:  # a scalar (refused later), rows of nothing
            return self.shape[0] if self.shape else 0
        if self.fortran and len(self.shape) > 1:  # column-major: a row needs the whole array
            return self.shape[0] if data_bytes >= self.shape[0] * self.row_bytes else 0
        return min(self.shape[0], max(data_bytes, 0) // self.row_bytes)


HDF5_SUFFIXES = (".h5", ".hdf5")  # read by bnstats.inputs.hdf5


def is_array_file(path: str) -> bool:
    """``.npy``, ``.npz``, HDF5 (``.h5``, ``.hdf5``) or an IDX file name."""
    lower = path.lower()
    return lower.endswith((".npy", ".npz", *HDF5_SUFFIXES)) or bool(_IDX_NAME.search(os.path.basename(path)))


class DamagedArrayError(SourceError):
    """An array file that cannot be counted whatever the options: its header cannot be read or makes no sense
    (cut short, a negative row count), or it holds no pixel data (objects, a scalar, rows of no pixel, more
    than 4 axes). A skip entry naming the file, as a damaged image is, while the other files still count."""


def is_pixel_dtype(dtype) -> bool:
    """Whether arrays of ``dtype`` hold pixel data: integers, floats, booleans (not complex, object or
    structured values)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "uifb" and dtype.fields is None


def _check_dtype(info: ArrayInfo, name: str) -> None:
    if any(n < 0 for n in info.shape):  # numpy's header parser takes (-10, 28, 28): it would list no row
        raise DamagedArrayError(f"{name}: damaged header: shape {info.shape} has a negative size")
    if not is_pixel_dtype(info.dtype):
        raise DamagedArrayError(f"{name}: arrays of {info.dtype} cannot be counted (complex, object and "
                                "structured arrays are not pixel data)")
    if len(info.shape) == 0:
        raise DamagedArrayError(f"{name}: a scalar is not a list of images")
    if len(info.shape) > 4:
        raise DamagedArrayError(f"{name}: an array of shape {info.shape} has more than 4 axes")
    if 0 in info.shape[1:]:  # N images of no pixel: counted as images, they made "images" say N
        raise DamagedArrayError(f"{name}: an array of shape {info.shape} holds images of no pixel")


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
    """The arrays in one file (one, or each of an ``.npz``'s), checked, or a one-line :class:`SourceError`.

    Each records the rows its data holds (:attr:`ArrayInfo.rows`), found from the file's size (the
    member's, the inflated ``.gz``'s) and never from the header alone.
    """
    if is_url(path):
        raise SourceError(f"{path}: array files (.npy, .npz, IDX, HDF5) are read from local files only; copy it "
                          "first (a Zarr store is read from URLs)")
    try:
        if path.lower().endswith(".npz"):
            infos = _npz_arrays(path, options)
        elif path.lower().endswith(".npy"):
            with open(path, "rb") as f:
                dtype, shape, fortran, offset = _npy_header(f)
                size = os.fstat(f.fileno()).st_size
            info = ArrayInfo(path, None, dtype, shape, offset, fortran, mapped=offset)
            infos = [_with_rows(info, size - offset)]
        elif path.lower().endswith(HDF5_SUFFIXES):
            from .hdf5 import hdf5_arrays

            infos = hdf5_arrays(path, options.key, options)
            check_one_kind(path, infos)  # images beside labels: counted together, the labels would be pixels
        else:
            infos = [_idx_array(path)]
    except SourceError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DamagedArrayError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    check_arrays(path, infos, options)
    return infos


def check_arrays(path: str, infos: list[ArrayInfo], options: InputOptions) -> None:
    """Refuse arrays that hold no pixel data (:class:`DamagedArrayError`) or that ``--channel-axis`` does not fit."""
    for info in infos:
        _check_dtype(info, path if info.member is None else f"{path}:{info.member}")
        if options.channel_axis is not None and not 0 < options.channel_axis < max(len(info.shape), 2):
            raise SourceError(f"{path}: --channel-axis {options.channel_axis} does not fit an array of shape "
                              f"{info.shape} (axis 0 is the image index)")


def _with_rows(info: ArrayInfo, data_bytes: int) -> ArrayInfo:
    return dataclasses.replace(info, rows=info.rows_in(data_bytes))


def _npz_arrays(path: str, options: InputOptions) -> list[ArrayInfo]:
    """The arrays of an ``.npz`` (or only ``--key``'s): stored members memory-mapped, compressed ones
    checked against the inflation bound by their declared size before any is inflated."""
    infos = []
    with zipfile.ZipFile(path) as z:
        if not z.infolist() and z.start_dir > 0:  # an end record in the comment: members hidden, not absent
            raise zipfile.BadZipFile(f"its end record lists no member, yet {z.start_dir:,} bytes come before it "
                                     "(damaged, or a second end record in its comment)")
        listed = collections.Counter(n[:-4] for n in z.namelist() if n.endswith(".npy"))
        names = sorted(listed)  # a name stored twice was listed twice, and its last copy counted twice
        if options.key is not None:
            if options.key not in names:
                raise SourceError(f"{path} has no array {options.key!r} (it has {', '.join(names) or 'none'})")
            names = [options.key]
        for name in sorted(names):
            member = z.getinfo(name + ".npy")
            refused = None
            if member.compress_type != zipfile.ZIP_STORED:
                budget = limits.inflate_budget(member.compress_size)
                if member.file_size > budget:
                    refused = (f"declares {member.file_size:,} bytes inflated from {member.compress_size:,}, over "
                               f"the bound of {budget:,} (a decompression bomb? raise it with "
                               f"{limits.current().variable('ratio')} or {limits.current().variable('file_bytes')})")
            with z.open(member) as f:
                dtype, shape, fortran, offset = _npy_header(f)
            stored = member.compress_type == zipfile.ZIP_STORED and not member.flag_bits & 0x1
            mapped = _member_data_start(path, member) + offset if stored else None
            info = ArrayInfo(path, name, dtype, shape, offset, fortran, mapped=mapped, refused=refused,
                             copies=listed[name])
            infos.append(_with_rows(info, member.file_size - offset))
    check_one_kind(path, infos)
    return infos


def check_one_kind(path: str, infos: list[ArrayInfo]) -> None:
    """Refuse a file (``.npz``, HDF5, Zarr) whose arrays are not rows of one kind (images ``x`` and labels
    ``y``): counted together, the labels would be pixels. The message names the arrays and the ``--key``
    to use."""
    if len({len(info.shape) for info in infos}) <= 1:
        return
    images = max(infos, key=lambda info: (len(info.shape), info.row_bytes))
    found = ", ".join(f"{info.member} {tuple(info.shape)}" for info in infos)
    raise SourceError(f"{path} holds arrays of different shapes ({found}): count one with --key "
                      f"{images.member} (or --key NAME for another)")


def _member_data_start(path: str, member: zipfile.ZipInfo) -> int:
    """Where a zip member's bytes start in the file: after its local header (whose name and extra field
    lengths may differ from the central directory's)."""
    with open(path, "rb") as f:
        f.seek(member.header_offset)
        header = f.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header of {member.filename}")
    return member.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


def _idx_array(path: str) -> ArrayInfo:
    """An IDX file's array; a ``.gz`` one is inflated through once to find how many rows it holds
    (its trailer is no help for a truncated file), within the inflation bound."""
    with _open_idx(path) as f:
        dtype, shape, offset = _idx_header(f)
        if not path.lower().endswith(".gz"):
            info = ArrayInfo(path, None, dtype, shape, offset, mapped=offset)
            return _with_rows(info, os.fstat(f.fileno()).st_size - offset)
        info = ArrayInfo(path, None, dtype, shape, offset)
    try:
        held = _inflated_size(path, offset + info.shape[0] * info.row_bytes) - offset
    except limits.LimitError as exc:
        return dataclasses.replace(info, refused=str(exc).removeprefix(path + " "))
    return _with_rows(info, held)


def _inflated_size(path: str, wanted: int) -> int:
    """Bytes a ``.gz`` file inflates to, counted up to ``wanted`` (and within the inflation bound, else
    LimitError): a stream cut short or damaged holds what it inflated before the damage."""
    budget = limits.InflationBudget(os.path.getsize(path), path)
    inflater = zlib.decompressobj(wbits=31)
    held = 0
    with open(path, "rb") as f:
        pending = b""
        while held < wanted and not inflater.eof:
            if not pending:
                pending = f.read(1 << 20)
                if not pending:
                    break
            try:
                out = inflater.decompress(pending, 1 << 20)
            except zlib.error:
                break
            pending = inflater.unconsumed_tail
            held += len(out)
            budget.spend(len(out))
    return min(held, wanted)


def _open_idx(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def read_rows(info: ArrayInfo, start: int, stop: int, stream: "RowStream | None" = None) -> np.ndarray:
    """Rows ``start:stop`` of an array as stored: a view of the memory-mapped data, else read from
    ``stream`` (or a stream opened for them) into memory (counting brings any byte order to the native one,
    once)."""
    if info.library == "hdf5":
        from .hdf5 import read_hdf5_rows

        return read_hdf5_rows(info, start, stop)
    if info.mapped is not None:
        order = "F" if info.fortran else "C"
        data = np.memmap(info.path, info.dtype, "r", info.mapped, (info.present, *info.shape[1:]), order)
        return data[start:stop]  # counted in place: no copy of the rows
    if info.fortran:  # a Fortran-ordered compressed member cannot be read a row at a time
        raise SourceError(f"{info.path}:{info.member} is stored in Fortran order: save it C-ordered")
    if stream is None:
        with RowStream(info) as stream:
            return read_rows(info, start, stop, stream)
    return np.frombuffer(stream.read(start, stop - start), info.dtype).reshape(stop - start, *info.shape[1:])


class RowStream:
    """A compressed array's rows read front to back from one open stream: reading the next rows costs
    only them; rows before the position reopen the stream (inflating from its start again)."""

    def __init__(self, info: ArrayInfo):
        self.info = info
        self._zip = self._file = None
        self._row = 0

    def _open(self) -> None:
        self.close()
        if self.info.member is not None:
            self._zip = zipfile.ZipFile(self.info.path)
            self._file = self._zip.open(self.info.member + ".npy")
        else:
            self._file = _open_idx(self.info.path)
        self._skip(self.info.offset)
        self._row = 0

    def _skip(self, size: int) -> None:
        while size > 0:  # read and drop: a compressed stream has no shortcut
            chunk = self._file.read(min(size, 1 << 22))
            if not chunk:
                raise OSError(f"{self.info.path}: truncated array data")
            size -= len(chunk)

    def read(self, start: int, count: int) -> bytes:
        """The bytes of rows ``start:start + count``."""
        if self._file is None or start < self._row:
            self._open()
        self._skip((start - self._row) * self.info.row_bytes)
        size = count * self.info.row_bytes
        data = self._file.read(size)
        if len(data) < size:
            raise OSError(f"{self.info.path}: truncated array data")
        self._row = start + count
        return data

    def close(self) -> None:
        for f in (self._file, self._zip):
            if f is not None:
                f.close()
        self._zip = self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
