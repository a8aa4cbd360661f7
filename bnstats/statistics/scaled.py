"""Exact statistics of scaled integers: values ``slope · q + inter`` of stored 8/16-bit integers ``q``.

Medical volumes store integers and a scaling to their units: NIfTI's
``scl_slope``/``scl_inter``, DICOM's ``RescaleSlope``/``RescaleIntercept``
(MR and PET: slopes such as 0.0122 or 2.5, differing from scan to scan).
Counted as float data they lose the exact median and percentiles. A
:class:`ScaledState` keeps instead, per distinct scaling (and stored type),
the exact histogram of the stored integers: a *group*. The value of each
voxel is the real number ``slope · q + inter``, with ``slope`` and
``inter`` the floats the file stores (converted exactly), so every
statistic is an exact rational, rounded once:

* n, Σv and Σv² are sums over the groups of ``n``, ``a·S + b·n`` and
  ``a²·Q + 2ab·S + b²·n`` (S, Q: the group's integer Σq and Σq²), so the
  mean and variance are exact Fractions, as for unscaled integers;
* min and max are the least and greatest of ``a·q + b`` over each group's
  lowest and highest stored value (a negative slope swaps them);
* percentiles (numpy's ``method="linear"``) walk the values of every
  group's non-zero bins in order, as exact integers over one power-of-two
  denominator (every float is a dyadic rational).

Groups add bin by bin, so merging is exact, associative and commutative:
bit-identical results for any worker count, shard split, merge order or
resume. Unscaled signed integers (a slope of 1, an intercept of 0) are one
more group, so a run that mixes scaled and unscaled volumes stays exact.
Each group holds a full histogram (512 KiB a channel for 16-bit data), so
a run takes at most ``BNSTATS_MAX_SCALES`` distinct scalings (64).
"""
from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import ClassVar

import numpy as np

from .. import limits
from .formulas import STAT_KEYS, LayoutError, exact_sqrt, histogram_sums, rounded
from .states import HistogramState, MomentState, _trim
from .validate import floats, integer

__all__ = ["SCALED", "ScaledState", "check_scale"]

SCALED = "scaled"
#: the most bytes the histograms of one scaled state hold: what one 16-bit histogram state of 4096 channels (the
#: most a state has) holds, so that a hand-edited state of 64 groups of 4096 empty channels (2 MB of JSON) is
#: refused, not 32 GiB allocated
MAX_HISTOGRAM_BYTES = 4096 * 65536 * 8
_EMPTY_CHANNEL = dict.fromkeys(STAT_KEYS)


def check_scale(slope, inter) -> tuple[float, float]:
    """``(slope, inter)`` as floats; ValueError unless both are finite and the slope is not 0."""
    slope, inter = float(slope), float(inter)
    if not (math.isfinite(slope) and math.isfinite(inter)) or slope == 0:
        raise ValueError(f"a scaling needs a finite, non-zero slope and a finite intercept, not {slope!r}, {inter!r}")
    return slope, inter + 0.0  # -0.0 is 0.0: one key, one way to write it, whichever file came first


