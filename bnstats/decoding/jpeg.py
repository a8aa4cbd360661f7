"""JPEGs through libjpeg-turbo (``simplejpeg``), without Pillow's per-image work, to Pillow's pixels.

:func:`open_jpeg_fast` answers only where the result is Pillow's to the bit,
decoding into a per-thread buffer that the next decode reuses; anything
else (CMYK, EXIF transpose, resize, a corrupt file) returns None and goes
to Pillow. :func:`check_scans` refuses a scan bomb before either decoder
starts on it.
"""

from __future__ import annotations

import threading

from PIL import Image

from .. import limits
from .cstderr import as_note
from .image import PixelBuffer
from .options import DecodeOptions, as_stored

try:  # libjpeg-turbo without Pillow's per-image Python overhead; see open_jpeg_fast
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency, but optional in spirit
    simplejpeg = None

_scratch = threading.local()  # one reusable decode buffer per thread


def check_scans(data) -> None:
    """Refuse a JPEG of more than :data:`limits.JPEG_SCANS` scans (a scan bomb) before any decoder starts:
    libjpeg makes a pass over the whole image for each scan of a progressive JPEG, empty or not."""
    if not is_progressive(data):  # a sequential JPEG of more scans than components is an error in libjpeg
        return
    if not hasattr(data, "count"):
        data = bytes(data)
    if data.count(b"\xff\xda") <= limits.JPEG_SCANS:  # the common case: one search in C, no walk
        return
    scans = count_scans(data)  # the bytes may sit inside a segment (a thumbnail, a profile): walk the markers
    if scans > limits.JPEG_SCANS:
        raise limits.LimitError(f"JPEG of {scans:,} scans is over the limit of {limits.JPEG_SCANS:,} (a scan bomb: "
                                f"each scan is a pass over the whole image; no encoder writes that many)")


def count_scans(data: bytes) -> int:
    """The start-of-scan markers of a JPEG's first image: segments skipped by their lengths (a thumbnail's
    scans are not the image's), entropy-coded data searched for its next marker, up to the end of the image."""
    scans, pos, end = 0, 2, len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= end:
            return scans
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
        elif marker in _NO_LENGTH:  # a stuffed 0xFF in entropy-coded data, a restart marker: no segment
            pos += 2
        elif marker == 0xD9:  # the end of the image: what follows (an MPO's next picture) is not decoded
            return scans
        else:
            scans += marker == 0xDA
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")


_NO_LENGTH = frozenset([0x00, 0x01, *range(0xD0, 0xD8)])
_PROGRESSIVE = frozenset([0xC2, 0xC6, 0xCA, 0xCE])  # start-of-frame markers of progressive JPEGs
_SEQUENTIAL = frozenset([0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD, 0xCF])


def is_progressive(data) -> bool:
    """Whether the JPEG's frame (its first start-of-frame marker, found by walking the segments before it, a
    thumbnail's inside its segment) is progressive; True where the walk cannot tell (damage: the count
    decides). A few segments: microseconds, where counting markers takes ~1 ms a megabyte."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return True
        marker = data[pos + 1]
        if marker == 0xFF or marker in _NO_LENGTH:
            pos += 1 if marker == 0xFF else 2
        elif marker in _PROGRESSIVE:
            return True
        elif marker in _SEQUENTIAL or marker == 0xDA:
            return False
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return False


def open_jpeg_fast(data: bytes, options: DecodeOptions, said: list | None = None):
    """A JPEG decoded by libjpeg-turbo through ``simplejpeg``, or None.

    ``simplejpeg`` decodes about 20% faster than Pillow's JPEG plugin, with
    bit-identical pixels (the test suite checks this on baseline and
    progressive, colour and gray JPEGs), and into a reused buffer. It is used
    only where the result is Pillow's to the bit: YCbCr, RGB and gray JPEGs,
    no EXIF transpose, resize or crop (those go through Pillow), and images
    under Pillow's decompression-bomb limit. A JPEG libjpeg finds damaged goes to Pillow, which counts what
    libjpeg fills in (grey where the data is missing) without a word: what libjpeg said is appended to
    ``said``, a note of the image. Returns ``(image, bands)`` where
    ``image`` is the :class:`PixelBuffer` in the reused buffer (or, converted to
    grey, a Pillow image), or None to use Pillow.
    """
    if simplejpeg is None or not as_stored(options):
        return None
    if not data.startswith(b"\xff\xd8"):
        return None
    check_scans(data)
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    limits.current().check_image(height * width, 3 if colorspace != "Gray" else 1, 1, "JPEG")
    if Image.MAX_IMAGE_PIXELS and height * width > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow warns (under our bound, checked above)
    if colorspace == "Gray":
        target, mode = "GRAY", "L"
        bands = ("R", "G", "B") if options.mode == "rgb" else ("L",)
    elif colorspace in ("YCbCr", "RGB") and options.mode in ("rgb", "native", "gray"):
        target, mode, bands = "RGBX", "RGBX", ("R", "G", "B")
    else:
        return None  # CMYK, YCCK: Pillow
    size = height * width * len(mode)
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _scratch.buffer = bytearray(size)
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace=target, buffer=buffer)
    except ValueError as exc:  # corrupt or truncated: Pillow decides, and names the error or counts the image
        if said is not None:
            said.append(as_note(str(exc)))
        return None
    if options.mode == "gray" and mode == "RGBX":
        return Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1).convert("L"), ("L",)
    return PixelBuffer(pixels, height, width, len(mode), min(len(bands), len(mode)), reused=True), bands
