"""Stop signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP all stop a run the same way.

Schedulers, ``docker stop``, Kubernetes and preemptible VMs send SIGTERM; a
closed terminal sends SIGHUP. Each is handled like Ctrl-C: the run stops at
the next partition boundary (:func:`deferred`), saves its checkpoint, prints
one line and exits ``128 + signal number`` (130, 143, 129).

A boundary may never come: a read from a server that stopped sending
blocks inside fsspec's event loop thread, and a worker may wait on one.
So a stop signal has two deadlines. :data:`STOP_GRACE` seconds after it,
if the run is still between boundaries (and not merging), the main thread
is interrupted where it waits (:class:`StopWaiting`): the engine drops the
partition it was counting and stops as at a boundary, checkpoint saved.
And once bnstats has decided to exit, :data:`EXIT_GRACE` seconds later a
process still alive (its exit waiting on a thread stuck in a read) prints
the one line if it has not, runs the :func:`on_forced_exit` callbacks
(stop the workers) and ends with ``os._exit``.

This module imports nothing heavy: the ``bnstats`` entry point
(:mod:`bnstats.__main__`) installs its handlers before importing numpy,
Pillow and click.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


STOP_GRACE = 0.4  # seconds a stop signal waits for a partition boundary before the wait is interrupted
EXIT_GRACE = 0.5  # seconds an exit decided on a stop signal may take before the process is ended
UNWIND_GRACE = 0.6  # seconds from that interruption to the exit (the checkpoint is saved meanwhile)


class Stopped(KeyboardInterrupt):
    """A stop signal, raised as a KeyboardInterrupt so that every Ctrl-C path handles it too."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal_name(signum))
        self.signum = signum


class StopWaiting(Stopped):
    """Raised in the main thread :data:`STOP_GRACE` seconds after a deferred stop signal, where it waits (a read,
    a worker's result), never inside :func:`critical`: what was merged so far is consistent."""


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


_announced: list = []  # the signal whose line was asked for (and printed by the caller): a forced exit keeps to it


def stop_message(exc: BaseException) -> str:
    """The one line printed when a stop signal ends bnstats (callers print it: it is then not printed again)."""
    _announced[:] = [signal_of(exc)]
    return _message(signal_of(exc))


def _message(signum: int) -> str:
    return "bnstats: interrupted" if signum == signal.SIGINT else f"bnstats: stopped by {signal_name(signum)}"


def install() -> None:
    """Make every stop signal raise :class:`Stopped` (the command line's handlers).

    The first signal raises; further ones are ignored, so a clean exit that
    is already under way is neither turned into a traceback nor into another
    exit code by pressing Ctrl-C again. A signal this process was started
    ignoring stays ignored: ``nohup bnstats ...`` survives a closed terminal,
    and a job a script starts with ``&`` ignores Ctrl-C, as the shell meant.
    """
    global _installed
    _installed = True
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _stop)


def _stop(signum, frame):
    exiting(signum)
    raise Stopped(signum)


def exiting(signum: int | None = None) -> None:
    """bnstats is exiting: ignore further stop signals (the first one decided the exit code).

    Only where :func:`install` put the command line's handlers: a program
    using bnstats as a library keeps its own. With the signal ``signum``
    that decided it, the exit must also happen: :data:`EXIT_GRACE` seconds
    from now the process ends, whatever its threads wait on.
    """
    if threading.current_thread() is threading.main_thread():
        ours = False
        for number in STOP_SIGNALS:
            if signal.getsignal(number) is _stop:
                signal.signal(number, signal.SIG_IGN)
                ours = True
        if (ours or _installed) and signum is not None:
            _arm_exit(signum)


_installed = False  # install() ran: this process is the command line, whose exit a stuck thread must not hold
_exit_at: list = []  # [deadline (monotonic), signal] once an exit is armed
_forced_exit_callbacks: list = []


def _arm_exit(signum: int, grace: float = EXIT_GRACE) -> None:
    """End the process ``grace`` seconds from now (or at an earlier deadline armed before), with the signal's
    exit code, if it is still alive then."""
    deadline = time.monotonic() + grace
    if _exit_at:
        _exit_at[0] = min(_exit_at[0], deadline)
        return
    _exit_at[:] = [deadline, signum]
    threading.Thread(target=_exit_later, name="bnstats-exit", daemon=True).start()


def _exit_later() -> None:
    while time.monotonic() < _exit_at[0]:
        time.sleep(min(0.05, max(0.0, _exit_at[0] - time.monotonic())))
    force_exit(_exit_at[1])


