"""The command line at its edges: brace patterns, file lists, stop signals while listing, option values,
recalibrate's refusals, messages.

Every case is one line of error (exit 2 for a usage error, 1 for a failure,
128 + signal for a stop) or a correct run; never a traceback, never a wrong
number written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from bnstats.inputs import select as inputs
from bnstats.running import interrupts
from helpers import FakeTerminal, cli, one_line_error, stderr_lines


# -- 1. brace patterns ------------------------------------------------------------------------------------


# -- 2. --files-from ------------------------------------------------------------------------------------


# -- 7. a stop while listing ------------------------------------------------------------------------------


def _stop_in(monkeypatch, module, name, signum=signal.SIGINT):
    def stop(*args, **kwargs):
        raise interrupts.Stopped(signum)
    monkeypatch.setattr(module, name, stop)


@pytest.mark.parametrize("signum, code, message", [(signal.SIGINT, 130, "bnstats: interrupted"),
                                                   (signal.SIGTERM, 143, "bnstats: stopped by SIGTERM")])
def test_a_stop_while_a_brace_pattern_is_checked_exits_128_plus_signal(monkeypatch, tmp_path, signum, code, message):
    """Click converts the PATHS while parsing: a Ctrl-C there used to be click's "Aborted!", exit 1."""
    from bnstats.cli import options

    _stop_in(monkeypatch, options.os.path, "lexists", signum)
    result = cli("compute", str(tmp_path / "s{0..9}"))
    assert one_line_error(result, code) == message


def test_a_stop_while_a_folder_is_walked_exits_130(monkeypatch, images):
    folder, _ = images
    _stop_in(monkeypatch, inputs, "open_and_list")
    assert one_line_error(cli("compute", folder), 130) == "bnstats: interrupted"


def test_a_stop_while_the_file_list_is_read_exits_130(monkeypatch, tmp_path):
    _stop_in(monkeypatch, inputs, "_list_lines")
    (tmp_path / "l.txt").write_text("x\n")
    assert one_line_error(cli("compute", "--files-from", tmp_path / "l.txt"), 130) == "bnstats: interrupted"


@pytest.mark.slow
def test_sigterm_while_the_list_is_read_from_stdin_exits_143(tmp_path, images):
    folder, _ = images
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "bnstats", "compute", "--files-from", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        proc.stdin.write(f"{folder / 'a.png'}\n")  # and the list never ends
        proc.stdin.flush()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, err, out) == (143, "bnstats: stopped by SIGTERM\n", "")


