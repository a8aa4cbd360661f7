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
path: each update computes the batch mean and M2 in float64 with the
corrected two-pass algorithm (mean first, then squared deviations from it,
less the square of their rounding residue) and folds the batch in with
Chan's formula. This is stable, but rounding depends on grouping: results of
different groupings agree to about 1e-16·(mean/std)² relative in the
variance (~1e-15 for image data; worse only when the mean dwarfs the
spread, e.g. values near 1e6 that vary by 1e-2), not bit for bit.

Statistics are population statistics (ddof 0), as BatchNorm and
``torchvision.transforms.Normalize`` recipes use.

The pieces
----------
* :class:`HistogramState` (exact, integer data) and :class:`MomentState`
  (float data) are the two kinds of state; each knows its own update, merge,
  answer and JSON form, so nothing here switches on a type code.
* :class:`ExactMoments` (n, Σx, Σx² as Python ints) and :class:`MomentState`
  are also the compact per-image summaries that order-dependent observers
  (``bnstats.observers.base``) receive; :func:`chan_merge` and
  :func:`exact_mean_var` are the one implementation of the formulas above.
* :class:`Statistic` is the protocol every statistic of a run follows
  (``add_image`` / ``merge`` / ``report`` / ``to_dict`` / ``from_dict``, the
  chunk/combine/aggregate triple); :func:`register_statistic` makes a new
  one available by name. :class:`RunningStats` (mean, std, var, min, max) is
  the statistic every run has.
* :meth:`HistogramState.percentiles` (and :meth:`RunningStats.order_statistics`,
  which adds the median and ``--percentiles`` to a report) reads exact
  percentiles off the histogram: numpy's default ``method="linear"`` rule,
  carried out in rationals and rounded once.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import ClassVar

import numpy as np

from . import kernels

__all__ = [
    "RunningStats", "Statistic", "STATISTICS", "register_statistic", "LayoutError",
    "HistogramState", "MomentState", "ExactMoments", "chan_merge", "exact_mean_var",
    "HISTOGRAM", "MOMENTS", "LEVELS", "normalize_percentile",
]

HISTOGRAM = "histogram"
MOMENTS = "moments"
LEVELS = (256, 65536)  # histogram sizes: 8-bit and 16-bit data
STAT_KEYS = ("mean", "std", "var", "min", "max")

# Below this many values per channel, Σv·h and the two halves of Σv²·h
# (v < 2**16) fit int64 and numpy computes them; above, Python integers do.
_INT64_SAFE_PIXELS = 2**47


class LayoutError(ValueError):
    """Two pieces of data with different channels or value types were combined."""


