"""One partition -> its states: the unit of work of a worker process or a Dask task.

:func:`count_partition` reads a partition's items through their source,
decodes each (``bnstats.decoding.decode``), and folds it into a :class:`Tally`: every
statistic asked for (by name and settings, from ``bnstats.registry``), per-class
states, skipped items and notes. With observers in the run it also returns
each image's compact moments, in item order, for the parent to feed them
(``bnstats.observers.base``). Only these small states leave the worker, never
pixels.
"""

from __future__ import annotations

import functools
import threading
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import limits
from ..decoding.decode import decode_item
from ..decoding.image import ArrayImage
from ..decoding.options import DecodeError, DecodeOptions
from ..decoding.pillow import collected_warnings
from ..inputs.base import ItemError, Source, SourceError
from ..inputs.files import FileSource
from ..inputs.masks import MaskRule, masked_parts
from ..statistics.tally import Tally
from ..statistics.base import build
from ..statistics.formulas import LayoutError
from ..statistics.percentiles import percentile_keys
from ..statistics.states import ExactMoments, MomentState


class UnreadableImage(Exception):
    """An image could not be read and ``strict`` was set."""

    def __init__(self, path: str, error: str):
        super().__init__(path, error)  # args must rebuild it: it crosses process boundaries
        self.path, self.error = path, error

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


@dataclass(frozen=True)
class CountSpec:
    """Everything a worker needs to count a partition, in one frozen, picklable object.

    ``options`` shape the pixels; ``strict`` makes an unreadable item an
    error; ``group_by`` keeps per-class states (classes from the source's
    ``class_of``: folders for True, a Parquet label column by name);
    ``statistics`` names the statistics beyond the basic ``stats``: each a
    name (``"covariance"``) or a ``(name, settings)`` pair for one built with
    settings (``("percentiles", {"ps": ["1", "99"]})``; see
    ``bnstats.registry``); ``per_image`` returns each image's moments for
    observers. ``mask`` pairs each item with a label map (a
    :class:`~bnstats.inputs.masks.MaskRule`): the tally then holds each
    label's pixels as a group and the foreground (label above 0).
    ``percentiles`` is a shorthand for the ``percentiles``
    statistic (afterwards it holds the keys that statistic reports, as
    :func:`~bnstats.statistics.percentiles.normalize_percentile` writes them).
    """

    options: DecodeOptions = DecodeOptions()
    strict: bool = False
    group_by: bool | str = False  # True: classes of folders; a name: that column of Parquet files
    statistics: tuple = ()  # names, or (name, settings) pairs
    per_image: bool = False
    percentiles: tuple[str, ...] = ()
    mask: MaskRule | None = None  # each item's label map: per-label groups and the foreground (label > 0)
    limits: limits.Limits = field(default_factory=limits.current)  # the parent's bounds, for Dask workers too

    def __post_init__(self):
        statistics = [_statistic_entry(entry) for entry in self.statistics]
        if self.percentiles:
            shorthand = ("percentiles", {"ps": list(percentile_keys(self.percentiles))})
            if shorthand not in statistics:  # given both ways alike (dataclasses.replace): once
                statistics.append(shorthand)
        names = [name for name, _ in _pairs(statistics)]
        if "stats" in names:
            raise ValueError("the statistic 'stats' is always counted: do not list it")
        if len(set(names)) != len(names):
            raise ValueError(f"a statistic is given twice ({', '.join(names)})")
        built = [build(name, settings) for name, settings in _pairs(statistics)]  # refused now, not in a worker
        # each as its statistic keeps its settings (percentiles normalized): equal specs are equal
        statistics = [_statistic_entry((name, s.settings())) for (name, _), s in
                      zip(_pairs(statistics), built)]
        object.__setattr__(self, "statistics", tuple(statistics))
        object.__setattr__(self, "percentiles", tuple(
            next((s.settings()["ps"] for s in built if s.name == "percentiles"), ())))

    def statistic_settings(self) -> list[tuple[str, dict]]:
        """``(name, settings)`` of each statistic asked for beyond ``stats``."""
        return _pairs(self.statistics)

    def settings(self) -> dict:
        """What shapes the numbers, as recorded in reports and checked by merge and resume.

        Each statistic records itself as it says (:meth:`~bnstats.statistics.base.Statistic.run_settings`):
        by default its name in ``statistics`` (``{"name", "settings"}`` when it has settings), so that
        runs made before statistics had settings fingerprint as they did (checkpoints resume).
        """
        listed, recorded = [], {}
        for name, settings in _pairs(self.statistics):
            own = build(name, settings).run_settings()
            if own is not None:
                recorded.update(own)
            else:
                listed.append({"name": name, "settings": settings} if settings else name)
        extra = {"statistics": listed} if listed else {}
        extra.update(recorded)
        group_by = (self.group_by if isinstance(self.group_by, str) else "class") if self.group_by else None
        if self.mask is not None:  # only when given: the settings of earlier runs (checkpoints) stay as they were
            extra["mask"] = self.mask.pattern
        return {**self.options.to_dict(), "group_by": group_by, **extra}


def _statistic_entry(entry):
    """A ``statistics`` entry as CountSpec keeps it: a name, or ``(name, settings)`` when there are settings."""
    if isinstance(entry, str):
        return entry
    name, settings = entry
    if not isinstance(name, str) or not isinstance(settings, dict):
        raise ValueError(f"a statistic is a name or a (name, settings dict) pair, not {entry!r}")
    return (name, dict(settings)) if settings else name


