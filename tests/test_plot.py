"""``bnstats plot`` and bnstats.output.plot: histograms, convergence from a trace, per-class means;
a trace whose rows do not count up (moved around, joined, negative) is refused in one line.

Reports are made in-process from small generated arrays (no decoding); each
figure is rendered to PNG and SVG and checked as an image of the expected
size that is not blank. matplotlib is imported once, by a module fixture.
"""

from __future__ import annotations

import io
import json
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bnstats.statistics.tally import Tally
from bnstats.decoding.options import DecodeOptions
from bnstats.jsonio import to_json
from bnstats.output.plot import MISSING_MATPLOTLIB, build_figure, render
from bnstats.output.trace_rows import PlotError, read_trace
from bnstats.output.reading import Report
from bnstats.output.report import build_report
from bnstats.statistics.running import RunningStats
from helpers import FAST, cli, one_line, stderr_lines

pytestmark = pytest.mark.usefixtures("matplotlib_loaded")


@pytest.fixture(scope="module")
def matplotlib_loaded():
    """Import matplotlib (the slow part, a few tenths of a second) once for the module."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure  # noqa: F401


def make_report(arrays: dict, bands: tuple, grouped: bool = False) -> dict:
    """A compute result of ``arrays`` (name -> HWC array); with ``grouped``, one class per name."""
    tally = Tally(bands=bands, groups={} if grouped else None)
    for name, array in arrays.items():
        tally.stats.update(array, layout="HWC")
        if grouped:
            tally.groups.setdefault(name, RunningStats()).update(array, layout="HWC")
    return build_report(tally, DecodeOptions(mode="native"))


RNG = np.random.default_rng(7)
RGB = {name: RNG.integers(lo, lo + 120, (12, 10, 3), dtype=np.uint8) for name, lo in (("cat", 0), ("dog", 60),
                                                                                      ("fox", 130))}
GRAY16 = {"a": RNG.normal(1500, 300, (20, 20, 1)).clip(0, 4095).astype(np.uint16)}
BANDS13 = tuple(f"B{i}" for i in range(1, 14))
INT16 = {"a": (RNG.normal(-200, 400, (10, 10, 13)) + np.arange(13) * 100).astype(np.int16)}
FLOAT13 = {"x": RNG.random((6, 6, 13)).astype(np.float32), "y": RNG.random((6, 6, 13)).astype(np.float32)}


def write(tmp_path, name: str, report: dict):
    path = tmp_path / name
    path.write_text(to_json(report))
    return path


def check_png(data: bytes, fig, dpi: int) -> None:
    """A PNG of exactly the figure's size x dpi whose pixels are not all one colour."""
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    width, height = fig.get_size_inches() * dpi
    assert image.size == (round(width), round(height))
    assert len(image.convert("RGB").getcolors(maxcolors=2**20) or [0, 1]) > 1


def check_svg(data: bytes) -> None:
    root = ET.fromstring(data)
    assert root.tag.endswith("svg")


