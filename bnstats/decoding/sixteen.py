"""16-bit colour: the decoders that keep all 16 bits where Pillow would silently hand back 8.

Multi-band 16-bit PNG and TIFF go through OpenCV (the ``16bit`` extra),
their libpng errors captured from the C stderr; PPMs with a maxval above
255 are read here from their samples. :func:`is_16bit_colour` says which
files need this.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
from PIL import Image

from .. import limits
from .cstderr import captured, first_line
from .options import DecodeError

SIXTEEN_BIT_EXTRA = 'pip install "bnstats[16bit]"'
SIXTEEN_BIT_FORMATS = ("PNG", "TIFF", "PPM")  # of the files :func:`is_16bit_colour` may answer True for
#: said once where --mode rgb or gray reads 16-bit colour as Pillow does (as torchvision's loader sees it)
EIGHT_BIT_NOTE = ("a 16-bit colour image was reduced to 8 bits, as Pillow and torchvision's loader "
                  "read it; use --mode native to keep its full range")


def is_16bit_colour(image: Image.Image, data: bytes) -> bool:
    """True for 16-bit multi-band PNG, TIFF or PPM (which Pillow reduces to 8-bit)."""
    if image.format == "PPM":
        return image.mode == "RGB" and _ppm_maxval(image) > 255
    if image.format == "PNG":
        # IHDR follows the 8-byte signature: length, type, width, height,
        # then bit depth (byte 24) and colour type (byte 25; 2 RGB, 4 LA, 6 RGBA).
        return data[24] == 16 and data[25] in (2, 4, 6)
    if image.format == "TIFF":
        return len(_tiff_bits(image)) > 1 and max(_tiff_bits(image)) == 16
    return False


#: said once where a Pillow image in memory holds a 16-bit colour file as 8 bits (its file would be 16-bit)
HELD_AS_8_BITS = ("a Pillow image of a 16-bit colour file holds it as 8 bits (Pillow reduced it when opening): "
                  "counted as 8 bits; count the file itself with --mode native to keep its 16 bits")


def held_as_8_bits(image: Image.Image) -> bool:
    """Whether Pillow, before it decodes ``image``, will hand back the 16-bit colour of its file as 8 bits
    (read off its decoder's raw mode: ``RGB;16B``, ``RGBA;16N``, ...; a PPM's maxval). An image already
    decoded no longer says."""
    if image.mode not in ("RGB", "RGBA", "LA"):
        return False
    if image.format == "PPM":
        return _ppm_maxval(image) > 255
    for tile in getattr(image, "tile", None) or ():  # an Image.new() image has no decoder
        raw = tile.args if isinstance(tile.args, str) else (tile.args[0] if tile.args else None)
        if isinstance(raw, str) and ";16" in raw:
            return True
    return False


def _tiff_bits(image: Image.Image) -> tuple:
    bits = image.tag_v2.get(258, (8,))
    return bits if isinstance(bits, tuple) else (bits,)


def _ppm_maxval(image: Image.Image) -> int:
    """A PPM's maxval from Pillow's decoder arguments (8-bit files use the raw decoder: 255)."""
    tile = image.tile[0] if image.tile else None
    if tile is None or tile.codec_name not in ("ppm", "ppm_plain") or not isinstance(tile.args[-1], int):
        return 255
    return tile.args[-1]


def sixteen_bit_channels(image: Image.Image, data: bytes) -> int:
    """Bands :func:`decode_16bit_colour` returns for this file."""
    if image.format == "PPM":
        return 3
    if image.format == "PNG":
        return {2: 3, 4: 2, 6: 4}[data[25]]
    return len(_tiff_bits(image))


def decode_16bit_colour(image: Image.Image, data: bytes) -> tuple[np.ndarray, tuple[str, ...]]:
    """All 16 bits of a multi-band PNG, TIFF or PPM, as ``(H, W, C)`` uint16 and band names."""
    if image.format == "PPM":
        return _decode_wide_ppm(image, data), ("R", "G", "B")
    try:
        import cv2
    except ImportError:
        raise DecodeError(
            f"16-bit colour images need a decoder that keeps 16 bits: {SIXTEEN_BIT_EXTRA}"
        ) from None
    width, height = image.size
    limits.current().check_image(width * height, sixteen_bit_channels(image, data), 2, f"16-bit {image.format}")
    with captured() as said:  # libpng reports errors on the C stderr, past --quiet
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        reason = first_line(said())
        raise OSError("OpenCV could not decode this 16-bit image" + (f" ({reason})" if reason else ""))
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if data.startswith(b"\x89PNG") and data[25] == 4:  # grey + alpha: OpenCV expands it to BGRA
        return np.ascontiguousarray(pixels[..., [0, 3]]), ("L", "A")
    # OpenCV returns BGR(A); bnstats reports R, G, B(, A)
    if pixels.shape[2] == 3:
        return pixels[..., ::-1], ("R", "G", "B")  # a view: counting reads the bands in place
    order = [2, 1, 0, 3][: pixels.shape[2]] if pixels.shape[2] >= 3 else list(range(pixels.shape[2]))
    return np.ascontiguousarray(pixels[..., order]), ("R", "G", "B", "A")[: len(order)]


_TOKEN = re.compile(rb"\S+")


def _decode_wide_ppm(image: Image.Image, data: bytes) -> np.ndarray:
    """The samples of a PPM with maxval above 255 (two big-endian bytes each), as stored.

    Like 16-bit gray PGMs (which Pillow reads as ``I``), the values are
    counted as they are, 0..maxval, on the 16-bit scale.
    """
    width, height = image.size
    tile = image.tile[0]
    count = width * height * 3
    if tile.codec_name == "ppm":
        if len(data) < tile.offset + 2 * count:
            raise OSError("truncated PPM file")
        pixels = np.frombuffer(data, ">u2", count=count, offset=tile.offset).astype(np.uint16)
    else:  # plain (ASCII) PPM
        # the samples declared, no more, and no copy of the file: split whole, 100 MB of "0 " after a 2x2
        # image took 660 MB, an object per token
        values = [m.group() for m in itertools.islice(_TOKEN.finditer(data, tile.offset), count)]
        if len(values) < count:
            raise OSError("truncated PPM file")
        pixels = np.array(values, dtype=np.int64)
        if pixels.max(initial=0) > 65535:
            raise ValueError("PPM sample above 65535")
        pixels = pixels.astype(np.uint16)
    return pixels.reshape(height, width, 3)
