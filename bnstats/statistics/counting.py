"""Per-channel histograms of integer pixels: one bincount per channel, and raw bytes of small images in batches.

The fast ways to count 8/16-bit pixels exactly (the compiled kernel of
``bnstats.statistics.kernels`` where it applies): :func:`bincount` of an
``(n, C)`` array, :func:`raw_histogram` of raw 8-bit bytes gathered from
several small images (up to :data:`PENDING_BYTES` at a time).
"""
from __future__ import annotations

import numpy as np

from . import kernels

__all__ = ["bincount", "raw_histogram", "PENDING_BYTES"]

def bincount(flat: np.ndarray, levels: int) -> np.ndarray:
    """Per-channel histogram of an ``(n, C)`` 8/16-bit integer array (``(C, levels)`` int64).

    One bincount per channel column, read in place (strided): three times
    faster than one bincount over ``value + channel * levels``, which needs
    an 8-byte index per value. Signed values are shifted so that the smallest
    representable one is bin 0 (flipping the sign bit of the unsigned view).
    """
    if flat.dtype.kind == "i":
        unsigned = flat.view(flat.dtype.str.replace("i", "u"))
        flat = unsigned ^ unsigned.dtype.type(levels // 2)  # two's complement -> offset binary
    if flat.dtype.byteorder in ("=", "|") and flat.shape[0]:
        if flat.flags.c_contiguous:
            return kernels.histogram(flat, flat.itemsize, flat.shape[1], flat.shape[1])
        reverse = flat[:, ::-1]  # OpenCV's BGR read as RGB: a reversed view of contiguous pixels
        if reverse.flags.c_contiguous:
            return kernels.histogram(reverse, flat.itemsize, flat.shape[1], flat.shape[1])[::-1].copy()
    return np.stack([np.bincount(flat[:, c], minlength=levels) for c in range(flat.shape[1])]).astype(np.int64, copy=False)


def raw_histogram(chunks: list[bytes], stride: int, channels: int, counted: int | None = None) -> np.ndarray:
    """The exact ``(channels, 256)`` histogram of 8-bit pixels given as raw bytes, ``stride`` bytes per pixel.

    The first ``channels`` bytes of each pixel count, counted over all the
    chunks (the images of a batch) at once; with ``counted=1`` only the first
    byte counts, for every channel (grey pixels counted as R, G and B).
    """
    data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
    if counted is not None and counted < channels:
        return np.repeat(kernels.histogram(data, 1, stride, counted), channels, axis=0)
    return kernels.histogram(data, 1, stride, channels)


PENDING_BYTES = 2**20  # raw bytes of small images gathered before one bincount counts them