def trace_csv(bands, rows: int = 5, bn: bool = False, ci: bool = False, final=None) -> str:
    """A trace in the documented format, written by hand: images,pixels,mean_*,std_*[,bn_*][,ci95_*];
    ``final`` is the last row's ``(images, pixels)``, or a result (:class:`Report`) whose counts, mean and
    std the last row holds (``plot`` checks them against the result)."""
    counted = final
    if isinstance(final, Report):
        final = (counted.images, counted.pixels)
    header = ["images", "pixels", *(f"mean_{b}" for b in bands), *(f"std_{b}" for b in bands)]
    if bn:
        header += [*(f"bn_running_mean_{b}" for b in bands), *(f"bn_running_var_{b}" for b in bands)]
    if ci:
        header += [*(f"ci95_mean_{b}" for b in bands), *(f"ci95_std_{b}" for b in bands)]
    lines = [",".join(header)]
    if final is not None:  # rows count up to the final one (plot refuses a trace going back)
        rows = max(1, min(rows, final[0]))
    for i in range(1, rows + 1):
        row = [i, i * 120] + [0.4 + 0.1 / i] * len(bands) + [0.2 - 0.05 / i] * len(bands)
        if final is not None:
            row[:2] = final if i == rows else (i, final[1] * i // rows)
        if isinstance(counted, Report) and i == rows:
            row[2:2 + 2 * len(bands)] = [*counted.unit("mean"), *counted.unit("std")]
        if bn:
            row += [0.38] * len(bands) + [0.04] * len(bands)
        if ci:
            row += ([""] if i == 1 else [0.2 / i]) * len(bands) + ([""] if i == 1 else [0.1 / i]) * len(bands)
        lines.append(",".join(map(str, row)))
    return "\n".join(lines) + "\n"


# -- each chart kind renders ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb_figure(matplotlib_loaded):
    """8-bit RGB in three classes: histograms and class means."""
    return build_figure(Report(make_report(RGB, ("R", "G", "B"), grouped=True)))


def test_rgb_histograms_and_class_means(rgb_figure):
    assert len(rgb_figure.subfigs) == 2  # histograms, per-class means
    histograms, groups = (sf.axes for sf in rgb_figure.subfigs)
    assert [ax.get_title(loc="left").split()[0] for ax in histograms] == ["R", "G", "B"]
    assert [line.get_color() for line in histograms[0].lines][:1] == ["#d62728"]  # R is red
    assert histograms[0].get_xlim() == (-0.5 / 255, 255.5 / 255)  # unit scale, every 8-bit level a bar
    assert [t.get_text() for t in groups[0].get_xticklabels()] == ["cat", "dog", "fox"]
    assert [t.get_text() for t in groups[0].get_legend().get_texts()] == ["R", "G", "B"]
    assert len(groups[0].patches) == 9  # a bar per class and channel


@pytest.mark.parametrize("dpi", [100, 40])
def test_rgb_png_is_figure_size_times_dpi(rgb_figure, dpi):
    check_png(render(rgb_figure, "png", dpi=dpi), rgb_figure, dpi)


def test_rgb_svg_parses(rgb_figure):
    check_svg(render(rgb_figure, "svg"))


@pytest.mark.parametrize("name", ["f.png", pytest.param("f.svg", marks=pytest.mark.slow),
                                  pytest.param("F.PDF", marks=pytest.mark.slow)])
def test_cli_writes_the_format_of_the_extension(tmp_path, name):
    stats = write(tmp_path, "s.json", make_report(RGB, ("R", "G", "B")))
    result = cli("plot", stats, "-o", tmp_path / name, expect=0)
    assert result.stdout == "" and result.stderr == ""
    data = (tmp_path / name).read_bytes()
    if name.endswith(".png"):
        assert Image.open(io.BytesIO(data)).size == (1000, 550)  # 10 x 5.5 inches at 100 dpi
    elif name.endswith(".svg"):
        check_svg(data)
    else:
        assert data.startswith(b"%PDF")


@pytest.fixture(scope="module")
def gray16_figure(matplotlib_loaded):
    return build_figure(Report(make_report(GRAY16, ("L",))), log=True)


def test_16bit_gray_is_binned_for_display_and_log_counts(gray16_figure):
    (ax,) = gray16_figure.subfigs[0].axes
    assert ax.get_yscale() == "log"
    assert "65535" in ax.get_xlabel()
    lo, hi = ax.get_xlim()  # the occupied range, in unit scale, not 0..1
    assert 0 < lo < GRAY16["a"].min() / 65535 + 0.001 and GRAY16["a"].max() / 65535 - 0.001 < hi < 0.07
    assert "per " in ax.get_ylabel()  # several levels per bar
    assert ax.lines[0].get_color() == "black"  # L is black
    check_png(render(gray16_figure, "png"), gray16_figure, 100)
    check_svg(render(gray16_figure, "svg"))


@pytest.fixture(scope="module")
def bands13_figure(matplotlib_loaded):
    """13-band int16 (signed, in its own units) with 1st and 99th percentiles."""
    data = make_report(INT16, BANDS13)
    values = INT16["a"].reshape(-1, 13)
    data["percentiles"] = {"99": np.percentile(values, 99, axis=0).tolist(),
                           "1": np.percentile(values, 1, axis=0).tolist()}
    return build_figure(Report(data))


def test_13_bands_int16_small_multiples_with_percentiles(bands13_figure):
    axes = bands13_figure.subfigs[0].axes
    assert len(axes) == 16 and sum(ax.axison for ax in axes) == 13  # a 4 x 4 grid, the last cell the legend
    assert "signed" in axes[-4].get_xlabel()
    # mean, 4 sigma lines and the two percentiles (by rank), in the data's own units
    assert len(axes[0].lines) == 7
    values = INT16["a"].reshape(-1, 13)
    assert axes[0].lines[-2].get_xdata()[0] == pytest.approx(np.percentile(values[:, 0], 1))
    legend = [t.get_text() for t in axes[-1].get_legend().get_texts()]
    assert legend[-1] == "percentiles (p1, p99)"
    colours = {ax.lines[0].get_color() for ax in axes[:13]}
    assert len(colours) == 13  # viridis shades, one per band


@pytest.mark.slow  # renders a whole figure: the other tests cover the layout
def test_13_bands_png(bands13_figure):
    check_png(render(bands13_figure, "png"), bands13_figure, 100)


@pytest.mark.slow  # renders a whole figure: the other tests cover the layout
def test_13_bands_svg(bands13_figure):
    check_svg(render(bands13_figure, "svg"))


def test_no_percentiles_key_draws_only_mean_and_sigmas():
    fig = build_figure(Report(make_report(RGB, ("R", "G", "B"))))
    assert all(len(ax.lines) == 5 for ax in fig.subfigs[0].axes)


def test_float_data_with_classes_draws_the_class_means_only():
    fig = build_figure(Report(make_report(FLOAT13, BANDS13, grouped=True)))
    assert len(fig.subfigs) == 1
    (ax,) = fig.subfigs[0].axes
    assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == 13
    check_png(render(fig, "png"), fig, 100)


@pytest.mark.parametrize("bn, ci", [(False, False), pytest.param(True, True, marks=pytest.mark.slow)])
def test_trace_convergence_chart(tmp_path, bn, ci):
    stats = write(tmp_path, "s.json", make_report(RGB, ("R", "G", "B")))
    trace = tmp_path / "trace.csv"
    trace.write_text(trace_csv("RGB", bn=bn, ci=ci))
    fig = build_figure(Report.read(str(stats)), read_trace(str(trace), ["R", "G", "B"]))
    mean_ax, std_ax = fig.subfigs[1].axes
    labels = [t.get_text() for t in std_ax.get_legend().get_texts()]
    assert "final exact value" in labels
    assert ("95% confidence band" in labels) == ci
    assert any("BatchNorm" in label for label in labels) == bn
    # per channel: the running value, the exact reference, and the BatchNorm estimate when there is one
    assert len(mean_ax.lines) == 3 * (3 if bn else 2)
    if bn:  # the std panel shows sqrt(running_var)
        assert std_ax.lines[1].get_ydata()[0] == pytest.approx(0.2)
    assert len(mean_ax.collections) == (3 if ci else 0)
    check_png(render(fig, "png"), fig, 100)


@pytest.mark.slow  # renders a whole figure: the other tests cover the layout
def test_trace_from_the_cli_as_svg(tmp_path):
    stats = write(tmp_path, "s.json", make_report({"a": GRAY16["a"]}, ("L",)))
    trace = tmp_path / "trace.csv"
    counted = Report.read(str(stats))
    trace.write_text(trace_csv("L", bn=True, ci=True, final=counted))
    result = cli("plot", stats, "--trace", trace, "-o", tmp_path / "t.svg", expect=0)
    assert result.stderr == ""
    check_svg((tmp_path / "t.svg").read_bytes())


def test_a_trace_of_another_run_with_the_same_counts_is_one_line(tmp_path):
    """Another folder or shard of as many images of one size counts as many images and pixels: its trace was
    drawn converging on other values than the result's, exit 0."""
    stats = write(tmp_path, "f.json", make_report({"x": FLOAT13["x"]}, BANDS13))
    trace = tmp_path / "trace.csv"
    counted = Report.read(str(stats))
    trace.write_text(trace_csv(BANDS13, final=(counted.images, counted.pixels)))  # ends on other values
    line = one_line_error(stats, "--trace", trace, "-o", tmp_path / "t.png")
    assert line.startswith(f"Error: {trace} is not the trace of {stats}: its last row's mean_{BANDS13[0]} is ")
    assert not (tmp_path / "t.png").exists()


def test_trace_alone_is_enough_for_float_data(tmp_path):
    stats = write(tmp_path, "f.json", make_report({"x": FLOAT13["x"]}, BANDS13))
    trace = tmp_path / "trace.csv"
    counted = Report.read(str(stats))
    trace.write_text(trace_csv(BANDS13, bn=True, final=counted))
    cli("plot", stats, "--trace", trace, "-o", tmp_path / "t.png", expect=0)


# -- bad input: one line ------------------------------------------------------------------------


def one_line_error(*args, expect: int = 1) -> str:
    result = cli("plot", *args, expect=expect)
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("text, words", [
    ("", "is empty"),
    ("\n\n", "is empty"),
    ("images,pixels,mean_R,mean_G,mean_B,std_R,std_G,std_B\n", "no rows"),
    ("step,pixels,mean_R,mean_G,mean_B,std_R,std_G,std_B\n1,2,3,4,5,6,7,8\n", "header must start"),
    ("images,pixels,mean_R,mean_G,mean_B\n1,2,3,4,5\n", "no std_<band> columns"),
    ("images,pixels,mean_L,std_L\n1,2,0.5,0.1\n", "do not match the result's channels (R, G, B)"),
    ("images,pixels,mean_B,mean_G,mean_R,std_B,std_G,std_R\n1,2,3,4,5,6,7,8\n", "(B, G, R) do not match"),
    ("images,pixels,mean_R,mean_G,mean_B,std_R,std_G,std_B\n1,2,3,4,5,6,7\n", "line 2: 7 fields"),
    ("images,pixels,mean_R,mean_G,mean_B,std_R,std_G,std_B\n1,2,x,4,5,6,7,8\n", "line 2: mean_R 'x' is not a number"),
    ("images,pixels,mean_R,mean_G,mean_B,std_R,std_G,std_B\n1,2,inf,4,5,6,7,8\n", "not a finite number"),
])
def test_bad_trace_is_one_line_naming_the_file(tmp_path, text, words):
    stats = write(tmp_path, "s.json", make_report(RGB, ("R", "G", "B")))
    trace = tmp_path / "trace.csv"
    trace.write_text(text)
    line = one_line_error(stats, "--trace", trace, "-o", tmp_path / "t.png")
    assert str(trace) in line and words in line
    assert not (tmp_path / "t.png").exists()


def test_binary_trace_is_one_line(tmp_path):
    stats = write(tmp_path, "s.json", make_report(RGB, ("R", "G", "B")))
    trace = tmp_path / "trace.csv"
    trace.write_bytes(b"\xff\xfe\x00garbage")
    assert "not a bnstats trace" in one_line_error(stats, "--trace", trace, "-o", tmp_path / "t.png")


def test_float_data_without_classes_or_trace_is_nothing_to_plot(tmp_path):
    stats = write(tmp_path, "f.json", make_report({"x": FLOAT13["x"]}, BANDS13))
    line = one_line_error(stats, "-o", tmp_path / "f.png")
    assert line.startswith(f"Error: nothing to plot: {stats}") and "float data" in line
    with pytest.raises(PlotError, match="nothing to plot"):
        build_figure(Report.read(str(stats)))


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not JSON"),
    ('{"mean": [0.5]}', "is not a bnstats result (missing 'channels')"),
    ("[1, 2]", "is not a bnstats result"),
])
def test_unreadable_result_is_the_readers_one_line(tmp_path, content, words):
    stats = tmp_path / "bad.json"
    stats.write_text(content)
    line = one_line_error(stats, "-o", tmp_path / "f.png")
    assert str(stats) in line and words in line


