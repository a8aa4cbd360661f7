"""Stop signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP all stop a run the same way.

Schedulers, ``docker stop``, Kubernetes and preemptible VMs send SIGTERM; a
closed terminal sends SIGHUP. Each is handled like Ctrl-C: the run stops at
the next partition boundary (:func:`deferred`), saves its checkpoint, prints
one line and exits ``128 + signal number`` (130, 143, 129).

This module imports nothing heavy: the ``bnstats`` entry point
(:mod:`bnstats.__main__`) installs its handlers before importing numpy,
Pillow and click.
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """A stop signal, raised as a KeyboardInterrupt so that every Ctrl-C path handles it too."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (SIGINT unless it says otherwise)."""
    return getattr(exc, "signum", None) or signal.SIGINT


def exit_code(exc: BaseException) -> int:
    """The shell convention for a process stopped by a signal: 128 + its number (130 for Ctrl-C)."""
    return 128 + signal_of(exc)


def stop_message(exc: BaseException) -> str:
    """The one line printed when a stop signal ends bnstats."""
    signum = signal_of(exc)
    return "bnstats: interrupted" if signum == signal.SIGINT else f"bnstats: stopped by {signal_name(signum)}"


def install() -> None:
    """Make every stop signal raise :class:`Stopped` (the command line's handlers).

    The first signal raises; further ones are ignored, so a clean exit that
    is already under way is neither turned into a traceback nor into another
    exit code by pressing Ctrl-C again.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)


def _stop(signum, frame):
    exiting()
    raise Stopped(signum)


def exiting() -> None:
    """bnstats is exiting: ignore further stop signals (the first one decided the exit code).

    Only where :func:`install` put the command line's handlers: a program
    using bnstats as a library keeps its own.
    """
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is _stop:
                signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def deferred(second_raises: bool = True):
    """Record stop signals instead of acting on them; yields ``first()``, the first signal or None.

    A KeyboardInterrupt raised in the middle of a merge would leave the tally
    half-updated; the engine checks ``first()`` between partitions instead, so
    every partial state stays consistent and checkpointable. With
    ``second_raises`` a second signal raises :class:`Stopped` at once (the
    user insists); without, all are only recorded (around a checkpoint save,
    which must not stop half-way). Outside the main thread signals cannot be
    handled, and nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    hits: list[int] = []

    def handler(signum, frame):
        hits.append(signum)
        if second_raises and len(hits) > 1:
            raise Stopped(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield lambda: hits[0] if hits else None
    finally:
        for signum, action in previous.items():
            # None: a handler installed outside Python; the default is the nearest we can restore
            signal.signal(signum, signal.SIG_DFL if action is None else action)


@contextlib.contextmanager
def held():
    """Hold stop signals while importing: record them, and raise :class:`Stopped` once the block ends.

    A signal that raises in the middle of Python's import machinery can land
    in one of its weak-reference callbacks, where an exception cannot
    propagate and Python prints "Exception ignored … Traceback" instead of
    stopping. Held, the signal stops bnstats a moment later, cleanly.
    """
    with deferred(second_raises=False) as first:
        yield
    if first() is not None:
        exiting()
        raise Stopped(first())