@pytest.mark.slow
def test_ctrl_c_during_a_long_expansion_in_a_real_process(tmp_path):
    """A real SIGINT while a URL pattern of 10⁸ names is checked (URLs are not looked up): 130, one line."""
    env = {**os.environ, "BNSTATS_MAX_NAMES": "1G", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "bnstats", "compute", "http://127.0.0.1:9/x{0..99999999}.png"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "bnstats: interrupted"


# -- 3. recalibrate: no NaN into a model ------------------------------------------------------------------

TINY = '''
import os, signal
import torch
from torch import nn


class StopAt(nn.Module):
    """Ctrl-C (a real SIGINT) on forward call STOP_AT, once (the file STOP_MARKER remembers)."""

    calls = 0

    def forward(self, x):
        StopAt.calls += 1
        marker = os.environ.get("STOP_MARKER")
        if marker and StopAt.calls == int(os.environ["STOP_AT"]) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGINT)
        return x


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2),
                         StopAt())
'''


@pytest.fixture
def model_setup(tmp_path, monkeypatch, images):
    torch = pytest.importorskip("torch")
    (tmp_path / "tinyedge.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tinyedge", None)
    return tmp_path, images[0], torch


def recal(*args):
    return cli("recalibrate", "--model", "tinyedge:build", "--batch-size", 2, *args)


@pytest.mark.parametrize("mean, std, bad", [("0.5,0.5,0.5", "1e-300,1,1", "std"), ("nan,0.5,0.5", "1,1,1", "mean"),
                                            ("0.5,0.5,0.5", "inf,1,1", "std"), ("0.5,0.5,0.5", "-1,1,1", "std"),
                                            ("0.5,0.5,0.5", "0,1,1", "std"), ("0.5,0.5", "1,1,1", "one per")])
def test_normalization_values_that_make_inputs_non_finite_are_usage_errors(model_setup, mean, std, bad):
    tmp_path, folder, _ = model_setup
    line = one_line_error(recal(folder, "--mean", mean, "--std", std, "-o", tmp_path / "m.pt"), 2)
    assert bad in line and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("stats, code", [('{"mean": [0.5, null, 0.5], "std": [1, 1, 1]}', 2),
                                         ('{"mean": [0.5, NaN, 0.5], "std": [1, 1, 1]}', 1),  # not bnstats' JSON
                                         ('{"mean": [0.5, 0.5, 0.5], "std": [1e-300, 1, 1]}', 2),
                                         ('{"mean": [0.5, 0.5, 0.5], "std": [true, 1, 1]}', 2)])
def test_a_normalize_file_with_unusable_values_is_refused(model_setup, stats, code):
    tmp_path, folder, _ = model_setup
    (tmp_path / "s.json").write_text(stats)
    line = one_line_error(recal(folder, "--normalize", tmp_path / "s.json", "-o", tmp_path / "m.pt"), code)
    assert "s.json" in line and not (tmp_path / "m.pt").exists()


def test_statistics_that_overflow_fail_in_one_line_and_write_no_model(model_setup):
    """std 1e-30 passes the check (1/std fits float32), yet the first layer's variance overflows float32."""
    tmp_path, folder, _ = model_setup
    result = recal(folder, "--mean", "0.5,0.5,0.5", "--std", "1e-30,1,1", "-o", tmp_path / "m.pt",
                   "--report", tmp_path / "r.json")
    line = one_line_error(result, 1)
    assert "layer '1'" in line and "not finite" in line and "no statistics written" in line
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("mode", ["train", "sequential"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_the_library_refuses_non_finite_statistics_and_leaves_the_model(bad, mode):
    torch = pytest.importorskip("torch")
    from bnstats.torch import NonFiniteStatisticsError, recalibrate_bn

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = torch.rand(2, 3, 4, 4)
    batch[0, 0, 0, 0] = bad
    with pytest.raises(NonFiniteStatisticsError, match="layer '1'"):
        recalibrate_bn(model, [batch, torch.rand(2, 3, 4, 4)], mode=mode)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0, -3.5, 1e20, 1e38, float("nan"), float("inf"), -float("inf")]),
                min_size=1, max_size=4))
def test_recalibrate_bn_writes_finite_buffers_or_nothing(values):
    """The class of bug: a NaN or infinity reaching a model's buffers. Whatever the inputs, the written
    buffers are finite, or the call raises and the buffers are as they were."""
    torch = pytest.importorskip("torch")
    from bnstats.torch import NonFiniteStatisticsError, recalibrate_bn

    bn = torch.nn.BatchNorm2d(1)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    batch = torch.tensor(values + [0.5] * (4 - len(values)), dtype=torch.float32).view(1, 1, 2, 2)
    try:
        recalibrate_bn(bn, [batch])
    except NonFiniteStatisticsError:
        assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())
    else:
        assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()


def test_recalibrate_says_it_resumes_as_compute_does(model_setup, monkeypatch):
    tmp_path, folder, _ = model_setup
    monkeypatch.setenv("STOP_MARKER", str(tmp_path / "stopped"))
    monkeypatch.setenv("STOP_AT", "2")
    ck = tmp_path / "ck.json"
    first = recal(folder, "-o", tmp_path / "m.pt", "--checkpoint", ck)
    assert first.exit_code == 130 and ck.exists(), first.output
    again = recal(folder, "-o", tmp_path / "m.pt", "--checkpoint", ck)
    assert again.exit_code == 0, again.output
    assert f"bnstats: warning: resuming from {ck}: 2 of 4 files already counted" in again.stderr


