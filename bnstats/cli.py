"""The ``bnstats`` command line: a thin click layer over the library.

Each command parses options, calls the library and prints. Options shared by
several commands are defined once below and applied as decorators. Library
errors become one-line messages (exit 1), Ctrl-C exits 130; no traceback.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys

import click

from . import __version__
from .decode import INTERPOLATIONS, MODES, DecodeError, DecodeOptions
from .compare import CompareError, available_memory, check_memory, compare as run_compare, format_table
from .engine import DaskError, Interrupted, UnreadableImage
from .exports import FORMATS, render
from .job import ComputeJob, JobSettingsError
from .progress import Progress
from .report import ReportError, merge_reports, read_json, to_json, write_atomic
from .sources import NoImagesError, iter_image_paths, shard as take_shard
from .stats import LayoutError

EXIT_INTERRUPTED = 130


# -- option types ---------------------------------------------------------------

class SizeType(click.ParamType):
    """``N`` (an int) or ``WxH`` (a ``(width, height)`` pair)."""

    name = "N|WxH"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, tuple)):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(value))
        if not m or int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
            self.fail(f"{value!r} is not a positive size N or WxH", param, ctx)
        return int(m.group(1)) if m.group(2) is None else (int(m.group(1)), int(m.group(2)))


class ShardType(click.ParamType):
    """``K/N``: shard K (0-based) of N."""

    name = "K/N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            self.fail(f"{value!r} is not K/N with 0 <= K < N", param, ctx)
        return int(m.group(1)), int(m.group(2))


class ByteSize(click.ParamType):
    """Bytes, with an optional K, M, G or T suffix (powers of 1024)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(value).lower())
        if not m:
            self.fail(f"{value!r} is not a size like 512M or 8G", param, ctx)
        return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


class MomentumType(click.ParamType):
    """A momentum in (0, 1], or ``cumulative`` (PyTorch's ``momentum=None``)."""

    name = "M|cumulative"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float) or value == "cumulative":
            return value
        if str(value).lower() in ("cumulative", "none"):
            return "cumulative"
        try:
            m = float(value)
        except ValueError:
            m = -1
        if not 0 < m <= 1:
            self.fail(f"{value!r} is not a momentum in (0, 1] or 'cumulative'", param, ctx)
        return m


class NumberType(click.ParamType):
    """An int if it looks like one, else a float."""

    name = "NUMBER"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return value
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r}: give a finite number (NaN and infinite float pixels are never counted)", param, ctx)
        return number


# -- shared options ---------------------------------------------------------------

def _apply(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


input_options = _apply([
    click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True)),
    click.option("--mode", type=click.Choice(MODES), default="rgb", show_default=True,
                 help="rgb: convert('RGB') as torchvision's loader; gray: one band (L); "
                      "native: stored bands and bit depth (16-bit stays 16-bit)."),
    click.option("--resize", type=SizeType(), help="torchvision Resize: N (shorter side) or WxH."),
    click.option("--center-crop", type=SizeType(), help="torchvision CenterCrop: N or WxH."),
    click.option("--interpolation", type=click.Choice(list(INTERPOLATIONS)), default="bilinear",
                 show_default=True, help="Resampling filter for --resize."),
    click.option("--exif-transpose", is_flag=True, help="Apply EXIF orientation (torchvision does not)."),
    click.option("--ignore-value", type=NumberType(),
                 help="Do not count pixels equal to this value in every band (padding, nodata)."),
    click.option("--shard", type=ShardType(), help="Take only shard K of N of the sorted file list."),
    click.option("-j", "--workers", type=click.IntRange(min=1), help="Worker processes [default: all cores]."),
    click.option("--strict", is_flag=True, help="Stop at the first unreadable image (exit 1)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar, no warnings."),
])


def decode_options(kw: dict) -> DecodeOptions:
    """The DecodeOptions from the shared input options in ``kw``."""
    return DecodeOptions(
        mode=kw["mode"], resize=kw["resize"], center_crop=kw["center_crop"],
        interpolation=kw["interpolation"], exif_transpose=kw["exif_transpose"],
        ignore_value=kw["ignore_value"],
    )


