"""A multi-page TIFF counted as one item (``--stack volume``): its pages the planes of one volume.

By default each page of a multi-page TIFF is an item of its own (``FILE:PAGE``). With ``--stack volume``
the file is one item: its main pages (not reduced-resolution copies, not masks) are decoded one by one,
each by the rules of a page counted alone (its ``GDAL_NODATA`` value, its internal mask, the mode), and
:class:`StackImage` counts them as one image whose pixels are the voxels of every page: one image in
``images``, every voxel in ``pixels``, one summary for per-image observers (BatchNorm, traces, sampling).
Pages of different sizes or bands are no volume: the file is a skipped entry saying to count its pages
one by one. An OME-TIFF is one item either way (read as its series: :mod:`bnstats.decoding.ome`).
"""

from __future__ import annotations

import numpy as np

from .. import limits
from . import ome, tiff
from .cstderr import first_line
from .options import DecodeError


def stack_pages(data: bytes, mode: str = "native") -> list[int]:
    """The directory indexes of a TIFF's main pages; ValueError where they are of different sizes, or where
    the chain of pages breaks (a volume of the pages before the break would be a part counted as the whole).
    The volume's bytes, decoded in ``mode`` (gray pages are 3 bands in ``rgb``), are checked against the
    bounds."""
    directories, damage = tiff.directory_chain(data)
    if damage and directories:
        raise ValueError(f"damaged TIFF: its chain of pages breaks after page {len(directories) - 1} ({damage}): "
                         "count the pages before the break with --stack pages")
    pages = tiff.main_pages(directories)
    sizes = sorted({(directories[p]["width"], directories[p]["height"]) for p in pages})
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sizes[:4]) + (" ..." if len(sizes) > 4 else "")
        raise ValueError(f"a TIFF stack of pages of {len(sizes)} sizes ({shown}) is no volume: count its pages "
                         "one by one with --stack pages")
    if len(pages) > 1:  # the whole volume is held at once, as a NIfTI's: its declared size within the bounds
        first = directories[pages[0]]  # the widest page's samples: pages of other types are refused only once decoded
        samples, itemsize = _decoded_layout([directories[p] for p in pages], mode)
        limits.current().check_image(first["width"] * first["height"] * len(pages), samples, itemsize,
                                     f"TIFF stack of {len(pages)} pages")
    return pages


def _decoded_layout(directories: list[dict], mode: str) -> tuple[int, int]:
    """Bands and bytes a sample of the widest page once decoded: ``rgb`` and ``gray`` give 8-bit RGB and L
    (16-bit pages reduced, as torchvision's loader does), ``native`` the stored samples (a palette as RGBA)."""
    if mode == "rgb":
        return 3, 1
    if mode == "gray":
        return 1, 1
    samples = max(4 if d.get("photometric") == 3 else max(1, d["samples"]) for d in directories)
    return samples, max(max(1, -(-max(d["bits"], 1) // 8)) for d in directories)


def decode_stack(stack: tiff.TiffStack, options, decode_bytes):
    """The decoded image of a whole TIFF stack (``decode_bytes`` decodes one page); the file's one image if it
    has one page or is an OME-TIFF."""
    data = stack.data
    if not tiff.is_tiff(data) or ome.is_ome(tiff.tiff_directories(data)):
        return decode_bytes(data, options)
    pages = stack_pages(data, options.mode)
    if len(pages) <= 1:
        return decode_bytes(data, options)
    return StackImage([_decoded_page(data, page, options, decode_bytes) for page in pages])


class StackPageError(ValueError):
    """A page of a TIFF stack counted as a volume cannot be read: the whole stack is a skipped entry."""


def _decoded_page(data: bytes, page: int, options, decode_bytes):
    """One page of a volume; a page that cannot be read is a :class:`StackPageError` naming it (as
    ``--stack pages`` names its ``FILE:PAGE``). A problem with the settings (DecodeError) stops the run."""
    try:
        return decode_bytes(tiff.TiffPage(data, page), options)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for bad data
        message = first_line(str(exc))
        what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        raise StackPageError(f"page {page} of the stack cannot be read ({what}): count its other pages with "
                             "--stack pages") from exc


class StackImage:
    """Decoded pages counted as one image: the decoded-image protocol over their union (``histogram()`` the
    sum of theirs, ``values()`` their values one page after another)."""

    raw = None  # the pages' raw bytes are not gathered: their histograms are summed at once
    scale = None
    count = 1

    def __init__(self, pages: list):
        bands = {page.bands for page in pages}
        if len(bands) > 1:
            raise ValueError(f"a TIFF stack of pages of different bands ({', '.join(''.join(b) for b in bands)}) "
                              "is no volume: count its pages one by one with --stack pages")
        offsets = {page.offset for page in pages}
        if len(offsets) > 1:
            raise ValueError("a TIFF stack of signed and unsigned pages is no volume: count its pages one by one "
                              "with --stack pages")
        self.pages, self.bands, self.offset = pages, pages[0].bands, offsets.pop()
        self.notes = tuple(dict.fromkeys(note for page in pages for note in page.notes))
        self._counts = _summed_histograms(pages)

    def histogram(self) -> np.ndarray | None:
        """The exact histogram of every page (None if the pages are float data)."""
        return self._counts

    @property
    def counts(self) -> np.ndarray | None:
        return self.histogram()

    def stored_histogram(self) -> np.ndarray | None:
        return self.histogram()

    def values(self) -> np.ndarray:
        """The ``(n, C)`` values of every page, one after another: joined once (float data, covariance and
        BatchNorm each read them), the pages then let go."""
        if self.pages is not None:
            self._values = np.concatenate([np.asarray(page.values()) for page in self.pages])
            self.pages = None
        return self._values


def _summed_histograms(pages: list) -> np.ndarray | None:
    """The sum of the pages' exact histograms, page by page (None for float pages); ValueError where their
    sample types differ. Each page's own histogram is let go once added: a 16-bit page's is 512 KiB a band,
    whatever its size, and a stack of thousands of small pages would hold gigabytes of them."""
    total = None
    for i, page in enumerate(pages):
        counts = page.histogram()
        if i and (counts is None) != (total is None) or (counts is not None and total is not None
                                                          and counts.shape != total.shape):
            raise ValueError("a TIFF stack of pages of different sample types (8-bit, 16-bit, float) is no "
                             "volume: count its pages one by one with --stack pages")
        if counts is not None:
            total = counts.astype(np.int64, copy=True) if total is None else np.add(total, counts, out=total)
            page.forget_histogram()
    return total
