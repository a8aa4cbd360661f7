"""8-bit PNG files read without Pillow's per-file work, to the same pixels.

Pillow parses a PNG's chunks in Python and inflates it row by row: ~20 µs
for an 8x8 thumbnail, and 2-3x what ``zlib`` takes for a 512x512 image.
:func:`read_png` walks the chunks with ``struct``, inflates the image data
in one ``zlib`` call and undoes the row filters in the compiled kernel.

It only answers where the result is Pillow's to the bit and Pillow would
not raise: 8-bit grey, grey+alpha, RGB and RGBA up to MAX_PIXELS, not interlaced, no
palette, transparency key, colour profile, EXIF or animation, chunks whose
checksums Pillow checks intact, and every chunk Pillow would read complete.
For anything else it returns None and the caller asks Pillow, which
decodes (or refuses) the file as it always did. Without the compiled
kernel it always returns None.
"""

from __future__ import annotations

import struct
import zlib

from PIL import Image, ImageFile, PngImagePlugin

from .. import limits
from ..statistics import kernels
from .image import PixelBuffer
from .options import DecodeOptions, as_stored

MAGIC = b"\x89PNG\r\n\x1a\n"
# Larger images go to Pillow: its per-file work no longer shows there (1024x1024: 18.6 ms either way),
# and it holds the pixels once, where inflating then unfiltering holds them twice.
MAX_PIXELS = 1 << 20  # an eligibility threshold of the fast path, not a safety bound: see check_limits
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # 8-bit colour types: grey, RGB, grey + alpha, RGBA
# chunks Pillow reads that change nothing about the pixels, and the length under which it raises
_BENIGN = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9, b"tEXt": 0, b"IDAT": 0}
# chunks Pillow has a reader for; any other ancillary chunk it skips (critical ones: Pillow decides)
_PILLOW_READS = {b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"iCCP",
                 b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"acTL", b"fcTL", b"fdAT"}
# text keywords Pillow keeps in the image's info next to its own keys: these change how it decodes
# ("interlace", "bbox"), converts ("transparency") or seeks; a file using one goes to Pillow
_PILLOW_INFO_KEYS = {b"interlace", b"bbox", b"transparency", b"default_image", b"exif", b"icc_profile", b"gamma",
                     b"srgb", b"chromaticity", b"dpi", b"aspect", b"duration", b"disposal", b"blend", b"loop"}
_chunk = struct.Struct(">I4s")
# bands a PNG of each colour type decodes to (a palette's: the RGB it stands for)
DECODED_BANDS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_crc32 = zlib.crc32


def check_limits(data: bytes) -> None:
    """Refuse a PNG whose header declares more than the bounds of :mod:`bnstats.limits` (pixels,
    decoded bytes), before any decoder (this module's, Pillow's, OpenCV's) allocates for it."""
    if len(data) < 26 or data[12:16] != b"IHDR":
        return  # no header to trust: the decoder names the error
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    limits.current().check_image(width * height, DECODED_BANDS.get(colour, 4), 2 if depth == 16 else 1, "PNG")