def test_bad_groups_and_percentiles_are_one_line(tmp_path):
    data = make_report(RGB, ("R", "G", "B"), grouped=True)
    data["percentiles"] = {"1": [0.1, 0.2]}
    stats = write(tmp_path, "s.json", data)
    assert "bad percentiles.1" in one_line_error(stats, "-o", tmp_path / "f.png")
    data = make_report(RGB, ("R", "G", "B"), grouped=True)
    data["groups"]["cat"]["mean"] = "high"
    stats = write(tmp_path, "s.json", data)
    assert "bad groups.cat.mean" in one_line_error(stats, "-o", tmp_path / "f.png")


def test_unwritable_output_is_one_line_and_checked_first(tmp_path):
    stats = write(tmp_path, "s.json", make_report(RGB, ("R", "G", "B")))
    line = one_line_error(stats, "-o", tmp_path / "missing" / "f.png")
    assert line.startswith(f"Error: cannot write {tmp_path / 'missing' / 'f.png'}: folder") and "does not exist" in line


def test_output_extension_and_presence_are_usage_errors(tmp_path):
    stats = write(tmp_path, "s.json", make_report(RGB, ("R", "G", "B")))
    line = one_line_error(stats, "-o", tmp_path / "f.jpg", expect=2)
    assert "f.jpg does not end in .png, .svg, .pdf" in line and "plot --help" in line
    assert "Missing option '-o'" in one_line_error(stats, expect=2)


