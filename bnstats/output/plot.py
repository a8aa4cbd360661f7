"""Figures of a result: per-channel histograms, convergence from a trace, means per class.

:func:`build_figure` draws, in one figure, what a :class:`~bnstats.output.report.Report`
(and optionally a trace read by :func:`read_trace`) holds:

- the exact per-channel histograms of integer data (``state`` of kind
  ``histogram``), with the mean, ±1σ, ±2σ and any ``percentiles`` marked;
- the running mean and std against images seen, from a trace CSV, with the
  final exact values, the 95% confidence band and the BatchNorm running
  estimate where the trace has them;
- the mean of each class per channel (``groups``), ±1 std as error bars.

:func:`render` turns the figure into PNG, SVG or PDF bytes. matplotlib is an
optional dependency (``pip install "bnstats[plot]"``), imported only when a
figure is built. pyplot is never imported: figures are drawn on the Agg
canvas directly, so nothing here needs a display or changes the caller's
matplotlib backend.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..jsonio import ReportError

__all__ = ["PlotError", "Trace", "read_trace", "check_same_run", "build_figure", "render", "FORMATS",
           "MISSING_MATPLOTLIB"]

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}  # output extension -> matplotlib format
MISSING_MATPLOTLIB = 'plotting needs matplotlib: pip install "bnstats[plot]"'

WIDTH = 10.0  # inches; at the default 100 dpi a 1000-pixel-wide PNG, readable at 100% in a README
DPI = 100
DISPLAY_BINS = 256  # at most this many histogram bars: 16-bit data is binned down to it
CHANNEL_COLOURS = {"R": "#d62728", "G": "#2ca02c", "B": "#1f4fd6", "L": "black", "A": "0.55"}

# trace column prefixes, in the order the trace writes them (the longest prefix wins: bn_running_mean_ vs mean_)
TRACE_COLUMNS = ("mean", "std", "bn_running_mean", "bn_running_var", "ci95_mean", "ci95_std")


class PlotError(ValueError):
    """Nothing to plot, a malformed trace, or matplotlib missing: one line for the user."""


def _matplotlib():
    """The matplotlib pieces bnstats uses; :class:`PlotError` naming the extra when it is missing."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        raise PlotError(MISSING_MATPLOTLIB) from None
    return matplotlib, Figure, Line2D, Patch


# -- colours ------------------------------------------------------------------------------------


def channel_colours(channels: list[str]) -> list:
    """One colour per channel: R red, G green, B blue, L black, A gray; other bands from viridis."""
    matplotlib = _matplotlib()[0]
    others = [c for c in channels if c not in CHANNEL_COLOURS]
    cmap = matplotlib.colormaps["viridis"]
    # viridis' last tenth is a pale yellow that vanishes on white: stop short of it
    shade = {c: cmap(0.88 * i / max(len(others) - 1, 1)) for i, c in enumerate(others)}
    return [CHANNEL_COLOURS.get(c, shade.get(c)) for c in channels]


# -- the trace ----------------------------------------------------------------------------------


@dataclass
class Trace:
    """A convergence trace: per row the images seen so far and, per column kind, one value per channel.

    ``columns`` maps a kind of :data:`TRACE_COLUMNS` (``mean``, ``std``, and
    when present ``bn_running_mean``, ``bn_running_var``, ``ci95_mean``,
    ``ci95_std``) to a ``(rows, channels)`` float array, unit scale; an empty
    cell is NaN. ``final`` is the last row's exact ``(images, pixels)``: what
    the run counted in all. A long trace is thinned evenly as it is read
    (at most about :data:`MAX_PLOT_ROWS` rows are kept; the last always).
    """

    source: str
    images: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    final: tuple[int, int] | None = None


MAX_PLOT_ROWS = 2000  # rows of a trace kept for drawing: far more than a figure's width in pixels


class _Thinned:
    """Rows kept as they stream by: every ``stride``-th, the stride doubling whenever more than
    :data:`MAX_PLOT_ROWS` are kept (constant memory for any trace length), and the last row."""

    def __init__(self):
        self.kept, self.stride, self.seen, self.last = [], 1, 0, None

    def add(self, values: np.ndarray) -> None:
        if self.seen % self.stride == 0:
            self.kept.append(values)
            if len(self.kept) > MAX_PLOT_ROWS:  # kept rows sit at multiples of stride: keep those of 2·stride
                self.kept, self.stride = self.kept[::2], self.stride * 2
        self.last = values
        self.seen += 1

    def rows(self) -> np.ndarray:
        tail = [self.last] if self.kept and self.kept[-1] is not self.last else []
        return np.array(self.kept + tail)


