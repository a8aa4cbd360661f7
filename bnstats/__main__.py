"""``python -m bnstats`` and the ``bnstats`` command: the CLI, with stop signals handled from the start.

Importing the CLI (numpy, Pillow, click) takes a good part of a second; a
Ctrl-C, SIGTERM or SIGHUP meanwhile must end bnstats as one during a run
does: one line, exit 128 + signal number, no traceback. So this module and
``bnstats/__init__.py`` import nothing heavy, the handlers are installed
first, and the CLI is imported inside a try.
"""

import sys


def main() -> None:
    """Run the ``bnstats`` command line (the console script)."""
    from .running import interrupts

    interrupts.install()
    try:
        with interrupts.held():  # numpy, Pillow, click: a signal now stops us once the imports are done
            from .cli.main import main as cli
    except KeyboardInterrupt as exc:  # our handler already ignores further signals
        sys.stderr.write(interrupts.stop_message(exc) + "\n")
        sys.exit(interrupts.exit_code(exc))
    cli()


if __name__ == "__main__":
    main()
