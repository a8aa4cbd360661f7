"""The ``bnstats`` command line: a thin click layer over the library.

Each command parses options (shared ones come from ``bnstats.options``),
calls the library and prints. Library errors become one-line messages
(exit 1), usage errors too (exit 2), Ctrl-C exits 130 (SIGTERM 143, SIGHUP 129); no
traceback. The ``bnstats`` command starts in ``bnstats/__main__.py``, which
installs the signal handlers before importing this module.
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
from .jsonio import ReportError, output_problem, to_json, write_atomic
from .options import (ByteSize, Command, MomentumType, SectionedCommand, input_options, option, output_opt,
                      pixel_options, quiet_opt, strict_opt, workers_opt)
from .progress import Progress, printable
from .report import Report, merge_reports, missing_items
from .inputs import InputError
from .sources import NoImagesError, Selection, SourceError
from .stats import LayoutError

EXIT_INTERRUPTED = 130  # Ctrl-C; any stop signal exits 128 + its number (interrupts.exit_code)


def check_output_folder(path: str | None) -> None:
    """Fail before the run, not after it, if ``path`` (``-o``, ``--checkpoint``) cannot be written."""
    if path:
        problem = output_problem(path)
        if problem:
            raise click.ClickException(f"cannot write {path}: {problem}")


def check_not_same_file(output: str | None, checkpoint: str | None) -> None:
    """``--checkpoint X -o X`` would delete the result as the finished checkpoint: a usage error."""
    if not (output and checkpoint):
        return
    same = os.path.realpath(output) == os.path.realpath(checkpoint)
    if not same and os.path.exists(output) and os.path.exists(checkpoint):
        same = os.path.samefile(output, checkpoint)  # hard links
    if same:
        raise click.UsageError(f"--checkpoint and -o name the same file ({output}); "
                               "the checkpoint is deleted when the run ends")


def check_stdout(hint: str = "") -> None:
    """Fail before the run if stdout is closed (``>&-``): the result would go nowhere."""
    if sys.stdout is None:  # Python sets it to None when descriptor 1 is closed at startup
        raise click.ClickException(f"stdout is closed: nowhere to print the result{hint}")


def print_result(text: str) -> None:
    """``text`` to stdout; a reader that went away (``| head``) ends bnstats quietly, exit 1."""
    check_stdout()
    try:
        click.echo(text, nl=False)  # flushes: a closed pipe shows here, not at exit
    except BrokenPipeError:
        # As the Python docs advise (signal module, "Note on SIGPIPE"): point stdout
        # at devnull so the interpreter's last flush does not print "Exception
        # ignored ... BrokenPipeError", and exit 1 without a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


def write_output(text: str, output: str | None) -> None:
    """The result to ``output`` (atomically, see :func:`~bnstats.jsonio.write_atomic`) or to stdout."""
    if output:
        try:
            write_atomic(output, text)
        except OSError as exc:  # disk full, or permissions changed during the run
            raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    else:
        print_result(text)


def friendly_errors(f):
    """Library errors -> one line and exit 1; Ctrl-C, SIGTERM, SIGHUP -> one line and exit 128 + signal."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except UnreadableImage as exc:
            raise click.ClickException(printable(f"cannot read {exc.path}: {exc.error}")) from None
        except (NoImagesError, LayoutError, DecodeError, ReportError, CompareError, DaskError, SourceError,
                InputError) as exc:
            raise click.ClickException(printable(str(exc))) from None
        except KeyboardInterrupt as exc:
            interrupts.exiting()  # more presses must not interrupt the exit
            click.echo(interrupts.stop_message(exc), err=True)
            sys.exit(interrupts.exit_code(exc))
        except OSError as exc:  # writing output or checkpoint: disk full, permissions
            name = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{name}{exc.strerror or exc}") from None
    return wrapper


def usage_error_line(exc: click.UsageError) -> str:
    """A click usage error as one line: the message, then where to look.

    click prints a usage line, a hint and the message (a missing ``--format``
    even lists its choices one per line); scripts and humans want one line.
    """
    message = " ".join(exc.format_message().split())
    if message and message[-1] not in ".?!":
        message += "."
    ctx = exc.ctx
    if ctx is not None and ctx.help_option_names:
        names = ctx.help_option_names
        message += f" See '{ctx.command_path} {'--help' if '--help' in names else names[0]}'."
    return f"Error: {message}"