def read_trace(path: str, channels: list[str]) -> Trace:
    """Read a trace CSV (``images,pixels,mean_<band>...,std_<band>...[,bn_...][,ci95_...]``), streaming.

    Its bands must be ``channels`` in order; anything else (no rows, a row of
    the wrong length, a cell that is not a number) is a :class:`PlotError`
    naming the file. Columns of other kinds are ignored.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return _read_trace(path, csv.reader(f), channels)
    except OSError as exc:
        raise PlotError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PlotError(f"{path} is not a bnstats trace (not CSV text: {exc})") from None


def _read_trace(path: str, reader, channels: list[str]) -> Trace:
    header = next((r for r in reader if r), None)  # blank lines, e.g. a trailing one, are skipped
    if header is None:
        raise PlotError(f"{path} is empty: not a bnstats trace")
    header = [h.strip() for h in header]
    if header[:2] != ["images", "pixels"]:
        raise PlotError(f"{path} is not a bnstats trace (its header must start with images,pixels)")
    by_kind: dict[str, list[tuple[str, int]]] = {}
    for index, name in enumerate(header[2:], start=2):
        kind = max((k for k in TRACE_COLUMNS if name.startswith(k + "_")), key=len, default=None)
        if kind is not None:
            by_kind.setdefault(kind, []).append((name[len(kind) + 1:], index))
    for kind in ("mean", "std"):
        if kind not in by_kind:
            raise PlotError(f"{path} is not a bnstats trace (no {kind}_<band> columns)")
    for kind, columns in by_kind.items():
        bands = [band for band, _ in columns]
        if bands != list(channels):
            raise PlotError(f"{path}: its {kind} bands ({', '.join(bands)}) do not match the result's "
                            f"channels ({', '.join(channels)})")
    thinned, last, before = _Thinned(), None, (0.0, -1.0)
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        values = _trace_row(path, line, row, header)
        before = _check_order(path, line, values, before)
        thinned.add(values)
        last = row
    if last is None:
        raise PlotError(f"{path} has a header but no rows: nothing to plot")
    values = thinned.rows()
    columns = {kind: values[:, [i for _, i in cols]] for kind, cols in by_kind.items()}
    return Trace(path, values[:, 0], columns, final=_counts(path, last))


def _trace_row(path: str, line: int, row: list[str], header: list[str]) -> np.ndarray:
    """One data row as floats (an empty cell is NaN); :class:`PlotError` naming the line otherwise."""
    if len(row) != len(header):
        raise PlotError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
    values = np.empty(len(header))
    for index, cell in enumerate(row):
        try:
            value = float(cell) if cell.strip() else math.nan
        except ValueError:
            raise PlotError(f"{path} line {line}: {header[index]} {cell[:40]!r} is not a number") from None
        if math.isinf(value) or (index == 0 and not math.isfinite(value)):
            raise PlotError(f"{path} line {line}: {header[index]} {cell[:40]!r} is not a finite number")
        values[index] = value
    return values


def _check_order(path: str, line: int, values: np.ndarray, before: tuple[float, float]) -> tuple[float, float]:
    """A trace counts up: more images than the row before, and no fewer pixels (rows of two runs, or a row
    moved, would draw curves going back); the row's ``(images, pixels)``, else :class:`PlotError`."""
    images, pixels = float(values[0]), float(values[1])
    if not images > before[0] or not pixels >= max(before[1], 0.0):
        raise PlotError(f"{path} line {line}: {values[0]:g} images and {values[1]:g} pixels after "
                        f"{before[0]:g} and {max(before[1], 0):g}: a trace counts up (rows of another run?)")
    return images, pixels


def _counts(path: str, row: list[str]) -> tuple[int, int] | None:
    """The exact ``(images, pixels)`` of a row, or None if they are not whole numbers."""
    try:
        return int(row[0]), int(row[1])
    except ValueError:
        return None


def check_same_run(report, trace: Trace) -> None:
    """:class:`PlotError` unless the trace's last row counts what ``report`` counts (images and pixels):
    another run's trace would end somewhere else than the final exact values drawn with it."""
    counted = (report.images, report.pixels)
    if trace.final != counted:
        ended = f"{trace.final[0]} images and {trace.final[1]} pixels" if trace.final else "no whole counts"
        raise PlotError(f"{trace.source} is not the trace of {report.source}: its last row has {ended}, the "
                        f"result counts {counted[0]} images and {counted[1]} pixels")


