"""Pixels -> pixels: EXIF orientation and torchvision's Resize / CenterCrop rules.

The geometry is torchvision's, written out so that bnstats needs neither
torch nor torchvision: ``Resize(N)`` sets the shorter side to N (the longer
one truncated), ``CenterCrop`` pads with zeros where the crop is larger than
the image and rounds the offset as torchvision does. Transforms apply to
Pillow images; arrays are transposed and cropped in numpy (any type, no value
changed) and resized one band at a time, by Pillow or by its filters in float64.
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
    size = _resize_to(image.size, options)
    if size is not None:
        image = image.resize(size, INTERPOLATIONS[options.interpolation])
    if options.center_crop is not None:
        image = image.crop(center_crop_box(image.size, options.center_crop))
    return image


def _resize_to(size: tuple[int, int], options) -> tuple[int, int] | None:
    """The ``(width, height)`` ``--resize`` makes of an image of ``size``, checked against the pixel bound
    before anything allocates it (a thin 1x2000 image resized to 5000 would be 5000x10^7); None where
    there is nothing to do (torchvision leaves an image at the target size alone)."""
    if options.resize is None:
        return None
    target = resized_size(size, options.resize)
    limits.current().check_pixels(target[0] * target[1], f"image resized to {target[0]}x{target[1]}")
    return None if target == tuple(size) else target


def exif_transpose(image: Image.Image) -> Image.Image:
    """The image turned upright as its EXIF orientation says."""
    return ImageOps.exif_transpose(image)


def transform_array(pixels: np.ndarray, options, orientation: int | None = None) -> np.ndarray:
    """EXIF orientation, Resize and CenterCrop applied to an ``(H, W, C)`` array of any type.

    Transposes and crops only move pixels, so they are done in numpy and keep
    the type (a no-op crop leaves int16 data integers, float64 data float64).
    A resize is Pillow's, band by band (``I;16``, ``L``, ``I`` or ``F``):
    types Pillow cannot hold go through float32 when that is exact (int8,
    int16, float16) and are resampled with Pillow's filters in float64
    otherwise (float64, wider integers), never rounded to float32.
    """
    if orientation in EXIF_TRANSPOSE:
        pixels = _transposed(pixels, orientation)
    size = _resize_to((pixels.shape[1], pixels.shape[0]), options)
    if size is not None:
        pixels = _resized(pixels, size, options.interpolation)
    if options.center_crop is not None:
        pixels = _cropped(pixels, center_crop_box((pixels.shape[1], pixels.shape[0]), options.center_crop))
    return pixels


def _transposed(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pillow's ``transpose`` for each EXIF orientation, on the array's first two axes."""
    flip = {2: (slice(None), slice(None, None, -1)), 3: (slice(None, None, -1),) * 2, 4: (slice(None, None, -1),)}
    if orientation in flip:
        return pixels[flip[orientation]]
    swapped = pixels.swapaxes(0, 1)  # TRANSPOSE (5); the rest are it and a flip
    return {5: swapped, 6: swapped[:, ::-1], 7: swapped[::-1, ::-1], 8: swapped[::-1]}[orientation]


def _cropped(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Pillow's ``crop(box)``: the box's pixels, zeros where it reaches outside the image."""
    left, top, right, bottom = box
    h, w = pixels.shape[:2]
    out = np.zeros((bottom - top, right - left) + pixels.shape[2:], pixels.dtype)
    y0, y1, x0, x1 = max(top, 0), min(bottom, h), max(left, 0), min(right, w)
    if y0 < y1 and x0 < x1:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = pixels[y0:y1, x0:x1]
    return out


PILLOW_BAND_TYPES = (np.uint8, np.uint16, np.int32, np.float32)  # one-band images Pillow resizes
EXACT_IN_FLOAT32 = (np.int8, np.int16, np.float16, np.bool_)  # resized as float32 without a rounding


def _resized(pixels: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Each band resized to ``size`` (width, height) with Pillow's filter ``interpolation``."""
    kind = pixels.dtype.type
    if kind not in PILLOW_BAND_TYPES and kind not in EXACT_IN_FLOAT32:
        return _resampled64(pixels, size, interpolation)
    if kind not in PILLOW_BAND_TYPES:
        pixels = pixels.astype(np.float32)  # resampling makes new values: counted as floats
    resample = INTERPOLATIONS[interpolation]
    bands = [np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., b])).resize(size, resample))
             for b in range(pixels.shape[2])]
    return np.stack(bands, axis=-1)


def _resampled64(pixels: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Pillow's resize in float64: its filters' weights (``ImagingResample``), or its nearest neighbours."""
    h, w = pixels.shape[:2]
    out = pixels.astype(np.float64)
    if interpolation == "nearest":  # Pillow's own choice of source pixel, found on an image of indices
        rows = np.asarray(Image.fromarray(np.arange(h, dtype=np.int32)[:, None].repeat(w, 1)).resize(size, 0))
        cols = np.asarray(Image.fromarray(np.arange(w, dtype=np.int32)[None, :].repeat(h, 0)).resize(size, 0))
        return out[rows, cols]
    if size[0] != w:  # Pillow skips a pass whose size does not change (lanczos' weights are not exactly 0, 1)
        out = _resample_axis(out, 1, size[0], interpolation)
    if size[1] != h:
        out = _resample_axis(out, 0, size[1], interpolation)
    return out


def _resample_axis(pixels: np.ndarray, axis: int, n_out: int, interpolation: str) -> np.ndarray:
    """One pass of Pillow's separable resample along ``axis``: each output a weighted sum of its taps."""
    first, weights = _weights(pixels.shape[axis], n_out, interpolation)
    shape = [1] * pixels.ndim
    shape[axis] = n_out
    out = np.zeros(pixels.shape[:axis] + (n_out,) + pixels.shape[axis + 1 :])
    for tap in range(weights.shape[1]):  # a few taps, each over the whole image: no (n_out, taps) copy of it
        at = np.minimum(first + tap, pixels.shape[axis] - 1)  # past an output's last input: weight 0
        out += np.take(pixels, at, axis=axis) * weights[:, tap].reshape(shape)
    return out


def _bicubic(x):
    x = np.abs(x)
    return np.where(x < 1, (1.5 * x - 2.5) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * -0.5, 0.0))


def _lanczos(x):
    return np.where((-3 <= x) & (x < 3), np.sinc(x) * np.sinc(x / 3), 0.0)


FILTERS = {"bilinear": (lambda x: np.maximum(1 - np.abs(x), 0.0), 1.0), "bicubic": (_bicubic, 2.0),
           "lanczos": (_lanczos, 3.0)}


def _weights(n_in: int, n_out: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs``: each output's first input and its normalised filter taps, ``(n_out,)``
    and ``(n_out, k)`` (taps past an output's last input weigh 0)."""
    kernel, support = FILTERS[interpolation]
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support *= filterscale
    center = (np.arange(n_out) + 0.5) * scale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int): truncation, as Pillow
    last = np.minimum((center + support + 0.5).astype(np.int64), n_in)
    k = int(np.ceil(support)) * 2 + 1
    at = first[:, None] + np.arange(k)
    weights = np.where(at < last[:, None], kernel((at - center[:, None] + 0.5) / filterscale), 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    return first, np.divide(weights, totals, out=weights.copy(), where=totals != 0)
