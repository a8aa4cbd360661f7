"""A result from Python: :class:`Result`, the ``compute`` JSON with the statistics as attributes.

What ``bnstats.compute(...)`` returns, and what :meth:`Result.load` reads
back. It is the report dict (the JSON ``bnstats compute`` prints, as
``report``) with what the command line does to one one call away: its exact
text (:meth:`Result.to_json`), writing it atomically (:meth:`Result.save`),
an export (:meth:`Result.export`, as ``bnstats export``) and an exact merge
(:meth:`Result.merge`, as ``bnstats merge``). Nothing here counts pixels.
"""

from __future__ import annotations

import os

from ..jsonio import to_json, write_atomic
from .exports import render
from .merge import merge_reports
from .reading import Report


class Result:
    """The result of ``bnstats.compute`` (or of ``bnstats compute``, read with :meth:`load`).

    ``mean``, ``std``, ``var``, ``min``, ``max`` are per-channel tuples on the
    unit scale, as the JSON's top level (``None`` for a channel with no
    pixel); ``channels`` names them; ``images``, ``pixels`` and ``skipped``
    are as in the JSON; ``report`` is the whole JSON as a dict.
    """

    def __init__(self, report: dict, source: str = "result"):
        self._checked = Report(report, source)  # validated as merge and export read results
        self.report = report
        self.source = source

    def _per_channel(self, key: str) -> tuple:
        return tuple(self.report[key])

    mean = property(lambda self: self._per_channel("mean"), doc="Per-channel mean, unit scale.")
    std = property(lambda self: self._per_channel("std"), doc="Per-channel standard deviation, unit scale.")
    var = property(lambda self: self._per_channel("var"), doc="Per-channel variance, unit scale.")
    min = property(lambda self: self._per_channel("min"), doc="Per-channel minimum, unit scale.")
    max = property(lambda self: self._per_channel("max"), doc="Per-channel maximum, unit scale.")
    channels = property(lambda self: tuple(self.report["channels"]), doc="The channels' names (R G B, L, ...).")
    images = property(lambda self: self.report["images"], doc="How many images were counted.")
    pixels = property(lambda self: self.report["pixels"], doc="How many pixels were counted.")
    skipped = property(lambda self: list(self.report["skipped"]),
                       doc="``{'path', 'error'}`` of each item that could not be read.")

    def to_json(self) -> str:
        """The JSON text, byte for byte what ``bnstats compute`` prints for the same run."""
        return to_json(self.report)

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON to ``path`` atomically, as ``bnstats compute -o PATH`` does."""
        write_atomic(os.fspath(path), self.to_json())

    def export(self, fmt: str, bgr: bool = False, digits: int | None = None) -> str:
        """The text ``bnstats export --format FMT`` prints (``hf``, ``torchvision``, ...; ``bgr`` reverses
        the channels, ``digits`` rounds); a :class:`~bnstats.jsonio.ReportError` names an unknown format."""
        return render(self._checked, fmt, bgr=bgr, digits=digits)

    def merge(self, *others: Result) -> Result:
        """This result and ``others`` combined exactly, as ``bnstats merge`` does (shards of one run give
        that run's result bit for bit); a :class:`~bnstats.jsonio.ReportError` for parts that cannot be."""
        parts = [self, *others]
        for other in others:
            if not isinstance(other, Result):
                raise TypeError(f"merge takes bnstats results, not {type(other).__name__}")
        named = [Report(part.report, f"part {i} ({part.source})") for i, part in enumerate(parts, 1)]
        return Result(merge_reports(named), "merged result")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        """A result file (``bnstats compute -o``, ``bnstats merge``, :meth:`save`), validated."""
        report = Report.read(os.fspath(path))
        return cls(report.data, report.source)

    def __eq__(self, other) -> bool:
        return isinstance(other, Result) and self.report == other.report

    __hash__ = None  # mutable: the report is a dict

    def __repr__(self) -> str:
        def numbers(values):
            return "(" + ", ".join("-" if v is None else f"{v:.4g}" for v in values) + ")"

        skipped = f", {len(self.report['skipped'])} skipped" if self.report["skipped"] else ""
        return (f"<bnstats.Result {self.images} images{skipped}, {''.join(self.channels) or 'no channels'}: "
                f"mean={numbers(self.mean)} std={numbers(self.std)}>")
