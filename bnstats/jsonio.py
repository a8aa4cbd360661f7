"""JSON in and out: bounded, strict reading; readable writing; atomic files.

Everything bnstats reads (results to merge or export, checkpoints) goes
through :func:`read_json`, which refuses what bnstats never writes — files
over a size cap, NaN and infinities, absurd nesting — with one line naming
the file. Everything it writes goes through :func:`to_json` (floats that read
back exactly, lists of numbers on one line) and, for files,
:func:`write_atomic`.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile

# An integer bnstats writes is a count (< 2**63) or an exact sum of powers of counted values (a 16-bit
# sum of squares over 2**63 pixels is ~2**95); 2**256 is far above all of them and still fits a float.
MAX_INT_DIGITS = 78


class ReportError(ValueError):
    """A file is not a bnstats result, or results cannot be combined."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is larger than any bnstats writes")
    return int(text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number bnstats writes")


def loads(text: str, source: str = "input"):
    """Parse JSON text strictly (no NaN, no infinities, no integer past :data:`MAX_INT_DIGITS` digits);
    one-line :class:`ReportError` otherwise."""
    try:
        return json.loads(text, parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{source} is not JSON: {exc}") from None
    except RecursionError:
        raise ReportError(f"{source} is not a bnstats file (nested too deeply)") from None
    except ValueError as exc:  # a NaN, an infinity, an integer too long to convert
        raise ReportError(f"{source} is not a bnstats file: {exc}") from None


def read_json(path: str, max_bytes: int | None = None):
    """Load a JSON file (at most ``max_bytes``, default :func:`json_limit`), with a one-line
    :class:`ReportError` for anything wrong with it."""
    max_bytes = max_bytes or json_limit()
    try:
        with open(path, "rb") as f:
            data = read_bounded(f, max_bytes)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ReportError(too_large(path, max_bytes))
    check_parse_cost(data, path, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not JSON (not even text)") from None
    return loads(text, path)


def json_limit() -> int:
    """The most bytes of JSON bnstats reads (``BNSTATS_MAX_JSON_BYTES``): parsing a list of small numbers
    takes ~6× its size in memory (256 MiB of ``[0,0,…]`` took 1.5 GiB and 23 s before it was refused)."""
    from . import limits

    return limits.current().json_bytes


def too_large(source: str, max_bytes: int) -> str:
    """The one-line refusal of a JSON input past :func:`json_limit`."""
    from . import limits

    return (f"{source} is larger than {max_bytes:,} bytes: not a file bnstats wrote, or raise the limit with "
            f"{limits.current().variable('json_bytes')}")


# bytes of memory json.loads takes per item, measured on CPython 3.11: a small number in a list, a key with
# its value in an object, an object or a list (empty ones, the worst case)
ITEM_COST, KEY_COST, CONTAINER_COST = 12, 170, 80


def check_parse_cost(data: bytes, source: str, max_bytes: int) -> None:
    """Refuse JSON whose parsed form would take more than 8 × ``max_bytes`` of memory (estimated from its
    commas, colons and brackets, before parsing): a few MiB of ``[{},{},…]`` would take gigabytes, while
    a result bnstats wrote is mostly numbers in a few lists."""
    cost = (ITEM_COST * data.count(b",") + KEY_COST * data.count(b":")
            + CONTAINER_COST * (data.count(b"{") + data.count(b"[")))
    if cost > 8 * max_bytes:
        from . import limits

        raise ReportError(f"{source} holds too many JSON items for its size (about {cost // 2**20:,} MiB once "
                          "parsed): not a file bnstats wrote, or raise the limit with "
                          f"{limits.current().variable('json_bytes')}")


def read_bounded(f, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes of the binary file ``f``, read in pieces: ``f.read(n)`` sets aside
    n bytes at once, 256 MiB for a checkpoint of one kilobyte."""
    chunks, total = [], 0
    while total <= max_bytes:
        chunk = f.read(min(1 << 20, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def to_json(value) -> str:
    """Pretty JSON text: objects indented, lists of numbers on one line.

    Floats are written so that they read back exactly. A NaN or an infinity
    (a statistic that overflowed) is a one-line :class:`ReportError` naming
    where it is: JSON has no such number, and writing null would hide it.
    """
    where = _non_finite(value, "")
    if where is not None:
        raise ReportError(f"the result's {where.lstrip('.')} is not a finite number (the data's values overflow "
                          "float64?): nothing was written")
    return _pretty(value, "") + "\n"


def _non_finite(value, at: str) -> str | None:
    """The path (``mean[0]``) of the first NaN or infinity in a JSON value, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else at
    if isinstance(value, dict):
        items = ((f"{at}.{k}", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{at}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for path, v in items if (found := _non_finite(v, path)) is not None), None)


def _pretty(value, indent: str) -> str:
    if isinstance(value, dict) and value:
        inner = indent + "  "
        items = (f"{inner}{json.dumps(k)}: {_pretty(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + _pretty(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, allow_nan=False, separators=(", ", ": "))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Paths that name an open file descriptor (``-o /dev/stdout``): written into,
# never replaced, whatever the descriptor is (a pipe, a terminal, a file).
_DESCRIPTOR_PATHS = ("/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/")


def writes_in_place(path: str) -> bool:
    """Whether :func:`write_atomic` writes into ``path`` rather than replacing it.

    True for what exists and is not a regular file once symlinks are
    followed (a device node, a FIFO) and for ``/dev/stdout``-style
    descriptor paths; False for regular files and new files.
    """
    if os.path.abspath(path).startswith(_DESCRIPTOR_PATHS):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def output_problem(path: str) -> str | None:
    """Why ``path`` cannot be written (one phrase), or None; checked before a long run."""
    try:
        if writes_in_place(path):
            if not os.path.exists(path):  # /dev/fd/N of a descriptor that is not open
                return "no such file or open descriptor"
            return None if os.access(path, os.W_OK) else "permission denied"
    except OSError as exc:  # a symlink loop, a path through a file
        return exc.strerror
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        return f"folder {folder} does not exist"
    if os.path.exists(target) and not os.access(target, os.W_OK):
        return "permission denied (the file is read-only)"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"permission denied (cannot create files in {folder})"
    return None


def write_atomic(path: str, text: str | bytes) -> None:
    """Write ``text`` (or bytes, e.g. a figure) to ``path`` so that readers see the old or the new file, never half.

    For a regular file (or a new one) the text goes to a temporary file in
    the same folder, is flushed to disk, and renamed over the file (an atomic
    step on POSIX and Windows); the file keeps its permissions and, where
    allowed, its owner. A symlink is followed: its target is replaced, the
    link stays. What cannot be replaced meaningfully — a device node, a FIFO,
    ``/dev/stdout`` — is opened and written into, as the shell's ``>`` would
    (a FIFO blocks until a reader opens it). Errors name ``path``, never the
    temporary file.
    """
    try:
        _write(path, text)
    except OSError as exc:
        if exc.filename == path or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, path) from None  # name the output, not the temp file


def _write(path: str, text: str | bytes) -> None:
    binary = isinstance(text, bytes)
    encoding = None if binary else "utf-8"
    if writes_in_place(path):
        # append: the same as write for devices and FIFOs; for /dev/stdout
        # redirected to a file it keeps what the shell's ">>" put there
        with open(path, "ab" if binary else "a", encoding=encoding) as f:
            f.write(text)
        return
    target = os.path.realpath(path)  # through symlinks: replace the target, keep the link
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=".bnstats-", suffix=".tmp", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)  # keep the owner (root rewriting a user's file)
                except PermissionError:
                    pass  # only root may give files away; the group alone may still fail
            # chmod after chown: chown clears set-id bits
            os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