class ScaledState:
    """Exact per-channel statistics of values ``slope · q + inter``: per scaling, a histogram of the q."""

    kind: ClassVar[str] = SCALED
    max_value: ClassVar[int] = 1  # values are reported in their own units

    def __init__(self, channels: int, groups: dict | None = None):
        self._channels = channels
        #: ``(slope, inter, levels, offset)`` -> the HistogramState of the stored integers
        self.groups: dict[tuple, HistogramState] = {} if groups is None else groups

    @classmethod
    def empty(cls, channels: int) -> "ScaledState":
        return cls(channels)

    @classmethod
    def of_histogram(cls, state: HistogramState) -> "ScaledState":
        """Unscaled integers as the one group of slope 1 and intercept 0."""
        scaled = cls(state.channels)
        scaled.groups[(1.0, 0.0, state.levels, state.offset)] = state.copy()
        return scaled

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def pixels(self) -> int:
        return sum(group.pixels for group in self.groups.values())

    def add(self, counts: np.ndarray, offset: int, slope: float, inter: float) -> None:
        """Count a ``(C, levels)`` histogram of stored integers (bin b holds ``b + offset``) scaled so."""
        slope, inter = check_scale(slope, inter)
        key = (slope, inter, counts.shape[1], offset)
        group = self.groups.get(key)
        if group is None:
            self._check_room(1, counts.shape[1])
            self.groups[key] = HistogramState(np.array(counts, np.int64), offset)
        else:
            group.add(counts)

    def merge(self, other: "ScaledState") -> None:
        new = other.groups.keys() - self.groups.keys()
        self._check_room(len(new), max((key[2] for key in new), default=0))
        for key, group in other.groups.items():
            mine = self.groups.get(key)
            if mine is None:
                self.groups[key] = group.copy()
            else:
                mine.merge(group)

    def _check_room(self, more: int, levels: int = 65536) -> None:
        """Room for ``more`` groups (of ``levels`` bins): at most BNSTATS_MAX_SCALES, and at most
        :data:`MAX_HISTOGRAM_BYTES` of histograms in all."""
        bound = limits.current().scales
        if len(self.groups) + more > bound:
            raise LayoutError(f"more than {bound} distinct scalings (slope and intercept) in one run: each keeps a "
                              f"histogram; raise {limits.current().variable('scales')} to count more")
        held = sum(group.counts.nbytes for group in self.groups.values())
        if held + more * self._channels * levels * 8 > MAX_HISTOGRAM_BYTES:
            raise LayoutError(f"{len(self.groups) + more} scalings of {self._channels} channels would hold more than "
                              f"{MAX_HISTOGRAM_BYTES >> 30} GiB of histograms (512 KiB a channel of 16-bit data): "
                              "count fewer channels or scalings in one run")

    def copy(self) -> "ScaledState":
        return ScaledState(self._channels, {key: group.copy() for key, group in self.groups.items()})

    # -- the answer ----------------------------------------------------------

    def _exact(self):
        """Per group, in key order: ``(a, b, state)`` with value = a·bin + b exactly (the offset folded in)."""
        for (slope, inter, _, offset), group in sorted(self.groups.items()):
            a = Fraction(slope)
            yield a, a * offset + Fraction(inter), group

    def channel_stats(self) -> list[dict]:
        """Exact raw statistics per channel (Fractions)."""
        n = [0] * self._channels
        s1 = [Fraction(0)] * self._channels
        s2 = [Fraction(0)] * self._channels
        lo: list = [None] * self._channels
        hi: list = [None] * self._channels
        for a, b, group in self._exact():
            ns, ss, qs = histogram_sums(group.counts)
            seen = group.counts > 0
            first = np.argmax(seen, axis=1).tolist()
            last = (group.levels - 1 - np.argmax(seen[:, ::-1], axis=1)).tolist()
            for c in range(self._channels):
                if ns[c] == 0:
                    continue
                n[c] += ns[c]
                s1[c] += a * ss[c] + b * ns[c]
                s2[c] += a * a * qs[c] + 2 * a * b * ss[c] + b * b * ns[c]
                ends = sorted((a * first[c] + b, a * last[c] + b))
                lo[c] = ends[0] if lo[c] is None else min(lo[c], ends[0])
                hi[c] = ends[1] if hi[c] is None else max(hi[c], ends[1])
        out = []
        for c in range(self._channels):
            if n[c] == 0:
                out.append(_EMPTY_CHANNEL)
                continue
            mean = s1[c] / n[c]
            var = s2[c] / n[c] - mean * mean
            out.append({"mean": mean, "var": var, "std": exact_sqrt(var), "min": lo[c], "max": hi[c]})
        return out

    def percentiles(self, ps: Sequence[Fraction]) -> list[list[Fraction | None]]:
        """Exact percentiles ``ps`` (each in [0, 100]) per channel, in the values' units: ``out[i][c]``
        (numpy's default ``method="linear"``, as :meth:`HistogramState.percentiles`)."""
        groups = list(self._exact())
        # one power-of-two denominator for every a and b: each value a·bin + b is then an integer over it
        denominator = max((x.denominator for a, b, _ in groups for x in (a, b)), default=1)
        # per group: the exact line (integers over the denominator), and its slope and intercept as floats
        lines = [(int(a * denominator), int(b * denominator), slope, inter, group)
                 for (a, b, group), (slope, inter, *_) in zip(groups, sorted(self.groups))]
        out = [[None] * self._channels for _ in ps]
        for c in range(self._channels):
            channel = _Channel(lines, c)
            if channel.n == 0:
                continue
            for i, p in enumerate(ps):
                h = (channel.n - 1) * Fraction(p) / 100
                k = h.numerator // h.denominator
                below, above = channel.value_at(k), channel.value_at(min(k + 1, channel.n - 1))
                out[i][c] = Fraction(below + (h - k) * (above - below), denominator)
        return out

    def moments(self) -> MomentState:
        """Float moments of the exact statistics (what observers combine)."""
        stats, n = self.channel_stats(), self.pixels
        if n == 0:
            return MomentState.empty(self._channels)
        mean = np.array([rounded(s["mean"]) for s in stats])
        return MomentState(n, mean, np.array([rounded(s["var"] * n) for s in stats]),
                           np.array([rounded(s["min"]) for s in stats]), np.array([rounded(s["max"]) for s in stats]))

    # -- JSON ----------------------------------------------------------------

    def to_dict(self) -> dict:
        """Per group, in key order: its scaling, stored type and trimmed histograms."""
        groups = []
        for (slope, inter, levels, offset), group in sorted(self.groups.items()):
            d = {"slope": slope, "inter": inter, "levels": levels}
            if offset:
                d["offset"] = offset
            groups.append({**d, "histogram": [_trim(h) for h in group.counts]})
        return {"channels": self._channels, "groups": groups}

    @classmethod
    def from_dict(cls, d: dict) -> "ScaledState":
        channels = integer(d["channels"], "channels")
        groups = d["groups"]
        if not 1 <= channels <= 4096 or not isinstance(groups, list):
            raise ValueError("a scaled state needs 1..4096 channels and a list of groups")
        state = cls(channels)
        if not all(isinstance(group, dict) for group in groups):
            raise ValueError("each group of a scaled state must be an object")
        state._check_room(len(groups), 256)  # the count, and the bins every group declares before any is built
        declared = sum(channels * (g["levels"] if g.get("levels") in (256, 65536) else 256) * 8 for g in groups)
        if declared > MAX_HISTOGRAM_BYTES:
            raise ValueError(f"a scaled state of {len(groups)} groups of {channels} channels holds more than "
                             f"{MAX_HISTOGRAM_BYTES >> 30} GiB of histograms: no run writes one")
        for group in groups:
            slope, inter = check_scale(*floats([group["slope"], group["inter"]], "slope and inter", 2))
            histogram = HistogramState.from_dict(group)
            if histogram.channels != channels:
                raise ValueError(f"a group of {histogram.channels} channels in a scaled state of {channels}")
            key = (slope, inter, histogram.levels, histogram.offset)
            if key in state.groups:
                raise ValueError(f"the scaling {slope!r}, {inter!r} is given twice")
            state.groups[key] = histogram
        return state

    def __eq__(self, other) -> bool:
        return isinstance(other, ScaledState) and self.to_dict() == other.to_dict()


