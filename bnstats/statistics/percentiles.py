"""Exact percentiles of integer data: the ``percentiles`` statistic, how percentiles are written, the median.

:func:`normalize_percentile` turns what the user wrote into the report key
(``"50.0"`` -> ``"50"``); :func:`order_statistics` gives the report fields
(``median``, ``percentiles``, the same under ``raw``) of a
:class:`~bnstats.statistics.running.RunningStats`, read exactly off its
histogram (:meth:`~bnstats.statistics.states.HistogramState.percentiles`:
numpy's default ``method="linear"`` rule in rationals, rounded once);
:class:`Percentiles` is the statistic ``--percentiles`` builds.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

from .base import Statistic
from .formulas import MOMENTS, LayoutError, rounded, to_unit

__all__ = ["normalize_percentile", "order_statistics", "percentile_keys", "Percentiles"]

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
    raw = {key: [None if v is None else rounded(v) for v in values] for key, values in exact.items()}
    unit = {key: [None if v is None else to_unit(v, scale, 1) for v in values] for key, values in exact.items()}
    out = {"median": unit["50"], "raw": {"median": raw["50"]}}
    if percentiles:
        out["percentiles"] = {key: unit[key] for key in percentiles}
        out["raw"]["percentiles"] = {key: raw[key] for key in percentiles}
    return out


def percentile_keys(ps) -> tuple[str, ...]:
    """Percentiles as given (numbers or text) -> their report keys, in order; ValueError for one given twice."""
    keys = tuple(normalize_percentile(str(p)) for p in ps)
    if len(set(keys)) != len(keys):
        raise ValueError("a percentile is given twice")
    return keys


class Percentiles(Statistic):
    """``--percentiles``: exact percentiles per channel of integer data, overall and per class.

    Built with its one setting, ``Percentiles(ps=["1", "99"])``. It keeps no
    state of its own: its numbers are read off the exact histogram the run's
    ``stats`` keeps (a *derived* statistic, see :class:`~bnstats.statistics.base.Statistic`),
    so it costs nothing per image but a check that the image is integer
    data (float data has no exact percentiles: the run stops at the first
    float image). Its report keys, ``percentiles`` and ``raw.percentiles``,
    also record its settings.
    """

    name = "percentiles"
    derived = True
    option = "--percentiles"

    def __init__(self, ps: Sequence = ()):
        self.ps = percentile_keys(ps)

    def settings(self) -> dict:
        return {"ps": list(self.ps)}

    def describe(self) -> str:
        return ", ".join(self.ps)

    def run_settings(self) -> dict:
        return {"percentiles": list(self.ps)}  # how runs recorded --percentiles before settings existed

    def add_image(self, image) -> None:
        if image.raw is None and image.scale is None and image.histogram() is None:  # fail at the first float image
            raise LayoutError("percentiles are exact only for integer (8- or 16-bit) data, and this image is "
                              "float: drop --percentiles")

    def merge(self, other: "Percentiles") -> "Percentiles":
        return self

    def fields(self, stats) -> dict:
        """The report keys for ``stats`` (a RunningStats: the run's, or a class's); ``raw`` ones nested."""
        order = order_statistics(stats, self.ps)
        order.pop("median", None)
        order.get("raw", {}).pop("median", None)
        return order

    def fields_written(self, data: dict) -> dict:
        fields = {"percentiles": data["percentiles"]}
        raw = data.get("raw")
        if isinstance(raw, dict) and "percentiles" in raw:  # checked by from_report: the same percentiles
            fields["raw.percentiles"] = raw["percentiles"]
        return fields

    def to_dict(self) -> dict:
        return {}

    @classmethod
    def from_dict(cls, d: dict) -> "Percentiles":
        settings = d.get("settings", {})
        ps = settings.get("ps", []) if isinstance(settings, dict) else None
        if not isinstance(ps, list) or not all(isinstance(p, str) for p in ps):
            raise ValueError("percentiles settings must be {\"ps\": [percentiles]}")
        return cls(ps)

    @classmethod
    def from_report(cls, data: dict) -> "Percentiles | None":
        """The statistic a report's ``percentiles`` key records (None without one); ValueError if malformed."""
        if "percentiles" not in data:
            return None
        table = data["percentiles"]
        if not isinstance(table, dict) or not table:
            raise ValueError("must be an object of percentile -> per-channel values")
        for key in table:
            if normalize_percentile(key) != key:
                raise ValueError(f"{key!r} is not written as bnstats writes it")
        raw = data.get("raw")
        if isinstance(raw, dict) and "percentiles" in raw and (
                not isinstance(raw["percentiles"], dict) or set(raw["percentiles"]) != set(table)):
            raise ValueError("raw.percentiles must hold the same percentiles as percentiles")
        return cls(list(table))
