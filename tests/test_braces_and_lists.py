"""Input names from brace patterns and file lists: the names limit, lazy expansion, NULs, byte-order
marks, long lines, stdin, and a stop (Ctrl-C, SIGTERM) while a pattern is checked or a list is read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from bnstats import limits
from bnstats.inputs import select as inputs
from bnstats.inputs.select import InputError, brace_count, expand_braces, read_file_list
from helpers import cli, one_line_error, stop_in


@pytest.fixture
def small_names(monkeypatch):
    """BNSTATS_MAX_NAMES=50 for this test."""
    monkeypatch.setattr(limits, "_current", limits.Limits(names=50))


@pytest.mark.parametrize("pattern", ["x{0..999999}{0..999999}", "x{0..%d}" % 10**27,
                                     "{a,b}" * 8 + "{0..9999}", "{{{{{{{{a,b},c},d},e},f},g},h},i}{0..999999}"])
def test_a_brace_pattern_past_the_names_limit_is_refused_before_it_is_built(tmp_path, pattern):
    start = time.monotonic()
    line = one_line_error(cli("compute", str(tmp_path / pattern)), 2)
    assert "expands to more than 1,000,000 paths" in line and "BNSTATS_MAX_NAMES" in line
    assert time.monotonic() - start < 10  # counted, not expanded (expanding takes minutes and gigabytes)


def test_a_brace_bound_too_long_for_python_is_one_line(tmp_path):
    line = one_line_error(cli("compute", str(tmp_path / ("{0..1" + "0" * 5000 + "}"))), 2)
    assert "too long" in line


def test_braces_nested_too_deep_are_one_line(tmp_path):
    line = one_line_error(cli("compute", str(tmp_path / ("{" * 200 + "a,b" + "}" * 200))), 2)
    assert "nests braces" in line


@pytest.mark.parametrize("pattern", ["{" * 5000 + "x", "{a," * 40 + "x", "}{" * 3000, "{a{b{c" * 1000])
def test_unclosed_braces_are_literal_and_quick(pattern):
    """Each unclosed "{" was tried as a group again from every enclosing one: 2^k work for k of them."""
    start = time.monotonic()
    assert list(expand_braces(pattern)) == [pattern]
    assert time.monotonic() - start < 5  # 2^k work for k unclosed braces never ends


def test_the_names_limit_is_raised_by_its_variable(small_names):
    assert brace_count("{0..49}") == 50 and len(list(expand_braces("{0..49}"))) == 50
    with pytest.raises(InputError, match="more than 50 paths"):
        expand_braces("{0..50}")


def test_brace_expansion_is_lazy():
    names = expand_braces("s{0..999999}")
    assert next(names) == "s0" and next(names) == "s1"  # a generator: nothing else was built


def test_a_missing_path_stops_the_check_of_a_big_pattern_at_once(tmp_path):
    (tmp_path / "s0").mkdir()
    line = one_line_error(cli("compute", str(tmp_path / "s{0..999999}")), 2)
    assert "s1' does not exist" in line


@pytest.mark.parametrize("pattern, names", [
    ("a-{000..002}.tar", ["a-000.tar", "a-001.tar", "a-002.tar"]),
    ("{x,y}/z", ["x/z", "y/z"]),
    ("{a,{b,c}}d", ["ad", "bd", "cd"]),
    ("{a}", ["{a}"]), ("{}", ["{}"]), ("x{", ["x{"]), ("{a,b}{", ["a{", "b{"]),
    ("{5..1..2}", ["5", "3", "1"]), ("{-1..1}", ["-1", "0", "1"]), ("{0..4..0}", ["0", "1", "2", "3", "4"]),
    ("{0..10..5}", ["0", "5", "10"]), ("{00..10..5}", ["00", "05", "10"]),  # padded only from a padded bound
])
def test_brace_examples(pattern, names):
    assert list(expand_braces(pattern)) == names


_piece = st.one_of(
    st.text("ab/.", max_size=3),
    st.text("a{},.", max_size=4),  # stray braces and commas: literal
    st.lists(st.text("xy", max_size=2), min_size=2, max_size=4).map(lambda xs: "{" + ",".join(xs) + "}"),
    st.tuples(st.integers(-20, 20), st.integers(-20, 20), st.integers(0, 4)).map(
        lambda t: "{%d..%d..%d}" % t),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_piece, max_size=5), st.integers(1, 60))
def test_the_count_is_the_number_of_names_and_the_limit_holds(pieces, bound):
    """The class of bug: an expansion that grows past its bound. The arithmetic count agrees with the
    expansion, and a pattern over the bound is refused before any name is made."""
    pattern = "".join(pieces)
    assume(brace_count(pattern) <= 10_000)  # the expansion is listed whole below: keep it small
    everything = limits.Limits(names=10**6)
    real = limits._current
    try:
        limits._current = everything
        names = list(expand_braces(pattern))
        assert brace_count(pattern) == len(names)
        limits._current = limits.Limits(names=bound)
        if len(names) > bound:
            with pytest.raises(InputError, match="BNSTATS_MAX_NAMES"):
                expand_braces(pattern)
        else:
            assert list(expand_braces(pattern)) == names
    finally:
        limits._current = real


def test_a_nul_in_a_listed_path_is_a_skip_entry_naming_its_line(tmp_path, images):
    folder, arrays = images
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"# my list\n" + str(folder / "a.png").encode() + b"\nbad\x00name.png\n"
                        + str(folder / "b.png").encode() + b"\n")
    result = cli("compute", "--files-from", listing, expect=0)
    report = json.loads(result.stdout)
    assert report["images"] == 2
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays[:2]]).astype(np.float64) / 255
    np.testing.assert_allclose(report["mean"], pixels.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(report["std"], pixels.std(axis=0), rtol=0, atol=1e-12)
    assert report["skipped"] == [{"path": f"{listing}:3", "error": "the line holds a NUL byte, which no path can hold"}]
    assert "list.txt:3" in result.stderr


def test_a_list_starting_with_a_byte_order_mark(tmp_path, images):
    folder, _ = images
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + str(folder / "a.png").encode() + b"\r\n")
    assert read_file_list(str(listing)) == ([str(folder / "a.png")], [])


def test_a_list_of_nothing_but_nul_lines_fails_in_one_line(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\x00\x00\n\x00\n")
    assert "list.txt:1: the line holds a NUL byte" in one_line_error(cli("compute", "--files-from", listing), 1)


@pytest.mark.parametrize("content", [b"\x00" * (1 << 20), b"x" * (100 << 10) + b"\n"])
def test_a_line_longer_than_a_path_stops_the_list_in_one_line(tmp_path, content):
    listing = tmp_path / "list.txt"
    listing.write_bytes(content)
    line = one_line_error(cli("compute", "--files-from", listing), 1)
    assert "line 1 of the file list" in line and "longer than 65,536 bytes" in line


def test_the_list_is_read_a_line_at_a_time(tmp_path):
    """/dev/zero never ends: only a bounded read of its first line can refuse it."""
    with pytest.raises(InputError, match="longer than"):
        read_file_list("/dev/zero")


def test_a_list_from_stdin_with_a_nul(images):
    folder, _ = images
    text = f"{folder / 'a.png'}\n\x00\n"
    result = cli("compute", "-q", "--files-from", "-", input=text, expect=0)
    assert '"-:2"' in result.stdout


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=8))
def test_every_line_is_a_path_a_skip_or_ignored(tmp_path_factory, lines):
    """The class of bug: a line that is no path crashes the reading. Every line is one of the three."""
    listing = tmp_path_factory.mktemp("lists") / "list.txt"
    listing.write_bytes(b"\n".join(lines))
    paths, skipped = read_file_list(str(listing))
    assert all("\0" not in p and p == p.strip() and p for p in paths)
    assert all(s["error"].startswith("the line holds a NUL") for s in skipped)
    real = [line.replace(b"\r", b"") for line in b"\n".join(lines).split(b"\n")]
    assert len(paths) + len(skipped) <= len(real)


# -- a stop while a pattern is checked or a list is read: 128 + signal, one line -----------------------------


@pytest.mark.parametrize("signum, code, message", [(signal.SIGINT, 130, "bnstats: interrupted"),
                                                   (signal.SIGTERM, 143, "bnstats: stopped by SIGTERM")])
def test_a_stop_while_a_brace_pattern_is_checked_exits_128_plus_signal(monkeypatch, tmp_path, signum, code, message):
    """Click converts the PATHS while parsing: a Ctrl-C there used to be click's "Aborted!", exit 1."""
    from bnstats.cli import options

    stop_in(monkeypatch, options.os.path, "lexists", signum)
    result = cli("compute", str(tmp_path / "s{0..9}"))
    assert one_line_error(result, code) == message


