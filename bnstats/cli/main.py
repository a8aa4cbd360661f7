"""The ``bnstats`` command line: a thin click layer over the library.

Each command lives in its own module under ``bnstats.cli.commands`` and parses
options (shared ones come from ``bnstats.cli.options``), calls the library and
prints. Library errors become one-line messages (exit 1), usage errors too
(exit 2), Ctrl-C exits 130 (SIGTERM 143, SIGHUP 129); no traceback. The
``bnstats`` command starts in ``bnstats/__main__.py``, which installs the
signal handlers before importing this module.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..running import interrupts
from ..statistics import kernels
from .commands.common import stops_cleanly, usage_error_line
from .options import Command

# command name -> "module:function" under bnstats.cli.commands, imported when the command runs (or --help
# lists it): `bnstats compute` does not pay for importing plot, recalibrate or compare
COMMANDS = {
    "compute": "compute:compute",
    "merge": "merge:merge",
    "compare": "compare:compare_command",
    "export": "export:export",
    "plot": "plot:plot",
    "recalibrate": "recalibrate:recalibrate",
}


class OneLineErrorsGroup(click.Group):
    """A click group whose usage errors are one line on stderr (exit 2).

    Runs click in non-standalone mode and does what standalone mode would,
    except that a :class:`click.UsageError` is printed by :func:`usage_error_line`.
    """

    command_class = Command  # subcommands' usage errors know their context

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMANDS:
            module, function = COMMANDS[name].split(":")
            with interrupts.held():  # a signal during the import stops bnstats after it, not inside it
                command = getattr(importlib.import_module(f".commands.{module}", __package__), function)
            self.add_command(command, name)
        return super().get_command(ctx, name)

    def make_context(self, info_name, args, parent=None, **extra):
        with stops_cleanly():  # parsing the group's options
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx):
        with stops_cleanly():  # the subcommand's parsing (brace patterns expanded, paths checked), then its run
            return super().invoke(ctx)

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


@click.group(cls=OneLineErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnstats",
                      message=f"%(prog)s, version %(version)s (counting kernel: {kernels.ACTIVE})")
def main():
    """Exact per-channel image statistics for input normalization."""

