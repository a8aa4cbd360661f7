"""One ``compute`` job from Python: items in, report out, with everything around it.

:func:`bnstats.running.engine.compute` counts items; a job adds what the
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

from .checkpoint import Checkpoint
from ..statistics.base import build
from ..statistics.tally import Tally
from .count import CountSpec, UnreadableImage
from ..decoding.decode import DecodeOptions
from . import interrupts
from .engine import Interrupted, WorkerLost, compute
from ..observers.base import Observer
from ..output.report import build_report
from ..inputs.base import NoImagesError
from ..inputs.selection import Selection, as_selection


class JobSettingsError(ValueError):
    """Settings that cannot go together (e.g. a checkpoint on Dask)."""


class ComputeJob:
    """Count a selection of items into a report (the ``compute`` JSON as a dict).

    ``items`` is a :class:`~bnstats.inputs.selection.Selection` or a list of image
    paths; ``spec`` a :class:`~bnstats.running.count.CountSpec` (or just the
    :class:`~bnstats.decoding.decode.DecodeOptions`). ``checkpoint`` is a file to
    resume from (if it exists) and to save progress to; ``observers`` are fed
    every image in item order (e.g. a
    :class:`~bnstats.observers.batchnorm.BatchNormTracker`); ``scheduler`` runs on Dask.
    With ``allow_empty`` (shards) a job whose items are all unreadable still
    gives a report, listing them, instead of raising. What the listing could
    not read (``items.errors``) is added to ``skipped``, or raises
    :class:`~bnstats.running.count.UnreadableImage` at once with ``spec.strict``.

    After construction, ``tally`` and ``start`` say what a checkpoint
    restored (None and 0 when starting afresh).
    """

    def __init__(
        self,
        items: Selection | Sequence[str],
        spec: CountSpec | DecodeOptions = CountSpec(),
        *,
        workers: int | None = None,
        scheduler=None,
        checkpoint: str | None = None,
        observers: Sequence[Observer] = (),
        allow_empty: bool = False,
        chunk_size: int | None = None,
    ):
        items = as_selection(items)
        if isinstance(spec, DecodeOptions):
            spec = CountSpec(spec)
        if scheduler and checkpoint:
            raise JobSettingsError("--checkpoint is for local runs; a Dask cluster reruns failed tasks itself")
        if scheduler and observers:
            names = ", ".join(o.name for o in observers)
            raise JobSettingsError(f"{names} follows the images in order: run it locally, not on --scheduler")
        if spec.strict and items.errors:
            raise UnreadableImage(items.errors[0]["path"], items.errors[0]["error"])
        self.selection, self.spec = items, spec
        self.workers, self.scheduler, self.allow_empty = workers, scheduler, allow_empty
        self.observers = list(observers)
        self.chunk_size = chunk_size
        self.tally: Tally | None = None
        self.start = 0
        self.saver = None
        self.done_items = 0
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
        self.done_items = self.start
        for observer in self.observers:
            observer.link(self.observers)
            observer.start(resumed=self.tally is not None)

    @property
    def files(self) -> list[str]:
        """The keys of the items this job counts."""
        return self.selection.keys

    def run(self, on_chunk: Callable[[Tally, int], None] | None = None) -> dict:
        """Count the items and return the report; remove the checkpoint when done.

        ``on_chunk(tally, done)`` reports progress. On Ctrl-C (or SIGTERM,
        SIGHUP) the checkpoint (if any) is saved and
        :class:`~bnstats.running.engine.Interrupted` propagates, with ``saved_to``
        naming the file; so does :class:`~bnstats.running.engine.WorkerLost` when a
        worker process dies.
        """
        def each_chunk(tally, done):
            self.done_items = done
            if on_chunk is not None:
                on_chunk(tally, done)
            if self.saver is not None:
                self.saver.maybe_save(tally, done, self.observers)

        keys, source = self.selection.keys, self.selection.source
        try:
            if self.scheduler:
                from .cluster import compute_dask

                tally = compute_dask(keys, source=source, spec=self.spec, scheduler=self.scheduler,
                                     on_chunk=each_chunk)
                if on_chunk is not None:
                    on_chunk(tally, len(keys))  # skipped items arrive with the result
            else:
                tally = compute(keys, source=source, spec=self.spec, workers=self.workers, tally=self.tally,
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
        if not self.allow_empty:
            if tally.stats.kind is None:
                first = f" (first: {tally.skipped[0]['path']}: {tally.skipped[0]['error']})" if tally.skipped else ""
                raise NoImagesError(f"none of the {len(keys)} images could be read{first}")
            if tally.stats.pixels == 0:
                raise NoImagesError(f"no pixel was counted: every pixel of the {tally.stats.images} images was "
                                    "left out (--ignore-value, or NaN/infinite float pixels)")
        # listing errors are added only now: the checkpoint holds what the items gave
        tally.skipped.extend(self.selection.errors)
        for observer in self.observers:
            observer.finish()
        if self.done_items < len(keys):  # an observer stopped the run (--until-ci): what was counted
            counted = Selection(source, keys[: self.done_items], errors=self.selection.errors)
            return build_report(tally, self.spec.options, counted.coverage(), self.observers)
        return build_report(tally, self.spec.options, self.selection.coverage(), self.observers)

    def done(self) -> None:
        """Remove the checkpoint: call once the report is safely written."""
        if self.saver is not None:
            self.saver.remove()
