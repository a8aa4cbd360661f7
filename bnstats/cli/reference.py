"""The command-line reference, ``docs/cli.md``, generated from the click commands themselves.

Every command's ``--help``, at a fixed width (whatever the terminal or
``COLUMNS`` say), in one Markdown page::

    python -m bnstats.cli.reference > docs/cli.md

``tests/test_cli_reference.py`` regenerates the page and fails when the file
differs, naming this command: help texts and the docs cannot drift. The page
documents bnstats as installed: run it where no export plugin is installed
(the ``--format`` help lists the formats the registry knows).
"""

from __future__ import annotations

import sys

import click

from .main import main

WIDTH = 78  # columns of the help text: what click prints on any terminal of 80 columns or more (80 - 2)
COMMAND = "python -m bnstats.cli.reference > docs/cli.md"

HEADER = f"""# Command-line reference

<!-- Generated from the commands' --help by `{COMMAND}`: do not edit by hand.
     tests/test_cli_reference.py fails when this page is stale. -->

Every command's `--help`, as `bnstats COMMAND --help` prints it. How the
options fit together: [statistics](statistics.md), [inputs](inputs.md),
[output files and exit codes](output.md), [scaling out](scaling-out.md).
"""


def help_text(command: click.Command, name: str, parent: click.Context | None = None) -> str:
    """``command``'s ``--help`` as ``bnstats ... NAME --help`` prints it, :data:`WIDTH` columns wide."""
    ctx = click.Context(command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH)
    return command.get_help(ctx)


def reference() -> str:
    """The whole page: the group's help, then each command's, in the order ``bnstats --help`` lists them."""
    group = click.Context(main, info_name="bnstats", terminal_width=WIDTH, max_content_width=WIDTH,
                          **main.context_settings)  # -h beside --help, as the command line has it
    sections = [HEADER, "## bnstats\n", _block(main.get_help(group))]
    for name in main.list_commands(group):
        sections += [f"## bnstats {name}\n", _block(help_text(main.get_command(group, name), name, group))]
    return "\n".join(sections)


def _block(text: str) -> str:
    return f"```text\n{text.rstrip()}\n```\n"


def main_entry() -> None:
    """Print the page (``python -m bnstats.cli.reference``)."""
    sys.stdout.write(reference())


if __name__ == "__main__":
    main_entry()
