"""A fake statistic with a setting: how many pixels of each channel are at least ``level`` (exact counts)."""

import numpy as np

from bnstats.statistics.base import Statistic


class Above(Statistic):
    """Per channel, the number of pixels whose value is at least ``level`` (integer data)."""

    name = "above"
    option = "level"

    def __init__(self, level: int = 128):
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 65535:
            raise ValueError(f"level must be an integer in 0..65535, not {level!r}")
        self.level = level
        self.counts = None

    def settings(self):
        return {"level": self.level}

    def add_image(self, image):
        histogram = image.histogram()
        if histogram is None:
            raise ValueError("above counts integer pixels only")
        self._add(histogram[:, self.level - getattr(image, "offset", 0):].sum(axis=1).tolist())

    def _add(self, counts):
        self.counts = list(counts) if self.counts is None else [a + b for a, b in zip(self.counts, counts)]

    def merge(self, other):
        if other.level != self.level:
            raise ValueError(f"cannot merge counts above {other.level} into counts above {self.level}")
        if other.counts is not None:
            self._add(other.counts)
        return self

    def report(self):
        return {"above": {"level": self.level, "counts": self.counts or []}}

    def to_dict(self):
        return {"counts": self.counts}

    @classmethod
    def from_dict(cls, d):
        out = cls(**d.get("settings", {}))
        counts = d.get("counts")
        if counts is not None and not (isinstance(counts, list) and all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)):
            raise ValueError("above counts must be a list of non-negative integers")
        out.counts = counts
        return out


def reference(pixels: np.ndarray, level: int) -> list[int]:
    """What :class:`Above` counts for an ``(..., C)`` array: the test's numpy reference."""
    flat = pixels.reshape(-1, pixels.shape[-1])
    return (flat >= level).sum(axis=0).tolist()
