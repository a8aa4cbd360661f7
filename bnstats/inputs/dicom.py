"""DICOM files (``.dcm``) as inputs, read with pydicom: a series folder is one item (a volume), a file named on
its own is one item (a multi-frame file, all its frames).

The DICOM files a folder walk finds are grouped by folder: a folder's files
are one series, one item keyed ``FOLDER/``, its slices stacked in the order
of their position along the slice normal (``ImagePositionPatient`` on the
normal of ``ImageOrientationPatient``; else ``InstanceNumber``; else the file
name). A folder whose files belong to several series, or whose slices
differ in size, is a skip entry naming it (name the files instead: each is
then an item); a slice that cannot be read makes its series a skip entry.

Values are in the modality's units (:mod:`bnstats.inputs.dicomvalues`):
``RescaleSlope``/``RescaleIntercept`` applied (CT in Hounsfield units). Stored 8/16-bit samples, signed or not,
whose rescaled values are whole numbers that fit 16 bits (slope 1, a whole
intercept: CT's ``-1024``) are counted exactly as 16-bit signed integers;
with any other rescale as scaled integers, exactly in the rescaled units
(``bnstats.statistics.scaled``); a series whose slices are rescaled
differently, and 32-bit samples, as float data. Colour files are
``R G B`` (pydicom's conversion from YCbCr), one-sample files ``L``.
Uncompressed and RLE transfer syntaxes are read by pydicom itself; JPEG,
JPEG 2000 and JPEG-LS need pydicom's plugins, and without them the file is
a skip entry naming what to install. Resize and center crop do not apply
(a multi-frame file is a volume) and are refused in one line.

The declared size (rows × columns × frames × samples) is checked against
the limits before any pixel is decoded, and a file of the deflated transfer
syntax (pydicom inflates its whole dataset at once) is inflated in pieces and
counted against the inflation bounds first. Needs the ``medical`` extra
(``pip install "bnstats[medical]"``).
"""

from __future__ import annotations

import collections
import functools
import io
import os
import stat
import struct
import warnings
import zlib

import numpy as np

from .. import limits
from ..decoding.image import ArrayImage, float_values
from .base import require
from .reads import read_file
from . import dicomvalues as dv
from .volumes import EXTRA, VolumeSource

SUFFIXES = (".dcm", ".dicom")


def _dataset(path: str, headers_only: bool = False):
    """pydicom's dataset of the file ``path``, read through :func:`~bnstats.inputs.reads.read_file`: a regular
    file within ``BNSTATS_MAX_FILE_BYTES`` (a FIFO named ``x.dcm`` never blocks the run); pydicom's warnings
    become the run's notes, never lines past ``-q``."""
    pydicom = require("pydicom", "DICOM files", EXTRA)
    data = read_file(path)
    check_deflated(data, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=headers_only)


DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def check_deflated(data: bytes, path: str) -> None:
    """Refuse a DICOM file of the deflated transfer syntax whose dataset inflates past the inflation bounds,
    inflating it in pieces and keeping none: pydicom inflates it whole (a 917 KB file of a 900 MB private
    element took 1.9 GB). Other files, and files whose meta group cannot be found, are pydicom's to judge."""
    if data[128:132] != b"DICM" or data[132:138] != b"\x02\x00\x00\x00UL":
        return
    (meta_length,) = struct.unpack_from("<I", data, 140)
    start = 144 + meta_length
    if DEFLATED not in data[144:start]:
        return
    budget = limits.inflate_budget(len(data) - start)
    inflater, rest, total = zlib.decompressobj(-zlib.MAX_WBITS), data[start:], 0
    while rest and not inflater.eof:
        try:
            total += len(inflater.decompress(rest, 1 << 20))
        except zlib.error:
            return  # damaged: pydicom names the error
        rest = inflater.unconsumed_tail
        if total > budget:
            bound = limits.current()
            raise limits.LimitError(f"its deflated dataset inflates to over {budget:,} bytes (a "
                                    f"decompression bomb? raise it with {bound.variable('ratio')} or "
                                    f"{bound.variable('file_bytes')})")


