"""``python -m bnstats`` and the ``bnstats`` command: the CLI, with stop signals handled from the start.

Importing the CLI (numpy, Pillow, click) takes a good part of a second; a
Ctrl-C, SIGTERM or SIGHUP meanwhile must end bnstats as one during a run
does: one line, exit 128 + signal number, no traceback. So this module and
``bnstats/__init__.py`` import nothing heavy, the handlers are installed
first, and the CLI is imported inside a try.
"""

import os
import sys


def main() -> None:
    """Run the ``bnstats`` command line (the console script)."""
    # numpy's OpenBLAS starts a thread per core (it spins for ~0.1 s of CPU at start-up, beside the workers on a
    # small machine) and each worker process would start its own: bnstats runs in parallel by processes, and
    # its few matrix products are small. Set before numpy is imported; a value the user set stays.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if sys.stderr is None:  # started with stderr closed (2>&-): warnings and progress go nowhere, the run goes on
        sys.stderr = open(os.devnull, "w")
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
