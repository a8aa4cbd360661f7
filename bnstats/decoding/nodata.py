"""Nodata a TIFF file declares itself: GDAL's ``GDAL_NODATA`` tag and internal masks, as pixels left out.

A GeoTIFF names its nodata value in tag 42113 (ASCII, one value for every
band: ``"0"``, ``"-9999"``, ``"nan"``). When the user gave no
``--ignore-value``, :func:`file_options` makes that value the page's
``ignore_value``, so :func:`bnstats.decoding.image.keep_mask` leaves its
pixels out by the one rule: a pixel equal to it in every band. NaN (or
infinite) nodata changes nothing: non-finite float pixels are left out
anyway. The value is the file's, not a setting: it is not written in the
result's ``settings`` (files of one run may declare different ones, and
``merge`` compares settings), but reported in a note, one per distinct
value. ``--ignore-value`` overrides it (a note says so); a tag that is no
number is ignored with a note; where ``--mode rgb``/``gray`` would change
the stored values before they are compared (16-bit, palette, colour to
gray) the value is not applied, with a note naming ``--mode native``.

An internal mask (GDAL's ``GDAL_TIFF_INTERNAL_MASK``: a page of
NewSubfileType 4, a transparency mask, after the image page it belongs to)
is no image of its own (:func:`bnstats.decoding.tiff.main_pages`);
:func:`file_mask` reads it where it is simple (one full-size mask between
an image page and the next) and the pixels where it is 0 are left out, as
GDAL does. A mask that cannot be applied is said in a note; one that cannot
be read makes the page a skipped item, never a count of every pixel.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re

import numpy as np

from . import scientific, tiff
from .options import DecodeOptions, as_stored

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
TAG = "GDAL_NODATA"


def parse_nodata(raw: bytes) -> float | int | None:
    """The number a ``GDAL_NODATA`` tag holds (an int where it is whole, so that integer pixels compare
    exactly), or None where it is no number."""
    return _one_number(raw.split(b"\0", 1)[0])  # the text up to its NUL, read as an attribute's text is


def shown(raw: bytes) -> str:
    """A tag's text as a note may show it: printable ASCII, at most 20 characters."""
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    text = "".join(c if c.isprintable() and c.isascii() else "?" for c in text)
    return repr(text[:20] + ("..." if len(text) > 20 else ""))


def from_file(data, options: DecodeOptions, pages: list[dict] | None = None
              ) -> tuple[DecodeOptions, np.ndarray | None, tuple[str, ...]]:
    """What a TIFF page declares of its nodata: the options it is decoded with (:func:`file_options`),
    the keep-mask of its internal mask (:func:`file_mask`) and notes. ``data`` is a TIFF's bytes or a
    :class:`tiff.TiffPage`; ``pages`` its directories, if read already (read once for both)."""
    data, index = (data.data, data.index) if data.__class__ is tiff.TiffPage else (data, 0)
    pages = tiff.tiff_directories(data) if pages is None else pages
    if not pages or index >= len(pages):
        return options, None, ()  # no such page: the decoder names the error
    options, notes = file_options(pages[index], options)
    keep, more = file_mask(data, pages, index, options)
    return options, keep, notes + more


def declared_options(declared: tuple | None, options: DecodeOptions, pixels: np.ndarray | None = None
                     ) -> tuple[DecodeOptions, tuple[str, ...]]:
    """The options an array is counted with, and notes: ``options`` with the nodata value its file declares
    (``declared``: ``(value, where, *notes)``, see :func:`attribute_nodata`) as ``ignore_value`` where the
    user gave none. Arrays are counted as stored (no mode converts them), so the value always names stored
    values. ``pixels`` (``(H, W, C)``): the array, to say how many of its pixels hold the value in some bands
    only (CF leaves out each such element; bnstats counts the whole pixel)."""
    if declared is None:
        return options, ()
    value, where, *more = declared
    more = tuple(more)
    if isinstance(value, str):  # why the declared value is not used
        return options, (value, *more)
    if options.ignore_value is not None:
        return options, (f"nodata value {value} from {where} not used: --ignore-value overrides it", *more)
    if not math.isfinite(value):
        return options, (f"nodata value {value} from {where}: non-finite float values are left out, "
                         "as in any float data", *more)
    return dataclasses.replace(options, ignore_value=value), (
        f"nodata value {value} from {where} left out: pixels equal to it in every band are not counted "
        "(--ignore-value overrides it)", *more, *partial_bands(pixels, value, where))


