"""The channel covariance matrix (``--covariance``): for PCA lighting augmentation.

AlexNet-style "PCA lighting" (Krizhevsky et al. 2012) shifts each image's
colours along the principal components of the pixel distribution: it needs
the C×C covariance of the channels over the whole dataset, and its
eigenvalues and eigenvectors. :class:`Covariance` is a
:class:`~bnstats.statistics.base.Statistic` (name ``"covariance"``) computing it as
bnstats computes everything else: streaming, mergeable, exact where it can be.

*Integer pixels* (8/16-bit, signed or not) keep exact cross-moments as Python
ints: the count n, Σx (C) and Σxxᵀ (C×C). Then

    cov = (n·Σxxᵀ − Σx·Σxᵀ) / n²

is an exact rational, rounded once: its diagonal is bit for bit the ``var``
of the histogram path, and merging is integer addition, so results are
bit-identical for any worker count, shard split or merge order. Per image,
Σxxᵀ is computed in float64 with BLAS (XᵀX) over blocks of rows small enough
that every partial sum is an integer below 2**53, hence exact, whatever
order BLAS adds in.

*Float pixels* keep (n, mean vector, co-moment matrix M = Σ(x−μ)(x−μ)ᵀ) in
float64: per image a corrected two-pass product, merged with the
multivariate form of Chan et al.'s pairwise formula

    δ = μB − μA,   μ = μA + δ·nB/n,   M = MA + MB + δδᵀ·nA·nB/n.

Population covariance (ddof 0), like the rest of bnstats.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .base import Statistic
from .formulas import LEVELS, LayoutError, integer_levels, integer_offset

__all__ = ["Covariance"]

EXACT = "exact"
FLOAT = "float"
_EXACT_FLOAT = 2**53  # float64 holds every integer below this exactly
_BLOCK_ROWS = 1 << 20  # at most this many rows converted to float64 at once (memory)
_MAX_SHIFT = 2200  # a float's denominator is at most 2**1074: an exact state's grid is never finer


def _exact_sums(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σx (C,) and Σxxᵀ (C, C) of an ``(n, C)`` 8/16-bit array, as object arrays of Python ints.

    A block of r rows has |partial sums| ≤ r·max|x|² < 2**53, so its float64
    sums and products are exact whatever order BLAS adds in; blocks are
    added as integers.
    """
    info = np.iinfo(flat.dtype)
    largest = max(-int(info.min), int(info.max))
    rows = max(1, min(_BLOCK_ROWS, (_EXACT_FLOAT - 1) // (largest * largest)))
    channels = flat.shape[1]
    sums = np.zeros(channels, dtype=object)
    products = np.zeros((channels, channels), dtype=object)
    for start in range(0, flat.shape[0], rows):
        block = np.ascontiguousarray(flat[start : start + rows].T, dtype=np.float64)  # (C, r): one row per channel
        sums += block.sum(axis=1).astype(np.int64).astype(object)
        products += _gram(block).astype(np.int64).astype(object)
    return sums, products


def _gram(block: np.ndarray) -> np.ndarray:
    """``block @ block.T`` of a ``(C, r)`` float64 block.

    For a few channels, one BLAS dot product per pair of rows: a matrix
    product with a tiny C×C result and a long inner dimension is several
    times slower (about 0.5 ms vs 0.06 ms for a 400×350 RGB image).
    """
    channels = block.shape[0]
    if channels > 8:
        return block @ block.T
    out = np.empty((channels, channels))
    for i in range(channels):
        for j in range(i, channels):
            out[i, j] = out[j, i] = block[i] @ block[j]
    return out


def _float_moments(flat: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, mean, M)`` of an ``(n, C)`` array in float64, by the corrected two-pass algorithm."""
    n = flat.shape[0]
    rows = np.ascontiguousarray(flat.T, dtype=np.float64)
    mean = rows.mean(axis=1)
    deviations = rows - mean[:, None]
    residue = deviations.sum(axis=1)  # rounding left in the mean: take its share out, as stats.MomentState does
    comoment = _gram(deviations) - np.outer(residue, residue) / n
    return n, mean + residue / n, comoment


class Covariance(Statistic):
    """The C×C channel covariance, its eigenvalues and eigenvectors (see the module docstring).

    ``report()`` gives ``covariance`` (unit scale: integer data divided by
    its ``max_value`` squared), ``eigenvalues`` (descending), ``eigenvectors``
    (``eigenvectors[i][j]`` is component i of vector j; each vector's
    largest-magnitude component is positive) and ``raw.covariance``.
    """

    name = "covariance"

    def __init__(self):
        self.kind: str | None = None  # EXACT, FLOAT or None before any data
        self.levels = 0  # exact: 256 or 65536
        self.offset = 0  # exact: -128 or -32768 for signed data
        #: exact: sums are integers over 2**shift, products over 2**(2·shift) (scaled integers: values
        #: slope · q + inter, dyadic rationals); ``levels`` is then 0 and the data in its own units
        self.shift = 0
        self.n = 0
        self.sums = self.products = None  # exact: object arrays of Python ints
        self.mean = self.comoment = None  # float: float64 arrays

    # -- shape of the data -------------------------------------------------

    @property
    def channels(self) -> int | None:
        source = self.sums if self.kind == EXACT else self.mean
        return None if source is None else len(source)

    @property
    def scale(self) -> int:
        """The unit-scale divisor, as for the other statistics: 255, 65535, or 1 (signed and float data)."""
        return self.levels - 1 if self.kind == EXACT and self.levels and not self.offset else 1

    def _layout(self) -> tuple:
        return (self.kind, self.channels, self.levels, self.offset)

    def _start(self, kind: str, channels: int, levels: int = 0, offset: int = 0) -> None:
        """Fix the layout on first data, or check new data against it. As RunningStats does, data in its own
        units combines: signed integers of any width and scaled ones are one scaled state (``levels`` 0); with
        float data, float moments. Unsigned integers (unit scale) combine with nothing else."""
        if self.kind is None:
            self.kind, self.levels, self.offset = kind, levels, offset
            if kind == EXACT:
                self.sums = np.zeros(channels, dtype=object)  # Python int zeros
                self.products = np.zeros((channels, channels), dtype=object)
            else:
                self.mean, self.comoment = np.zeros(channels), np.zeros((channels, channels))
        elif self._layout() == (kind, channels, levels, offset):
            return
        elif channels == self.channels and kind == EXACT == self.kind and _own_units(levels, offset) and \
                _own_units(self.levels, self.offset):
            self.levels = self.offset = 0  # signed integers (any width) with scaled ones: scaled (own units)
        elif channels == self.channels and {kind, self.kind} == {EXACT, FLOAT} and \
                _own_units(*((levels, offset) if kind == EXACT else (self.levels, self.offset))):
            if self.kind == EXACT:  # beside float data (a volume scaled slice by slice): float, rounded once
                self.kind, n, mean, comoment = FLOAT, *self._as_float(self.n, self.sums, self.products, self.shift)
                self.levels = self.offset = self.shift = 0
                self.sums = self.products = None
                self.n, self.mean, self.comoment = n, mean, comoment
        else:
            raise LayoutError(f"cannot combine the covariance of {_describe((kind, channels, levels, offset))} "
                              f"data with that of {_describe(self._layout())} data")

    # -- chunk, combine ------------------------------------------------------

    def add_image(self, image) -> None:
        """Count one decoded image's pixels (its ``values()``, an ``(n, C)`` array)."""
        if getattr(image, "scale", None) is not None:  # stored integers q of values slope · q + inter: exact
            self._add_scaled(image.stored_values(), *image.scale)
            return
        flat = image.values()
        levels = integer_levels(flat.dtype)
        if levels is not None:
            self._start(EXACT, flat.shape[1], levels, integer_offset(flat.dtype))
            self._add_exact(flat.shape[0], *_exact_sums(flat))
        else:
            self._start(FLOAT, flat.shape[1])
            if flat.shape[0]:
                self._merge_float(*_float_moments(flat))

    def _add_scaled(self, stored: np.ndarray, slope: float, inter: float) -> None:
        """Count an ``(n, C)`` block of stored integers whose values are ``slope · q + inter``, exactly: with
        a = A/2**e and b = B/2**e, Σv·2**e = A·Σq + B·n and Σvᵢvⱼ·2**2e = A²·Σqᵢqⱼ + AB·(Σqᵢ + Σqⱼ) + B²·n."""
        self._start(EXACT, stored.shape[1], 0, 0)
        a, b = Fraction(slope), Fraction(inter)
        shift = max(a.denominator.bit_length(), b.denominator.bit_length()) - 1  # denominators: powers of two
        big, small = int(a * 2**shift), int(b * 2**shift)
        sq, pq = _exact_sums(stored)
        n = stored.shape[0]
        sums = sq * big + small * n
        cross = np.add.outer(sq, sq) * (big * small)
        self._add_exact(n, sums, pq * (big * big) + cross + small * small * n, shift)

    @staticmethod
    def _as_float(n: int, sums, products, shift: int) -> tuple:
        """Exact sums over 2**shift as float ``(n, mean, comoment)``, each rounded once."""
        if n == 0:
            return 0, np.zeros(len(sums)), np.zeros((len(sums), len(sums)))
        s, p, scale = sums.tolist(), products.tolist(), 4**shift
        mean = np.array([float(Fraction(v, n * 2**shift)) for v in s])
        comoment = np.array([[float(Fraction(n * p[i][j] - s[i] * s[j], n * scale)) for j in range(len(s))]
                             for i in range(len(s))])
        return n, mean, comoment

    def _add_exact(self, n: int, sums: np.ndarray, products: np.ndarray, shift: int = 0) -> None:
        """Add exact sums over 2**shift (products over 2**(2·shift)), on the finer of the two grids; as float
        moments where this state is float."""
        if self.kind == FLOAT:
            if n:
                self._merge_float(*self._as_float(n, sums, products, shift))
            return
        if shift > self.shift:
            self.sums, self.products = self.sums * 2 ** (shift - self.shift), self.products * 4 ** (shift - self.shift)
            self.shift = shift
        elif shift < self.shift:
            sums, products = sums * 2 ** (self.shift - shift), products * 4 ** (self.shift - shift)
        self.n += n
        self.sums = self.sums + sums
        self.products = self.products + products

    def _merge_float(self, n: int, mean: np.ndarray, comoment: np.ndarray) -> None:
        """Chan et al.'s pairwise merge, multivariate."""
        if self.n == 0:
            self.n, self.mean, self.comoment = n, mean.copy(), comoment.copy()
            return
        total = self.n + n
        delta = mean - self.mean
        self.comoment = self.comoment + comoment + np.outer(delta, delta) * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total

    def merge(self, other: "Covariance") -> "Covariance":
        """Fold ``other`` in (in place; ``other`` is untouched and shares nothing); returns self."""
        if other.kind is None:
            return self
        self._start(other.kind, other.channels, other.levels, other.offset)
        if other.kind == EXACT:
            self._add_exact(other.n, other.sums, other.products, other.shift)
        elif other.n:  # (an exact self beside it was made float by _start)
            self._merge_float(other.n, other.mean, other.comoment)
        return self

    # -- aggregate ------------------------------------------------------------

    def raw_covariance(self) -> list[list[float]]:
        """The population covariance in the data's own units (exact for integer data, rounded once)."""
        return self._covariance(1)

    def _covariance(self, scale: int) -> list[list[float]]:
        if self.n == 0:
            return []
        if self.kind == FLOAT:
            return (self.comoment / self.n / (scale * scale)).tolist()
        n, s, p = self.n, self.sums.tolist(), self.products.tolist()
        divisor = n * n * scale * scale * 4**self.shift
        return [[float(Fraction(n * p[i][j] - s[i] * s[j], divisor)) for j in range(len(s))] for i in range(len(s))]

    def report(self) -> dict:
        """``covariance``, ``eigenvalues``, ``eigenvectors`` (unit scale) and ``raw.covariance``."""
        unit = self._covariance(self.scale)
        if not unit:
            return {"covariance": [], "eigenvalues": [], "eigenvectors": [], "raw": {"covariance": []}}
        if not np.isfinite(unit).all():  # float data past float64: LAPACK would raise; NaNs make the report
            nan = [[math.nan] * len(unit) for _ in unit]  # refuse in one line, naming the covariance
            return {"covariance": unit, "eigenvalues": nan[0], "eigenvectors": nan,
                    "raw": {"covariance": self.raw_covariance()}}
        values, vectors = np.linalg.eigh(np.array(unit))
        order = np.argsort(values, kind="stable")[::-1]
        values, vectors = values[order], vectors[:, order]
        # an eigenvector's sign is arbitrary: make its largest-magnitude component positive
        largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
        vectors = vectors * np.where(largest < 0, -1.0, 1.0)
        return {"covariance": unit, "eigenvalues": values.tolist(), "eigenvectors": (vectors + 0.0).tolist(),
                "raw": {"covariance": self.raw_covariance()}}

    # -- (de)serialization ----------------------------------------------------

    def to_dict(self) -> dict:
        """The exact state: integers as JSON integers, floats that read back exactly."""
        if self.kind is None:
            return {"kind": None}
        if self.kind == EXACT:
            d = {"kind": EXACT, "levels": self.levels, "n": self.n, "sums": self.sums.tolist(),
                 "products": self.products.tolist()}
            if self.offset:
                d["offset"] = self.offset
            if self.shift:
                d["shift"] = self.shift
            return d
        return {"kind": FLOAT, "n": self.n, "mean": self.mean.tolist(), "comoment": self.comoment.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Covariance":
        """Rebuild a state written by :meth:`to_dict`; ValueError names what is wrong."""
        out = cls()
        kind = d.get("kind")
        if kind is None:
            return out
        if kind not in (EXACT, FLOAT):
            raise ValueError(f"unknown covariance kind {kind!r}")
        n = d["n"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("covariance n must be a non-negative integer")
        if kind == EXACT:
            levels, offset, shift = d["levels"], d.get("offset", 0), d.get("shift", 0)
            if levels not in (0, *LEVELS) or isinstance(levels, bool) or offset not in (0, -levels // 2) \
                    or isinstance(offset, bool):
                raise ValueError("covariance levels must be 256 or 65536 (0: scaled), offset 0 or -levels/2")
            if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift <= _MAX_SHIFT or \
                    (shift and levels):
                raise ValueError(f"covariance shift must be an integer in 0..{_MAX_SHIFT}, of scaled data only")
            sums = _vector(d["sums"], int)
            products = _matrix(d["products"], len(sums), int)
            out._start(EXACT, len(sums), levels, offset)
            out.sums, out.products = np.array(sums, dtype=object), np.array(products, dtype=object)
            out.shift = shift
        else:
            mean = _vector(d["mean"], float)
            comoment = _matrix(d["comoment"], len(mean), float)
            out._start(FLOAT, len(mean))
            out.mean, out.comoment = np.array(mean, dtype=np.float64), np.array(comoment, dtype=np.float64)
        out.n = n
        return out


def _own_units(levels: int, offset: int) -> bool:
    """Exact data reported in its own units: scaled integers (levels 0) or signed ones."""
    return levels == 0 or offset != 0


def _describe(layout: tuple) -> str:
    kind, channels, levels, offset = layout
    if kind == FLOAT:
        return f"{channels}-channel float"
    if not levels:
        return f"{channels}-channel scaled integer"
    return f"{channels}-channel {'8' if levels == 256 else '16'}-bit{' signed' if offset else ''}"


def _number(value, kind) -> bool:
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and bool(np.isfinite(value))


def _vector(values, kind) -> list:
    if not isinstance(values, list) or not 1 <= len(values) <= 4096 or not all(_number(v, kind) for v in values):
        raise ValueError(f"covariance vectors must be lists of {'integers' if kind is int else 'finite numbers'}")
    return [kind(v) for v in values]


def _matrix(rows, size: int, kind) -> list[list]:
    if not isinstance(rows, list) or len(rows) != size:
        raise ValueError(f"covariance matrices must be {size}×{size}")
    out = [_vector(row, kind) for row in rows]
    if any(len(row) != size for row in out):
        raise ValueError(f"covariance matrices must be {size}×{size}")
    return out

