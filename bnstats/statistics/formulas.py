"""The formulas, once: Welford/Chan's running update, exact integer moments, value scales.

The statistics package is the core of bnstats. It is pure numpy (no I/O, no Pillow) and
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
* here: :func:`chan_merge` and :func:`exact_mean_var`, the one
  implementation of the formulas above, and the layout constants;
* ``states``: :class:`HistogramState` (exact, integer data) and
  :class:`MomentState` (float data), the two kinds of state, each with its own
  update, merge, answer and JSON form; :class:`ExactMoments` (n, Σx, Σx² as
  Python ints) and :class:`MomentState` are also the compact per-image
  summaries that order-dependent observers (``bnstats.observers.base``) receive;
* ``base``: :class:`Statistic`, the protocol every statistic of a run follows
  (``add_image`` / ``merge`` / ``report`` / ``to_dict`` / ``from_dict``, the
  chunk/combine/aggregate triple), made by name from ``bnstats.registry``;
* ``running``: :class:`RunningStats` (mean, std, var, min, max), the
  statistic every run has; ``counting`` and ``layout`` how it reads pixels;
* ``percentiles``: the median and ``--percentiles``, read exactly off the
  histogram (numpy's default ``method="linear"`` rule, in rationals, rounded once);
* ``validate``: the checks of every state read back from JSON.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

__all__ = [
    "HISTOGRAM", "MOMENTS", "LEVELS", "STAT_KEYS", "LayoutError", "integer_levels", "integer_offset",
    "describe_layout", "chan_merge", "two_sum", "exact_mean_var", "histogram_sums", "to_unit",
    "rounded", "exact_sqrt",
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
    if kind == "scaled":
        return f"{channels}-channel scaled integer (slope and intercept)"
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
    mean, error = two_sum(mean_a, step)
    return n, mean, lo_a + error, m2_a + m2_b + delta * delta * (n_a * n_b / n)


def two_sum(a, b):
    """``a + b`` as ``(s, e)`` with ``s + e`` exact (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def exact_mean_var(n: int, s: int, q: int) -> tuple[Fraction, Fraction]:
    """Mean and population variance of values with count n, Σx = s and Σx² = q, exactly."""
    return Fraction(s, n), Fraction(n * q - s * s, n * n)


def histogram_sums(counts: np.ndarray) -> tuple[list[int], list[int], list[int]]:
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


def to_unit(value, scale, power: int) -> float:
    """value / scale**power, rounded once (exact for Fractions and ints)."""
    if isinstance(value, (Fraction, int)):
        return rounded(Fraction(value) / scale**power)
    return float(value) / scale**power


def exact_sqrt(value) -> float:
    """The square root of an exact non-negative number (a variance), as a float: ``math.sqrt`` of it rounded,
    but where that float is 0 or subnormal (values of 1e-300) from its integer square root (a variance of
    1e-600 is 0.0 as a float, its root 1e-300 is not)."""
    near = rounded(value)
    if near >= 2.0**-1000 or value <= 0:
        return math.sqrt(near)
    p, q = Fraction(value).numerator, Fraction(value).denominator
    k = max(0, (q.bit_length() - p.bit_length() + 130) // 2)  # p·4**k / q of ~130 bits: ~65 bits of root
    return rounded(Fraction(math.isqrt((p << 2 * k) // q), 1 << k))


def rounded(value) -> float:
    """An exact number (Fraction, int) as the nearest float; ±inf past float64's range, where ``float()`` raises
    OverflowError (scaled integers whose slope is 1e300): the report then refuses it in one line, as it does
    float data that overflows."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf

