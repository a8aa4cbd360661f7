"""What shapes the pixels that get counted: :class:`DecodeOptions`, and :class:`DecodeError`.

The options (``--mode``, ``--resize``, ``--center-crop``, ``--interpolation``,
``--exif-transpose``, ``--ignore-value``) as one frozen, picklable value that
results and checkpoints record (:meth:`DecodeOptions.to_dict`); a
:class:`DecodeError` is a problem with them or with the environment (a
missing extra), which stops the run where an unreadable file is skipped.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, fields

from .transforms import INTERPOLATIONS

MODES = ("rgb", "gray", "native")


class DecodeError(Exception):
    """A problem with the run's settings or environment, not with one file.

    Unlike an unreadable file (skipped and listed), this stops the run.
    """


@dataclass(frozen=True)
class DecodeOptions:
    """Everything that shapes the pixels that get counted.

    ``resize`` is ``None``, an int (torchvision ``Resize(N)``: shorter side
    to N) or a ``(width, height)`` pair (fixed size); ``center_crop`` is
    ``None``, an int or a ``(width, height)`` pair. ``ignore_value``: pixels
    equal to it in every band are not counted; a tuple gives one value per
    band (a pixel equal to them band by band is not counted: a nodata colour).
    """

    mode: str = "rgb"
    resize: int | tuple[int, int] | None = None
    center_crop: int | tuple[int, int] | None = None
    interpolation: str = "bilinear"
    exif_transpose: bool = False
    ignore_value: float | tuple[float, ...] | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}")
        for name in ("resize", "center_crop"):
            value = getattr(self, name)
            sizes = value if isinstance(value, tuple) and len(value) == 2 else (value,)
            if value is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                             for v in sizes):
                raise ValueError(f"{name} must be a positive integer or a (width, height) pair, not {value!r}")
        if not isinstance(self.exif_transpose, bool):
            raise ValueError("exif_transpose must be true or false")
        values = self.ignore_value if isinstance(self.ignore_value, tuple) else (self.ignore_value,)
        if self.ignore_value is not None and not (values and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise ValueError(f"ignore_value must be a finite number or a list of them, not {self.ignore_value!r}")

    def to_dict(self) -> dict:
        """The settings as JSON-ready builtins (how results record them); a size pair is written
        ``{"width": W, "height": H}``, so that no reader has to guess the order."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["resize"], d["center_crop"] = _size_dict(self.resize), _size_dict(self.center_crop)
        if isinstance(self.ignore_value, tuple):  # one value per band: a JSON list
            d["ignore_value"] = list(self.ignore_value)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DecodeOptions":
        """The options recorded by :meth:`to_dict` (or by earlier versions, which wrote a size pair as the
        list ``[width, height]``); ValueError or TypeError for anything else."""
        d = dict(d)
        d["resize"] = _size_pair(d.get("resize"))
        d["center_crop"] = _size_pair(d.get("center_crop"))
        if isinstance(d.get("ignore_value"), list):  # one value per band, as JSON writes a tuple
            d["ignore_value"] = tuple(d["ignore_value"])
        return cls(**d)


def _size_dict(value):
    """A ``(width, height)`` pair as ``{"width", "height"}``; anything else as it is."""
    return {"width": value[0], "height": value[1]} if isinstance(value, tuple) else value


def _size_pair(value):
    """A size as :class:`DecodeOptions` holds it, from ``{"width", "height"}`` or ``[width, height]``."""
    if isinstance(value, dict):
        if set(value) != {"width", "height"}:
            raise ValueError(f"a size must have keys width and height, not {sorted(value)}")
        return (value["width"], value["height"])
    return tuple(value) if isinstance(value, list) else value


def differences(ours: dict, theirs: dict) -> list[str]:
    """``"key: theirs vs ours"`` for every setting that differs between two settings dicts."""
    return [f"{k}: {theirs.get(k)!r} vs {ours.get(k)!r}" for k in {**ours, **theirs} if ours.get(k) != theirs.get(k)]


def as_stored(options: DecodeOptions) -> bool:
    """No EXIF transpose, resize or crop: the pixels as stored are the ones counted (what a fast decoder gives)."""
    return not (options.exif_transpose or options.resize is not None or options.center_crop is not None)