def integer_levels(dtype) -> int | None:
    """Histogram size for 8- or 16-bit integer data (signed or not, any byte order), else None."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui" and dtype.itemsize in (1, 2):
        return 256**dtype.itemsize
    return None


def integer_offset(dtype) -> int:
    """The value of histogram bin 0: 0 for unsigned data, -128 or -32768 for signed."""
    dtype = np.dtype(dtype)
    return int(np.iinfo(dtype).min) if dtype.kind == "i" else 0


def describe_layout(layout) -> str:
    """Human words for a ``(kind, channels, max_value[, offset])`` layout."""
    kind, channels, max_value, *offset = layout
    if offset:
        depth = {-128: "8-bit signed", -32768: "16-bit signed"}[offset[0]]
    else:
        depth = {255: "8-bit", 65535: "16-bit"}.get(max_value, "float")
    return f"{channels}-channel {depth}"


# -- the formulas, once ----------------------------------------------------------------


def chan_merge(a: tuple, b: tuple) -> tuple:
    """``(n, mean, mean_lo, M2)`` of the union of two parts (Chan, Golub & LeVeque 1979).

    The mean is carried as an unevaluated sum ``mean + mean_lo`` (a
    double-double): where the mean dwarfs the spread (values near 1e7 that
    vary by 0.1), ``δ = mean_b − mean_a`` would otherwise lose most of its
    digits, and ``δ²·nA·nB/n`` in M2 with them. ``mean`` and ``M2`` may be
    floats or per-channel arrays. With ``n_b = 1`` this is Welford's update.
    """
    n_a, mean_a, lo_a, m2_a = a
    n_b, mean_b, lo_b, m2_b = b
    if n_b == 0:
        return a
    if n_a == 0:
        return b
    n = n_a + n_b
    delta = (mean_b - mean_a) + (lo_b - lo_a)
    step = delta * (n_b / n)
    mean, error = _two_sum(mean_a, step)
    return n, mean, lo_a + error, m2_a + m2_b + delta * delta * (n_a * n_b / n)


def _two_sum(a, b):
    """``a + b`` as ``(s, e)`` with ``s + e`` exact (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def exact_mean_var(n: int, s: int, q: int) -> tuple[Fraction, Fraction]:
    """Mean and population variance of values with count n, Σx = s and Σx² = q, exactly."""
    return Fraction(s, n), Fraction(n * q - s * s, n * n)


def _histogram_sums(counts: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """Per-channel n, Σv·h and Σv²·h of a ``(C, levels)`` histogram, as exact Python ints.

    Vectorised in int64 while that cannot overflow (v² is split into two
    16-bit halves so every dot product stays below 2**63), Python integers
    beyond.
    """
    levels = counts.shape[1]
    if counts.size and int(counts.max()) < 2**63 // levels:
        n = counts.sum(axis=1)
        if int(n.max(initial=0)) < _INT64_SAFE_PIXELS:
            v = np.arange(levels, dtype=np.int64)
            v2 = v * v
            s = counts @ v
            q_hi, q_lo = counts @ (v2 >> 16), counts @ (v2 & 0xFFFF)
            return n.tolist(), s.tolist(), [(h << 16) + lo for h, lo in zip(q_hi.tolist(), q_lo.tolist())]
    ns, ss, qs = [], [], []
    for h in counts:
        nonzero = np.flatnonzero(h)
        lo = int(nonzero[0]) if nonzero.size else 0
        run = h[lo : int(nonzero[-1]) + 1].tolist() if nonzero.size else []
        ns.append(sum(run))
        ss.append(sum(c * v for v, c in enumerate(run, lo)))
        qs.append(sum(c * v * v for v, c in enumerate(run, lo)))
    return ns, ss, qs


_PERCENTILE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def normalize_percentile(text: str) -> str:
    """A percentile as written (``"50.0"``, ``" .5"``) -> its report key (``"50"``, ``"0.5"``).

    Plain decimal numbers in [0, 100] only; anything else is a ValueError
    whose message says why. The key reads back exactly with ``Fraction(key)``.
    """
    written = text.strip()
    if not _PERCENTILE.fullmatch(written):
        raise ValueError(f"{written!r} is not a number")
    value = Decimal(written)
    if not 0 <= value <= 100:
        raise ValueError(f"{written} is outside 0..100")
    return "0" if value == 0 else format(value.normalize(), "f")


def _unit(value, scale, power: int) -> float:
    """value / scale**power, rounded once (exact for Fractions and ints)."""
    if isinstance(value, (Fraction, int)):
        return float(Fraction(value) / scale**power)
    return float(value) / scale**power


_EMPTY_CHANNEL = dict.fromkeys(STAT_KEYS)


# -- per-image and per-batch moments ----------------------------------------------------


@dataclass(frozen=True)
class ExactMoments:
    """Per-channel n, Σx and Σx² of integer data, as Python ints: exact to combine.

    The compact summary of one image (or a batch) of integer pixels that
    order-dependent observers receive; a batch's moments are the exact sum
    of its images'.
    """

    kind: ClassVar[str] = "exact_moments"
    n: int
    sums: tuple[int, ...]
    squares: tuple[int, ...]

    @classmethod
    def of_histogram(cls, counts: np.ndarray, offset: int = 0) -> "ExactMoments":
        """The moments of a histogram whose bin b holds the value ``b + offset``."""
        n, s, q = _histogram_sums(np.asarray(counts))
        if offset:  # Σ(b+o) = Σb + o·n,  Σ(b+o)² = Σb² + 2o·Σb + o²·n
            s, q = [si + offset * ni for si, ni in zip(s, n)], [
                qi + 2 * offset * si + offset * offset * ni for qi, si, ni in zip(q, s, n)]
        return cls(n[0] if n else 0, tuple(s), tuple(q))

    @classmethod
    def combine(cls, parts: Iterable["ExactMoments"]) -> "ExactMoments":
        parts = list(parts)
        return cls(
            sum(p.n for p in parts),
            tuple(map(sum, zip(*(p.sums for p in parts)))),
            tuple(map(sum, zip(*(p.squares for p in parts)))),
        )

    def unit_mean_var(self, scale) -> tuple[list[float], list[float]]:
        """Per-channel mean and population variance divided by scale (and scale²), rounded once."""
        pairs = [exact_mean_var(self.n, s, q) for s, q in zip(self.sums, self.squares)]
        return [float(m / scale) for m, _ in pairs], [float(v / scale**2) for _, v in pairs]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n": self.n, "sums": list(self.sums), "squares": list(self.squares)}

    @classmethod
    def from_dict(cls, d: dict) -> "ExactMoments":
        n, sums, squares = _int(d["n"], "n"), d["sums"], d["squares"]
        if not isinstance(sums, list) or not isinstance(squares, list) or len(sums) != len(squares):
            raise ValueError("sums and squares must be lists of equal length")
        return cls(n, tuple(_int(v, "sums") for v in sums), tuple(_int(v, "squares") for v in squares))


# -- the two kinds of state --------------------------------------------------------------


class HistogramState:
    """Exact per-channel histogram ``counts[c, b]`` of 8- or 16-bit data.

    Bin b holds the value ``b + offset``: ``offset`` is 0 for unsigned data
    (unit scale divides by 255 or 65535), -128 or -32768 for signed data
    (CT scans in Hounsfield units), which is reported in its own units.
    """

    kind: ClassVar[str] = HISTOGRAM

    def __init__(self, counts: np.ndarray, offset: int = 0):
        self.counts = counts  # (C, levels) int64
        self.offset = offset

    @classmethod
    def empty(cls, channels: int, levels: int, offset: int = 0) -> "HistogramState":
        return cls(np.zeros((channels, levels), np.int64), offset)

    @property
    def channels(self) -> int:
        return self.counts.shape[0]

    @property
    def max_value(self) -> int:
        return 1 if self.offset else self.counts.shape[1] - 1

    @property
    def levels(self) -> int:
        return self.counts.shape[1]

    @property
    def pixels(self) -> int:
        return sum(self.counts[0].tolist()) if self.channels else 0  # Python ints: no overflow

    def add(self, counts: np.ndarray) -> None:
        self.counts += counts

    def merge(self, other: "HistogramState") -> None:
        self.counts += other.counts

    def copy(self) -> "HistogramState":
        return HistogramState(self.counts.copy(), self.offset)

    def moments(self) -> ExactMoments:
        return ExactMoments.of_histogram(self.counts, self.offset)

    def percentiles(self, ps: Sequence[Fraction]) -> list[list[Fraction | None]]:
        """Exact percentiles ``ps`` (each in [0, 100]) per channel, in raw units: ``out[i][c]``.

        numpy's default ``method="linear"``: in the n sorted values, position
        h = (n-1)·p/100, interpolated between the values at floor(h) and
        floor(h)+1. Cumulative counts locate both values; the interpolation is
        exact (Fractions). A channel without pixels gives None.
        """
        # int64 cumulative counts unless a channel could overflow them (never in practice)
        dtype = np.int64 if self.pixels < 2**62 else object
        cumulative = np.cumsum(self.counts, axis=1, dtype=dtype)
        totals = cumulative[:, -1].tolist()
        out = [[None] * self.channels for _ in ps]
        for c, n in enumerate(totals):
            if n == 0:
                continue
            positions = [(n - 1) * Fraction(p) / 100 for p in ps]
            below = [h.numerator // h.denominator for h in positions]
            # the value at sorted index k is the first bin whose cumulative count exceeds k
            wanted = np.array(below + [min(k + 1, n - 1) for k in below], dtype=dtype)
            values = (np.searchsorted(cumulative[c], wanted, side="right") + self.offset).tolist()
            for i, (h, k) in enumerate(zip(positions, below)):
                lo, hi = values[i], values[len(ps) + i]
                out[i][c] = lo + (h - k) * (hi - lo)
        return out

    def channel_stats(self) -> list[dict]:
        """Exact raw statistics per channel (Fractions and ints)."""
        n, s, q = _histogram_sums(self.counts)
        seen = self.counts > 0
        lo = (np.argmax(seen, axis=1) + self.offset).tolist()
        hi = (self.levels - 1 + self.offset - np.argmax(seen[:, ::-1], axis=1)).tolist()
        out = []
        for c in range(self.channels):
            if n[c] == 0:
                out.append(_EMPTY_CHANNEL)
                continue
            mean, var = exact_mean_var(n[c], s[c], q[c])  # of the bins: the variance does not move
            out.append({"mean": mean + self.offset, "var": var, "std": math.sqrt(var), "min": lo[c], "max": hi[c]})
        return out

    def to_dict(self) -> dict:
        """Histograms stored per channel as the run of bins between the first and last non-zero one."""
        d = {"levels": self.levels, "histogram": [_trim(h) for h in self.counts]}
        if self.offset:
            d["offset"] = self.offset
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HistogramState":
        levels, offset = d["levels"], d.get("offset", 0)
        if levels not in LEVELS or isinstance(levels, bool):
            raise ValueError(f"levels must be 256 or 65536, not {levels!r}")
        if offset not in (0, -levels // 2) or isinstance(offset, bool):
            raise ValueError(f"offset must be 0 or {-levels // 2}, not {offset!r}")
        channels = d["histogram"]
        if not isinstance(channels, list) or not 1 <= len(channels) <= 4096:
            raise ValueError("histogram must be a list of channels")
        counts = np.zeros((len(channels), levels), np.int64)
        for row, channel in zip(counts, channels):
            start, values = _int(channel["start"], "histogram start"), channel["counts"]
            if not isinstance(values, list) or start + len(values) > levels:
                raise ValueError("histogram counts must be a list that fits the levels")
            if values:
                row[start : start + len(values)] = [_int(v, "histogram counts", 2**63 - 1) for v in values]
        return cls(counts, offset)


class MomentState:
    """Per-channel n, mean, M2, min and max of float data, merged with Chan's formula."""

    kind: ClassVar[str] = MOMENTS
    max_value: ClassVar[int] = 1

    def __init__(self, n: int, mean: np.ndarray, m2: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 mean_lo: np.ndarray | None = None):
        self.n, self.mean, self.m2, self.min, self.max = n, mean, m2, lo, hi
        self.mean_lo = np.zeros_like(mean) if mean_lo is None else mean_lo  # the mean is mean + mean_lo

    @classmethod
    def empty(cls, channels: int) -> "MomentState":
        return cls(0, np.zeros(channels), np.zeros(channels), np.full(channels, np.inf), np.full(channels, -np.inf))

    @classmethod
    def of_values(cls, flat: np.ndarray) -> "MomentState":
        """The state of an ``(n, C)`` block: the corrected two-pass mean and M2, in float64.

        Each channel is made one contiguous row, which numpy sums pairwise
        (summing down the columns of an ``(n, C)`` array is plain
        accumulation, an error growing with n). The correction term of
        Chan, Golub & LeVeque's corrected two-pass algorithm, ``c = Σ(x − x̄)``,
        removes what rounding left in the mean: ``M2 = Σ(x − x̄)² − c²/n``, and
        the mean is ``x̄ + c/n``, kept as that unevaluated sum (see
        :func:`chan_merge`). Data like 10000000.1, 10000000.2, … (NIST StRD
        NumAcc4) keeps its variance to about 1e-15 relative.
        """
        n = flat.shape[0]
        if n == 0:
            return cls.empty(flat.shape[1])
        rows = np.ascontiguousarray(flat.T, dtype=np.float64)
        mean = rows.mean(axis=1)
        deviations = rows - mean[:, None]
        c = deviations.sum(axis=1)
        m2 = np.square(deviations).sum(axis=1) - c * c / n
        return cls(n, mean, m2, rows.min(axis=1), rows.max(axis=1), c / n)

    @classmethod
    def combine(cls, parts: Iterable["MomentState"]) -> "MomentState":
        parts = list(parts)
        out = cls.empty(parts[0].channels)
        for part in parts:
            out.merge(part)
        return out

    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    @property
    def pixels(self) -> int:
        return self.n

    def merge(self, other: "MomentState") -> None:
        if other.n == 0:
            return
        self.n, self.mean, self.mean_lo, self.m2 = chan_merge(
            (self.n, self.mean, self.mean_lo, self.m2), (other.n, other.mean, other.mean_lo, other.m2))
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    def copy(self) -> "MomentState":
        return MomentState(self.n, self.mean.copy(), self.m2.copy(), self.min.copy(), self.max.copy(),
                           self.mean_lo.copy())

    def moments(self) -> "MomentState":
        return self

    def unit_mean_var(self, scale) -> tuple[list[float], list[float]]:
        """Per-channel mean and population variance divided by scale (and scale²)."""
        with np.errstate(invalid="ignore", over="ignore"):  # as channel_stats: non-finite results are refused later
            return ((self.mean + self.mean_lo) / scale).tolist(), (self.m2 / self.n / scale**2).tolist()

    def channel_stats(self) -> list[dict]:
        if self.n == 0:
            return [_EMPTY_CHANNEL] * self.channels
        out = []
        with np.errstate(invalid="ignore", over="ignore"):  # values past float64 (inf - inf): the report refuses
            means = self.mean + self.mean_lo                   # the NaN in one line; numpy's warning went raw
        for mean, m2, lo, hi in zip(means, self.m2, self.min, self.max):
            var = m2 / self.n
            out.append({"mean": mean, "var": var, "std": math.sqrt(var), "min": lo, "max": hi})
        return out

    def to_dict(self) -> dict:
        """Floats as JSON numbers, which round-trip exactly."""
        return {
            "n": self.n,
            "mean": self.mean.tolist(),
            "mean_lo": self.mean_lo.tolist(),
            "m2": self.m2.tolist(),
            # before any value, min/max are ±inf, which JSON cannot hold
            "min": self.min.tolist() if self.n else None,
            "max": self.max.tolist() if self.n else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "MomentState":
        mean = _floats(d["mean"], "mean")
        state = cls.empty(len(mean))
        state.n = _int(d["n"], "n")
        state.mean, state.m2 = np.array(mean), np.array(_floats(d["m2"], "m2", len(mean)))
        state.mean_lo = np.array(_floats(d.get("mean_lo", [0.0] * len(mean)), "mean_lo", len(mean)))
        if state.n:
            state.min = np.array(_floats(d["min"], "min", len(mean)))
            state.max = np.array(_floats(d["max"], "max", len(mean)))
        return state

    def __eq__(self, other) -> bool:
        return isinstance(other, MomentState) and self.to_dict() == other.to_dict()


STATE_KINDS = {cls.kind: cls for cls in (HistogramState, MomentState, ExactMoments)}


def moments_from_dict(d: dict):
    """An :class:`ExactMoments` or :class:`MomentState` written by its ``to_dict``."""
    if d.get("kind") == ExactMoments.kind:
        return ExactMoments.from_dict(d)
    return MomentState.from_dict(d)


def moments_to_dict(moments) -> dict:
    return moments.to_dict() if isinstance(moments, ExactMoments) else {"kind": MOMENTS, **moments.to_dict()}


# -- validation of states read from JSON ----------------------------------------------------


def _int(value, field: str, limit: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (limit is not None and value > limit):
        raise ValueError(f"{field} must be a non-negative integer")
    return value


def _floats(values, field: str, length: int | None = None) -> list[float]:
    if not isinstance(values, list) or (length is not None and len(values) != length):
        raise ValueError(f"{field} must be a list of {length or 'some'} numbers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{field} must hold finite numbers")
    return [float(v) for v in values]


def _trim(h: np.ndarray) -> dict:
    nonzero = np.flatnonzero(h)
    if nonzero.size == 0:
        return {"start": 0, "counts": []}
    lo, hi = int(nonzero[0]), int(nonzero[-1])
    return {"start": lo, "counts": h[lo : hi + 1].tolist()}


def _bincount(flat: np.ndarray, levels: int) -> np.ndarray:
    """Per-channel histogram of an ``(n, C)`` 8/16-bit integer array (``(C, levels)`` int64).

    One bincount per channel column, read in place (strided): three times
    faster than one bincount over ``value + channel * levels``, which needs
    an 8-byte index per value. Signed values are shifted so that the smallest
    representable one is bin 0 (flipping the sign bit of the unsigned view).
    """
    if flat.dtype.kind == "i":
        unsigned = flat.view(flat.dtype.str.replace("i", "u"))
        flat = unsigned ^ unsigned.dtype.type(levels // 2)  # two's complement -> offset binary
    if flat.dtype.byteorder in ("=", "|") and flat.shape[0]:
        if flat.flags.c_contiguous:
            return kernels.histogram(flat, flat.itemsize, flat.shape[1], flat.shape[1])
        reverse = flat[:, ::-1]  # OpenCV's BGR read as RGB: a reversed view of contiguous pixels
        if reverse.flags.c_contiguous:
            return kernels.histogram(reverse, flat.itemsize, flat.shape[1], flat.shape[1])[::-1].copy()
    return np.stack([np.bincount(flat[:, c], minlength=levels) for c in range(flat.shape[1])]).astype(np.int64, copy=False)


def raw_histogram(chunks: list[bytes], stride: int, channels: int, counted: int | None = None) -> np.ndarray:
    """The exact ``(channels, 256)`` histogram of 8-bit pixels given as raw bytes, ``stride`` bytes per pixel.

    The first ``channels`` bytes of each pixel count, counted over all the
    chunks (the images of a batch) at once; with ``counted=1`` only the first
    byte counts, for every channel (grey pixels counted as R, G and B).
    """
    data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
    if counted is not None and counted < channels:
        return np.repeat(kernels.histogram(data, 1, stride, counted), channels, axis=0)
    return kernels.histogram(data, 1, stride, channels)


PENDING_BYTES = 2**20  # raw bytes of small images gathered before one bincount counts them


LAYOUTS = ("HW", "HWC", "CHW", "NHW", "NHWC", "NCHW")
_MAX_INFERRED_CHANNELS = 4  # more channels than RGBA in the last axis: more likely H, W or N


def _infer_layout(shape: tuple) -> str:
    """The layout of a channels-last array given without one, or ValueError naming the layout to give."""
    ndim = len(shape)
    if ndim <= 2:
        return "HW"
    if ndim in (3, 4) and shape[-1] <= _MAX_INFERRED_CHANNELS:
        return "HWC" if ndim == 3 else "NHWC"
    if ndim == 3:
        return _refuse(shape, "layout='NHW' for a batch of one-channel images, 'CHW' for one "
                              "channels-first image, or 'HWC' if it really has that many channels")
    if ndim == 4:
        return _refuse(shape, "layout='NCHW' for a channels-first batch, or 'NHWC' if it really has "
                              "that many channels")
    return _refuse(shape, "a layout")


def _refuse(shape, fix: str):
    raise ValueError(f"an array of shape {tuple(shape)} is ambiguous: give {fix}")


# -- the statistic protocol -------------------------------------------------------------------


class Statistic:
    """One statistic of a run, in dask's chunk / combine / aggregate shape.

    * chunk: :meth:`add_image` folds in one decoded image, an object with
      ``histogram()`` (the exact ``(C, levels)`` int64 counts of integer
      pixels, or None for float data), ``values()`` (the ``(n, C)`` array of
      counted pixels) and ``bands``;
    * combine: :meth:`merge` folds another state of the same statistic in
      (in place, never aliasing it); :meth:`combine` is the pure N-ary form;
    * aggregate: :meth:`report` gives the keys it adds to the JSON report
      (a nested ``"raw"`` dict goes under the report's ``raw``);
    * :meth:`to_dict` / :meth:`from_dict` carry the exact state through
      JSON (reports, checkpoints, merge).

    A new statistic is a subclass with a ``name`` and these methods, plus
    :func:`register_statistic`.
    """

    name: ClassVar[str]

    def add_image(self, image) -> None:
        raise NotImplementedError

    def merge(self, other: "Statistic") -> "Statistic":
        raise NotImplementedError

    @classmethod
    def combine(cls, parts: Iterable["Statistic"]) -> "Statistic":
        """A new state holding all of ``parts`` (merged in the order given); parts are untouched."""
        out = cls()
        for part in parts:
            out.merge(part)
        return out

    def report(self) -> dict:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> "Statistic":
        raise NotImplementedError


STATISTICS: dict[str, type[Statistic]] = {}


def register_statistic(cls: type[Statistic]) -> type[Statistic]:
    """Make a :class:`Statistic` subclass available by its ``name`` (a class decorator)."""
    STATISTICS[cls.name] = cls
    return cls


@register_statistic
class RunningStats(Statistic):
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
    layout:
        How arrays passed to :meth:`update` are laid out: ``"HW"``,
        ``"HWC"``, ``"CHW"``, ``"NHW"``, ``"NHWC"`` or ``"NCHW"`` (N images,
        C channels). Without it (and without ``channel_axis``), ``(H, W)`` is
        one gray image, ``(H, W, C)`` one image and ``(N, H, W, C)`` a batch,
        for up to 4 channels; other shapes are ambiguous — a gray batch
        ``(N, H, W)`` or an NCHW batch would silently count W channels — and
        are refused with a message naming the layout to give.
    channel_axis:
        The older way to name the channel axis (``1`` for NCHW batches, ``0``
        for CHW images); ignored when ``layout`` is given.
    """

    name = "stats"

    def __init__(self, channel_axis: int = -1, layout: str | None = None):
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.channel_axis = channel_axis
        self.layout_hint = layout
        self.images = 0
        self._state: HistogramState | MomentState | None = None
        # small 8-bit images' raw bytes, counted together by one bincount (see add_image)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_layout: tuple[int, int, int] | None = None  # stride, channels, bytes counted per pixel

    @property
    def state(self) -> HistogramState | MomentState | None:
        """The exact state (HistogramState or MomentState), None before any data."""
        if self._pending:
            self._flush()
        return self._state

    @state.setter
    def state(self, value) -> None:
        self._flush()
        self._state = value

    def _flush(self) -> None:
        """Count the gathered raw bytes of small images into the state."""
        if self._pending:
            self._state.add(raw_histogram(self._pending, *self._pending_layout))
            self._pending, self._pending_bytes = [], 0

    def __getstate__(self):  # pickled or copied: nothing pending, and a list of its own
        self._flush()
        return {**self.__dict__, "_pending": []}

    # -- shape of the data -------------------------------------------------

    @property
    def kind(self) -> str | None:
        """``"histogram"`` (exact integer state), ``"moments"`` (float) or None before any data."""
        return None if self._state is None else self._state.kind  # fixed before any bytes are gathered

    @property
    def counts(self) -> np.ndarray | None:
        """The ``(C, levels)`` histogram of integer data, else None."""
        return getattr(self.state, "counts", None)

    @property
    def channels(self) -> int | None:
        """Number of channels, or None before any data arrived."""
        return None if self._state is None else self._state.channels

    @property
    def max_value(self) -> int | float | None:
        """The unit-scale divisor: 255 for 8-bit, 65535 for 16-bit, 1 for float."""
        return None if self._state is None else self._state.max_value

    @property
    def layout(self) -> tuple | None:
        """``(kind, channels, max_value)`` (and the offset of signed data): what must match for a merge."""
        if self._state is None:
            return None
        signed = (self._state.offset,) if getattr(self._state, "offset", 0) else ()
        return (self.kind, self.channels, self.max_value, *signed)

    def _start(self, kind: str, channels: int, levels: int | None, offset: int = 0) -> None:
        """Fix the layout on first data, or check new data against it."""
        want = (kind, channels, 1 if offset or not levels else levels - 1, *((offset,) if offset else ()))
        if self.state is None:
            self.state = (HistogramState.empty(channels, levels, offset) if kind == HISTOGRAM
                          else MomentState.empty(channels))
        elif self.layout != want:
            raise LayoutError(
                f"cannot combine {describe_layout(want)} data with {describe_layout(self.layout)} data"
            )

    # -- chunk: one piece of data -> state ----------------------------------

    def update(self, pixels, images: int | None = None, layout: str | None = None) -> None:
        """Count an image (or a batch of them).

        ``pixels`` is an array laid out as ``layout`` says (default: the
        one given to the constructor, else inferred as described there).
        ``images`` overrides the image count.
        """
        x = np.asarray(pixels)
        layout = layout or self.layout_hint
        if layout is None and x.ndim > 2 and self.channel_axis % x.ndim != x.ndim - 1:
            # the older channel_axis argument names the channels; a 4-d array is a batch
            flat = np.moveaxis(x, self.channel_axis, -1).reshape(-1, x.shape[self.channel_axis])
            self._add_values(flat, (x.shape[0] if x.ndim == 4 else 1) if images is None else images)
            return
        layout = layout or _infer_layout(x.shape)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        if x.ndim <= 2 and layout == "HW":
            x = x.reshape(-1, 1) if x.ndim < 2 else x  # a scalar or a row of values: one channel
        if len(layout) != x.ndim:
            raise ValueError(f"layout {layout} does not fit an array of shape {x.shape}")
        if "C" in layout:
            flat = np.moveaxis(x, layout.index("C"), -1).reshape(-1, x.shape[layout.index("C")])
        else:
            flat = x.reshape(-1, 1)
        counted = x.shape[0] if layout.startswith("N") else 1
        self._add_values(flat, counted if images is None else images)

    def update_histogram(self, counts, images: int = 1, offset: int = 0) -> None:
        """Count pixels given as a per-channel histogram ``(C, 256 or 65536)``.

        This is the fast path for decoded 8-bit images: Pillow's C
        ``Image.histogram()`` counts an image several times faster than
        numpy can, and it is exact. ``offset`` is the value of bin 0 (-128
        or -32768 for signed data).
        """
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[1] not in LEVELS:
            raise ValueError(f"histogram must be (channels, 256 or 65536), got {counts.shape}")
        self._start(HISTOGRAM, counts.shape[0], counts.shape[1], offset)
        self.state.add(counts)
        self.images += images

    def add_image(self, image) -> None:
        """Count one decoded image (see :class:`Statistic`).

        A small 8-bit image's raw bytes (``image.raw``) are gathered and
        counted with the next ones by one bincount: per image, a histogram
        costs more than decoding a thumbnail. Counts are exact either way.
        """
        raw = getattr(image, "raw", None)
        if raw is not None:
            self._add_raw(raw, len(image.bands), getattr(image, "count", 1))
            return
        counts = image.histogram()
        if counts is not None:
            self.update_histogram(counts, getattr(image, "count", 1), getattr(image, "offset", 0))
        else:
            self._add_values(image.values(), getattr(image, "count", 1))

    def _add_raw(self, raw: tuple[bytes, int, int], channels: int, images: int) -> None:
        data, stride, counted = raw
        if self._pending_layout != (stride, channels, counted) or self._state is None:
            self._flush()
            self._start(HISTOGRAM, channels, 256)
            self._pending_layout = (stride, channels, counted)
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.images += images
        if self._pending_bytes >= PENDING_BYTES:
            self._flush()

    def _add_values(self, flat: np.ndarray, images: int) -> None:
        """Count an ``(n, C)`` block: exactly for 8/16-bit integers, else two-pass float64 + Chan."""
        levels = integer_levels(flat.dtype)
        if levels is not None:
            self.update_histogram(_bincount(flat, levels), images=images, offset=integer_offset(flat.dtype))
            return
        self._start(MOMENTS, flat.shape[1], None)
        self.state.merge(MomentState.of_values(flat))
        self.images += images

    # -- combine: state + state -> state -------------------------------------

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Fold another partial result into this one (in place); returns self.

        Exact and order-independent for integer data; Chan's pairwise formula
        for float data. ``other`` is not changed and shares nothing with self.
        """
        if other.state is not None:
            if other.kind == HISTOGRAM:
                self._start(HISTOGRAM, other.channels, other.state.levels, other.state.offset)
            else:
                self._start(MOMENTS, other.channels, None)
            self.state.merge(other.state)
        self.images += other.images
        return self

    def copy(self) -> "RunningStats":
        """An independent copy of this state."""
        twin = RunningStats(self.channel_axis, self.layout_hint)
        twin.images = self.images
        twin.state = None if self.state is None else self.state.copy()
        return twin

    __copy__ = copy  # copy.copy too: an accumulator shared by two names would count the gathered images twice

    # -- aggregate: state -> answer -------------------------------------------

    @property
    def pixels(self) -> int:
        """Values counted per channel."""
        return 0 if self.state is None else self.state.pixels

    def moments(self):
        """The exact (integer) or float moments: what observers and batch statistics combine."""
        return self.state.moments()

    def result(self) -> dict:
        """The statistics as plain Python floats.

        Keys ``mean std var min max`` are in unit scale (integer data divided
        by ``max_value``); the same with a ``raw_`` prefix are in the data's
        own units (0-255, 0-65535, or as stored for float data). A channel
        with no counted pixels has ``None`` everywhere.
        """
        if self.state is None:
            raise ValueError("no data has been counted")
        per_channel = self.state.channel_stats()
        scale = self.max_value
        out = {}
        for key in STAT_KEYS:
            raw = [s[key] for s in per_channel]
            out["raw_" + key] = [None if v is None else float(v) for v in raw]
            out[key] = [None if v is None else _unit(v, scale, 2 if key == "var" else 1) for v in raw]
        # std in unit scale as the root of the unit variance, not std/scale,
        # so that std**2 == var holds as closely as floats allow.
        out["std"] = [None if v is None else math.sqrt(v) for v in out["var"]]
        return out

    def report(self) -> dict:
        """The report keys: statistics in unit scale, ``raw`` units, counts.

        A state that counted nothing (a shard of unreadable files) has empty
        per-channel lists, so that it still merges.
        """
        if self.state is None:
            empty = {key: [] for key in STAT_KEYS}
            return {**empty, "images": self.images, "pixels": 0, "max_value": None, "raw": dict(empty)}
        result = self.result()
        out = {key: result[key] for key in STAT_KEYS}
        out.update(images=self.images, pixels=self.pixels, max_value=self.max_value)
        out["raw"] = {key: result["raw_" + key] for key in STAT_KEYS}
        return out

    def order_statistics(self, percentiles: Sequence[str] = ()) -> dict:
        """``median`` and, if asked, ``percentiles`` (keys as :func:`normalize_percentile` writes them).

        Report fields like :meth:`report`'s (unit scale, and the same under
        ``"raw"``), exact from the histogram (see
        :meth:`HistogramState.percentiles`). Float data has no exact order
        statistics: no median, and asking for percentiles is a
        :class:`LayoutError`. A state that counted nothing has empty lists.
        """
        if self.kind == MOMENTS:
            if percentiles:
                raise LayoutError("percentiles are exact only for integer (8- or 16-bit) data, and this data is "
                                  "float: drop --percentiles")
            return {}
        if self.state is None:
            if not percentiles:
                return {}
            empty = {key: [] for key in percentiles}
            return {"percentiles": empty, "raw": {"percentiles": dict(empty)}}
        keys = ["50", *(key for key in percentiles if key != "50")]
        exact = dict(zip(keys, self.state.percentiles([Fraction(key) for key in keys])))
        scale = self.max_value
        raw = {key: [None if v is None else float(v) for v in values] for key, values in exact.items()}
        unit = {key: [None if v is None else _unit(v, scale, 1) for v in values] for key, values in exact.items()}
        out = {"median": unit["50"], "raw": {"median": raw["50"]}}
        if percentiles:
            out["percentiles"] = {key: unit[key] for key in percentiles}
            out["raw"]["percentiles"] = {key: raw[key] for key in percentiles}
        return out

    # -- (de)serialization of the exact state ---------------------------------

    def to_dict(self) -> dict:
        """The exact mergeable state as JSON-ready builtins."""
        d = {"kind": self.kind, "images": self.images}
        if self.layout_hint is not None:  # how update() reads arrays: a rebuilt accumulator reads them alike
            d["layout"] = self.layout_hint
        if self.channel_axis != -1:
            d["channel_axis"] = self.channel_axis
        if self.state is not None:
            d.update(self.state.to_dict())
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        """Rebuild a state written by :meth:`to_dict`; ValueError names what is wrong."""
        axis = d.get("channel_axis", -1)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ValueError(f"channel_axis must be an integer, not {axis!r}")
        rs = cls(channel_axis=axis, layout=d.get("layout"))
        kind = d.get("kind")
        if kind is not None:
            if kind not in (HISTOGRAM, MOMENTS):
                raise ValueError(f"unknown state kind {kind!r}")
            rs.state = STATE_KINDS[kind].from_dict(d)
        rs.images = _int(d.get("images", 0), "images")
        return rs

    def __eq__(self, other) -> bool:
        """Equal counts: how each accumulator reads its arrays (layout, channel_axis) is not compared."""
        def counted(rs):
            d = rs.to_dict()
            d.pop("layout", None)
            d.pop("channel_axis", None)
            return d

        return isinstance(other, RunningStats) and counted(self) == counted(other)

    def __repr__(self) -> str:
        if self.state is None:
            return "RunningStats(empty)"
        return f"RunningStats({describe_layout(self.layout)}, images={self.images}, pixels={self.pixels})"
