"""The JSON written by ``compute`` and ``merge``, and reading it back.

The report holds the statistics (unit scale at the top level, the data's own
units under ``raw``), what shaped them (``settings``), and the exact
mergeable state (``state``, and per class under ``groups``) from which
``merge`` and ``--checkpoint`` rebuild a :class:`~bnstats.engine.Tally`.
"""

from __future__ import annotations

import json
import os
import tempfile

from . import __version__
from .decode import DecodeOptions
from .engine import Tally
from .stats import RunningStats

STAT_KEYS = ("mean", "std", "var", "min", "max")


class ReportError(ValueError):
    """A file is not a bnstats result, or results cannot be combined."""


def summarize(stats: RunningStats) -> dict:
    """Statistics of one state: unit scale, ``raw`` units, counts."""
    result = stats.result()
    out = {key: result[key] for key in STAT_KEYS}
    out["images"] = stats.images
    out["pixels"] = stats.pixels
    out["max_value"] = stats.max_value
    out["raw"] = {key: result["raw_" + key] for key in STAT_KEYS}
    return out


def build_report(tally: Tally, options: DecodeOptions, extra: dict | None = None) -> dict:
    """The ``compute`` JSON for a finished tally (see PRODUCT.md for the keys)."""
    summary = summarize(tally.stats)
    report = {key: summary[key] for key in STAT_KEYS}
    report["channels"] = list(tally.bands)
    report.update(images=summary["images"], pixels=summary["pixels"], max_value=summary["max_value"])
    report["skipped"] = list(tally.skipped)
    report["raw"] = summary["raw"]
    report["settings"] = options.to_dict()
    report["bnstats_version"] = __version__
    if tally.groups is not None:
        report["groups"] = {
            name: {**summarize(state), "state": state.to_dict()}
            for name, state in sorted(tally.groups.items())
        }
    report.update(extra or {})
    report["state"] = tally.stats.to_dict()
    return report


def tally_from_report(report: dict, source: str = "result") -> tuple[Tally, DecodeOptions]:
    """Rebuild the exact tally and settings a report was made from."""
    try:
        stats = RunningStats.from_dict(report["state"])
        groups = report.get("groups")
        tally = Tally(
            stats=stats,
            bands=tuple(report["channels"]),
            skipped=list(report.get("skipped", [])),
            groups=None if groups is None else {k: RunningStats.from_dict(v["state"]) for k, v in groups.items()},
        )
        options = DecodeOptions.from_dict(report["settings"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{source} is not a bnstats result (missing or bad {exc})") from None
    return tally, options


def read_json(path: str) -> dict:
    """Load a JSON file, with a one-line error for anything wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not JSON: {exc}") from None


def to_json(report: dict) -> str:
    """Pretty JSON text: objects indented, lists of numbers on one line.

    Floats are written so that they read back exactly.
    """
    return _pretty(report, "") + "\n"


def _pretty(value, indent: str) -> str:
    if isinstance(value, dict) and value:
        inner = indent + "  "
        items = (f"{inner}{json.dumps(k)}: {_pretty(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + _pretty(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, allow_nan=False, separators=(", ", ": "))


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half.

    The text goes to a temporary file in the same folder, is flushed to disk,
    and renamed over ``path`` (an atomic step on POSIX and Windows).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bnstats-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