def test_a_stop_while_the_file_list_is_read_exits_130(monkeypatch, tmp_path):
    stop_in(monkeypatch, inputs, "_list_lines")
    (tmp_path / "l.txt").write_text("x\n")
    assert one_line_error(cli("compute", "--files-from", tmp_path / "l.txt"), 130) == "bnstats: interrupted"


def stopped_after(seconds, signum, *args, env, cwd, stdin_text=None):
    """``python -m bnstats ARGS`` sent ``signum`` ``seconds`` after it started (with ``stdin_text``, its
    standard input is a pipe given that text and left open): (exit code, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "bnstats", *args],
                            stdin=None if stdin_text is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        if stdin_text is not None:
            proc.stdin.write(stdin_text)
            proc.stdin.flush()
        time.sleep(seconds)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


@pytest.mark.slow
def test_sigterm_while_the_list_is_read_from_stdin_exits_143(tmp_path, images):
    folder, _ = images
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    code, out, err = stopped_after(1.0, signal.SIGTERM, "compute", "--files-from", "-", env=env, cwd=tmp_path,
                                   stdin_text=f"{folder / 'a.png'}\n")  # and the list never ends
    assert (code, err, out) == (143, "bnstats: stopped by SIGTERM\n", "")


@pytest.mark.slow
def test_ctrl_c_during_a_long_expansion_in_a_real_process(tmp_path):
    """A real SIGINT while a URL pattern of 10⁸ names is checked (URLs are not looked up): 130, one line."""
    env = {**os.environ, "BNSTATS_MAX_NAMES": "1G", "PYTHONPATH": os.getcwd()}
    code, out, err = stopped_after(1.5, signal.SIGINT, "compute", "http://127.0.0.1:9/x{0..99999999}.png", env=env,
                                   cwd=tmp_path)
    assert code == 130, err
    assert err.strip() == "bnstats: interrupted"
