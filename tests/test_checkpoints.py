"""Edges of checkpoints, observers, reports, merge, export and plot: every path a checkpoint uses comes from
the command line, damaged states are one line, samples are refused by name, magnitudes are bounded, a trace
must belong to the result it is drawn with, and concurrent runs on one checkpoint are told so; a forged BatchNorm
state (well signed) resumes to one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import FAST, cli, cli_json, interrupt_after, json_paths, one_line, run, stderr_lines, with_damage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """60 small RGB PNGs of varied brightness and two unreadable files (skip entries)."""
    root = tmp_path_factory.mktemp("edges") / "d"
    root.mkdir()
    rng = np.random.default_rng(7)
    for i in range(60):
        base = rng.integers(0, 200, 3)
        Image.fromarray((base + rng.integers(0, 56, (4 + i % 3, 5, 3))).astype(np.uint8)).save(root / f"i{i:03d}.png")
    for name in ("b000.png", "b001.png"):
        (root / name).write_bytes(b"not a png")
    return root


def interrupted(monkeypatch, *args, partitions: int = 2):
    """``compute ARGS`` stopped by Ctrl-C while partition ``partitions`` is counted (its checkpoint saved)."""
    with monkeypatch.context() as m:
        interrupt_after(m, partitions)
        cli("compute", "-q", "-j", "1", *args, expect=130)


def edit_checkpoint(path, change, resign: bool = True) -> dict:
    """Apply ``change`` to the checkpoint's JSON; ``resign`` recomputes its digest (a forged, well-formed
    file, so what is tested is the check behind the digest)."""
    from bnstats.running.checkpoint import _digest

    doc = json.loads(path.read_text())
    change(doc)
    if resign:
        doc["digest"] = _digest(doc)
    path.write_text(json.dumps(doc))
    return doc


# -- 1. the files a checkpoint uses come from the command line ---------------------------------------------


@pytest.fixture()
def traced(data, tmp_path, monkeypatch):
    """An interrupted run with --bn-momentum and --trace: (args, checkpoint, trace)."""
    ck, trace = tmp_path / "ck.json", tmp_path / "t.csv"
    args = [data, "--trace", trace, "--trace-every", "3", "--bn-momentum", "0.1", "--batch-size", "4",
            "--checkpoint", ck]
    interrupted(monkeypatch, *args)
    assert ck.exists() and trace.exists()
    return args, ck, trace


def test_a_checkpoint_naming_another_trace_file_leaves_that_file_alone(traced, tmp_path):
    args, ck, _ = traced
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    edit_checkpoint(ck, lambda d: d["observers"]["trace"].update(path=str(victim)))
    line = one_line(cli("compute", "-q", "-j", "1", *args))
    assert "damaged" in line and str(ck) in line
    assert victim.read_text() == "keep me\n"


def test_a_huge_saved_trace_size_writes_no_sparse_file(traced):
    args, ck, trace = traced
    before = trace.stat().st_size
    edit_checkpoint(ck, lambda d: d["observers"]["trace"].update(size=10**12))
    assert "damaged" in one_line(cli("compute", "-q", "-j", "1", *args))
    assert trace.stat().st_size == before


@pytest.mark.parametrize("change", ["deleted", "cut", "edited"])
def test_a_resume_whose_trace_file_changed_refuses_in_one_line(traced, change):
    args, ck, trace = traced
    if change == "deleted":
        trace.unlink()
    elif change == "cut":
        os.truncate(trace, trace.stat().st_size // 2)
    else:
        trace.write_text(trace.read_text().replace("1", "2"))
    line = one_line(cli("compute", "-q", "-j", "1", *args))
    assert str(trace) in line and "delete the checkpoint" in line
    assert not trace.exists() if change == "deleted" else b"\0" not in trace.read_bytes()


@pytest.mark.parametrize("extra", [[], ["--sample", "40", "--seed", "3"]])
def test_a_resumed_trace_is_byte_identical_to_an_uninterrupted_one(data, tmp_path, monkeypatch, extra):
    args = [data, "--trace-every", "4", "--bn-momentum", "0.1", "--batch-size", "5", *extra]
    whole = cli_json("compute", "-q", "-j", "1", *args, "--trace", tmp_path / "whole.csv")
    trace, ck = tmp_path / "t.csv", tmp_path / "ck.json"
    interrupted(monkeypatch, *args, "--trace", trace, "--checkpoint", ck, partitions=3)
    assert cli_json("compute", "-q", "-j", "2", *args, "--trace", trace, "--checkpoint", ck) == whole
    assert trace.read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_a_symlinked_skip_list_is_not_followed(data, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    ck = tmp_path / "run.ckpt"
    os.symlink(victim, str(ck) + ".skipped")
    line = one_line(cli("compute", "-q", data, "--checkpoint", ck))
    assert "run.ckpt.skipped" in line
    assert victim.read_text() == "keep me\n"


def test_a_fresh_checkpoint_keeps_a_users_file_named_like_its_skip_list(data, tmp_path):
    ck = tmp_path / "run"
    mine = tmp_path / "run.skipped"
    mine.write_text("my notes about skipped lectures\n")
    line = one_line(cli("compute", "-q", data, "--checkpoint", ck))
    assert "run.skipped is not a skip list bnstats wrote" in line
    assert mine.read_text() == "my notes about skipped lectures\n"


def test_a_stale_skip_list_of_bnstats_is_replaced(data, tmp_path):
    ck = tmp_path / "run"
    (tmp_path / "run.skipped").write_text(json.dumps({"path": "old", "error": "E"}) + "\n")
    report = cli_json("compute", "-q", data, "--checkpoint", ck)
    assert [s["path"] for s in report["skipped"]] == [str(data / "b000.png"), str(data / "b001.png")]
    assert not (tmp_path / "run.skipped").exists() and not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("option, suffix", [("-o", ".skipped"), ("--trace", ".lock")])
def test_an_output_on_a_checkpoint_side_file_is_a_usage_error(data, tmp_path, option, suffix):
    ck = tmp_path / "ck"
    result = cli("compute", "-q", data, "--checkpoint", ck, option, f"{ck}{suffix}")
    assert result.exit_code == 2 and len(stderr_lines(result)) == 1 and "name the same file" in result.stderr
    assert not os.path.exists(f"{ck}{suffix}")


def test_a_fifo_skip_list_does_not_hang(data, tmp_path):
    ck = tmp_path / "run"
    os.mkfifo(tmp_path / "run.skipped")
    start = time.monotonic()
    assert "run.skipped" in one_line(cli("compute", "-q", data, "--checkpoint", ck))
    assert time.monotonic() - start < 10


def test_a_skip_list_without_newlines_is_read_bounded(data, tmp_path, monkeypatch):
    ck = tmp_path / "ck.json"
    interrupted(monkeypatch, data, "--checkpoint", ck, partitions=3)
    assert json.loads(ck.read_text())["tally"]["skipped_count"] == 2
    with open(str(ck) + ".skipped", "wb") as f:
        f.write(b"x" * (16 << 20))  # no newline: a reader of lines would take it all
    tracemalloc.start()
    try:
        line = one_line(cli("compute", "-q", "-j", "1", data, "--checkpoint", ck))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "damaged" in line
    assert peak < 8 << 20, peak


# -- 2. damaged observer states --------------------------------------------------------------------------


DAMAGE = ["drop", 0, -1, -(10**6), 10**19, 10**40, 1e300, -1e-300, 0.5, "x", None, [], {}, True, "negate"]




@pytest.fixture(scope="module")
def sampled_checkpoint(data, tmp_path_factory):
    """A saved checkpoint of a --sample run with --bn-momentum and --trace, its trace and the args."""
    root = tmp_path_factory.mktemp("sampled")
    ck, trace = root / "ck.json", root / "t.csv"
    args = [data, "--sample", "40", "--seed", "1", "--bn-momentum", "cumulative", "--batch-size", "3",
            "--trace", trace, "--trace-every", "5", "--checkpoint", ck]
    with pytest.MonkeyPatch.context() as m:
        interrupted(m, *args, partitions=3)
    return json.loads(ck.read_text()), trace.read_bytes(), args, ck, trace


def _observer_damages():
    return st.sampled_from(["bn", "ci95", "trace"]).flatmap(
        lambda name: st.tuples(st.just(name), st.integers(0, 10**6), st.sampled_from(DAMAGE)))


@settings(FAST, max_examples=300)
@given(damage=_observer_damages())
def test_every_observer_from_dict_refuses_damage_with_a_value_error(sampled_checkpoint, damage):
    """A forged (well-signed) checkpoint's observer state: from_dict raises one of the errors the checkpoint
    turns into its one-line "damaged", or gives an observer whose result and state can be written."""
    from bnstats.observers.base import registered

    name, pick, how = damage
    state = sampled_checkpoint[0]["observers"][name]
    paths = list(json_paths(state))
    damaged = with_damage(state, paths[pick % len(paths)], how)
    try:
        observer = registered()[name].from_dict(damaged)
    except (KeyError, TypeError, ValueError, AttributeError):
        return
    json.dumps(observer.to_dict(), allow_nan=False)
    json.dumps(observer.result(), allow_nan=False)
    if name == "ci95":
        observer.satisfied()


@pytest.mark.parametrize("state", [
    {"population": 0, "target": None, "seed": 0, "m": 2, "max_value": 255, "sums": {}},
    {"population": 10, "target": 0.1, "seed": 0, "m": 998, "max_value": 255, "sums": {}},
    {"population": 10, "target": None, "seed": 0, "m": 3, "max_value": 255,  # s2 of 0: a ci95 of zeros
     "sums": {"n": [30], "n2": [300], "s": [3000], "q": [300000], "s2": [0], "q2": [3 * 10**8], "sn": [30000],
              "qn": [3 * 10**6], "qs": [3 * 10**8]}},
    {"population": 10, "target": None, "seed": 0, "m": 3, "max_value": 255, "sums": {"s": [1]}},
])
def test_damaged_sampler_states_seen_in_the_wild_are_value_errors(state):
    """Fraction(998, 0), KeyError 'n', a ci95 of zeros: each is a ValueError now (the checkpoint's 'damaged')."""
    from bnstats.observers.sampling import Sampler

    with pytest.raises(ValueError):
        Sampler.from_dict(state)


@settings(FAST, max_examples=12)
@given(pick=st.integers(0, 10**6), how=st.sampled_from(DAMAGE))
def test_damaged_checkpoints_resume_to_one_line_never_other_numbers(sampled_checkpoint, tmp_path_factory, pick,
                                                                     how):
    doc, trace_bytes, args, ck, trace = sampled_checkpoint
    paths = list(json_paths(doc))
    damaged = with_damage(doc, paths[pick % len(paths)], how)
    if damaged == doc:
        return
    ck.write_text(json.dumps(damaged))
    trace.write_bytes(trace_bytes)
    result = cli("compute", "-q", "-j", "1", *args)
    line = one_line(result)
    assert "ck.json" in line


@pytest.fixture(scope="module")
def report_file(data, tmp_path_factory):
    """A compute result with percentiles and covariance, as text."""
    root = tmp_path_factory.mktemp("report")
    path = root / "r.json"
    cli("compute", "-q", data, "--percentiles", "1,50", "-o", path, expect=0)
    return path.read_text()


@settings(FAST, max_examples=40)
@given(pick=st.integers(0, 10**6), how=st.sampled_from(DAMAGE), command=st.sampled_from(["merge", "export"]))
@example(pick=2, how=1e300, command="export")  # paths[2] is mean[0]: what export prints
@example(pick=2, how="negate", command="merge")
def test_damaged_reports_are_one_line_or_the_same_numbers(report_file, tmp_path_factory, pick, how, command):
    doc = json.loads(report_file)
    paths = list(json_paths(doc))
    where = paths[pick % len(paths)]
    if where[:1] == ("channels",) and how in ("x", "negate"):  # "negate" makes text "x" too
        return  # band names are labels bnstats passes on as written (a caller may name an array's bands)
    damaged = with_damage(doc, where, how)
    path = tmp_path_factory.mktemp("damaged") / "r.json"
    path.write_text(json.dumps(damaged))
    args = ["merge", path] if command == "merge" else ["export", path, "-f", "json"]
    path.with_name("good.json").write_text(report_file)
    good = cli(*(["merge", path.with_name("good.json")] if command == "merge"
                 else ["export", path.with_name("good.json"), "-f", "json"]), expect=0).stdout
    result = cli(*args)
    if result.exit_code == 0:
        out, ref = json.loads(result.stdout), json.loads(good)
        keys = ("mean", "std", "var", "min", "max", "images", "pixels", "median") if command == "merge" else ref
        assert {k: out.get(k) for k in keys} == {k: ref.get(k) for k in keys}
    else:
        one_line(result)


# -- 3. samples are refused by name, whatever was imported --------------------------------------------------


@pytest.fixture(scope="module")
def samples(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    for seed in (1, 2):
        cli("compute", "-q", data, "--sample", "20", "--seed", seed, "-o", root / f"s{seed}.json", expect=0)
    return root / "s1.json", root / "s2.json"


def _fresh(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def test_merge_refuses_samples_in_a_fresh_interpreter(samples):
    done = _fresh("-m", "bnstats", "merge", *map(str, samples))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"Error: {samples[0]} is a sample (--sample/--until-ci): samples cannot be merged exactly"]


def test_export_of_a_sample_warns_that_it_is_an_estimate(samples):
    result = cli("export", samples[0], "-f", "torchvision", expect=0)
    assert "Normalize(" in result.stdout
    assert f"warning: {samples[0]} is a sample (--sample/--until-ci): these are estimates" in result.stderr


def test_the_observer_registry_knows_the_built_ins_without_imports():
    code = textwrap.dedent("""
        import sys
        from bnstats.observers.base import registered
        assert "bnstats.observers.sampling" not in sys.modules
        print(sorted(registered()))
    """)
    done = _fresh("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['bn', 'ci95', 'trace']"


def test_a_checkpoint_with_an_observer_the_run_does_not_have_is_damaged(data, tmp_path, monkeypatch):
    ck = tmp_path / "ck.json"
    interrupted(monkeypatch, data, "--checkpoint", ck)
    state = {"population": 62, "target": None, "seed": 0, "m": 0, "max_value": None, "sums": {}}
    edit_checkpoint(ck, lambda d: d["observers"].update(ci95=state))
    assert "damaged" in one_line(cli("compute", "-q", "-j", "1", data, "--checkpoint", ck))


# -- 4. magnitudes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, text", [
    ("images", "10" + "0" * 40),
    ("state.images", "10" + "0" * 40),
    ("mean", "1" + "0" * 400),
    ("mean", "1e300"),
    ("pixels", "3"),
])
@pytest.mark.parametrize("command", ["merge", "export"])
def test_absurd_numbers_in_a_report_are_one_line(report_file, tmp_path, field, text, command):
    doc = json.loads(report_file)
    marker = "424242424242"
    if field == "mean":
        doc["mean"][0] = int(marker)
    elif field == "state.images":
        doc["state"]["images"] = int(marker)
    else:
        doc[field] = int(marker)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc).replace(marker, text))
    args = ["merge", path] if command == "merge" else ["export", path, "-f", "json"]
    line = one_line(cli(*args))
    assert str(path) in line


