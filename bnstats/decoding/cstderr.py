"""What C decoders print on file descriptor 2 (libtiff, libpng through OpenCV), caught instead of shown.

Those libraries write their warnings and errors straight to the process's
stderr, past ``--quiet`` and outside the one-line messages. :func:`captured`
sends descriptor 2 to a per-thread buffer for a block and hands back what was
written, for the caller to make it part of an error or a note.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import tempfile
import threading

_buffers = threading.local()  # one reusable temporary file per thread and process: not one per image
READ_AT_MOST = 4096  # of what was said, enough for a first line


@contextlib.contextmanager
def captured():
    """Descriptor 2 goes to a buffer inside; yields a function that, after the block, returns what was said.

    Another thread's writes to descriptor 2 meanwhile land in the buffer too: used around one decode, while
    bnstats itself prints nothing. Descriptor 2 is the process's: only the main thread redirects it (tasks
    on Dask's threads would put each other's buffers back), and a block inside another (a 16-bit page read
    inside a TIFF's decode) leaves what is said to the outer one, whose buffer it would wipe.
    """
    if threading.current_thread() is not threading.main_thread() or getattr(_buffers, "inside", False):
        yield lambda: ""
        return
    _buffers.inside = True
    try:
        with _redirected() as said:
            yield said
    finally:
        _buffers.inside = False


@contextlib.contextmanager
def _redirected():
    buffer = getattr(_buffers, "file", None)
    if buffer is None or _buffers.pid != os.getpid():  # a forked worker's own: one file shared with its parent
        buffer = _buffers.file = tempfile.TemporaryFile()  # and siblings would mix (and truncate) what each says
        _buffers.pid = os.getpid()
        atexit.register(buffer.close)  # not left to the interpreter's teardown (a ResourceWarning)
    buffer.seek(0)
    buffer.truncate()
    text = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (closed: 2>&-), or a closed sys.stderr: nothing to catch
        yield lambda: ""
        return
    try:
        os.dup2(buffer.fileno(), 2)
        yield lambda: "".join(text)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if buffer.tell():
            buffer.seek(0)
            text.append(buffer.read(READ_AT_MOST).decode("utf-8", "replace"))


def first_line(said: str) -> str:
    """The first non-empty line of what a library said, stripped ("" for nothing)."""
    return next((line.strip() for line in said.splitlines() if line.strip()), "")


def as_note(said: str) -> str:
    """What a library said while an image was counted, as a note (numbers blanked: each kind said once)."""
    return f"the decoder said: {re.sub(r'[0-9]+', 'N', first_line(said))} (the image was counted)"
