"""The protocol every statistic of a run follows (chunk / combine / aggregate, and JSON).

A new statistic is one subclass of :class:`Statistic` with a ``name``,
registered by a line in ``bnstats.registry`` (built-in) or an entry point
of group ``bnstats.statistics`` (a plugin). A statistic may take settings
(keyword arguments of its constructor, JSON values): :meth:`Statistic.settings`
gives them back, reports and checkpoints carry them beside the state
(``"settings"``, only when there are any), and merging compares them.
:func:`build` and :func:`restore` are the one way the rest of bnstats makes
a statistic from its name.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from .. import registry

__all__ = ["Statistic", "build", "restore", "state_dict", "difference"]

class Statistic:
    """One statistic of a run, in dask's chunk / combine / aggregate shape.

    * chunk: :meth:`add_image` folds in one decoded image, an object with
      ``histogram()`` (the exact ``(C, levels)`` int64 counts of integer
      pixels, or None for float data and scaled integers), ``values()`` (the
      ``(n, C)`` array of counted pixels' values), ``bands`` and ``scale``
      (``(slope, inter)`` of scaled integers, whose ``stored_histogram()``
      counts the stored integers; else None);
    * combine: :meth:`merge` folds another state of the same statistic in
      (in place, never aliasing it); :meth:`combine` is the pure N-ary form;
    * aggregate: :meth:`report` gives the keys it adds to the JSON report
      (a nested ``"raw"`` dict goes under the report's ``raw``);
    * :meth:`to_dict` / :meth:`from_dict` carry the exact state through
      JSON (reports, checkpoints, merge); ``from_dict`` is given the
      settings too, under ``"settings"`` (absent when there are none).

    A new statistic is a subclass with a ``name`` and these methods, plus
    a registry line (``bnstats.registry``); one with settings takes them as
    keyword arguments and returns them from :meth:`settings`.
    """

    name: ClassVar[str]
    # A derived statistic keeps no state of its own: it reads the exact histogram of the run's ``stats``
    # (and of each class's). Its report keys come from :meth:`fields`, next to the median; it is not written
    # under the report's ``statistics`` (its keys record it: :meth:`from_report` rebuilds it).
    derived: ClassVar[bool] = False
    option: ClassVar[str | None] = None  # the command-line option that asks for it, for messages

    def describe(self) -> str:
        """Its settings in a few words, for messages (e.g. why two results cannot merge)."""
        return ", ".join(f"{k}={v}" for k, v in self.settings().items()) or self.name

    def add_image(self, image) -> None:
        raise NotImplementedError

    def merge(self, other: "Statistic") -> "Statistic":
        raise NotImplementedError

    def settings(self) -> dict:
        """What the statistic was built with (``cls(**settings)`` builds an empty twin); none by default."""
        return {}

    def run_settings(self) -> dict | None:
        """What it adds to a run's settings (checked on resume), or None to be listed by name under ``statistics``."""
        return None

    def fields(self, stats) -> dict:
        """A derived statistic's report keys for ``stats`` (a RunningStats: the run's or a class's)."""
        raise NotImplementedError

    def fields_written(self, data: dict) -> dict:
        """A derived statistic's report keys as found in ``data`` (a report), to check their per-channel lists."""
        return {}

    @classmethod
    def from_report(cls, data: dict) -> "Statistic | None":
        """A derived statistic as a report's keys record it (None if absent); ValueError if malformed."""
        return None

    def empty(self) -> "Statistic":
        """A new, empty statistic with the same settings."""
        return type(self)(**self.settings())

    @classmethod
    def combine(cls, parts: Iterable["Statistic"]) -> "Statistic":
        """A new state holding all of ``parts`` (merged in the order given); parts are untouched."""
        parts = list(parts)
        out = parts[0].empty() if parts else cls()
        for part in parts:
            out.merge(part)
        return out

    def report(self) -> dict:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> "Statistic":
        raise NotImplementedError




def _check_settings(name: str, settings) -> dict:
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ValueError(f"the settings of statistic {name!r} must be an object")
    return settings


def build(name: str, settings: dict | None = None) -> Statistic:
    """The empty statistic registered as ``name``, built with ``settings``; ValueError naming what is wrong."""
    try:
        cls = registry.get("statistics", name)
    except registry.UnknownName as exc:
        raise ValueError(str(exc)) from None
    settings = _check_settings(name, settings or {})
    try:
        return cls(**settings)
    except TypeError as exc:  # a setting it does not take
        raise ValueError(f"statistic {name!r} does not take the settings {settings}: {exc}") from None


def state_dict(statistic: Statistic) -> dict:
    """The statistic's exact state as JSON, with its settings (when it has any) under ``"settings"``."""
    d = statistic.to_dict()
    settings = statistic.settings()
    return {**d, "settings": settings} if settings else d


def restore(name: str, d: dict) -> Statistic:
    """The statistic ``name`` rebuilt from :func:`state_dict`'s dict (its ``from_dict`` reads ``"settings"``)."""
    if not isinstance(d, dict):
        raise TypeError("not an object")
    settings = _check_settings(name, d.get("settings", {}))
    try:
        cls = registry.get("statistics", name)
    except registry.UnknownName as exc:
        raise ValueError(str(exc)) from None
    statistic = cls.from_dict(d)
    if statistic.settings() != settings:
        raise ValueError(f"statistic {name!r} has settings {statistic.settings()}, not the {settings} written")
    return statistic


def difference(a: dict[str, Statistic], b: dict[str, Statistic], a_name: str, b_name: str) -> str | None:
    """How two runs' statistics (by name) differ, in words for "cannot merge results ...", or None if alike.

    Compared by name and settings, for every statistic alike: one without settings held by one run only
    is "that hold different statistics"; otherwise the option or settings and both sides are named.
    """
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if x is not None and y is not None and x.settings() == y.settings():
            continue
        statistic = x if x is not None else y
        if not statistic.settings():
            return "that hold different statistics"
        listed = ["none" if s is None else s.describe() for s in (x, y)]
        return (f"with different {statistic.option or name + ' settings'} "
                f"({a_name}: {listed[0]}; {b_name}: {listed[1]})")
    return None