# -- 5. plot --trace --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_plot_refuses_the_trace_of_another_run(data, tmp_path):
    pytest.importorskip("matplotlib")
    cli("compute", "-q", data, "--trace", tmp_path / "t.csv", "-o", tmp_path / "all.json", expect=0)
    cli("compute", "-q", data, "--sample", "30", "-o", tmp_path / "part.json", expect=0)
    line = one_line(cli("plot", tmp_path / "part.json", "--trace", tmp_path / "t.csv", "-o", tmp_path / "p.png"))
    assert "is not the trace of" in line and "60 images" in line
    assert not (tmp_path / "p.png").exists()
    cli("plot", tmp_path / "all.json", "--trace", tmp_path / "t.csv", "-o", tmp_path / "p.png", expect=0)


def test_a_long_trace_is_read_thinned_with_its_last_row(tmp_path):
    from bnstats.output.trace_rows import MAX_PLOT_ROWS, read_trace

    rows = 50_000
    path = tmp_path / "t.csv"
    images = np.arange(1, rows + 1)
    table = np.column_stack([images, images * 7, 1 / images, 2 / images])
    with open(path, "w") as f:
        f.write("images,pixels,mean_L,std_L\n")
        np.savetxt(f, table, fmt=["%d", "%d", "%.17g", "%.17g"], delimiter=",")
    trace = read_trace(str(path), ["L"])
    assert len(trace.images) <= MAX_PLOT_ROWS + 1
    assert trace.images[0] == 1 and trace.images[-1] == rows and trace.final == (rows, rows * 7)
    assert np.all(np.diff(trace.images) > 0)
    assert trace.columns["mean"][-1, 0] == 1 / rows

    for count in (MAX_PLOT_ROWS, MAX_PLOT_ROWS + 1, 2 * MAX_PLOT_ROWS + 1, 3 * MAX_PLOT_ROWS + 7):
        with open(path, "w") as f:
            f.write("images,pixels,mean_L,std_L\n")
            np.savetxt(f, table[:count], fmt=["%d", "%d", "%.17g", "%.17g"], delimiter=",")
        trace = read_trace(str(path), ["L"])
        assert trace.images[-1] == count and trace.final == (count, count * 7) and len(trace.images) <= 2001


