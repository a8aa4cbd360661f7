"""OME-TIFF: a file read as its series — channels as bands, Z and T planes as the voxels of one item.

An OME-TIFF (its first page's ImageDescription is OME-XML) stores a
microscope's dimensions — ``TCZYX``, ``ZCYX``, ``ZYXS`` ... — as pages;
counted page by page, a 3-channel z-stack of 10 planes would be 30 gray
images whose statistics mix the channels. It is read instead with
``tifffile``'s series (the ``bnstats[tiff]`` extra): the ``C`` axis (and the
samples of an RGB page, ``S``) become the bands, named from the OME
``Channel`` names where they are usable band names, else ``C0..Cn-1``
(``L`` for one unnamed channel, ``R G B`` for RGB samples); every other
axis (Z, T, ...) is planes, whose pixels are the voxels of one item, as a
NIfTI volume's (``pixels`` counts voxels). Samples are counted as stored.
``--resize``/``--center-crop`` apply plane by plane. An OME-TIFF's several
images (``Image`` elements: positions, wells) are counted together when
they share channels and sample type, else the file is a skipped entry; so
is a file whose planes lie in other files (a multi-file OME-TIFF set). The
declared size is checked against :mod:`bnstats.limits` before a plane is
read. The file's own nodata (``GDAL_NODATA``, masks) is not read for
OME-TIFFs; ``--ignore-value`` applies; ``--mask`` pairs an OME-TIFF label map
of the same planes (:func:`plane_layout`).
"""

from __future__ import annotations

import io
import logging

import numpy as np

from .. import limits
from . import scientific, tiff, transforms
from .options import DecodeError, DecodeOptions

# tifffile reports what it cannot read through logging: without a handler, Python's last resort would print it
# on stderr past --quiet; a skipped entry says it instead. Handlers the user installs still get it.
logging.getLogger("tifffile").addHandler(logging.NullHandler())

CHANNEL_AXES = "CS"  # channels, then the samples of a page (RGB)
MAX_BAND_NAME = 32


def is_ome(pages: list[dict] | None) -> bool:
    """Whether a TIFF's directories (:func:`tiff.directory_chain`) are an OME-TIFF's."""
    return bool(pages) and pages[0]["ome"]


def imagej_note(pages: list[dict] | None) -> tuple[str, ...]:
    """A note for an ImageJ hyperstack of several channels, whose pages are counted one by one as they
    always were (only OME-TIFF is read as channels): its channels are mixed in each band."""
    channels = pages[0]["imagej_channels"] if pages else 1
    if channels <= 1:
        return ()
    return (f"an ImageJ hyperstack of {channels} channels is counted page by page, its channels mixed in one "
            "band: save it as OME-TIFF to count each channel as a band",)


def read_ome(data: bytes, options: DecodeOptions) -> tuple[np.ndarray, tuple[str, ...]]:
    """An OME-TIFF's voxels as a one-row image ``(1, voxels, bands)`` (transformed plane by plane), and
    its band names (see the module docstring). ValueError for a file that cannot be read as its series
    (a skipped entry); DecodeError without tifffile."""
    with _tifffile().TiffFile(io.BytesIO(data)) as tif:
        series = _ome_series(tif)
        layouts = {(_channels(s)[0], s.dtype) for s in series}
        if len(layouts) > 1:
            raise ValueError(f"an OME-TIFF of {len(series)} images of different channels or sample types: "
                             "count them as separate files")
        _check_size(series)
        planes = [_planes(s) for s in series]
        names = _channel_names(tif.ome_metadata)
        photometric = int(series[0].keyframe.photometric)
    flat = [p.reshape(-1, p.shape[-1]) for p in _transformed(planes, options)]
    pixels = flat[0] if len(flat) == 1 else np.concatenate(flat)  # one series: no copy of the whole volume
    if pixels.dtype.byteorder not in ("=", "|"):
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels[None], _bands(series[0], names, photometric)


def probe_ome(data: bytes, options: DecodeOptions) -> tuple[tuple[int, int], int, int]:
    """What :func:`read_ome` would give, from the OME-XML alone (no plane decoded): ``((voxels, 1), bands,
    bytes per value)``, the planes resized and cropped as ``options`` say."""
    with _tifffile().TiffFile(io.BytesIO(data)) as tif:
        series = _ome_series(tif)
        _check_size(series)
        voxels = 0
        for s in series:
            sizes = dict(zip(s.axes, s.shape))
            width, height = transforms.output_size((sizes["X"], sizes["Y"]), options)
            planes = int(np.prod([n for a, n in sizes.items() if a not in CHANNEL_AXES + "YX"], dtype=np.int64))
            voxels += planes * width * height
        return (voxels, 1), _channels(series[0])[0], series[0].dtype.itemsize


