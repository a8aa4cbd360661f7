"""``bnstats merge``: combine partial results exactly."""

from __future__ import annotations

import click

from ...jsonio import to_json
from ..options import Command, output_opt
from ...output.merge import merge_reports, missing_items
from ...output.reading import Report
from ..summary import show as show_summary, summary_option
from .common import check_output_folder, check_stdout, friendly_errors, write_output


@click.command(cls=Command)
@click.argument("stats_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@output_opt
@summary_option(quiet=False)
@click.option("--complete", is_flag=True, help="Fail unless the parts cover their whole file lists.")
@friendly_errors
def merge(stats_files, output, summary, complete):
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
    show_summary(merged, output, summary)