def test_weights_of_another_pickle_protocol_are_one_line_without_torchs_warning(model_setup):
    tmp_path, folder, torch = model_setup
    import tinyedge

    torch.save(tinyedge.build().state_dict(), tmp_path / "w.pt", pickle_protocol=4)
    line = one_line_error(recal(folder, "--weights", tmp_path / "w.pt", "--dry-run"), 1)
    assert "pickle protocol 4" in line and "Detected" not in line


# -- 4. "none could be read" says why ---------------------------------------------------------------------


@pytest.mark.parametrize("quiet", [(), ("-q",)])
def test_none_readable_names_the_first_error_with_and_without_q(tmp_path, quiet):
    for name in "abcd":
        (tmp_path / f"{name}.png").write_bytes(b"junk")
    result = cli("compute", tmp_path, "-j", 1, *quiet)
    assert result.exit_code == 1
    last = stderr_lines(result)[-1]
    assert last.startswith("Error: none of the 4 images could be read (first: ") and "a.png: " in last
    assert "cannot identify image file" in last


# -- 5. a progress bar on a terminal of 0x0 ---------------------------------------------------------------


@pytest.mark.parametrize("size", [(0, 0), (0, 24), (100, 0)])
def test_the_bar_shows_on_a_terminal_that_reports_no_size(monkeypatch, size):
    from bnstats.cli import progress

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd=None: os.terminal_size(size))
    stream = FakeTerminal()
    bar = progress.Progress(4, stream=stream)
    bar.advance(4)
    bar.close()
    assert "4/4" in stream.text


