"""One ``compute`` job from Python: files in, report out, with everything around it.

:func:`bnstats.engine.compute` counts files; a job adds what the
``bnstats compute`` command does around it — resuming from and saving a
checkpoint, the BatchNorm simulation, running on Dask — so that all of it is
reachable from Python too::

    from bnstats.job import ComputeJob
    from bnstats.sources import iter_image_paths

    job = ComputeJob(iter_image_paths(["data/train"]), checkpoint="run.ckpt")
    report = job.run()              # Ctrl-C saves run.ckpt; running again resumes
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .batchnorm import BatchNormTracker
from .checkpoint import Checkpoint
from .decode import DecodeOptions
from .engine import Interrupted, Tally, compute, compute_dask
from .report import build_report
from .sources import NoImagesError


class JobSettingsError(ValueError):
    """Settings that cannot go together (e.g. a checkpoint on Dask)."""


class ComputeJob:
    """Count ``files`` into a report (the ``compute`` JSON as a dict).

    ``checkpoint`` is a file to resume from (if it exists) and to save
    progress to; ``batch_size`` (with ``momentum``, None for cumulative)
    adds the BatchNorm simulation; ``scheduler`` runs on Dask. With
    ``allow_empty`` (shards) a job whose files are all unreadable still
    gives a report, listing them, instead of raising.

    After construction, ``tally`` and ``start`` say what a checkpoint
    restored (None and 0 when starting afresh).
    """

    def __init__(
        self,
        files: Sequence[str],
        options: DecodeOptions = DecodeOptions(),
        *,
        workers: int | None = None,
        strict: bool = False,
        group_roots: Sequence[str] | None = None,
        scheduler=None,
        checkpoint: str | None = None,
        batch_size: int | None = None,
        momentum: float | None = 0.1,
        allow_empty: bool = False,
    ):
        if scheduler and checkpoint:
            raise JobSettingsError("--checkpoint is for local runs; a Dask cluster reruns failed tasks itself")
        if scheduler and batch_size is not None:
            raise JobSettingsError("--bn-momentum follows batches in file order: run it locally, not on --scheduler")
        self.files, self.options = list(files), options
        self.workers, self.strict, self.group_roots = workers, strict, group_roots
        self.scheduler, self.allow_empty = scheduler, allow_empty
        self.batchnorm = None if batch_size is None else BatchNormTracker(batch_size, momentum)
        self.tally: Tally | None = None
        self.start = 0
        self.saver = None
        if checkpoint:
            bn = None if self.batchnorm is None else [momentum, batch_size]
            group_by = None if group_roots is None else "class"
            self.saver = Checkpoint(checkpoint, self.files, {**options.to_dict(), "group_by": group_by, "bn": bn})
            resumed = self.saver.load()
            if resumed is not None:
                self.tally, self.start, saved_bn = resumed
                if saved_bn is not None:
                    self.batchnorm = BatchNormTracker.from_dict(saved_bn)

    def run(self, on_chunk: Callable[[Tally, int], None] | None = None) -> dict:
        """Count the files and return the report; remove the checkpoint when done.

        ``on_chunk(tally, files_done)`` reports progress. On Ctrl-C the
        checkpoint (if any) is saved and :class:`~bnstats.engine.Interrupted`
        propagates, with ``saved_to`` naming the file.
        """
        def each_chunk(tally, done):
            if on_chunk is not None:
                on_chunk(tally, done)
            if self.saver is not None:
                self.saver.maybe_save(tally, done, self.batchnorm)

        try:
            if self.scheduler:
                tally = compute_dask(self.files, self.options, scheduler=self.scheduler, strict=self.strict,
                                     group_roots=self.group_roots, on_chunk=each_chunk)
                if on_chunk is not None:
                    on_chunk(tally, len(self.files))  # skipped files arrive with the result
            else:
                tally = compute(self.files, self.options, workers=self.workers, strict=self.strict,
                                group_roots=self.group_roots, tally=self.tally, start=self.start,
                                on_chunk=each_chunk, batchnorm=self.batchnorm)
        except Interrupted as exc:
            exc.saved_to = None
            if self.saver is not None:
                self.saver.save(exc.tally, exc.done, self.batchnorm)
                exc.saved_to = self.saver.path
            raise
        if tally.stats.kind is None and not self.allow_empty:
            raise NoImagesError(f"none of the {len(self.files)} images could be read")
        report = build_report(tally, self.options, self.files)
        if self.batchnorm is not None:
            self.batchnorm.finish()
            report["bn"] = self.batchnorm.result()
        return report

    def done(self) -> None:
        """Remove the checkpoint: call once the report is safely written."""
        if self.saver is not None:
            self.saver.remove()