def _pairs(statistics) -> list[tuple[str, dict]]:
    return [(entry, {}) if isinstance(entry, str) else (entry[0], dict(entry[1])) for entry in statistics]


@dataclass
class Counted:
    """What a worker returns for one partition: its tally and, for observers, per-image moments."""

    tally: Tally
    images: list | None = None  # ExactMoments or MomentState per counted image, in item order


def count_partition(source: Source, keys: Sequence[str], spec: CountSpec = CountSpec()) -> Counted:
    """Count the items ``keys`` of ``source`` into a :class:`Counted`.

    Unreadable items are listed in ``tally.skipped`` (or raise
    :class:`UnreadableImage` with ``spec.strict``); a problem with the
    settings (:class:`~bnstats.decoding.options.DecodeError`) or a change of layout
    between images (:class:`~bnstats.statistics.running.LayoutError`, naming the item)
    stops the run.
    """
    if limits.current() != spec.limits:
        limits.install(spec.limits)
    if threading.current_thread() is not threading.main_thread():
        return _count(source, keys, spec)  # warnings' state is the process's: threads (Dask) keep it per image
    with collected_warnings():
        return _count(source, keys, spec)


def _count(source: Source, keys: Sequence[str], spec: CountSpec) -> Counted:
    tally = Tally.for_spec(spec)
    images = [] if spec.per_image else None
    options, group_by = spec.options, spec.group_by
    add = tally.add_image  # the loop below runs once per thumbnail too: no lookups it can do without
    masks = spec.mask
    read = 0  # items the source gave: every key of the task, or some number would be silently wrong
    for batch, load in source.read(keys):
        read += len(batch)
        for batch, load in (_items(batch, load, spec) if len(batch) > 1 else ((batch, load),)):
            if masks is None:
                image = decoded_or_skipped(tally, batch, lambda: decode_item(load(), options), spec.strict)
            else:
                image = decoded_or_skipped(tally, batch, lambda: masked_parts(source, batch[0], load(), masks, options),
                                           spec.strict)
                if image is not None:
                    image, parts, foreground = image
            if image is None:
                continue
            first = batch[0]
            if images is not None:  # first: its histogram is then what the statistics count
                images.append(image_moments(image))
            try:
                add(image, source.class_of(first) if group_by else None)
                if masks is not None:
                    tally.add_labelled(parts, foreground)
            except LayoutError as exc:
                raise LayoutError(f"{first}: {exc}") from None
    if read != len(keys):
        raise SourceError(f"{keys[0]}: a task of {len(keys)} items read {read} of them (a bnstats bug: please "
                          "report it); no result is written rather than one that leaves items out unsaid")
    return Counted(tally, images)


def decoded_or_skipped(tally: Tally, keys: Sequence[str], decode, strict: bool):
    """``decode()``, or None when the item cannot be read: its keys are then ``tally``'s skip entries (or
    :class:`UnreadableImage` with ``strict``). A problem with the settings, the input or the labels
    (DecodeError, SourceError, LayoutError) stops the run."""
    try:
        return decode()
    except (DecodeError, SourceError, LayoutError):
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
        error = describe_error(exc)
        if strict:
            raise UnreadableImage(keys[0], error) from None
        tally.skipped.extend({"path": k, "error": error} for k in keys)
        return None


def _items(keys: tuple, load, spec: CountSpec):
    """A batch of array rows (several keys), split into single rows when each image must be
    seen on its own (per-image moments, classes)."""
    if not (spec.per_image or spec.group_by or spec.mask):
        return ((keys, load),)
    return (((key,), load) for key, load in _rows(keys, load))


def _rows(keys: tuple, load):
    """The rows of a batch as single items ``(key, load)`` (a failing batch: each row fails alike)."""
    try:
        batch = load()
    except Exception as exc:  # noqa: BLE001 - the caller decides what a failed item is
        for key in keys:
            yield key, functools.partial(_raise, exc)
        return
    for key, pixels in zip(keys, batch.pixels):
        yield key, functools.partial(ArrayImage, pixels, batch.bands, nodata=batch.nodata)


def _raise(exc: BaseException):
    raise exc


def single_items(source: Source, keys: Sequence[str]):
    """``(key, load)`` for each key of ``keys``, batches of array rows split into single rows."""
    for batch, load in source.read(keys):
        if len(batch) > 1:
            yield from _rows(batch, load)
        else:
            yield batch[0], load


def image_moments(image):
    """One decoded image's compact moments: exact for integer pixels, float64 otherwise."""
    counts = image.histogram()
    if counts is not None:
        return ExactMoments.of_histogram(counts, image.offset)
    return MomentState.of_values(image.values())


def count_files(paths: Sequence[str], options: DecodeOptions = DecodeOptions(), strict: bool = False) -> Tally:
    """Count the image files ``paths`` into one :class:`Tally`.

    The function to call from your own Ray/Dask/Spark job: it takes a list
    of paths and returns a picklable, mergeable tally. (Per-class states:
    :func:`count_partition` with a ``FileSource(roots)`` and
    ``CountSpec(group_by=True)``.)
    """
    return count_partition(FileSource([]), list(paths), CountSpec(options, strict=strict)).tally


def describe_error(exc: BaseException) -> str:
    """One line for a skipped item: the error type and message (a source's refusal: its message)."""
    if isinstance(exc, ItemError):
        return str(exc)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", message)  # Pillow names its buffer
    name = type(exc).__name__
    return f"{name}: {message}" if message else name
