"""A tally as JSON and back: the exact mergeable state that reports and checkpoints carry.

:func:`tally_to_dict` writes a (possibly partial) tally; :func:`tally_from_dict`
rebuilds it from a report or a checkpoint, refusing in one line (naming
the field) anything bnstats would not have written. The small validators
here are shared with :mod:`bnstats.output.reading`.
"""

from __future__ import annotations

from ..jsonio import ReportError
from ..statistics.base import restore, state_dict
from ..statistics.running import RunningStats
from ..statistics.tally import Tally

MAX_COUNT = 2**63  # images, pixels, item counts: more than any real run counts (a larger one is damage)

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
    if tally.foreground is not None:
        d["foreground"] = {"state": tally.foreground.to_dict()}
    if tally.extra:
        d["statistics"] = {name: state_dict(statistic) for name, statistic in sorted(tally.extra.items())}
    return d


def tally_from_dict(d: dict, source: str = "result") -> Tally:
    """Rebuild the exact tally from a report or a :func:`tally_to_dict` dict; ReportError if malformed."""
    field = "state"
    try:
        stats = RunningStats.from_dict(as_object(d["state"]))
        _check_counts(stats)
        field = "channels"
        channels = d["channels"]
        if channels is not None and not (isinstance(channels, list) and all(isinstance(c, str) for c in channels)):
            raise ValueError("must be a list of band names")
        if stats.channels is not None and len(channels or ()) != stats.channels:
            raise ValueError("do not match the state")
        field = "skipped"
        skipped = skipped_entries(d.get("skipped", []))
        field = "groups"
        groups = d.get("groups")
        if groups is not None:
            groups = {str(k): _part_state(v, stats) for k, v in as_object(groups).items()}
        field = "foreground"
        foreground = d.get("foreground")
        if foreground is not None:
            foreground = _part_state(foreground, stats)
        field = "statistics"
        extra = {}
        for name, state in as_object(d.get("statistics", {})).items():
            extra[name] = restore(name, as_object(state))  # an unknown name: ValueError listing the known ones
        field = "notes"
        notes = d.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError("must be a list of strings")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ReportError(f"{source}: bad {field} ({why(exc)}): not a bnstats result") from None
    return Tally(stats=stats, bands=tuple(channels) if channels else None, skipped=skipped,
                 groups=groups, notes=set(notes), extra=extra, foreground=foreground)


def _part_state(part, stats: RunningStats) -> RunningStats:
    """A class's, a label's or the foreground's exact state, counting no more than any run could and the
    report's channels."""
    state = RunningStats.from_dict(as_object(as_object(part)["state"]))
    _check_counts(state)
    if state.channels is not None and stats.channels is not None and state.channels != stats.channels:
        raise ValueError(f"a state of {state.channels} channels in a result of {stats.channels}")
    return state


def _check_counts(stats: RunningStats) -> None:
    """Refuse a state counting more images or pixels than any run could (2**63): damage, not data."""
    if stats.images > MAX_COUNT or (stats.kind is not None and stats.pixels > MAX_COUNT):
        raise ValueError("counts more than 2**63 images or pixels")


def why(exc: BaseException) -> str:
    """What a validation error says, for a one-line message: a missing key named as missing."""
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__


def as_object(value) -> dict:
    """``value`` if it is a JSON object, else TypeError (a field of the wrong type)."""
    if not isinstance(value, dict):
        raise TypeError("not an object")
    return value


def skipped_entries(value) -> list[dict]:
    """A validated ``skipped`` list; ValueError unless it is a list of ``{"path", "error"}`` objects."""
    if not isinstance(value, list) or not all(
        isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("error"), str) for s in value
    ):
        raise ValueError('must be a list of {"path", "error"} objects')
    return list(value)
