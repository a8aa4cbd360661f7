"""Multi-band and scientific TIFF in ``--mode native``: what Pillow cannot read right.

Pillow reads 8-bit gray, RGB(A), CMYK and palette TIFFs, 16-bit gray and
32-bit float gray. It refuses more than 4 bands (Sentinel-2 has 13,
hyperspectral cubes hundreds) and float64, reads signed 8-bit as unsigned
without a word, reduces 16-bit colour to 8 bits, drops an unspecified extra
sample (gray + 1 is L, RGB + 1 is RGB) and divides premultiplied alpha out. In ``--mode native``
such files are read with ``tifffile`` (extra ``bnstats[tiff]``; LZW and other
codecs through ``imagecodecs``), all samples as stored: 8/16-bit unsigned
and signed integers exactly, other types as float64. Band names come from the
file where it names them (GDAL's band descriptions), else ``B1..Bn`` (``L``,
``R G B``, ``R G B A`` for gray and RGB photometrics).
"""

from __future__ import annotations

import io
import re

import numpy as np

from .. import limits
from .options import DecodeError
from .tiff import TIFF_EXTRA, tiff_directories


def needs_tifffile(layout: dict | None) -> bool:
    """True for TIFFs Pillow would refuse or misread (see the module docstring)."""
    if layout is None:
        return False
    return (
        layout["bigtiff"]
        or layout["samples"] > 4
        or layout["format"] == 2  # signed
        or layout["bits"] == 64
        or (layout["samples"] > 1 and layout["bits"] > 8)  # 16-bit colour, multi-band float
        or _pillow_misreads_samples(layout)
    )


def _pillow_misreads_samples(layout: dict) -> bool:
    """8-bit pages whose samples Pillow does not give as stored: gray with samples besides gray and an
    alpha (it keeps the first alone, or cannot open the file), RGB with a 4th sample that is not unassociated
    alpha (an unspecified one is dropped, a premultiplied alpha divided out of the colours)."""
    samples, photometric, extra = layout["samples"], layout.get("photometric"), tuple(layout.get("extra") or ())
    if samples < 2:
        return False
    if photometric in (None, 0, 1):  # min-is-white/black: Pillow reads L, LA and La
        return not (samples == 2 and extra in ((1,), (2,)))
    return photometric == 2 and samples == 4 and extra != (2,)


def have_tifffile() -> bool:
    try:
        import tifffile  # noqa: F401
    except ImportError:
        return False
    return True


def read_tiff(data: bytes, index: int = 0) -> tuple[np.ndarray, tuple[str, ...]]:
    """Page ``index`` (default the first) of a TIFF as ``(H, W, C)`` samples as stored, and band names."""
    import tifffile

    pages = tiff_directories(data) or ()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if 0 < index < len(pages):  # read at its directory: tif.pages[index] walks every one before it
            tif.filehandle.seek(pages[index]["offset"])
            page = tifffile.TiffPage(tif, index=index)
        else:
            page = tif.pages[index]
        limits.current().check_image(int(np.prod(page.shape[:2] if "S" not in page.axes[:1] else page.shape[1:3])),
                                     page.samplesperpixel, page.dtype.itemsize if page.dtype else 1, "TIFF page")
        pixels = page.asarray()
        axes = page.axes
        names = _band_names(page)
        photometric = int(page.photometric)
    if "S" in axes:  # samples: last, whether stored contiguous (YXS) or planar (SYX)
        pixels = np.moveaxis(pixels, axes.index("S"), -1)
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1) if pixels.ndim >= 2 else pixels
    if pixels.dtype.byteorder not in ("=", "|"):
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    channels = pixels.shape[-1]
    if names is None or len(names) != channels:
        if photometric == 2 and channels in (3, 4):  # RGB
            names = ("R", "G", "B", "A")[:channels]
        else:
            names = ("L",) if channels == 1 else tuple(f"B{i}" for i in range(1, channels + 1))
    return np.ascontiguousarray(pixels), names


def _band_names(page) -> tuple[str, ...] | None:
    """Band descriptions from GDAL's metadata tag, when every band has one."""
    tag = page.tags.get("GDAL_METADATA") or page.tags.get(42112)
    if tag is None:
        return None
    found = {}
    for sample, name in re.findall(r'<Item name="DESCRIPTION" sample="(\d+)"[^>]*>([^<]*)</Item>', str(tag.value)):
        found[int(sample)] = name.strip()
    if not found or sorted(found) != list(range(len(found))):
        return None
    return tuple(found[i] for i in range(len(found)))


def open_scientific(data: bytes, page: int = 0):
    """``(pixels, bands)`` of a TIFF that Pillow cannot read as stored (many bands, signed, float64), or None.

    Without tifffile, 16-bit colour still has OpenCV; anything else is a
    :class:`DecodeError` naming the extra, not a silently wrong count.
    """
    pages = tiff_directories(data) or []
    layout = pages[page] if page < len(pages) else None
    if not needs_tifffile(layout):
        return None
    if have_tifffile():
        return read_tiff(data, page)
    if layout["samples"] in (2, 3, 4) and layout["bits"] == 16 and layout["format"] == 1:
        return None  # 16-bit colour: the OpenCV path below, or its own message
    kind = {1: "unsigned", 2: "signed", 3: "float"}.get(layout["format"], "")
    what = "BigTIFF" if layout["bigtiff"] else f"{layout['samples']}-band {layout['bits']}-bit {kind} TIFF"
    raise DecodeError(f"a {what} needs tifffile to be read as stored: {TIFF_EXTRA}")
