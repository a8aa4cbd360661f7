"""Bytes -> pixels: open, convert to the requested mode, preprocess, count.

This is the only module that talks to Pillow. Each image is decoded, turned
into the band layout the user asked for (``rgb``: torchvision's
``pil_loader``, ``convert("RGB")``; ``gray``: ``convert("L")``; ``native``: the
stored bands and bit depth), optionally resized and cropped by torchvision's
rules, and handed on as a small :class:`Decoded` record.

For 8-bit images the record carries the per-band histogram from Pillow's C
``Image.histogram()``: exact, and several times faster than numpy over the
interleaved pixel array, so the pixel array never leaves Pillow. 16-bit and
float images are handed on as arrays; ``bnstats.stats`` counts those.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

try:  # libjpeg-turbo without Pillow's per-image Python overhead; see _open_jpeg_fast
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency, but optional in spirit
    simplejpeg = None

MODES = ("rgb", "gray", "native")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
SIXTEEN_BIT_EXTRA = 'pip install "bnstats[16bit]"'
WIDE_MODES = ("I", "I;16", "F")  # Pillow modes counted from arrays, not histogram()
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


class DecodeError(Exception):
    """A problem with the run's settings or environment, not with one file.

    Unlike an unreadable file (skipped and listed), this stops the run.
    """


@dataclass(frozen=True)
class DecodeOptions:
    """Everything that shapes the pixels that get counted.

    ``resize`` is ``None``, an int (torchvision ``Resize(N)``: shorter side
    to N) or a ``(width, height)`` pair (fixed size); ``center_crop`` is
    ``None``, an int or a ``(width, height)`` pair. ``ignore_value``: pixels
    equal to it in every band are not counted.
    """

    mode: str = "rgb"
    resize: int | tuple[int, int] | None = None
    center_crop: int | tuple[int, int] | None = None
    interpolation: str = "bilinear"
    exif_transpose: bool = False
    ignore_value: float | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}")

    def to_dict(self) -> dict:
        """The settings as JSON-ready builtins (how results record them)."""
        as_list = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
        return {
            "mode": self.mode,
            "resize": as_list(self.resize),
            "center_crop": as_list(self.center_crop),
            "interpolation": self.interpolation,
            "exif_transpose": self.exif_transpose,
            "ignore_value": self.ignore_value,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DecodeOptions":
        as_tuple = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        d = dict(d)
        d["resize"] = as_tuple(d.get("resize"))
        d["center_crop"] = as_tuple(d.get("center_crop"))
        return cls(**d)


@dataclass(frozen=True)
class Decoded:
    """One image reduced to what the statistics need.

    Exactly one of ``counts`` (a ``(C, 256)`` histogram of 8-bit bands) and
    ``pixels`` (an ``(H, W, C)`` uint16 or float32 array; ``(1, n, C)`` when
    some pixels were left out) is set.
    """

    bands: tuple[str, ...]
    counts: np.ndarray | None = None
    pixels: np.ndarray | None = None
    notes: tuple[str, ...] = field(default=())  # one-time warnings for the user


def decode_file(path: str, options: DecodeOptions) -> Decoded:
    """Read one image file and reduce it (see :func:`decode_bytes`)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_bytes(data, options)


def decode_bytes(data: bytes, options: DecodeOptions) -> Decoded:
    """Decode one encoded image and reduce it to a :class:`Decoded` record.

    Raises whatever Pillow raises for an unreadable image (the caller skips
    the file), or :class:`DecodeError` for a problem with the settings.
    """
    image, bands, notes = open_image(data, options)
    if isinstance(image, np.ndarray):
        return _from_array(image, bands, options, notes)
    return _reduce(image, bands, options, notes)


def load_pixels(path: str, options: DecodeOptions) -> tuple[np.ndarray, tuple[str, ...]]:
    """The ``(n, C)`` pixels of one image that are counted, and the band names.

    This is the *naive* path (``bnstats compare`` holds every image this
    way); counting never materialises more than Pillow's own buffer. The
    same pixels are left out as when counting (see :func:`_keep`).
    """
    with open(path, "rb") as f:
        image, bands, _ = open_image(f.read(), options)
    pixels = image if isinstance(image, np.ndarray) else _image_array(image, bands)
    keep, _ = _keep(pixels, options)
    flat = pixels.reshape(-1, pixels.shape[-1])
    return (flat if keep is None else flat[keep.ravel()]), bands


