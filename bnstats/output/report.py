"""The JSON written by ``compute`` and ``merge``: :func:`build_report`, and its layout (``SCHEMA``).

A report holds the statistics (unit scale at the top level, the data's own
units under ``raw``), what shaped them (``settings``), which items it covers
(``files``), what observers saw (e.g. ``bn``) and the exact mergeable state
(``state``, other statistics under ``statistics``, per class under
``groups``) from which ``merge`` and ``--checkpoint`` rebuild a
:class:`~bnstats.statistics.tally.Tally`. ``schema`` numbers this layout; the keys are
documented in ``docs/json.md``.

Reading a result back is :mod:`bnstats.output.reading` (:class:`~bnstats.output.reading.Report`),
the state alone (checkpoints) :mod:`bnstats.output.state`, merging
:mod:`bnstats.output.merge`.
"""

from __future__ import annotations

from .. import __version__
from ..decoding.options import DecodeOptions
from ..inputs.digests import files_digest
from ..statistics.base import state_dict
from ..statistics.formulas import STAT_KEYS
from ..statistics.running import RunningStats
from ..statistics.tally import Tally

SCHEMA = 1

__all__ = ["build_report", "SCHEMA", "floats_like_8_bits"]


# -- writing ------------------------------------------------------------------------------------


def build_report(tally: Tally, options: DecodeOptions, files=None, observers=(), mask: str | None = None) -> dict:
    """The ``compute`` JSON for a finished tally.

    ``files``, the identities of the items counted (see
    :meth:`~bnstats.inputs.base.Source.portable_identity`) or their digest, adds
    a ``files`` key (see :func:`files_digest`); each observer adds its result under its
    name. Integer data also gets its exact ``median`` and the keys of the
    derived statistics (``percentiles``), overall and per class; the other
    statistics' keys follow the counts, their states go under ``statistics``.
    With masks (``mask``: the ``--mask`` pattern) the groups are labels and
    ``foreground`` holds the pixels labelled above 0, with the pattern.
    """
    summary = tally.stats.report()
    report = {key: summary[key] for key in STAT_KEYS}
    derived = [s for _, s in sorted(tally.extra.items()) if s.derived]
    _with_order_statistics(report, summary["raw"], tally.stats, derived)
    report["channels"] = list(tally.bands or ())
    report.update(images=summary["images"], pixels=summary["pixels"], max_value=summary["max_value"])
    report["skipped"] = sorted(tally.skipped, key=lambda s: s["path"])  # the same for any merge order
    report["raw"] = summary["raw"]
    for statistic in tally.extra.values():
        if statistic.derived:
            continue
        fields = statistic.report()
        report["raw"].update(fields.pop("raw", {}))
        report.update(fields)
    report["settings"] = options.to_dict()
    if files is not None:
        report["files"] = files if isinstance(files, dict) else files_digest(files)
    report["bnstats_version"] = __version__
    report["schema"] = SCHEMA
    for observer in observers:
        result = observer.result()
        if result is not None:  # a trace is its own file
            report[observer.name] = result
    if tally.groups is not None:
        report["groups"] = {
            name: {**group_fields(state, derived), "state": state.to_dict()}
            for name, state in sorted(tally.groups.items())
        }
    if tally.foreground is not None:
        report["foreground"] = {"mask": mask, **group_fields(tally.foreground, derived),
                                "state": tally.foreground.to_dict()}
    report["state"] = tally.stats.to_dict()
    stored = {name: state_dict(s) for name, s in sorted(tally.extra.items()) if not s.derived}
    if stored:
        report["statistics"] = stored
    return report


def _with_order_statistics(fields: dict, raw: dict, stats: RunningStats, derived) -> None:
    """Add the median and the derived statistics' keys of ``stats`` to ``fields`` (raw ones to ``raw``)."""
    for order in (stats.order_statistics(), *(statistic.fields(stats) for statistic in derived)):
        raw.update(order.pop("raw", {}))
        fields.update(order)


def order_fields(stats: RunningStats, derived) -> dict:
    """The median and the derived statistics' keys of ``stats`` as a report writes them (raw ones under
    ``raw``): what a reader checks the written ones against."""
    fields, raw = {}, {}
    _with_order_statistics(fields, raw, stats, derived)
    return {**fields, "raw": raw}


def group_fields(stats: RunningStats, derived) -> dict:
    """A class's report fields, with its median and derived statistics."""
    fields = stats.report()
    _with_order_statistics(fields, fields["raw"], stats, derived)
    return fields


# -- what a report's numbers may be mistaken for ---------------------------------------------------------


def floats_like_8_bits(report: dict) -> str | None:
    """A note where float data lies in 0..255 and reaches past :data:`EIGHT_BIT_REACH` — most likely 8-bit
    pixels made float without scaling (``.float()``, ``astype(np.float32)``) — else None. Floats are counted
    as they are (``max_value`` 1), so the top level's "unit scale" is then 0..255: not what ``Normalize``
    after ``ToTensor`` (0..1) wants. Centred data (below 0), 0..1 floats and small values get no note."""
    state = report.get("state") or {}
    if state.get("kind") != "moments":
        return None
    low, high = report["raw"]["min"], report["raw"]["max"]
    if None in low or None in high or not (min(low) >= 0 and max(high) <= 255 and max(high) > EIGHT_BIT_REACH):
        return None
    return (f"the float pixels lie in 0..255 (largest per channel: {high}): floats are counted as they are, not "
            "divided by 255, so mean and std are in their units, not unit scale; if they are 8-bit pixels made "
            "float (.float(), astype(float32), ToDtype without scale=True) and training uses ToTensor's 0..1, "
            "give those, or the uint8 pixels themselves to count them exactly")


EIGHT_BIT_REACH = 16  # 8-bit images reach past this somewhere; 0..1 floats and small measurements do not