def read_dicom(path: str) -> ArrayImage:
    """The pixels of a DICOM file in the modality's units, as one image ``(1, pixels, samples)``."""
    ds = _dataset(path)
    if "PixelData" not in ds:
        raise ValueError("holds no image (no Pixel Data)")
    frames, rows, columns, samples = dv.size(ds)
    limits.current().check_image(rows * columns * frames, samples, max(1, int(ds.BitsAllocated) // 8), "DICOM image")
    shape = (frames, rows, columns) if frames > 1 else (rows, columns)
    values, scale = dv.modality_values(ds)
    return ArrayImage(values.reshape(1, -1, samples), _bands(samples), shape, scale=scale,
                      nodata=dv.as_notes(dv.padding_note(ds)))


def _bands(samples: int) -> tuple[str, ...]:
    return ("R", "G", "B") if samples == 3 else ("L",) if samples == 1 else tuple(f"C{i}" for i in range(samples))


def read_series(folder: str) -> ArrayImage:
    """The slices of a series folder as one volume ``(1, voxels, samples)``, in the modality's units (each
    slice rescaled by its own slope and intercept), stacked along the slice normal."""
    names = _slice_files(folder)
    slices = []  # each file read once: its header decides, its pixels are decoded in the series' order
    for name in names:
        try:
            ds = _dataset(os.path.join(folder, name))
        except Exception as exc:  # noqa: BLE001 - pydicom's many errors for a damaged file
            raise ValueError(f"slice {name}: {type(exc).__name__}: {exc}") from None
        if "Rows" in ds and "Columns" in ds:  # a DICOMDIR, a report: no image of the series
            slices.append((name, ds))
    if not slices:
        raise ValueError("holds no DICOM image")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise ValueError(f"holds {len(series)} series: name their files (each is then an item) or give each "
                         "series a folder of its own")
    copies = dv.copies_note(slices)
    sizes = {dv.size(ds)[1:] for _, ds in slices}
    if len(sizes) != 1:
        raise ValueError(f"holds slices of {len(sizes)} sizes ({', '.join(f'{r}x{c}' for r, c, _ in sorted(sizes))})")
    rows, columns, samples = sizes.pop()
    frames = sum(dv.size(ds)[0] for _, ds in slices)
    limits.current().check_image(rows * columns * frames, samples, max(1, int(slices[0][1].BitsAllocated) // 8),
                                 "DICOM series")
    planes, scales = [], []
    slices.sort(key=_slice_order)
    affine = _series_affine([ds for _, ds in slices])
    for name, ds in slices:
        try:
            if "PixelData" not in ds:
                raise ValueError("holds no image (no Pixel Data)")
            plane, scale = dv.modality_values(ds)
            planes.append(plane.reshape(-1, samples))
            scales.append(scale)
        except Exception as exc:  # noqa: BLE001 - one slice that cannot be read: the series is no volume
            raise ValueError(f"slice {name}: {type(exc).__name__}: {exc}") from None
        del ds.PixelData  # its bytes go as soon as they are decoded
    if len(set(scales)) == 1 and len({p.dtype for p in planes}) == 1:  # one storage and scaling: as stored
        values, scale = np.concatenate(planes), scales[0]
    else:  # slices stored or scaled differently (MR rescales slice by slice): each slice's values, as float data
        values = np.concatenate([float_values(p, s) for p, s in zip(planes, scales)])
        scale = None
    padding = next((note for note in map(dv.padding_note, (ds for _, ds in slices)) if note is not None), None)
    return ArrayImage(values.reshape(1, -1, samples), _bands(samples), (frames, rows, columns), affine,
                      scale=scale, nodata=dv.as_notes(padding, copies))


def _slice_files(folder: str) -> list[str]:
    """The names of a series folder's DICOM files, sorted."""
    paths = {n: os.path.join(folder, n) for n in os.listdir(folder) if not n.startswith(".")}
    return sorted(n for n, path in paths.items() if _is_file(path) and DicomSource.claims(path))


def _is_index(name: str) -> bool:
    """Whether a file is a DICOMDIR: the index of a CD or PACS export (DICOM's own name for it), no image."""
    return name.upper() == "DICOMDIR"


def placement(path: str) -> tuple:
    """Where the slices of a series folder, or the frames of a file, lie: :func:`series_placement` of a
    folder; a file's frames and their positions (an enhanced multi-frame file's per-frame positions,
    orientation and spacing), which a mask file must share to pair frame for frame."""
    if os.path.isdir(path):
        return series_placement(path)
    ds = _dataset(path, headers_only=True)
    return dv.size(ds)[0], _frame_positions(ds)


def _frame_positions(ds) -> tuple:
    """The per-frame positions of an enhanced multi-frame file, with the orientation and spacing shared or
    per frame (rounded to a ten-thousandth), in frame order; () where it declares none."""
    def geometry(groups) -> tuple:
        values = []
        for sequence, keyword in (("PlanePositionSequence", "ImagePositionPatient"),
                                  ("PlaneOrientationSequence", "ImageOrientationPatient"),
                                  ("PixelMeasuresSequence", "PixelSpacing")):
            items = groups.get(sequence) or []
            values.append(tuple(round(float(v), 4) for v in (items[0].get(keyword) or ())) if items else ())
        return tuple(values)

    try:
        shared = [geometry(g) for g in (ds.get("SharedFunctionalGroupsSequence") or [])]
        return tuple(shared) + tuple(geometry(g) for g in (ds.get("PerFrameFunctionalGroupsSequence") or []))
    except (TypeError, ValueError, AttributeError):
        return ("unreadable positions",)


def series_placement(folder: str) -> tuple:
    """Where each slice of a series folder lies, in the order :func:`read_series` stacks them: what two series
    without one affine (no positions, uneven ones, multi-frame slices) must share to pair voxel for voxel
    (``--mask``). Each slice's frames and its place (position, orientation and spacing; else its instance
    number; else its file name), its file name too where its place ties with another's (their order is then
    the names'). Reads headers only; ValueError for a folder that cannot be read."""
    slices = []
    for name in _slice_files(folder):
        try:
            ds = _dataset(os.path.join(folder, name), headers_only=True)
        except Exception as exc:  # noqa: BLE001 - pydicom's many errors for a damaged file
            raise ValueError(f"slice {name}: {type(exc).__name__}: {exc}") from None
        if "Rows" in ds and "Columns" in ds:
            slices.append((name, ds))
    slices.sort(key=_slice_order)
    places = [_place(ds, _slice_order(named)) for named in slices for ds in (named[1],)]
    tied = {place for place, count in collections.Counter(places).items() if count > 1}
    return tuple((*place, name if place in tied else None) for place, (name, _) in zip(places, slices))


def _place(ds, order: tuple) -> tuple:
    """A slice's frames and its place: position, orientation and spacing (rounded to a ten-thousandth), else
    its instance number, else nothing (its file name orders it)."""
    frames = dv.size(ds)[0]
    if frames > 1:  # a multi-frame slice: its frames' places too
        frames = (frames, _frame_positions(ds))
    if order[0] != 0:
        return frames, order[0], order[1]
    geometry = [ds.get(k) for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")]
    try:
        return frames, 0, tuple(round(float(v), 4) for values in geometry if values is not None for v in values)
    except (TypeError, ValueError):
        return frames, 0, order[1]


def _series_affine(headers) -> tuple | None:
    """The voxel-to-patient affine of a series' voxels in their order here (slice, row, column): what a mask
    series must share to pair voxel for voxel (``--mask``). None where the headers do not give one (no
    position, orientation or spacing; multi-frame slices; positions not evenly spaced along one line)."""
    try:
        if any(dv.size(ds)[0] != 1 for ds in headers):
            return None
        along_row, along_column = np.asarray(headers[0].ImageOrientationPatient, float).reshape(2, 3)
        row_spacing, column_spacing = np.asarray(headers[0].PixelSpacing, float)
        positions = np.array([np.asarray(ds.ImagePositionPatient, float) for ds in headers])
        planes = {(tuple(np.asarray(ds.ImageOrientationPatient, float)), tuple(np.asarray(ds.PixelSpacing, float)))
                  for ds in headers}
    except (AttributeError, ValueError, TypeError):
        return None
    if len(planes) != 1:  # slices of other orientations or spacings: no one grid (each slice's place pairs them)
        return None
    if positions.shape != (len(headers), 3) or not np.all(np.isfinite(positions)):
        return None
    step = positions[1] - positions[0] if len(headers) > 1 else np.cross(along_row, along_column)
    if not np.linalg.norm(step) > 0:  # slices at one place (echoes, phases): no grid
        return None
    if not np.allclose(np.diff(positions, axis=0), step, rtol=0, atol=1e-3 * max(np.linalg.norm(step), 1e-9)):
        return None
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = step, along_column * row_spacing, along_row * column_spacing
    affine[:3, 3] = positions[0]
    return tuple(map(tuple, affine.tolist())) if np.all(np.isfinite(affine)) else None


def _is_file(path: str) -> bool:
    """A regular file (following links): a FIFO, a device or a folder named like a slice is no slice."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _slice_order(named) -> tuple:
    """A slice's place in its series: its position along the slice normal, else its instance number, else its
    file name."""
    name, header = named
    try:
        row, column = np.asarray(header.ImageOrientationPatient, float).reshape(2, 3)
        return (0, float(np.dot(np.cross(row, column), np.asarray(header.ImagePositionPatient, float))), name)
    except (AttributeError, ValueError, TypeError):
        pass
    try:
        return (1, float(header.InstanceNumber), name)
    except (AttributeError, ValueError, TypeError):
        return (2, 0.0, name)


def has_dicom_preamble(path: str) -> bool:
    """Whether ``path`` is a regular file with DICOM's preamble (``DICM`` at byte 128): how a DICOM file without
    an extension (a PACS export's ``IM000123``) is told from other files."""
    if not _is_file(path):  # a folder, a FIFO, a device: never opened
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # swapped for a FIFO since: no block
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.pread(fd, 4, 128) == b"DICM"
    except OSError:
        return False
    finally:
        os.close(fd)


class DicomSource(VolumeSource):
    """``.dcm`` files named directly (one item each) or found in folders (a series folder: one item); files
    without an extension that hold DICOM's preamble too."""

    suffixes, library, what = SUFFIXES, "pydicom", "DICOM files"
    reader = staticmethod(read_dicom)

    @classmethod
    def claims(cls, path: str) -> bool:
        if super().claims(path):
            return True
        name = os.path.basename(str(path))
        return bool(name) and "." not in name and not _is_index(name) and has_dicom_preamble(path)

    def list_items(self):
        keys = super().list_items()
        if not self.found_under:  # files named on their own: one item each
            return keys
        # found in a folder walk: one item a folder (a series), keyed FOLDER/ (sorted as the folder's files were)
        return sorted({os.path.dirname(key) + os.sep for key in keys})

    def class_of(self, key: str) -> str:
        # a series folder's class is its files' (the top-level folder above them, as for images)
        return super().class_of(os.path.join(key, "slice") if key.endswith(os.sep) else key)

    def read(self, keys):
        for key in keys:
            reader = read_series if key.endswith(os.sep) else type(self).reader
            yield (key,), functools.partial(reader, os.path.join(self.base, key))
