"""Bytes or arrays -> pixels in the requested layout, ready to count.

This module owns decoding: each encoded image is opened (``simplejpeg`` for
plain JPEGs, Pillow for everything else, OpenCV for 16-bit colour), turned
into the band layout the user asked for (``rgb``: torchvision's
``pil_loader``, ``convert("RGB")``; ``gray``: ``convert("L")``; ``native``:
the stored bands and bit depth), passed through the transforms
(``bnstats.decoding.transforms``) and handed on as a :class:`DecodedImage`.

A :class:`DecodedImage` offers the two views statistics take:
``histogram()`` — for 8-bit images Pillow's C ``Image.histogram()``, exact and
several times faster than numpy over the interleaved pixels, so the pixel
array never leaves Pillow — and ``values()``, the ``(n, C)`` array of counted
pixels. Already-decoded arrays (from array sources) enter through
:func:`decode_array`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

from .. import limits
from . import png
from . import tiff
from . import transforms
from ..statistics.counting import bincount, raw_histogram
from ..statistics.formulas import integer_levels, integer_offset
from .transforms import INTERPOLATIONS, ORIENTATION, preprocess

try:  # libjpeg-turbo without Pillow's per-image Python overhead; see _open_jpeg_fast
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency, but optional in spirit
    simplejpeg = None

MODES = ("rgb", "gray", "native")
SIXTEEN_BIT_EXTRA = 'pip install "bnstats[16bit]"'
WIDE_MODES = ("I", "I;16", "F")  # Pillow modes counted from arrays, not histogram()
_BANDS = {"RGB": ("R", "G", "B"), "L": ("L",)}  # of the modes --mode rgb and gray count in
SMALL_PIXELS = 4096  # up to this many pixels an 8-bit image is counted from its raw bytes, in batches
RAW_BYTES_PER_PIXEL = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "RGBX": 4, "CMYK": 4}


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
        for name in ("resize", "center_crop"):
            value = getattr(self, name)
            sizes = value if isinstance(value, tuple) and len(value) == 2 else (value,)
            if value is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                             for v in sizes):
                raise ValueError(f"{name} must be a positive integer or a (width, height) pair, not {value!r}")
        if not isinstance(self.exif_transpose, bool):
            raise ValueError("exif_transpose must be true or false")

    def to_dict(self) -> dict:
        """The settings as JSON-ready builtins (how results record them); a size pair is written
        ``{"width": W, "height": H}``, so that no reader has to guess the order."""
        return {f.name: _size_dict(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "DecodeOptions":
        """The options recorded by :meth:`to_dict` (or by earlier versions, which wrote a size pair as the
        list ``[width, height]``); ValueError or TypeError for anything else."""
        d = dict(d)
        d["resize"] = _size_pair(d.get("resize"))
        d["center_crop"] = _size_pair(d.get("center_crop"))
        return cls(**d)


def _size_dict(value):
    """A ``(width, height)`` pair as ``{"width", "height"}``; anything else as it is."""
    return {"width": value[0], "height": value[1]} if isinstance(value, tuple) else value


def _size_pair(value):
    """A size as :class:`DecodeOptions` holds it, from ``{"width", "height"}`` or ``[width, height]``."""
    if isinstance(value, dict):
        if set(value) != {"width", "height"}:
            raise ValueError(f"a size must have keys width and height, not {sorted(value)}")
        return (value["width"], value["height"])
    return tuple(value) if isinstance(value, list) else value


def differences(ours: dict, theirs: dict) -> list[str]:
    """``"key: theirs vs ours"`` for every setting that differs between two settings dicts."""
    return [f"{k}: {theirs.get(k)!r} vs {ours.get(k)!r}" for k in {**ours, **theirs} if ours.get(k) != theirs.get(k)]


@dataclass(frozen=True)
class ArrayImage:
    """An image that arrives decoded: ``(H, W, C)`` pixels and its band names.

    ``(N, H, W, C)`` pixels are a batch of N images, counted at once.
    """

    pixels: np.ndarray
    bands: tuple[str, ...]


class RawPixels:
    """8-bit pixels as a decoder left them: ``height`` rows of ``width`` pixels of ``stride`` bytes,
    whose first ``counted`` bytes are the bands (one for three bands: grey counted as R, G and B).

    ``reused``: the bytes live in a buffer the next decode overwrites (a JPEG's), so they are
    counted at once, never gathered for a later count.
    """

    __slots__ = ("data", "height", "width", "stride", "counted", "reused")

    def __init__(self, data, height: int, width: int, stride: int, counted: int, reused: bool = False):
        self.data, self.height, self.width = data, height, width
        self.stride, self.counted, self.reused = stride, counted, reused

    def array(self, channels: int) -> np.ndarray:
        """The ``(H, W, channels)`` pixels of the bands (a view, or a copy where grey is repeated)."""
        pixels = np.frombuffer(self.data, np.uint8, self.height * self.width * self.stride)
        pixels = pixels.reshape(self.height, self.width, self.stride)[..., : self.counted]
        return np.repeat(pixels, channels, axis=2) if self.counted < channels else pixels


class DecodedImage:
    """One image in its final layout, ready to be counted by the statistics.

    ``histogram()`` is the exact ``(C, levels)`` int64 histogram of integer
    pixels (None for float data); ``values()`` the ``(n, C)`` array of the
    pixels that count (``--ignore-value`` and non-finite floats left out).
    Both are computed once, on first use. ``notes`` are one-time warnings for
    the user. The pixels of a JPEG may live in a per-thread buffer that the
    next decode reuses: use an image before decoding the next.
    """

    __slots__ = ("bands", "notes", "count", "raw", "_image", "_pixels", "_ignore", "_values", "_counts")

    def __init__(self, bands, notes=(), *, image: Image.Image | None = None, ignore=None,
                 values: np.ndarray | None = None, count: int = 1):
        self.bands = bands if bands.__class__ is tuple else tuple(bands)
        self.notes = notes if notes.__class__ is tuple else tuple(notes)
        self.count = count
        self._image, self._ignore, self._values, self._counts = image, ignore, values, None
        self._pixels: RawPixels | None = None  # of :meth:`of_raw`
        #: ``(bytes, stride, counted)`` of a small 8-bit image's pixels, else None: statistics may gather
        #: these and count many images at once (see :class:`RawPixels`)
        self.raw: tuple[bytes, int, int] | None = None

    @classmethod
    def of_pillow(cls, image: Image.Image, bands, options: DecodeOptions, notes=()) -> "DecodedImage":
        """An 8-bit Pillow image (possibly with a padding band beyond ``bands``)."""
        mode = image.mode
        if mode in WIDE_MODES:
            return cls.of_array(_array(image), bands, options, notes)
        stride = RAW_BYTES_PER_PIXEL.get(mode, 0)
        width, height = image.size
        if options.ignore_value is None and len(bands) <= stride and width * height <= SMALL_PIXELS:
            # per image, a histogram list costs more than decoding a thumbnail
            return cls.of_raw(RawPixels(image.tobytes(), height, width, stride, len(bands)), bands, notes)
        decoded = cls(bands, notes, image=image, ignore=options.ignore_value)
        decoded.histogram()  # decode now: a broken file fails here, where the caller skips it
        return decoded

    @classmethod
    def of_raw(cls, pixels: RawPixels, bands, notes=()) -> "DecodedImage":
        """8-bit pixels as a decoder left them (see :class:`RawPixels`); every pixel counts."""
        decoded = cls(bands, notes)
        decoded._pixels = pixels
        if not pixels.reused and pixels.height * pixels.width <= SMALL_PIXELS:
            decoded.raw = (pixels.data, pixels.stride, pixels.counted)
        else:
            decoded.histogram()
        return decoded

    @classmethod
    def of_array(cls, pixels: np.ndarray, bands, options: DecodeOptions, notes=(), count: int = 1) -> "DecodedImage":
        """An ``(H, W, C)`` array (``(N, H, W, C)`` for a batch of ``count``); the pixels not to count are dropped now."""
        keep, note = _keep(pixels, options.ignore_value)
        flat = pixels.reshape(-1, pixels.shape[-1])
        return cls(bands, (*notes, *note), values=flat if keep is None else flat[keep.ravel()], count=count)

    def histogram(self) -> np.ndarray | None:
        if self._counts is None:
            if self._pixels is not None:
                p = self._pixels
                self._counts = raw_histogram([p.data], p.stride, len(self.bands), p.counted)
                self.raw = None  # counted now: statistics take the counts, not the bytes again
            elif self._image is not None:
                self._counts = self._pillow_histogram()
            else:
                levels = integer_levels(self._values.dtype)
                if levels is None:
                    return None
                self._counts = bincount(self._values, levels)
        return self._counts

    @property
    def counts(self) -> np.ndarray | None:
        """The histogram (see :meth:`histogram`)."""
        return self.histogram()

    @property
    def offset(self) -> int:
        """The value of histogram bin 0: -128 or -32768 for signed data, else 0."""
        return 0 if self._values is None else integer_offset(self._values.dtype)

    def values(self) -> np.ndarray:
        if self._values is None and self._pixels is not None:
            self._values = self._pixels.array(len(self.bands)).reshape(-1, len(self.bands))
        elif self._values is None:
            pixels = _image_array(self._image, self.bands)
            keep, _ = _keep(pixels, self._ignore)
            flat = pixels.reshape(-1, pixels.shape[-1])
            self._values = flat if keep is None else flat[keep.ravel()]
        return self._values

    def _pillow_histogram(self) -> np.ndarray:
        """Pillow's exact C histogram of the counted bands."""
        image, bands = self._image, self.bands
        mask = None
        if self._ignore is not None:  # 8-bit pixels: only ignore_value leaves any out
            keep, _ = _keep(_image_array(image, bands), self._ignore)
            mask = Image.fromarray(keep)
        return np.asarray(image.histogram(mask), np.int64).reshape(-1, 256)[: len(bands)]


_collecting = threading.local()  # .caught: the list warnings go to inside collected_warnings()


@contextlib.contextmanager
def collected_warnings():
    """Collect decoders' warnings once for many :func:`decode_item` calls instead of once per image.

    Inside, each decoded image gets the warnings raised while it was decoded
    as its notes, as :func:`decode_item` does on its own; entering Python's
    ``catch_warnings`` costs more than decoding a thumbnail.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _collecting.caught = caught
        try:
            yield
        finally:
            _collecting.caught = None


def decode_item(payload, options: DecodeOptions) -> DecodedImage:
    """Decode what a source read: encoded bytes or an :class:`ArrayImage`.

    Warnings that decoders raise (Pillow's "Corrupt EXIF data", ...) become
    the image's one-time notes instead of reaching stderr past ``--quiet``.
    """
    caught = getattr(_collecting, "caught", None)
    if caught is None:
        with collected_warnings():
            return decode_item(payload, options)
    if caught:
        del caught[:]
    if isinstance(payload, ArrayImage):
        image = decode_array(payload.pixels, payload.bands, options)
    else:
        image = decode_bytes(payload, options)
    if caught:
        image.notes += tuple(_warning_note(w) for w in caught)
        del caught[:]
    return image


def _warning_note(w: warnings.WarningMessage) -> str:
    """A decoder's warning as a note; numbers blanked so that each kind is shown once."""
    message = re.sub(r"\d+", "N", str(w.message).strip().splitlines()[0] if str(w.message).strip() else "")
    return f"decoding raised {w.category.__name__}: {message} (the image was counted)"


def decode_file(path: str, options: DecodeOptions = DecodeOptions()) -> DecodedImage:
    """Read one image file and decode it (see :func:`decode_bytes`)."""
    with open(path, "rb") as f:
        return decode_bytes(f.read(), options)


def decode_bytes(data: bytes, options: DecodeOptions) -> DecodedImage:
    """Decode one encoded image into a :class:`DecodedImage`.

    Raises whatever Pillow raises for an unreadable image (the caller skips
    the file), or :class:`DecodeError` for a problem with the settings.
    """
    image, bands, notes = _open_image(data, options)
    if image.__class__ is RawPixels:
        if options.ignore_value is None:
            return DecodedImage.of_raw(image, bands, notes)
        image = image.array(len(bands))
    if isinstance(image, np.ndarray):
        return DecodedImage.of_array(image, bands, options, notes)
    return DecodedImage.of_pillow(image, bands, options, notes)


def decode_array(pixels, bands=None, options: DecodeOptions = DecodeOptions()) -> DecodedImage:
    """An already-decoded image: ``(H, W)`` or ``(H, W, C)`` pixels as stored.

    The array is counted in its own bands and dtype (8/16-bit unsigned
    exactly, anything else as float64); Resize and CenterCrop apply band by
    band. ``bands`` defaults to ``L``, ``RGB``, ``RGBA`` or ``B1..Bn``.
    """
    pixels, bands = _as_hwc(pixels, bands)
    if pixels.ndim == 4:  # a batch: transforms apply image by image
        if options.resize is not None or options.center_crop is not None:
            pixels = np.stack([transforms.transform_array(p, options) for p in pixels])
        return DecodedImage.of_array(pixels, bands, options, count=pixels.shape[0])
    pixels = transforms.transform_array(pixels, options)
    return DecodedImage.of_array(pixels, bands, options)


def _as_hwc(pixels, bands=None) -> tuple[np.ndarray, tuple[str, ...]]:
    """An ``(H, W, C)`` (or ``(N, H, W, C)``) array in native byte order and its band names (default ones
    where none are given), or ValueError for another shape or as many names as channels."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim not in (3, 4):
        raise ValueError(f"an image array must be (H, W), (H, W, C) or a batch (N, H, W, C), not {pixels.shape}")
    if pixels.dtype.byteorder not in ("=", "|"):
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    bands = tuple(bands) if bands is not None else default_bands(pixels.shape[-1])
    if len(bands) != pixels.shape[-1]:
        raise ValueError(f"{len(bands)} band names for {pixels.shape[-1]} channels")
    return pixels, bands


def default_bands(channels: int) -> tuple[str, ...]:
    """Band names for an array of ``channels`` channels: L, RGB, RGBA or B1..Bn."""
    return {1: ("L",), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}.get(
        channels, tuple(f"B{i}" for i in range(1, channels + 1)))


def load_pixels(payload, options: DecodeOptions) -> tuple[np.ndarray, tuple[str, ...]]:
    """The ``(n, C)`` pixels of one image that are counted, and the band names.

    This is the *naive* path (``bnstats compare`` holds every image this
    way); counting never materialises more than Pillow's own buffer. The
    same pixels are left out as when counting. ``payload`` is what a source
    read (bytes or an :class:`ArrayImage`), or a file path.
    """
    image = decode_file(payload, options) if isinstance(payload, str) else decode_item(payload, options)
    return np.array(image.values()), image.bands  # a copy: JPEG pixels live in a reused buffer


def load_image(payload, options: DecodeOptions) -> tuple[np.ndarray, tuple[str, ...]]:
    """The ``(H, W, C)`` pixels of one image (a copy), preprocessed as when counting, and its band names.

    For feeding a model (``bnstats recalibrate``): every pixel is kept
    (``ignore_value`` does not apply). ``payload`` is what a source read.
    """
    if isinstance(payload, ArrayImage):
        pixels, bands = _as_hwc(payload.pixels, payload.bands)
        return np.array(transforms.transform_array(pixels, options)), bands
    image, bands, _ = open_image(payload, options)
    pixels = image if isinstance(image, np.ndarray) else _image_array(image, bands)
    return np.array(pixels), bands  # a copy: JPEG pixels live in a reused buffer


def open_image(data: bytes, options: DecodeOptions):
    """Decode, convert and preprocess one image; the pixels are not counted yet.

    Returns ``(image, bands, notes)``: ``image`` is a Pillow image (possibly
    with a padding band beyond ``bands``), an ``(H, W, C)`` uint8 array (the
    pixels a fast decoder left, a gray JPEG's L band repeated where its
    ``bands`` are RGB) or, for 16-bit colour files, an ``(H, W, C)`` uint16
    array.
    """
    image, bands, notes = _open_image(data, options)
    return (image.array(len(bands)) if image.__class__ is RawPixels else image), bands, notes


def _open_image(data: bytes, options: DecodeOptions):
    """:func:`open_image`, where the image may also be the :class:`RawPixels` a fast decoder left
    (a JPEG through simplejpeg, an 8-bit PNG): counted as they are, without a Pillow image. ``data`` may
    be a :class:`tiff.TiffPage`: one page of a multi-page TIFF."""
    data, page = (data.data, data.index) if data.__class__ is tiff.TiffPage else (data, None)
    fast = None
    if data[:2] == b"\xff\xd8":
        fast = _open_jpeg_fast(data, options)
    elif data[:8] == png.MAGIC:
        png.check_limits(data)  # every PNG, before the fast path, Pillow or OpenCV allocate for it
        fast = _read_png(data, options)
    elif tiff.is_tiff(data):
        _check_tiff(data, options.mode, page)
    if fast is not None:
        return (*fast, ())
    mode = options.mode
    if mode != "native":  # the common case, without a call per step: rgb or gray, as stored or converted
        image = _open(data, page)
        if options.exif_transpose:
            image = transforms.exif_transpose(image)
        image, notes = _convert(image, mode)
        if options.resize is not None or options.center_crop is not None:
            image = preprocess(image, options)
        return image, _BANDS[image.mode], notes
    if tiff.is_tiff(data):
        scientific = _open_scientific_tiff(data, page or 0)
        if scientific is not None:
            pixels, bands = scientific
            return transforms.transform_array(pixels, options), bands, ()
    image = _open(data, page)
    if _is_16bit_colour(image, data):
        if page:  # OpenCV reads the first page only
            raise DecodeError(f"16-bit colour pages of a multi-page TIFF need tifffile: {tiff.TIFF_EXTRA}")
        pixels, bands = _decode_16bit_colour(image, data)
        orientation = image.getexif().get(ORIENTATION) if options.exif_transpose else None
        return transforms.transform_array(pixels, options, orientation), bands, ()
    if options.exif_transpose:
        image = transforms.exif_transpose(image)
    image, notes = _convert(image, options.mode)
    if options.resize is not None or options.center_crop is not None:
        image = preprocess(image, options)
    bands = image.getbands()
    return image, (tuple("L" if b == "I" else b for b in bands) if "I" in bands else bands), notes


def _check_tiff(data: bytes, mode: str, index: int | None = None) -> None:
    """Refuse, from its header and before any decoder allocates, a TIFF page over the bounds of
    :mod:`bnstats.limits` or with a sample size no decoder has; and in ``--mode rgb``/``gray`` one of
    more than 4 bands, which Pillow refuses (libtiff printing past ``--quiet``) or, compressed, reads
    as a wrong gray image. ``index`` is the page of a page item; None for a whole file, which must then
    hold one main page: a stack read whole (an archive member, a URL) would be counted as its first
    page alone, a silently wrong number."""
    pages, damage = tiff.directory_chain(data)
    if index is None:
        count = len(tiff.main_pages(pages))
        if count > 1:
            raise ValueError(f"a {count}-page TIFF stack: its pages are counted one by one only in TIFF files "
                             "on a local disk (extract it, or save it as an array)")
        if damage is not None:  # more pages than the one read, or a damaged file: not its first page alone
            raise ValueError(f"damaged TIFF: its chain of pages breaks after page 0 ({damage})")
        index = 0
    if pages and damage is not None and index >= len(pages):  # the item for the pages past the break
        raise ValueError(f"damaged TIFF: its chain of pages breaks after page {len(pages) - 1} ({damage}): "
                         "the pages after it, if any, are not counted")
    if not pages or index >= len(pages):
        return  # no such directory: the decoder names the error
    page = pages[index]
    tiff.check_page(page)
    if mode != "native" and page["samples"] > 4:
        raise ValueError(f"a {page['samples']}-band TIFF: use --mode native to count its bands "
                         f"(--mode {mode} reads images of 1 to 4 bands)")


def _open_scientific_tiff(data: bytes, page: int = 0):
    """``(pixels, bands)`` of a TIFF that Pillow cannot read as stored (many bands, signed, float64), or None.

    Without tifffile, 16-bit colour still has OpenCV; anything else is a
    :class:`DecodeError` naming the extra, not a silently wrong count.
    """
    pages = tiff.tiff_directories(data) or []
    layout = pages[page] if page < len(pages) else None
    if not tiff.needs_tifffile(layout):
        return None
    if tiff.have_tifffile():
        return tiff.read_tiff(data, page)
    if layout["samples"] in (2, 3, 4) and layout["bits"] == 16 and layout["format"] == 1:
        return None  # 16-bit colour: the OpenCV path below, or its own message
    kind = {1: "unsigned", 2: "signed", 3: "float"}.get(layout["format"], "")
    what = "BigTIFF" if layout["bigtiff"] else f"{layout['samples']}-band {layout['bits']}-bit {kind} TIFF"
    raise DecodeError(f"a {what} needs tifffile to be read as stored: {tiff.TIFF_EXTRA}")


def probe(payload, options: DecodeOptions) -> tuple[tuple[int, int], int, int]:
    """``((width, height), channels, bytes per value)`` of an image as it will be counted.

    From the header alone where the payload is encoded; what ``compare``
    uses to estimate a naive full load before doing it.
    """
    if getattr(_collecting, "caught", None) is None:
        with collected_warnings():  # the image's warnings are noted when it is decoded, not here
            return probe(payload, options)
    if isinstance(payload, ArrayImage):
        pixels = payload.pixels
        size = (pixels.shape[1], pixels.shape[0])
        channels = pixels.shape[2] if pixels.ndim == 3 else 1
        return transforms.output_size(size, options), channels, pixels.dtype.itemsize
    payload, page = (payload.data, payload.index) if payload.__class__ is tiff.TiffPage else (payload, None)
    if tiff.is_tiff(payload):
        _check_tiff(payload, options.mode, page)
    if options.mode == "native" and tiff.is_tiff(payload):
        scientific = _open_scientific_tiff(payload, page or 0)
        if scientific is not None:
            return probe(ArrayImage(*scientific), options)
    image = _open(payload, page)
    size = transforms.output_size(image.size, options)
    if options.mode == "native" and _is_16bit_colour(image, payload):
        return size, _16bit_colour_channels(image, payload), 2
    mode = _target_mode(image, options.mode)
    return size, Image.getmodebands(mode), {"I;16": 2, "I": 2, "F": 4}.get(mode, 1)


def _open(data: bytes, page: int | None = None) -> Image.Image:
    """Pillow's image of ``data`` (not decoded yet), at frame ``page`` of a multi-page file (else the
    first frame: animated GIF, WebP and APNG count it alone, as torchvision loads them); past the pixel
    bound (Pillow raises at ours: see :func:`limits.install`), DecompressionBombError saying which
    variable raises the bound."""
    try:
        image = _pillow_open(data)
        if page:
            image.seek(page)
        return image
    except Image.DecompressionBombError as exc:
        message = f"{exc} (raise it with {limits.current().variable('pixels')})"
        sizes = [int(n) for n in re.findall(r"\((\d+) pixels\)", str(exc))]
        try:
            if sizes:
                limits.current().check_pixels(sizes[0])
        except limits.LimitError as ours:
            message = str(ours)
        raise Image.DecompressionBombError(message) from None


def _pillow_open(data: bytes) -> Image.Image:
    caught = getattr(_collecting, "caught", None)
    if caught is not None:  # warnings become notes of the image, but not this one (see below)
        seen = len(caught)
        image = Image.open(io.BytesIO(data))
        if len(caught) > seen:
            caught[seen:] = [w for w in caught[seen:] if not issubclass(w.category, Image.DecompressionBombWarning)]
        return image
    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that;
        # the error skips the file, the warning is no reason to.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))  # first frame of animated images


def _as_stored(options: DecodeOptions) -> bool:
    """No EXIF transpose, resize or crop: the pixels as stored are the ones counted (what a fast decoder gives)."""
    return not (options.exif_transpose or options.resize is not None or options.center_crop is not None)


def _read_png(data: bytes, options: DecodeOptions):
    """``(RawPixels, bands)`` of an 8-bit PNG read by :func:`png.read_png` where that gives Pillow's pixels
    for these options, or None. Colour to grey, EXIF transpose, resize and crop are left to Pillow."""
    if not _as_stored(options):
        return None
    read = png.read_png(data)
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
    return RawPixels(pixels, height, width, stride, counted), bands


_PNG_BANDS = {1: ("L",), 2: ("L", "A"), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}
_scratch = threading.local()  # one reusable decode buffer per thread


def _open_jpeg_fast(data: bytes, options: DecodeOptions):
    """A JPEG decoded by libjpeg-turbo through ``simplejpeg``, or None.

    ``simplejpeg`` decodes about 20% faster than Pillow's JPEG plugin, with
    bit-identical pixels (the test suite checks this on baseline and
    progressive, colour and gray JPEGs), and into a reused buffer. It is used
    only where the result is Pillow's to the bit: YCbCr, RGB and gray JPEGs,
    no EXIF transpose, resize or crop (those go through Pillow), and images
    under Pillow's decompression-bomb limit. Returns ``(image, bands)`` where
    ``image`` is the :class:`RawPixels` in the reused buffer (or, converted to
    grey, a Pillow image), or None to use Pillow.
    """
    if simplejpeg is None or not _as_stored(options):
        return None
    if not data.startswith(b"\xff\xd8"):
        return None
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
    except ValueError:
        return None  # corrupt or truncated: Pillow decides, and names the error
    if options.mode == "gray" and mode == "RGBX":
        return Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1).convert("L"), ("L",)
    return RawPixels(pixels, height, width, len(mode), min(len(bands), len(mode)), reused=True), bands


def _target_mode(image: Image.Image, mode: str) -> str:
    """The Pillow mode an image is counted in: the one rule for ``--mode``.

    ``rgb`` and ``gray`` convert as torchvision's loader does; ``native``
    keeps stored bands and depth, only making palettes and bilevel images
    into the colours they stand for, and 16-bit gray of either byte order
    into native ``I;16``.
    """
    if mode == "rgb":
        return "RGB"
    if mode == "gray":
        return "L"
    if image.mode == "P":
        return "RGBA" if "transparency" in image.info else "RGB"
    return {"PA": "RGBA", "1": "L", "I;16B": "I;16", "I;16L": "I;16"}.get(image.mode, image.mode)


def _convert(image: Image.Image, mode: str) -> tuple[Image.Image, tuple[str, ...]]:
    """Convert to the requested mode; return the image and notes for the user."""
    notes = ()
    if mode in ("rgb", "gray") and image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes = (
            f"a {image.mode} image was reduced to 8 bits, clipping values above 255 "
            "as torchvision's loader does; use --mode native to keep its full range",
        )
    target = _target_mode(image, mode)
    if image.mode == target:  # convert() to the image's own mode would only copy it
        return image, notes
    if target == "I;16":  # from I;16B/I;16L: Pillow's convert("I;16") would clip to 255
        return Image.fromarray(np.asarray(image).astype(np.uint16)), notes
    return image.convert(target), notes


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


def _keep(pixels: np.ndarray, ignore_value) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """Which pixels of an ``(H, W, C)`` array are counted: an ``(H, W)`` mask, or None for all.

    The one rule for which pixels count: left out are pixels equal to
    ``ignore_value`` in every band, and float pixels that are NaN or infinite
    in any band (nodata in float rasters). Also returns a note for the user
    when non-finite pixels were dropped.
    """
    keep, notes = None, ()
    if ignore_value is not None:
        keep = (pixels != ignore_value).any(axis=-1)
    if pixels.dtype.kind == "f":
        finite = np.isfinite(pixels).all(axis=-1)
        if not finite.all():
            notes = ("float pixels that are NaN or infinite in any band are not counted",)
            keep = finite if keep is None else keep & finite
    return keep, notes


def _image_array(image: Image.Image, bands: tuple[str, ...]) -> np.ndarray:
    """The ``(H, W, C)`` array of a Pillow image's counted bands (a padding band, RGBX's, dropped)."""
    pixels = _array(image) if image.mode in WIDE_MODES else np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return pixels[..., : len(bands)]


# -- 16-bit colour: Pillow would silently hand back 8 bits ---------------------

def _is_16bit_colour(image: Image.Image, data: bytes) -> bool:
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


def _tiff_bits(image: Image.Image) -> tuple:
    bits = image.tag_v2.get(258, (8,))
    return bits if isinstance(bits, tuple) else (bits,)


def _ppm_maxval(image: Image.Image) -> int:
    """A PPM's maxval from Pillow's decoder arguments (8-bit files use the raw decoder: 255)."""
    tile = image.tile[0] if image.tile else None
    if tile is None or tile.codec_name not in ("ppm", "ppm_plain") or not isinstance(tile.args[-1], int):
        return 255
    return tile.args[-1]


def _16bit_colour_channels(image: Image.Image, data: bytes) -> int:
    """Bands :func:`_decode_16bit_colour` returns for this file."""
    if image.format == "PPM":
        return 3
    if image.format == "PNG":
        return {2: 3, 4: 2, 6: 4}[data[25]]
    return len(_tiff_bits(image))


def _decode_16bit_colour(image: Image.Image, data: bytes) -> tuple[np.ndarray, tuple[str, ...]]:
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
    limits.current().check_image(width * height, _16bit_colour_channels(image, data), 2, f"16-bit {image.format}")
    with _captured_stderr() as said:  # libpng reports errors on the C stderr, past --quiet
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        reason = said().strip().splitlines()
        raise OSError("OpenCV could not decode this 16-bit image" + (f" ({reason[0].strip()})" if reason else ""))
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if data.startswith(b"\x89PNG") and data[25] == 4:  # grey + alpha: OpenCV expands it to BGRA
        return np.ascontiguousarray(pixels[..., [0, 3]]), ("L", "A")
    # OpenCV returns BGR(A); bnstats reports R, G, B(, A)
    if pixels.shape[2] == 3:
        return pixels[..., ::-1], ("R", "G", "B")  # a view: counting reads the bands in place
    order = [2, 1, 0, 3][: pixels.shape[2]] if pixels.shape[2] >= 3 else list(range(pixels.shape[2]))
    return np.ascontiguousarray(pixels[..., order]), ("R", "G", "B", "A")[: len(order)]


@contextlib.contextmanager
def _captured_stderr():
    """Send what C libraries print on file descriptor 2 to a buffer; yields a function reading it."""
    buffer = tempfile.TemporaryFile()
    saved = os.dup(2)
    text = []
    try:
        sys.stderr.flush()
        os.dup2(buffer.fileno(), 2)
        yield lambda: "".join(text)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        buffer.seek(0)
        text.append(buffer.read(4096).decode("utf-8", "replace"))
        buffer.close()


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
        values = data[tile.offset :].split()[:count]
        if len(values) < count:
            raise OSError("truncated PPM file")
        pixels = np.array(values, dtype=np.int64)
        if pixels.max(initial=0) > 65535:
            raise ValueError("PPM sample above 65535")
        pixels = pixels.astype(np.uint16)
    return pixels.reshape(height, width, 3)
