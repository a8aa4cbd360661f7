"""DICOM files (``.dcm``) as inputs: one file is one item (a multi-frame file, all its frames), read with pydicom.

Values are in the modality's units: ``RescaleSlope``/``RescaleIntercept``
applied (CT in Hounsfield units). Stored 8/16-bit samples, signed or not,
whose rescaled values are whole numbers that fit 16 bits (slope 1, a whole
intercept: CT's ``-1024``) are counted exactly as 16-bit signed integers;
any other rescale, and 32-bit samples, as float data. Colour files are
``R G B`` (pydicom's conversion from YCbCr), one-sample files ``L``.
Uncompressed and RLE transfer syntaxes are read by pydicom itself; JPEG,
JPEG 2000 and JPEG-LS need pydicom's plugins, and without them the file is
a skip entry naming what to install. Resize and center crop do not apply
(a multi-frame file is a volume) and are refused in one line.

The declared size (rows × columns × frames × samples) is checked against
the limits before any pixel is decoded. Needs the ``medical`` extra
(``pip install "bnstats[medical]"``).
"""

from __future__ import annotations

from .. import limits
from ..decoding.image import ArrayImage
from .base import require
from .volumes import EXTRA, VolumeSource, rescaled

SUFFIXES = (".dcm", ".dicom")


def read_dicom(path: str) -> ArrayImage:
    """The pixels of a DICOM file in the modality's units, as one image ``(1, pixels, samples)``."""
    ds = require("pydicom", "DICOM files", EXTRA).dcmread(path)
    if "PixelData" not in ds:
        raise ValueError("holds no image (no Pixel Data)")
    frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
    pixels = int(ds.Rows) * int(ds.Columns) * frames
    limits.current().check_image(pixels, samples, max(1, int(ds.BitsAllocated) // 8), "DICOM image")
    stored = ds.pixel_array
    values = rescaled(stored, ds.get("RescaleSlope"), ds.get("RescaleIntercept"))
    bands = ("R", "G", "B") if samples == 3 else ("L",) if samples == 1 else tuple(f"C{i}" for i in range(samples))
    shape = (frames, int(ds.Rows), int(ds.Columns)) if frames > 1 else (int(ds.Rows), int(ds.Columns))
    return ArrayImage(values.reshape(1, -1, samples), bands, shape)


class DicomSource(VolumeSource):
    """``.dcm`` files named directly or found in folders (a series folder: one item per file)."""

    suffixes, library, what = SUFFIXES, "pydicom", "DICOM files"
    reader = staticmethod(read_dicom)
