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
import tempfile

MAX_JSON_BYTES = 256 * 2**20  # far above any result or checkpoint bnstats writes


class ReportError(ValueError):
    """A file is not a bnstats result, or results cannot be combined."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number bnstats writes")


def loads(text: str, source: str = "input"):
    """Parse JSON text strictly (no NaN, no infinities); one-line :class:`ReportError` otherwise."""
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{source} is not JSON: {exc}") from None
    except RecursionError:
        raise ReportError(f"{source} is not a bnstats file (nested too deeply)") from None
    except ValueError as exc:  # a NaN, an infinity, an integer too long to convert
        raise ReportError(f"{source} is not a bnstats file: {exc}") from None


def read_json(path: str, max_bytes: int | None = None):
    """Load a JSON file (at most ``max_bytes``, default :data:`MAX_JSON_BYTES`), with a one-line
    :class:`ReportError` for anything wrong with it."""
    max_bytes = max_bytes or MAX_JSON_BYTES
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ReportError(f"{path} is larger than {max_bytes // 2**20} MiB: not a file bnstats wrote")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not JSON (not even text)") from None
    return loads(text, path)


def to_json(value) -> str:
    """Pretty JSON text: objects indented, lists of numbers on one line.

    Floats are written so that they read back exactly.
    """
    return _pretty(value, "") + "\n"


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


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half.

    The text goes to a temporary file in the same folder, is flushed to disk,
    and renamed over ``path`` (an atomic step on POSIX and Windows).
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o777  # keep an existing file's permissions
    except FileNotFoundError:
        mode = 0o666 & ~_umask()  # a new file gets what open() would give it
    fd, tmp = tempfile.mkstemp(prefix=".bnstats-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
