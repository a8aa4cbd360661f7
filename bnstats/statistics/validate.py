"""Checks of values read back from JSON (reports, checkpoints, observer and layer states).

Every reader of a saved state validates each field with these before it
trusts it: a damaged or edited file is a ``ValueError`` naming the field,
never a wrong number or a traceback further on.
"""
from __future__ import annotations

import math

__all__ = ["integer", "floats"]


def integer(value, field: str, limit: int | None = None) -> int:
    """``value`` if it is a non-negative integer (at most ``limit``), else ValueError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (limit is not None and value > limit):
        raise ValueError(f"{field} must be a non-negative integer")
    return value


def floats(values, field: str, length: int | None = None) -> list[float]:
    """``values`` as floats if it is a list (of ``length``) of finite numbers, else ValueError naming ``field``."""
    if not isinstance(values, list) or (length is not None and len(values) != length):
        raise ValueError(f"{field} must be a list of {length or 'some'} numbers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{field} must hold finite numbers")
    return [float(v) for v in values]
