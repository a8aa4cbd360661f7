"""``bnstats compare``: streaming vs a naive full load, side by side."""

from __future__ import annotations

import sys

import click

from ...running.compare import available_memory, check_memory, compare as run_compare, format_table
from ...jsonio import to_json
from ..options import (ByteSize, FiniteFloatType, SectionedCommand, input_options, option, pixel_options, quiet_opt,
                       strict_opt, workers_opt)
from ..progress import Progress, printable
from ...inputs.selection import Selection
from .common import check_stdout, friendly_errors, print_result


@click.command(name="compare", cls=SectionedCommand)
@input_options
@pixel_options
@workers_opt
@strict_opt
@quiet_opt
@option("--json", "as_json", group="Output", is_flag=True, help="Print the comparison as JSON.")
@option("--tolerance", group="Output", type=FiniteFloatType(min=0), default=1e-9, show_default=True,
        help="Largest difference in mean and std, relative to max(1, |value|), that counts as agreement.")
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
    if inputs.options.mask is not None:  # the input options are one set: --mask is compute's alone
        raise click.UsageError("--mask is an option of bnstats compute (foreground and per-label statistics)")
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
