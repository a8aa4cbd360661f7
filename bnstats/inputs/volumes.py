"""The base of file kinds read by a scientific library, one file one item: :class:`VolumeSource`.

NIfTI and DICOM files are named like image files and found in folders like
them, so they keep image files' keys, identities, classes, checkpoints and
merge coverage (:class:`~bnstats.inputs.files.FileSource`); a kind adds
its suffixes, the library it needs and the function that reads one file.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import numpy as np

from ..decoding.image import float_values
from .base import require
from .files import FileSource

EXTRA = "medical"  # the extra that brings the libraries of these kinds


class VolumeSource(FileSource):
    """Files of ``suffixes``, each read whole by ``reader(path)`` into an ArrayImage (needs ``library``)."""

    volumes = True
    suffixes: tuple[str, ...] = ()
    #: the module the kind reads with, and what it reads (its name in the missing-extra message)
    library = ""
    what = ""
    reader: Callable = None

    @classmethod
    def claims(cls, path: str) -> bool:
        return str(path).lower().endswith(cls.suffixes)

    def list_items(self):
        require(self.library, self.what, EXTRA)  # a missing extra stops the run in one line, before any item is listed
        return super().list_items()

    def read(self, keys):
        for key in keys:
            yield (key,), functools.partial(type(self).reader, os.path.join(self.base, key))


def rescaled(stored: np.ndarray, slope, intercept) -> np.ndarray:
    """``stored * slope + intercept`` (DICOM's rescale, NIfTI's ``scl_slope``/``scl_inter``): 16-bit signed
    integers when the results are whole numbers that fit (counted exactly), else float64; the stored samples as
    they are without a rescale."""
    slope = 1.0 if slope is None else float(slope)
    intercept = 0.0 if intercept is None else float(intercept)
    if slope == 1.0 and intercept == 0.0:
        return stored
    if slope == 1.0 and intercept.is_integer() and stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2:
        shift = int(intercept)
        # the range from the stored extremes, then one pass into int16 (no int32 copy of the pixels)
        if stored.size == 0 or (int(stored.min()) + shift >= -(2**15) and int(stored.max()) + shift < 2**15):
            return np.add(stored, shift, dtype=np.int32, out=np.empty(stored.shape, np.int16), casting="unsafe")
    return float_values(stored, (slope, intercept))


def scaled(stored: np.ndarray, slope, intercept) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The pixels to count of ``stored`` samples and their scaling ``(slope, intercept)``: as
    :func:`rescaled` where that gives the stored samples or whole 16-bit numbers (no scaling: None); stored
    8/16-bit integers with any other scaling as they are, with it (counted exactly in the scaled units, see
    :mod:`bnstats.statistics.scaled`); other samples (32-bit, float) as float64 values (None). No float copy
    is made of 8/16-bit samples (the limits count their stored bytes)."""
    slope = 1.0 if slope is None else float(slope)
    intercept = 0.0 if intercept is None else float(intercept)
    exact = stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and math.isfinite(slope) and slope != 0 \
        and math.isfinite(intercept)
    if not exact:
        return rescaled(stored, slope, intercept), None
    if slope == 1.0 and intercept == 0.0:
        return stored, None
    if slope == 1.0 and intercept.is_integer() and _fits_16_bits(stored, int(intercept)):
        return rescaled(stored, slope, intercept), None
    return stored, (slope, intercept)


def _fits_16_bits(stored: np.ndarray, shift: int) -> bool:
    """Whether every stored integer plus ``shift`` is a signed 16-bit number."""
    return stored.size == 0 or (int(stored.min()) + shift >= -(2**15) and int(stored.max()) + shift < 2**15)


WHOLE_CHECK = 1 << 20  # values checked at a time: no copy of a volume to tell its values are whole


def whole_int16(values: np.ndarray) -> np.ndarray | None:
    """Float voxels that are all whole numbers of 16 bits (CT in Hounsfield units or MR saved as float32, as the
    Medical Segmentation Decathlon stores them) as int16, counted exactly (median and percentiles too) in
    their own units; None for any other float data (a fraction, NaN, a value past int16)."""
    if values.dtype.kind != "f" or values.size == 0:
        return None
    low, high = values.min(), values.max()  # NaN: neither finite
    if not (np.isfinite(low) and np.isfinite(high) and low >= -(2**15) and high < 2**15):
        return None
    flat = values.ravel(order="K")  # a view of a C- or Fortran-ordered volume
    for start in range(0, flat.size, WHOLE_CHECK):
        part = flat[start:start + WHOLE_CHECK]
        if not np.array_equal(part, np.trunc(part)):
            return None
    return values.astype(np.int16)  # the same memory order