# -- what a report holds ------------------------------------------------------------------------


def _per_channel(value, channels: int, what: str, source: str) -> np.ndarray:
    """A per-channel list of numbers (None -> NaN), or a :class:`ReportError` naming the field."""
    if not isinstance(value, list) or len(value) != channels or not all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value
    ):
        raise ReportError(f"{source}: bad {what}: must be a list of {channels} numbers, one per channel")
    return np.array([math.nan if v is None else float(v) for v in value])


def _percentiles(report) -> list[tuple[str, np.ndarray]]:
    """``[(label, per-channel values)]`` from the report's ``percentiles`` key, by rank; [] without it."""
    found = report.data.get("percentiles")
    if not isinstance(found, dict):
        return []
    out = []
    for key, values in found.items():
        try:
            rank = float(key)
        except ValueError:
            continue  # a key of some later kind: not ours to draw
        out.append((rank, f"p{key}", _per_channel(values, len(report.channels), f"percentiles.{key}", report.source)))
    return [(label, values) for _, label, values in sorted(out, key=lambda t: t[0])]


@dataclass
class _Histograms:
    """Display bins of a report's exact histograms: ``counts`` (C, bins) over ``edges`` (unit scale)."""

    counts: np.ndarray
    edges: np.ndarray
    levels_per_bin: int
    scale: str  # what the x axis is in


