"""Hostile reports and states for the report consumers (export, plot, merge) and the moving metrics.

Each test is a defect found by attacking them: a hand-edited report (or a
checkpoint's state) that once gave a traceback or a number no run could
have written.
"""

import json

import numpy as np
import pytest
from helpers import cli, cli_json
from PIL import Image

from bnstats.output.reading import Report
from bnstats.output.trace_rows import check_same_run, read_trace
from bnstats.statistics.states import ExactMoments, MomentState


@pytest.fixture(scope="module")
def float_report(tmp_path_factory):
    """A float (moments-state) result, as text."""
    root = tmp_path_factory.mktemp("floats")
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.random((4, 5)).astype(np.float32), mode="F").save(root / f"{i}.tif")
    return json.dumps(cli_json("compute", root, "-q", "--mode", "native"))


@pytest.mark.parametrize("command", [("export", "{}", "-f", "torchvision"), ("merge", "{}", "{}"),
                                     ("plot", "{}", "-o", "{}.png")])
def test_a_negative_sum_of_squares_in_a_float_state_is_one_line(float_report, command, tmp_path):
    """A float state's m2 edited below 0 once raised 'math domain error' with a traceback in every consumer."""
    data = json.loads(float_report)
    data["state"]["m2"][0] = -1.0
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    result = cli(*(part.format(edited) for part in command), expect=1)
    assert "m2" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_moment_states_refuse_a_negative_sum_of_squares():
    state = MomentState.from_dict({"n": 2, "mean": [1.0], "m2": [0.5], "min": [0.5], "max": [1.5]})
    assert state.m2.tolist() == [0.5]
    with pytest.raises(ValueError, match="m2"):
        MomentState.from_dict({"n": 2, "mean": [1.0], "m2": [-0.5], "min": [0.5], "max": [1.5]})


@pytest.fixture(scope="module")
def grouped_report(tmp_path_factory):
    """An 8-bit result with classes, percentiles and labels' foreground, as text."""
    root = tmp_path_factory.mktemp("grouped")
    rng = np.random.default_rng(5)
    for i in range(4):
        (root / "data" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(root / "data" / "ab"[i % 2] / f"{i}.png")
    return json.dumps(cli_json("compute", root / "data", "-q", "--group-by", "class", "--percentiles", "1,99"))


def _edit(report: str, path: tuple, value):
    data = json.loads(report)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize("path", [("median", 0), ("raw", "median", 1), ("percentiles", "99", 0),
                                  ("raw", "percentiles", "1", 2), ("groups", "a", "mean", 0),
                                  ("groups", "b", "std", 2), ("groups", "a", "percentiles", "99", 0),
                                  ("groups", "b", "median", 1)])
def test_an_edited_order_statistic_or_class_mean_is_refused_by_every_consumer(grouped_report, path, tmp_path):
    """plot draws the written percentiles and classes' unit-scale means and stds; only the raw statistics were
    checked against the exact state, so an edited percentile or class mean was drawn, exit 0."""
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(_edit(grouped_report, path, 0.123)))
    field = ".".join(map(str, path[:-1]))
    for command in (("plot", edited, "-o", tmp_path / "x.png"), ("export", edited, "-f", "json")):
        result = cli(*command, expect=1)
        assert result.stderr.strip() == f"Error: {edited}: bad {field}: differs from what its state holds " \
                                        "(edited or damaged?)"


@pytest.mark.slow
def test_an_unedited_grouped_report_is_read_by_every_consumer(grouped_report, tmp_path):
    report = tmp_path / "stats.json"
    report.write_text(grouped_report)
    cli("plot", report, "-o", tmp_path / "x.png", expect=0)
    assert json.loads(cli("export", report, "-f", "json", expect=0).stdout)