def partial_bands(pixels: np.ndarray | None, value, where: str, rule: str = "netCDF/CF") -> tuple[str, ...]:
    """A note if some pixels of a multi-band array hold the nodata value in some bands but not all: those
    pixels are counted, the value with them (the note says so rather than a number being silently off).
    ``rule``: whose rule would leave each such value out (CF's for arrays, GDAL's for a TIFF's tag)."""
    if pixels is None or value is None or pixels.ndim < 3 or pixels.shape[-1] < 2:
        return ()
    equal = pixels == value
    if not (equal.any(axis=-1) & ~equal.all(axis=-1)).any():
        return ()
    # one text whatever the count: notes are said once per text, and a count per image would be many lines
    return (f"pixels that hold the nodata value {value} from {where} in some bands only are counted, that "
            f"value with them ({rule} would leave out each such value; --ignore-value with one value per band "
            "names a whole pixel)",)


CF_ATTRIBUTES = ("_FillValue", "missing_value")  # netCDF/CF: values that stand for no data


PACKING_ATTRIBUTES = ("scale_factor", "add_offset")  # netCDF/CF packed data: values = stored · scale + offset
VALID_ATTRIBUTES = ("valid_min", "valid_max", "valid_range")  # netCDF/CF: values outside are missing too


def attribute_nodata(attrs, dtype: np.dtype, where: str) -> tuple | None:
    """The nodata value an HDF5 dataset's or Zarr array's attributes declare (netCDF/CF's ``_FillValue``,
    else ``missing_value``) as ``(value, description, *notes)`` for :func:`declared_options`; ``(note, "",
    *notes)`` where one is declared but cannot be used (not one number, or not a value the array's type holds)
    or where none is but the attributes say what is not applied (a second nodata value, packing); None where
    they say nothing."""
    found, notes = None, []
    for name in CF_ATTRIBUTES:
        raw = _attribute(attrs, name)
        if raw is None:
            continue
        described = f"the {name} attribute of {where}"
        value = _one_number(raw)
        if found is not None:  # CF: both stand for no data; one value is left out, so say so of the other
            if value != found[0] and not (isinstance(value, float) and math.isnan(value) and
                                          isinstance(found[0], float) and math.isnan(found[0])):
                notes.append(f"{described} ({_shown_value(raw)}) not used: only {found[1]} is left out "
                             "(--ignore-value V names another value)")
            continue
        if value is None or not _holds(dtype, value):  # said, and the next attribute may still name one
            notes.append(f"{described} ({_shown_value(raw)}) is not one value of its {np.dtype(dtype).name} data: "
                         "ignored (--ignore-value V leaves a value out)")
            continue
        found = (value, described)
    packing = [name for name in PACKING_ATTRIBUTES if _attribute(attrs, name) is not None]
    if packing:
        notes.append(f"the {' and '.join(packing)} attribute{'s' if len(packing) > 1 else ''} of {where} "
                     "(netCDF/CF packing) not applied: its values are counted as stored, in packed units")
    valid = [name for name in VALID_ATTRIBUTES if _attribute(attrs, name) is not None]
    if valid:
        notes.append(f"the {' and '.join(valid)} attribute{'s' if len(valid) > 1 else ''} of {where} "
                     "(netCDF/CF) not applied: values outside the valid range are counted")
    if found is None:
        return (notes[0], "", *notes[1:]) if notes else None
    return (*found, *notes)


def _attribute(attrs, name: str):
    """An attribute's value, None where it is missing or cannot be decoded."""
    try:
        return attrs.get(name)
    except Exception:  # noqa: BLE001 - an attribute h5py/zarr cannot decode: as if none
        return None


