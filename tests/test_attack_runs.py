"""Hostile runs and outputs found after the "trust at the edges" work: forged checkpoints, observer states,
recalibrate inputs, stop signals and messages. Each test fails on the code before its fix."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import FakeTerminal, cli, interrupt_after, json_paths, one_line, stderr_lines, with_damage

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DAMAGE = ["drop", 0, -1, 10**40, 1e300, 0.5, "x", None, [], {}, True, [[1]]]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 small RGB PNGs."""
    root = tmp_path_factory.mktemp("attack_runs") / "d"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (4 + i % 3, 5, 3), dtype=np.uint8)).save(root / f"i{i:03d}.png")
    return root




# -- a forged BatchNorm state in a checkpoint ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bn_checkpoint(data, tmp_path_factory):
    """A checkpoint of a --bn-momentum run saved mid-batch (an unfinished batch and a total): (doc, args, ck)."""
    root = tmp_path_factory.mktemp("bn_ck")
    ck = root / "ck.json"
    args = [data, "--bn-momentum", "0.1", "--batch-size", "5", "--checkpoint", ck, "-o", root / "o.json"]
    with pytest.MonkeyPatch.context() as m:
        interrupt_after(m, 2)
        cli("compute", "-q", "-j", "1", *args, expect=130)
    doc = json.loads(ck.read_text())
    assert doc["observers"]["bn"]["total"] is not None
    return doc, args, ck


def _resign(doc):
    from bnstats.running.checkpoint import _digest

    doc["digest"] = _digest(doc)
    return doc


@pytest.mark.parametrize("path, value", [
    (("total", "n"), 0),            # was ZeroDivisionError: Fraction(…, 0) at the report
    (("max_value",), None),          # was TypeError: Fraction / NoneType at the report
    (("total", "sums"), [1, 2]),     # two channels in a three-channel run
])
def test_a_forged_bn_state_resumes_to_one_line_not_a_traceback(bn_checkpoint, path, value):
    doc, args, ck = bn_checkpoint
    forged = _resign(with_damage(doc, ("observers", "bn", *path), value))
    if path == ("total", "sums"):
        forged = _resign(with_damage(forged, ("observers", "bn", "total", "squares"), [1, 2]))
    ck.write_text(json.dumps(forged))
    line = one_line(cli("compute", "-q", "-j", "1", *args))
    assert "damaged" in line and "ck.json" in line


@settings(FAST, max_examples=200)
@given(pick=st.integers(0, 10**6), how=st.sampled_from(DAMAGE))
def test_a_bn_state_from_dict_is_a_value_error_or_a_writable_observer(bn_checkpoint, pick, how):
    """The class: any one damaged field of a saved BatchNorm state is refused by from_dict (the checkpoint's
    one-line "damaged"), or gives an observer whose result, state and next batch all work."""
    from bnstats.observers.batchnorm import BatchNormTracker
    from bnstats.statistics.states import ExactMoments

    state = bn_checkpoint[0]["observers"]["bn"]
    paths = list(json_paths(state))
    damaged = with_damage(state, paths[pick % len(paths)], how)
    try:
        tracker = BatchNormTracker.from_dict(damaged)
    except (KeyError, TypeError, ValueError, AttributeError):
        return
    json.dumps(tracker.result(), allow_nan=False)
    json.dumps(tracker.to_dict(), allow_nan=False)
    for _ in range(tracker.batch_size):
        tracker.add(ExactMoments(4, (1, 2, 3), (1, 4, 9)), 255)
    json.dumps(tracker.result(), allow_nan=False)


# -- recalibrate's checkpoint ------------------------------------------------------------------------------------

TINY = '''
import torch.nn as nn
def tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                         nn.BatchNorm2d(2))
'''


