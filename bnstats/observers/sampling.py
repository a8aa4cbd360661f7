"""Sampling images, with honest 95% confidence intervals: ``--sample N``, ``--until-ci W``.

**The order.** Items are taken in a seeded random order: sorted by
``SHA-256(seed, item)`` of each item's portable identity. This is a uniform
random permutation that needs no random-number stream (so it is the same on
every machine, Python and numpy version, and does not depend on how the list
was listed or split); ``--sample N`` takes its first N items, ``--until-ci``
streams it until the intervals are narrow enough. The order is fixed before
the work is split, so any ``-j`` counts the same images.

**The intervals.** Pixels of one image are strongly correlated, so an
interval from the pixel count (``1.96·σ/√pixels``) is far too narrow: the
sampling unit is the image. With image i contributing ``n_i`` pixels, pixel
sum ``s_i`` and sum of squares ``q_i`` (per channel), the dataset mean is a
ratio estimator ``R = Σs/Σn`` and the mean square ``Q = Σq/Σn``; their
linearized (Taylor) variances over a simple random sample of m of the N
images, with the finite-population correction, are

    var(R) = (1 − m/N) · Σ (s_i − R·n_i)² / (m (m − 1) n̄²)
    var(V) = (1 − m/N) · Σ z_i² / (m (m − 1) n̄²),   z_i = q_i − 2R·s_i + (2R² − Q)·n_i

for the variance ``V = Q − R²``, and ``var(√V) = var(V) / 4V`` (delta
method). The half-widths are Student's 97.5% quantile with m − 1 degrees of
freedom (1.96 for large m) times their roots. All sums are exact
integers for 8/16-bit data; the intervals need only a few digits.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction

import numpy as np

from .base import Observer
from ..inputs.keys import position_of, same_keys
from ..inputs.selection import Selection
from ..statistics.states import ExactMoments

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def t95(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (Cornish-Fisher; ±0.001 for df >= 3).

    Intervals from m images use ``t95(m - 1)`` rather than 1.96: a little
    wider for small samples, where the estimated variance is itself uncertain.
    """
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + (
        3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
MIN_IMAGES = 30  # --until-ci never stops before this many images
CHECK_EVERY = 32  # items per task under --until-ci: how often the stopping rule is checked


def _width(quantile: float, variance: float) -> float | None:
    """``quantile · √variance``, or None (undefined) when float sums overflowed (values near 1e308):
    such an interval is no interval, and None never satisfies ``--until-ci``."""
    width = quantile * math.sqrt(variance) if variance >= 0 else math.nan
    return width if math.isfinite(width) else None


def sample_order(keys: Sequence[str], identities: Iterable[str], seed: int, size: int | None = None) -> Sequence[str]:
    """``keys`` in the seeded random order (see the module docstring), the first ``size`` of them if given.

    ``identities`` are the keys' portable identities, in the keys' order. With a ``size``, only that many
    keys are ever held (the smallest hashes, kept in a heap as the keys stream by); without, the order is
    a :class:`SampledOrder` (4 bytes an item, not a list of the keys).
    """
    digests = _digests(identities, seed)
    if size is None:
        return SampledOrder.of(keys, digests)
    return [key for _, key in heapq.nsmallest(size, zip(digests, keys))]


def _digests(identities: Iterable[str], seed: int) -> Iterator[bytes]:
    """The seeded SHA-256 of each identity: what the random order sorts by."""
    salt = f"bnstats-sample:{seed}:".encode()
    for identity in identities:
        yield hashlib.sha256(salt + identity.encode("utf-8", "surrogateescape")).digest()


class SampledOrder(Sequence):
    """Every key of ``keys`` in the seeded random order, held as positions into ``keys`` (sorted by the first
    128 bits of each key's hash, then by key: the order of ``sorted((hash, key))`` unless two hashes agree
    in 128 bits and differ after, which SHA-256 makes as likely as finding a collision of it), 4 bytes an
    item where a list of every key and its hash took ~230. A slice of up to :data:`LIST_SLICE` keys is a
    list (a partition's, sent to a worker), a longer one a view; keys are read in position order (a
    packed list's blocks once each)."""

    LIST_SLICE = 1024
    WINDOW = 1 << 16  # keys read ahead at a time for small slices (a packed block is read once per window)

    def __init__(self, keys: Sequence[str], order: np.ndarray):
        self.keys, self.order = keys, order
        self._window: tuple[int, list[str]] | None = None  # (first position, the keys from it): read ahead

    @classmethod
    def of(cls, keys: Sequence[str], digests: Iterable[bytes]) -> "SampledOrder":
        """``keys`` ordered by ``digests`` (one a key, in the keys' order), their first 128 bits."""
        high = np.empty(len(keys), np.uint64)  # native arrays: lexsort copies none (big-endian views it did)
        low = np.empty(len(keys), np.uint64)
        for i, digest in enumerate(digests):  # big-endian numbers sort as the bytes do
            high[i], low[i] = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:16], "big")
        order = np.lexsort((low, high))  # stable: equal hashes (equal identities) stay in key order
        del high, low
        return cls(keys, order.astype(np.uint32) if len(keys) < 2**32 else order)

    @property
    def population(self) -> Sequence[str] | None:
        """The keys drawn from, sorted, when this order holds every one of them (not a part of it): the same
        keys, to count things of by runs."""
        return self.keys if len(self.order) == len(self.keys) else None

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1 and stop - start <= self.LIST_SLICE:
                return self._ahead(start, max(start, stop))
            part = self.order[start:stop:step]
            return self._keys_at(part) if len(part) <= self.LIST_SLICE else SampledOrder(self.keys, part)
        return self.keys[int(self.order[position_of(index, len(self), "SampledOrder")])]

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self.order), 1 << 16):
            yield from self._keys_at(self.order[start : start + (1 << 16)])

    def _ahead(self, start: int, stop: int) -> list[str]:
        """The keys at ``start..stop`` of the order, from a window of :data:`WINDOW` keys read at once: tasks
        ask for their keys in turn, and random positions in a packed list cost a block each (60 µs a key)."""
        window = self._window
        if window is None or not window[0] <= start <= stop <= window[0] + len(window[1]):
            ahead = self.order[start : start + max(self.WINDOW, stop - start)]
            window = self._window = (start, self._keys_at(ahead))
        return window[1][start - window[0] : stop - window[0]]

    def _keys_at(self, positions: np.ndarray) -> list[str]:
        """The keys at ``positions``, read in increasing position (a packed list's blocks once each)."""
        out: list = [None] * len(positions)
        for i in np.argsort(positions, kind="stable"):
            out[i] = self.keys[int(positions[i])]
        return out

    def __reduce__(self):
        return SampledOrder, (self.keys, self.order)

    __eq__ = same_keys
    __hash__ = None