# -- 6. --until-ci -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", ["nan", "inf", "-inf", "0", "-0.1", "NaN"])
def test_until_ci_must_be_a_finite_positive_width(data, width):
    result = cli("compute", "-q", data, "--until-ci", width)
    assert result.exit_code == 2 and len(stderr_lines(result)) == 1 and "--until-ci" in result.stderr


@given(scale=st.sampled_from([1e154, 1e200, 1e307, 1.7e308]), images=st.integers(2, 40))
@settings(max_examples=30, deadline=None)
def test_overflowing_float_sums_give_undefined_intervals_not_inf_or_nan(scale, images):
    from bnstats.observers.sampling import Sampler
    from bnstats.statistics.states import MomentState

    sampler = Sampler(1000, target=0.1)
    rng = np.random.default_rng(images)
    with np.errstate(all="ignore"):
        for _ in range(images):
            sampler.add(MomentState.of_values(rng.uniform(-1, 1, (20, 3)) * scale), 1)
        widths = sampler.half_widths()
    for w in widths["mean"] + widths["std"]:
        assert w is None or (math.isfinite(w) and w >= 0)
    json.dumps(sampler.result(), allow_nan=False)
    assert not sampler.satisfied() or all(w is not None for w in widths["mean"] + widths["std"])


def test_until_ci_on_values_near_the_float_limit_is_no_traceback(tmp_path):
    """Sums of values near 1e308 overflow: the intervals are undefined, and a mean that overflowed is one
    line naming it, never a traceback or a file of nulls."""
    for i in range(40):
        np.save(tmp_path / f"f{i:02d}.npy", np.full((4, 4, 3), 1e308 if i % 2 else 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's overflow warnings: the statistics' business, not this test's
        result = cli("compute", "-q", tmp_path, "--until-ci", "0.1", "-o", tmp_path / "r.json")
    if result.exit_code == 0:  # a later fix of the overflow: the intervals of such data are undefined
        report = json.loads((tmp_path / "r.json").read_text())
        assert all(w is None or math.isfinite(w) for w in report["ci95"]["mean"] + report["ci95"]["std"])
    else:
        assert result.exit_code == 1 and not (tmp_path / "r.json").exists()
        assert stderr_lines(result)[-1].startswith("Error: the result's ") and "not a finite number" in result.stderr


def test_to_json_names_a_non_finite_number_instead_of_a_traceback():
    from bnstats.jsonio import ReportError, to_json

    with pytest.raises(ReportError, match=r"result's raw\.var\[1\] is not a finite number"):
        to_json({"mean": [0.5, 1.0], "raw": {"var": [1.0, math.inf]}})
    assert json.loads(to_json({"mean": [0.5, None], "n": 3})) == {"mean": [0.5, None], "n": 3}


# -- 7. messages and the lock ------------------------------------------------------------------------------


def test_a_refused_resume_names_the_changed_file(data, tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    for name in sorted(os.listdir(data)):
        os.link(data / name, folder / name)
    ck = tmp_path / "ck.json"
    interrupted(monkeypatch, folder, "--checkpoint", ck)
    victim = folder / "i017.png"
    st_ = victim.stat()
    os.unlink(victim)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(victim)
    os.utime(victim, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    line = one_line(cli("compute", "-q", "-j", "1", folder, "--checkpoint", ck))
    assert "i017.png changed since the checkpoint" in line


def test_a_refused_resume_of_many_files_names_the_block_that_changed(tmp_path):
    from bnstats.running.checkpoint import Checkpoint, CheckpointError
    from bnstats.statistics.tally import Tally
    from bnstats.inputs.select import select

    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(130):
        (folder / f"f{i:03d}.png").write_bytes(b"x")
    selection = select([str(folder)])
    Checkpoint(str(tmp_path / "ck"), selection.keys, {}, source=selection.source).save(Tally(), 0)
    os.utime(folder / "f070.png", ns=(0, 10**18))
    again = Checkpoint(str(tmp_path / "ck"), selection.keys, {}, source=selection.source)
    with pytest.raises(CheckpointError) as caught:
        again.load()
    keys = selection.keys
    assert f"one of the items {keys[69]} .. {keys[71]} (items 69..71) changed since" in str(caught.value)
    again.unlock()


def test_another_runs_settings_are_named_not_calledwith_damage(data, tmp_path, monkeypatch):
    ck = tmp_path / "ck.json"
    interrupted(monkeypatch, data, "--checkpoint", ck)
    line = one_line(cli("compute", "-q", "-j", "1", data, "--mode", "gray", "--checkpoint", ck))
    assert "checkpoint of another run" in line and "different settings" in line and "damaged" not in line


def test_a_second_concurrent_run_is_told_the_checkpoint_is_in_use(data, tmp_path):
    ck = tmp_path / "ck.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from bnstats.running.checkpoint import Checkpoint
            Checkpoint({str(ck)!r}, [], {{}}).lock()
            print("locked", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_line(cli("compute", "-q", data, "--mode", "gray", "--checkpoint", ck))
        assert line == f"Error: checkpoint {ck} is in use by another run (pid {holder.pid})"
    finally:
        holder.communicate("")
    assert cli_json("compute", "-q", data, "--checkpoint", ck)["images"] == 60  # free once the owner ended
    assert not ck.exists() and not (tmp_path / "ck.json.lock").exists()


def test_a_foreign_file_named_like_the_lock_is_kept(data, tmp_path):
    lock = tmp_path / "ck.json.lock"
    lock.write_text("do not delete\n")
    assert "not a lock file bnstats wrote" in one_line(cli("compute", "-q", data, "--checkpoint",
                                                           tmp_path / "ck.json"))
    assert lock.read_text() == "do not delete\n"


@pytest.mark.parametrize("path, value", [
    (("state",), {}),                      # an empty state under a result that counts images: merged to nothing
    (("state", "kind"), None),
    (("max_value",), None),                # export divided by nothing
    (("settings", "resize"), []),          # an IndexError on writing the merged settings
    (("settings", "center_crop"), [0, 5]),
])
@pytest.mark.parametrize("command", ["merge", "export"])
def test_damage_found_by_the_property_test_is_one_line(report_file, tmp_path, path, value, command):
    doc = with_damage(json.loads(report_file), path, value)
    damaged = tmp_path / "r.json"
    damaged.write_text(json.dumps(doc))
    result = cli(command, damaged, *(["-f", "json"] if command == "export" else []))
    assert result.exit_code == 1 and "r.json" in one_line(result)


def test_a_batchnorm_state_of_integer_moments_without_max_value_is_damaged():
    from bnstats.observers.batchnorm import BatchNormTracker
    from bnstats.statistics.states import ExactMoments

    tracker = BatchNormTracker(2, 0.1)
    tracker.add(ExactMoments(4, (400,), (40000,)), 255)
    state = tracker.to_dict()
    BatchNormTracker.from_dict(state)
    with pytest.raises(ValueError, match="max_value"):
        BatchNormTracker.from_dict({**state, "max_value": None})


def _broken_folder(root, count):
    root.mkdir()
    for i in range(count):
        (root / f"{i:05d}.png").write_bytes(b"not a png")
    from PIL import Image

    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "zz_good.png")
    return root


def test_checkpoint_keeps_its_size_with_many_skips(tmp_path):
    from bnstats.running.checkpoint import Checkpoint
    from bnstats.statistics.tally import Tally

    keys = [f"f{i}" for i in range(40000)]
    ck = Checkpoint(str(tmp_path / "ck.json"), keys, {"mode": "rgb"})
    tally = Tally()
    sizes = []
    for step in range(4):
        tally.skipped += [{"path": f"f{i}", "error": "OSError: broken"} for i in range(step * 10000, (step + 1) * 10000)]
        ck.save(tally, (step + 1) * 10000)
        sizes.append((tmp_path / "ck.json").stat().st_size)
    assert max(sizes) - min(sizes) < 50 and max(sizes) < 2000, sizes
    again = Checkpoint(str(tmp_path / "ck.json"), keys, {"mode": "rgb"})
    restored, done, _ = again.load()
    assert done == 40000 and restored.skipped == tally.skipped
    again.remove()
    assert not (tmp_path / "ck.json").exists() and not (tmp_path / "ck.json.skipped").exists()


def test_skips_appended_after_the_last_save_are_dropped_on_resume(tmp_path):
    from bnstats.running.checkpoint import Checkpoint
    from bnstats.statistics.tally import Tally

    keys = ["a", "b", "c"]
    ck = Checkpoint(str(tmp_path / "ck.json"), keys, {})
    tally = Tally(skipped=[{"path": "a", "error": "E"}])
    ck.save(tally, 1)
    with open(tmp_path / "ck.json.skipped", "a") as f:  # a save that died between its two writes
        f.write(json.dumps({"path": "b", "error": "E"}) + "\n")
    restored, done, _ = Checkpoint(str(tmp_path / "ck.json"), keys, {}).load()
    assert restored.skipped == [{"path": "a", "error": "E"}] and done == 1
    assert (tmp_path / "ck.json.skipped").read_text().count("\n") == 1


def test_strict_resume_of_a_run_that_skipped_fails_on_the_skip(tmp_path, monkeypatch):
    data = _broken_folder(tmp_path / "d", 40)
    ck = tmp_path / "ck.json"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        run("compute", data, "-q", "-j", "1", "--checkpoint", ck, expect=130)
    result = run("compute", data, "-q", "-j", "1", "--checkpoint", ck, "--strict", expect=1)
    assert "00000.png" in result.stderr and result.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    """A checkpoint of an interrupted --bn-momentum run, and the command that resumes it."""
    root = tmp_path_factory.mktemp("ckpt")
    data = _broken_folder(root / "d", 2)
    from PIL import Image

    for i in range(60):
        Image.fromarray(np.full((3, 3, 3), i, np.uint8)).save(data / f"img{i:03d}.png")
    args = [data, "-q", "-j", "1", "--bn-momentum", "0.1", "--batch-size", "7", "--checkpoint", root / "ck.json"]
    with pytest.MonkeyPatch.context() as m:
        interrupt_after(m, 2)
        run("compute", *args, expect=130)
    return root / "ck.json", args


CHECKPOINT_DAMAGE = {
    "files_done negative": lambda d: d.update(files_done=-5),
    "files_done huge": lambda d: d.update(files_done=10**9),
    "skipped_count negative": lambda d: d["tally"].update(skipped_count=-1),
    "skipped_count beyond the side file": lambda d: d["tally"].update(skipped_count=50),
    "levels 1": lambda d: d["tally"]["state"].update(levels=1),
    "running_mean a string": lambda d: d["observers"]["bn"].update(running_mean="x", running_var="y"),
    "batch garbage": lambda d: d["observers"]["bn"].update(batch=[{"kind": "exact_moments", "n": "x"}]),
    "batch_size zero": lambda d: d["observers"]["bn"].update(batch_size=0),
    "observer unknown": lambda d: d["observers"].update(zz={}),
    "tally a list": lambda d: d.update(tally=[1]),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoints_are_one_line_errors(saved_checkpoint, tmp_path, damage):
    import shutil

    ck, args = saved_checkpoint
    mine = tmp_path / "ck.json"
    shutil.copy(ck, mine)
    shutil.copy(str(ck) + ".skipped", str(mine) + ".skipped")
    doc = json.loads(mine.read_text())
    CHECKPOINT_DAMAGE[damage](doc)
    mine.write_text(json.dumps(doc))
    result = cli("compute", *args[:-1], mine)
    assert result.exit_code == 1, (damage, result.output)
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1 and "ck.json" in result.stderr


# -- 8. a forged BatchNorm state in a checkpoint -------------------------------------------------------------


BN_DAMAGE = ["drop", 0, -1, 10**40, 1e300, 0.5, "x", None, [], {}, True, [[1]]]


@pytest.fixture(scope="module")
def bn_checkpoint(small_pngs, tmp_path_factory):
    """A checkpoint of a --bn-momentum run saved mid-batch (an unfinished batch and a total): (doc, args, ck)."""
    root = tmp_path_factory.mktemp("bn_ck")
    ck = root / "ck.json"
    args = [small_pngs, "--bn-momentum", "0.1", "--batch-size", "5", "--checkpoint", ck, "-o", root / "o.json"]
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


@pytest.mark.slow
@settings(FAST, max_examples=200)
@given(pick=st.integers(0, 10**6), how=st.sampled_from(BN_DAMAGE))
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
    for _ in range(min(tracker.batch_size, 64)):  # a damaged batch size may be 10**40: a batch never ends
        tracker.add(ExactMoments(4, (1, 2, 3), (1, 4, 9)), 255)
    json.dumps(tracker.result(), allow_nan=False)