@pytest.fixture()
def recal(data, tmp_path, monkeypatch):
    """A model module on sys.path and the args of a recalibrate run with --checkpoint and --report."""
    pytest.importorskip("torch")
    import sys

    (tmp_path / "attackmodels.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("attackmodels", None)
    ck = tmp_path / "ck.json"
    args = ["recalibrate", "--model", "attackmodels:tiny", data, "--center-crop", "4", "--batch-size", "5", "-q",
            "--checkpoint", ck,
            "-o", tmp_path / "o.pt", "--report", tmp_path / "r.json"]
    return args, ck, tmp_path


def _kept_checkpoint(monkeypatch, args):
    """Run ``args`` to the end, saving after every batch and keeping the checkpoint (a stop after the last
    batch, before the outputs were written)."""
    from bnstats.running import checkpoint

    with monkeypatch.context() as m:
        m.setattr(checkpoint.SavedRun, "remove", lambda self: self.unlock())
        m.setattr(checkpoint.SavedRun, "due", lambda self: True)
        cli(*args, expect=0)


@pytest.mark.parametrize("edit", ["state", "items"])
def test_an_edited_recalibrate_checkpoint_is_damaged_not_other_buffers(recal, monkeypatch, edit):
    """A number changed in a recalibrate checkpoint (without its digest) was resumed into the model: an
    exact mean of 0.9 written instead of 0.14, exit 0."""
    args, ck, _ = recal
    _kept_checkpoint(monkeypatch, args)
    doc = json.loads(ck.read_text())
    if edit == "state":
        doc["states"]["1"]["mean"][0] = 0.9
    else:
        doc["items"] = doc["items"] - 5
    ck.write_text(json.dumps(doc))
    line = one_line(cli(*args))
    assert "damaged" in line and "ck.json" in line


def test_a_recalibrate_checkpoint_in_use_by_another_run_is_one_line(recal):
    """Two recalibrate runs on one --checkpoint both saved into it; the second now stops at once, as
    compute's does, naming the owner's pid."""
    import subprocess
    import sys

    args, ck, _ = recal
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(ck) + '.lock'!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'bnstats checkpoint lock, pid {os.getpid()}\\n'.encode())\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        line = one_line(cli(*args))
        assert "in use by another run" in line and f"pid {holder.pid}" in line
        assert not ck.exists()
    finally:
        holder.communicate("")
    cli(*args, expect=0)  # the lock gone, the run goes on
    assert not ck.exists() and not os.path.exists(str(ck) + ".lock")


@pytest.mark.parametrize("option", ["-o", "--report"])
def test_a_recalibrate_output_on_the_checkpoints_lock_file_is_a_usage_error(recal, option):
    """The lock file is deleted when the run ends: an output there would be written, then deleted."""
    args, ck, tmp_path = recal
    args = [a for a in args]
    args[args.index(option) + 1] = str(ck) + ".lock"
    result = cli(*args)
    assert result.exit_code == 2 and "lock" in result.stderr


# -- plot --trace: rows that do not count up ---------------------------------------------------------------------


@pytest.fixture()
def traced_result(data, tmp_path):
    """A result and its trace (a row every 4 images): (result, header, rows)."""
    pytest.importorskip("matplotlib")
    trace, result = tmp_path / "t.csv", tmp_path / "r.json"
    cli("compute", data, "-q", "-j", "1", "--trace", trace, "--trace-every", "4", "-o", result, expect=0)
    header, *rows = trace.read_text().splitlines()
    return result, header, rows


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


# -- the progress bar on a terminal of one or two rows -----------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 1), (80, 2)])
def test_the_bar_shows_on_a_terminal_of_fewer_than_three_rows(monkeypatch, size):
    """A pane of 2 rows (tmux, an IDE console) showed only "... (more hidden) ..." where the bar goes."""
    from bnstats.cli import progress

    monkeypatch.setenv("COLUMNS", str(size[0]))
    monkeypatch.setenv("LINES", str(size[1]))
    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd=None: os.terminal_size(size))
    stream = FakeTerminal()
    bar = progress.Progress(4, stream=stream)
    bar.advance(4)
    bar.close()
    assert "4/4" in stream.text and "more hidden" not in stream.text


