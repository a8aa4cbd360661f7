"""Pixels -> pixels: EXIF orientation and torchvision's Resize / CenterCrop rules.

The geometry is torchvision's, written out so that bnstats needs neither
torch nor torchvision: ``Resize(N)`` sets the shorter side to N (the longer
one truncated), ``CenterCrop`` pads with zeros where the crop is larger than
the image and rounds the offset as torchvision does. Transforms apply to
Pillow images; 16-bit colour arrays go through them one band at a time.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from .. import limits

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
ORIENTATION = 0x0112  # the EXIF tag, and what ImageOps.exif_transpose does for each value
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def as_pair(size) -> tuple[int, int]:
    """``N`` -> ``(N, N)``; a ``(width, height)`` pair as it is."""
    return (size, size) if isinstance(size, int) else tuple(size)


def resized_size(size: tuple[int, int], resize) -> tuple[int, int]:
    """Output ``(width, height)`` of torchvision ``Resize(resize)``.

    An int sets the shorter side to N and the longer to
    ``int(N * long / short)`` (truncation, as torchvision does); a
    ``(width, height)`` pair is the size itself.
    """
    if not isinstance(resize, int):
        return tuple(resize)
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def center_crop_box(size: tuple[int, int], crop) -> tuple[int, int, int, int]:
    """Pillow crop box of torchvision ``CenterCrop(crop)``, padding included.

    torchvision first pads an image smaller than the crop with zeros (left
    and top by ``(c - w) // 2``, the rest right and bottom), then crops at
    ``top = int(round((H - c) / 2.0))`` (Python rounding, halves to even).
    Pillow fills a box that reaches outside the image with zeros, so both
    steps are one crop.
    """
    cw, ch = as_pair(crop)
    w, h = size
    pad_left, pad_right = ((cw - w) // 2, (cw - w + 1) // 2) if cw > w else (0, 0)
    pad_top, pad_bottom = ((ch - h) // 2, (ch - h + 1) // 2) if ch > h else (0, 0)
    top = int(round((h + pad_top + pad_bottom - ch) / 2.0)) - pad_top
    left = int(round((w + pad_left + pad_right - cw) / 2.0)) - pad_left
    return (left, top, left + cw, top + ch)


def output_size(size: tuple[int, int], options) -> tuple[int, int]:
    """``(width, height)`` of an image of ``size`` after the Resize and CenterCrop of ``options``."""
    if options.resize is not None:
        size = resized_size(size, options.resize)
    if options.center_crop is not None:
        size = as_pair(options.center_crop)
    return size


def preprocess(image: Image.Image, options) -> Image.Image:
    """Apply torchvision's ``Resize`` then ``CenterCrop`` rules to a Pillow image."""
    if options.resize is not None:
        size = resized_size(image.size, options.resize)
        # a thin image (1x2000) resized to 5000 would be 5000x10^7: refused before Pillow allocates it
        limits.current().check_pixels(size[0] * size[1], f"image resized to {size[0]}x{size[1]}")
        if size != image.size:  # torchvision leaves an image at the target size alone
            image = image.resize(size, INTERPOLATIONS[options.interpolation])
    if options.center_crop is not None:
        image = image.crop(center_crop_box(image.size, options.center_crop))
    return image


def exif_transpose(image: Image.Image) -> Image.Image:
    """The image turned upright as its EXIF orientation says."""
    return ImageOps.exif_transpose(image)


def transform_array(pixels: np.ndarray, options, orientation: int | None = None) -> np.ndarray:
    """EXIF orientation, Resize and CenterCrop applied to an ``(H, W, C)`` array, band by band.

    For arrays Pillow cannot hold as one image (16-bit colour); each band is
    a one-band Pillow image (``I;16``, ``L`` or ``F``) on the way.
    """
    if orientation in EXIF_TRANSPOSE:
        pixels = _per_band(pixels, lambda im: im.transpose(EXIF_TRANSPOSE[orientation]))
    if options.resize is not None or options.center_crop is not None:
        pixels = _per_band(pixels, lambda im: preprocess(im, options))
    return pixels


PILLOW_BAND_TYPES = (np.uint8, np.uint16, np.int32, np.float32)  # one-band images Pillow resizes


def _per_band(pixels: np.ndarray, transform) -> np.ndarray:
    """Apply a Pillow transform to each band of an array separately.

    Types Pillow cannot hold as one band (signed 8/16-bit, float64, ...) are
    transformed as float32 and counted as floats: resampling makes new
    values anyway.
    """
    if pixels.dtype.type not in PILLOW_BAND_TYPES:
        pixels = pixels.astype(np.float32)
    bands = [np.asarray(transform(Image.fromarray(np.ascontiguousarray(pixels[..., b])))) for b in range(pixels.shape[2])]
    return np.stack(bands, axis=-1)
