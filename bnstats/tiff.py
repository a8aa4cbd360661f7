"""Multi-band and scientific TIFF in ``--mode native``: what Pillow cannot read right.

Pillow reads 8-bit gray, RGB(A), CMYK and palette TIFFs, 16-bit gray and
32-bit float gray. It refuses more than 4 bands (Sentinel-2 has 13,
hyperspectral cubes hundreds) and float64, reads signed 8-bit as unsigned
without a word, and reduces 16-bit colour to 8 bits. In ``--mode native``
such files are read with ``tifffile`` (extra ``bnstats[tiff]``; LZW and other
codecs through ``imagecodecs``), all samples as stored: 8/16-bit unsigned
and signed integers exactly, other types as float64. Band names come from the
file where it names them (GDAL's band descriptions), else ``B1..Bn`` (``L``,
``R G B``, ``R G B A`` for gray and RGB photometrics).

:func:`tiff_layout` reads the first directory's tags without tifffile, so
the choice of reader costs a few microseconds and works without the extra.
"""

from __future__ import annotations

import io
import re
import struct

import numpy as np

TIFF_EXTRA = 'pip install "bnstats[tiff]"'
_TYPE_SIZES = {1: 1, 3: 2, 4: 4, 16: 8}  # BYTE, SHORT, LONG, LONG8


def is_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def tiff_layout(data: bytes) -> dict | None:
    """``{"samples", "bits", "format", "planar", "bigtiff"}`` of the first image, or None if unreadable.

    ``format`` is TIFF's SampleFormat: 1 unsigned, 2 signed, 3 float.
    """
    if data[:4] in (b"II+\0", b"MM\0+"):
        return {"samples": 0, "bits": 0, "format": 1, "planar": 1, "bigtiff": True}
    order = "<" if data[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, offset)
        tags = {}
        for i in range(count):
            tag, kind, n, value = struct.unpack_from(order + "HHI4s", data, offset + 2 + 12 * i)
            if tag not in (258, 277, 284, 339) or kind not in (1, 3, 4):
                continue
            size = _TYPE_SIZES[kind]
            raw = value if n * size <= 4 else data[struct.unpack(order + "I", value)[0]:][: n * size]
            code = {1: "B", 3: "H", 4: "I"}[kind]
            tags[tag] = struct.unpack(order + code * n, raw[: n * size])
    except (struct.error, IndexError, KeyError):
        return None
    return {
        "samples": tags.get(277, (1,))[0],
        "bits": max(tags.get(258, (1,))),
        "format": tags.get(339, (1,))[0],
        "planar": tags.get(284, (1,))[0],
        "bigtiff": False,
    }


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
    )


def have_tifffile() -> bool:
    try:
        import tifffile  # noqa: F401
    except ImportError:
        return False
    return True


def read_tiff(data: bytes) -> tuple[np.ndarray, tuple[str, ...]]:
    """The first image of a TIFF as ``(H, W, C)`` samples as stored, and band names."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
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