# -- a JSON input is bounded before it is parsed -----------------------------------------------------------------


@pytest.mark.parametrize("command", ["merge", "export", "plot", "checkpoint", "stdin"])
def test_a_json_past_the_limit_is_refused_before_it_is_parsed(data, tmp_path, monkeypatch, command):
    """256 MiB of ``[0,0,…]`` given to merge, export, plot or as a checkpoint took 1.5 GiB and 23 s to be
    refused; JSON is now bounded by BNSTATS_MAX_JSON_BYTES (256 MiB) and by an estimate of its parsed size, named in the one-line refusal."""
    from bnstats import limits
    from click.testing import CliRunner

    from bnstats.cli.main import main

    monkeypatch.setattr(limits, "_current", limits.Limits(json_bytes=10_000))
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 20_000 + "0]")
    args = {"merge": ["merge", big], "export": ["export", big, "-f", "json"],
            "plot": ["plot", big, "-o", tmp_path / "p.png"], "stdin": ["export", "-", "-f", "json"],
            "checkpoint": ["compute", data, "-q", "-j", "1", "--checkpoint", big, "-o", tmp_path / "o.json"]}[command]
    stdin = big.read_text() if command == "stdin" else None
    result = CliRunner().invoke(main, [str(a) for a in args], input=stdin)
    line = one_line(result)
    assert "BNSTATS_MAX_JSON_BYTES" in line and "larger than" in line
    if command == "checkpoint":
        assert big.exists()  # not another's file to replace


def test_the_json_limit_is_raised_by_its_variable():
    from bnstats import limits

    assert limits.Limits.from_environ({"BNSTATS_MAX_JSON_BYTES": "300M"}).json_bytes == 300 << 20
    assert limits.Limits().json_bytes == 256 << 20


@settings(FAST, max_examples=10)
@given(item=st.sampled_from(["{}", "[]", '{"a":0}', "[[]]"]))
def test_json_of_many_small_containers_is_refused_before_it_is_parsed(tmp_path, monkeypatch, item):
    """8 MiB of ``[{},{},…]`` took 650 MiB to parse before being refused (each object costs ~80 bytes for 3 of
    text); the parsed size is estimated first, against 8 × BNSTATS_MAX_JSON_BYTES."""
    from bnstats import limits

    monkeypatch.setattr(limits, "_current", limits.Limits(json_bytes=50_000))
    many = tmp_path / "many.json"
    many.write_text("[" + ",".join([item] * (45_000 // (len(item) + 1))) + "]")  # under 50 kB of text
    assert many.stat().st_size <= 50_000
    line = one_line(cli("merge", many))
    assert "too many JSON items" in line and "BNSTATS_MAX_JSON_BYTES" in line


def test_a_real_result_is_far_below_the_parse_estimate(data, tmp_path):
    """What bnstats writes (a --group-by result with percentiles) is mostly numbers: its estimated parsed size
    is a small multiple of its bytes, far below the 8× bound."""
    from bnstats import jsonio

    out = tmp_path / "g.json"
    cli("compute", data, "-q", "-j", "1", "--percentiles", "1,50", "-o", out, expect=0)
    text = out.read_bytes()
    jsonio.check_parse_cost(text, "g.json", len(text))  # would raise past 8 × its own size


# -- '-' for --trace and --checkpoint ------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--trace", "--checkpoint"])
def test_a_dash_for_trace_or_checkpoint_is_a_usage_error(data, tmp_path, monkeypatch, option):
    """-o - is stdout; --trace - silently wrote a file named '-' into the current folder (exit 0)."""
    monkeypatch.chdir(tmp_path)
    result = cli("compute", data, "-q", "-j", "1", option, "-")
    assert result.exit_code == 2 and "standard output" in result.stderr
    assert not (tmp_path / "-").exists()