def select_files(kw: dict) -> list[str]:
    """The sorted image list for the shared input options in ``kw``."""
    files = iter_image_paths(kw["paths"])
    if kw["shard"] is not None:
        files = take_shard(files, *kw["shard"])
    return files


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
    """Library errors -> one line and exit 1; Ctrl-C -> one line and exit 130."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except UnreadableImage as exc:
            raise click.ClickException(f"cannot read {exc.path}: {exc.error}") from None
        except (NoImagesError, LayoutError, DecodeError, ReportError, CompareError, DaskError) as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("bnstats: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
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
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the JSON here (atomically).")
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
def compute(output, checkpoint, group_by, scheduler, bn_momentum, batch_size, **kw):
    """Stream images and print per-channel statistics as JSON.

    PATHS are image files or folders (walked recursively, sorted by path).

    \b
    Example:
        bnstats compute data/train -o stats.json
        bnstats compute data/train --resize 256 --center-crop 224 | jq .mean
        bnstats compute data/train --checkpoint run.ckpt -o stats.json   # Ctrl-C, rerun: resumes
    """
    if bn_momentum is not None and batch_size is None:
        raise click.UsageError("--bn-momentum needs --batch-size")
    check_output_folder(output)
    check_output_folder(checkpoint)
    files = select_files(kw)
    try:
        job = ComputeJob(
            files, decode_options(kw), workers=kw["workers"], strict=kw["strict"],
            group_roots=list(kw["paths"]) if group_by == "class" else None, scheduler=scheduler,
            checkpoint=checkpoint, batch_size=batch_size,
            momentum={None: 0.1, "cumulative": None}.get(bn_momentum, bn_momentum),
            allow_empty=kw["shard"] is not None,  # a shard still writes its part, so merges add up
        )
    except JobSettingsError as exc:
        raise click.UsageError(str(exc)) from None
    progress = Progress(len(files), done=job.start, quiet=kw["quiet"], tally=job.tally)
    if job.tally is not None:
        progress.warn(f"resuming from {checkpoint}: {job.start} of {len(files)} files already counted")
    try:
        report = job.run(on_chunk=progress)
    except Interrupted as exc:
        progress.close()
        if exc.saved_to:
            click.echo(f"bnstats: progress saved to {exc.saved_to} ({exc.done} of {len(files)} files); "
                       "rerun the same command to resume", err=True)
        raise
    finally:
        progress.close()
    if report["images"] == 0 and kw["shard"] is not None:
        progress.warn(f"shard {kw['shard'][0]}/{kw['shard'][1]} has no readable images; "
                      "its result lists only skipped files, for merge")
    write_output(to_json(report), output)
    job.done()


@main.command()
@click.argument("stats_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the JSON here (atomically).")
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
    write_output(to_json(merge_reports([read_json(p) for p in stats_files], list(stats_files))), output)


@main.command(name="compare")
@input_options
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--tolerance", type=float, default=1e-9, show_default=True,
              help="Largest |difference| in mean and std that counts as agreement.")
@click.option("--max-memory", type=ByteSize(), help="Refuse a naive load above this (e.g. 8G) [default: half of available RAM].")
@click.option("--limit", type=click.IntRange(min=1), help="Compare on the first N images only.")
@friendly_errors
def compare_command(as_json, tolerance, max_memory, limit, **kw):
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
    options = decode_options(kw)
    files = select_files(kw)[:limit]
    max_memory = max_memory or available_memory() // 2
    check_memory(files, options, max_memory)
    doc = run_compare(files, options, workers=kw["workers"], tolerance=tolerance, strict=kw["strict"])
    if not kw["quiet"]:
        for skip in doc["streaming"]["skipped"]:
            click.echo(f"bnstats: warning: skipped {skip['path']}: {skip['error']}", err=True)
    click.echo(to_json(doc) if as_json else format_table(doc), nl=False)
    if not doc["agree"]:
        sys.exit(1)


@main.command()
@click.argument("stats_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-f", "--format", "fmt", type=click.Choice(list(FORMATS)), required=True,
              help="Target framework or file format.")
@click.option("--bgr", is_flag=True, help="Reverse the channel order (mmcv configs for BGR-loaded images).")
@friendly_errors
def export(stats_file, fmt, bgr):
    """Print the statistics in a framework's own form.

    \b
    Example:
        bnstats export stats.json --format torchvision
        bnstats export stats.json --format hf > preprocessor_fragment.json
    """
    click.echo(render(read_json(stats_file), fmt, bgr=bgr), nl=False)
