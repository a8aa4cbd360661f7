"""The JSON written by ``compute`` and ``merge``, and reading it back.

The report holds the statistics (unit scale at the top level, the data's own
units under ``raw``), what shaped them (``settings``), and the exact
mergeable state (``state``, and per class under ``groups``) from which
``merge`` and ``--checkpoint`` rebuild a :class:`~bnstats.engine.Tally`.
"""

from __future__ import annotations

import hashlib
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
    """Statistics of one state: unit scale, ``raw`` units, counts.

    A state that counted nothing (a shard of unreadable files) has empty
    per-channel lists, so that it still merges.
    """
    if stats.kind is None:
        empty = {key: [] for key in STAT_KEYS}
        return {**empty, "images": stats.images, "pixels": 0, "max_value": None, "raw": dict(empty)}
    result = stats.result()
    out = {key: result[key] for key in STAT_KEYS}
    out["images"] = stats.images
    out["pixels"] = stats.pixels
    out["max_value"] = stats.max_value
    out["raw"] = {key: result["raw_" + key] for key in STAT_KEYS}
    return out


def files_digest(files) -> dict:
    """``{"count", "digest"}`` identifying a file list, additive across shards.

    The digest is the sum of the paths' SHA-256 values modulo 2**256, so the
    parts of a split add up to the whole run's digest, and ``merge`` can
    refuse the same part given twice.
    """
    total = sum(int.from_bytes(hashlib.sha256(os.fsencode(f)).digest(), "big") for f in files)
    return {"count": len(files), "digest": f"{total % 2**256:064x}"}


def build_report(tally: Tally, options: DecodeOptions, files=None) -> dict:
    """The ``compute`` JSON for a finished tally (see PRODUCT.md for the keys).

    ``files``, the list that was counted, adds a ``files`` key (see
    :func:`files_digest`).
    """
    summary = summarize(tally.stats)
    report = {key: summary[key] for key in STAT_KEYS}
    report["channels"] = list(tally.bands or ())
    report.update(images=summary["images"], pixels=summary["pixels"], max_value=summary["max_value"])
    report["skipped"] = sorted(tally.skipped, key=lambda s: s["path"])  # the same for any merge order
    report["raw"] = summary["raw"]
    report["settings"] = options.to_dict()
    if files is not None:
        report["files"] = files if isinstance(files, dict) else files_digest(files)
    report["bnstats_version"] = __version__
    if tally.groups is not None:
        report["groups"] = {
            name: {**summarize(state), "state": state.to_dict()}
            for name, state in sorted(tally.groups.items())
        }
    report["state"] = tally.stats.to_dict()
    return report


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
    return d


def tally_from_dict(d: dict, source: str = "result") -> Tally:
    """Rebuild the exact tally from a report or a :func:`tally_to_dict` dict."""
    try:
        groups = d.get("groups")
        return Tally(
            stats=RunningStats.from_dict(d["state"]),
            bands=tuple(d["channels"]) if d["channels"] else None,
            skipped=list(d.get("skipped", [])),
            groups=None if groups is None else {k: RunningStats.from_dict(v["state"]) for k, v in groups.items()},
            notes=set(d.get("notes", [])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReportError(f"{source} is not a bnstats result (missing or bad {exc})") from None


def options_from_report(report: dict, source: str = "result") -> DecodeOptions:
    """The settings a report was made with."""
    try:
        return DecodeOptions.from_dict(report["settings"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{source} is not a bnstats result (missing or bad {exc})") from None


def merge_reports(reports: list[dict], sources: list[str]) -> dict:
    """Exactly combine ``compute`` results made with the same settings.

    Refuses results whose settings (mode, preprocessing, ...) or layouts
    (bands, bit depth) differ: their numbers describe different pixels.
    """
    if not reports:
        raise ReportError("nothing to merge")
    for report, source in zip(reports, sources):
        if not isinstance(report, dict) or "state" not in report:
            raise ReportError(f"{source} is not a bnstats result")
    options = options_from_report(reports[0], sources[0])
    if any("bn" in r for r in reports):
        raise ReportError("results with a BatchNorm simulation (--bn-momentum) cannot be merged: "
                          "its batches run in file order over the whole dataset")
    seen = {}  # files digest -> the result that had it
    for report, source in zip(reports, sources):
        files = report.get("files")
        if isinstance(files, dict) and files.get("count"):
            if files["digest"] in seen:
                raise ReportError(f"{seen[files['digest']]} and {source} count the same files; "
                                  "merging them would count those twice")
            seen[files["digest"]] = source
    grouped = {("groups" in r) for r in reports}
    if len(grouped) > 1:
        raise ReportError("cannot merge results made with and without --group-by")
    tally = Tally(groups={} if grouped == {True} else None)
    for report, source in zip(reports, sources):
        other = options_from_report(report, source)
        if other != options:
            diff = ", ".join(
                f"{k}: {v!r} vs {options.to_dict()[k]!r}"
                for k, v in other.to_dict().items() if v != options.to_dict()[k]
            )
            raise ReportError(f"{source} was made with different settings than {sources[0]} ({diff})")
        part = tally_from_dict(report, source)
        try:
            tally.merge(part)
        except ValueError as exc:  # LayoutError
            raise ReportError(f"cannot merge {source} with {sources[0]}: {exc}") from None
    files = None
    if all(isinstance(r.get("files"), dict) for r in reports):
        total = sum(int(r["files"]["digest"], 16) for r in reports) % 2**256
        files = {"count": sum(r["files"]["count"] for r in reports), "digest": f"{total:064x}"}
    return build_report(tally, options, files)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str) -> dict:
    """Load a JSON file, with a one-line error for anything wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not JSON (not even text)") from None


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
    try:
        mode = os.stat(path).st_mode & 0o777  # keep an existing file's permissions
    except FileNotFoundError:
        mode = 0o666 & ~_umask()  # a new file gets what open() would give it
    fd, tmp = tempfile.mkstemp(prefix=".bnstats-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