def open_image(data: bytes, options: DecodeOptions):
    """Decode, convert and preprocess one image; the pixels are not counted yet.

    Returns ``(image, bands, notes)``: ``image`` is a Pillow image (possibly
    with a padding band beyond ``bands``, or the one L band of a gray JPEG
    whose ``bands`` are RGB) or, for 16-bit colour files, an ``(H, W, C)``
    uint16 array.
    """
    fast = _open_jpeg_fast(data, options)
    if fast is not None:
        return (*fast, ())
    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that;
        # the error skips the file, the warning is no reason to.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))  # first frame of animated images
    if options.mode == "native" and _is_16bit_colour(image, data):
        pixels, bands = _decode_16bit_colour(data)
        orientation = image.getexif().get(ORIENTATION) if options.exif_transpose else None
        if orientation in EXIF_TRANSPOSE:
            pixels = _per_band(pixels, lambda im: im.transpose(EXIF_TRANSPOSE[orientation]))
        if options.resize is not None or options.center_crop is not None:
            pixels = _per_band(pixels, lambda im: preprocess(im, options))
        return pixels, bands, ()
    if options.exif_transpose:
        image = ImageOps.exif_transpose(image)
    image, notes = _convert(image, options.mode)
    image = preprocess(image, options)
    return image, tuple("L" if b == "I" else b for b in image.getbands()), notes


def _reduce(image: Image.Image, bands: tuple[str, ...], options: DecodeOptions, notes=()) -> Decoded:
    """Count an image of the final layout: Pillow's histogram for 8-bit bands.

    ``image`` may carry a padding band (RGBX) beyond ``bands``, or be the
    single L band of a gray JPEG that ``bands`` says is RGB (convert("RGB")
    copies L into all three bands, so its histogram is L's three times).
    """
    if image.mode in WIDE_MODES:
        return _from_array(_array(image), bands, options, notes)
    mask = None
    if options.ignore_value is not None:  # 8-bit pixels: only ignore_value leaves any out
        keep, _ = _keep(_image_array(image, bands), options)
        mask = Image.fromarray(keep)
    counts = np.asarray(image.histogram(mask), np.int64).reshape(-1, 256)
    if len(counts) < len(bands):
        counts = np.repeat(counts, len(bands), axis=0)
    return Decoded(bands, counts=counts[: len(bands)], notes=notes)


_scratch = threading.local()  # one reusable decode buffer per thread


def _open_jpeg_fast(data: bytes, options: DecodeOptions):
    """A JPEG decoded by libjpeg-turbo through ``simplejpeg``, or None.

    ``simplejpeg`` decodes about 20% faster than Pillow's JPEG plugin, with
    bit-identical pixels (the test suite checks this on baseline and
    progressive, colour and gray JPEGs), and into a reused buffer. It is used
    only where the result is Pillow's to the bit: YCbCr, RGB and gray JPEGs,
    no EXIF transpose, resize or crop (those go through Pillow), and images
    under Pillow's decompression-bomb limit. Returns ``(image, bands)`` where
    ``image`` is a Pillow image sharing the buffer, or None to use Pillow.
    """
    if simplejpeg is None or options.exif_transpose or options.resize is not None or options.center_crop is not None:
        return None
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if Image.MAX_IMAGE_PIXELS and height * width > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow warns or raises DecompressionBombError
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
    except ValueError:
        return None  # corrupt or truncated: Pillow decides, and names the error
    image = Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)
    if options.mode == "gray" and mode == "RGBX":
        image, bands = image.convert("L"), ("L",)
    return image, bands


def _convert(image: Image.Image, mode: str) -> tuple[Image.Image, tuple[str, ...]]:
    """Convert to the requested mode; return the image and notes for the user."""
    notes = ()
    if mode in ("rgb", "gray") and image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes = (
            f"a {image.mode} image was reduced to 8 bits, clipping values above 255 "
            "as torchvision's loader does; use --mode native to keep its full range",
        )
    # convert() to the image's own mode would only copy it
    if mode == "rgb":
        return (image if image.mode == "RGB" else image.convert("RGB")), notes
    if mode == "gray":
        return (image if image.mode == "L" else image.convert("L")), notes
    # native: keep stored bands and depth; only make palettes and bilevel
    # images into the colours they stand for.
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB"), notes
    if image.mode == "PA":
        return image.convert("RGBA"), notes
    if image.mode == "1":
        return image.convert("L"), notes
    if image.mode in ("I;16B", "I;16L"):  # Pillow's convert("I;16") would clip to 255
        return Image.fromarray(np.asarray(image).astype(np.uint16)), notes
    return image, notes


