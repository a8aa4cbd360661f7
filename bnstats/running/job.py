"""One ``compute`` job from Python: items in, report out, with everything around it.

:func:`bnstats.running.engine.count_selection` counts items; a job adds what the
``bnstats compute`` command does around it — resuming from and saving a
checkpoint, observers (the BatchNorm simulation), running on Dask — so that
all of it is reachable from Python too::

    from bnstats.running.job import ComputeJob
    from bnstats.inputs.select import select

    job = ComputeJob(select(["data/train"]), checkpoint="run.ckpt")
    report = job.run()              # Ctrl-C saves run.ckpt; running again resumes
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .checkpoint import Checkpoint
from ..statistics.base import build
from ..statistics.tally import Tally
from .count import CountSpec, UnreadableImage
from ..decoding.options import DecodeOptions
from . import interrupts
from .engine import Interrupted, WorkerLost, count_selection
from ..observers.base import Observer
from ..observers.batchnorm import BatchNormTracker
from ..observers.sampling import CHECK_EVERY, Sampler, draw
from ..observers.trace import Trace, default_every
from ..output.report import build_report
from ..inputs.base import NoImagesError
from ..inputs.listing import ListingChanged
from ..inputs.listing import ListingInProgress
from ..inputs.selection import Selection, as_selection


class JobSettingsError(ValueError):
    """Settings that cannot go together (e.g. a checkpoint on Dask)."""


@dataclass(frozen=True)
class Following:
    """What a job follows in item order beside the count (``compute``'s moving metrics), as settings.

    ``sample`` counts a seeded uniform random sample of that many items and
    ``until_ci`` goes in that random order until every 95% half-width is at
    most that (unit scale); either reports ``ci95``, ``population`` and
    ``sample``. ``bn_momentum`` with ``batch_size`` simulates a BatchNorm
    layer's running statistics; ``trace`` writes the running metrics to that
    CSV file every ``trace_every`` items [default: at most 1000 rows].
    """

    sample: int | None = None
    until_ci: float | None = None
    seed: int = 0
    bn_momentum: float | str | None = None
    batch_size: int | None = None
    trace: str | None = None
    trace_every: int | None = None

    @property
    def sampled(self) -> bool:
        """True when the items are drawn in the seeded random order (``sample`` or ``until_ci``)."""
        return self.sample is not None or self.until_ci is not None

    def check(self, shard=None) -> None:
        """Refuse settings that cannot go together (:class:`JobSettingsError`); ``shard`` is the selection's."""
        if (self.bn_momentum is None) != (self.batch_size is None):
            raise JobSettingsError("--bn-momentum and --batch-size go together (e.g. --bn-momentum 0.1 "
                                   "--batch-size 64)")
        if self.sampled and shard is not None:
            raise JobSettingsError("--sample and --until-ci draw from the whole list: not with --shard")
        if self.sample is not None and self.until_ci is not None:
            raise JobSettingsError("--sample N and --until-ci W are two ways to choose how many: give one")

    def follow(self, items: Selection, warn: Callable[[str], None]) -> tuple[Selection, list[Observer]]:
        """The items to count (drawn, when sampled) and the observers that follow them, in report order."""
        population = len(items)
        observers: list[Observer] = []
        if self.batch_size is not None:
            observers.append(BatchNormTracker(self.batch_size, self.bn_momentum))
        if self.sampled:
            if self.sample is not None and self.sample >= population:
                warn(f"--sample {self.sample} is not smaller than the {population} images: counting all of them "
                     "(the intervals are then 0)")
            items = draw(items, self.sample, self.seed)
            observers.append(Sampler(population, self.until_ci, self.seed))
        if self.trace:
            observers.append(Trace(self.trace, self.trace_every or default_every(len(items))))
        return items, observers

    def decorate(self, report: dict, population: int) -> None:
        """Add what a sampled run reports beside its statistics: the population and how it was drawn."""
        if self.sampled:
            report["population"] = population
            report["sample"] = {"seed": self.seed, "size": self.sample, "until_ci": self.until_ci}


def ignore(message: str) -> None:
    """A ``warn`` that drops the warning (Python callers that do not want them on stderr)."""


class ComputeJob:
    """Count a selection of items into a report (the ``compute`` JSON as a dict).

    ``items`` is a :class:`~bnstats.inputs.selection.Selection` or a list of image
    paths; ``spec`` a :class:`~bnstats.running.count.CountSpec` (or just the
    :class:`~bnstats.decoding.options.DecodeOptions`). ``checkpoint`` is a file to
    resume from (if it exists) and to save progress to; ``observers`` are fed
    every image in item order (e.g. a
    :class:`~bnstats.observers.batchnorm.BatchNormTracker`); ``scheduler`` runs on Dask.
    With ``allow_empty`` (shards) a job whose items are all unreadable still
    gives a report, listing them, instead of raising. What the listing could
    not read (``items.errors``) is added to ``skipped``, or raises
    :class:`~bnstats.running.count.UnreadableImage` at once with ``spec.strict``.
    ``following`` adds the moving metrics (:class:`Following`: a random
    sample, a BatchNorm simulation, a trace) after the ``observers`` given, and
    their report keys, as ``bnstats compute`` does: the same JSON from Python.
    ``warn`` receives the warnings, one line each, without the
    ``bnstats: warning:`` prefix [default: dropped]; it is the attribute
    ``warn``, which :meth:`run` uses too.

    After construction, ``tally`` and ``start`` say what a checkpoint
    restored (None and 0 when starting afresh).
    """

    def __init__(
        self,
        items: Selection | Sequence[str] | ListingInProgress,
        spec: CountSpec | DecodeOptions = CountSpec(),
        *,
        workers: int | None = None,
        scheduler=None,
        checkpoint: str | None = None,
        observers: Sequence[Observer] = (),
        allow_empty: bool = False,
        chunk_size: int | None = None,
        following: Following = Following(),
        warn: Callable[[str], None] = ignore,
    ):
        following.check()
        if isinstance(spec, DecodeOptions):
            spec = CountSpec(spec)
        if scheduler and checkpoint:
            raise JobSettingsError("--checkpoint is for local runs; a Dask cluster reruns failed tasks itself")
        self.spec, self.following, self.warn = spec, following, warn
        self.workers, self.scheduler, self.allow_empty = workers, scheduler, allow_empty
        self.tally: Tally | None = None
        self.start = 0
        self.saver = None
        self.done_items = 0
        self.selection: Selection | None = None  # None while a folder is walked (see _count_while_listed)
        # counted while listed: a plain local run, nothing that needs the whole list first
        streams = not (scheduler or checkpoint or observers or chunk_size
                       or following != Following(seed=following.seed))
        self.listing = items if isinstance(items, ListingInProgress) and streams else None
        if self.listing is None:
            self._take(items.result() if isinstance(items, ListingInProgress) else items, observers, chunk_size,
                       checkpoint)

    def _take(self, items: Selection | Sequence[str], observers: Sequence[Observer], chunk_size: int | None,
              checkpoint: str | None) -> None:
        """Check the settings against the items, draw them (sampling), start the observers, resume."""
        items = as_selection(items)
        following, spec = self.following, self.spec
        self.population = len(items)
        items, followers = following.follow(items, self.warn)
        observers = [*observers, *followers]
        if following.until_ci is not None and chunk_size is None:
            chunk_size = CHECK_EVERY  # the stopping rule is checked between tasks
        options = spec.options
        if (options.resize is not None or options.center_crop is not None) and any(
                kind.volumes for kind in items.source.kinds()):
            raise JobSettingsError("--resize and --center-crop apply to 2-D images, not to volumes (NIfTI, DICOM, "
                                   "nnU-Net cases): leave them out for these inputs")
        if self.scheduler and observers:
            names = ", ".join(o.name for o in observers)
            raise JobSettingsError(f"{names} follows the images in order: run it locally, not on --scheduler")
        if spec.mask is not None:
            other = next((kind for kind in items.source.kinds() if not kind.reads_option("mask")), None)
            if other is not None:
                raise JobSettingsError(f"--mask pairs image files and volumes with label files, and {other.paths[0]} "
                                       "is neither: leave --mask out for it")
            if options.resize is not None or options.center_crop is not None or options.exif_transpose:
                raise JobSettingsError("--mask pairs the pixels of the images as stored with their masks: leave "
                                       "out --resize, --center-crop and --exif-transpose")
        if spec.strict and items.errors:
            raise UnreadableImage(items.errors[0]["path"], items.errors[0]["error"])
        self.selection = items
        self.observers = list(observers)
        self.chunk_size = chunk_size
        if checkpoint:
            settings = {**spec.settings(), "observers": {o.name: o.settings() for o in self.observers}}
            self.saver = Checkpoint(checkpoint, items.keys, settings, source=items.source)
        try:
            self._resume(spec)
        except BaseException:
            if self.saver is not None:
                self.saver.unlock()  # the checkpoint stays for a run that can use it
            raise

    def _resume(self, spec: CountSpec) -> None:
        """Take over the checkpoint's state, if there is one, and start the observers (a resumed trace
        checks its file against the checkpoint)."""
        if self.saver is not None:
            resumed = self.saver.load()
            if resumed is not None:
                self.tally, self.start, saved = resumed
                for name, settings in spec.statistic_settings():  # a checkpoint written before it held them
                    self.tally.extra.setdefault(name, build(name, settings))
                self.observers = [saved[o.name] for o in self.observers]  # the checkpoint has each (checked)
                if spec.strict and self.tally.skipped:  # the earlier run skipped what --strict refuses
                    first = self.tally.skipped[0]
                    raise UnreadableImage(first["path"], first["error"])
        for observer in self.observers:
            observer.link(self.observers)
            observer.start(resumed=self.tally is not None)

    def run(self, on_chunk: Callable[[Tally, int], None] | None = None,
            on_listed: Callable[[Selection], None] | None = None) -> dict:
        """Count the items and return the report; remove the checkpoint when done.

        ``on_chunk(tally, done)`` reports progress; ``on_listed(selection)``
        is told of the items once listed (at once, unless they are counted
        while a folder is walked: see :meth:`_count_while_listed`). On Ctrl-C (or SIGTERM,
        SIGHUP) the checkpoint (if any) is saved and
        :class:`~bnstats.running.engine.Interrupted` propagates, with ``saved_to``
        naming the file; so does :class:`~bnstats.running.engine.WorkerLost` when a
        worker process dies. ``self.warn`` receives a warning when ``until_ci``
        was not reached before the items ran out.
        """
        if self.listing is not None:
            report = self._count_while_listed(on_chunk, on_listed)
            if report is not None:
                return report
        elif on_listed is not None:
            on_listed(self.selection)

        self.done_items = self.start  # a resumed run has counted its checkpoint's items

        def each_chunk(tally, done):
            self.done_items = done
            if on_chunk is not None:
                on_chunk(tally, done)
            if self.saver is not None:
                self.saver.maybe_save(tally, done, self.observers)

        keys, source = self.selection.keys, self.selection.source
        try:
            if self.scheduler:
                from .cluster import count_on_dask

                tally = count_on_dask(keys, source=source, spec=self.spec, scheduler=self.scheduler,
                                     on_chunk=each_chunk)
                if on_chunk is not None:
                    on_chunk(tally, len(keys))  # skipped items arrive with the result
            else:
                tally = count_selection(keys, source=source, spec=self.spec, workers=self.workers, tally=self.tally,
                                start=self.start, on_chunk=each_chunk, observers=self.observers,
                                chunk_size=self.chunk_size)
        except (Interrupted, WorkerLost) as exc:
            exc.saved_to = None
            if self.saver is not None:
                # a second Ctrl-C/SIGTERM now must not stop the save half-way:
                # hold it (we are on our way out anyway)
                with interrupts.deferred(second_raises=False):
                    self.saver.save(exc.tally, exc.done, self.observers)
                    self.saver.unlock()
                exc.saved_to = self.saver.path
            raise
        except BaseException:
            if self.saver is not None:
                self.saver.unlock()  # the run is over: another may take the checkpoint up
            raise
        return self._finish(tally)

    def _count_while_listed(self, on_chunk, on_listed) -> dict | None:
        """Count a folder's keys while its walk goes on: the report, or None when the finished selection is
        not what was counted (the folder also held archives or arrays: :meth:`run` counts it from the start).

        The partitions are those of the finished list (``bnstats.running.engine``), so the report is the one
        a run of the finished list gives, byte for byte.
        """
        listing, self.listing = self.listing, None
        walk = listing.walk()

        def listed() -> None:  # the listing's checks (e.g. --strict and a folder that cannot be read) apply now
            self._take(listing.result(), (), None, None)
            if on_listed is not None:
                on_listed(self.selection)

        def each_chunk(tally, done):
            self.done_items = done
            if self.selection is None and listing.finished.is_set():
                listed()
            if on_chunk is not None:
                on_chunk(tally, done)

        tally = None
        if walk is not None:
            try:
                tally = count_selection(walk[1], source=walk[0], spec=self.spec, workers=self.workers,
                                        on_chunk=each_chunk)
            except ListingChanged:  # items of another kind interleave: counted with them, once listed
                tally = None
            except UnreadableImage:  # --strict: what the listing could not read is said first, as when listed first
                errors = listing.result().errors
                if errors:
                    raise UnreadableImage(errors[0]["path"], errors[0]["error"]) from None
                raise
        if self.selection is None:
            listed()
        return self._finish(tally) if tally is not None and listing.confirms(self.selection) else None

    def _finish(self, tally: Tally) -> dict:
        """The report of a finished count (refusing one that counted nothing), with the listing's skips."""
        keys = self.selection.keys
        if not self.allow_empty:
            if tally.stats.kind is None:
                first = f" (first: {tally.skipped[0]['path']}: {tally.skipped[0]['error']})" if tally.skipped else ""
                raise NoImagesError(f"none of the {len(keys)} images could be read{first}")
            if tally.stats.pixels == 0:
                raise NoImagesError(f"no pixel was counted: every pixel of the {tally.stats.images} images was "
                                    "left out (--ignore-value, or NaN/infinite float pixels)")
        if tally.foreground is not None and not tally.foreground.pixels and tally.stats.pixels:
            self.warn("no pixel was labelled above 0 in any mask: the foreground is empty (are the masks the "
                      "right files?)")
        # listing errors are added only now: the checkpoint holds what the items gave
        tally.skipped.extend(self.selection.errors)
        for observer in self.observers:
            observer.finish()
        return self._report(tally)

    def _report(self, tally: Tally) -> dict:
        """The report of what was counted, with what the moving metrics add."""
        keys, until_ci = self.selection.keys, self.following.until_ci
        counted = self.selection
        if self.done_items < len(keys):  # an observer stopped the run (--until-ci): what was counted
            counted = Selection(self.selection.source, keys[: self.done_items], errors=self.selection.errors)
        mask = self.spec.mask.pattern if self.spec.mask is not None else None
        report = build_report(tally, self.spec.options, counted.coverage(), self.observers, mask=mask)
        self.following.decorate(report, self.population)
        if until_ci is not None and self.done_items == len(keys):
            self.warn(f"the 95% half-widths did not reach {until_ci} before the images ran out: "
                 f"all {self.population} were counted")
        return report

    def done(self) -> None:
        """Remove the checkpoint: call once the report is safely written."""
        if self.saver is not None:
            self.saver.remove()