class OneLineErrorsGroup(click.Group):
    """A click group whose usage errors are one line on stderr (exit 2).

    Runs click in non-standalone mode and does what standalone mode would,
    except that a :class:`click.UsageError` is printed by :func:`usage_error_line`.
    """

    command_class = Command  # subcommands' usage errors know their context

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # plain `bnstats` (click >= 8.2): the help text
                exc.show()
            else:
                click.echo(usage_error_line(exc), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C while click itself runs (e.g. a prompt)
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # click returns --help's and --version's exit code


# -- commands -----------------------------------------------------------------------

@click.group(cls=OneLineErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnstats")
def main():
    """Exact per-channel image statistics for input normalization."""


@main.command(cls=SectionedCommand)
@input_options
@pixel_options
@workers_opt
@strict_opt
@quiet_opt
@output_opt
@option("--checkpoint", group="Running", type=click.Path(dir_okay=False),
        help="Save progress here every few seconds and on Ctrl-C; rerun to resume.")
@option("--group-by", group="Output", type=click.Choice(["class"]),
        help="Also report per-class stats (ImageFolder: top-level subfolders are classes).")
@option("--scheduler", group="Running", metavar="ADDRESS",
        help="Run on an existing Dask cluster, e.g. tcp://head:8786 (pip install \"bnstats[dask]\").")
@option("--bn-momentum", group="BatchNorm", type=MomentumType(),
        help="Also report a BatchNorm layer's running stats after these batches: "
             "momentum M (PyTorch default 0.1) or 'cumulative'.")
@option("--batch-size", group="BatchNorm", type=click.IntRange(min=1),
        help="Images per batch for --bn-momentum (file order).")
@friendly_errors
def compute(inputs, options, workers, strict, quiet, output, checkpoint, group_by, scheduler, bn_momentum, batch_size):
    """Stream images and print per-channel statistics as JSON.

    PATHS are image files or folders (walked recursively, sorted by path).

    \b
    Example:
        bnstats compute data/train -o stats.json
        bnstats compute data/train --resize 256 --center-crop 224 | jq .mean
        bnstats compute data/train --checkpoint run.ckpt -o stats.json
        (after Ctrl-C the same command resumes)
    """
    if (bn_momentum is None) != (batch_size is None):
        raise click.UsageError("--bn-momentum and --batch-size go together (e.g. --bn-momentum 0.1 --batch-size 64)")
    check_not_same_file(output, checkpoint)
    check_output_folder(output)
    check_output_folder(checkpoint)
    if not output:
        check_stdout(" (use -o FILE)")
    selection = inputs.select()
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
@click.option("--complete", is_flag=True, help="Fail unless the parts cover their whole file lists.")
@friendly_errors
def merge(stats_files, output, complete):
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
    if not output:
        check_stdout(" (use -o FILE)")
    merged = merge_reports([Report.read(p) for p in stats_files])
    gaps = missing_items(merged["files"]["covers"])
    if gaps:
        message = f"the parts leave out {'; '.join(gaps)} (a shard not given?)"
        if complete:
            raise click.ClickException(message)
        click.echo(f"bnstats: warning: {message}", err=True)
    write_output(to_json(merged), output)


@main.command(name="compare", cls=SectionedCommand)
@input_options
@pixel_options
@workers_opt
@strict_opt
@quiet_opt
@option("--json", "as_json", group="Output", is_flag=True, help="Print the comparison as JSON.")
@option("--tolerance", group="Output", type=float, default=1e-9, show_default=True,
        help="Largest |difference| in mean and std that counts as agreement.")
@option("--max-memory", group="Running", type=ByteSize(),
        help="Refuse a naive load above this (e.g. 8G) [default: half of available RAM].")
@option("--limit", group="Inputs", type=click.IntRange(min=1), help="Compare on the first N images only.")
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
    check_stdout()
    selection = inputs.select()
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
            click.echo(printable(f"bnstats: warning: skipped {skip['path']}: {skip['error']}"), err=True)
    print_result(to_json(doc) if as_json else format_table(doc))
    if not doc["agree"]:
        sys.exit(1)


@main.command()
@click.argument("stats_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-f", "--format", "fmt", type=click.Choice(list(FORMATS)), required=True, metavar="FORMAT",
              help=f"Target framework or file format: {', '.join(FORMATS)} (mmcv: mmpretrain's to_rgb; "
                   "mmdet: mmdet/mmseg/mmpose 3.x bgr_to_rgb).")
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
    check_stdout()
    print_result(render(Report.read(stats_file), fmt, bgr=bgr, digits=digits))