def _one_number(raw) -> float | int | None:
    """``raw`` (a number, a one-element array or list, or text such as ``"NaN"``) as one number (an int where
    it is whole), else None."""
    if isinstance(raw, (bytes, str)):
        text = (raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw).strip()
        if not _NUMBER.fullmatch(text):  # float() strips less than str.strip() does ("0\x1f"): the stripped text
            return None
        value = float(text)
    else:
        array = np.asarray(raw)
        if array.size != 1 or array.dtype.kind not in "biuf":
            return None
        value = array.reshape(()).item()
        if isinstance(value, int):
            return value
        value = float(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def _holds(dtype: np.dtype, value) -> bool:
    """Whether data of ``dtype`` can hold ``value`` (an integer array: a whole number in its range)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return isinstance(value, int) and info.min <= value <= info.max
    if dtype.kind == "b":
        return value in (0, 1)
    return dtype.kind == "f"


def _shown_value(raw) -> str:
    text = repr(raw if isinstance(raw, (bytes, str)) else np.asarray(raw).tolist())
    return text[:40] + ("..." if len(text) > 40 else "")


def file_options(page: dict, options: DecodeOptions) -> tuple[DecodeOptions, tuple[str, ...]]:
    """The options a TIFF page (its directory, :func:`tiff.directory_chain`) is decoded with, and notes:
    ``options`` with the page's ``GDAL_NODATA`` value as ``ignore_value`` where the file declares one,
    the user gave none and the mode keeps the stored values (see the module docstring)."""
    if page["nodata"] is None:
        return options, ()
    value = parse_nodata(page["nodata"])
    if value is None:
        return options, (f"a TIFF's {TAG} tag {shown(page['nodata'])} is not a number: ignored "
                         "(every pixel of its pages counted; --ignore-value V leaves a value out)",)
    if options.ignore_value is not None:
        return options, (f"nodata value {value} from the file ({TAG}) not used: --ignore-value overrides it",)
    if not math.isfinite(value):
        return options, (f"nodata value {value} from the file ({TAG}): non-finite float pixels are left out, "
                         "as in any float image",)
    if not keeps_stored_values(page, options.mode):
        return options, (f"nodata value {value} from the file ({TAG}) not applied: --mode {options.mode} changes "
                         "the stored values it names; use --mode native to leave it out",)
    if not _a_stored_value(value, page):
        kind = "signed" if page["format"] == 2 else "unsigned"
        return options, (f"nodata value {value} from the file ({TAG}) is no value of its {page['bits']}-bit {kind} "
                         "samples: no pixel is left out",)
    return dataclasses.replace(options, ignore_value=value), (
        f"nodata value {value} from the file ({TAG}) left out: pixels equal to it in every band are not "
        "counted (--ignore-value overrides it)",)


def _a_stored_value(value: float, page: dict) -> bool:
    """Whether an integer page's samples can hold ``value`` (``-9999`` on uint16 cannot: a note saying it was
    left out would be false); any value for float pages."""
    if page["format"] not in (None, 1, 2) or not 1 <= page["bits"] <= 32:
        return True
    if not float(value).is_integer():
        return False
    low, high = (-(2 ** (page["bits"] - 1)), 2 ** (page["bits"] - 1) - 1) if page["format"] == 2 else \
        (0, 2 ** page["bits"] - 1)
    return low <= value <= high


def keeps_stored_values(page: dict, mode: str) -> bool:
    """True if pixels in ``mode`` hold the page's stored values (so the file's nodata names them):
    ``--mode native`` (but for palettes and bilevel pages, made into colours, inverted gray and YCbCr,
    which Pillow converts), or 8-bit unsigned gray or RGB that ``rgb`` copies band by band (gray to
    R = G = B) and gray that ``gray`` keeps. CMYK, alpha, 16-bit (clipped to 8 bits) and colour to
    gray are not."""
    if mode == "native":
        return page["bits"] >= 8 and page["photometric"] not in (0, 3, 6)
    if page["bits"] != 8 or page["format"] != 1 or page["photometric"] not in (1, 2):
        return False
    return page["samples"] in ((1, 3) if mode == "rgb" else (1,))


MASK = 4  # NewSubfileType bit 2: a transparency mask


def mask_pages(pages: list[dict], index: int) -> list[int]:
    """The directory indexes of the full-resolution mask pages that follow image page ``index``, up to
    the next image page (GDAL writes one, of the page's size)."""
    found = []
    for at in range(index + 1, len(pages)):
        subfile = pages[at]["subfile"]
        if not subfile & 0b101:  # the next image page
            break
        if subfile & MASK and not subfile & 1:
            found.append(at)
    return found


def file_mask(data: bytes, pages: list[dict], index: int, options: DecodeOptions):
    """The ``(H, W)`` keep-mask of TIFF page ``index`` from its internal mask (True where the mask is
    not 0), or None, and notes. ValueError where the mask page cannot be read (the page is skipped, not
    counted whole)."""
    found = mask_pages(pages, index)
    if not found:
        return None, ()
    where = found[0]
    if len(found) > 1 or (pages[where]["width"], pages[where]["height"]) != (pages[index]["width"],
                                                                            pages[index]["height"]):
        return None, ("a TIFF page's internal mask was not applied: it is not one mask of the page's size "
                      "(every pixel counted)",)
    if not as_stored(options):
        return None, ("a TIFF page's internal mask was not applied: --resize, --center-crop and "
                      "--exif-transpose change the pixel grid it covers (every pixel counted)",)
    if not scientific.have_tifffile():
        return None, (f"a TIFF page's internal mask was not applied: reading it needs tifffile, "
                      f"{tiff.TIFF_EXTRA} (every pixel counted)",)
    tiff.check_page(pages[where], "TIFF mask page")
    try:
        keep = _read_mask(data, where)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile and its codecs raise many types for bad data
        raise ValueError(f"damaged TIFF: its internal mask (page {where}) cannot be read ({exc})") from None
    return keep, ("a TIFF page's internal mask applied: pixels where it is 0 are not counted",)


def _read_mask(data: bytes, where: int) -> np.ndarray:
    """Directory ``where`` of a TIFF, read with tifffile, as a 2-D boolean keep-mask."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        mask = tif.pages[where].asarray()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"a mask of shape {mask.shape}")
    return mask != 0
