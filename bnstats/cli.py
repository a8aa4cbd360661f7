"""The ``bnstats`` command line: a thin click layer over the library.

Each command parses options (shared ones come from ``bnstats.options``),
calls the library and prints. Library errors become one-line messages
(exit 1), Ctrl-C exits 130 (SIGTERM 143, SIGHUP 129); no traceback. The
``bnstats`` command starts in ``bnstats/__main__.py``, which installs the
signal handlers before importing this module.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from . import __version__
from .batchnorm import BatchNormTracker
from .cluster import DaskError
from .compare import CompareError, available_memory, check_memory, compare as run_compare, format_table
from .count import CountSpec, UnreadableImage
from .decode import DecodeError
from . import interrupts
from .engine import Interrupted, WorkerLost
from .exports import FORMATS, render
from .job import ComputeJob, JobSettingsError
from .jsonio import ReportError, to_json, write_atomic
from .options import (ByteSize, MomentumType, input_options, output_opt, pixel_options, quiet_opt,
                      strict_opt, workers_opt)
from .progress import Progress
from .report import Report, merge_reports
from .inputs import select
from .sources import NoImagesError, Selection
from .stats import LayoutError

EXIT_INTERRUPTED = 130  # Ctrl-C; any stop signal exits 128 + its number (interrupts.exit_code)


def check_output_folder(path: str | None) -> None:
    """Fail before the run, not after it, if ``path`` cannot be written."""
    if path:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise click.ClickException(f"cannot write {path}: folder {folder} does not exist")


def write_output(text: str, output: str | None) -> None:
    """The result to ``output`` (atomically) or to stdout."""
    if output:
        write_atomic(output, text)
    else:
        click.echo(text, nl=False)


def friendly_errors(f):
    """Library errors -> one line and exit 1; Ctrl-C, SIGTERM, SIGHUP -> one line and exit 128 + signal."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except UnreadableImage as exc:
            raise click.ClickException(f"cannot read {exc.path}: {exc.error}") from None
        except (NoImagesError, LayoutError, DecodeError, ReportError, CompareError, DaskError) as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:
            interrupts.exiting()  # more presses must not interrupt the exit
            click.echo(interrupts.stop_message(exc), err=True)
            sys.exit(interrupts.exit_code(exc))
        except OSError as exc:  # writing output or checkpoint: disk full, permissions
            name = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{name}{exc.strerror or exc}") from None
    return wrapper


# -- commands -----------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnstats")
def main():
    """Exact per-channel image statistics for input normalization."""


@main.command()
@input_options
@pixel_options
@workers_opt
@strict_opt
@quiet_opt
@output_opt
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Save progress here every few seconds and on Ctrl-C; rerun to resume.")
@click.option("--group-by", type=click.Choice(["class"]),
              help="Also report per-class stats (ImageFolder: top-level subfolders are classes).")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run on an existing Dask cluster, e.g. tcp://head:8786 (pip install \"bnstats[dask]\").")
@click.option("--bn-momentum", type=MomentumType(),
              help="Also report a BatchNorm layer's running stats after these batches: "
                   "momentum M (PyTorch default 0.1) or 'cumulative'.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per batch for --bn-momentum (file order).")
@friendly_errors
def compute(inputs, options, workers, strict, quiet, output, checkpoint, group_by, scheduler, bn_momentum, batch_size):
    """Stream images and print per-channel statistics as JSON.

    PATHS are image files or folders (walked recursively, sorted by path).

    \b
    Example:
        bnstats compute data/train -o stats.json
        bnstats compute data/train --resize 256 --center-crop 224 | jq .mean
        bnstats compute data/train --checkpoint run.ckpt -o stats.json   # Ctrl-C, rerun: resumes
    """
    if (bn_momentum is None) != (batch_size is None):
        raise click.UsageError("--bn-momentum and --batch-size go together (e.g. --bn-momentum 0.1 --batch-size 64)")
    check_output_folder(output)
    check_output_folder(checkpoint)
    selection = select(inputs.paths, inputs.shard)
    observers = [] if batch_size is None else [BatchNormTracker(batch_size, bn_momentum)]
    spec = CountSpec(options, strict=strict, group_by=group_by == "class")
    try:
        job = ComputeJob(selection, spec, workers=workers, scheduler=scheduler, checkpoint=checkpoint,
                         observers=observers,
                         allow_empty=inputs.shard is not None)  # a shard still writes its part, so merges add up
    except JobSettingsError as exc:
        raise click.UsageError(str(exc)) from None
    total = len(selection)
    progress = Progress(total, done=job.start, quiet=quiet, tally=job.tally)
    for note in selection.notes:
        progress.warn(note)
    for skip in selection.errors:
        progress.warn(f"skipped {skip['path']}: {skip['error']}")
    if job.tally is not None:
        progress.warn(f"resuming from {checkpoint}: {job.start} of {total} files already counted")
    try:
        report = job.run(on_chunk=progress)
    except Interrupted as exc:
        progress.close()
        if exc.saved_to:
            click.echo(f"bnstats: progress saved to {exc.saved_to} ({exc.done} of {total} files); "
                       "rerun the same command to resume", err=True)
        raise
    except WorkerLost as exc:
        saved = (f"; progress saved to {exc.saved_to} ({exc.done} of {total} files), rerun the same command "
                 "to resume" if exc.saved_to else "")
        raise click.ClickException(f"{exc}{saved}") from None
    finally:
        progress.close()
    if report["images"] == 0 and inputs.shard is not None:
        progress.warn(f"shard {inputs.shard[0]}/{inputs.shard[1]} has no readable images; "
                      "its result lists only skipped files, for merge")
    write_output(to_json(report), output)
    job.done()