def draw(selection: Selection, size: int | None, seed: int) -> Selection:
    """The selection's items in the seeded random order, the first ``size`` of them if given.

    Shard and coverage no longer apply to the result (a sample is not a
    range of the sorted list); listing errors stay with it.
    """
    order = sample_order(selection.keys, selection.source.portable_identities(selection.keys), seed, size)
    return Selection(selection.source, order, errors=selection.errors, notes=selection.notes)


class Sampler(Observer):
    """Between-image sums for the 95% intervals of the mean and std (and the ``--until-ci`` rule).

    ``population`` is the number of images the sample is drawn from;
    ``target`` the half-width at which ``satisfied()`` turns true (unit scale).
    """

    name = "ci95"

    def __init__(self, population: int, target: float | None = None, seed: int = 0):
        self.population, self.target, self.seed = population, target, seed
        self.m = 0
        self.max_value = None
        self.sums: dict[str, list] = {}  # n, n2 (per image) and per channel s, q, s2, q2, sn, qn, qs

    def add(self, moments, max_value) -> None:
        self.max_value = max_value
        if isinstance(moments, ExactMoments):
            n, s, q = moments.n, list(moments.sums), list(moments.squares)
        else:  # float data: n, mean, M2 -> Σx and Σx²
            n = moments.n
            mean = (moments.mean + moments.mean_lo).tolist()
            s = [n * m for m in mean]
            q = [m2 + n * m * m for m2, m in zip(moments.m2.tolist(), mean)]
        if not self.sums:
            zero = [0] * len(s)
            self.sums = {"n": [0], "n2": [0], **{k: list(zero) for k in ("s", "q", "s2", "q2", "sn", "qn", "qs")}}
        self.m += 1
        t = self.sums
        t["n"][0] += n
        t["n2"][0] += n * n
        for c, (sc, qc) in enumerate(zip(s, q)):
            t["s"][c] += sc
            t["q"][c] += qc
            t["s2"][c] += sc * sc
            t["q2"][c] += qc * qc
            t["sn"][c] += sc * n
            t["qn"][c] += qc * n
            t["qs"][c] += qc * sc

    def half_widths(self) -> dict[str, list[float | None]] | None:
        """``{"mean": [...], "std": [...]}`` 95% half-widths in unit scale, or None before two images."""
        if self.m < 2 or not self.sums or self.sums["n"][0] == 0:
            return None
        t = self.sums
        exact = all(isinstance(v, int) for v in t["s"])
        num = Fraction if exact else float
        scale = num(self.max_value or 1)
        m, total, n2 = self.m, num(t["n"][0]), num(t["n2"][0])
        fpc = 1 - Fraction(m, self.population) if exact else 1 - m / self.population
        nbar = total / m
        denominator = m * (m - 1) * nbar * nbar
        quantile = t95(m - 1)
        means, stds = [], []
        for c in range(len(t["s"])):
            s, q = num(t["s"][c]) / scale, num(t["q"][c]) / (scale * scale)
            s2, q2 = num(t["s2"][c]) / scale**2, num(t["q2"][c]) / scale**4
            sn, qn, qs = num(t["sn"][c]) / scale, num(t["qn"][c]) / scale**2, num(t["qs"][c]) / scale**3
            r, qbar = s / total, q / total
            var_r = max(fpc * (s2 - 2 * r * sn + r * r * n2) / denominator, 0)
            a = 2 * r * r - qbar
            z2 = q2 + 4 * r * r * s2 + a * a * n2 - 4 * r * qs + 2 * a * qn - 4 * a * r * sn
            v = qbar - r * r
            var_v = max(fpc * z2 / denominator, 0)
            means.append(_width(quantile, float(var_r)))
            stds.append(_width(quantile, float(var_v) / (4 * float(v))) if v > 0 else None)
        return {"mean": means, "std": stds}

    def satisfied(self) -> bool:
        """True once every channel's half-width for mean and std is at most the target."""
        if self.target is None or self.m < MIN_IMAGES:
            return False
        widths = self.half_widths()
        return widths is not None and all(w is not None and w <= self.target
                                          for w in widths["mean"] + widths["std"])

    def result(self) -> dict:
        widths = self.half_widths()
        channels = len(self.sums.get("s", ()))
        return widths if widths is not None else {"mean": [None] * channels, "std": [None] * channels}

    def settings(self) -> dict:
        # the seed fixes the order: a resume with another one must not take this checkpoint over
        return {"population": self.population, "target": self.target, "seed": self.seed}

    def to_dict(self) -> dict:
        return {**self.settings(), "m": self.m, "max_value": self.max_value, "sums": self.sums}

    @classmethod
    def from_dict(cls, d: dict) -> "Sampler":
        """The state :meth:`to_dict` wrote; ValueError or TypeError for anything else (a zero population,
        a count past it, sums of the wrong keys, lengths or kinds)."""
        population, target, seed = d["population"], d["target"], d["seed"]
        if not _whole(population) or not 1 <= population <= MAX_COUNT:
            raise ValueError("population must be a positive integer")
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                                   or not 0 < target < math.inf):
            raise ValueError("target must be a positive number or null")
        if not _whole(seed) or seed < 0:
            raise ValueError("seed must be a non-negative integer")
        sampler = cls(population, target, seed)
        sampler.m, sampler.max_value = d["m"], d["max_value"]
        if not _whole(sampler.m) or not 0 <= sampler.m <= population:
            raise ValueError("m must be an integer from 0 to the population")
        if sampler.max_value not in (None, 1, 255, 65535) or isinstance(sampler.max_value, bool):
            raise ValueError("max_value must be 1, 255 or 65535")
        sampler.sums = _sums(d["sums"], sampler.m)
        return sampler


