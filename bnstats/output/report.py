"""The JSON written by ``compute`` and ``merge``, and the one reader of it.

A report holds the statistics (unit scale at the top level, the data's own
units under ``raw``), what shaped them (``settings``), which items it covers
(``files``), what observers saw (e.g. ``bn``) and the exact mergeable state
(``state``, other statistics under ``statistics``, per class under
``groups``) from which ``merge`` and ``--checkpoint`` rebuild a
:class:`~bnstats.statistics.tally.Tally`. ``schema`` numbers this layout; the keys are
documented in ``docs/json.md``.

:class:`Report` is the typed, validated view every command that reads a
result uses (``merge``, ``export``, checkpoints): anything bnstats would not
have written is refused in one line naming the file and the field.
"""

from __future__ import annotations

import math
import re
import sys

from .. import __version__, jsonio
from ..statistics.tally import Tally
from ..decoding.decode import DecodeOptions, differences
from ..jsonio import ReportError, loads, read_json
from ..observers.base import registered
from ..inputs.digests import combine_digests, files_digest
from .. import registry
from ..statistics.base import difference, restore, state_dict
from ..statistics.formulas import STAT_KEYS
from ..statistics.running import RunningStats

SCHEMA = 1
MAX_COUNT = 2**63  # images, pixels, item counts: more than any real run counts (a larger one is damage)

__all__ = ["Report", "ReportError", "build_report", "merge_reports", "SCHEMA"]


# -- which items a result covers -----------------------------------------------------------


# -- writing ------------------------------------------------------------------------------------


def build_report(tally: Tally, options: DecodeOptions, files=None, observers=()) -> dict:
    """The ``compute`` JSON for a finished tally.

    ``files``, the identities of the items counted (see
    :meth:`~bnstats.inputs.base.Source.portable_identity`) or their digest, adds
    a ``files`` key (see :func:`files_digest`); each observer adds its result under its
    name. Integer data also gets its exact ``median`` and the keys of the
    derived statistics (``percentiles``), overall and per class; the other
    statistics' keys follow the counts, their states go under ``statistics``.
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
            name: {**_group_fields(state, derived), "state": state.to_dict()}
            for name, state in sorted(tally.groups.items())
        }
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


def _group_fields(stats: RunningStats, derived) -> dict:
    """A class's report fields, with its median and derived statistics."""
    fields = stats.report()
    _with_order_statistics(fields, fields["raw"], stats, derived)
    return fields


def tally_to_dict(tally: Tally) -> dict:
    """The exact state of a (possibly partial) tally, for checkpoints."""
    d = {
        "channels": None if tally.bands is None else list(tally.bands),
        "skipped": list(tally.skipped),
        "notes": sorted(tally.notes),
        "state": tally.stats.to_dict(),
    }
    if tally.groups is not None:
        d["groups"] = {name: {"state": state.to_dict()} for name, state in sorted(tally.groups.items())}
    if tally.extra:
        d["statistics"] = {name: state_dict(statistic) for name, statistic in sorted(tally.extra.items())}
    return d


def tally_from_dict(d: dict, source: str = "result") -> Tally:
    """Rebuild the exact tally from a report or a :func:`tally_to_dict` dict; ReportError if malformed."""
    field = "state"
    try:
        stats = RunningStats.from_dict(_dict(d["state"]))
        _check_counts(stats)
        field = "channels"
        channels = d["channels"]
        if channels is not None and not (isinstance(channels, list) and all(isinstance(c, str) for c in channels)):
            raise ValueError("must be a list of band names")
        if stats.channels is not None and len(channels or ()) != stats.channels:
            raise ValueError("do not match the state")
        field = "skipped"
        skipped = _skipped(d.get("skipped", []))
        field = "groups"
        groups = d.get("groups")
        if groups is not None:
            groups = {str(k): RunningStats.from_dict(_dict(_dict(v)["state"])) for k, v in _dict(groups).items()}
            for group in groups.values():
                _check_counts(group)
        field = "statistics"
        extra = {}
        for name, state in _dict(d.get("statistics", {})).items():
            extra[name] = restore(name, _dict(state))  # an unknown name: ValueError listing the known ones
        field = "notes"
        notes = d.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError("must be a list of strings")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ReportError(f"{source}: bad {field} ({_why(exc)}): not a bnstats result") from None
    return Tally(stats=stats, bands=tuple(channels) if channels else None, skipped=skipped,
                 groups=groups, notes=set(notes), extra=extra)