def test_existing_figure_is_replaced_whole(tmp_path):
    stats = write(tmp_path, "s.json", make_report(RGB, ("R", "G", "B")))
    out = tmp_path / "f.png"
    out.write_bytes(b"old" * 100000)
    cli("plot", stats, "-o", out, expect=0)
    assert out.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "s.json"]  # no temporary file left


def test_without_matplotlib_one_line_naming_the_extra(tmp_path, monkeypatch):
    stats = write(tmp_path, "s.json", make_report(RGB, ("R", "G", "B")))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    line = one_line_error(stats, "-o", tmp_path / "f.png")
    assert line == f"Error: {MISSING_MATPLOTLIB}"
    assert 'pip install "bnstats[plot]"' in line
    assert not (tmp_path / "f.png").exists()


def test_reads_the_result_from_stdin(tmp_path):
    data = make_report(RGB, ("R", "G", "B"))
    cli("plot", "-", "-o", tmp_path / "f.png", input=json.dumps(data), expect=0)
    assert Image.open(tmp_path / "f.png").format == "PNG"


# -- --trace: rows that do not count up ----------------------------------------------------------------------


@pytest.fixture()
def traced_result(small_pngs, tmp_path):
    """A result and its trace (a row every 4 images): (result, header, rows)."""
    pytest.importorskip("matplotlib")
    trace, result = tmp_path / "t.csv", tmp_path / "r.json"
    cli("compute", small_pngs, "-q", "-j", "1", "--trace", trace, "--trace-every", "4", "-o", result, expect=0)
    header, *rows = trace.read_text().splitlines()
    return result, header, rows


