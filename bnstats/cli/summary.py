"""The summary for people: a few lines on stderr after ``compute`` and ``merge``.

The JSON is for programs; a person at a terminal, or one who sent the JSON
to a file with ``-o``, wants the numbers at a glance::

    bnstats: 36 images, 0 skipped -> stats.json
      channel  mean     std
      R        0.5745   0.2382
      G        0.3858   0.2285
      B        0.2950   0.2308

The rule (:func:`wanted`): shown when stdout is a terminal or ``-o`` was
given, unless ``-q``; ``--summary`` shows it anyway and ``--no-summary``
never. It always goes to stderr: piped JSON stays exactly the JSON.
"""

from __future__ import annotations

import sys

import click

from .options import option
from .progress import printable


def summary_option(quiet: bool = True):
    """``--summary/--no-summary`` (None when neither is given); ``quiet``: the command has ``-q``, which
    silences the summary."""
    unless = ", unless -q" if quiet else ""
    return option("--summary/--no-summary", group="Output", default=None,
                  help="Print a short table (images, skipped, mean and std per channel, the output file) to "
                       f"stderr [default: when stdout is a terminal or with -o{unless}].")


def stdout_is_terminal() -> bool:
    """Whether standard output is a terminal (the JSON is then read by a person)."""
    stream = sys.stdout
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: a program reads it
        return False


def wanted(summary: bool | None, quiet: bool, output: str | None) -> bool:
    """Whether to print the summary: ``--summary``/``--no-summary`` if given, else when stdout is a terminal
    or the JSON went to a file, unless ``-q``."""
    if summary is not None:
        return summary
    return not quiet and (bool(output) or stdout_is_terminal())


def _number(value) -> str:
    """Four significant digits, trailing zeros kept so that the column lines up (``-`` for no pixels)."""
    return "-" if value is None else f"{value:#.4g}"


def table(report: dict, output: str | None) -> str:
    """The summary's lines for a ``compute``/``merge`` report whose JSON went to ``output`` (None: stdout)."""
    skipped = len(report.get("skipped", []))
    where = f" -> {printable(output)}" if output else ""
    lines = [f"bnstats: {report['images']:,} images, {skipped:,} skipped{where}"]
    channels = report.get("channels") or []
    if channels:
        mean, std = report["mean"], report["std"]
        name_width = max(len("channel"), *(len(printable(c)) for c in channels))
        rows = [("channel", "mean", "std"), *((printable(c), _number(m), _number(s))
                                              for c, m, s in zip(channels, mean, std))]
        value_width = max(len(row[1]) for row in rows) + 2
        lines += [f"  {c:<{name_width}}  {m:<{value_width}} {s}" for c, m, s in rows]
    if "ci95" in report:
        lines.append("  (a sample: estimates, with their 95% intervals in the JSON's ci95)")
    return "\n".join(lines)


def show(report: dict, output: str | None, summary: bool | None, quiet: bool = False) -> None:
    """Print the summary to stderr if :func:`wanted`."""
    if wanted(summary, quiet, output):
        click.echo(table(report, output), err=True)
