"""One decoded image, ready to count: :class:`DecodedImage`, and the pixel holders it is made of.

A :class:`DecodedImage` offers the two views statistics take:
``histogram()`` (exact, for integer pixels) and ``values()`` (the ``(n, C)``
pixels that count). It is one class with three sources of pixels, because
each is the fastest way for its decoder: a Pillow image (8-bit: Pillow's C
``histogram()``, the pixel array never leaves Pillow), a
:class:`PixelBuffer` (the bytes the PNG/JPEG fast paths decode into, counted
without building a Pillow object, and for thumbnails gathered for one
batched count), or an array (wide, float, array sources). Which pixels
count is :func:`keep_mask`, the one rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PIL import Image

from ..statistics.counting import bincount, raw_histogram
from ..statistics.formulas import integer_levels, integer_offset
from .options import DecodeError, DecodeOptions

WIDE_MODES = ("I", "I;16", "F")  # Pillow modes counted from arrays, not histogram()
#: LAB's a and b are signed; Pillow's histogram() reads them so (a + 128), its pixels (what ToTensor and
#: PILToTensor give) are the stored bytes: counted as those, as every statistic reads them, and said
LAB_NOTE = ("a LAB image's a and b bands are counted as their stored bytes 0..255 (signed values in two's "
            "complement, as ToTensor reads them), not as signed values")
SMALL_PIXELS = 4096  # up to this many pixels an 8-bit image is counted from its raw bytes, in batches
BYTES_PER_PIXEL = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "RGBX": 4, "CMYK": 4}


@dataclass(frozen=True)
class ArrayImage:
    """An image that arrives decoded: ``(H, W, C)`` pixels and its band names.

    ``(N, H, W, C)`` pixels are a batch of N images, counted at once. A
    volume read flat (``(1, voxels, C)``) gives its ``shape`` (``(X, Y, Z)``)
    and, where its format has one, its ``affine``: what a mask must match,
    voxel for voxel in the same order on the same grid.
    """

    pixels: np.ndarray
    bands: tuple[str, ...]
    shape: tuple[int, ...] | None = None
    affine: tuple | None = None  # a volume's voxel-to-world affine (4x4 rows), where its format has one
    #: the nodata value its array declares and where (``(-9999, "_FillValue attribute of a.h5:/t")``), or None
    nodata: tuple | None = None
    #: ``(slope, inter)``: the pixels are stored 8/16-bit integers q whose values are ``slope · q + inter``
    #: (a NIfTI's ``scl_slope``/``scl_inter``, a DICOM's rescale), counted exactly; None: the pixels are values
    scale: tuple | None = None


class PixelBuffer:
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

    __slots__ = ("bands", "notes", "count", "raw", "scale", "_image", "_pixels", "_ignore", "_values", "_counts")

    def __init__(self, bands, notes=(), *, image: Image.Image | None = None, ignore=None,
                 values: np.ndarray | None = None, count: int = 1):
        self.bands = bands if bands.__class__ is tuple else tuple(bands)
        self.notes = notes if notes.__class__ is tuple else tuple(notes)
        self.count = count
        self._image, self._ignore, self._values, self._counts = image, ignore, values, None
        self._pixels: PixelBuffer | None = None  # of :meth:`of_buffer`
        #: ``(bytes, stride, counted)`` of a small 8-bit image's pixels, else None: statistics may gather
        #: these and count many images at once (see :class:`PixelBuffer`)
        self.raw: tuple[bytes, int, int] | None = None
        #: ``(slope, inter)`` of scaled integers (see :meth:`of_array`), else None
        self.scale: tuple[float, float] | None = None

    @classmethod
    def of_pillow(cls, image: Image.Image, bands, options: DecodeOptions, notes=()) -> "DecodedImage":
        """An 8-bit Pillow image (possibly with a padding band beyond ``bands``)."""
        mode = image.mode
        if mode in WIDE_MODES:
            return cls.of_array(pillow_array(image), bands, options, notes)
        if mode == "LAB":  # Pillow's histogram() shifts a and b by 128: count the bytes, as the pixels read
            return cls.of_array(np.asarray(image), bands, options, (*notes, LAB_NOTE))
        stride = BYTES_PER_PIXEL.get(mode, 0)
        width, height = image.size
        if options.ignore_value is None and len(bands) <= stride and width * height <= SMALL_PIXELS:
            # per image, a histogram list costs more than decoding a thumbnail
            return cls.of_buffer(PixelBuffer(image.tobytes(), height, width, stride, len(bands)), bands, notes)
        decoded = cls(bands, notes, image=image, ignore=options.ignore_value)
        decoded.histogram()  # decode now: a broken file fails here, where the caller skips it
        return decoded

    @classmethod
    def of_buffer(cls, pixels: PixelBuffer, bands, notes=()) -> "DecodedImage":
        """8-bit pixels as a decoder left them (see :class:`PixelBuffer`); every pixel counts."""
        decoded = cls(bands, notes)
        decoded._pixels = pixels
        if not pixels.reused and pixels.height * pixels.width <= SMALL_PIXELS:
            decoded.raw = (pixels.data, pixels.stride, pixels.counted)
        else:
            decoded.histogram()
        return decoded

    @classmethod
    def of_array(cls, pixels: np.ndarray, bands, options: DecodeOptions, notes=(), count: int = 1,
                 keep: np.ndarray | None = None, scale: tuple | None = None) -> "DecodedImage":
        """An ``(H, W, C)`` array (``(N, H, W, C)`` for a batch of ``count``); the pixels not to count are dropped now.
        ``keep``: an ``(H, W)`` mask of the pixels that may count (a TIFF's internal mask), else every one.
        ``scale``: ``(slope, inter)`` of stored 8/16-bit integers whose values are ``slope · q + inter``:
        :meth:`histogram` is then None (no bin is a value), :meth:`values` gives the values in float64 and
        :meth:`stored_histogram` the exact histogram of the stored integers; ``--ignore-value`` names a value."""
        if pixels.dtype.kind not in "biuf":  # complex, structured, object: a cast to float64 would drop or fail
            raise ValueError(f"pixels of type {pixels.dtype} cannot be counted (integers, floats or booleans are): "
                             "store the values to count, e.g. the magnitude of complex data, as a real array")
        if scale is not None and integer_levels(pixels.dtype) is None:
            raise DecodeError(f"scaled pixels must be stored as 8/16-bit integers, not {pixels.dtype}")
        ignore = options.ignore_value if scale is None else stored_value(options.ignore_value, scale)
        keep, note = keep_mask(pixels, ignore, keep)
        flat = pixels.reshape(-1, pixels.shape[-1])
        image = cls(bands, (*notes, *note), values=flat if keep is None else flat[keep.ravel()], count=count)
        image.scale = scale
        return image

    def histogram(self) -> np.ndarray | None:
        if self.scale is not None:  # bins of stored integers are no values: see stored_histogram
            return None
        return self.stored_histogram()

    def stored_histogram(self) -> np.ndarray | None:
        """The exact ``(C, levels)`` histogram of the stored integers (of scaled ones too), None for floats."""
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

    def forget_histogram(self) -> None:
        """Let the histogram go once counted elsewhere (a TIFF stack sums its pages'); it is found again if
        asked for."""
        self._counts = None

    @property
    def counts(self) -> np.ndarray | None:
        """The histogram (see :meth:`histogram`)."""
        return self.histogram()

    @property
    def offset(self) -> int:
        """The value of histogram bin 0: -128 or -32768 for signed data, else 0."""
        return 0 if self._values is None else integer_offset(self._values.dtype)

    def stored_values(self) -> np.ndarray:
        """The ``(n, C)`` stored integers of scaled pixels (their values are ``slope · q + inter``)."""
        if self.scale is None:
            raise ValueError("stored values are those of scaled integers")
        return self._values

    def values(self) -> np.ndarray:
        if self.scale is not None:  # the values of scaled integers, in float64
            return float_values(self._values, self.scale)
        if self._values is None and self._pixels is not None:
            self._values = self._pixels.array(len(self.bands)).reshape(-1, len(self.bands))
        elif self._values is None:
            pixels = image_array(self._image, self.bands)
            keep, _ = keep_mask(pixels, self._ignore)
            flat = pixels.reshape(-1, pixels.shape[-1])
            self._values = flat if keep is None else flat[keep.ravel()]
        return self._values

    def _pillow_histogram(self) -> np.ndarray:
        """Pillow's exact C histogram of the counted bands."""
        image, bands = self._image, self.bands
        mask = None
        if self._ignore is not None:  # 8-bit pixels: only ignore_value leaves any out
            keep, _ = keep_mask(image_array(image, bands), self._ignore)
            mask = Image.fromarray(keep)
        return np.asarray(image.histogram(mask), np.int64).reshape(-1, 256)[: len(bands)]


def pillow_array(image: Image.Image) -> np.ndarray:
    """An (H, W, C) array of a non-8-bit Pillow image, in native byte order."""
    a = np.asarray(image)
    if image.mode == "I":  # 32-bit integers: exact only if they fit 16 bits
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError("32-bit integer pixels outside 0..65535 are not supported")
        a = a.astype(np.uint16)
    elif a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    return a.reshape(a.shape[0], a.shape[1], -1)


def keep_mask(pixels: np.ndarray, ignore_value, valid: np.ndarray | None = None
              ) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """Which pixels of an ``(H, W, C)`` array are counted: an ``(H, W)`` mask, or None for all.

    The one rule for which pixels count: left out are pixels equal to
    ``ignore_value`` in every band (to its values band by band, for a tuple), and float pixels that are NaN or infinite
    in any band (nodata in float rasters), and pixels where ``valid`` (a file's own mask) is False.
    ``ignore_value`` is ``--ignore-value``, or else a TIFF's ``GDAL_NODATA`` value. Also returns a note for the user
    when non-finite pixels were dropped.
    """
    keep, notes = valid, ()
    if isinstance(ignore_value, tuple):  # one value per band: a pixel of exactly these values is left out
        if len(ignore_value) != pixels.shape[-1]:
            raise DecodeError(f"--ignore-value gives {len(ignore_value)} values, one per band, for an image of "
                              f"{pixels.shape[-1]} bands")
        keep = _and(keep, (pixels != np.asarray(ignore_value)).any(axis=-1))
    elif ignore_value is not None:
        keep = _and(keep, (pixels != ignore_value).any(axis=-1))
    if pixels.dtype.kind == "f":
        finite = np.isfinite(pixels).all(axis=-1)
        if not finite.all():
            notes = ("float pixels that are NaN or infinite in any band are not counted",)
            keep = finite if keep is None else keep & finite
    return keep, notes


def float_values(pixels: np.ndarray, scale: tuple | None) -> np.ndarray:
    """``pixels`` as float64 values: stored integers scaled (``slope · q + inter``) where ``scale`` is given."""
    values = pixels.astype(np.float64)
    return values if scale is None else values * scale[0] + scale[1]


def stored_value(ignore_value, scale: tuple):
    """``--ignore-value`` (values, in the scaled units) as stored integers: the q whose value ``slope · q + inter``
    is the value given, exactly or as the report writes it (the nearest float: the min a report shows, given
    back, names its pixels). A value no stored integer scales to is none of the pixels (a tuple with such a band
    matches no pixel)."""
    if ignore_value is None:
        return None
    slope, inter = (Fraction(x) for x in scale)
    values = ignore_value if isinstance(ignore_value, tuple) else (ignore_value,)
    stored = []
    for value in values:
        q = _stored_of(value, slope, inter) if math.isfinite(value) else None
        if q is None or not -(2**31) <= q < 2**31:
            return _NOTHING
        stored.append(q)
    return tuple(stored) if isinstance(ignore_value, tuple) else stored[0]


def _stored_of(value: float, slope: Fraction, inter: Fraction) -> int | None:
    """The stored integer whose scaled value is ``value`` exactly, else the one whose value rounds to it (the
    floor or ceiling of the exact solution: the nearest values on either side), else None; None too where
    both round to it (a slope below the value's float spacing: several stored integers look alike)."""
    q = (Fraction(value) - inter) / slope
    if q.denominator == 1:
        return int(q)
    near = [k for k in (math.floor(q), math.ceil(q)) if _rounds_to(slope * k + inter, value)]
    return near[0] if len(near) == 1 else None


def _rounds_to(exact: Fraction, value: float) -> bool:
    try:
        return float(exact) == value
    except OverflowError:
        return False


_NOTHING = float("nan")  # an ignore value no pixel equals (NaN compares unequal to everything)


def _and(keep: np.ndarray | None, more: np.ndarray) -> np.ndarray:
    return more if keep is None else keep & more


def image_array(image: Image.Image, bands: tuple[str, ...]) -> np.ndarray:
    """The ``(H, W, C)`` array of a Pillow image's counted bands (a padding band, RGBX's, dropped)."""
    pixels = pillow_array(image) if image.mode in WIDE_MODES else np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return pixels[..., : len(bands)]


def default_bands(channels: int) -> tuple[str, ...]:
    """Band names for an array of ``channels`` channels: L, RGB, RGBA or B1..Bn."""
    return {1: ("L",), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}.get(
        channels, tuple(f"B{i}" for i in range(1, channels + 1)))


def array_bands(dtype: np.dtype, channels: int) -> tuple[str, ...]:
    """Channel names of an array input: an image's (``L``, ``RGB``, ``RGBA``, ``B1..Bn``), except that a
    float array of 4 channels is named ``C0..C3``: floats in fours are features or coordinates far more
    often than RGBA pixels (8/16-bit arrays of 4 channels stay ``RGBA``: stored images)."""
    if np.dtype(dtype).kind == "f" and channels == 4:
        return tuple(f"C{i}" for i in range(channels))
    return default_bands(channels)
