"""How the running estimates move, image by image: ``--trace FILE.csv``.

An observer (``bnstats.observers``) that, after every K images (in item
order, or in the sampled order), appends one CSV row: the images and pixels
counted so far, and per channel the running mean and std of everything
counted so far — exact, from integer moments, in unit scale — then, when a
BatchNorm layer is simulated, its ``running_mean`` and ``running_var`` at
that point, and when the run is sampled, the 95% half-widths of the mean and
std. The header::

    images,pixels,mean_R,mean_G,mean_B,std_R,...[,bn_running_mean_R,...,bn_running_var_R,...]
    [,ci95_mean_R,...,ci95_std_R,...]

The file is written as rows come (constant memory) and, like every
observer, checkpointed: a resumed run cuts it back to the rows of the
checkpoint and goes on, so the trace is the same for any ``-j`` and across
resume. A last row is written for the final image.
"""

from __future__ import annotations

import math
import os

from .observers import Observer, register_observer
from .stats import ExactMoments, MomentState, exact_mean_var, moments_from_dict, moments_to_dict

MAX_ROWS = 1000  # --trace-every defaults to the K that keeps the trace under this many rows


def default_every(images: int) -> int:
    """Images between rows so that a trace of ``images`` has at most :data:`MAX_ROWS` rows."""
    return max(1, -(-images // MAX_ROWS))


@register_observer
class Trace(Observer):
    """Running statistics every ``every`` images, appended to ``path`` (see the module docstring).

    ``bands`` names the columns; ``batchnorm`` and ``sampler`` are the run's
    other observers whose state goes into each row (fed before this one).
    """

    name = "trace"

    def __init__(self, path: str, every: int, bands=None, batchnorm=None, sampler=None):
        # bands, batchnorm and sampler also arrive through describe() and link()
        if every < 1:
            raise ValueError("--trace-every must be at least 1")
        self.path, self.every = path, every
        self.bands = list(bands) if bands else None
        self.batchnorm, self.sampler = batchnorm, sampler
        self.images, self.running, self.max_value = 0, None, None
        self.rows, self.size = 0, 0  # rows and bytes written so far
        self.last_row_at = 0

    def add(self, moments, max_value) -> None:
        self.max_value = max_value
        self.images += 1
        self.running = moments if self.running is None else type(moments).combine([self.running, moments])
        if self.images % self.every == 0:
            self._write_row()

    def finish(self) -> None:
        if self.images and self.last_row_at != self.images:
            self._write_row()

    def describe(self, bands, max_value) -> None:
        if self.bands is None and bands:
            self.bands = list(bands)

    def link(self, observers) -> None:
        by_name = {o.name: o for o in observers}
        self.batchnorm, self.sampler = by_name.get("bn"), by_name.get("ci95")

    def _columns(self, channels: int) -> list[str]:
        bands = self.bands if self.bands and len(self.bands) == channels else [f"B{i + 1}" for i in range(channels)]
        names = ["images", "pixels", *(f"mean_{b}" for b in bands), *(f"std_{b}" for b in bands)]
        if self.batchnorm is not None:
            names += [f"bn_running_mean_{b}" for b in bands] + [f"bn_running_var_{b}" for b in bands]
        if self.sampler is not None:
            names += [f"ci95_mean_{b}" for b in bands] + [f"ci95_std_{b}" for b in bands]
        return names

    def _write_row(self) -> None:
        mean, std = self._running_mean_std()
        channels = len(mean)
        values = [self.images, self.running.n, *mean, *std]
        if self.batchnorm is not None:
            bn = self.batchnorm.running_mean, self.batchnorm.running_var
            values += (bn[0] or [""] * channels) + (bn[1] or [""] * channels)
        if self.sampler is not None:
            widths = self.sampler.half_widths() or {"mean": [None] * channels, "std": [None] * channels}
            values += widths["mean"] + widths["std"]
        line = ",".join(_cell(v) for v in values) + "\n"
        if self.rows == 0:
            line = ",".join(self._columns(channels)) + "\n" + line
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
        self.rows += 1
        self.size += len(line.encode("utf-8"))
        self.last_row_at = self.images

    def _running_mean_std(self) -> tuple[list[float], list[float]]:
        scale = self.max_value or 1
        running = self.running
        if isinstance(running, ExactMoments):
            if running.n == 0:
                return [math.nan] * len(running.sums), [math.nan] * len(running.sums)
            pairs = [exact_mean_var(running.n, s, q) for s, q in zip(running.sums, running.squares)]
            return [float(m / scale) for m, _ in pairs], [math.sqrt(v / scale**2) for _, v in pairs]
        mean, var = running.unit_mean_var(scale)
        return mean, [math.sqrt(v) for v in var]

    def start(self, resumed: bool) -> None:
        """A new run replaces an old file of that name; a resumed one cuts it back to its checkpoint's rows."""
        with open(self.path, "ab") as f:
            f.truncate(self.size if resumed else 0)

    def settings(self) -> dict:
        return {"path": os.path.abspath(self.path), "every": self.every}

    def result(self) -> None:
        return None  # the trace is its file, not a report key

    def to_dict(self) -> dict:
        return {**self.settings(), "bands": self.bands, "images": self.images, "rows": self.rows, "size": self.size,
                "last_row_at": self.last_row_at, "max_value": self.max_value,
                "running": None if self.running is None else moments_to_dict(self.running)}

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        trace = cls(d["path"], int(d["every"]), d.get("bands"))
        trace.images, trace.rows, trace.size = int(d["images"]), int(d["rows"]), int(d["size"])
        trace.last_row_at, trace.max_value = int(d["last_row_at"]), d["max_value"]
        trace.running = None if d["running"] is None else moments_from_dict(d["running"])
        if not isinstance(trace.running, (ExactMoments, MomentState, type(None))):
            raise ValueError("bad running moments")
        return trace


def _cell(value) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)
