"""``bnstats compute``: stream images and print per-channel statistics as JSON."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import replace

import click

from ...running.count import CountSpec
from ...running.engine import Interrupted, WorkerLost
from ...inputs.masks import MaskRule
from ...running.job import ComputeJob, Following, JobSettingsError
from ... import registry
from ...jsonio import to_json
from ..options import (MomentumType, ParsedType, SectionedCommand, input_options, option, output_opt, pixel_options,
                       quiet_opt, strict_opt, workers_opt)
from ..progress import Progress, printable
from ..summary import show as show_summary, summary_option
from ...statistics.percentiles import normalize_percentile
from .common import (check_named, check_not_same_file, check_output_folder, check_regular_file, check_stdout,
                     friendly_errors, write_output)


def check_parquet_only(source, column: str) -> None:
    """``--group-by COLUMN`` reads a column of Parquet files: every input must be one."""
    other = [p for p in source.kinds() if not p.reads_option("group_column")]
    if other:
        raise click.UsageError(f"--group-by {column} names a column of Parquet files, and {other[0].paths[0]} is "
                               "not one; for folders use --group-by class")


def check_classes(source, keys=()) -> None:
    """``--group-by class`` takes classes from folders (in archives too): every input must tell them, and
    every item have one (a file named on its own has no class folder: it was counted as class "")."""
    other = [p for p in source.kinds() if not p.tells_classes()]
    if other:
        raise click.UsageError(f"--group-by class takes classes from folders, and {other[0].paths[0]} has none "
                               "(for Parquet name the label column: --group-by COLUMN)")
    classless = next((key for key in keys if source.class_of(key) == ""), None)
    if classless is not None:
        raise click.UsageError(f"--group-by class takes classes from the folders under the paths named, and "
                               f"{classless} was named on its own, in no class folder: name the folder that holds "
                               "the class folders")


class PercentilesType(ParsedType):
    """``0.5,1,50,99`` -> ``("0.5", "1", "50", "99")``: each in [0, 100], written as the report keys."""

    name = "P,P,..."

    def parse(self, text):
        keys = []
        for part in text.split(","):
            try:
                key = normalize_percentile(part)
            except ValueError as exc:
                raise ValueError(f"{exc} (give comma-separated percentiles in 0..100, e.g. 1,50,99)") from None
            if key in keys:
                raise ValueError(f"{key} is given twice")
            keys.append(key)
        return tuple(keys)


class HalfWidthType(ParsedType):
    """``--until-ci W``: a finite half-width > 0 (click's FloatRange lets nan and inf through)."""

    name = "W"

    def parse(self, text):
        try:
            width = float(text)
        except ValueError:
            width = math.nan
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"{text!r} is not a finite half-width > 0 (unit scale, e.g. 0.002)")
        return width


def statistics_asked(asked: dict) -> tuple:
    """The statistics the options asked for (name -> settings, None when not asked), in the registry's order."""
    return tuple(name if not asked[name] else (name, asked[name])
                 for name in registry.names("statistics") if asked.get(name) is not None)


@contextlib.contextmanager
def usage_errors():
    """Settings the job refuses (:class:`JobSettingsError`) are usage errors, exit 2."""
    try:
        yield
    except JobSettingsError as exc:
        raise click.UsageError(str(exc)) from None


def warn_unless(quiet: bool, message: str) -> None:
    """One warning line on stderr (as the progress bar writes them), unless ``-q``."""
    if not quiet:
        click.echo(f"bnstats: warning: {printable(message)}", err=True)


