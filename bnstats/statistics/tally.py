"""The tally: every statistic of a run (and of each class), the bands, skipped items and notes, as one state.

A tally is what a worker returns for a partition and what the parent merges in item order; a checkpoint
and a report carry it as JSON (``bnstats.output.state``'s ``tally_to_dict``/``tally_from_dict``). It
holds no pixels and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import limits
from .base import Statistic, build
from .formulas import HISTOGRAM, MOMENTS, LayoutError
from .running import RunningStats
from .scaled import SCALED

EXACT_KINDS = (HISTOGRAM, SCALED)
#: said once where float data joined exact data in its own units (signed or scaled integers): the run's
#: numbers are float data's, without the exact median and percentiles the others alone would have had
FLOAT_NOTE = ("float data joined signed or scaled integers: every value is counted as float data (no exact "
              "median or percentiles; count the float items in a run of their own to keep them)")


@dataclass
class Tally:
    """The mergeable result of counting some items.

    ``stats`` is the overall :class:`~bnstats.statistics.running.RunningStats`; ``extra``
    holds the other statistics asked for, by name; ``groups`` maps class
    names to their own states (only with grouping); ``bands`` names the
    channels; ``skipped`` lists ``{"path", "error"}`` of unreadable items;
    ``notes`` holds one-time warnings for the user.
    """

    stats: RunningStats = field(default_factory=RunningStats)
    bands: tuple[str, ...] | None = None
    skipped: list[dict] = field(default_factory=list)
    groups: dict[str, RunningStats] | None = None
    notes: set[str] = field(default_factory=set)
    extra: dict[str, Statistic] = field(default_factory=dict)
    foreground: RunningStats | None = None

    @classmethod
    def for_spec(cls, spec) -> "Tally":
        """An empty tally holding what ``spec`` (a :class:`~bnstats.running.count.CountSpec`) asks for."""
        extra = {name: build(name, settings) for name, settings in spec.statistic_settings()}
        masked = spec.mask is not None
        return cls(groups={} if spec.group_by or masked else None, extra=extra,
                   foreground=RunningStats() if masked else None)

    @property
    def statistics(self) -> dict[str, Statistic]:
        """Every statistic of the tally by name, ``stats`` first."""
        return {RunningStats.name: self.stats, **self.extra}

    def add_image(self, image, group: str | None = None) -> None:
        """Count one decoded image into every statistic (and its class)."""
        if image.bands != self.bands:
            self._check_bands(image.bands)
        exact = self.stats.kind in EXACT_KINDS
        self.stats.add_image(image)
        if exact and self.stats.kind == MOMENTS:
            self.notes.add(FLOAT_NOTE)
        if self.extra:
            for statistic in self.extra.values():
                statistic.add_image(image)
        if group is not None:
            self._into_group(group, lambda state: state.add_image(image))
        if image.notes:
            self.notes.update(image.notes)

    def add_labelled(self, parts, foreground) -> None:
        """Count one image's pixels by label: ``parts`` maps each label present to the decoded image of its
        pixels, ``foreground`` is the image of the pixels labelled above 0 (see ``bnstats.running.count``)."""
        for label, part in parts.items():
            self.groups.setdefault(label, RunningStats()).add_image(part)
        self.foreground.add_image(foreground)
        self._check_labels()

    def _check_labels(self) -> None:
        """Refuse more labels than ``BNSTATS_MAX_LABELS`` (a state each: instance ids are no label map)."""
        limit = limits.current().labels
        if self.foreground is not None and len(self.groups) > limit:
            raise LayoutError(f"the masks hold more than {limit} distinct labels (a state each): label maps, not "
                              f"instance ids, are meant; raise {limits.current().variable('labels')} to count more")

    def _into_group(self, name: str, count) -> None:
        """``count(state)`` on group ``name``'s state; a new group's size is checked once it holds something."""
        state = self.groups.get(name)
        if state is not None:
            count(state)
            return
        state = self.groups[name] = RunningStats()
        count(state)
        self._check_groups(state)

    def _check_groups(self, new: RunningStats) -> None:
        """Refuse more group states than ``BNSTATS_MAX_GROUP_BYTES`` holds (the groups' states are alike: the
        new one's size times their number): groups are classes, and a folder per image is no class."""
        counts = getattr(new.state, "counts", None)
        each = counts.nbytes if counts is not None else 64
        limit = limits.current().group_bytes
        if len(self.groups) * each > limit:
            raise LayoutError(
                f"--group-by: {len(self.groups):,} groups of {each:,} bytes of state each pass "
                f"{limit:,} bytes (are there as many classes, or a folder per image?); raise "
                f"{limits.current().variable('group_bytes')} to count more")

    def merge(self, other: "Tally") -> "Tally":
        """Fold ``other`` (counted after this one) into this tally; returns self."""
        if other.bands is not None:
            self._check_bands(other.bands)
        exact = EXACT_KINDS if self.stats.kind in EXACT_KINDS or other.stats.kind in EXACT_KINDS else ()
        self.stats.merge(other.stats)
        if exact and self.stats.kind == MOMENTS:
            self.notes.add(FLOAT_NOTE)
        for name, statistic in other.extra.items():
            self.extra.setdefault(name, statistic.empty()).merge(statistic)
        self.skipped.extend(other.skipped)
        if other.groups is not None:
            self.groups = self.groups if self.groups is not None else {}
            for name, state in other.groups.items():
                self._into_group(name, lambda mine, state=state: mine.merge(state))
        if other.foreground is not None:
            self.foreground = self.foreground if self.foreground is not None else RunningStats()
            self.foreground.merge(other.foreground)
            self._check_labels()
        self.notes |= other.notes
        return self

    def _check_bands(self, bands: tuple[str, ...]) -> None:
        if self.bands is None:
            self.bands = bands
        elif bands != self.bands:
            volumes = any(b.startswith("C") and b[1:].isdigit() for b in (*bands, *self.bands))
            remedy = ("4-D NIfTI volumes count their 4th axis as channels: --fourth-axis items counts each 3-D "
                      "volume as an item of one channel" if volumes else
                      "name the bands alike in every file (a GeoTIFF's band descriptions) or count the files in "
                      "separate runs" if len(bands) == len(self.bands) and len(bands) > 4 else
                      "use --mode rgb or --mode gray to convert every image to one layout")
            raise LayoutError(f"bands {_names(bands)} differ from earlier images' {_names(self.bands)}; {remedy}")


def _names(bands: tuple[str, ...]) -> str:
    """Band names as a message writes them: ``RGB`` for one-letter names, ``B01,B02,...`` for longer ones."""
    return "".join(bands) if all(len(b) == 1 for b in bands) else ",".join(bands)
