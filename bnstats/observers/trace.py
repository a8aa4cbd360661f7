"""How the running estimates move, image by image: ``--trace FILE.csv``.

An observer (``bnstats.observers.base``) that, after every K images (in item
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
resume. The checkpoint records the SHA-256 of the rows written so far; a
resume whose file is missing, shorter or different refuses in one line (it
could not give the uninterrupted run's trace). The file is always the
``--trace`` path of the command line: a checkpoint's state never names it.
A last row is written for the final image.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat

from .. import limits
from ..jsonio import ReportError
from .base import Observer
from ..statistics.formulas import exact_mean_var
from ..statistics.states import ExactMoments, MomentState, combine_moments, moments_from_dict, moments_to_dict
from ..statistics.validate import integer

MAX_ROWS = 1000  # --trace-every defaults to the K that keeps the trace under this many rows


def default_every(images: int) -> int:
    """Images between rows so that a trace of ``images`` has at most :data:`MAX_ROWS` rows."""
    return max(1, -(-images // MAX_ROWS))


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
        self.written = hashlib.sha256()  # of the bytes written so far: a resume checks the file against it
        self.saved_digest: str | None = None  # what a checkpoint's state says they digest to
        self.last_row_at = 0

    def add(self, moments, max_value) -> None:
        self.max_value = max_value
        self.images += 1
        self.running = moments if self.running is None else combine_moments([self.running, moments])
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
        data = line.encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(data)
        self.rows += 1
        self.size += len(data)
        self.written.update(data)
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
        """A new run replaces an old file of that name; a resumed one checks that the file begins with the
        rows its checkpoint saved (:class:`~bnstats.jsonio.ReportError` in one line if not) and cuts it back
        to them."""
        if not resumed or self.size == 0:  # nothing saved to keep
            with open(self.path, "ab") as f:
                f.truncate(0)
            return
        if not self._regular():  # deleted since (or a FIFO, a folder): the saved rows are gone
            _refuse(self.path)
        with open(self.path, "r+b") as f:
            digest, left = hashlib.sha256(), self.size
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            if left or digest.hexdigest() != self.saved_digest:
                _refuse(self.path)
            f.truncate(self.size)
        self.written = digest

    def _regular(self) -> bool:
        try:
            return stat.S_ISREG(os.stat(self.path).st_mode)
        except OSError:
            return False

    def settings(self) -> dict:
        return {"path": os.path.abspath(self.path), "every": self.every}

    def result(self) -> None:
        return None  # the trace is its file, not a report key

    def to_dict(self) -> dict:
        return {**self.settings(), "bands": self.bands, "images": self.images, "rows": self.rows, "size": self.size,
                "digest": self.written.hexdigest(), "last_row_at": self.last_row_at, "max_value": self.max_value,
                "running": None if self.running is None else moments_to_dict(self.running)}

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        """The state :meth:`to_dict` wrote; ValueError or TypeError for anything else. The path is only
        compared with the run's ``--trace`` (by the checkpoint), never opened from here."""
        path, bands = d["path"], d["bands"]
        if not isinstance(path, str) or not path:
            raise ValueError("path must be a file name")
        if bands is not None and not (isinstance(bands, list) and all(isinstance(b, str) for b in bands)):
            raise ValueError("bands must be a list of names")
        trace = cls(path, integer(d["every"], "every", MAX_COUNT), bands)
        trace.images, trace.rows = integer(d["images"], "images", MAX_COUNT), integer(d["rows"], "rows", MAX_COUNT)
        trace.size = integer(d["size"], "size", limits.current().file_bytes)
        trace.last_row_at = integer(d["last_row_at"], "last_row_at", trace.images)
        if trace.rows > trace.images or (trace.rows == 0) != (trace.size == 0):
            raise ValueError("rows, images and size do not agree")
        digest = d["digest"]
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("digest must be 64 hex digits")
        trace.saved_digest = digest
        trace.max_value = d["max_value"]
        if trace.max_value not in (None, 1, 255, 65535) or isinstance(trace.max_value, bool):
            raise ValueError("max_value must be 1, 255 or 65535")
        running = d["running"]
        trace.running = None if running is None else moments_from_dict(running)
        if not isinstance(trace.running, (ExactMoments, MomentState, type(None))):
            raise ValueError("bad running moments")
        if (trace.running is None) != (trace.images == 0):
            raise ValueError("running moments and images do not agree")
        return trace


MAX_COUNT = 2**63  # images and rows: more than any run counts


def _refuse(path: str):
    """A resumed trace whose file is not what its checkpoint saved: the run could not give the trace of an
    uninterrupted one."""
    raise ReportError(f"{path} is not the trace the checkpoint's run wrote (deleted, cut or changed since); "
                      "delete the checkpoint to start over, or restore the file")


def _cell(value) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)