@pytest.mark.slow  # a second or more: the quick tier keeps under a minute on 2 cores
@settings(FAST, max_examples=8)
@given(order=st.permutations(range(6)))
def test_plot_refuses_a_trace_whose_rows_do_not_count_up(traced_result, tmp_path, order):
    """Rows of a trace moved around (or two traces joined) ending on the right counts were drawn as curves
    going back and forth, exit 0; any order but the written one is now one line naming the line."""
    result, header, rows = traced_result
    assert len(rows) == 6
    shuffled = [rows[i] for i in order[:-1]] + [rows[-1]] if order[-1] != 5 else [rows[i] for i in order]
    trace = tmp_path / f"t{'_'.join(map(str, order))}.csv"
    trace.write_text("\n".join([header, *shuffled]) + "\n")
    out = trace.with_suffix(".png")  # tmp_path is shared by the examples: one figure each
    outcome = cli("plot", result, "--trace", trace, "-o", out)
    if shuffled == rows:
        assert outcome.exit_code == 0
    else:
        line = one_line(outcome)
        assert trace.name in line and "counts up" in line
        assert not out.exists()


def test_plot_refuses_negative_counts_in_a_trace(traced_result, tmp_path):
    result, header, rows = traced_result
    first = rows[0].split(",")
    trace = tmp_path / "neg.csv"
    trace.write_text("\n".join([header, ",".join(["-4", "-80", *first[2:]]), *rows]) + "\n")
    assert "counts up" in one_line(cli("plot", result, "--trace", trace, "-o", tmp_path / "p.png"))