def check_files(output, checkpoint, trace_path, stdout: bool = True) -> None:
    """Before the run: ``-o``, ``--checkpoint`` and ``--trace`` name distinct files that can be written (and
    without ``-o``, with ``stdout``, stdout is open: ``bnstats.compute`` returns the result instead)."""
    # removed with the checkpoint when the run is done: -o or --trace there would go too
    side_files = [("--checkpoint's skip list", f"{checkpoint}.skipped"),
                  ("--checkpoint's lock file", f"{checkpoint}.lock")] if checkpoint else []
    check_named(("-o", output), ("--checkpoint", checkpoint), ("--trace", trace_path))
    check_not_same_file(("-o", output), ("--checkpoint", checkpoint), ("--trace", trace_path), *side_files)
    check_output_folder(output)
    check_output_folder(checkpoint)
    if not output and stdout:
        check_stdout(" (use -o FILE)")
    check_output_folder(trace_path)
    check_regular_file("--trace", trace_path)
    check_regular_file("--checkpoint", checkpoint)


def grouped_selection(inputs, group_by: str | None):
    """The inputs selected, and ``CountSpec.group_by`` for ``--group-by`` (a Parquet column, or True for
    class folders), after checking that every input can be grouped so."""
    group_column = group_by if group_by not in (None, "class") else None
    selection = replace(inputs, options=replace(inputs.options, group_column=group_column)).select()
    if group_column is not None:
        check_parquet_only(selection.source, group_column)
    elif group_by == "class":
        check_classes(selection.source, selection.keys)
    return selection, group_column or group_by == "class"


def plan_job(inputs, options, following: Following, warn, *, workers=None, strict=False, group_by=None,
             percentiles=(), covariance=False, scheduler=None, checkpoint=None) -> ComputeJob:
    """The job of ``bnstats compute`` from its parsed options (``bnstats.compute`` makes the same one):
    the inputs selected and checked, what to count, the moving metrics to follow; a usage error (click's)
    for settings that cannot go together."""
    with usage_errors():
        following.check(inputs.shard)
    mask = inputs.options.mask
    if inputs.options.layout == "nnunet" and mask is None:  # a raw dataset's masks: labelsTr/CASE{file_ending}
        named = [p for group in inputs.paths for p in group]
        mask = os.path.join(named[0] if named else ".", "labelsTr", "{case}{ext}")
    if mask is not None and group_by is not None:
        raise click.UsageError("--mask groups the pixels by label: leave out --group-by")
    listing = inputs.listing() if group_by is None else None  # a folder is counted while it is walked
    selection, grouping = (listing, False) if listing is not None else grouped_selection(inputs, group_by)
    asked = {"covariance": {} if covariance else None, "percentiles": {"ps": list(percentiles)} if percentiles else None}
    spec = CountSpec(options, strict=strict, group_by=grouping, statistics=statistics_asked(asked),
                     mask=None if mask is None else MaskRule(mask))
    with usage_errors():
        return ComputeJob(selection, spec, workers=workers, scheduler=scheduler, checkpoint=checkpoint,
                          following=following, warn=warn,
                          allow_empty=inputs.shard is not None)  # a shard still writes its part, so merges add up


def run_with_progress(job: ComputeJob, checkpoint: str | None, quiet: bool) -> dict:
    """Run the job under a progress bar, with its warnings; a stop or a lost worker says where progress is.

    A folder counted while it is walked has no total yet: the bar gets it, and the listing's notes and
    skips are shown, once the walk ends."""
    progress = Progress(None if job.selection is None else len(job.selection), done=job.start, quiet=quiet,
                        tally=job.tally)

    after = []
    job.warn = after.append  # warnings of the run: written once the bar is closed
    try:
        with usage_errors():  # settings checked against the items once listed (a folder counted while walked)
            report = job.run(on_chunk=progress,
                             on_listed=lambda items: progress.listed(items, job.tally is not None, checkpoint))
    except Interrupted as exc:
        progress.close()
        if exc.saved_to:
            click.echo(f"bnstats: progress saved to {exc.saved_to} ({exc.done} of {progress.total} files); "
                       "rerun the same command to resume", err=True)
        raise
    except WorkerLost as exc:
        saved = (f"; progress saved to {exc.saved_to} ({exc.done} of {progress.total} files), rerun the same "
                 "command to resume" if exc.saved_to else "")
        raise click.ClickException(f"{exc}{saved}") from None
    finally:
        progress.close()
    for message in after:
        progress.warn(message)
    return report


