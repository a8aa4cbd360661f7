"""How much one input may cost: the bounds every reader and decoder checks.

A few kilobytes can claim gigabytes: an image header claiming 40000×40000
pixels, a ``.npy`` header claiming 10⁹ rows, a bzip2 member of zeros that
inflates 10⁶-fold. Every reader checks a *declared* size against these
bounds before it allocates, and every reader that inflates counts what it
inflates (a header's size is never trusted). Past a bound the item is a
skip entry (or the run one line of error), never a hang or gigabytes of
memory.

=========================  ============================================  ==========================
bound                      default                                       raise it with
=========================  ============================================  ==========================
pixels per image/page      178,956,970 (Pillow's decompression-bomb      ``BNSTATS_MAX_PIXELS``
                           error threshold, 2 × ``MAX_IMAGE_PIXELS``)
decoded bytes per image    1 GiB (pixels × bands × bytes per sample)     ``BNSTATS_MAX_IMAGE_BYTES``
bytes per file or member   1 GiB (read, or inflated)                     ``BNSTATS_MAX_FILE_BYTES``
inflation ratio            1000 (past 64 MiB inflated per archive)       ``BNSTATS_MAX_RATIO``
names one pattern expands  1,000,000 (brace ranges)                      ``BNSTATS_MAX_NAMES``
bytes of a JSON bnstats    256 MiB (a result, a checkpoint: parsing       ``BNSTATS_MAX_JSON_BYTES``
reads                      takes up to ~6× its size in memory)
labels of ``--mask``       256 distinct labels in a run (a state each)   ``BNSTATS_MAX_LABELS``
scalings of volumes        64 distinct slope/intercept pairs in a run    ``BNSTATS_MAX_SCALES``
                           (a histogram each)
states of ``--group-by``   2 GiB of per-group states (8-bit RGB: 6 KiB   ``BNSTATS_MAX_GROUP_BYTES``
                           a group; 16-bit: 1.5 MiB)
=========================  ============================================  ==========================

The variables are read once per process (workers inherit them); a run on
Dask carries the parent's bounds to its tasks in the count spec. Values
are whole numbers with an optional ``K``/``M``/``G``/``T`` suffix, each a
power of 1024 (``BNSTATS_MAX_FILE_BYTES=4G``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

__all__ = ["LimitError", "Limits", "current", "install", "inflate_budget", "InflationBudget", "JPEG_SCANS"]

# Scans of one JPEG: libjpeg decodes a progressive JPEG scan by scan, each scan a pass over every block of
# the image, so a few bytes of empty scans repeated cost minutes (a 440 KB 8192x8192 file of 5,000 scans:
# 48 s; 13000x13000 grey, 995 scans: 17 s). Encoders write ~10 (libjpeg's progressive default), custom
# scan scripts a few dozen; 100 keeps the worst image within the pixel bound to a few seconds.
JPEG_SCANS = 100

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class LimitError(ValueError):
    """An input claims or takes more than a bound allows; the message names the bound's variable."""