@main.command()
@click.argument("stats_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@output_opt
@friendly_errors
def merge(stats_files, output):
    """Combine partial results (shards, runs on different machines) exactly.

    The results must come from the same settings (mode, resize, crop, ...);
    merging all shards of a run gives that run's result bit for bit.

    \b
    Example:
        bnstats compute data --shard 0/2 -o part0.json   # on machine A
        bnstats compute data --shard 1/2 -o part1.json   # on machine B
        bnstats merge part0.json part1.json -o stats.json
    """
    check_output_folder(output)
    write_output(to_json(merge_reports([Report.read(p) for p in stats_files])), output)


@main.command(name="compare")
@input_options
@pixel_options
@workers_opt
@strict_opt
@quiet_opt
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--tolerance", type=float, default=1e-9, show_default=True,
              help="Largest |difference| in mean and std that counts as agreement.")
@click.option("--max-memory", type=ByteSize(), help="Refuse a naive load above this (e.g. 8G) [default: half of available RAM].")
@click.option("--limit", type=click.IntRange(min=1), help="Compare on the first N images only.")
@friendly_errors
def compare_command(inputs, options, workers, strict, quiet, as_json, tolerance, max_memory, limit):
    """Streaming vs a naive full load on the same images, side by side.

    Runs bnstats' streaming computation and the naive method (every image
    decoded into memory, all pixels concatenated, numpy float64 mean/std),
    each in its own process, and prints both results, their difference,
    wall time and peak memory. Exit 0 when they agree within --tolerance.

    \b
    Example:
        bnstats compare data/train --limit 200
        bnstats compare data/train --json | jq .max_abs_diff
    """
    selection = select(inputs.paths, inputs.shard)
    selection = Selection(selection.source, selection.keys[:limit], selection.shard)
    check_memory(selection, options, max_memory or available_memory() // 2)
    bars = {}

    def on_progress(side, done):  # one bar per side, each in its own process
        if side not in bars:
            for bar in bars.values():
                bar.close()
            bars[side] = Progress(len(selection), quiet=quiet, label=side)
        bars[side].advance(done)

    try:
        doc = run_compare(selection, options, workers=workers, tolerance=tolerance, strict=strict,
                          on_progress=on_progress)
    finally:
        for bar in bars.values():
            bar.close()
    if not quiet:
        for skip in doc["streaming"]["skipped"]:
            click.echo(f"bnstats: warning: skipped {skip['path']}: {skip['error']}", err=True)
    click.echo(to_json(doc) if as_json else format_table(doc), nl=False)
    if not doc["agree"]:
        sys.exit(1)


@main.command()
@click.argument("stats_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-f", "--format", "fmt", type=click.Choice(list(FORMATS)), required=True,
              help="Target framework or file format (mmcv: mmpretrain's to_rgb; mmdet: "
                   "mmdet/mmseg/mmpose 3.x bgr_to_rgb).")
@click.option("--bgr", is_flag=True, help="Reverse the channel order (mmcv configs for BGR-loaded images).")
@click.option("--digits", type=click.IntRange(0, 17), help="Round the values to this many decimals.")
@friendly_errors
def export(stats_file, fmt, bgr, digits):
    """Print the statistics in a framework's own form.

    STATS_FILE is a compute or merge result; - reads it from standard input.

    \b
    Example:
        bnstats export stats.json --format torchvision
        bnstats export stats.json --format hf > preprocessor_fragment.json
        bnstats compute data/train -q | bnstats export - --format timm --digits 4
    """
    click.echo(render(Report.read(stats_file), fmt, bgr=bgr, digits=digits), nl=False)