@pytest.mark.parametrize("kind", ["ignored", "nan"])
def test_compare_with_every_pixel_left_out_says_so_in_one_line(kind, tmp_path):
    """It was numpy's RuntimeWarnings from the naive side's child, then 'the naive method failed: IndexError:
    list index out of range'."""
    if kind == "ignored":
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "black.png")
        args = ("--ignore-value", "0,0,0")
    else:
        Image.fromarray(np.full((4, 5), np.nan, np.float32), mode="F").save(tmp_path / "nan.tif")
        args = ("--mode", "native")
    result = cli("compare", tmp_path, "-q", "-j", "1", *args, expect=1)
    assert result.stderr.strip().splitlines() == [
        ("Error: the streaming method failed: no pixel was counted: every pixel of the 1 images was left out "
        "(--ignore-value, or NaN/infinite float pixels)")]


def test_plot_refuses_the_trace_of_another_momentum_and_draws_its_own(tmp_path):
    """Same images, same counts, mean and std: a trace of --bn-momentum 0.1 was drawn under a result's
    'BatchNorm (momentum 0.5)' label. A smaller last batch is a step after the trace's last row: still drawn."""
    rng = np.random.default_rng(8)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    runs = {}
    for momentum, batch in (("0.5", "3"), ("0.1", "3"), ("0.5", "4")):
        trace, stats = tmp_path / f"t{momentum}-{batch}.csv", tmp_path / f"s{momentum}-{batch}.json"
        cli("compute", tmp_path, "-q", "--bn-momentum", momentum, "--batch-size", batch, "--trace", trace,
            "-o", stats, expect=0)
        runs[momentum, batch] = stats, trace
    for stats, trace in runs.values():  # each with its own trace (checked as plot checks it, without drawing)
        report = Report.read(str(stats))
        check_same_run(report, read_trace(str(trace), report.channels))
    result = cli("plot", runs["0.5", "3"][0], "--trace", runs["0.1", "3"][1], "-o", tmp_path / "x.png", expect=1)
    assert result.stderr.startswith(f"Error: {runs['0.1', '3'][1]} is not the trace of {runs['0.5', '3'][0]}: its "
                                    "last row's bn_running_mean_R is ")


def test_plot_of_a_result_without_state_and_a_negative_class_std_is_one_line(grouped_report, tmp_path):
    """A result without its state is drawn from its written numbers: a negative class std was matplotlib's
    "'yerr' must not contain negative values" with a traceback."""
    data = _edit(grouped_report, ("groups", "b", "std", 1), -0.25)
    for part in (data, *data["groups"].values()):
        del part["state"]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    result = cli("plot", edited, "-o", tmp_path / "x.png", expect=1)
    assert result.stderr.strip() == f"Error: {edited}: bad groups.b.std: must not be negative"


def test_a_simulated_batch_of_one_value_per_channel_is_not_a_step(tmp_path):
    """One-pixel images in batches of one: each batch moved running_var towards a 'variance' of 0, where
    PyTorch refuses the batch in training. Now no step; the exact values still count every pixel."""
    from bnstats.observers.batchnorm import BatchNormTracker

    for i, value in enumerate((10, 200, 90)):
        Image.fromarray(np.full((1, 1, 3), value, np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(np.full((2, 1, 3), 50, np.uint8)).save(tmp_path / "3.png")
    bn = cli_json("compute", tmp_path, "-q", "--bn-momentum", "0.5", "--batch-size", "1")["bn"]
    assert bn["num_batches_tracked"] == 1  # the two-pixel image alone
    assert bn["running_mean"] == [0.5 * 50 / 255] * 3 and bn["running_var"] == [0.5] * 3
    assert bn["exact_mean"] == pytest.approx([(10 + 200 + 90 + 100) / 5 / 255] * 3, rel=1e-12)
    tracker = BatchNormTracker(1, 0.5)  # only one-value batches so far: a checkpoint holds a total, no step
    tracker.add(ExactMoments(1, (10, 10, 10), (100, 100, 100)), 255)
    saved = json.loads(json.dumps(tracker.to_dict()))
    assert saved["running_mean"] is None and "distance" not in saved
    assert BatchNormTracker.from_dict(saved).result() == tracker.result()