@dataclass(frozen=True)
class Limits:
    """The bounds in force (see the module docstring); frozen and picklable, so it travels to workers."""

    pixels: int = 178_956_970
    image_bytes: int = 1 << 30
    file_bytes: int = 1 << 30
    ratio: int = 1000
    ratio_floor: int = 64 << 20
    names: int = 1_000_000
    json_bytes: int = 256 << 20  # --group-by class over ImageNet-21k's 21,841 classes writes ~90 MiB
    labels: int = 256  # a state each (16-bit data: 512 KiB a band): label maps, not instance ids
    scales: int = 64  # distinct slope/intercept pairs of scaled volumes (a 16-bit histogram each)
    group_bytes: int = 2 << 30  # --group-by's states: a folder per image would be a state per image

    _VARIABLES = {
        "pixels": "BNSTATS_MAX_PIXELS",
        "image_bytes": "BNSTATS_MAX_IMAGE_BYTES",
        "file_bytes": "BNSTATS_MAX_FILE_BYTES",
        "ratio": "BNSTATS_MAX_RATIO",
        "names": "BNSTATS_MAX_NAMES",
        "json_bytes": "BNSTATS_MAX_JSON_BYTES",
        "labels": "BNSTATS_MAX_LABELS",
        "scales": "BNSTATS_MAX_SCALES",
        "group_bytes": "BNSTATS_MAX_GROUP_BYTES",
    }

    @classmethod
    def from_environ(cls, environ=None) -> "Limits":
        """The defaults, with any ``BNSTATS_MAX_*`` variable of ``environ`` (default ``os.environ``) applied."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, variable in cls._VARIABLES.items():
            text = environ.get(variable)
            if text is None or not text.strip():
                continue
            values[name] = _parse(text, variable)
        return cls(**values)

    def variable(self, name: str) -> str:
        """The environment variable that raises bound ``name``."""
        return self._VARIABLES[name]

    def check_pixels(self, pixels: int, what: str = "image") -> None:
        """Refuse an image (page, volume) of more than ``pixels`` pixels before decoding it."""
        if pixels > self.pixels:
            raise LimitError(f"{what} of {pixels:,} pixels is over the limit of {self.pixels:,} "
                             f"(decompression-bomb guard; raise it with {self.variable('pixels')})")

    def check_image(self, pixels: int, bands: int = 1, itemsize: int = 1, what: str = "image") -> None:
        """Refuse an image whose declared size (pixels × bands × bytes per sample) is over the bounds."""
        self.check_pixels(pixels, what)
        size = pixels * bands * itemsize
        if size > self.image_bytes:
            raise LimitError(f"{what} of {size:,} decoded bytes is over the limit of {self.image_bytes:,} "
                             f"(raise it with {self.variable('image_bytes')})")

    def check_file_bytes(self, size: int, what: str = "file") -> None:
        """Refuse a file or member of more than ``file_bytes`` bytes (declared, or read so far)."""
        if size > self.file_bytes:
            raise LimitError(f"{what} of {size:,} bytes is over the limit of {self.file_bytes:,} "
                             f"(raise it with {self.variable('file_bytes')})")


def _parse(text: str, variable: str) -> int:
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number, suffix = (raw[:-1], raw[-1]) if raw and raw[-1] in _SUFFIX else (raw, "")
    try:
        value = int(number.replace("_", "").replace(",", "")) * _SUFFIX[suffix]
    except ValueError:
        raise LimitError(f"{variable}={text!r} is not a whole number (e.g. 500000000 or 2G)") from None
    if value < 1:
        raise LimitError(f"{variable}={text!r} must be at least 1")
    return value


_current: Limits | None = None


def current() -> Limits:
    """The bounds of this process: installed by :func:`install`, else read from the environment once."""
    if _current is None:
        install(Limits.from_environ())
    return _current


def install(limits: Limits) -> None:
    """Make ``limits`` this process's bounds (a worker installs its run's), Pillow's included."""
    global _current
    _current = limits
    from PIL import Image

    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: it raises past our bound.
    Image.MAX_IMAGE_PIXELS = max(1, limits.pixels // 2)


def ratio_budget(compressed: int, limits: Limits | None = None) -> int:
    """Bytes that ``compressed`` bytes may hold once inflated: the ratio bound, past its floor."""
    limits = limits or current()
    return max(limits.ratio * compressed, limits.ratio_floor)


def inflate_budget(compressed: int, limits: Limits | None = None) -> int:
    """Bytes that ``compressed`` bytes of compressed data may inflate to: :func:`ratio_budget`, and never more
    than one file's bound."""
    limits = limits or current()
    return min(limits.file_bytes, ratio_budget(compressed, limits))


class InflationBudget:
    """What one compressed container (an archive, a ``.npz``, a ``.tar.gz``) may inflate to in all.

    Readers call :meth:`spend` with the bytes they actually inflated, as they
    inflate them; past ``ratio × compressed size`` (and the floor) it raises
    :class:`LimitError`. A bzip2 member of zeros declared small or large is
    caught by what it yields, not by its header.
    """

    def __init__(self, compressed: int, what: str, limits: Limits | None = None):
        self.limits = limits or current()
        self.what = what
        self.allowed = ratio_budget(max(compressed, 1), self.limits)
        self.spent = 0

    def spend(self, inflated: int) -> None:
        self.spent += inflated
        if self.spent > self.allowed:
            raise LimitError(f"{self.what} inflates to over {self.allowed:,} bytes, more than "
                             f"{self.limits.ratio}× its compressed size (a decompression bomb? "
                             f"raise it with {self.limits.variable('ratio')})")


# keep the dataclass's field list and the variables in step
assert {f.name for f in fields(Limits)} >= set(Limits._VARIABLES)