def _histograms(report) -> _Histograms | None:
    """The report's histograms binned for display, or None for float data or an empty result."""
    tally = report.tally() if "state" in report.data else None
    counts = None if tally is None else tally.stats.counts
    if counts is None or not counts.any():
        return None
    offset = tally.stats.state.offset
    levels = counts.shape[1]
    max_value = report.max_value or 1
    if levels <= DISPLAY_BINS:  # 8-bit: every level is a bar, over the whole range
        lo, width, bins = 0, 1, levels
    else:  # 16-bit: the occupied range (12-bit data, CT numbers) cut into at most DISPLAY_BINS bars
        seen = np.flatnonzero(counts.any(axis=0))
        lo, span = int(seen[0]), int(seen[-1] - seen[0] + 1)
        width = -(-span // DISPLAY_BINS)
        bins = -(-span // width)
    window = np.zeros((counts.shape[0], bins * width), np.int64)
    part = counts[:, lo : lo + bins * width]
    window[:, : part.shape[1]] = part
    binned = window.reshape(counts.shape[0], bins, width).sum(axis=2)
    edges = (lo + offset + np.arange(bins + 1) * width - 0.5) / max_value
    if offset:
        scale = "value (signed data, own units)"
    elif max_value == 1:
        scale = "value"
    else:
        scale = f"value / {max_value} (unit scale)"
    return _Histograms(binned, edges, width, scale)


# -- the figure ---------------------------------------------------------------------------------


def build_figure(report, trace: Trace | None = None, log: bool = False, width: float = WIDTH):
    """One matplotlib Figure with a section per thing ``report`` (and ``trace``) can show.

    ``report`` is a :class:`~bnstats.output.report.Report`; ``log`` draws histogram
    counts on a log axis. :class:`PlotError` when there is nothing to draw
    (float data, no groups, no trace), or without matplotlib.
    """
    _, Figure, _, _ = _matplotlib()
    histograms = _histograms(report)
    groups = report.data.get("groups") if isinstance(report.data.get("groups"), dict) else None
    sections = []  # (draw function, height in inches)
    channels = report.channels
    if histograms is not None:
        cols = _histogram_columns(len(channels))
        rows = -(-len(channels) // cols)
        sections.append((lambda sf: _draw_histograms(sf, report, histograms, log), 0.75 + rows * (1.9 if cols > 1 or rows < 3 else 1.55)))
    if trace is not None:
        sections.append((lambda sf: _draw_trace(sf, report, trace), 3.6))
    if groups:
        sections.append((lambda sf: _draw_groups(sf, report, groups), 3.6 + (0.6 if len(groups) > 6 else 0)))
    if not sections:
        what = "float data" if report.data.get("state", {}).get("kind") == "moments" else "no counted pixels"
        raise PlotError(f"nothing to plot: {report.source} holds no histogram ({what}) and no per-class groups, "
                        "and no --trace was given")
    heights = [h for _, h in sections]
    # a whole number of quarter inches: size x dpi is then exact in binary floats, and the image is
    # exactly that many pixels (Agg truncates 2.3 x 100 = 229.99999999999997 to 229)
    fig = Figure(figsize=(width, math.ceil(sum(heights) * 4) / 4), dpi=DPI, layout="constrained")
    subfigures = fig.subfigures(len(sections), 1, height_ratios=heights, squeeze=False).ravel()
    for (draw, _), subfigure in zip(sections, subfigures):
        draw(subfigure)
    return fig


def render(fig, fmt: str = "png", dpi: int = DPI) -> bytes:
    """``fig`` as PNG, SVG or PDF bytes; no date in the metadata, so the same figure gives the same bytes."""
    metadata = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


def _histogram_columns(channels: int) -> int:
    """Small multiples: one column for up to 4 channels (a shared x axis), a grid for multi-band data."""
    return 1 if channels <= 4 else 3 if channels <= 9 else 4


def _style_handles(Line2D, percentiles: list) -> list:
    handles = [Line2D([], [], color="0.2", lw=1.6, label="mean"),
               Line2D([], [], color="0.2", lw=1.1, ls="--", label="mean ± 1σ"),
               Line2D([], [], color="0.2", lw=1.1, ls=":", label="mean ± 2σ")]
    if percentiles:
        labels = ", ".join(label for label, _ in percentiles)
        handles.append(Line2D([], [], color="0.45", lw=1.1, ls="-.", label=f"percentiles ({labels})"))
    return handles


def _draw_histograms(subfigure, report, histograms: _Histograms, log: bool) -> None:
    _, _, Line2D, _ = _matplotlib()
    channels = report.channels
    cols = _histogram_columns(len(channels))
    rows = -(-len(channels) // cols)
    axes = subfigure.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    colours = channel_colours(channels)
    mean = _per_channel(report.unit("mean"), len(channels), "mean", report.source)
    std = _per_channel(report.unit("std"), len(channels), "std", report.source)
    percentiles = _percentiles(report)
    per_bin = "" if histograms.levels_per_bin == 1 else f" per {histograms.levels_per_bin} levels"
    centres = (histograms.edges[:-1] + histograms.edges[1:]) / 2
    for c, (ax, band, colour) in enumerate(zip(axes, channels, colours)):
        counts = histograms.counts[c]
        if log:
            ax.set_yscale("log")
            ax.step(centres, np.where(counts > 0, counts, np.nan), where="mid", color=colour, lw=1)
        else:
            ax.stairs(counts, histograms.edges, fill=True, color=colour, alpha=0.3, lw=0)
            ax.stairs(counts, histograms.edges, color=colour, lw=0.8)
        m, s = mean[c], std[c]
        if math.isfinite(m):
            ax.axvline(m, color=colour, lw=1.6)
            for k, style in ((1, "--"), (2, ":")):
                for sign in (-1, 1):
                    ax.axvline(m + sign * k * s, color=colour, lw=1.1, ls=style)
        for _, values in percentiles:
            if math.isfinite(values[c]):
                ax.axvline(values[c], color="0.45", lw=1.1, ls="-.")
        ax.set_title(f"{band}   mean {m:.4g}   std {s:.4g}", loc="left", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.margins(x=0)
        if log:
            ax.set_ylim(bottom=0.8)
        else:
            ax.set_ylim(bottom=0)
        if c % cols == 0:
            ax.set_ylabel("pixels" + per_bin, fontsize=9)
    for ax in axes[len(channels):]:
        ax.set_axis_off()
    for ax in axes[max(len(channels) - cols, 0):len(channels)]:
        ax.set_xlabel(histograms.scale, fontsize=9)
        ax.xaxis.set_tick_params(labelbottom=True)
    axes[0].set_xlim(histograms.edges[0], histograms.edges[-1])
    handles = _style_handles(Line2D, percentiles)
    if len(axes) > len(channels):  # an empty grid cell holds the legend
        axes[-1].legend(handles=handles, loc="center", fontsize=9, frameon=False)
    else:
        # in the title row of the first panel, right of its (left-aligned) title: over no data
        axes[0].legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles),
                       fontsize=9, frameon=False, borderaxespad=0.1, handlelength=2.5)
    scale = "log" if log else "linear"
    images = f"{report.images} image{'s' if report.images != 1 else ''}"
    subfigure.suptitle(f"Pixel values per channel: exact histograms of {images} ({scale} counts)",
                       fontsize=11, fontweight="bold")


def _draw_trace(subfigure, report, trace: Trace) -> None:
    _, _, Line2D, Patch = _matplotlib()
    channels = report.channels
    colours = channel_colours(channels)
    exact = {"mean": _per_channel(report.unit("mean"), len(channels), "mean", report.source),
             "std": _per_channel(report.unit("std"), len(channels), "std", report.source)}
    bn = trace.columns.get("bn_running_mean") is not None and trace.columns.get("bn_running_var") is not None
    momentum = report.data.get("bn", {}).get("momentum") if isinstance(report.data.get("bn"), dict) else None
    momentum_text = f"momentum {momentum}" if momentum is not None else "momentum"
    images = trace.images
    log_x = images.size > 1 and images.min() > 0 and images.max() / images.min() >= 100
    ax_mean, ax_std = subfigure.subplots(1, 2)
    for ax, kind in ((ax_mean, "mean"), (ax_std, "std")):
        running = trace.columns[kind]
        ci = trace.columns.get(f"ci95_{kind}")
        for c, colour in enumerate(colours):
            if ci is not None:
                ax.fill_between(images, running[:, c] - ci[:, c], running[:, c] + ci[:, c], color=colour,
                                alpha=0.18, lw=0)
            ax.plot(images, running[:, c], color=colour, lw=1.4)
            if bn:
                estimate = (trace.columns["bn_running_mean"][:, c] if kind == "mean"
                            else np.sqrt(np.clip(trace.columns["bn_running_var"][:, c], 0, None)))
                ax.plot(images, estimate, color=colour, lw=1.2, ls=":")
            if math.isfinite(exact[kind][c]):
                ax.axhline(exact[kind][c], color=colour, lw=1, ls="--", alpha=0.8)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel("images seen" + (" (log scale)" if log_x else ""), fontsize=9)
        ax.set_ylabel(f"running {kind} (unit scale)", fontsize=9)
        ax.set_title(f"running {kind}", fontsize=10)
        ax.tick_params(labelsize=9)
    handles = [Line2D([], [], color=c, lw=2, label=band) for band, c in zip(channels, colours)] if len(channels) > 1 else []
    handles += [Line2D([], [], color="0.2", lw=1.4, label="exact running value"),
                Line2D([], [], color="0.2", lw=1, ls="--", label="final exact value")]
    if "ci95_mean" in trace.columns or "ci95_std" in trace.columns:
        handles.append(Patch(color="0.2", alpha=0.18, label="95% confidence band"))
    if bn:
        handles.append(Line2D([], [], color="0.2", lw=1.2, ls=":", label=f"BatchNorm ({momentum_text}):\n"
                              "running_mean (left),\n√running_var (right)"))
    ax_std.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False)
    subfigure.suptitle(f"Convergence: running statistics as images are counted ({os.path.basename(trace.source)})",
                       fontsize=11, fontweight="bold")


def _draw_groups(subfigure, report, groups: dict) -> None:
    channels = report.channels
    colours = channel_colours(channels)
    names = list(groups)
    means = np.array([_per_channel(_group_field(groups, n, "mean", report), len(channels), f"groups.{n}.mean",
                                   report.source) for n in names])
    stds = np.array([_per_channel(_group_field(groups, n, "std", report), len(channels), f"groups.{n}.std",
                                  report.source) for n in names])
    ax = subfigure.subplots()
    x = np.arange(len(names))
    width = 0.8 / len(channels)
    for c, (band, colour) in enumerate(zip(channels, colours)):
        ax.bar(x + (c - (len(channels) - 1) / 2) * width, means[:, c], width, yerr=stds[:, c], color=colour,
               alpha=0.75, label=band, error_kw={"elinewidth": 0.9, "capsize": 2 if width * len(names) < 40 else 0,
                                                 "ecolor": "0.25"})
    ax.set_xticks(x)
    many = len(names) > 6 or max(len(n) for n in names) > 12
    if len(names) <= 60:
        ax.set_xticklabels(names, rotation=40 if many else 0, ha="right" if many else "center", fontsize=9)
    else:  # a thousand class names are ink, not labels
        ax.set_xticklabels([])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel(f"class ({len(names)})", fontsize=9)
    ax.set_ylabel("mean (unit scale)", fontsize=9)
    ax.tick_params(axis="y", labelsize=9)
    if len(channels) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False, title="channel",
                  title_fontsize=9)
    subfigure.suptitle("Mean per class and channel (error bars: ±1 std within the class)", fontsize=11,
                       fontweight="bold")


def _group_field(groups: dict, name: str, key: str, report):
    group = groups[name]
    if not isinstance(group, dict):
        raise ReportError(f"{report.source}: bad groups.{name}: not an object")
    return group.get(key)
