"""``bnstats export``: the statistics in a framework's own form."""

from __future__ import annotations

import warnings

import click

from ...output.exports import ConstantChannelWarning, formats, render
from ..options import Command
from ...output.reading import Report
from .common import check_stdout, friendly_errors, print_result


class FormatChoice(click.Choice):
    """The export formats as a click choice, read from the registry when first needed (plugins included),
    not when the command line is built."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        return tuple(formats())

    @choices.setter
    def choices(self, value):  # click.Choice.__init__ sets it: the registry is the list
        pass


class FormatOption(click.Option):
    """``--format``, whose help lists the formats known when the help is shown."""

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        return record and (record[0], record[1].replace("{formats}", ", ".join(formats())))


@click.command(cls=Command)
@click.argument("stats_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-f", "--format", "fmt", cls=FormatOption, type=FormatChoice(), required=True, metavar="FORMAT",
              help="Target framework or file format: {formats} (mmcv: mmpretrain's to_rgb; "
                   "mmdet: mmdet/mmseg/mmpose 3.x bgr_to_rgb; others: installed plugins).")
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
    report = Report.read(stats_file)
    if report.sampled:  # the estimate is what --sample is for; say it is one, on stderr (stdout stays the config)
        click.echo(f"warning: {stats_file} is a sample (--sample/--until-ci): these are estimates, "
                   "with the 95% intervals in its ci95", err=True)
    with warnings.catch_warnings(record=True) as said:  # a constant channel: on stderr, stdout stays the config
        warnings.simplefilter("always", ConstantChannelWarning)
        text = render(report, fmt, bgr=bgr, digits=digits)
    for warning in said:
        click.echo(f"warning: {stats_file}: {warning.message}", err=True)
    print_result(text)