def read_png(data: bytes) -> tuple[bytes, int, int, int] | None:
    """``(pixels, width, height, channels)`` of an 8-bit PNG, the pixels as stored row by row, or None.

    None means: ask Pillow (see the module's docstring for when).
    """
    if (not kernels.compiled() or not data.startswith(MAGIC) or len(data) < 33 or data[12:16] != b"IHDR"
            or ImageFile.LOAD_TRUNCATED_IMAGES):  # Pillow then reads on past what it would refuse
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    channels = CHANNELS.get(colour)
    if (_chunk.unpack_from(data, 8)[0] != 13 or depth != 8 or channels is None or compression or filtering
            or interlace or not width or not height or width * height > MAX_PIXELS
            or (Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS)
            or _crc32(data[12:29]) != int.from_bytes(data[29:33], "big")):
        return None
    end = len(data)
    pos, idat, text = 33, [], 0
    while True:  # the chunks up to the image data: Pillow checks their checksums and reads them
        if pos + 8 > end:
            return None
        length, kind = _chunk.unpack_from(data, pos)
        stop = pos + 8 + length
        if stop + 4 > end or not _plain(kind, length):
            return None
        if kind == b"IDAT":
            break
        if _crc32(data[pos + 4 : stop]) != int.from_bytes(data[stop : stop + 4], "big"):
            return None
        if kind == b"tEXt" and (text := _with_text(data, pos + 8, stop, text)) < 0:
            return None
        pos = stop + 4
    while kind == b"IDAT":  # the image data: consecutive IDAT chunks (checksums unchecked, as Pillow)
        idat.append(data[pos + 8 : stop])
        pos = stop + 4
        if pos + 8 > end:
            break
        length, kind = _chunk.unpack_from(data, pos)
        stop = pos + 8 + length
        if kind == b"IDAT" and stop > end:
            return None
    while pos + 8 <= end:  # what follows: Pillow reads it after the pixels, and may raise on it
        length, kind = _chunk.unpack_from(data, pos)
        if kind == b"IEND" or not _is_cid(kind):
            break
        stop = pos + 8 + length
        if stop > end or not _plain(kind, length):
            return None
        if kind == b"tEXt" and (text := _with_text(data, pos + 8, stop, text)) < 0:
            return None
        pos = stop + 4
    rowbytes = width * channels
    size = height * (rowbytes + 1)
    try:
        inflater = zlib.decompressobj()
        filtered = inflater.decompress(b"".join(idat) if len(idat) > 1 else idat[0], size)
        # all rows, and the stream either ended or goes on: Pillow has every row before its input runs out
        # (a stream cut short that still yields every row makes Pillow ask for more, and fail)
        if len(filtered) < size or not (inflater.eof or inflater.unconsumed_tail):
            return None  # truncated or corrupt: Pillow names the error
        pixels = kernels.png_unfilter(filtered, height, rowbytes, channels)
    except (zlib.error, ValueError):
        return None
    return pixels, width, height, channels


def _plain(kind: bytes, length: int) -> bool:
    """True for a chunk that leaves the pixels as they are and that Pillow reads without raising."""
    if kind in _PILLOW_READS:
        least = _BENIGN.get(kind)
        return least is not None and length >= least
    return _is_cid(kind) and 97 <= kind[0] <= 122  # an ancillary chunk Pillow skips


def _is_cid(kind: bytes) -> bool:
    """Pillow's test of a chunk type: four word characters (``\\w\\w\\w\\w``)."""
    return all(48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 95 for c in kind)


def _with_text(data: bytes, start: int, stop: int, text: int) -> int:
    """``text`` plus what Pillow counts against its limit for this tEXt chunk (the characters after
    the keyword), or -1 past that limit, or for a keyword Pillow would read as one of its own keys."""
    zero = data.find(b"\0", start, stop)
    keyword = data[start:zero] if zero >= 0 else data[start:stop]
    if keyword in _PILLOW_INFO_KEYS:
        return -1
    if zero > start:  # no keyword, or no separator: Pillow keeps no text
        text += stop - zero - 1
    return text if text <= PngImagePlugin.MAX_TEXT_MEMORY else -1


# -- as the decoders hand it on ---------------------------------------------------------------------

_PNG_BANDS = {1: ("L",), 2: ("L", "A"), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}


def read_pixels(data: bytes, options: DecodeOptions):
    """``(PixelBuffer, bands)`` of an 8-bit PNG read by :func:`read_png` where that gives Pillow's pixels
    for these options, or None. Colour to grey, EXIF transpose, resize and crop are left to Pillow."""
    if not as_stored(options):
        return None
    read = read_png(data)
    if read is None:
        return None
    pixels, width, height, stride = read
    if options.mode == "native":
        bands, counted = _PNG_BANDS[stride], stride
    elif options.mode == "rgb":  # grey (and alpha) as R = G = B; alpha dropped, as Pillow's convert("RGB")
        bands, counted = ("R", "G", "B"), 1 if stride < 3 else 3
    elif stride <= 2:  # gray: the grey band, alpha dropped
        bands, counted = ("L",), 1
    else:
        return None
    return PixelBuffer(pixels, height, width, stride, counted), bands
