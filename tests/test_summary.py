"""The summary for people: on stderr after a run to a terminal or to -o, never in piped JSON."""

from __future__ import annotations

import json

import pytest

from bnstats.cli import summary
from helpers import cli, stderr_lines


@pytest.fixture
def terminal(monkeypatch):
    """stdout is a terminal, as the summary's check sees it."""
    monkeypatch.setattr(summary, "stdout_is_terminal", lambda: True)


def summary_lines(result) -> list[str]:
    lines = stderr_lines(result)
    start = next((i for i, line in enumerate(lines) if line.startswith("bnstats: ") and " images, " in line), None)
    return [] if start is None else lines[start:]


def test_after_o_it_names_the_file_and_the_numbers(stats_file, sample_data, tmp_path):
    out = tmp_path / "s.json"
    result = cli("compute", sample_data, "-j", "1", "-o", out, expect=0)
    report = json.loads(out.read_text())
    assert out.read_text() == stats_file.read_text() and result.stdout == ""
    lines = summary_lines(result)
    assert lines[0] == f"bnstats: 36 images, 0 skipped -> {out}"
    assert lines[1].split() == ["channel", "mean", "std"]
    for line, channel, mean, std in zip(lines[2:], report["channels"], report["mean"], report["std"]):
        assert line.split() == [channel, f"{mean:#.4g}", f"{std:#.4g}"]
    assert lines[2:] == ["  R        0.5745   0.2382", "  G        0.3858   0.2285", "  B        0.2950   0.2308"]


def test_piped_json_gets_none(stats_file, sample_data):
    result = cli("compute", sample_data, "-j", "1", expect=0)
    assert result.stdout == stats_file.read_text()  # the JSON alone, byte for byte
    assert summary_lines(result) == [] and result.stderr == ""


def test_on_a_terminal_it_follows_the_json(terminal, stats_file, sample_data):
    result = cli("compute", sample_data, "-j", "1", expect=0)
    assert result.stdout == stats_file.read_text()
    assert summary_lines(result)[0] == "bnstats: 36 images, 0 skipped"


@pytest.mark.parametrize("flags, shown", [
    (("-q",), False), (("-q", "--summary"), True), (("--no-summary",), False), (("--summary",), True),
])
def test_flags_decide_over_the_rule(sample_data, tmp_path, flags, shown):
    result = cli("compute", sample_data, "-j", "1", "-o", tmp_path / "s.json", *flags, expect=0)
    assert bool(summary_lines(result)) == shown
    assert result.stdout == ""


def test_summary_when_piped_goes_to_stderr_only(stats_file, sample_data):
    result = cli("compute", sample_data, "-j", "1", "--summary", expect=0)
    assert result.stdout == stats_file.read_text()
    assert summary_lines(result)[0] == "bnstats: 36 images, 0 skipped"
    assert not summary_lines(cli("compute", sample_data, "-j", "1", "--no-summary", expect=0))


def test_skipped_items_are_counted(images, tmp_path):
    folder, _ = images
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = cli("compute", folder, "-j", "1", "-o", tmp_path / "s.json", expect=0)
    assert summary_lines(result)[0] == f"bnstats: 4 images, 1 skipped -> {tmp_path / 's.json'}"


def test_merge_shows_it_after_o(stats_file, tmp_path, terminal):
    result = cli("merge", stats_file, "-o", tmp_path / "m.json", expect=0)
    assert summary_lines(result)[0] == f"bnstats: 36 images, 0 skipped -> {tmp_path / 'm.json'}"
    piped = cli("merge", stats_file, "--no-summary", expect=0)
    assert summary_lines(piped) == [] and json.loads(piped.stdout)["images"] == 36


def test_the_table_of_unusual_reports():
    report = {"images": 1234, "skipped": [{"path": "x", "error": "e"}] * 2, "channels": ["L", "B\x1b2"],
              "mean": [0.000012345, None], "std": [1.0, None], "ci95": {}}
    lines = summary.table(report, "out\n.json").splitlines()
    assert lines[0] == "bnstats: 1,234 images, 2 skipped -> out\\n.json"  # no forged line
    assert lines[2].split() == ["L", "1.234e-05", "1.000"]
    assert lines[3].split() == ["B\\x1b2", "-", "-"]
    assert lines[-1].startswith("  (a sample")
    assert summary.table({"images": 0, "skipped": [], "channels": []}, None) == "bnstats: 0 images, 0 skipped"


def test_stdout_that_is_no_stream_is_no_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout", None)
    assert summary.stdout_is_terminal() is False
    assert summary.wanted(None, False, None) is False and summary.wanted(None, False, "f.json") is True
