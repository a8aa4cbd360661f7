"""Bytes or arrays -> a :class:`~bnstats.decoding.image.DecodedImage` in the requested layout: the dispatch.

Each encoded image goes to its decoder family — the JPEG fast path
(``jpeg``), the PNG fast path (``png``), Pillow (``pillow``), scientific
TIFF (``tiff``), 16-bit colour (``sixteen``) — is turned into the band
layout the user asked for (``rgb``: torchvision's ``pil_loader``,
``convert("RGB")``; ``gray``: ``convert("L")``; ``native``: the stored
bands and bit depth) and passed through the transforms (``transforms``).
Already-decoded arrays (from array sources) enter through
:func:`decode_array`. :func:`probe` sizes an image from its header;
:func:`load_pixels`/:func:`load_image` hand out the pixels themselves.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import nodata, ome, png, scientific, tiff, transforms
from .cstderr import as_note, captured, first_line
from .image import ArrayImage, DecodedImage, PixelBuffer, default_bands, float_values, image_array
from .jpeg import open_jpeg_fast
from .options import DecodeError, DecodeOptions
from .pillow import (MODE_BANDS, collected_warnings, collecting, convert_mode, open_pillow, target_mode, warning_note,
                     pillow_rules)
from .sixteen import (EIGHT_BIT_NOTE, HELD_AS_8_BITS, SIXTEEN_BIT_FORMATS, decode_16bit_colour, held_as_8_bits,
                      is_16bit_colour, sixteen_bit_channels)
from .stack import decode_stack, stack_pages
from .transforms import ORIENTATION, preprocess

ARRAYS_AS_STORED = ("items that arrive as arrays (array rows, volumes, OME-TIFF planes) are counted in their "
                    "stored bands: --mode gray converted the image files only")


def decode_item(payload, options: DecodeOptions) -> DecodedImage:
    """Decode what a source read: encoded bytes or an :class:`ArrayImage`.

    Warnings that decoders raise (Pillow's "Corrupt EXIF data", ...) become
    the image's one-time notes instead of reaching stderr past ``--quiet``.
    """
    caught = collecting()
    if caught is None:
        with collected_warnings():
            return decode_item(payload, options)
    if caught:
        del caught[:]
    if isinstance(payload, ArrayImage):
        options, notes = nodata.declared_options(payload.nodata, options, payload.pixels)
        image = decode_array(payload.pixels, payload.bands, options, scale=payload.scale)
        if options.mode == "gray" and len(image.bands) > 1:  # the report says gray: say what was counted
            notes += (ARRAYS_AS_STORED,)
        image.notes = notes + tuple(image.notes)
    elif payload.__class__ is tiff.TiffStack:
        image = decode_stack(payload, options, decode_bytes)
    else:
        image = decode_bytes(payload, options)
    if caught:
        image.notes += tuple(warning_note(w) for w in caught)
        del caught[:]
    return image


def decode_file(path: str, options: DecodeOptions = DecodeOptions()) -> DecodedImage:
    """Read one image file and decode it (see :func:`decode_bytes`)."""
    with open(path, "rb") as f, pillow_rules():
        return decode_bytes(f.read(), options)


def decode_bytes(data: bytes, options: DecodeOptions) -> DecodedImage:
    """Decode one encoded image into a :class:`DecodedImage`.

    A TIFF's own nodata (its ``GDAL_NODATA`` tag, an internal mask) leaves
    pixels out too (:mod:`bnstats.decoding.nodata`). Raises whatever Pillow
    raises for an unreadable image (the caller skips the file), or
    :class:`DecodeError` for a problem with the settings. What libtiff prints
    on the C stderr is part of the error, or a note, never a stray line.
    """
    if not (data.__class__ is tiff.TiffPage or tiff.is_tiff(data)):
        return _decode_bytes(data, options)
    failure = None
    with captured() as said:
        try:
            image = _decode_bytes(data, options)
        except Exception as exc:  # noqa: BLE001 - re-raised below, with what libtiff said
            failure = exc
    reason = first_line(said())
    if failure is not None:
        if reason and not isinstance(failure, DecodeError):
            failure.args = (f"{failure} ({reason})",)
        raise failure
    if reason:
        image.notes += (as_note(reason),)
    return image


def _decode_bytes(data: bytes, options: DecodeOptions) -> DecodedImage:
    data = tiff.one_main_page(data)
    given = options.ignore_value
    options, keep, notes, series = _declared(data, options)
    if series is not None:  # an OME-TIFF: one item, its channels and planes
        return DecodedImage.of_array(*series, options)
    image, bands, opened = _open_image(data, options)
    notes += tuple(opened)
    # the file's GDAL_NODATA (not the user's value) leaves whole pixels out: where GDAL would differ, say so
    declared = options.ignore_value if given is None else None
    if keep is not None:  # an internal mask: counted from the array, the mask with the other rules
        pixels = _pixels_of(image, bands, keep)
        notes += nodata.partial_bands(pixels, declared, "the file (GDAL_NODATA)", "GDAL")
        return DecodedImage.of_array(pixels, bands, options, notes, keep=keep)
    if image.__class__ is PixelBuffer:
        if options.ignore_value is None:
            return DecodedImage.of_buffer(image, bands, notes)
        image = image.array(len(bands))
    if isinstance(image, np.ndarray):
        notes += nodata.partial_bands(image, declared, "the file (GDAL_NODATA)", "GDAL")
        return DecodedImage.of_array(image, bands, options, notes)
    return DecodedImage.of_pillow(image, bands, options, notes)


def _declared(data, options: DecodeOptions):
    """What an encoded image declares of itself, for :func:`decode_bytes` and :func:`decode_spatial` alike:
    ``(options, keep, notes, series)`` — the options its TIFF nodata sets, its internal mask (or None), notes,
    and an OME-TIFF's ``(pixels, bands)`` (read as its series, else None)."""
    if not (data.__class__ is tiff.TiffPage or tiff.is_tiff(data)):
        return options, None, (), None
    pages = tiff.tiff_directories(data.data if data.__class__ is tiff.TiffPage else data)
    if data.__class__ is not tiff.TiffPage and ome.is_ome(pages):
        return options, None, (), ome.read_ome(data, options)
    options, keep, notes = nodata.from_file(data, options, pages)  # the file's own nodata and mask
    return options, keep, notes + ome.imagej_note(pages), None


def _pixels_of(image, bands, keep: np.ndarray | None = None) -> np.ndarray:
    """The ``(H, W, C)`` pixels of an opened image; ValueError if a TIFF's internal mask ``keep`` is not
    their size."""
    if image.__class__ is PixelBuffer:
        pixels = image.array(len(bands))
    else:
        pixels = image if isinstance(image, np.ndarray) else image_array(image, bands)
    if keep is not None and pixels.shape[:2] != keep.shape:
        raise ValueError(f"damaged TIFF: its internal mask is {keep.shape[1]}x{keep.shape[0]}, "
                         f"its image {pixels.shape[1]}x{pixels.shape[0]}")
    return pixels


def decode_array(pixels, bands=None, options: DecodeOptions = DecodeOptions(), scale=None) -> DecodedImage:
    """An already-decoded image: ``(H, W)`` or ``(H, W, C)`` pixels as stored.

    The array is counted in its own bands and dtype (8/16-bit unsigned
    exactly, anything else as float64); Resize and CenterCrop apply band by
    band. ``bands`` defaults to ``L``, ``RGB``, ``RGBA`` or ``B1..Bn``.
    ``scale``: ``(slope, inter)`` of stored integers (a volume's; see
    :meth:`DecodedImage.of_array`).
    """
    pixels, bands = _as_hwc(pixels, bands)
    if pixels.ndim == 4:  # a batch: transforms apply image by image
        if options.resize is not None or options.center_crop is not None:
            pixels = np.stack([transforms.transform_array(p, options) for p in pixels])
        return DecodedImage.of_array(pixels, bands, options, count=pixels.shape[0], scale=scale)
    pixels = transforms.transform_array(pixels, options)
    return DecodedImage.of_array(pixels, bands, options, scale=scale)


def decode_pillow(image: Image.Image, options: DecodeOptions = DecodeOptions()) -> DecodedImage:
    """A Pillow image already in memory, counted as the same image read from a file would be: EXIF
    orientation (with ``exif_transpose``), the mode (``rgb``/``gray`` as torchvision's loader,
    ``native``: stored bands and depth), Resize and CenterCrop.

    For images a Python caller holds (``bnstats.compute`` of an iterable of images); files go
    through :func:`decode_bytes`, whose fast paths give the same pixels.
    """
    held = options.mode == "native" and held_as_8_bits(image)  # said before load() forgets the decoder
    image.load()  # a lazily opened image fails here, where the caller skips it
    if options.exif_transpose:
        image = transforms.exif_transpose(image)
    image, notes = convert_mode(image, options.mode)
    if held:
        notes = (*notes, HELD_AS_8_BITS)
    if options.resize is not None or options.center_crop is not None:
        image = preprocess(image, options)
    return DecodedImage.of_pillow(image, _band_names(image), options, notes)


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


def load_pixels(payload, options: DecodeOptions) -> tuple[np.ndarray, tuple[str, ...]]:
    """The ``(n, C)`` pixels of one image that are counted, and the band names.

    This is the *naive* path (``bnstats compare`` holds every image this
    way); counting never materialises more than Pillow's own buffer. The
    same pixels are left out as when counting. ``payload`` is what a source
    read (bytes or an :class:`ArrayImage`), or a file path.
    """
    image = decode_file(payload, options) if isinstance(payload, str) else decode_item(payload, options)
    return np.array(image.values()), image.bands  # a copy: JPEG pixels live in a reused buffer


def decode_spatial(payload, options: DecodeOptions):
    """One image's pixels in their spatial layout, for pairing them with a label map: ``(pixels, bands,
    options, keep, notes)`` — ``pixels`` ``(H, W, C)`` (a volume's ``(1, voxels, C)``), ``options`` as the
    file's own nodata sets them (``GDAL_NODATA``), ``keep`` its internal mask (or None), ``notes`` as
    :func:`decode_item` gives them. The same pixels, by the same rules, as counting the image alone."""
    if isinstance(payload, ArrayImage):
        pixels, bands = _as_hwc(payload.pixels, payload.bands)
        options, notes = nodata.declared_options(payload.nodata, options, pixels)
        return transforms.transform_array(pixels, options), bands, options, None, notes
    payload = tiff.one_main_page(payload)  # a stack comes page by page (bnstats.inputs.masks pairs it so)
    options, keep, notes, series = _declared(payload, options)
    if series is not None:
        return (*series, options, None, ())
    image, bands, opened = _open_image(payload, options)
    pixels = _pixels_of(image, bands, keep)
    if image.__class__ is PixelBuffer and image.reused:  # a JPEG's pixels live in a buffer the next decode reuses
        pixels = pixels.copy()
    return pixels, bands, options, keep, notes + tuple(opened)


def load_image(payload, options: DecodeOptions) -> tuple[np.ndarray, tuple[str, ...]]:
    """The ``(H, W, C)`` pixels of one image (a copy), preprocessed as when counting, and its band names.

    For feeding a model (``bnstats recalibrate``): every pixel is kept
    (``ignore_value`` does not apply). ``payload`` is what a source read.
    """
    with pillow_rules():
        return _load_image(payload, options)


def _load_image(payload, options: DecodeOptions) -> tuple[np.ndarray, tuple[str, ...]]:
    if isinstance(payload, ArrayImage):
        pixels, bands = _as_hwc(payload.pixels, payload.bands)
        if payload.scale is not None:  # a volume's stored integers: their values
            pixels = float_values(pixels, payload.scale)
        return np.array(transforms.transform_array(pixels, options)), bands
    refuse_stack(payload, "is no image to feed a model: count its pages one by one with --stack pages")
    image, bands, _ = open_image(_unstacked(payload), options)
    pixels = image if isinstance(image, np.ndarray) else image_array(image, bands)
    return np.array(pixels), bands  # a copy: JPEG pixels live in a reused buffer


def refuse_stack(payload, why: str) -> None:
    """Refuse a TIFF stack counted as one volume (DecodeError: the run stops) where only an image will do."""
    if payload.__class__ is tiff.TiffStack and len(tiff.main_pages(tiff.tiff_directories(payload.data))) > 1:
        raise DecodeError(f"a TIFF stack counted as a volume (--stack volume) {why}")


def _unstacked(payload):
    """The file's bytes of a TIFF read as a stack (``--stack volume``) that :func:`refuse_stack` let pass:
    one main page, an image like any other."""
    return payload.data if payload.__class__ is tiff.TiffStack else payload


def open_image(data: bytes, options: DecodeOptions):
    """Decode, convert and preprocess one image; the pixels are not counted yet.

    Returns ``(image, bands, notes)``: ``image`` is a Pillow image (possibly
    with a padding band beyond ``bands``), an ``(H, W, C)`` uint8 array (the
    pixels a fast decoder left, a gray JPEG's L band repeated where its
    ``bands`` are RGB) or, for 16-bit colour files, an ``(H, W, C)`` uint16
    array.
    """
    image, bands, notes = _open_image(tiff.one_main_page(data), options)
    return (image.array(len(bands)) if image.__class__ is PixelBuffer else image), bands, notes


def _open_image(data: bytes, options: DecodeOptions):
    """:func:`open_image`, where the image may also be the :class:`PixelBuffer` a fast decoder left
    (a JPEG through simplejpeg, an 8-bit PNG): counted as they are, without a Pillow image. ``data`` may
    be a :class:`tiff.TiffPage`: one page of a multi-page TIFF. What libjpeg said of a damaged JPEG that
    Pillow then counted (half a JPEG and its end marker: grey rows) is a note."""
    said: list[str] = []
    image, bands, notes = _decoded(data, options, said)
    return (image, bands, (*notes, *said)) if said else (image, bands, notes)


def _decoded(data: bytes, options: DecodeOptions, said: list[str]):
    data, page = (data.data, data.index) if data.__class__ is tiff.TiffPage else (data, None)
    fast = None
    if data[:2] == b"\xff\xd8":
        fast = open_jpeg_fast(data, options, said)
    elif data[:8] == png.MAGIC:
        png.check_limits(data)  # every PNG, before the fast path, Pillow or OpenCV allocate for it
        fast = png.read_pixels(data, options)
    elif tiff.is_tiff(data):
        tiff.check_item(data, options.mode, page)
    if fast is not None:
        return (*fast, ())
    mode = options.mode
    if mode != "native":  # the common case, without a call per step: rgb or gray, as stored or converted
        image = open_pillow(data, page)
        wide = image.format in SIXTEEN_BIT_FORMATS and is_16bit_colour(image, data)
        if options.exif_transpose:
            image = transforms.exif_transpose(image)
        image, notes = convert_mode(image, mode)
        if options.resize is not None or options.center_crop is not None:
            image = preprocess(image, options)
        return image, MODE_BANDS[image.mode], (*notes, EIGHT_BIT_NOTE) if wide else notes
    if tiff.is_tiff(data):
        stored = scientific.open_scientific(data, page or 0)
        if stored is not None:  # turned upright as Pillow's pages are (it went unread: 16-bit colour was not)
            pixels, bands = stored
            orientation = tiff.page_orientation(data, page or 0) if options.exif_transpose else None
            return transforms.transform_array(pixels, options, orientation), bands, ()
    image = open_pillow(data, page)
    if is_16bit_colour(image, data):
        if page:  # OpenCV reads the first page only
            raise DecodeError(f"16-bit colour pages of a multi-page TIFF need tifffile: {tiff.TIFF_EXTRA}")
        pixels, bands = decode_16bit_colour(image, data)
        orientation = image.getexif().get(ORIENTATION) if options.exif_transpose else None
        return transforms.transform_array(pixels, options, orientation), bands, ()
    if options.exif_transpose:
        image = transforms.exif_transpose(image)
    image, notes = convert_mode(image, options.mode)
    if options.resize is not None or options.center_crop is not None:
        image = preprocess(image, options)
    return image, _band_names(image), notes


def _band_names(image: Image.Image) -> tuple[str, ...]:
    """The image's bands by name; one band of 32-bit integers or floats (Pillow's ``I``, ``F``) is ``L``, as the
    same pixels from an array or a tensor are (a float TIFF was ``F``: it and a float array were refused together)."""
    bands = image.getbands()
    return ("L",) if bands in (("I",), ("F",)) else bands


def probe(payload, options: DecodeOptions) -> tuple[tuple[int, int], int, int]:
    """``((width, height), channels, bytes per value)`` of an image as it will be counted.

    From the header alone where the payload is encoded; what ``compare``
    uses to estimate a naive full load before doing it.
    """
    if collecting() is None:
        with collected_warnings():  # the image's warnings are noted when it is decoded, not here
            return probe(payload, options)
    if isinstance(payload, ArrayImage):
        pixels = payload.pixels
        size = (pixels.shape[1], pixels.shape[0])
        channels = pixels.shape[2] if pixels.ndim == 3 else 1
        return transforms.output_size(size, options), channels, pixels.dtype.itemsize
    if payload.__class__ is tiff.TiffStack:  # its first page, as tall as every page one above the other
        pages = stack_pages(payload.data, options.mode) if tiff.is_tiff(payload.data) else [0]
        (width, height), channels, itemsize = probe(tiff.TiffPage(payload.data, pages[0]), options)
        return (width, height * len(pages)), channels, itemsize
    payload = tiff.one_main_page(payload)
    payload, page = (payload.data, payload.index) if payload.__class__ is tiff.TiffPage else (payload, None)
    if page is None and tiff.is_tiff(payload) and ome.is_ome(tiff.tiff_directories(payload)):
        return ome.probe_ome(payload, options)
    if tiff.is_tiff(payload):
        tiff.check_item(payload, options.mode, page)
    if options.mode == "native" and tiff.is_tiff(payload):
        stored = scientific.open_scientific(payload, page or 0)
        if stored is not None:
            return probe(ArrayImage(*stored), options)
    image = open_pillow(payload, page)
    size = transforms.output_size(image.size, options)
    if options.mode == "native" and is_16bit_colour(image, payload):
        return size, sixteen_bit_channels(image, payload), 2
    mode = target_mode(image, options.mode)
    return size, Image.getmodebands(mode), {"I;16": 2, "I": 2, "F": 4}.get(mode, 1)