def plane_layout(data: bytes) -> list[tuple[str, tuple[int, ...]]]:
    """Per series of an OME-TIFF, its axes and their sizes but the channel axes (``("ZYX", (3, 8, 8))``): the
    order its planes' voxels are counted in, which a mask must share. ValueError where it cannot be read."""
    with _tifffile().TiffFile(io.BytesIO(data)) as tif:
        return [("".join(a for a in s.axes if a not in CHANNEL_AXES),
                 tuple(int(n) for a, n in zip(s.axes, s.shape) if a not in CHANNEL_AXES)) for s in _ome_series(tif)]


def _tifffile():
    """tifffile, or a DecodeError naming the extra (an OME-TIFF is read as its series through it)."""
    if not scientific.have_tifffile():
        raise DecodeError(f"an OME-TIFF is read as its channels and planes with tifffile: {tiff.TIFF_EXTRA}")
    import tifffile

    return tifffile


def _ome_series(tif) -> list:
    """The OME series of a tifffile ``TiffFile``; ValueError where its OME-XML cannot be read (tifffile
    would fall back to guessing the axes from the pages)."""
    try:
        series = list(tif.series)
    except Exception as exc:  # noqa: BLE001 - tifffile's OME parser raises what the XML makes it raise
        raise ValueError(f"an OME-TIFF whose OME-XML tifffile cannot read ({type(exc).__name__}: {exc})") from None
    if not series or any(s.kind != "ome" for s in series):
        raise ValueError("an OME-TIFF whose OME-XML tifffile cannot read (no image it describes)")
    return series


def _channels(series) -> tuple[int, list[int]]:
    """The number of bands of a series (the product of its channel axes) and those axes' positions."""
    at = [series.axes.index(a) for a in CHANNEL_AXES if a in series.axes]
    return int(np.prod([series.shape[i] for i in at], dtype=np.int64)), at


def _check_size(series) -> None:
    """Refuse, before a plane is read, series whose declared voxels pass the bounds, or whose planes lie
    in other files (tifffile would read them as zeros)."""
    channels, _ = _channels(series[0])
    voxels = sum(int(np.prod(s.shape, dtype=np.int64)) // max(channels, 1) for s in series)
    limits.current().check_image(voxels, channels, series[0].dtype.itemsize, "OME-TIFF")
    for s in series:
        if any(page is None for page in s.pages):
            raise ValueError("a multi-file OME-TIFF: planes stored in other files are not read (convert the "
                             "set to one OME-TIFF file)")


def _planes(series) -> np.ndarray:
    """A series' samples as ``(planes, Y, X, bands)``: channel axes last (C, then S), others planes."""
    channels, at = _channels(series)
    rest = [a for a in series.axes if a not in CHANNEL_AXES]
    if rest[-2:] != ["Y", "X"]:
        raise ValueError(f"an OME-TIFF of axes {series.axes!r}, without Y and X as its plane's axes")
    pixels = series.asarray()
    pixels = np.moveaxis(pixels, at, list(range(-len(at), 0))) if at else pixels[..., None]
    return pixels.reshape((-1, *pixels.shape[len(rest) - 2 : len(rest)], channels))


def _transformed(planes: list[np.ndarray], options: DecodeOptions):
    """Each plane of each series, resized and cropped as a 2-D image where asked."""
    if options.resize is None and options.center_crop is None:
        yield from planes
        return
    for stack in planes:
        yield np.stack([transforms.transform_array(plane, options) for plane in stack])


def _channel_names(xml: str | None) -> list[str] | None:
    """The ``Name`` of each ``Channel`` of the first OME ``Image``, where every one has a usable name
    (printable, at most :data:`MAX_BAND_NAME` characters, all different), else None."""
    if not xml:
        return None
    import xml.etree.ElementTree as ET

    try:
        pixels = ET.fromstring(xml).find("{*}Image/{*}Pixels")
    except ET.ParseError:
        return None
    if pixels is None:
        return None
    names = [(c.get("Name") or "").strip() for c in pixels.findall("{*}Channel")]
    usable = all(0 < len(n) <= MAX_BAND_NAME and n.isprintable() for n in names)
    return names if names and usable and len(set(names)) == len(names) else None


def _bands(series, names: list[str] | None, photometric: int) -> tuple[str, ...]:
    """Band names of a series: its OME channel names (one band per channel), else C0..Cn-1, L or RGB."""
    count, _ = _channels(series)
    samples = series.shape[series.axes.index("S")] if "S" in series.axes else 1
    if names is not None and len(names) == count and samples == 1:
        return tuple(names)
    if samples == count and photometric == 2 and count in (3, 4):
        return ("R", "G", "B", "A")[:count]
    return ("L",) if count == 1 else tuple(f"C{i}" for i in range(count))
