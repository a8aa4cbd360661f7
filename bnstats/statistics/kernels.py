"""The per-value loops: a small optional C extension, or numpy (torch) doing the same.

``pip install .`` compiles ``bnstats/statistics/_kernels.c`` when a C compiler is
there; without one the build goes on and Pillow's C histogram (8-bit) or
numpy counts instead. Set ``BNSTATS_PURE_PYTHON=1`` to use those even when
the extension is built.
Which one runs::

    bnstats --version     # "... (counting kernel: compiled)", or "numpy"

(``python -c "import bnstats..."`` run inside a source checkout imports
the checkout, which has no compiled kernel, rather than what was installed.)

Counts are exact integers either way, so results are byte-identical.
:func:`channel_moments` (the float64 moments of a BatchNorm layer's input,
for ``bnstats.torch``) has no numpy twin here: without the kernel,
bnstats.torch computes them with torch ops, equal to float64 rounding.
Measured on a 2-core AMD EPYC (docs/benchmarks.md): a decoded 810x654
photo (RGBX) is counted in 0.33 ms by the kernel against 0.46 ms by
Pillow's ``histogram()``; a 512x512 16-bit RGB image in 0.58 ms against
1.35 ms with one ``np.bincount`` per channel.
"""

from __future__ import annotations

import os

import numpy as np

try:
    from . import _kernels
except ImportError:  # built without a compiler
    _kernels = None

if os.environ.get("BNSTATS_PURE_PYTHON", "") not in ("", "0"):
    _kernels = None

ACTIVE = "compiled" if _kernels is not None else "numpy"
MAX_CHANNELS = 16  # the compiled kernel's limit; numpy counts wider pixels


def compiled() -> bool:
    """Whether the compiled kernel is in use (built, and not turned off by ``BNSTATS_PURE_PYTHON``)."""
    return _kernels is not None


def png_unfilter(filtered, height: int, rowbytes: int, channels: int):
    """Undo a PNG's row filters in the compiled kernel (see ``bnstats.decoding.png``); needs :func:`compiled`."""
    return _kernels.png_unfilter(filtered, height, rowbytes, channels)


def histogram(data, itemsize: int, stride: int, channels: int) -> np.ndarray:
    """``(channels, 256 or 65536)`` int64 counts of the first ``channels`` of every ``stride`` items.

    ``data`` is a C-contiguous buffer of unsigned native-endian items of
    ``itemsize`` bytes (1 or 2), ``stride`` per pixel.

    >>> histogram(bytes([1, 2, 9, 1, 3, 9]), 1, 3, 2)[:, :4].tolist()
    [[0, 2, 0, 0], [0, 0, 1, 1]]
    """
    levels = 256 if itemsize == 1 else 65536
    out = np.zeros((channels, levels), np.int64)
    if _kernels is not None and channels <= MAX_CHANNELS:
        _kernels.histogram(data, itemsize, stride, channels, out)
        return out
    mode = _PILLOW_MODES.get(stride) if itemsize == 1 else None
    if mode is not None and len(data) >= stride:  # Pillow's C histogram: several times numpy's bincount
        from PIL import Image

        pixels = len(memoryview(data).cast("B")) // stride
        image = Image.frombuffer(mode, (pixels, 1), data, "raw", mode, 0, 1)
        return np.array(image.histogram(), np.int64).reshape(-1, 256)[:channels]
    pixels = np.frombuffer(data, np.uint8 if itemsize == 1 else np.uint16).reshape(-1, stride)
    for c in range(channels):
        out[c] = np.bincount(pixels[:, c], minlength=levels)
    return out


_PILLOW_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # Pillow modes whose bytes are 8-bit pixels as given


def channel_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel float64 ``(mean, M2)`` of a C-contiguous float32 ``(n, channels, values)`` array, two-pass.

    ``M2`` is ``sum((x - mean)**2)`` over the channel's ``n * values``
    numbers. None without the compiled kernel (the caller computes them
    itself). The kernel reads the float32 numbers in place: no float64 copy.
    For ``[[[1, 2], [5, 5]], [[3, 4], [5, 9]]]``: means ``[2.5, 6.0]``, M2
    ``[5.0, 12.0]`` (tests/test_kernels.py).
    """
    if x.dtype != np.dtype("=f4") or x.ndim != 3:
        raise ValueError(f"channel_moments takes a native float32 (n, channels, values) array, not {x.dtype} "
                         f"of {x.ndim} dimensions")
    if _kernels is None:
        return None
    mean, m2 = np.empty(x.shape[1]), np.empty(x.shape[1])
    _kernels.channel_moments(x, *x.shape, mean, m2)
    return mean, m2
