"""Per-channel running statistics: update, merge, finalize.

This module is the core of bnstats. It is pure numpy (no I/O, no Pillow) and
follows the three-step reduction shape of ``dask.array.reductions``
(``moment_chunk`` / ``moment_combine`` / ``moment_agg``): reduce one piece of
data to a small *state*, combine states in any grouping and order, turn the
final state into the answer.

The running update
------------------
The textbook streaming mean over values x1, x2, ... is

    μn = μn−1 + (xn − μn−1) / n

and its variance analogue (Welford 1962) keeps M2n = Σ (xi − μn)², updated as

    M2n = M2n−1 + (xn − μn−1)(xn − μn),        var = M2n / n   (ddof 0).

Updating one pixel at a time is slow in Python and, for a merge of two
partial results A and B, generalises to the pairwise formula of Chan, Golub &
LeVeque (1979), "Updating formulae and a pairwise algorithm for computing
sample variances":

    δ  = μB − μA
    n  = nA + nB
    μ  = μA + δ · nB / n
    M2 = M2A + M2B + δ² · nA · nB / n

With nB = 1 this is exactly Welford's update, so "update with an image" and
"merge two partial results" are one operation. bnstats never uses the
one-pass ``E[x²] − E[x]²`` on floats: it cancels catastrophically when the
mean is large relative to the spread.

Two kinds of state
------------------
*Integer pixels* (8- and 16-bit) take an exact path. The state is a per-channel
histogram: ``counts[c, v]`` is how many pixels of channel c had value v
(256 bins for 8-bit, 65536 for 16-bit). Every statistic follows exactly from
it: n = Σ h, S = Σ v·h, Q = Σ v²·h as Python integers, so

    mean = S / n,      var = (n·Q − S²) / n²

are exact rationals, rounded once to the nearest float64. Histograms add, so
merging is integer addition: associative and commutative, and the result is
bit-identical for any worker count, shard split, merge order or resume. This
is the running update above, carried out in exact arithmetic.

*Float pixels* (Pillow mode ``F``, float arrays) take the numerically stable
path: each update computes the batch mean and M2 in float64 with two passes
(mean first, then squared deviations from it) and folds the batch in with
Chan's formula. This is stable, but rounding depends on grouping: results of
different groupings agree to about 1e-16·(mean/std)² relative in the
variance (~1e-15 for image data; worse only when the mean dwarfs the
spread, e.g. values near 1e6 that vary by 1e-2), not bit for bit.

Statistics are population statistics (ddof 0), as BatchNorm and
``torchvision.transforms.Normalize`` recipes use.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

__all__ = ["RunningStats", "LayoutError", "HISTOGRAM", "MOMENTS"]

HISTOGRAM = "histogram"
MOMENTS = "moments"


class LayoutError(ValueError):
    """Two pieces of data with different channels or value types were combined."""


def _integer_levels(dtype: np.dtype) -> int | None:
    """Histogram size for 8- or 16-bit unsigned data (any byte order), else None."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u" and dtype.itemsize in (1, 2):
        return 256**dtype.itemsize
    return None


