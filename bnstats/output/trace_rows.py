"""Reading a convergence trace (the CSV ``--trace`` writes) back, for plots: :class:`TraceRows`.

:func:`read_trace` streams the CSV, checks it is a trace of the result's
channels that counts up, and keeps at most about :data:`MAX_PLOT_ROWS`
rows (thinned evenly); :func:`check_same_run` refuses another run's trace.
The trace is written by ``bnstats.observers.trace``; drawing it is
``bnstats.output.plot``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PlotError", "TraceRows", "read_trace", "check_same_run", "TRACE_COLUMNS", "MAX_PLOT_ROWS"]

# trace column prefixes, in the order the trace writes them (the longest prefix wins: bn_running_mean_ vs mean_)
TRACE_COLUMNS = ("mean", "std", "bn_running_mean", "bn_running_var", "ci95_mean", "ci95_std")


class PlotError(ValueError):
    """Nothing to plot, a malformed trace, or matplotlib missing: one line for the user."""


# -- reading ----------------------------------------------------------------------------------


@dataclass
class TraceRows:
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


def read_trace(path: str, channels: list[str]) -> TraceRows:
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


def _read_trace(path: str, reader, channels: list[str]) -> TraceRows:
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
    return TraceRows(path, values[:, 0], columns, final=_counts(path, last))


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


def check_same_run(report, trace: TraceRows) -> None:
    """:class:`PlotError` unless the trace's last row counts what ``report`` counts (images and pixels) and
    ends on its mean and std: another run's trace would end somewhere else than the final exact values drawn
    with it (another folder or shard of as many images of one size counts as much)."""
    counted = (report.images, report.pixels)
    if trace.final != counted:
        ended = f"{trace.final[0]} images and {trace.final[1]} pixels" if trace.final else "no whole counts"
        raise PlotError(f"{trace.source} is not the trace of {report.source}: its last row has {ended}, the "
                        f"result counts {counted[0]} images and {counted[1]} pixels")
    bn = report.data.get("bn") if isinstance(report.data.get("bn"), dict) else {}
    ends = [(kind, kind, report.unit(kind)) for kind in ("mean", "std")]
    # the BatchNorm curves are labelled with the result's momentum: a trace of another momentum or batch size
    # (same data, same counts) must not be drawn under it. Its last row is written at the last image, before
    # a smaller last batch is a step: compared only when the last batch was whole
    batch_size = bn.get("batch_size")
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0 \
            and report.images % batch_size == 0:
        ends += [(f"bn_{key}", f"bn.{key}", bn[key]) for key in ("running_mean", "running_var")
                 if f"bn_{key}" in trace.columns and isinstance(bn.get(key), list)]
    for kind, written, exact in ends:
        last = trace.columns[kind][-1]
        for band, ended, value in zip(report.channels, last, exact):
            if isinstance(value, (int, float)) and not math.isclose(ended, value, rel_tol=SAME_RUN_TOLERANCE,
                                                                     abs_tol=1e-12):
                raise PlotError(f"{trace.source} is not the trace of {report.source}: its last row's {kind}_{band} "
                                f"is {float(ended)!r}, the result's {written} {value!r}")


# the trace's last row and the result hold the same statistics, summed in another order (float data: in image
# order or by partitions); another run's differ in far more than this
SAME_RUN_TOLERANCE = 1e-9
