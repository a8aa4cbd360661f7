"""The one reader of a result: :class:`Report`, a typed, validated view of a ``compute`` or ``merge`` JSON.

Every command that reads a result (``merge``, ``export``, ``plot``,
checkpoints) goes through :class:`Report`: anything bnstats would not have
written — a wrong type, a count past 2**63, statistics that disagree with
the exact state — is refused in one line naming the file and the field.
"""

from __future__ import annotations

import math
import re
import sys

from .. import jsonio, registry
from ..decoding.options import DecodeOptions
from ..jsonio import ReportError, loads, read_json
from ..observers.base import registered
from ..statistics.formulas import STAT_KEYS
from ..statistics.tally import Tally
from .report import group_fields, order_fields
from .state import MAX_COUNT, as_object, skipped_entries, tally_from_dict

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
            self.skipped = skipped_entries(data.get("skipped", []))
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
        self._check_written("", stats, self.data, ("images", "pixels", "max_value"), STAT_KEYS)
        derived = [statistic for _, statistic in sorted(self.derived.items())]
        self._check_fields("", order_fields(stats, derived), self.data)  # median, percentiles: plot draws them
        self._check_part_agrees("foreground", self._tally.foreground, self.data.get("foreground"))
        written = self.data.get("groups") if isinstance(self.data.get("groups"), dict) else {}
        for name, state in sorted((self._tally.groups or {}).items()):  # a class's or a label's numbers too
            self._check_part_agrees(f"groups.{name}", state, written.get(name))

    def _check_part_agrees(self, field: str, state, written) -> None:
        """A part's (the foreground's, a group's) counts and statistics as written must be its own state's."""
        if state is None or not isinstance(written, dict):
            return
        if state.kind is None:
            if written.get("pixels"):
                self._bad(f"{field}.pixels", "counts pixels its state does not hold (edited or damaged?)")
            return
        self._check_written(f"{field}.", state, written, ("images", "pixels"), ())
        derived = [statistic for _, statistic in sorted(self.derived.items())]
        self._check_fields(f"{field}.", group_fields(state, derived), written)  # unit scale: plot draws them

    def _check_fields(self, prefix: str, exact: dict, written: dict) -> None:
        """Every per-channel list ``written`` holds where ``exact`` has one agrees with it (to a relative
        1e-9); nested objects (``raw``, ``percentiles``) field by field. Keys not written are not checked:
        what a consumer does not find it does not use."""
        for key, value in exact.items():
            if key not in written:
                continue
            shown = written[key]
            if isinstance(value, dict):
                if not isinstance(shown, dict):
                    self._bad(f"{prefix}{key}", "must be an object")
                self._check_fields(f"{prefix}{key}.", value, shown)
            elif isinstance(value, list) and not (isinstance(shown, list) and len(shown) == len(value)
                                                  and all(_agree(a, b) for a, b in zip(shown, value))):
                self._bad(f"{prefix}{key}", "differs from what its state holds (edited or damaged?)")

    def _check_written(self, prefix: str, state, written: dict, counts, unit_keys) -> None:
        """``written``'s ``counts`` equal the state's, and its statistics (``raw``, and ``unit_keys`` in unit
        scale) agree with the state's to a relative 1e-9; else :meth:`_bad` naming the field."""
        summary = state.report()
        for key in counts:
            if written.get(key) != summary[key]:
                self._bad(f"{prefix}{key}", f"{written.get(key)} is not what its state counts ({summary[key]})")
        raw = written.get("raw") if isinstance(written.get("raw"), dict) else {}
        fields = [*((k, written.get(k), summary[k]) for k in unit_keys),
                  *((f"raw.{k}", raw.get(k), summary["raw"][k]) for k in STAT_KEYS)]
        for field, shown, exact in fields:
            if not isinstance(exact, list) or not isinstance(shown, list) or len(exact) != len(shown) or not all(
                    _agree(a, b) for a, b in zip(shown, exact)):
                self._bad(f"{prefix}{field}", "differs from what its state holds (edited or damaged?)")

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
            return DecodeOptions.from_dict(as_object(self._get("settings")))
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
    if isinstance(written, bool) or not isinstance(written, (int, float)) or not _finite_float(written):
        return False  # text, a list, ... where a number was written: damaged (and no TypeError from isclose)
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


def _per_channel(table: dict):
    """``(field, values)`` for each per-channel list of a derived statistic's report keys (``raw`` ones too)."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from ((f"{key}.{k}", v) for k, v in _per_channel(value))
        else:
            yield key, value
