"""The ``bnstats`` command line: output, exit codes, messages, hostile option values, Ctrl-C.

Most tests drive ``bnstats.cli.main.main`` in-process with click's CliRunner
(stdout and stderr are kept apart); a few run ``python -m bnstats`` as a real
subprocess (with ``sys.executable``, so any virtualenv works).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bnstats
from bnstats.running.count import UnreadableImage
from bnstats.running.engine import CHUNK_SIZE, chunk_size_for
from bnstats.inputs.files import FileSource
from helpers import iter_image_paths
from helpers import cli, cli_json, one_line_error, processes_mentioning, reaped, run_module, stderr_lines
from helpers import wait_until_counting
from reference import STAT_KEYS, assert_stats_close, full_load_files, resize_size

CONTRACT_KEYS = {"mean", "std", "var", "min", "max", "channels", "images", "pixels", "skipped", "max_value", "bnstats_version"}
ALSO_PRESENT = {"raw", "settings", "state"}
SAMPLE_IMAGES = sum(
    1 for p in (Path(__file__).resolve().parent.parent / "sample_data").rglob("*") if p.is_file() and p.name[0] != "."
)


# -- helpers --------------------------------------------------------------------------

def _noise(shape, seed, dtype=np.uint8, hi=256):
    return np.random.default_rng(seed).integers(0, hi, shape, dtype=dtype)


def _save_noise(path: Path, shape, seed, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(shape, seed), mode).save(path)
    return path


# -- data -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    d = {}
    # a few good images and one corrupt file
    d["bad"] = root / "bad"
    for i in range(4):
        _save_noise(d["bad"] / f"img_{i}.png", (8 + i, 6, 3), i)
    (d["bad"] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    # nothing but unreadable files
    d["all_bad"] = root / "all_bad"
    d["all_bad"].mkdir()
    (d["all_bad"] / "a.jpg").write_bytes(b"nope")
    (d["all_bad"] / "b.png").write_bytes(b"")
    (d["all_bad"] / "c.gif").write_bytes(b"GIF89a broken")
    # no images at all
    d["empty"] = root / "empty"
    d["empty"].mkdir()
    (d["empty"] / "notes.txt").write_text("hello")
    (d["empty"] / ".hidden.png").write_bytes(b"")
    # an RGBA image
    d["rgba"] = _save_noise(root / "rgba" / "rgba.png", (10, 12, 4), 10, "RGBA").parent
    # native layouts that do not mix
    d["mixed"] = root / "mixed"
    _save_noise(d["mixed"] / "a_rgb.png", (5, 5, 3), 20)
    _save_noise(d["mixed"] / "b_gray.png", (5, 5), 21)
    # more than one chunk, with a bad file in the second
    d["many_bad"] = root / "many_bad"
    for i in range(2 * CHUNK_SIZE + 8):
        _save_noise(d["many_bad"] / f"{i:03d}.png", (6, 7, 3), 100 + i)
    (d["many_bad"] / "020_broken.jpg").write_bytes(b"garbage")
    files = iter_image_paths([str(d["many_bad"])])
    chunks = [p.keys for p in FileSource([]).partitions(files, chunk_size_for(len(files)))]  # as counting cuts them
    assert len(chunks) >= 2 and str(d["many_bad"] / "020_broken.jpg") not in chunks[0]
    return d


@pytest.fixture(scope="module")
def sample_json(sample_data) -> str:
    """stdout of ``bnstats compute sample_data --quiet``."""
    result = cli("compute", sample_data, "--quiet", expect=0)
    assert result.stderr == ""
    return result.stdout


# -- compute: the JSON ------------------------------------------------------------------

def test_compute_sample_data(sample_data, sample_files, sample_json):
    report = json.loads(sample_json)
    assert CONTRACT_KEYS | ALSO_PRESENT <= set(report)
    assert report["channels"] == ["R", "G", "B"]
    assert report["images"] == SAMPLE_IMAGES
    assert isinstance(report["pixels"], int)
    assert report["skipped"] == []
    assert report["max_value"] == 255
    assert report["bnstats_version"] == bnstats.__version__
    assert report["settings"]["mode"] == "rgb"
    for key in STAT_KEYS:
        assert len(report[key]) == 3 and all(isinstance(v, float) for v in report[key])
    ref = full_load_files(sample_files, "rgb")
    assert report["pixels"] == ref["pixels"]
    assert_stats_close(report, ref)


def test_compute_real_subprocess(sample_data, sample_json, tmp_path):
    proc = run_module("compute", sample_data, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == sample_json


def test_output_file_is_written_atomically(sample_data, sample_json, tmp_path):
    out = tmp_path / "stats.json"
    out.write_text("old contents")
    result = cli("compute", sample_data, "-q", "-o", out, expect=0)
    assert result.stdout == ""
    assert result.stderr == ""
    assert out.read_text() == sample_json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]  # no .bnstats-*.tmp left
    result = cli("compute", sample_data, "-q", "--output", out, expect=0)
    assert out.read_text() == sample_json
    assert list(tmp_path.glob(".bnstats-*.tmp")) == []


def test_output_into_missing_folder_is_one_line_error(sample_data, tmp_path):
    result = cli("compute", sample_data, "-q", "-o", tmp_path / "missing" / "stats.json", expect=1)
    assert len(stderr_lines(result)) == 1


def test_output_file_permissions_follow_umask(sample_data, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "stats.json"
        cli("compute", sample_data, "-q", "-o", out, expect=0)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_gray_mode_has_one_channel(sample_data):
    report = cli_json("compute", sample_data, "-q", "--mode", "gray")
    assert report["channels"] == ["L"]
    assert all(len(report[k]) == 1 for k in STAT_KEYS)
    assert report["settings"]["mode"] == "gray"


def test_native_mode_rgba_has_four_channels(data):
    report = cli_json("compute", data["rgba"], "-q", "--mode", "native")
    assert report["channels"] == ["R", "G", "B", "A"]
    assert len(report["mean"]) == 4
    assert_stats_close(report, full_load_files([data["rgba"] / "rgba.png"], "native"))


def test_native_mode_mixed_layouts_is_one_line_error(data):
    result = cli("compute", data["mixed"], "--mode", "native", "-j", "1", expect=1)
    (line,) = stderr_lines(result)
    assert str(data["mixed"] / "b_gray.png") in line
    assert result.stdout == ""
    cli("compute", data["mixed"], "-q", expect=0)  # rgb converts both


def test_16bit_colour_without_opencv_is_one_line_error(tmp_path, monkeypatch):
    cv2 = pytest.importorskip("cv2")
    ok, buf = cv2.imencode(".png", _noise((4, 5, 3), 30, np.uint16, 65536))
    assert ok
    path = tmp_path / "wide.png"
    path.write_bytes(buf.tobytes())
    assert cli_json("compute", path, "-q", "--mode", "native")["max_value"] == 65535
    monkeypatch.setitem(sys.modules, "cv2", None)  # in-process run: the extra is "missing"
    result = cli("compute", path, "--mode", "native", "-j", "1", expect=1)
    (line,) = stderr_lines(result)
    assert "bnstats[16bit]" in line


# -- unreadable files -----------------------------------------------------------------------

def test_bad_file_is_skipped_with_one_warning(data):
    broken = str(data["bad"] / "broken.jpg")
    result = cli("compute", data["bad"], expect=0)
    (line,) = stderr_lines(result)
    assert broken in line
    report = json.loads(result.stdout)
    assert [s["path"] for s in report["skipped"]] == [broken]
    assert set(report["skipped"][0]) == {"path", "error"}
    assert report["images"] == 4


def test_bad_file_quiet_prints_nothing(data):
    result = cli("compute", data["bad"], "--quiet", expect=0)
    assert result.stderr == ""
    assert len(json.loads(result.stdout)["skipped"]) == 1


def test_strict_bad_file_is_one_line_error_and_no_output(data, tmp_path):
    out = tmp_path / "out.json"
    result = cli("compute", data["bad"], "--strict", "-o", out, expect=1)
    (line,) = stderr_lines(result)
    assert str(data["bad"] / "broken.jpg") in line
    assert result.stdout == ""
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    result = cli("compute", data["bad"], "--strict", "--quiet", expect=1)  # errors still print
    assert len(stderr_lines(result)) == 1 and result.stdout == ""


def test_strict_with_one_worker_over_several_chunks(data):
    result = cli("compute", data["many_bad"], "--strict", "-j", "1", expect=1)
    (line,) = stderr_lines(result)
    assert str(data["many_bad"] / "020_broken.jpg") in line


def test_unreadable_image_survives_pickling():
    error = pickle.loads(pickle.dumps(UnreadableImage("a.png", "OSError: broken")))
    assert (error.path, error.error) == ("a.png", "OSError: broken")


def test_strict_with_workers_exits_1(data, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnstats", "compute", str(data["many_bad"]), "--strict", "-j", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=tmp_path,
    )
    try:
        out, err = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bnstats compute --strict -j 2 hung; stderr: {err[-300:]}")
    assert proc.returncode == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(data["many_bad"] / "020_broken.jpg") in lines[0]


def test_skips_with_workers_over_several_chunks(data):
    report = cli_json("compute", data["many_bad"], "-q", "-j", "2")
    assert [s["path"] for s in report["skipped"]] == [str(data["many_bad"] / "020_broken.jpg")]
    assert report["images"] == 2 * CHUNK_SIZE + 8


# -- failures and usage errors ---------------------------------------------------------------

def test_nonexistent_path_is_usage_error(tmp_path):
    result = cli("compute", tmp_path / "does-not-exist", expect=2)
    assert result.stdout == ""
    assert "does-not-exist" in result.stderr


def test_no_images_found(data, tmp_path):
    out = tmp_path / "out.json"
    result = cli("compute", data["empty"], "-o", out, expect=1)
    (line,) = stderr_lines(result)
    assert "no images found" in line
    assert not out.exists()


def test_every_image_corrupt(data, tmp_path):
    out = tmp_path / "out.json"
    result = cli("compute", data["all_bad"], "--quiet", "-o", out, expect=1)
    (line,) = stderr_lines(result)
    assert result.stdout == ""
    assert not out.exists()
    result = cli("compute", data["all_bad"], expect=1)  # with warnings: one per file, then the error
    lines = stderr_lines(result)
    assert len(lines) == 4 and "warning" not in lines[-1]


@pytest.mark.parametrize(
    "args",
    [
        ["compute"],
        ["compute", "--mode", "cmyk", "."],
        ["compute", "-j", "0", "."],
        ["compute", "--no-such-flag", "."],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(args, sample_data, monkeypatch):
    monkeypatch.chdir(sample_data)
    result = cli(*args, expect=2)
    assert result.stdout == ""


def test_help_and_version():
    assert "compute" in cli("--help", expect=0).stdout
    assert "--shard" in cli("compute", "--help", expect=0).stdout
    assert bnstats.__version__ in cli("--version", expect=0).stdout


# -- shards ------------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [2, 3, 7])
def test_shards_add_up(sample_data, sample_json, count):
    reports = [cli_json("compute", sample_data, "-q", "--shard", f"{k}/{count}") for k in range(count)]
    assert sum(r["images"] for r in reports) == SAMPLE_IMAGES
    assert sum(r["pixels"] for r in reports) == json.loads(sample_json)["pixels"]
    sizes = [r["images"] for r in reports]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("bad", ["2/2", "x", "1/0", "-1/2", "1/2/3", "", "0/", "a/b"])
def test_bad_shard_is_usage_error(sample_data, bad):
    result = cli("compute", sample_data, "--shard", bad, expect=2)
    assert result.stdout == ""


# -- resize and crop ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "flag,value,setting,area",
    [
        ("--resize", "320x240", {"width": 320, "height": 240}, 320 * 240),
        ("--center-crop", "224", 224, 224 * 224),
        ("--center-crop", "320x240", {"width": 320, "height": 240}, 320 * 240),
        ("--center-crop", "50X20", {"width": 50, "height": 20}, 50 * 20),
    ],
)
def test_size_flags(sample_data, flag, value, setting, area):
    report = cli_json("compute", sample_data, "-q", flag, value)
    key = flag.lstrip("-").replace("-", "_")
    assert report["settings"][key] == setting
    assert report["pixels"] == area * SAMPLE_IMAGES


def test_resize_int_is_shorter_side(sample_data):
    report = cli_json("compute", sample_data, "-q", "--resize", "224")
    assert report["settings"]["resize"] == 224
    pixels = 0
    for p in sample_data.rglob("*.*"):
        w, h = resize_size(*Image.open(p).size, 224)
        assert min(w, h) == 224
        pixels += w * h
    assert report["pixels"] == pixels


def test_resize_then_center_crop_matches_reference(sample_data, sample_files):
    """Resize(64) then CenterCrop(56): the torchvision reference done with Pillow and numpy."""
    report = cli_json("compute", sample_data, "-q", "--resize", "64", "--center-crop", "56")
    assert_stats_close(report, full_load_files(sample_files, "rgb", resize=64, crop=56))


@pytest.mark.parametrize("flag", ["--resize", "--center-crop"])
@pytest.mark.parametrize("bad", ["0", "0x5", "5x0", "abc", "-3", "3x", "1.5"])
def test_bad_size_is_usage_error(sample_data, flag, bad):
    result = cli("compute", sample_data, flag, bad, expect=2)
    assert result.stdout == ""


# -- Ctrl-C ------------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and fork")
@pytest.mark.parametrize(
    "target,workers,presses",
    [("process", 2, 1), ("group", 2, 1), ("group", 2, 2), ("group", 1, 1)],
    ids=["pid", "group", "group-twice", "group-j1"],
)
@pytest.mark.slow
def test_ctrl_c_exits_130_without_traceback_or_leftovers(slow_data, tmp_path, target, workers, presses):
    """The first Ctrl-C stops at the next chunk boundary, a second one at once."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnstats", "compute", str(slow_data), "-j", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=tmp_path,
    )
    with reaped(proc):
        if workers > 1:
            wait_until_counting(proc)
            time.sleep(0.8)
        else:
            time.sleep(1.2)
        assert proc.poll() is None, "bnstats finished before Ctrl-C: make slow_data bigger"
        for press in range(presses):
            if press:
                time.sleep(0.05)
            if target == "group":  # what a terminal's Ctrl-C does
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    err = err.decode(errors="replace")
    if presses == 1:
        assert proc.returncode == 130, err
    else:
        # A second press that lands after the first one's clean exit began
        # (during interpreter shutdown, where SIGINT has its default action)
        # kills the process by SIGINT, which shells also report as 130.
        assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert out == b""
    assert processes_mentioning(str(slow_data)) == []


# -- none readable: the first error is named, with and without -q --------------------------------------------


@pytest.mark.parametrize("quiet", [(), ("-q",)])
def test_none_readable_names_the_first_error_with_and_without_q(tmp_path, quiet):
    for name in "abcd":
        (tmp_path / f"{name}.png").write_bytes(b"junk")
    result = cli("compute", tmp_path, "-j", 1, *quiet)
    assert result.exit_code == 1
    last = stderr_lines(result)[-1]
    assert last.startswith("Error: none of the 4 images could be read (first: ") and "a.png: " in last
    assert "cannot identify image file" in last


# -- hostile option values -----------------------------------------------------------------------------------


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


def test_a_storage_option_nesting_too_deep_is_a_usage_error(images):
    folder, _ = images
    assert "nests too deep" in one_line_error(cli("compute", folder, "--storage-option", "a=" + "[" * 100000), 2)
