"""A DICOM file's pixels in the modality's units: the rescale (``RescaleSlope``/``RescaleIntercept``, an
enhanced file's functional groups, shared or per frame, an RT Dose's ``DoseGridScaling``), a Modality LUT
Sequence, and what is counted but
said in a note (a ``PixelPaddingValue``, a copy of a slice in its series). PALETTE COLOR indices are refused.
Used by :mod:`bnstats.inputs.dicom`, which reads files and series.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..decoding.image import float_values
from ..decoding.jpeg import check_scans
from .base import require
from .volumes import EXTRA, scaled


def as_notes(*notes) -> tuple | None:
    """Notes on a file or series, carried as an array's declared nodata that is not used
    (:func:`bnstats.decoding.nodata.declared_options` says each), or None."""
    notes = [note for note in notes if note]
    return (notes[0], "DICOM", *notes[1:]) if notes else None


def padding_note(ds) -> str | None:
    """A note where the file declares a ``PixelPaddingValue`` (CT's pixels outside the scanned circle): they are
    counted, as pydicom, nnU-Net and MONAI read them, and the note names the ``--ignore-value`` that leaves them
    out."""
    raw = ds.get("PixelPaddingValue")
    if raw is None or isinstance(raw, (bytes, list)):
        return None
    try:
        slope, inter = one_rescale(ds)
        value = float(raw) * (1.0 if slope is None else slope) + (inter or 0.0)
    except (TypeError, ValueError):
        return None
    shown = f"{value:.0f}" if value.is_integer() and abs(value) < 2**53 else repr(value)
    return (f"a DICOM PixelPaddingValue (padding outside the scanned area, {shown} in the modality's units) is "
            f"counted as pixels: --ignore-value {shown} leaves it out")


def one_rescale(ds) -> tuple[float | None, float | None]:
    """A dataset's ``(RescaleSlope, RescaleIntercept)`` (None where absent), one for all its frames
    (:func:`_frame_rescales`); ValueError where its frames are rescaled differently."""
    rescales = set(_frame_rescales(ds))
    if len(rescales) > 1:
        raise ValueError(f"its frames are rescaled in {len(rescales)} ways (PerFrameFunctionalGroupsSequence): "
                         "name the file on its own to count it")
    return rescales.pop()


def _frame_rescales(ds) -> list[tuple[float | None, float | None]]:
    """The rescale of each frame, or one for all: the file's own ``RescaleSlope``/``RescaleIntercept``, else an
    enhanced (multi-frame) file's ``PixelValueTransformationSequence`` in its shared functional groups, else in
    each frame's."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return [_rescale_of(ds)]
    shared = _transformation(ds.get("SharedFunctionalGroupsSequence"))
    if shared is not None:
        return [_rescale_of(shared)]
    frames = [_transformation([group]) for group in ds.get("PerFrameFunctionalGroupsSequence") or ()]
    if frames and all(frame is not None for frame in frames):
        return [_rescale_of(frame) for frame in frames]
    if ds.get("DoseGridScaling") not in (None, ""):  # RT Dose: stored integers × the scaling are doses (Gy)
        return [_rescale_of(ds, ("DoseGridScaling", None))]
    return [_rescale_of(ds)]


def _transformation(groups):
    """The item of a functional group sequence's ``PixelValueTransformationSequence`` that holds a rescale."""
    for group in groups or ():
        for item in group.get("PixelValueTransformationSequence") or ():
            if "RescaleSlope" in item or "RescaleIntercept" in item:
                return item
    return None


def modality_values(ds) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A file's pixels in the modality's units: stored and one scaling (:func:`scaled`), or frames rescaled
    each by its own (an enhanced MR's) as float64 values."""
    stored, rescales = stored_samples(ds), _frame_rescales(ds)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        raise ValueError("its pixels are PALETTE COLOR indices, not values: export it as RGB to count its colours")
    if "ModalityLUTSequence" in ds and not (len(rescales) == 1 and rescales[0] != (None, None)):
        # a lookup table, not a rescale, gives the modality's units (some MG, XA): pydicom applies it
        values = require("pydicom", "DICOM files", EXTRA).pixels.apply_modality_lut(stored, ds)
        return scaled(values, None, None) if values.dtype.kind in "iu" and values.dtype.itemsize <= 2 else (
            values.astype(np.float64), None)
    if len(set(rescales)) == 1:
        return scaled(stored, *rescales[0])
    if len(rescales) != len(stored):
        raise ValueError(f"declares the rescale of {len(rescales)} frames for {len(stored)}: damaged header")
    return np.stack([float_values(*scaled(frame, *rescale)) for frame, rescale in zip(stored, rescales)]), None


def _rescale_of(ds, names=("RescaleSlope", "RescaleIntercept")) -> tuple[float | None, float | None]:
    """The ``(RescaleSlope, RescaleIntercept)`` of a dataset or functional group item (None where absent; other
    ``names`` of a slope and an intercept, None for none); ValueError for a rescale that makes no values: a
    slope of 0 (every pixel the intercept), a value that is not one finite number."""
    out = []
    for k, name in enumerate(names):
        raw = None if name is None else ds.get(name)
        if raw is None or raw == "":
            out.append(None)
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"its {name} {str(raw)[:40]!r} is not one number: damaged header") from None
        if not math.isfinite(value) or (k == 0 and value == 0):
            raise ValueError(f"its {name} {str(raw)[:40]!r} makes no values (a slope must be finite and not 0, "
                             "an intercept finite): damaged header")
        out.append(value)
    return out[0], out[1]


def size(ds) -> tuple[int, int, int, int]:
    """``(frames, rows, columns, samples)`` a dataset declares."""
    return int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1)


