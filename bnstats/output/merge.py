"""Merging results exactly: :func:`merge_reports`, and which items the parts cover.

Parts of one run (shards) merge to the one-pass result bit for bit; parts
that differ in settings, statistics or layout, hold observers or a sample,
or overlap (:func:`combine_covers`) are refused in one line.
:func:`missing_items` names the gaps of what the merged result covers.
"""

from __future__ import annotations

import os

from ..decoding.options import differences
from ..inputs.digests import combine_digests
from ..jsonio import ReportError
from ..statistics.base import difference
from ..statistics.tally import Tally
from .reading import Report
from .report import build_report

def combine_covers(reports: list[Report]) -> list[dict]:
    """The union of what ``reports`` cover; :class:`ReportError` naming two that overlap.

    Parts of one list (shards of one run) are placed by their item ranges:
    any two that share an item would count it twice. Parts of different
    lists cannot be compared item by item (see the README).
    """
    lists: dict[str, tuple[int, list]] = {}
    for report in reports:
        if report.covers is None:
            raise ReportError(f"{report.source} does not record which items it covers (files.covers), so an "
                              "overlap with the other parts could not be ruled out; recompute it")
        for entry in report.covers:
            count, ranges = lists.setdefault(entry["list"]["digest"], (entry["list"]["count"], []))
            ranges += [(start, stop, report.source) for start, stop in entry["ranges"]]
    covers = []
    for digest, (count, ranges) in sorted(lists.items()):
        ranges.sort()
        union: list[list[int]] = []
        for (start, stop, source), previous in zip(ranges, [None, *ranges]):
            if previous is not None and start < previous[1]:
                raise ReportError(
                    f"{previous[2]} and {source} both count items {start}..{min(stop, previous[1]) - 1} of the "
                    f"same list of {count}: merging them would count those twice")
            if union and union[-1][1] == start:
                union[-1][1] = stop
            else:
                union.append([start, stop])
        covers.append({"list": {"count": count, "digest": digest}, "ranges": union})
    return covers


def missing_items(covers: list[dict]) -> list[str]:
    """``"items a..b of a list of N"`` for each gap in what ``covers`` covers."""
    gaps = []
    for entry in covers:
        count, at = entry["list"]["count"], 0
        for start, stop in [*entry["ranges"], [entry["list"]["count"], None]]:
            if start > at:
                gaps.append(f"items {at}..{start - 1} of a list of {count}")
            at = stop if stop is not None else at
    return gaps


def merge_reports(reports: list[Report]) -> dict:
    """Exactly combine ``compute`` results made with the same settings.

    Refuses results whose settings (mode, preprocessing, ...) or layouts
    (bands, bit depth) differ, results with observers (their order spans the
    whole dataset), and parts that overlap (see :func:`combine_covers`). The
    merged ``files.covers`` says what the result covers; :func:`missing_items`
    lists the gaps.
    """
    if not reports:
        raise ReportError("nothing to merge")
    first = reports[0]
    for report in reports:  # before anything else: a sample's other faults are beside the point
        report.refuse_sample("merged exactly")
    tallies = [r.tally() for r in reports]  # every input must hold the exact state
    for report in reports:
        if report.observers:
            raise ReportError(
                f"{report.source} holds {', '.join(report.observers)} (e.g. --bn-momentum), which follows the "
                "whole dataset in order: such results cannot be merged")
    covers = combine_covers(reports)
    mask = _same_mask(reports)  # before the groups: a mask's groups are its labels
    stack = _same_stack(reports)
    if len({r.grouped for r in reports}) > 1:
        raise ReportError("cannot merge results made with and without --group-by")
    _check_same_statistics(reports, tallies)
    options = first.options()
    merged = Tally(groups={} if first.grouped else None)
    for report, part in zip(reports, tallies):
        other = report.options()
        if other != options:
            diff = ", ".join(differences(options.to_dict(), other.to_dict()))
            raise ReportError(f"{report.source} was made with different settings than {first.source} ({diff})")
        try:
            merged.merge(part)
        except ValueError as exc:  # LayoutError
            raise ReportError(f"cannot merge {report.source} with {first.source}: {exc}") from None
    files = {**combine_digests([r.files for r in reports]), "covers": covers, **stack}
    return build_report(merged, options, files, mask=mask)


def _same_stack(reports: list[Report]) -> dict:
    """``{"stack": "volume"}`` if every part counted TIFF stacks as volumes, ``{}`` if none did; ReportError
    if they differ: the items of one are the pages of the other, and merge could not see them overlap."""
    stacks = [(r.files or {}).get("stack") for r in reports]
    for report, stack in zip(reports, stacks):
        if stack != stacks[0]:
            shown = {None: "--stack pages"}.get
            raise ReportError(f"cannot merge {report.source} with {reports[0].source}: made with "
                              f"{shown(stack, '--stack ' + str(stack))} and {shown(stacks[0], '--stack ' + str(stacks[0]))} "
                              "(a TIFF stack counted as one item and page by page: its pixels would count twice)")
    return {"stack": stacks[0]} if stacks[0] is not None else {}


def _same_mask(reports: list[Report]) -> str | None:
    """The ``--mask`` all results were made with (None: without masks); ReportError if they differ."""
    masks = []
    for report in reports:
        foreground = report.data.get("foreground")
        masks.append(foreground.get("mask") if isinstance(foreground, dict) else None)
    if any(not _same_pattern(mask, masks[0]) for mask in masks):
        other = next(r for r, m in zip(reports, masks) if not _same_pattern(m, masks[0]))
        if None in (masks[0], masks[reports.index(other)]):
            raise ReportError(f"cannot merge {other.source} with {reports[0].source}: made with and without --mask")
        raise ReportError(f"cannot merge {other.source} with {reports[0].source}: made with different --mask "
                          f"({masks[0]!r} vs {masks[reports.index(other)]!r})")
    return masks[0]


def _check_same_statistics(reports: list[Report], tallies: list[Tally]) -> None:
    """Refuse results holding different statistics, or the same ones built with different settings."""
    for report, tally in zip(reports[1:], tallies[1:]):
        why = difference(tallies[0].extra, tally.extra, reports[0].source, report.source)
        if why:
            raise ReportError(f"cannot merge results {why}")


def _same_pattern(one: str | None, other: str | None) -> bool:
    """Whether two ``--mask`` patterns name the same masks, as images' identities are portable: the same
    pattern, or one spelled from another folder (``lab/{name}.png`` and ``/data/lab/{name}.png``: the shorter
    is the end of the longer, part for part)."""
    if one is None or other is None:
        return one is other
    a, b = (os.path.normpath(p).split(os.sep) for p in (one, other))
    short, long = sorted((a, b), key=len)
    return long[len(long) - len(short):] == short