SUM_KEYS = ("n", "n2", "s", "q", "s2", "q2", "sn", "qn", "qs")
MAX_COUNT = 2**63  # images, pixels: more than any run counts


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sums(sums, m: int) -> dict[str, list]:
    """Validated between-image sums: empty before the first image, else every key of :data:`SUM_KEYS`,
    ``n``/``n2`` one non-negative integer each, the rest one number per channel, all integers (8/16-bit
    data) or all finite floats, with the sums of non-negative terms not negative."""
    if not isinstance(sums, dict):
        raise TypeError("sums must be an object")
    if m == 0 or not sums:
        if sums or m:
            raise ValueError("sums and m do not agree")
        return {}
    if set(sums) != set(SUM_KEYS) or not all(isinstance(v, list) for v in sums.values()):
        raise ValueError("sums must hold n, n2, s, q, s2, q2, sn, qn, qs lists")
    n, n2 = sums["n"], sums["n2"]
    if len(n) != 1 or len(n2) != 1 or not all(_whole(v) and 0 <= v for v in n + n2) or n[0] > MAX_COUNT:
        raise ValueError("n and n2 must be one non-negative integer each")
    channels = len(sums["s"])
    if channels == 0 or any(len(sums[k]) != channels for k in SUM_KEYS[2:]):
        raise ValueError("the per-channel sums must have one value per channel")
    values = [v for k in SUM_KEYS[2:] for v in sums[k]]
    exact = all(_whole(v) for v in values)
    if not exact and not all(isinstance(v, float) and math.isfinite(v) for v in values):
        raise ValueError("the sums must be all integers or all finite floats")
    if any(v < 0 for k in ("s2", "q2") for v in sums[k]) or (exact and any(v < 0 for v in sums["q"])):
        raise ValueError("sums of squares cannot be negative")
    # m·Σx² >= (Σx)² >= Σx² for non-negative terms (Cauchy-Schwarz): exact integers must keep it
    pairs = [(n[0], n2[0])] + ([*zip(sums["q"], sums["q2"])] if exact else [])
    if not all(m * square >= total * total >= square for total, square in pairs) or (
            exact and not all(m * square >= total * total for total, square in zip(sums["s"], sums["s2"]))):
        raise ValueError("the sums and sums of squares do not agree")
    return {k: list(v) for k, v in sums.items()}
