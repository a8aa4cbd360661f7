"""Figures of a result: per-channel histograms, convergence from a trace, means per class.

:func:`build_figure` draws, in one figure, what a :class:`~bnstats.output.reading.Report`
(and optionally a trace read by :func:`~bnstats.output.trace_rows.read_trace`) holds:

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

import io
import math
import os
from dataclasses import dataclass

import numpy as np

from ..jsonio import ReportError
from .trace_rows import PlotError, TraceRows

__all__ = ["build_figure", "render", "FORMATS", "MISSING_MATPLOTLIB"]

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}  # output extension -> matplotlib format
MISSING_MATPLOTLIB = 'plotting needs matplotlib: pip install "bnstats[plot]"'

WIDTH = 10.0  # inches; at the default 100 dpi a 1000-pixel-wide PNG, readable at 100% in a README
DPI = 100
DISPLAY_BINS = 256  # at most this many histogram bars: 16-bit data is binned down to it
CHANNEL_COLOURS = {"R": "#d62728", "G": "#2ca02c", "B": "#1f4fd6", "L": "black", "A": "0.55"}


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
    if tally is not None and tally.stats.kind == "scaled" and tally.stats.pixels:
        return _scaled_histograms(tally.stats.state)
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


def _scaled_histograms(state) -> _Histograms:
    """Scaled integers (``slope · q + inter`` per group) binned for display: DISPLAY_BINS bars over the values'
    range, each value's exact count in the bar that holds it."""
    values, weights = [[] for _ in range(state.channels)], [[] for _ in range(state.channels)]
    for (slope, inter, _, offset), group in state.groups.items():
        for c in range(state.channels):
            bins = np.flatnonzero(group.counts[c])
            values[c].append((bins + offset) * slope + inter)
            weights[c].append(group.counts[c][bins])
    values = [np.concatenate(v) for v in values]
    weights = [np.concatenate(w) for w in weights]
    lo = min(float(v.min()) for v in values if v.size)
    hi = max(float(v.max()) for v in values if v.size)
    if hi <= lo:  # one value: a bar around it, of a width its magnitude can show (1e39 + 1 is 1e39)
        hi = lo + (abs(lo) * 2.0**-20 or 1.0)
    edges = np.linspace(lo, hi, DISPLAY_BINS + 1)
    counts = np.array([np.histogram(v, edges, weights=w)[0] for v, w in zip(values, weights)], np.int64)
    return _Histograms(counts, edges, 1, "value (scaled integers, own units)")


# -- the figure ---------------------------------------------------------------------------------


def build_figure(report, trace: TraceRows | None = None, log: bool = False, width: float = WIDTH):
    """One matplotlib Figure with a section per thing ``report`` (and ``trace``) can show.

    ``report`` is a :class:`~bnstats.output.reading.Report`; ``log`` draws histogram
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
    # one x range set on every panel, not sharex: matplotlib's shared axes make each autoscale visit every
    # sibling (120 bands: 15 s of 19); the inner rows' tick labels hidden as sharex would
    axes = subfigure.subplots(rows, cols, squeeze=False).ravel()
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
        ax.set_xlim(histograms.edges[0], histograms.edges[-1])
        ax.xaxis.set_tick_params(labelbottom=False)
    for ax in axes[len(channels):]:
        ax.set_axis_off()
    for ax in axes[max(len(channels) - cols, 0):len(channels)]:
        ax.set_xlabel(histograms.scale, fontsize=9)
        ax.xaxis.set_tick_params(labelbottom=True)
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


def _draw_trace(subfigure, report, trace: TraceRows) -> None:
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
    negative = [name for name, row in zip(names, stds) if (row < 0).any()]
    if negative:  # (a result without its state is not checked against it: matplotlib would refuse the bars)
        raise ReportError(f"{report.source}: bad groups.{negative[0]}.std: must not be negative")
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
