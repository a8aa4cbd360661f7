"""TIFF files read without a decoder: their directories, pages and page keys, checked before decoding.

:func:`tiff_directories` reads every directory's tags without tifffile, so
the choice of reader (Pillow, or :mod:`bnstats.decoding.scientific` for what
Pillow cannot read right) costs a few microseconds and works without the
extra. A multi-page TIFF (a z-stack, a time series) is one item per main
page, keys ``FILE:PAGE`` (:func:`page_keys`; reduced-resolution pages and
masks are not images of their own, SubIFDs are not in the chain at all);
a TIFF of one page keeps its plain key, and so does an OME-TIFF, one item
read as its series (:mod:`bnstats.decoding.ome`);
:func:`check_page` refuses a page whose header claims more than the bounds
of :mod:`bnstats.limits` before any decoder allocates for it.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from dataclasses import dataclass

from .. import limits

TIFF_EXTRA = 'pip install "bnstats[tiff]"'
TIFF_SUFFIXES = (".tif", ".tiff")


def is_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


_TAG_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # BYTE, SHORT, LONG, LONG8
# tags read from every directory: size, bands, sample type, and what kind of page it is
_WANTED = {254: "subfile", 256: "width", 257: "height", 258: "bits", 262: "photometric", 274: "orientation",
           277: "samples", 284: "planar", 338: "extra", 339: "format"}
DESCRIPTION_TAG = 270  # ImageDescription: OME-XML in an OME-TIFF's first page
NODATA_TAG = 42113  # GDAL_NODATA: ASCII, one value for every band ("0", "-9999", "nan")
MAX_NODATA_CHARS = 64  # a longer tag is no number: its first characters are enough to say so
MAX_PAGES = 100_000  # directories walked at most (a loop of directories ends earlier: each is visited once)


def tiff_directories(data) -> list[dict] | None:
    """The directories of :func:`directory_chain`, without why the chain ended early."""
    return directory_chain(data)[0]


_last = threading.local()  # .chains: [(the bytes, their directory_chain)], the last REMEMBERED read in this thread
REMEMBERED = 2  # an image's and its mask's: the pages of a stack pair with the pages of a mask stack


def directory_chain(data) -> tuple[list[dict] | None, str | None]:
    """:func:`read_chain`, remembered for the last bytes read in this thread: the pages of a stack are
    items that come one after another with the same bytes (``FileSource.read``, and a mask stack's with
    ``--mask``), and each page would otherwise walk every directory again (quadratic in the pages), as
    would each step of one decode. The result is shared: not to be changed."""
    if callable(data):
        return read_chain(data)
    chains = _last.__dict__.setdefault("chains", [])
    for held, chain in chains:
        if held is data:  # the very object, held here: no other can take its id
            return chain
    for held, chain in chains:
        # the same bytes read again: each task of a stack's pages reads the file anew, and walking all of its
        # pages per task of 128 was quadratic (20,000 pages: 35 s; 100,000, the most walked: ~20 min). One
        # memcmp (~5 ms for 24 MB) instead; files that differ differ within their first bytes
        if held.__class__ is bytes and data.__class__ is bytes and len(held) == len(data) and held == data:
            chains[:] = [(data, chain), *(c for c in chains if c[0] is not held)]
            return chain
    chain = read_chain(data)
    chains[:] = [(data, chain), *chains[: REMEMBERED - 1]]
    return chain


def read_chain(data) -> tuple[list[dict] | None, str | None]:
    """The tags of every directory (page) of a TIFF, read with ``struct`` alone: each a dict of
    ``width``, ``height``, ``samples``, ``bits`` (the widest), ``format`` (SampleFormat: 1 unsigned,
    2 signed, 3 float), ``planar``, ``extra`` (ExtraSamples: 0 unspecified, 1 associated alpha, 2 alpha),
    ``orientation`` (1 upright, else EXIF's 2..8), ``subfile`` (NewSubfileType: bit 0 set for a reduced-resolution
    page, bit 2 for a mask), ``photometric`` (None where absent), ``nodata`` (the raw bytes of GDAL's
    nodata tag, at most :data:`MAX_NODATA_CHARS`, or None), ``ome`` (the first page's description is
    OME-XML), ``imagej_channels`` (the first page's: the channels of an ImageJ hyperstack, else 1),
    ``bigtiff``, ``offset`` (where the directory is). ``data`` is the file's bytes, or a function ``read(offset,
    size)`` giving them (a file is then read only where its directories are). None if even the first
    directory cannot be read; a chain that breaks later ends there, and the second value says how (None
    for a chain that ends as a TIFF's does, at a zero offset): the pages after a break are not lost
    silently."""
    read = data if callable(data) else (lambda offset, size: data[offset : offset + size])
    magic = read(0, 4)
    big = magic in (b"II+\0", b"MM\0+")
    order = "<" if magic[:2] == b"II" else ">"
    entry, count_code, offset_code = (20, "Q", "Q") if big else (12, "H", "I")
    count_size, offset_size = struct.calcsize(count_code), struct.calcsize(offset_code)
    pages: list[dict] = []
    damage = None
    try:
        (offset,) = struct.unpack(order + offset_code, read(8 if big else 4, offset_size))
        seen = set()
        while offset:
            if offset in seen:
                damage = "it loops back to an earlier page"
                break
            if len(pages) >= MAX_PAGES:
                damage = f"it holds more than {MAX_PAGES:,} pages"
                break
            seen.add(offset)
            (count,) = struct.unpack(order + count_code, read(offset, count_size))
            count = min(count, 4096)
            block = read(offset + count_size, entry * count + offset_size)
            tags = {}
            for i in range(count):
                at = entry * i
                tag, kind = struct.unpack_from(order + "HH", block, at)
                if tag == NODATA_TAG and kind == 2:  # ASCII
                    (declared,) = struct.unpack_from(order + offset_code, block, at + 4)
                    n = min(declared, MAX_NODATA_CHARS)
                    value = block[at + 4 + offset_size : at + 4 + 2 * offset_size]
                    if declared > offset_size:
                        value = read(struct.unpack(order + offset_code, value)[0], n)
                    # a longer tag is cut, and marked so that its first characters never pass for a number
                    tags["nodata"] = bytes(value[:n]) + (b"..." if declared > n else b"")
                    continue
                if tag == DESCRIPTION_TAG and kind == 2 and not pages:  # the first page's: OME-XML, ImageJ?
                    tags.update(_description(read, block, at, order, offset_code, offset_size))
                    continue
                if tag not in _WANTED or kind not in _TAG_TYPES:
                    continue
                (n,) = struct.unpack_from(order + offset_code, block, at + 4)
                code, size = _TAG_TYPES[kind]
                n = min(n, 1024)  # a band count beyond any image: read the first values only
                value = block[at + 4 + offset_size : at + 4 + 2 * offset_size]
                if n * size > offset_size:
                    value = read(struct.unpack(order + offset_code, value)[0], n * size)
                tags[_WANTED[tag]] = struct.unpack_from(order + code * n, value)
            at, (offset,) = offset, struct.unpack_from(order + offset_code, block, entry * count)
            pages.append({
                "offset": at,
                "width": tags.get("width", (0,))[0],
                "height": tags.get("height", (0,))[0],
                "samples": tags.get("samples", (1,))[0],
                "bits": max(tags.get("bits", (1,)) or (1,)),
                "format": tags.get("format", (1,))[0],
                "planar": tags.get("planar", (1,))[0],
                "subfile": tags.get("subfile", (0,))[0],
                "photometric": tags.get("photometric", (None,))[0],
                "extra": tags.get("extra", ()),
                "orientation": tags.get("orientation", (1,))[0],
                "nodata": tags.get("nodata"),
                "ome": tags.get("ome", False),
                "imagej_channels": tags.get("imagej_channels", 1),
                "bigtiff": big,
            })
    except (struct.error, IndexError, ValueError, OSError):  # a broken chain: the pages read so far
        damage = "a page's directory lies outside the file or is cut short"
    return (pages or None), (damage if pages else None)


def _description(read, block, at: int, order: str, offset_code: str, offset_size: int) -> dict:
    """What the first page's ImageDescription says of the file's layout, from its first and last bytes
    only (OME-XML may be megabytes): ``ome``, the text ends as OME-XML does (``OME>``, tifffile's test);
    ``imagej_channels``, the channels an ImageJ hyperstack declares (``channels=3``)."""
    (declared,) = struct.unpack_from(order + offset_code, block, at + 4)
    value = block[at + 4 + offset_size : at + 4 + 2 * offset_size]
    if declared > offset_size:
        (start,) = struct.unpack(order + offset_code, value)
        head = read(start, min(declared, 256))
        tail = read(start + declared - min(declared, 32), min(declared, 32))
    else:
        head = tail = value[:declared]
    found = {"ome": bytes(tail).rstrip(b"\0 \t\r\n").endswith(b"OME>")}
    channels = re.search(rb"\nchannels=(\d{1,6})\n", bytes(head)) if head.startswith(b"ImageJ=") else None
    if channels:
        found["imagej_channels"] = int(channels.group(1))
    return found


def main_pages(pages: list[dict] | None) -> list[int]:
    """Indexes of the pages that are images of their own: not reduced-resolution copies (pyramid levels,
    thumbnails) nor masks, which tifffile's series leave out too."""
    return [i for i, page in enumerate(pages or ()) if not page["subfile"] & 0b101]


def one_main_page(data):
    """A TIFF file's bytes as its one main page where that page is not the first (a reduced-resolution
    thumbnail first): ``TiffPage(data, k)``; anything else as it is. The first page alone would count the
    thumbnail, where a file of two main pages after it counts those (:func:`main_pages`)."""
    if data.__class__ is TiffPage or not is_tiff(data):
        return data
    pages = tiff_directories(data)
    if not pages or len(pages) < 2 or pages[0]["ome"] or not pages[0]["subfile"] & 0b101:
        return data
    main = main_pages(pages)
    return TiffPage(data, main[0]) if len(main) == 1 else data


def file_pages(path: str) -> list[int]:
    """:func:`main_pages` of a TIFF file, reading only its directories (a few small reads); [0] alone for
    an OME-TIFF (one item: its series, :mod:`bnstats.decoding.ome`); [] if the file is not a TIFF or
    cannot be read (reading it will say why)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 12)
            if not is_tiff(head):
                return []

            def read(offset: int, size: int) -> bytes:
                if offset + size <= len(head):
                    return head[offset : offset + size]
                return os.pread(f.fileno(), size, offset)

            if _one_directory(head, read):  # the common case, without reading any tag
                return [0]
            pages, damage = directory_chain(read)
            if pages and pages[0]["ome"]:  # one item: its series, read whole (bnstats.decoding.ome)
                return [0]
            # the pages past a break are one more item, whose reading names the damage (a skip entry)
            return main_pages(pages) + ([len(pages)] if damage else [])
    except OSError:
        return []


def _one_directory(head: bytes, read) -> bool:
    """True if a classic TIFF's first directory links to no other (one page)."""
    if head[:4] not in (b"II*\0", b"MM\0*"):
        return False
    order = "<" if head[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack_from(order + "I", head, 4)
        (count,) = struct.unpack(order + "H", read(offset, 2))
        return struct.unpack(order + "I", read(offset + 2 + 12 * count, 4)) == (0,)
    except struct.error:
        return False


def page_keys(key: str, path: str) -> list[str]:
    """The keys of a TIFF file's images: ``KEY:PAGE`` (zero-padded) for each page of a multi-page file,
    else the file's own key alone (one page: nothing changes)."""
    if not key.lower().endswith(TIFF_SUFFIXES):
        return [key]
    pages = file_pages(path)
    if len(pages) <= 1:
        return [key]
    width = len(str(pages[-1]))
    return [f"{key}:{page:0{width}d}" for page in pages]


_PAGE_KEY = re.compile(r"^(.*\.tiff?):(\d+)$", re.IGNORECASE | re.DOTALL)


def split_page_key(key: str) -> tuple[str, int | None]:
    """``(file key, page)`` of a page key (``a.tif:03`` -> ``("a.tif", 3)``), ``(key, None)`` for any other."""
    match = _PAGE_KEY.match(key)
    return (match.group(1), int(match.group(2))) if match else (key, None)


@dataclass(frozen=True)
class TiffPage:
    """What a source reads for one page of a multi-page TIFF: the file's bytes and the page's index."""

    data: bytes
    index: int


@dataclass(frozen=True)
class TiffStack:
    """What a source reads for a multi-page TIFF counted as one item (``--stack volume``): the file's bytes."""

    data: bytes


def tiff_layout(data: bytes) -> dict | None:
    """``{"samples", "bits", "format", "planar", "bigtiff", "width", "height"}`` of the first image, or None
    if unreadable (see :func:`tiff_directories`)."""
    pages = tiff_directories(data)
    return pages[0] if pages else None


def check_page(page: dict, what: str = "TIFF page") -> None:
    """Refuse a page whose header claims more than the bounds (pixels, decoded bytes) or sample sizes
    no decoder has, before any decoder allocates for it (``limits.LimitError`` or ValueError)."""
    bits = page["bits"]
    if bits not in (1, 2, 4, 8, 12, 16, 24, 32, 64):
        raise ValueError(f"{what} declares {bits} bits per sample, not a sample size any decoder reads")
    limits.current().check_image(page["width"] * page["height"], page["samples"], max(1, -(-bits // 8)), what)


# -- a TIFF item, before and instead of Pillow --------------------------------------------------------

def check_item(data: bytes, mode: str, index: int | None = None) -> None:
    """Refuse, from its header and before any decoder allocates, a TIFF page over the bounds of
    :mod:`bnstats.limits` or with a sample size no decoder has; and in ``--mode rgb``/``gray`` one of
    more than 4 bands, which Pillow refuses (libtiff printing past ``--quiet``) or, compressed, reads
    as a wrong gray image. ``index`` is the page of a page item; None for a whole file, which must then
    hold one main page: a stack read whole (an archive member, a URL) would be counted as its first
    page alone, a silently wrong number."""
    pages, damage = directory_chain(data)
    if index is None:
        count = len(main_pages(pages))
        if count > 1 and pages[0]["ome"]:  # reached only where an image is wanted, not counted (recalibrate)
            raise ValueError(f"an OME-TIFF of {count} planes is counted as one volume, not fed as an image")
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
    check_page(page)
    if mode != "native" and page["samples"] > 4:
        raise ValueError(f"a {page['samples']}-band TIFF: use --mode native to count its bands "
                         f"(--mode {mode} reads images of 1 to 4 bands)")


def page_orientation(data: bytes, page: int = 0) -> int:
    """The Orientation tag of a TIFF page (1, upright, where it has none): what ``--exif-transpose`` undoes."""
    pages = tiff_directories(data) or []
    return pages[page]["orientation"] if page < len(pages) else 1