@click.command(cls=SectionedCommand)
@input_options
@pixel_options
@workers_opt
@strict_opt
@quiet_opt
@output_opt
@summary_option()
@option("--checkpoint", group="Running", type=click.Path(dir_okay=False),
        help="Save progress here every few seconds and on Ctrl-C; rerun to resume.")
@option("--group-by", group="Output", metavar="class|COLUMN",
        help="Also report per-class stats: 'class' (ImageFolder: top-level subfolders are classes), "
             "or a label column of Parquet files (e.g. label).")
@option("--percentiles", group="Output", type=PercentilesType(),
        help="Also report these exact percentiles per channel (integer data), e.g. 0.5,1,50,99,99.5.")
@option("--covariance", group="Output", is_flag=True,
        help="Also report the channel covariance matrix and its eigenvalues/eigenvectors (PCA lighting).")
@option("--scheduler", group="Running", metavar="ADDRESS",
        help="Run on an existing Dask cluster, e.g. tcp://head:8786 (pip install \"bnstats[dask]\").")
@option("--bn-momentum", group="BatchNorm", type=MomentumType(),
        help="Also report a BatchNorm layer's running stats after these batches: "
             "momentum M (PyTorch default 0.1) or 'cumulative'.")
@option("--trace", "trace_path", group="Moving metrics", metavar="FILE.csv", type=click.Path(dir_okay=False),
        help="Write the running mean and std (and BatchNorm buffers, CI) every --trace-every images.")
@option("--trace-every", group="Moving metrics", type=click.IntRange(min=1), metavar="K",
        help="Images between trace rows [default: at most 1000 rows].")
@option("--sample", group="Moving metrics", type=click.IntRange(min=1), metavar="N",
        help="Count a seeded uniform random sample of N images; report 95% intervals (ci95).")
@option("--until-ci", group="Moving metrics", type=HalfWidthType(), metavar="W",
        help="Count images in a seeded random order until every 95% half-width is <= W (unit scale).")
@option("--seed", group="Moving metrics", type=click.IntRange(min=0), default=0, show_default=True,
        help="Seed of the random order for --sample and --until-ci.")
@option("--batch-size", group="BatchNorm", type=click.IntRange(min=1),
        help="Images per batch for --bn-momentum (file order).")
@friendly_errors
def compute(inputs, options, workers, strict, quiet, output, summary, checkpoint, group_by, percentiles, covariance, scheduler,
            trace_path, trace_every, sample, until_ci, seed, bn_momentum, batch_size):
    """Stream images and print per-channel statistics as JSON.

    PATHS are image files or folders (walked recursively, sorted by path).

    \b
    Example:
        bnstats compute data/train -o stats.json
        bnstats compute data/train --resize 256 --center-crop 224 | jq .mean
        bnstats compute data/train --checkpoint run.ckpt -o stats.json
        (after Ctrl-C the same command resumes)
    """
    following = Following(sample, until_ci, seed, bn_momentum, batch_size, trace_path, trace_every)
    with usage_errors():
        following.check(inputs.shard)
    check_files(output, checkpoint, trace_path)
    job = plan_job(inputs, options, following, warn=lambda line: warn_unless(quiet, line), workers=workers,
                   strict=strict, group_by=group_by, percentiles=percentiles, covariance=covariance,
                   scheduler=scheduler, checkpoint=checkpoint)
    report = run_with_progress(job, checkpoint, quiet)
    if report["images"] == 0 and inputs.shard is not None:
        warn_unless(quiet, f"shard {inputs.shard[0]}/{inputs.shard[1]} has no readable images; "
                           "its result lists only skipped files, for merge")
    write_output(to_json(report), output)
    job.done()
    show_summary(report, output, summary, quiet)