def stored_samples(ds) -> np.ndarray:
    """A dataset's stored samples; ValueError for Pixel Data past the declared frames (pydicom hands them out
    as more frames)."""
    frames, rows, columns, samples = size(ds)
    check_jpeg_frames(ds, frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stored = ds.pixel_array
    if stored.size != frames * rows * columns * samples:
        raise ValueError(f"holds {stored.size:,} samples where its header declares {frames} frame(s) of "
                         f"{rows}x{columns}x{samples}: damaged")
    return stored


def copies_note(slices) -> str | None:
    """A note where two files of a series are one image — a copy of a slice: one SOPInstanceUID,
    InstanceNumber, position and rescale, the same pixel bytes — counted twice, as its files are there.
    (Files written from one template share a SOPInstanceUID; their numbers, places or pixels differ.)"""
    seen = {}
    for name, ds in slices:
        key = tuple(str(ds.get(k, "")) for k in ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient",
                                                 "RescaleSlope", "RescaleIntercept"))
        other = seen.setdefault(key, (name, ds))
        if other[0] != name and other[1].get("PixelData") == ds.get("PixelData"):
            return (f"a DICOM series holds one slice twice ({other[0]} and {name}: one SOPInstanceUID, place and "
                    "pixels), counted twice: remove the copy")
    return None


def generate_frames(buffer, number_of_frames: int):
    """The frames of encapsulated Pixel Data (pydicom's :func:`pydicom.encaps.generate_frames`)."""
    from pydicom.encaps import generate_frames as frames_of

    return frames_of(buffer, number_of_frames=number_of_frames)


def check_jpeg_frames(ds, frames: int) -> None:
    """Refuse encapsulated JPEG frames of more scans than the bound before pydicom's decoder (libjpeg, through
    Pillow or a plugin) passes over the whole frame once per scan (:func:`~bnstats.decoding.jpeg.check_scans`:
    a 129 KB frame of 3,000 empty scans took 4 s, more scans or pixels longer)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_encapsulated or "PixelData" not in ds:
        return
    try:
        parts = list(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception:  # noqa: BLE001 - damaged encapsulation: pydicom's decoding names the error
        return
    for frame in parts:
        if frame[:2] == b"\xff\xd8":
            check_scans(frame)
