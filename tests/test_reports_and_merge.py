"""Reports and merge: damaged or oversized results are one-line errors; merge refuses overlapping,
unlabelled or incomplete parts and keeps track through merges of merges. A JSON input (a result, a checkpoint,
standard input) is bounded by BNSTATS_MAX_JSON_BYTES and by an estimate of its parsed size before it is parsed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import FAST, cli, one_line, run


def _mutations():
    """(name, function turning a good result's text into a damaged one)."""
    def edit(fn):
        def apply(text):
            doc = json.loads(text)
            fn(doc)
            return json.dumps(doc)
        return apply

    def setkey(path, value):
        def fn(doc):
            *parents, last = path
            for key in parents:
                doc = doc[key]
            doc[last] = value
        return edit(fn)

    return {
        "deep nesting": lambda t: "[" * 100000 + "]" * 100000,
        "5000-digit integer": lambda t: t.replace('"images": 36', '"images": 1' + "0" * 5000),
        "1e400": lambda t: t.replace('"pixels": 402558', '"pixels": 1e400'),
        "NaN mean": lambda t: t.replace('"mean": [', '"mean": [NaN, ', 1),
        "negative count": setkey(("state", "histogram", 0, "counts", 0), -5),
        "levels 1": setkey(("state", "levels"), 1),
        "levels huge": setkey(("state", "levels"), 134217728),
        "counts beyond levels": setkey(("state", "histogram", 0, "start"), 255),
        "float count": setkey(("state", "histogram", 0, "counts", 0), 1.5),
        "non-hex digest": setkey(("files", "digest"), "zz" * 32),
        "skipped a string": setkey(("skipped",), "none"),
        "max_value 0": setkey(("max_value",), 0),
        "channels mismatch": setkey(("channels",), ["R", "G"]),
        "mean too short": setkey(("mean",), [0.5]),
        "state kind unknown": setkey(("state", "kind"), "sketch"),
        "settings a list": setkey(("settings",), [1]),
        "mode unknown": setkey(("settings", "mode"), "cmyk"),
        "not an object": lambda t: "[1, 2]",
        "empty": lambda t: "",
        "binary": lambda t: "\x00\xff garbage",
        "images negative": setkey(("images",), -1),
        "groups malformed": setkey(("groups",), {"cat": {"state": {"kind": "histogram"}}}),
    }


MUTATIONS = _mutations()


@pytest.fixture(scope="module")
def good_result(tmp_path_factory, sample_data):
    path = tmp_path_factory.mktemp("good") / "good.json"
    run("compute", sample_data, "-q", "-j", "1", "-o", path)
    return path.read_text()


@pytest.mark.parametrize("command", ["merge", "export"])
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_damaged_results_are_one_line_errors(tmp_path, good_result, mutation, command):
    bad = tmp_path / "bad.json"
    bad.write_text(MUTATIONS[mutation](good_result), encoding="utf-8", errors="surrogateescape")
    args = ["merge", bad] if command == "merge" else ["export", bad, "--format", "hf"]
    result = cli(*args)
    assert result.exit_code == 1, (mutation, result.output)
    assert result.stdout == "" and "Traceback" not in result.output and result.exception is None or isinstance(
        result.exception, SystemExit)
    assert result.stderr.count("\n") == 1 and "bad.json" in result.stderr, result.stderr


def test_oversized_result_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    from bnstats import limits

    monkeypatch.setattr(limits, "_current", limits.Limits(json_bytes=1000))
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * 5000}))
    result = run("merge", big, expect=1)
    assert "larger than" in result.stderr


@pytest.fixture(scope="module")
def parts(tmp_path_factory, sample_data):
    """Results of sample_data: the whole run, its halves and thirds, made from another folder too."""
    folder = tmp_path_factory.mktemp("parts")
    out = {"full": folder / "full.json"}
    run("compute", sample_data, "-q", "-j", "1", "-o", out["full"])
    for n in (2, 3):
        for k in range(n):
            out[f"{k}/{n}"] = folder / f"s{k}of{n}.json"
            run("compute", sample_data, "-q", "-j", "1", "--shard", f"{k}/{n}", "-o", out[f"{k}/{n}"])
    return out


@pytest.mark.parametrize("names", [["full", "0/2"], ["0/2", "1/2", "0/3"], ["0/3", "1/3", "2/3", "1/2"]])
def test_merge_refuses_overlapping_parts(parts, names):
    result = run("merge", *[parts[n] for n in names], expect=1)
    assert result.stderr.count("\n") == 1 and "twice" in result.stderr


def test_merge_refuses_the_same_shard_spelled_another_way(parts, sample_data, tmp_path, monkeypatch):
    monkeypatch.chdir(sample_data.parent)
    relative = tmp_path / "relative.json"
    run("compute", sample_data.name, "-q", "-j", "1", "--shard", "0/2", "-o", relative)
    result = run("merge", parts["0/2"], relative, parts["1/2"], expect=1)
    assert "twice" in result.stderr


def test_merge_refuses_a_part_that_does_not_say_what_it_covers(parts, tmp_path):
    doc = json.loads(parts["1/2"].read_text())
    del doc["files"]
    (tmp_path / "bare.json").write_text(json.dumps(doc))
    result = run("merge", parts["0/2"], tmp_path / "bare.json", expect=1)
    assert result.stderr.count("\n") == 1 and "covers" in result.stderr


def test_merge_says_which_items_are_missing_and_complete_makes_it_an_error(parts):
    result = run("merge", parts["0/3"], parts["2/3"])
    assert "bnstats: warning: the parts leave out items 12..23 of a list of 36" in result.stderr
    failed = run("merge", parts["0/3"], parts["2/3"], "--complete", expect=1)
    assert "items 12..23" in failed.stderr and failed.stdout == ""
    whole = run("merge", parts["0/3"], parts["1/3"], parts["2/3"], "--complete")
    assert whole.stderr == "" and whole.stdout == parts["full"].read_text()


def test_merge_of_merges_keeps_track(parts, tmp_path):
    first = tmp_path / "first.json"
    run("merge", parts["0/3"], parts["1/3"], "-o", first)
    assert run("merge", first, parts["1/3"], expect=1).stderr.count("twice") == 1
    assert run("merge", first, parts["2/3"]).stdout == parts["full"].read_text()


# -- a JSON input is bounded before it is parsed -------------------------------------------------------------


@pytest.mark.parametrize("command", ["merge", "export", "plot", "checkpoint", "stdin"])
def test_a_json_past_the_limit_is_refused_before_it_is_parsed(small_pngs, tmp_path, monkeypatch, command):
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
            "checkpoint": ["compute", small_pngs, "-q", "-j", "1", "--checkpoint", big,
                           "-o", tmp_path / "o.json"]}[command]
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


def test_a_real_result_is_far_below_the_parse_estimate(small_pngs, tmp_path):
    """What bnstats writes (a --group-by result with percentiles) is mostly numbers: its estimated parsed size
    is a small multiple of its bytes, far below the 8× bound."""
    from bnstats import jsonio

    out = tmp_path / "g.json"
    cli("compute", small_pngs, "-q", "-j", "1", "--percentiles", "1,50", "-o", out, expect=0)
    text = out.read_bytes()
    jsonio.check_parse_cost(text, "g.json", len(text))  # would raise past 8 × its own size