def force_exit(signum: int) -> None:
    """End the process now: the :func:`on_forced_exit` callbacks, the one line (unless printed), ``os._exit``.

    For a process whose exit waits on a thread that waits on a server: Python joins such threads before it
    exits, and nothing can interrupt them. A critical block under way (a checkpoint save) ends first.
    """
    deadline = time.monotonic() + CRITICAL_WAIT
    while _critical[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    for callback in list(_forced_exit_callbacks):
        try:
            callback()
        except BaseException:  # noqa: BLE001 - the exit matters more than any cleanup
            pass
    try:
        if _announced:  # the line printed decides the code (a second signal may have made it)
            signum = _announced[0]
        else:
            sys.stderr.write(_message(signum) + "\n")
        sys.stderr.flush()
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - a closed pipe: exit all the same
        pass
    os._exit(128 + signum)


@contextlib.contextmanager
def on_forced_exit(callback):
    """Within the block, a forced exit (:func:`force_exit`) calls ``callback()`` first (e.g. kill the workers)."""
    _forced_exit_callbacks.append(callback)
    try:
        yield
    finally:
        _forced_exit_callbacks.remove(callback)


_critical = [0]  # how many critical blocks are open (the main thread's, in the command line)
CRITICAL_WAIT = 10.0  # seconds a forced exit waits for a critical block (a checkpoint being saved) to end


@contextlib.contextmanager
def critical():
    """A block that a stop never interrupts half-way (a merge, a checkpoint save): :class:`StopWaiting` and a
    forced exit wait until it ends."""
    _critical[0] += 1
    try:
        yield
    finally:
        _critical[0] -= 1


@contextlib.contextmanager
def deferred(second_raises: bool = True, interrupt_waits: bool = False):
    """Record stop signals instead of acting on them; yields ``first()``, the first signal or None.

    A KeyboardInterrupt raised in the middle of a merge would leave the tally
    half-updated; the engine checks ``first()`` between partitions instead, so
    every partial state stays consistent and checkpointable. With
    ``second_raises`` a second signal raises :class:`Stopped` at once (the
    user insists); without, all are only recorded (around a checkpoint save,
    which must not stop half-way). With ``interrupt_waits``, a first signal
    not acted on within :data:`STOP_GRACE` seconds raises :class:`StopWaiting`
    in the main thread wherever it waits, outside :func:`critical` blocks
    (the engine's loop, whose boundaries may never come). Outside the main
    thread signals cannot be handled, and nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    hits: list[int] = []
    state = {"open": True, "force": False}

    def handler(signum, frame):
        if state["force"]:  # the watchdog's own signal to this thread (see _interrupt_later)
            state["force"] = False
            if _critical[0]:
                return  # a merge: the watchdog tries again in a moment, or the boundary comes first
            state["raised"] = True  # once: the cleanup on the way out must not be interrupted in turn
            raise StopWaiting(hits[0])
        hits.append(signum)
        if second_raises and len(hits) > 1:
            raise Stopped(signum)
        if interrupt_waits and len(hits) == 1:
            threading.Thread(target=_interrupt_later, args=(state, hits[0], threading.main_thread().ident),
                             name="bnstats-stop", daemon=True).start()

    # a signal ignored (nohup's hangup, a background job's Ctrl-C, or presses after an exit was decided) stays so
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    # what must not stop half-way (a checkpoint save) must not be cut by a forced exit either
    guard = contextlib.nullcontext() if second_raises else critical()
    try:
        with guard:
            yield lambda: hits[0] if hits else None
    finally:
        state["open"] = False
        for signum, action in previous.items():
            # None: a handler installed outside Python; the default is the nearest we can restore
            signal.signal(signum, signal.SIG_DFL if action is None else action)
        if hits and interrupt_waits and _installed:  # stopping: a thread stuck in a read must not hold the exit
            _arm_exit(hits[0], UNWIND_GRACE)


def _interrupt_later(state: dict, signum: int, main_thread: int) -> None:
    """After :data:`STOP_GRACE` seconds, while the deferred block is still open, send ``signum`` to the main
    thread once more, marked as the watchdog's: a blocked wait there (a lock, a socket) returns with EINTR and
    the handler raises :class:`StopWaiting`. Inside a critical block (or if the raise got lost) it tries again
    a moment later."""
    time.sleep(STOP_GRACE)
    while state["open"] and not state.get("raised"):
        if not state["force"]:
            state["force"] = True
            try:
                signal.pthread_kill(main_thread, signum)
            except (OSError, ValueError):  # the main thread is gone
                return
            if _installed:  # the command line: its unwinding may wait on a stuck thread too (a pool's exit)
                _arm_exit(signum, UNWIND_GRACE)
        time.sleep(0.1)


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
        exiting(first())
        raise Stopped(first())
