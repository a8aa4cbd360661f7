"""``bnstats plot``: a result's histograms, convergence and per-class means as one figure."""

from __future__ import annotations

import os

import click

from ..options import Command
from ...output.plot import FORMATS, build_figure, render
from ...output.trace_rows import PlotError, check_same_run, read_trace
from ..progress import printable
from ...output.reading import Report
from .common import check_output_folder, friendly_errors, write_output


@click.command(cls=Command)
@click.argument("stats_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--trace", "trace_file", type=click.Path(exists=True, dir_okay=False),
              help="The trace CSV of the same run (its last row must count what the result counts and end on its "
                   "mean and std): adds the convergence of the running mean and std.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The figure: .png, .svg or .pdf (by the extension), written atomically.")
@click.option("--log", is_flag=True, help="Histogram counts on a log axis (shows the sparse tails).")
@friendly_errors
def plot(stats_file, trace_file, output, log):
    """Draw a result as one figure (needs matplotlib: pip install "bnstats[plot]").

    STATS_FILE is a compute or merge result; - reads it from standard input.
    The figure holds the exact per-channel histograms (integer data) with
    the mean, ±1σ, ±2σ and any percentiles marked; with --trace, the running
    mean and std against images seen; with --group-by class results, the
    mean of each class per channel.

    \b
    Example:
        bnstats compute data --group-by class -o stats.json
        bnstats plot stats.json -o stats.png
        bnstats plot stats.json --log -o stats.svg
    """
    fmt = FORMATS.get(os.path.splitext(output)[1].lower())
    if fmt is None:
        raise click.BadParameter(f"{output} does not end in {', '.join(FORMATS)}", param_hint="'-o'")
    check_output_folder(output)
    report = Report.read(stats_file)
    try:
        trace = read_trace(trace_file, report.channels) if trace_file else None
        if trace is not None:
            check_same_run(report, trace)
        figure = build_figure(report, trace, log=log)
        data = render(figure, fmt)
    except PlotError as exc:
        raise click.ClickException(printable(str(exc))) from None
    write_output(data, output)