def preprocess(image: Image.Image, options: DecodeOptions) -> Image.Image:
    """Apply torchvision's ``Resize`` then ``CenterCrop`` rules to a Pillow image."""
    if options.resize is not None:
        size = resized_size(image.size, options.resize)
        if size != image.size:  # torchvision leaves an image at the target size alone
            image = image.resize(size, INTERPOLATIONS[options.interpolation])
    if options.center_crop is not None:
        image = image.crop(center_crop_box(image.size, options.center_crop))
    return image


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
    cw, ch = (crop, crop) if isinstance(crop, int) else crop
    w, h = size
    pad_left, pad_right = ((cw - w) // 2, (cw - w + 1) // 2) if cw > w else (0, 0)
    pad_top, pad_bottom = ((ch - h) // 2, (ch - h + 1) // 2) if ch > h else (0, 0)
    top = int(round((h + pad_top + pad_bottom - ch) / 2.0)) - pad_top
    left = int(round((w + pad_left + pad_right - cw) / 2.0)) - pad_left
    return (left, top, left + cw, top + ch)


def _array(image: Image.Image) -> np.ndarray:
    """An (H, W, C) array of a non-8-bit Pillow image, in native byte order."""
    a = np.asarray(image)
    if image.mode == "I":  # 32-bit integers: exact only if they fit 16 bits
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError("32-bit integer pixels outside 0..65535 are not supported")
        a = a.astype(np.uint16)
    elif a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    return a.reshape(a.shape[0], a.shape[1], -1)


def _from_array(pixels: np.ndarray, bands: tuple[str, ...], options: DecodeOptions, notes=()) -> Decoded:
    """A Decoded record of 16-bit or float pixels, without the pixels not to count."""
    keep, note = _keep(pixels, options)
    if keep is not None:
        # one row of the kept pixels: the (H, W, C) shape RunningStats.update expects
        pixels = pixels[keep].reshape(1, -1, pixels.shape[-1])
    return Decoded(bands, pixels=pixels, notes=(*notes, *note))


def _keep(pixels: np.ndarray, options: DecodeOptions) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """Which pixels of an ``(H, W, C)`` array are counted: an ``(H, W)`` mask, or None for all.

    Left out are pixels equal to ``ignore_value`` in every band, and float
    pixels that are NaN or infinite in any band (nodata in float rasters).
    Also returns a note for the user when non-finite pixels were dropped.
    """
    keep, notes = None, ()
    if options.ignore_value is not None:
        keep = (pixels != options.ignore_value).any(axis=-1)
    if pixels.dtype.kind == "f":
        finite = np.isfinite(pixels).all(axis=-1)
        if not finite.all():
            notes = ("float pixels that are NaN or infinite in any band are not counted",)
            keep = finite if keep is None else keep & finite
    return keep, notes


def _image_array(image: Image.Image, bands: tuple[str, ...]) -> np.ndarray:
    """The ``(H, W, C)`` array of a Pillow image's counted bands.

    Drops a padding band (RGBX) and repeats the L band of a gray JPEG that
    is counted as RGB.
    """
    pixels = _array(image) if image.mode in WIDE_MODES else np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] < len(bands):
        pixels = np.repeat(pixels, len(bands), axis=2)
    return pixels[..., : len(bands)]


def _per_band(pixels: np.ndarray, transform) -> np.ndarray:
    """Apply a Pillow transform to each band of a 16-bit array separately."""
    bands = [np.asarray(transform(Image.fromarray(np.ascontiguousarray(pixels[..., b])))) for b in range(pixels.shape[2])]
    return np.stack(bands, axis=-1)


# -- 16-bit colour: Pillow would silently hand back 8 bits ---------------------

def _is_16bit_colour(image: Image.Image, data: bytes) -> bool:
    """True for 16-bit multi-band PNG or TIFF (which Pillow reduces to 8-bit)."""
    if image.format == "PNG":
        # IHDR follows the 8-byte signature: length, type, width, height,
        # then bit depth (byte 24) and colour type (byte 25; 2 RGB, 4 LA, 6 RGBA).
        return data[24] == 16 and data[25] in (2, 4, 6)
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return len(bits) > 1 and max(bits) == 16
    return False


def _decode_16bit_colour(data: bytes) -> tuple[np.ndarray, tuple[str, ...]]:
    """All 16 bits of a multi-band PNG or TIFF, as ``(H, W, C)`` uint16 and band names."""
    try:
        import cv2
    except ImportError:
        raise DecodeError(
            f"16-bit colour images need a decoder that keeps 16 bits: {SIXTEEN_BIT_EXTRA}"
        ) from None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise OSError("OpenCV could not decode this 16-bit image")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if data.startswith(b"\x89PNG") and data[25] == 4:  # grey + alpha: OpenCV expands it to BGRA
        return np.ascontiguousarray(pixels[..., [0, 3]]), ("L", "A")
    # OpenCV returns BGR(A); bnstats reports R, G, B(, A)
    order = [2, 1, 0, 3][: pixels.shape[2]] if pixels.shape[2] >= 3 else list(range(pixels.shape[2]))
    return np.ascontiguousarray(pixels[..., order]), ("R", "G", "B", "A")[: len(order)]


def prefetch(paths) -> None:
    """Ask the kernel to start reading files we are about to decode.

    ``posix_fadvise(WILLNEED)`` returns at once; the reads overlap with
    decoding the files before them. A no-op where it is unavailable.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