def _check_counts(stats: RunningStats) -> None:
    """Refuse a state counting more images or pixels than any run could (2**63): damage, not data."""
    if stats.images > MAX_COUNT or (stats.kind is not None and stats.pixels > MAX_COUNT):
        raise ValueError("counts more than 2**63 images or pixels")


def _why(exc: BaseException) -> str:
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__


def _dict(value) -> dict:
    if not isinstance(value, dict):
        raise TypeError("not an object")
    return value


def _skipped(value) -> list[dict]:
    if not isinstance(value, list) or not all(
        isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("error"), str) for s in value
    ):
        raise ValueError('must be a list of {"path", "error"} objects')
    return list(value)


# -- reading ------------------------------------------------------------------------------------


class Report:
    """A ``compute``/``merge`` result, validated: the one way bnstats reads its own JSON.

    ``Report.read(path)`` or ``Report(data, source)``. The per-channel
    statistics are :meth:`unit` and :meth:`raw`; :meth:`tally` rebuilds the
    exact state (results made before ``state`` existed, or by other tools,
    have none and cannot be merged); :meth:`options` gives the settings.
    """

    def __init__(self, data, source: str = "result"):
        self.source = source
        if not isinstance(data, dict):
            raise ReportError(f"{source} is not a bnstats result (not a JSON object)")
        self.data = data
        channels = self._get("channels")
        if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
            if isinstance(channels, list) and not channels and data.get("images") == 0:
                channels = []  # a shard whose images were all unreadable
            else:
                self._bad("channels", "must be a non-empty list of band names")
        self.channels: list[str] = channels
        self.max_value = self._get("max_value")
        if self.max_value not in (255, 65535, 1, None) or isinstance(self.max_value, bool):
            self._bad("max_value", "must be 255, 65535 or 1")
        for key in STAT_KEYS:
            self._check_values(key, self._get(key))
            raw = self._get("raw")
            if not isinstance(raw, dict):
                self._bad("raw", "must be an object")
            self._check_values(f"raw.{key}", raw.get(key))
        if "median" in data:
            self._check_values("median", data["median"])
        self.derived = self._derived()
        self.images = self._count("images")
        self.pixels = self._count("pixels")
        try:
            self.skipped = _skipped(data.get("skipped", []))
        except ValueError as exc:
            self._bad("skipped", str(exc))
        self.files = data.get("files")
        if self.files is not None and not (
            isinstance(self.files, dict) and isinstance(self.files.get("count"), int)
            and 0 <= self.files["count"] <= MAX_COUNT
            and isinstance(self.files.get("digest"), str) and re.fullmatch(r"[0-9a-f]{64}", self.files["digest"])
        ):
            self._bad("files", 'must be {"count": N, "digest": 64 hex digits}')
        if self.files is not None and "covers" in self.files:
            try:
                self.covers = _covers(self.files["covers"])
            except (TypeError, ValueError, KeyError) as exc:
                self._bad("files.covers", str(exc) or "malformed")
        else:
            self.covers = None
        self.observers = [name for name in registered() if name in data]
        # --sample/--until-ci: the statistics of a sample, not of the items listed (also when ci95 is absent)
        self.sampled = "sample" in data or "ci95" in data
        self._options = self.options()
        self._tally = None
        if "state" in data:
            self._tally = tally_from_dict(data, source)
            self._tally.extra.update(self.derived)  # recorded by their report keys, not under statistics
            self._check_agrees()

    def _check_agrees(self) -> None:
        """The statistics written out must be those of the exact state: ``export`` reads the former,
        ``merge`` the latter, so a file where they differ would give two answers (it was edited or damaged).
        A relative 1e-9 lets a float's last digits differ between platforms."""
        stats = self._tally.stats
        if stats.kind is None:
            if self.images or self.pixels:
                self._bad("state", f"is empty, yet the result counts {self.images} images")
            return
        summary = stats.report()
        for key in ("images", "pixels", "max_value"):
            if self.data[key] != summary[key]:
                self._bad(key, f"{self.data[key]} is not what its state counts ({summary[key]})")
        for field, written, exact in [*((k, self.data[k], summary[k]) for k in STAT_KEYS),
                                      *((f"raw.{k}", self.data["raw"][k], summary["raw"][k]) for k in STAT_KEYS)]:
            if not isinstance(exact, list) or len(exact) != len(written) or not all(
                    _agree(a, b) for a, b in zip(written, exact)):
                self._bad(field, "differs from what its state holds (edited or damaged?)")

    def _get(self, key):
        if key not in self.data:
            raise ReportError(f"{self.source} is not a bnstats result (missing {key!r})")
        return self.data[key]

    def _bad(self, field: str, why: str):
        raise ReportError(f"{self.source}: bad {field}: {why}")

    def _derived(self) -> dict:
        """The derived statistics (e.g. ``percentiles``) the report's keys record, by name, their values checked."""
        found = {}
        for name, cls in registry.load("statistics").items():
            if not getattr(cls, "derived", False):
                continue
            try:
                statistic = cls.from_report(self.data)
            except (TypeError, ValueError, AttributeError) as exc:
                self._bad(name, str(exc) or "malformed")
            if statistic is not None:
                found[name] = statistic
                for key, values in _per_channel(statistic.fields_written(self.data)):
                    self._check_values(key, values)
        return found

    def _count(self, key) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            self._bad(key, "must be an integer from 0 to 2**63 (a run's count)")
        return value

    def refuse_sample(self, doing: str) -> None:
        """A one-line :class:`ReportError` if this is a sampled result (``doing``: what cannot be done)."""
        if self.sampled:
            raise ReportError(f"{self.source} is a sample (--sample/--until-ci): samples cannot be {doing}")

    def _check_values(self, field: str, values) -> None:
        if not isinstance(values, list) or len(values) != len(self.channels):
            self._bad(field, f"must be a list of {len(self.channels)} numbers, one per channel")
        for v in values:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite_float(v)):
                self._bad(field, "must hold finite numbers")

    @classmethod
    def read(cls, path: str) -> "Report":
        """Read and validate a result file; ``-`` reads standard input."""
        if path == "-":
            text = jsonio.read_bounded(sys.stdin.buffer, jsonio.json_limit())
            if len(text) > jsonio.json_limit():
                raise ReportError(jsonio.too_large("<stdin>", jsonio.json_limit()))
            jsonio.check_parse_cost(text, "<stdin>", jsonio.json_limit())
            return cls(loads(text.decode("utf-8", "replace"), "<stdin>"), "<stdin>")
        return cls(read_json(path), path)

    def unit(self, key: str) -> list:
        """A per-channel statistic (``mean std var min max``) in unit scale."""
        return self.data[key]

    def raw(self, key: str) -> list:
        """A per-channel statistic in the data's own units."""
        return self.data["raw"][key]

    @property
    def grouped(self) -> bool:
        return "groups" in self.data

    def options(self) -> DecodeOptions:
        """The settings the result was made with."""
        if getattr(self, "_options", None) is not None:
            return self._options
        try:
            return DecodeOptions.from_dict(_dict(self._get("settings")))
        except (TypeError, ValueError) as exc:
            raise ReportError(f"{self.source}: bad settings: {exc}") from None

    def tally(self) -> Tally:
        """The exact mergeable state."""
        if self._tally is None:
            raise ReportError(f"{self.source} is not a bnstats result (missing 'state')")
        return self._tally


