"""``bnstats compare``: streaming vs the naive full load, side by side.

The command runs bnstats' streaming computation and the naive method (decode
everything, concatenate, numpy float64 mean/std) on the same images and
reports both, with wall time and peak memory, plus the "forum recipe"
numbers that explain why old published values differ. These tests check the
numbers against a float64 full load computed here, the exit codes, the
memory guard (and its estimate for 16-bit colour), the selection options, the
progress of each side and the note on rounding, which follows the data.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import cli, one_line_error, stderr_lines
from reference import full_load, load_array, mean_of_image_std

N_PHOTOS = 60
SIDE_KEYS = {"mean", "std", "seconds", "peak_bytes"}


# -- helpers ---------------------------------------------------------------------------------


def compare_json(*args, expect: int = 0) -> dict:
    result = cli("compare", *args, "--json", expect=expect)
    return json.loads(result.stdout)



def photo(rng, height, width, brightness, seed) -> np.ndarray:
    """A smooth gradient of the given brightness plus sensor-like noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([
        brightness + 40 * np.sin(xx / 37 + seed),
        brightness + 60 * (yy / height - 0.5),
        brightness - 30 * (xx / width - 0.5) + 20 * np.cos(yy / 23),
    ], axis=-1)
    img += rng.normal(0, 8, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_photos(folder: Path, count: int, height: int, width: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        brightness = 30 + 190 * ((i * 37) % count) / max(count - 1, 1)  # dark to bright
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(photo(rng, height, width, brightness, i)).save(path, quality=90)
        paths.append(path)
    return paths


def rgb_reference(paths) -> dict:
    """The float64 full load of ``paths`` as RGB (``reference.full_load``), plus the forum recipe's std."""
    arrays = [load_array(p, "rgb") for p in paths]
    ref = full_load(arrays)
    ref["mean_of_image_std"] = mean_of_image_std(arrays)
    return ref


def assert_close(got, want, tol=1e-9, what=""):
    assert len(got) == len(want), what
    for c, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= tol, f"{what}[{c}]: {g!r} != {w!r}"


# -- data ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """60 photo-like 200x150 JPEGs of very different brightness."""
    folder = tmp_path_factory.mktemp("photos")
    make_photos(folder, N_PHOTOS, 150, 200, seed=1)
    return folder


@pytest.fixture(scope="module")
def photo_files(photos) -> list[Path]:
    return sorted(photos.glob("*.jpg"))


@pytest.fixture(scope="module")
def reference(photo_files) -> dict:
    return rgb_reference(photo_files)


@pytest.fixture(scope="module")
def photos_json(photos) -> dict:
    """``bnstats compare PHOTOS --json``, run once for several tests."""
    return compare_json(photos)


@pytest.fixture(scope="module")
def with_bad_files(tmp_path_factory, photo_files) -> tuple[Path, list[Path]]:
    """12 of the photos plus a text file, a truncated JPEG and an empty PNG."""
    folder = tmp_path_factory.mktemp("with_bad")
    good = []
    for p in photo_files[:12]:
        target = folder / p.name
        target.write_bytes(p.read_bytes())
        good.append(target)
    (folder / "a_not_an_image.jpg").write_text("this is not a JPEG\n")
    data = photo_files[12].read_bytes()
    (folder / "b_truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "c_empty.png").write_bytes(b"")
    return folder, good


# -- output ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_table_shows_both_methods_time_memory_forum_and_verdict(photos, reference):
    result = cli("compare", photos, expect=0)
    out = result.stdout
    assert f"{N_PHOTOS} images" in out
    # per-channel mean and std of both methods: "mean R  <streaming>  <naive>  <diff>"
    for key in ("mean", "std"):
        for c, channel in enumerate("RGB"):
            m = re.search(rf"^{key} {channel}\s+(\S+)\s+(\S+)\s+(\S+)\s*$", out, re.MULTILINE)
            assert m, f"no row for {key} {channel}:\n{out}"
            streaming, naive = float(m.group(1)), float(m.group(2))
            assert abs(streaming - reference[key][c]) <= 1e-12, (key, channel)
            assert abs(naive - reference[key][c]) <= 1e-12, (key, channel)
    lowered = out.lower()
    assert "seconds" in lowered and "peak memory" in lowered
    for side in ("streaming", "naive"):
        assert re.search(rf"^{side}\s+\d+\.\d+\s+\d+\.\d+ MiB", out, re.MULTILINE), f"no {side} time/memory row:\n{out}"
    assert "WRONG" in out
    assert "per-image std" in out
    verdict = [line for line in out.splitlines() if line.lower().startswith("verdict")]
    assert len(verdict) == 1, out
    assert "agree" in verdict[0] and "DISAGREE" not in verdict[0]
    assert result.stderr.strip() == ""


def test_json_has_both_sides_and_agreement(photos_json):
    doc = photos_json
    assert {"streaming", "naive", "max_abs_diff", "agree"} <= set(doc)
    for side in ("streaming", "naive"):
        assert SIDE_KEYS <= set(doc[side]), side
        assert len(doc[side]["mean"]) == len(doc[side]["std"]) == 3
        assert isinstance(doc[side]["peak_bytes"], int) and doc[side]["peak_bytes"] > 0
        assert doc[side]["seconds"] > 0
    assert doc["agree"] is True
    assert 0 <= doc["max_abs_diff"] <= 1e-9
    assert doc["images"] == N_PHOTOS
    # max_abs_diff is what it says: the largest |streaming - naive| over mean and std
    diffs = [abs(a - b) for key in ("mean", "std") for a, b in zip(doc["streaming"][key], doc["naive"][key])]
    assert doc["max_abs_diff"] == max(diffs)


def test_json_both_sides_equal_float64_full_load(photos_json, reference):
    for side in ("streaming", "naive"):
        for key in ("mean", "std"):
            assert_close(photos_json[side][key], reference[key], 1e-9, f"{side} {key}")


def test_forum_recipe_std_is_wrong_on_images_of_different_brightness(photos_json, reference):
    forum = photos_json["forum_recipe"]["mean_of_image_std"]
    # it is what it says: the mean of each image's own std ...
    assert_close(forum["std"], reference["mean_of_image_std"], 1e-9, "mean_of_image_std")
    # ... which leaves out the spread between images: far from the dataset's std
    for c in range(3):
        assert abs(forum["std"][c] - reference["std"][c]) > 1e-4, c
        assert forum["std"][c] < reference["std"][c]
    # with equal-sized images the mean of image means is still right
    assert_close(forum["mean"], reference["mean"], 1e-9, "mean_of_image_std mean")


@pytest.mark.slow
def test_naive_full_load_uses_more_memory_than_streaming(tmp_path):
    """30 photos of 400x300: the naive float64 load holds ~200 MB, twice what streaming with its pool peaks at
    (~90 MB); more photos would widen the gap, not prove more.

    A real ``python -m bnstats`` process; the reference is computed here
    while it runs (each side measures only its own process's memory).
    """
    paths = make_photos(tmp_path / "big", 30, 300, 400, seed=2)
    run = subprocess.Popen([sys.executable, "-m", "bnstats", "compare", str(tmp_path / "big"), "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with run:
        ref = rgb_reference(paths)
        stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    assert "Traceback" not in stderr
    doc = json.loads(stdout)
    assert doc["agree"] is True and doc["images"] == 30
    values = 30 * 300 * 400 * 3
    naive, streaming = doc["naive"]["peak_bytes"], doc["streaming"]["peak_bytes"]
    assert naive >= 8 * values, "the naive side must at least hold the float64 copy"
    assert naive > streaming, (naive, streaming)
    for side in ("streaming", "naive"):
        for key in ("mean", "std"):
            assert_close(doc[side][key], ref[key], 1e-9, f"{side} {key}")


@pytest.mark.slow
def test_peak_memory_does_not_include_the_callers_memory(photos):
    ballast = np.ones(600 * 2**20 // 8)  # 600 MiB resident in this (the calling) process
    try:
        doc = compare_json(photos, "--limit", "3", "-j", "1")
    finally:
        del ballast
    for side in ("streaming", "naive"):  # 3 small images need a few tens of MiB
        assert doc[side]["peak_bytes"] < 400 * 2**20, (side, doc[side]["peak_bytes"])


# -- exit codes --------------------------------------------------------------------------------

@pytest.mark.slow
def test_disagreement_exits_1(photos, photos_json):
    """numpy's float64 sums carry rounding: with --tolerance 0 the methods disagree."""
    if photos_json["max_abs_diff"] == 0:
        pytest.skip("streaming and naive happen to agree to the last bit on this data")
    result = cli("compare", photos, "--json", "--tolerance", "0", expect=1)
    doc = json.loads(result.stdout)
    assert doc["agree"] is False
    assert doc["max_abs_diff"] == photos_json["max_abs_diff"]
    table = cli("compare", photos, "--tolerance", "0", expect=1)
    assert "DISAGREE" in table.stdout


def test_agreement_is_relative_to_the_values_past_1():
    """--tolerance was absolute: uint32 data near 3.5e9 differed by 1.8e-6 (float64 rounding, 5e-16 relative)
    and compare said DISAGREE, exit 1. Differences are within tolerance x max(1, |value|)."""
    from bnstats.running.compare import agreement

    side = lambda mean, std: {"mean": mean, "std": std}  # noqa: E731
    big = 3.5e9
    assert agreement(side([big], [2.9e8]), side([big + 2 * 2**-19], [2.9e8]), 1e-9) == (2**-18, True)  # 2 ulps
    assert agreement(side([big], [2.9e8]), side([big + 10], [2.9e8]), 1e-9) == (10, False)  # a real one
    assert agreement(side([0.5], [0.2]), side([0.5 + 2e-9], [0.2]), 1e-9)[1] is False  # unit scale: absolute
    assert agreement(side([0.5], [0.2]), side([0.5 + 5e-10], [0.2]), 1e-9)[1] is True
    assert agreement(side([None], [None]), side([None], [None]), 0) == (0.0, True)  # no pixels on either side
    assert agreement(side([0.5], [0.2]), side([None], [0.2]), 1) == (float("inf"), False)


@pytest.mark.slow
def test_data_in_large_units_agrees_end_to_end(tmp_path):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "big.npy", (rng.integers(0, 10**9, (300, 16, 16, 3)) + 3 * 10**9).astype(np.uint32))
    doc = compare_json(tmp_path / "big.npy", "-j", "2")
    assert doc["agree"] is True and doc["max_abs_diff"] < 1e-4


def test_memory_guard_suggests_a_limit_that_works(photos):
    """Each 200x150 photo needs ~1.6 MB naive: 10M fits a few of them."""
    refused = cli("compare", photos, "--max-memory", "10M", expect=1)
    assert refused.stdout == ""
    lines = stderr_lines(refused)
    assert len(lines) == 1, refused.stderr
    m = re.search(r"--limit (\d+)", lines[0])
    assert m, lines[0]
    limit = int(m.group(1))
    assert 1 <= limit < N_PHOTOS
    doc = compare_json(photos, "--max-memory", "10M", "--limit", limit)
    assert doc["images"] == limit and doc["agree"] is True
    # one image more would not have fitted
    cli("compare", photos, "--max-memory", "10M", "--limit", limit + 1, expect=1)


def test_memory_guard_when_not_even_one_image_fits(photos):
    refused = cli("compare", photos, "--max-memory", "1M", expect=1)
    assert refused.stdout == ""
    assert len(stderr_lines(refused)) == 1, refused.stderr
    assert "not even the first image fits: raise --max-memory" in refused.stderr
    assert "--limit" not in refused.stderr.replace("--max-memory", "")
    assert "MiB" in refused.stderr  # small sizes are not shown as 0.0 GiB


def test_limit_compares_first_n_images(photos, photo_files):
    doc = compare_json(photos, "--limit", "5")
    assert doc["images"] == 5
    ref = rgb_reference(photo_files[:5])
    for side in ("streaming", "naive"):
        assert_close(doc[side]["mean"], ref["mean"], 1e-9, side)
        assert_close(doc[side]["std"], ref["std"], 1e-9, side)


@pytest.mark.parametrize("args", [
    ["--max-memory", "abc"], ["--max-memory", "12Q"], ["--limit", "0"], ["--tolerance", "x"],
])
def test_bad_options_are_usage_errors(photos, args):
    result = cli("compare", photos, *args, expect=2)
    assert result.stdout == ""


def test_selection_and_preprocessing_options_reach_both_sides(photos):
    """--shard, --mode, --resize, --center-crop: same numbers as compute."""
    opts = ["--shard", "1/3", "--mode", "gray", "--resize", "64", "--center-crop", "48"]
    doc = compare_json(photos, *opts)
    computed = json.loads(cli("compute", photos, *opts, "-q", expect=0).stdout)
    assert doc["images"] == computed["images"] == N_PHOTOS // 3
    assert doc["agree"] is True
    for side in ("streaming", "naive"):
        assert len(doc[side]["mean"]) == 1
        assert_close(doc[side]["mean"], computed["mean"], 1e-9, side)
        assert_close(doc[side]["std"], computed["std"], 1e-9, side)


# -- unreadable files ---------------------------------------------------------------------------

def test_unreadable_files_are_left_out_of_both_sides(with_bad_files):
    folder, good = with_bad_files
    doc = compare_json(folder)
    assert doc["images"] == len(good)
    assert doc["streaming"]["images"] == doc["naive"]["images"] == len(good)
    assert doc["agree"] is True
    ref = rgb_reference(good)
    for side in ("streaming", "naive"):
        assert_close(doc[side]["mean"], ref["mean"], 1e-9, side)
        assert_close(doc[side]["std"], ref["std"], 1e-9, side)


def test_only_unreadable_files_is_one_line_error(with_bad_files, tmp_path):
    folder, _ = with_bad_files
    for name in ("a_not_an_image.jpg", "b_truncated.jpg"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    result = cli("compare", tmp_path, expect=1)
    assert result.stdout == ""
    assert len(stderr_lines(result)) == 1, result.stderr


def test_ignore_value_with_a_fully_ignored_image_json(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(1, 256, (20, 30, 3), np.uint8)).save(tmp_path / f"a{i}.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "padding.png")
    doc = compare_json(tmp_path, "--ignore-value", "0")
    assert doc["agree"] is True


@pytest.fixture(scope="module")
def three_and_a_broken_one(tmp_path_factory) -> Path:
    """Three small photos and ``broken.jpg``."""
    folder = tmp_path_factory.mktemp("three_and_broken")
    make_photos(folder, 3, 20, 30, seed=5)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_strict_stops_at_an_unreadable_file(three_and_a_broken_one):
    result = cli("compare", three_and_a_broken_one, "--strict", expect=1)
    assert "broken.jpg" in result.stderr and len(stderr_lines(result)) == 1


def test_unreadable_files_are_listed_and_left_out_of_both_sides(three_and_a_broken_one):
    folder = three_and_a_broken_one
    result = cli("compare", folder, expect=0)
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr
    assert "1 unreadable files left out of both methods" in result.stdout
    quiet = cli("compare", folder, "--json", "--quiet", expect=0)
    assert quiet.stderr == ""
    doc = json.loads(quiet.stdout)
    assert doc["streaming"]["images"] == doc["naive"]["images"] == 3
    assert [s["path"] for s in doc["streaming"]["skipped"]] == [str(folder / "broken.jpg")]


def test_float_images_with_nodata_agree(tmp_path):
    rng = np.random.default_rng(8)
    for i in range(3):
        values = rng.normal(100, 5, (12, 10)).astype(np.float32)
        values[i, :3] = np.nan
        values[-1, -1] = np.inf
        Image.fromarray(values).save(tmp_path / f"f{i}.tif")
    doc = compare_json(tmp_path, "--mode", "native")
    assert doc["agree"] is True and doc["max_abs_diff"] < 1e-9


# -- progress for each side, and the memory estimate of 16-bit colour ----------------------------------------


def test_compare_reports_progress_for_each_side(sample_data):
    from bnstats.running.compare import compare
    from bnstats.inputs.select import select

    seen = []
    doc = compare(select([str(sample_data)]), on_progress=lambda side, done: seen.append((side, done)))
    assert doc["agree"]
    assert [s for s, _ in seen][0] == "streaming" and seen[-1] == ("naive", 36)
    assert ("streaming", 36) in seen


def test_compare_estimates_16bit_colour_at_two_bytes_a_value(tmp_path):
    """compare re-derived mode -> bands/depth and took 16-bit colour PNGs for 8-bit."""
    cv2 = pytest.importorskip("cv2")
    from bnstats.running.compare import NAIVE_BYTES_PER_VALUE, estimate_naive_bytes
    from bnstats.decoding.options import DecodeOptions
    from bnstats.inputs.select import select

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 40, 3), np.uint16))
    need, _ = estimate_naive_bytes(select([str(tmp_path)]), DecodeOptions(mode="native"))
    assert need == 30 * 40 * 3 * NAIVE_BYTES_PER_VALUE[2]
    need, _ = estimate_naive_bytes(select([str(tmp_path)]), DecodeOptions(mode="rgb"))
    assert need == 30 * 40 * 3 * NAIVE_BYTES_PER_VALUE[1]


# -- the note on rounding follows the data; nothing readable names the first error ---------------------------


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


# -- hostile option values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [(("--tolerance", "nan"), "finite"), (("--tolerance", "-1"), "finite"),
                                         (("--max-memory", "0"), "at least 1 byte"),
                                         (("--limit", "0"), "x>=1")])
def test_hostile_compare_options_are_one_line_usage_errors(images, args, words):
    folder, _ = images
    assert words in one_line_error(cli("compare", folder, "-q", *args), 2)
