"""What the commands share: checks before a run, writing the result, one-line errors."""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import click

from ...running import interrupts
from ...running.cluster import DaskError
from ...running.compare import CompareError
from ...running.count import UnreadableImage
from ...decoding.options import DecodeError
from ...inputs.select import InputError
from ...jsonio import ReportError, output_problem, write_atomic
from ..progress import printable
from ...inputs.base import NoImagesError, SourceError
from ...statistics.formulas import LayoutError

EXIT_INTERRUPTED = 130  # Ctrl-C; any stop signal exits 128 + its number (interrupts.exit_code)


def check_output_folder(path: str | None) -> None:
    """Fail before the run, not after it, if ``path`` (``-o``, ``--checkpoint``) cannot be written."""
    if path:
        problem = output_problem(path)
        if problem:
            raise click.ClickException(f"cannot write {path}: {problem}")


def check_named(*options: tuple[str, str | None]) -> None:
    """An empty file name (``-o "$UNSET"``) is a usage error, not a quiet fall-back to stdout or to no file."""
    for option, path in options:
        if path is not None and not path.strip():
            raise click.UsageError(f"{option} names no file (an empty name)")


def check_regular_file(option: str, path: str | None) -> None:
    """``--trace`` and ``--checkpoint`` are read back, cut and replaced: a device or FIFO (``/dev/full``) cannot
    be, and would fail later without a file name. A usage error before the run."""
    if path == "-":  # -o - is stdout: this one would quietly be a file named "-" in the current folder
        raise click.UsageError(f"{option} cannot be standard output (it is read back and replaced): give a file "
                               "name (./- for a file named -)")
    if path and os.path.exists(path) and not os.path.isfile(path):
        raise click.UsageError(f"{option} {path} is not a regular file: give the path of a file to write")


def check_not_same_file(*options: tuple[str, str | None]) -> None:
    """Two of the ``(option, path)`` pairs (``-o``, ``--checkpoint``, ``--trace``, ``--report``) naming one
    file would destroy one with the other (``--checkpoint X -o X`` deletes the result as the finished
    checkpoint): a usage error."""
    named = [(option, path) for option, path in options if path]
    for i, (first, a) in enumerate(named):
        for second, b in named[i + 1 :]:
            same = os.path.realpath(a) == os.path.realpath(b)
            if not same and os.path.exists(a) and os.path.exists(b):
                same = os.path.samefile(a, b)  # hard links
            if same:
                raise click.UsageError(f"{second} and {first} name the same file ({a})")


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
            stop(exc)
        except OSError as exc:  # writing output or checkpoint: disk full, permissions
            name = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{name}{exc.strerror or exc}") from None
    return wrapper


def stop(exc: KeyboardInterrupt):
    """End bnstats for a stop signal: its one line on stderr, exit 128 + signal (130 for Ctrl-C)."""
    interrupts.exiting()  # more presses must not interrupt the exit
    click.echo(interrupts.stop_message(exc), err=True)
    sys.exit(interrupts.exit_code(exc))


@contextlib.contextmanager
def stops_cleanly():
    """A stop signal in the block ends bnstats as :func:`stop` does.

    Around click's own parsing: a Ctrl-C while options are converted (a brace
    pattern expanded, its paths checked) would otherwise reach click, which
    prints "Aborted!" and exits 1.
    """
    try:
        yield
    except KeyboardInterrupt as exc:
        stop(exc)


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
