"""Exact percentiles of integer data: how ``--percentiles`` are written, and the median and percentiles of a histogram.

:func:`normalize_percentile` turns what the user wrote into the report key
(``"50.0"`` -> ``"50"``); :func:`order_statistics` gives the report fields
(``median``, ``percentiles``, the same under ``raw``) of a
:class:`~bnstats.statistics.running.RunningStats`, read exactly off its
histogram (:meth:`~bnstats.statistics.states.HistogramState.percentiles`:
numpy's default ``method="linear"`` rule in rationals, rounded once).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

from .formulas import MOMENTS, LayoutError, to_unit

__all__ = ["normalize_percentile", "order_statistics"]

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


def order_statistics(stats, percentiles: Sequence[str] = ()) -> dict:
    """``median`` and, if asked, ``percentiles`` (keys as :func:`normalize_percentile` writes them).

    Report fields like :meth:`RunningStats.report`'s (unit scale, and the same under
    ``"raw"``), exact from the histogram (see
    :meth:`HistogramState.percentiles`). Float data has no exact order
    statistics: no median, and asking for percentiles is a
    :class:`LayoutError`. A state that counted nothing has empty lists.
    """
    if stats.kind == MOMENTS:
        if percentiles:
            raise LayoutError("percentiles are exact only for integer (8- or 16-bit) data, and this data is "
                              "float: drop --percentiles")
        return {}
    if stats.state is None:
        if not percentiles:
            return {}
        empty = {key: [] for key in percentiles}
        return {"percentiles": empty, "raw": {"percentiles": dict(empty)}}
    keys = ["50", *(key for key in percentiles if key != "50")]
    exact = dict(zip(keys, stats.state.percentiles([Fraction(key) for key in keys])))
    scale = stats.max_value
    raw = {key: [None if v is None else float(v) for v in values] for key, values in exact.items()}
    unit = {key: [None if v is None else to_unit(v, scale, 1) for v in values] for key, values in exact.items()}
    out = {"median": unit["50"], "raw": {"median": raw["50"]}}
    if percentiles:
        out["percentiles"] = {key: unit[key] for key in percentiles}
        out["raw"]["percentiles"] = {key: raw[key] for key in percentiles}
    return out