def _agree(written, exact) -> bool:
    """Whether a written statistic is the exact state's (None for none, else equal to 1e-9)."""
    if written is None or exact is None:
        return written is None and exact is None
    return math.isclose(written, exact, rel_tol=1e-9, abs_tol=1e-300)


def _finite_float(value) -> bool:
    """Whether ``value`` is a number a float holds (an integer of 400 digits is not)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _covers(value) -> list[dict]:
    """Validated ``files.covers``: ``[{"list": {"count", "digest"}, "ranges": [[start, stop], ...]}]``."""
    if not isinstance(value, list):
        raise ValueError("must be a list")
    out = []
    for entry in value:
        listing, ranges = entry["list"], entry["ranges"]
        count, digest = listing["count"], listing["digest"]
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise ValueError("list count must be an integer from 0 to 2**63")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("list digest must be 64 hex digits")
        if not isinstance(ranges, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
            and 0 <= r[0] < r[1] <= count for r in ranges
        ):
            raise ValueError("ranges must be [start, stop] pairs within the list")
        out.append({"list": {"count": count, "digest": digest}, "ranges": [list(r) for r in ranges]})
    return out


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
    files = {**combine_digests([r.files for r in reports]), "covers": covers}
    return build_report(merged, options, files)


def _check_same_statistics(reports: list[Report], tallies: list[Tally]) -> None:
    """Refuse results holding different statistics, or the same ones built with different settings."""
    for report, tally in zip(reports[1:], tallies[1:]):
        why = difference(tallies[0].extra, tally.extra, reports[0].source, report.source)
        if why:
            raise ReportError(f"cannot merge results {why}")


def _per_channel(table: dict):
    """``(field, values)`` for each per-channel list of a derived statistic's report keys (``raw`` ones too)."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from ((f"{key}.{k}", v) for k, v in _per_channel(value))
        else:
            yield key, value
