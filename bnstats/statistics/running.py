"""RunningStats: the mean, std, var, min and max every run reports, exact for integer pixels.

It folds pixels (arrays, histograms, decoded images, raw bytes of small
8-bit images) into one of the two states of ``bnstats.statistics.states``
and answers in unit scale and in the data's own units. The formulas and
why they are exact or stable are in ``bnstats.statistics.formulas``; the
median and percentiles it reports come from
``bnstats.statistics.percentiles``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from .base import Statistic
from .counting import PENDING_BYTES, bincount, raw_histogram
from .formulas import (HISTOGRAM, LEVELS, MOMENTS, STAT_KEYS, LayoutError, describe_layout, integer_levels,
                       integer_offset, rounded, to_unit)
from .percentiles import order_statistics
from .layout import LAYOUTS, infer_layout
from .scaled import SCALED, ScaledState, check_scale
from .states import STATE_KINDS, HistogramState, MomentState
from .validate import integer

PIXEL_KINDS = "biuf"  # numpy dtype kinds of pixel data: booleans (0 and 1), integers, floats

__all__ = ["RunningStats"]


class RunningStats(Statistic):
    """Mergeable per-channel statistics of pixel data, in constant memory.

    Create one, feed it pixels with :meth:`update` (or per-channel histograms
    with :meth:`update_histogram`), combine partial results with
    :meth:`merge`, read the answer with :meth:`result`, and save/restore the
    exact state with :meth:`to_dict` / :meth:`from_dict`::

        >>> import numpy as np
        >>> from bnstats import RunningStats
        >>> rs = RunningStats()
        >>> rs.update(np.zeros((4, 4, 3), np.uint8))
        >>> rs.update(np.full((2, 2, 3), 255, np.uint8))
        >>> rs.result()["mean"]
        [0.2, 0.2, 0.2]

    ``uint8`` and ``uint16`` pixels are counted exactly (see the module
    docstring); any other numeric dtype is counted as float64. Float pixels
    that are NaN or infinite in any channel are left out (a nodata value), with
    a ``RuntimeWarning``, as every run of bnstats leaves them out.

    Parameters
    ----------
    layout:
        How arrays passed to :meth:`update` are laid out: ``"HW"``,
        ``"HWC"``, ``"CHW"``, ``"NHW"``, ``"NHWC"`` or ``"NCHW"`` (N images,
        C channels). Without it, ``(H, W)`` is
        one gray image, ``(H, W, C)`` one image and ``(N, H, W, C)`` a batch,
        for up to 4 channels; other shapes are ambiguous — a gray batch
        ``(N, H, W)`` or an NCHW batch would silently count W channels — and
        are refused with a message naming the layout to give.
    """

    name = "stats"

    def __init__(self, layout: str | None = None):
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.layout_hint = layout
        self.images = 0
        self._state: HistogramState | MomentState | None = None
        # small 8-bit images' raw bytes, counted together by one bincount (see add_image)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_layout: tuple[int, int, int] | None = None  # stride, channels, bytes counted per pixel

    @property
    def state(self) -> HistogramState | MomentState | None:
        """The exact state (HistogramState or MomentState), None before any data."""
        if self._pending:
            self._flush()
        return self._state

    @state.setter
    def state(self, value) -> None:
        self._flush()
        self._state = value

    def _flush(self) -> None:
        """Count the gathered raw bytes of small images into the state."""
        if self._pending:
            self._state.add(raw_histogram(self._pending, *self._pending_layout))
            self._pending, self._pending_bytes = [], 0

    def __getstate__(self):  # pickled or copied: nothing pending, and a list of its own
        self._flush()
        return {**self.__dict__, "_pending": []}

    # -- shape of the data -------------------------------------------------

    @property
    def kind(self) -> str | None:
        """``"histogram"`` (exact integer state), ``"scaled"`` (exact scaled integers), ``"moments"`` (float) or
        None before any data."""
        return None if self._state is None else self._state.kind  # fixed before any bytes are gathered

    @property
    def counts(self) -> np.ndarray | None:
        """The ``(C, levels)`` histogram of integer data, else None."""
        return getattr(self.state, "counts", None)

    @property
    def channels(self) -> int | None:
        """Number of channels, or None before any data arrived."""
        return None if self._state is None else self._state.channels

    @property
    def max_value(self) -> int | float | None:
        """The unit-scale divisor: 255 for 8-bit, 65535 for 16-bit, 1 for float."""
        return None if self._state is None else self._state.max_value

    @property
    def layout(self) -> tuple | None:
        """``(kind, channels, max_value)`` (and the offset of signed data): what must match for a merge."""
        if self._state is None:
            return None
        signed = (self._state.offset,) if getattr(self._state, "offset", 0) else ()
        return (self.kind, self.channels, self.max_value, *signed)

    def _start(self, kind: str, channels: int, levels: int | None, offset: int = 0) -> None:
        """Fix the layout on first data, or check new data against it. Data in its own units combines:
        signed integers of either width and scaled ones are one scaled state (a signed histogram is its
        group of slope 1 and intercept 0); with float data they are float moments (a DICOM series or an
        nnU-Net case scaled slice by slice, channel by channel, is float: the run still counts it). Unsigned
        integers are in unit scale and combine with nothing else."""
        want = (kind, channels, 1 if offset or not levels else levels - 1, *((offset,) if offset else ()))
        if self.state is None:
            self.state = (HistogramState.empty(channels, levels, offset) if kind == HISTOGRAM
                          else ScaledState.empty(channels) if kind == SCALED else MomentState.empty(channels))
            return
        if self.layout == want:
            return
        mine, theirs = _own_exact(self.kind, getattr(self.state, "offset", 0)), _own_exact(kind, offset)
        if self.channels == channels and mine and theirs:
            if self.kind == HISTOGRAM:
                self.state = ScaledState.of_histogram(self.state)
            return  # counted into the scaled state (see update_histogram, merge)
        if self.channels == channels and ((mine and kind == MOMENTS) or (theirs and self.kind == MOMENTS)):
            if self.kind != MOMENTS:
                self.state = _as_float(self.state)
            return  # counted as float moments (see update_histogram, update_scaled, merge)
        hint = ""
        if self.channels == channels and mine != theirs and MOMENTS not in (kind, self.kind):  # unsigned: unit scale
            hint = (": unsigned 8/16-bit data is reported in unit scale, and signed or scaled integers in "
                    "their own units; count them in separate runs")
        raise LayoutError(
            f"cannot combine {describe_layout(want)} data with {describe_layout(self.layout)} data{hint}"
        )

    # -- chunk: one piece of data -> state ----------------------------------

    def update(self, pixels, images: int | None = None, layout: str | None = None) -> None:
        """Count an image (or a batch of them).

        ``pixels`` is an array laid out as ``layout`` says (default: the
        one given to the constructor, else inferred as described there).
        ``images`` overrides the image count.
        """
        x = np.asarray(pixels)
        if x.dtype.kind not in PIXEL_KINDS:  # complex, strings, objects: numpy would cast them without a word
            raise ValueError(f"an array of {x.dtype} cannot be counted: give integer, real or boolean pixels")
        layout = layout or self.layout_hint
        layout = layout or infer_layout(x.shape)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        if x.ndim <= 2 and layout == "HW":
            x = x.reshape(-1, 1) if x.ndim < 2 else x  # a scalar or a row of values: one channel
        if len(layout) != x.ndim:
            raise ValueError(f"layout {layout} does not fit an array of shape {x.shape}")
        if "C" in layout:
            flat = np.moveaxis(x, layout.index("C"), -1).reshape(-1, x.shape[layout.index("C")])
        else:
            flat = x.reshape(-1, 1)
        counted = x.shape[0] if layout.startswith("N") else 1
        if flat.dtype.kind == "f":  # the one rule (decoding.image.keep_mask; decoded images come without them)
            finite = np.isfinite(flat).all(axis=1)
            if not finite.all():
                warnings.warn("float pixels that are NaN or infinite in any channel are not counted",
                              RuntimeWarning, stacklevel=2)
                flat = flat[finite]
        self._add_values(flat, counted if images is None else images)

    def update_histogram(self, counts, images: int = 1, offset: int = 0) -> None:
        """Count pixels given as a per-channel histogram ``(C, 256 or 65536)``.

        This is the fast path for decoded 8-bit images: Pillow's C
        ``Image.histogram()`` counts an image several times faster than
        numpy can, and it is exact. ``offset`` is the value of bin 0 (-128
        or -32768 for signed data).
        """
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[1] not in LEVELS:
            raise ValueError(f"histogram must be (channels, 256 or 65536), got {counts.shape}")
        self._start(HISTOGRAM, counts.shape[0], counts.shape[1], offset)
        if self.kind == SCALED:
            self.state.add(counts, offset, 1.0, 0.0)
        elif self.kind == MOMENTS:  # signed integers beside float data
            self.state.merge(_as_float(HistogramState(counts, offset)))
        else:
            self.state.add(counts)
        self.images += images

    def update_scaled(self, counts, slope: float, inter: float, images: int = 1, offset: int = 0) -> None:
        """Count scaled integers: a per-channel histogram ``(C, 256 or 65536)`` of stored integers (bin b holds
        ``b + offset``) whose values are ``slope · q + inter`` (NIfTI's ``scl_slope``/``scl_inter``, DICOM's
        rescale), exactly (see :mod:`bnstats.statistics.scaled`)."""
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[1] not in LEVELS:
            raise ValueError(f"histogram must be (channels, 256 or 65536), got {counts.shape}")
        check_scale(slope, inter)
        self._start(SCALED, counts.shape[0], None)
        if self.kind == MOMENTS:  # beside float data: as float moments
            part = ScaledState(counts.shape[0])
            part.add(counts, offset, slope, inter)
            self.state.merge(part.moments())
        else:
            self.state.add(counts, offset, slope, inter)
        self.images += images

    def add_image(self, image) -> None:
        """Count one decoded image (see :class:`Statistic`).

        A small 8-bit image's raw bytes (``image.raw``) are gathered and
        counted with the next ones by one bincount: per image, a histogram
        costs more than decoding a thumbnail. Counts are exact either way.
        """
        raw = image.raw  # a DecodedImage has all three: no default hides an image of another shape
        if raw is not None:
            self._add_raw(raw, len(image.bands), image.count)
            return
        if image.scale is not None:  # stored integers and their scaling: exact in the values' units
            self.update_scaled(image.stored_histogram(), *image.scale, image.count, image.offset)
            return
        counts = image.histogram()
        if counts is not None:
            self.update_histogram(counts, image.count, image.offset)
        else:
            self._add_values(image.values(), image.count)

    def _add_raw(self, raw: tuple[bytes, int, int], channels: int, images: int) -> None:
        data, stride, counted = raw
        if self._pending_layout != (stride, channels, counted) or self._state is None:
            self._flush()
            self._start(HISTOGRAM, channels, 256)
            self._pending_layout = (stride, channels, counted)
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.images += images
        if self._pending_bytes >= PENDING_BYTES:
            self._flush()

    def _add_values(self, flat: np.ndarray, images: int) -> None:
        """Count an ``(n, C)`` block: exactly for 8/16-bit integers, else two-pass float64 + Chan."""
        levels = integer_levels(flat.dtype)
        if levels is not None:
            self.update_histogram(bincount(flat, levels), images=images, offset=integer_offset(flat.dtype))
            return
        self._start(MOMENTS, flat.shape[1], None)
        self.state.merge(MomentState.of_values(flat))
        self.images += images

    # -- combine: state + state -> state -------------------------------------

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Fold another partial result into this one (in place); returns self.

        Exact and order-independent for integer data; Chan's pairwise formula
        for float data. ``other`` is not changed and shares nothing with self.
        """
        if other.state is not None:
            if other.kind == HISTOGRAM:
                self._start(HISTOGRAM, other.channels, other.state.levels, other.state.offset)
            else:
                self._start(other.kind, other.channels, None)
            if self.kind == MOMENTS and other.kind != MOMENTS:
                self.state.merge(_as_float(other.state))
            elif self.kind == SCALED and other.kind == HISTOGRAM:
                self.state.merge(ScaledState.of_histogram(other.state))
            else:
                self.state.merge(other.state)
        self.images += other.images
        return self

    def copy(self) -> "RunningStats":
        """An independent copy of this state."""
        twin = RunningStats(self.layout_hint)
        twin.images = self.images
        twin.state = None if self.state is None else self.state.copy()
        return twin

    __copy__ = copy  # copy.copy too: an accumulator shared by two names would count the gathered images twice

    # -- aggregate: state -> answer -------------------------------------------

    @property
    def pixels(self) -> int:
        """Values counted per channel."""
        return 0 if self.state is None else self.state.pixels

    def moments(self):
        """The exact (integer) or float moments: what observers and batch statistics combine."""
        return self.state.moments()

    def result(self) -> dict:
        """The statistics as plain Python floats.

        Keys ``mean std var min max`` are in unit scale (integer data divided
        by ``max_value``); the same with a ``raw_`` prefix are in the data's
        own units (0-255, 0-65535, or as stored for float data). A channel
        with no counted pixels has ``None`` everywhere.
        """
        if self.state is None:
            raise ValueError("no data has been counted")
        per_channel = self.state.channel_stats()
        scale = self.max_value
        out = {}
        for key in STAT_KEYS:
            raw = [s[key] for s in per_channel]
            out["raw_" + key] = [None if v is None else rounded(v) for v in raw]
            out[key] = [None if v is None else to_unit(v, scale, 2 if key == "var" else 1) for v in raw]
        # std in unit scale as the root of the unit variance, not std/scale,
        # so that std**2 == var holds as closely as floats allow.
        out["std"] = [None if v is None else math.sqrt(v) for v in out["var"]]
        if scale == 1:  # own units: the raw std (scaled integers' is exact where the variance underflows)
            out["std"] = out["raw_std"]
        return out

    def report(self) -> dict:
        """The report keys: statistics in unit scale, ``raw`` units, counts.

        A state that counted nothing (a shard of unreadable files) has empty
        per-channel lists, so that it still merges.
        """
        if self.state is None:
            empty = {key: [] for key in STAT_KEYS}
            return {**empty, "images": self.images, "pixels": 0, "max_value": None, "raw": dict(empty)}
        result = self.result()
        out = {key: result[key] for key in STAT_KEYS}
        out.update(images=self.images, pixels=self.pixels, max_value=self.max_value)
        out["raw"] = {key: result["raw_" + key] for key in STAT_KEYS}
        return out

    def order_statistics(self, percentiles: Sequence[str] = ()) -> dict:
        """``median`` and, if asked, ``percentiles``: see :func:`bnstats.statistics.percentiles.order_statistics`."""
        return order_statistics(self, percentiles)

    # -- (de)serialization of the exact state ---------------------------------

    def to_dict(self) -> dict:
        """The exact mergeable state as JSON-ready builtins."""
        d = {"kind": self.kind, "images": self.images}
        if self.layout_hint is not None:  # how update() reads arrays: a rebuilt accumulator reads them alike
            d["layout"] = self.layout_hint
        if self.state is not None:
            d.update(self.state.to_dict())
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        """Rebuild a state written by :meth:`to_dict`; ValueError names what is wrong."""
        if d.get("channel_axis", -1) != -1:  # written by an older bnstats: it read arrays by their axis
            raise ValueError(f"channel_axis {d['channel_axis']!r} is no longer read: rebuild the state with "
                             "layout= (NCHW, CHW, ...) instead")
        rs = cls(layout=d.get("layout"))
        kind = d.get("kind")
        if kind is not None:
            if kind not in (HISTOGRAM, MOMENTS, SCALED):
                raise ValueError(f"unknown state kind {kind!r}")
            rs.state = (ScaledState if kind == SCALED else STATE_KINDS[kind]).from_dict(d)
        rs.images = integer(d.get("images", 0), "images")
        return rs

    def __eq__(self, other) -> bool:
        """Equal counts: how each accumulator reads its arrays (layout) is not compared."""
        def counted(rs):
            d = rs.to_dict()
            d.pop("layout", None)
            return d

        return isinstance(other, RunningStats) and counted(self) == counted(other)

    def __repr__(self) -> str:
        if self.state is None:
            return "RunningStats(empty)"
        return f"RunningStats({describe_layout(self.layout)}, images={self.images}, pixels={self.pixels})"


def _own_exact(kind: str | None, offset: int) -> bool:
    """Exact data reported in its own units: scaled integers, or signed ones."""
    return kind == SCALED or (kind == HISTOGRAM and offset != 0)


def _as_float(state) -> MomentState:
    """An exact state in its own units (signed histogram, scaled) as float moments, rounded once."""
    return (ScaledState.of_histogram(state) if state.kind == HISTOGRAM else state).moments()