def test_the_bar_shows_on_a_real_pty_of_0x0(tmp_path, images):
    pty = pytest.importorskip("pty")
    import fcntl
    import select
    import struct
    import termios

    folder, _ = images
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.getcwd()
    proc = subprocess.Popen([sys.executable, "-m", "bnstats", "compute", folder, "-j", "1", "-o", tmp_path / "o.json"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed its end
                    break
                if not data:
                    break
                seen += data
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert b"4/4" in seen


# -- 6. compare's note on rounding follows the data ---------------------------------------------------------


def test_compare_on_float_data_does_not_claim_exact_integer_counting(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.random((3, 4, 5, 3), dtype=np.float32))
    result = cli("compare", tmp_path / "x.npy", "-q", "-j", 1)
    assert result.exit_code == 0, result.output
    assert "float data is accumulated in float64 with Chan's merge" in result.stdout
    assert "integer pixels" not in result.stdout


def test_the_rounding_note_per_kind():
    from bnstats.running.compare import rounding_note

    assert "integer pixels are counted exactly" in rounding_note("histogram")
    assert "integer pixels are counted exactly" in rounding_note("exact_moments")
    assert "float data" in rounding_note("moments")


def test_compare_with_nothing_readable_names_the_first_error(tmp_path):
    for name in "ab":
        (tmp_path / f"{name}.png").write_bytes(b"junk")
    line = one_line_error(cli("compare", tmp_path, "-q", "-j", 1), 1)
    assert "none of the 2 images could be read (first: " in line and "CompareError" not in line


# -- 8. hostile option values ----------------------------------------------------------------------------

BIG = str(10**30)


@pytest.mark.parametrize("args, words", [
    (("--resize", "0"), "not a positive size"),
    (("--resize", "100000"), "10,000,000,000 pixels or more, over the limit"),  # 36 GB per image: it was OOM-killed
    (("--resize", BIG), "10^60 pixels or more"),  # each image was an OverflowError skip
    (("--center-crop", "20000x20000"), "BNSTATS_MAX_PIXELS"),
    (("--center-crop", BIG), "BNSTATS_MAX_PIXELS"),
    (("--shard", "3/2"), "0 <= K < N"),
    (("-j", "0"), "x>=1"),
    (("--percentiles", "101"), "outside 0..100"),
    (("--percentiles", "nan"), "not a number"),
    (("--batch-size", "0", "--bn-momentum", "0.1"), "x>=1"),
    (("--bn-momentum", "2", "--batch-size", "2"), "momentum in (0, 1]"),
    (("--bn-momentum", "nan", "--batch-size", "2"), "momentum in (0, 1]"),
    (("--sample", "0"), "x>=1"),
    (("--ignore-value", "1e400"), "finite"),
    (("-o", "."), "is a directory"),
    (("--trace", "/dev/full"), "not a regular file"),
    (("--checkpoint", "/dev/full"), "not a regular file"),
    (("-o", ""), "names no file"), (("--trace", ""), "names no file"), (("--checkpoint", " "), "names no file"),
])
def test_hostile_compute_options_are_one_line_usage_errors(images, args, words):
    folder, _ = images
    line = one_line_error(cli("compute", folder, *args), 2)
    assert words in line


@pytest.mark.parametrize("args", [("-j", BIG), ("--sample", BIG), ("--seed", BIG, "--sample", "2"),
                                  ("--bn-momentum", "0.1", "--batch-size", BIG), ("--shard", f"0/{BIG}"),
                                  ("--trace-every", BIG, "--trace", "TMP/t.csv"), ("--ignore-value", BIG)])
def test_huge_integers_are_correct_runs(images, tmp_path, args):
    folder, _ = images
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    assert cli("compute", folder, "-q", *args).exit_code == 0


def test_output_to_a_full_disk_is_one_line(images):
    folder, _ = images
    assert "No space left on device" in one_line_error(cli("compute", folder, "-q", "-o", "/dev/full"), 1)


@pytest.mark.parametrize("args, words", [(("--tolerance", "nan"), "finite"), (("--tolerance", "-1"), "finite"),
                                         (("--max-memory", "0"), "at least 1 byte"),
                                         (("--limit", "0"), "x>=1")])
def test_hostile_compare_options_are_one_line_usage_errors(images, args, words):
    folder, _ = images
    assert words in one_line_error(cli("compare", folder, "-q", *args), 2)


def test_recalibrate_max_batches_past_any_count_is_all_batches(model_setup):
    tmp_path, folder, _ = model_setup
    assert recal(folder, "--max-batches", BIG, "--dry-run", "-q").exit_code == 0  # was islice's ValueError


def test_recalibrate_resize_past_the_pixel_limit_is_a_usage_error(model_setup):
    tmp_path, folder, _ = model_setup
    assert "BNSTATS_MAX_PIXELS" in one_line_error(recal(folder, "--resize", "100000", "--dry-run"), 2)


def test_a_storage_option_nesting_too_deep_is_a_usage_error(images):
    folder, _ = images
    assert "nests too deep" in one_line_error(cli("compute", folder, "--storage-option", "a=" + "[" * 100000), 2)


@pytest.mark.parametrize("quiet", [(), ("-q",)])
def test_recalibrate_with_nothing_readable_names_the_first_error(model_setup, quiet):
    tmp_path, _, _ = model_setup
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in "ab":
        (bad / f"{name}.png").write_bytes(b"junk")
    result = recal(bad, "--dry-run", *quiet)
    assert result.exit_code == 1
    assert stderr_lines(result)[-1].startswith("Error: none of the 2 images could be read (first: ")
    assert "a.png: " in stderr_lines(result)[-1]


def test_a_thin_image_resized_past_the_pixel_limit_is_a_skip_not_an_allocation(tmp_path):
    """--resize 5000 passes the option check (25·10⁶ pixels), but a 1x2000 image would become 5000x10⁷."""
    Image.fromarray(np.zeros((1, 2000, 3), np.uint8)).save(tmp_path / "thin.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "square.png")
    result = cli("compute", tmp_path, "--resize", "5000", "-j", 1)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 1
    assert "10000000x5000" in report["skipped"][0]["error"] and "BNSTATS_MAX_PIXELS" in report["skipped"][0]["error"]