class _Channel:
    """The counted values of one channel of a :class:`ScaledState`, for the value at a rank.

    Sorting millions of exact values (64 groups of 65,536 bins) as Python integers takes seconds a channel;
    numpy sorts their float64 approximations instead, each within ``error`` of its exact value, and only
    the values near the one found (within twice the error) are sorted exactly: the value of rank r is the
    exact one among them, all below them being exactly smaller and all above exactly greater."""

    def __init__(self, lines, c: int):
        self.lines = lines
        parts = []
        for g, (_, _, a, b, group) in enumerate(lines):
            bins = np.flatnonzero(group.counts[c])
            parts.append((np.full(bins.size, g), bins, group.counts[c][bins]))
        self.group, self.bins, counts = (np.concatenate(x) for x in zip(*parts)) if parts else ([],) * 3
        self.n = sum(sum(part[2].tolist()) for part in parts)  # Python ints: no overflow
        if self.n == 0:
            return
        slopes = np.array([a for _, _, a, _, _ in lines])[self.group]
        inters = np.array([b for _, _, _, b, _ in lines])[self.group]
        offsets = np.array([group.offset for *_, group in lines])[self.group]
        with np.errstate(over="ignore", invalid="ignore"):
            product = slopes * (self.bins + offsets)
            approx = product + inters
            # two roundings, each within half an ulp of its result: 2**-51 of the magnitudes bounds both
            self.error = float(np.max((2 * np.abs(product) + np.abs(inters)) * 2.0**-51))
        if not (np.isfinite(approx).all() and math.isfinite(self.error)):  # values past float64: sort exactly
            approx, self.error = np.zeros(approx.size), math.inf
        order = np.argsort(approx, kind="stable")
        self.approx, self.counts = approx[order], counts[order]
        self.group, self.bins = self.group[order], self.bins[order]
        dtype = np.int64 if self.n < 2**62 else object
        self.cumulative = np.cumsum(self.counts, dtype=dtype)

    def exact(self, i: int) -> int:
        """The exact value of entry i, as an integer over the state's common denominator."""
        step, start, *_ = self.lines[self.group[i]]
        return step * int(self.bins[i]) + start

    def value_at(self, rank: int) -> int:
        """The exact value of sorted rank ``rank`` (0-based, counts repeated)."""
        near = self.approx[int(np.searchsorted(self.cumulative, rank, side="right"))]
        if math.isinf(self.error):
            lo, hi = 0, self.approx.size
        else:
            lo = int(np.searchsorted(self.approx, near - 2 * self.error, side="left"))
            hi = int(np.searchsorted(self.approx, near + 2 * self.error, side="right"))
        before = int(self.cumulative[lo - 1]) if lo else 0
        window = sorted((self.exact(i), int(self.counts[i])) for i in range(lo, hi))
        cumulative = list(itertools.accumulate(count for _, count in window))
        return window[bisect.bisect_right(cumulative, rank - before)][0]
