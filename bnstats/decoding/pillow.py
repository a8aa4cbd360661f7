"""Pillow: opening an encoded image, the ``--mode`` conversion rule, and decoders' warnings as notes.

:func:`open_pillow` opens (not decodes) an image, at a page of a
multi-page file, turning Pillow's decompression-bomb error into one that
names ``bnstats.limits``' variable; :func:`target_mode`/:func:`convert_mode`
are the one rule for ``--mode`` (torchvision's loader for ``rgb`` and
``gray``). Inside :func:`collected_warnings`, warnings decoders raise become
the image's notes rather than lines on stderr.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import threading
import warnings

import numpy as np
from PIL import Image, ImageFile

from .. import limits
from . import tiff
from .jpeg import check_scans
from .cstderr import first_line

MODE_BANDS = {"RGB": ("R", "G", "B"), "L": ("L",)}  # of the modes --mode rgb and gray count in


_collecting = threading.local()  # .caught: the list warnings go to inside collected_warnings()


@contextlib.contextmanager
def collected_warnings():
    """Collect decoders' warnings once for many :func:`decode_item` calls instead of once per image.

    Inside, each decoded image gets the warnings raised while it was decoded
    as its notes, as :func:`decode_item` does on its own; entering Python's
    ``catch_warnings`` costs more than decoding a thumbnail.
    """
    with warnings.catch_warnings(record=True) as caught, pillow_rules():
        warnings.simplefilter("always")
        _collecting.caught = caught
        try:
            yield
        finally:
            _collecting.caught = None


class _Rules:
    """Who is inside :func:`pillow_rules` (threads decoding at once), and the process's settings to give back
    when the last one leaves."""

    lock = threading.Lock()
    inside = 0
    saved: tuple = (False, None)


@contextlib.contextmanager
def pillow_rules():
    """Pillow keeps bnstats' rules inside, whatever the process set: truncated images refused
    (``ImageFile.LOAD_TRUNCATED_IMAGES`` off) and the decompression-bomb bound no looser than bnstats' own
    (``Image.MAX_IMAGE_PIXELS``, the only guard of GIF, BMP, WebP, ...).

    Training code often sets ``LOAD_TRUNCATED_IMAGES = True`` or ``MAX_IMAGE_PIXELS = None`` at import, and
    bnstats run in that process (``bnstats.compute``, a worker forked from it) would count a truncated file's
    missing rows as grey pixels of a whole image, or decode a small file's declared billions of pixels. The
    process's settings come back when the last thread decoding leaves (threads of a Dask scheduler overlap).
    They are globals: a thread of the caller's that loads images meanwhile sees bnstats' rules too.
    """
    with _Rules.lock:
        if not _Rules.inside:
            _Rules.saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
            bound = max(1, limits.current().pixels // 2)  # as limits.install sets it: Pillow raises past 2x
            if _Rules.saved[1] is not None and _Rules.saved[1] <= bound:
                bound = _Rules.saved[1]  # a stricter bound of the process's own is kept
            ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = False, bound
        _Rules.inside += 1
    try:
        yield
    finally:
        with _Rules.lock:
            _Rules.inside -= 1
            if not _Rules.inside:
                ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = _Rules.saved


def warning_note(w: warnings.WarningMessage) -> str:
    """A decoder's warning as a note; numbers blanked so that each kind is shown once."""
    message = re.sub(r"\d+", "N", first_line(str(w.message)))
    return f"decoding raised {w.category.__name__}: {message} (the image was counted)"


def open_pillow(data: bytes, page: int | None = None) -> Image.Image:
    """Pillow's image of ``data`` (not decoded yet), at frame ``page`` of a multi-page file (else the
    first frame: animated GIF, WebP and APNG count it alone, as torchvision loads them); past the pixel
    bound (Pillow raises at ours: see :func:`limits.install`), DecompressionBombError saying which
    variable raises the bound."""
    if data[:2] == b"\xff\xd8":
        check_scans(data)  # a scan bomb costs minutes of decoding within the pixel bound
    try:
        if page:  # a TIFF's page: opened where it is (Pillow's seek walks every directory before it, each time)
            view = _page_view(data, page)
            if view is not None:
                return _pillow_open(view)
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


def _page_view(data: bytes, page: int) -> "TiffPageView | None":
    """A TIFF's bytes as a stream whose first directory is page ``page``'s, or None where the chain of
    directories does not reach it (Pillow's seek then says why)."""
    pages = tiff.tiff_directories(data)
    if not pages or page >= len(pages):
        return None
    offset = pages[page]["offset"]
    order = "<" if data[:2] == b"II" else ">"
    head = bytes(data[:8]) + struct.pack(order + "Q", offset) if pages[0]["bigtiff"] else \
        bytes(data[:4]) + struct.pack(order + "I", offset)
    return TiffPageView(data, head)


class TiffPageView(io.RawIOBase):
    """A TIFF's bytes, read-only, with the header's first-directory offset pointing at another page: Pillow
    opens that page as the file's first, without walking (quadratically) every directory before it. Strip
    and tile offsets are the file's own: only the header's bytes differ. ``getvalue()`` is the file's
    bytes as they are: libtiff, given them, reads the page at its directory's offset."""

    def __init__(self, data: bytes, head: bytes):
        super().__init__()
        self._data, self._head, self._pos = data, head, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def getvalue(self) -> bytes:
        return self._data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        start = self._pos
        chunk = self._data[start : start + len(buffer)]
        if start < len(self._head):  # the header's bytes: the moved offset
            head = self._head[start : start + len(chunk)]
            chunk = head + chunk[len(head) :]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def _pillow_open(data) -> Image.Image:
    caught = collecting()
    stream = data if isinstance(data, TiffPageView) else io.BytesIO(data)
    if caught is not None:  # warnings become notes of the image, but not this one (see below)
        seen = len(caught)
        image = Image.open(stream)
        if len(caught) > seen:
            caught[seen:] = [w for w in caught[seen:] if not issubclass(w.category, Image.DecompressionBombWarning)]
        return image
    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that;
        # the error skips the file, the warning is no reason to.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(stream)  # first frame of animated images


def target_mode(image: Image.Image, mode: str) -> str:
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
    return {"PA": "RGBA", "1": "L", "I;16B": "I;16", "I;16L": "I;16", "I;16N": "I;16"}.get(image.mode, image.mode)


def convert_mode(image: Image.Image, mode: str) -> tuple[Image.Image, tuple[str, ...]]:
    """Convert to the requested mode; return the image and notes for the user."""
    notes = ()
    if mode in ("rgb", "gray") and image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        notes = (
            f"a {image.mode} image was reduced to 8 bits, clipping values above 255 "
            "as torchvision's loader does; use --mode native to keep its full range",
        )
    elif mode in ("rgb", "gray") and image.mode == "F":  # truncated too: 0..1 floats become 0 (and 1)
        notes = ("a F image was reduced to 8 bits as torchvision's loader does: each value truncated to a whole "
                 "number and clipped to 0..255, so floats in 0..1 become 0 (and 1); use --mode native to count "
                 "its values",)
    target = target_mode(image, mode)
    if image.mode == target:  # convert() to the image's own mode would only copy it
        return image, notes
    if target == "I;16":  # from I;16B/L/N: Pillow's convert("I;16") would clip to 255
        return Image.fromarray(np.asarray(image).astype(np.uint16)), notes
    return image.convert(target), notes


def collecting() -> list | None:
    """The list warnings go to inside :func:`collected_warnings` (in this thread), or None outside it."""
    return getattr(_collecting, "caught", None)