class RunningStats:
    """Mergeable per-channel statistics of pixel data, in constant memory.

    Create one, feed it pixels with :meth:`update` (or per-channel histograms
    with :meth:`update_histogram`), combine partial results with
    :meth:`merge`, read the answer with :meth:`result`, and save/restore the
    exact state with :meth:`to_dict` / :meth:`from_dict`::

        >>> import numpy as np
        >>> from bnstats import RunningStats
        >>> rs = RunningStats()
        >>> rs.update(np.zeros((4, 4, 3), np.uint8))
        >>> rs.update(np.full((2, 2, 3), 255, np.uint8))
        >>> rs.result()["mean"]
        [0.2, 0.2, 0.2]

    ``uint8`` and ``uint16`` pixels are counted exactly (see the module
    docstring); any other numeric dtype is counted as float64.

    Parameters
    ----------
    channel_axis:
        Axis of the channels in arrays passed to :meth:`update`; default the
        last (channels-last, as Pillow and numpy images are). An array with
        ``ndim <= 2`` is one channel.
    """

    def __init__(self, channel_axis: int = -1):
        self.channel_axis = channel_axis
        self.kind: str | None = None  # HISTOGRAM or MOMENTS once data arrived
        self.images = 0
        self.counts: np.ndarray | None = None  # (C, levels) int64, HISTOGRAM
        self.n = 0  # MOMENTS: values per channel
        self.mean: np.ndarray | None = None  # (C,) float64, MOMENTS
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    # -- shape of the data -------------------------------------------------

    @property
    def channels(self) -> int | None:
        """Number of channels, or None before any data arrived."""
        if self.kind == HISTOGRAM:
            return self.counts.shape[0]
        if self.kind == MOMENTS:
            return self.mean.shape[0]
        return None

    @property
    def max_value(self) -> int | float | None:
        """The unit-scale divisor: 255 for 8-bit, 65535 for 16-bit, 1 for float."""
        if self.kind == HISTOGRAM:
            return self.counts.shape[1] - 1
        if self.kind == MOMENTS:
            return 1
        return None

    @property
    def layout(self) -> tuple | None:
        """``(kind, channels, max_value)``: what must match for a merge."""
        return None if self.kind is None else (self.kind, self.channels, self.max_value)

    def _start(self, kind: str, channels: int, levels: int | None) -> None:
        """Fix the layout on first data, or check new data against it."""
        want = (kind, channels, levels - 1 if levels else 1)
        if self.kind is None:
            self.kind = kind
            if kind == HISTOGRAM:
                self.counts = np.zeros((channels, levels), np.int64)
            else:
                self.mean = np.zeros(channels)
                self.m2 = np.zeros(channels)
                self.min = np.full(channels, np.inf)
                self.max = np.full(channels, -np.inf)
        elif self.layout != want:
            raise LayoutError(
                f"cannot combine {describe_layout(want)} data with "
                f"{describe_layout(self.layout)} data"
            )

    # -- chunk: one piece of data -> state ----------------------------------

    def update(self, pixels, images: int | None = None) -> None:
        """Count an image (or a batch of them).

        ``pixels`` is an array with channels on ``channel_axis``: ``(H, W)``
        is one single-channel image, ``(H, W, C)`` one image, ``(N, H, W, C)``
        a batch of N images. ``images`` overrides the image count.
        """
        x = np.asarray(pixels)
        if x.ndim <= 2:
            flat = x.reshape(-1, 1)
            counted = 1
        else:
            flat = np.moveaxis(x, self.channel_axis, -1).reshape(-1, x.shape[self.channel_axis])
            counted = x.shape[0] if x.ndim == 4 else 1
        levels = _integer_levels(x.dtype)
        if levels is not None:
            self.update_histogram(_bincount(flat, levels), images=counted if images is None else images)
        else:
            self._update_moments(flat)
            self.images += counted if images is None else images

    def update_histogram(self, counts, images: int = 1) -> None:
        """Count pixels given as a per-channel histogram ``(C, 256 or 65536)``.

        This is the fast path for decoded 8-bit images: Pillow's C
        ``Image.histogram()`` counts an image several times faster than
        numpy can, and it is exact.
        """
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[1] not in (256, 65536):
            raise ValueError(f"histogram must be (channels, 256 or 65536), got {counts.shape}")
        self._start(HISTOGRAM, counts.shape[0], counts.shape[1])
        self.counts += counts
        self.images += images

    def _update_moments(self, flat: np.ndarray) -> None:
        """Fold an (n, C) block of float values in: two-pass batch, Chan merge."""
        self._start(MOMENTS, flat.shape[1], None)
        n_b = flat.shape[0]
        if n_b == 0:
            return
        flat = flat.astype(np.float64, copy=False)
        mean_b = flat.mean(axis=0)
        m2_b = np.square(flat - mean_b).sum(axis=0)
        self._combine_moments(n_b, mean_b, m2_b, flat.min(axis=0), flat.max(axis=0))

    def _combine_moments(self, n_b, mean_b, m2_b, min_b, max_b) -> None:
        """Chan, Golub & LeVeque's pairwise update of (n, mean, M2)."""
        n_a = self.n
        n = n_a + n_b
        if n_b == 0:
            return
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (n_a * n_b / n)
        self.n = n
        self.min = np.minimum(self.min, min_b)
        self.max = np.maximum(self.max, max_b)

    # -- combine: state + state -> state -------------------------------------

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Fold another partial result into this one (in place); returns self.

        Exact and order-independent for integer data; Chan's pairwise formula
        for float data.
        """
        if other.kind is None:
            self.images += other.images
            return self
        self._start(other.kind, other.channels, other.counts.shape[1] if other.kind == HISTOGRAM else None)
        if other.kind == HISTOGRAM:
            self.counts += other.counts
        else:
            self._combine_moments(other.n, other.mean, other.m2, other.min, other.max)
        self.images += other.images
        return self

    def copy(self) -> "RunningStats":
        """An independent copy of this state."""
        twin = RunningStats.from_dict(self.to_dict())
        twin.channel_axis = self.channel_axis
        return twin

    # -- aggregate: state -> answer -------------------------------------------

    @property
    def pixels(self) -> int:
        """Values counted per channel."""
        if self.kind == HISTOGRAM:
            return sum(self.counts[0].tolist())  # Python ints: no overflow
        return self.n

    def result(self) -> dict:
        """The statistics as plain Python floats.

        Keys ``mean std var min max`` are in unit scale (integer data divided
        by ``max_value``); the same with a ``raw_`` prefix are in the data's
        own units (0-255, 0-65535, or as stored for float data). A channel
        with no counted pixels has ``None`` everywhere.
        """
        if self.kind is None:
            raise ValueError("no data has been counted")
        if self.kind == HISTOGRAM:
            per_channel = [_histogram_stats(h) for h in self.counts]
        else:
            per_channel = [
                _moment_stats(self.n, *values)
                for values in zip(self.mean, self.m2, self.min, self.max)
            ]
        scale = self.max_value
        out = {}
        for key in ("mean", "std", "var", "min", "max"):
            raw = [s[key] for s in per_channel]
            out["raw_" + key] = [None if v is None else float(v) for v in raw]
            power = 2 if key == "var" else 1
            out[key] = [None if v is None else _to_unit(v, scale, power) for v in raw]
        # std in unit scale as the root of the unit variance, not std/scale,
        # so that std**2 == var holds as closely as floats allow.
        out["std"] = [None if v is None else math.sqrt(v) for v in out["var"]]
        return out

    # -- (de)serialization of the exact state ---------------------------------

    def to_dict(self) -> dict:
        """The exact mergeable state as JSON-ready builtins.

        Histograms are stored per channel as the dense run of bins between
        the first and last non-zero one; float moments as floats, which JSON
        round-trips exactly.
        """
        d = {"kind": self.kind, "images": self.images}
        if self.kind == HISTOGRAM:
            d["levels"] = int(self.counts.shape[1])
            d["histogram"] = [_trim(h) for h in self.counts]
        elif self.kind == MOMENTS:
            d.update(
                n=self.n,
                mean=self.mean.tolist(),
                m2=self.m2.tolist(),
                # before any value, min/max are ±inf, which JSON cannot hold
                min=self.min.tolist() if self.n else None,
                max=self.max.tolist() if self.n else None,
            )
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        """Rebuild a state written by :meth:`to_dict`."""
        rs = cls()
        kind = d.get("kind")
        if kind == HISTOGRAM:
            levels = int(d["levels"])
            counts = np.zeros((len(d["histogram"]), levels), np.int64)
            for row, channel in zip(counts, d["histogram"]):
                start, values = int(channel["start"]), channel["counts"]
                row[start : start + len(values)] = values
            rs._start(HISTOGRAM, counts.shape[0], levels)
            rs.counts = counts
        elif kind == MOMENTS:
            rs._start(MOMENTS, len(d["mean"]), None)
            rs.n = int(d["n"])
            rs.mean = np.array(d["mean"], np.float64)
            rs.m2 = np.array(d["m2"], np.float64)
            if d["min"] is not None:
                rs.min = np.array(d["min"], np.float64)
                rs.max = np.array(d["max"], np.float64)
        elif kind is not None:
            raise ValueError(f"unknown state kind {kind!r}")
        rs.images = int(d.get("images", 0))
        return rs

    def __eq__(self, other) -> bool:
        return isinstance(other, RunningStats) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        if self.kind is None:
            return "RunningStats(empty)"
        return f"RunningStats({describe_layout(self.layout)}, images={self.images}, pixels={self.pixels})"


def describe_layout(layout) -> str:
    """Human words for a ``(kind, channels, max_value)`` layout."""
    kind, channels, max_value = layout
    depth = {255: "8-bit", 65535: "16-bit"}.get(max_value, "float")
    return f"{channels}-channel {depth}"


def _bincount(flat: np.ndarray, levels: int) -> np.ndarray:
    """Per-channel histogram of an (n, C) integer array."""
    return np.stack([np.bincount(flat[:, c], minlength=levels) for c in range(flat.shape[1])]).astype(np.int64)


def _histogram_stats(h: np.ndarray) -> dict:
    """Exact statistics of one channel's histogram, as Fractions and ints."""
    nonzero = np.flatnonzero(h)
    if nonzero.size == 0:
        return dict.fromkeys(("mean", "std", "var", "min", "max"))
    lo, hi = int(nonzero[0]), int(nonzero[-1])
    counts = h[lo : hi + 1].tolist()  # Python ints: sums below cannot overflow
    n = sum(counts)
    s = sum(c * v for v, c in enumerate(counts, lo))
    q = sum(c * v * v for v, c in enumerate(counts, lo))
    var = Fraction(n * q - s * s, n * n)
    return {"mean": Fraction(s, n), "var": var, "std": math.sqrt(var), "min": lo, "max": hi}


def _moment_stats(n, mean, m2, lo, hi) -> dict:
    if n == 0:
        return dict.fromkeys(("mean", "std", "var", "min", "max"))
    var = m2 / n
    return {"mean": mean, "var": var, "std": math.sqrt(var), "min": lo, "max": hi}


def _to_unit(value, scale, power: int) -> float:
    """value / scale**power, rounded once (exact for Fractions and ints)."""
    if isinstance(value, (Fraction, int)):
        return float(Fraction(value) / scale**power)
    return float(value) / scale**power


def _trim(h: np.ndarray) -> dict:
    nonzero = np.flatnonzero(h)
    if nonzero.size == 0:
        return {"start": 0, "counts": []}
    lo, hi = int(nonzero[0]), int(nonzero[-1])
    return {"start": lo, "counts": h[lo : hi + 1].tolist()}
