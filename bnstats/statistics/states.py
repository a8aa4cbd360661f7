"""The states a statistic keeps: exact histograms and moments of integer data, float moments.

:class:`HistogramState` (exact, integer data) and :class:`MomentState`
(float data) are the two kinds of state of :class:`~bnstats.statistics.running.RunningStats`;
each knows its own update, merge, answer and JSON form, so nothing switches
on a type code. :class:`ExactMoments` (n, Σx, Σx² as Python ints) and
:class:`MomentState` are also the compact per-image summaries that
order-dependent observers receive (:func:`moments_to_dict` /
:func:`moments_from_dict` carry them through JSON). The formulas are
``bnstats.statistics.formulas``'.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import numpy as np

from .formulas import HISTOGRAM, LEVELS, MOMENTS, STAT_KEYS, chan_merge, exact_mean_var, histogram_sums
from .validate import floats, integer

__all__ = ["ExactMoments", "HistogramState", "MomentState", "STATE_KINDS", "combine_moments", "moments_from_dict",
           "moments_to_dict"]

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
        n, s, q = histogram_sums(np.asarray(counts))
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
        n, sums, squares = integer(d["n"], "n"), d["sums"], d["squares"]
        if not isinstance(sums, list) or not isinstance(squares, list) or len(sums) != len(squares):
            raise ValueError("sums and squares must be lists of equal length")
        return cls(n, tuple(integer(v, "sums") for v in sums), tuple(integer(v, "squares") for v in squares))


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
        n, s, q = histogram_sums(self.counts)
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
            start, values = integer(channel["start"], "histogram start"), channel["counts"]
            if not isinstance(values, list) or start + len(values) > levels:
                raise ValueError("histogram counts must be a list that fits the levels")
            if values:
                row[start : start + len(values)] = [integer(v, "histogram counts", 2**63 - 1) for v in values]
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
        mean = floats(d["mean"], "mean")
        state = cls.empty(len(mean))
        state.n = integer(d["n"], "n")
        state.mean, state.m2 = np.array(mean), np.array(floats(d["m2"], "m2", len(mean)))
        if (state.m2 < 0).any():  # a sum of squared deviations: a negative one has no std (math domain error)
            raise ValueError("m2 must not be negative")
        state.mean_lo = np.array(floats(d.get("mean_lo", [0.0] * len(mean)), "mean_lo", len(mean)))
        if state.n:
            state.min = np.array(floats(d["min"], "min", len(mean)))
            state.max = np.array(floats(d["max"], "max", len(mean)))
        return state

    def __eq__(self, other) -> bool:
        return isinstance(other, MomentState) and self.to_dict() == other.to_dict()


STATE_KINDS = {cls.kind: cls for cls in (HistogramState, MomentState, ExactMoments)}


def combine_moments(parts: Iterable) -> "ExactMoments | MomentState":
    """Per-image summaries combined: exactly where all are :class:`ExactMoments`; else as float moments, the
    exact ones rounded once (a run of scaled volumes beside unscaled integer ones: observers' batches mix
    both). Summaries carry mean and variance for observers; the extremes of an exact one are not known, and
    its float twin holds its mean there."""
    parts = list(parts)
    if all(type(part) is type(parts[0]) for part in parts):
        return type(parts[0]).combine(parts)
    return MomentState.combine([part if isinstance(part, MomentState) else _as_float(part) for part in parts])


def _as_float(moments: ExactMoments) -> MomentState:
    pairs = [exact_mean_var(moments.n, s, q) for s, q in zip(moments.sums, moments.squares)]
    mean = np.array([float(m) for m, _ in pairs])
    return MomentState(moments.n, mean, np.array([float(v * moments.n) for _, v in pairs]), mean.copy(), mean.copy())


def moments_from_dict(d: dict):
    """An :class:`ExactMoments` or :class:`MomentState` written by its ``to_dict``."""
    if d.get("kind") == ExactMoments.kind:
        return ExactMoments.from_dict(d)
    return MomentState.from_dict(d)


def moments_to_dict(moments) -> dict:
    return moments.to_dict() if isinstance(moments, ExactMoments) else {"kind": MOMENTS, **moments.to_dict()}


def _trim(h: np.ndarray) -> dict:
    nonzero = np.flatnonzero(h)
    if nonzero.size == 0:
        return {"start": 0, "counts": []}
    lo, hi = int(nonzero[0]), int(nonzero[-1])
    return {"start": lo, "counts": h[lo : hi + 1].tolist()}
