"""Scaled integers (NIfTI's scl_slope/scl_inter, DICOM's rescale): stored 8/16-bit integers counted exactly in
the scaled units — mean, variance, min, max, median and percentiles against exact rationals and numpy float64 —
merged in any order bit for bit, mixed with unscaled volumes, through the CLI's workers, shards + merge, resume,
masks, exports and hostile states."""

from __future__ import annotations

import json
import math
import time
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import cli, cli_json, one_line_error

from bnstats.statistics.formulas import LayoutError
from bnstats.statistics.running import RunningStats

nibabel = pytest.importorskip("nibabel")

SCALINGS = [(0.5, 10.0, np.uint16), (2.5, -3.25, np.int16), (1.0, 0.0, np.int16), (1.0, -1024.0, np.uint16),
            (0.0754, 3100.76, np.int16), (-0.125, 7.0, np.uint8)]


def exact_values(stored: np.ndarray, slope: float, inter: float) -> list[Fraction]:
    return [Fraction(slope) * int(q) + Fraction(inter) for q in stored.ravel().tolist()]


def exact_percentile(values: list[Fraction], p) -> Fraction:
    """numpy's method="linear" in rationals."""
    ordered = sorted(values)
    h = (len(ordered) - 1) * Fraction(p) / 100
    k = h.numerator // h.denominator
    return ordered[k] + (h - k) * (ordered[min(k + 1, len(ordered) - 1)] - ordered[k])


def counted(parts) -> RunningStats:
    """A RunningStats of ``(stored, slope, inter)`` parts, each one image of one channel."""
    rs = RunningStats()
    for stored, slope, inter in parts:
        counts = np.bincount((stored.astype(np.int64) - _offset(stored.dtype)).ravel(),
                             minlength=256 ** stored.dtype.itemsize)[None]
        if (slope, inter) == (1.0, 0.0) and stored.dtype.kind == "i":
            rs.update_histogram(counts, offset=_offset(stored.dtype))  # unscaled signed: a plain histogram
        else:
            rs.update_scaled(counts, slope, inter, offset=_offset(stored.dtype))
    return rs


def _offset(dtype) -> int:
    return int(np.iinfo(dtype).min) if np.dtype(dtype).kind == "i" else 0


part = st.tuples(st.sampled_from(SCALINGS), st.integers(0, 2**32 - 1), st.integers(1, 40))


def _parts(drawn):
    out = []
    for (slope, inter, dtype), seed, size in drawn:
        info = np.iinfo(dtype)
        stored = np.random.default_rng(seed).integers(info.min, int(info.max) + 1, size, dtype=np.int64).astype(dtype)
        out.append((stored, slope, inter))
    return out


@settings(max_examples=15, deadline=None)
@given(st.lists(part, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_exact_statistics_and_any_merge_order_give_the_same_bits(drawn, random):
    parts = _parts(drawn)
    values = [v for stored, slope, inter in parts for v in exact_values(stored, slope, inter)]
    whole = counted(parts)
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / n
    result = whole.result()
    assert result["raw_mean"] == [float(mean)] and result["raw_var"] == [float(var)]
    assert result["raw_min"] == [float(min(values))] and result["raw_max"] == [float(max(values))]
    ps = ["0", "0.5", "37.5", "50", "99.5", "100"]
    order = whole.order_statistics(ps)
    assert order["raw"]["percentiles"] == {p: [float(exact_percentile(values, p))] for p in ps}
    floats = np.array([float(v) for v in values])
    np.testing.assert_allclose(order["raw"]["median"], [np.median(floats)], rtol=1e-14, atol=1e-9)
    # any grouping and order of the parts: the same state and the same bits
    shuffled = parts[:]
    random.shuffle(shuffled)
    pieces = [counted([p]) for p in shuffled]
    merged = RunningStats()
    for piece in pieces:
        merged.merge(piece)
    assert merged.to_dict() == whole.to_dict() or whole.kind == "histogram" == merged.kind
    assert merged.result() == result and merged.order_statistics(ps) == order
    assert RunningStats.from_dict(json.loads(json.dumps(whole.to_dict()))).result() == result


def test_unscaled_signed_data_first_or_last_gives_the_same_state():
    signed = (np.arange(-5, 5, dtype=np.int16), 1.0, 0.0)
    scaled = (np.arange(0, 10, dtype=np.uint16), 0.5, 10.0)
    a, b = counted([signed, scaled]), counted([scaled, signed])
    assert a.kind == b.kind == "scaled" and a.to_dict() == b.to_dict()
    merged = counted([signed]).merge(counted([scaled]))
    assert merged.to_dict() == a.to_dict() and counted([scaled]).merge(counted([signed])).to_dict() == a.to_dict()


def test_unsigned_unit_scale_data_does_not_mix_with_scaled():
    rs = RunningStats()
    rs.update(np.zeros((2, 2), np.uint8))
    with pytest.raises(LayoutError, match="scaled.*unit scale.*separate runs"):
        rs.update_scaled(np.ones((1, 65536), np.int64), 0.5, 1.0)


def assert_a_third_scaling_is_refused(counts: np.ndarray, match: str) -> None:
    """Two scalings of ``counts`` fit; a third, added or merged, is a LayoutError matching ``match``."""
    rs = RunningStats()
    for slope in (0.5, 1.5):
        rs.update_scaled(counts, slope, 0.0)
    with pytest.raises(LayoutError, match=match):
        rs.update_scaled(counts, 2.5, 0.0)
    other = RunningStats()
    other.update_scaled(counts, 3.5, 0.0)
    with pytest.raises(LayoutError, match=match):
        rs.merge(other)


def test_more_scalings_than_the_bound_is_one_error_naming_the_variable(monkeypatch):
    from bnstats import limits

    monkeypatch.setattr(limits, "_current", limits.Limits(scales=2))
    assert_a_third_scaling_is_refused(np.ones((1, 256), np.int64), "BNSTATS_MAX_SCALES")


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.update(slope=0), "non-zero slope"),
    (lambda g: g.update(slope="1"), "finite numbers"),
    (lambda g: g.update(inter=float("inf")), "finite numbers"),
    (lambda g: g.update(levels=300), "levels"),
    (lambda g: g.update(offset=-5), "offset"),
    (lambda g: g.update(histogram=[{"start": 0, "counts": [1]}] * 2), "channels"),
    (lambda g: g.update(histogram=[{"start": 65535, "counts": [1, 2]}]), "fits the levels"),
])
def test_a_damaged_scaled_state_is_refused_naming_what(edit, message):
    state = counted([(np.arange(10, dtype=np.int16), 0.5, 1.0)]).to_dict()
    edit(state["groups"][0])
    with pytest.raises(ValueError, match=message):
        RunningStats.from_dict(state)
    twice = counted([(np.arange(10, dtype=np.int16), 0.5, 1.0)]).to_dict()
    twice["groups"] *= 2
    with pytest.raises(ValueError, match="twice"):
        RunningStats.from_dict(twice)


def test_a_negative_slope_swaps_min_and_max():
    rs = counted([(np.array([0, 3, 200], np.uint8), -0.125, 7.0)])
    assert rs.result()["raw_min"] == [7.0 - 25.0] and rs.result()["raw_max"] == [7.0]
    assert rs.order_statistics()["raw"]["median"] == [7.0 - 0.375]


# -- through the command line ----------------------------------------------------------------------------


def write_volume(path, stored, slope, inter):
    image = nibabel.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(slope, inter)
    nibabel.save(image, str(path))
    loaded = nibabel.load(str(path)).dataobj
    return [Fraction(loaded.slope) * int(q) + Fraction(loaded.inter) for q in loaded.get_unscaled().ravel().tolist()]


@pytest.fixture(scope="module")
def scaled_folder(tmp_path_factory):
    """Volumes of MR-like scalings, an unscaled int16 one and a CT one stored unsigned with -1024, and their
    label maps; with every voxel's exact value, and the foreground's."""
    root = tmp_path_factory.mktemp("scaled")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(11)
    values, foreground = [], []
    for i, (slope, inter, dtype) in enumerate(SCALINGS[:5]):
        stored = rng.integers(0, 3000, (6, 5, 4)).astype(dtype)
        exact = write_volume(root / "images" / f"case{i}.nii.gz", stored, slope, inter)
        labels = (rng.random((6, 5, 4)) < 0.3).astype(np.uint8)
        nibabel.save(nibabel.Nifti1Image(labels, np.eye(4)), str(root / "labels" / f"case{i}.nii.gz"))
        values += exact
        foreground += [v for v, keep in zip(exact, labels.ravel().tolist()) if keep]  # both in C order
    return root, values, foreground


@pytest.mark.slow
def test_a_folder_of_scaled_volumes_is_exact_and_the_same_for_any_workers(scaled_folder):
    root, values, _ = scaled_folder
    one = cli_json("compute", root / "images", "-j", "1", "--percentiles", "0.5,99.5")
    two = cli_json("compute", root / "images", "-j", "2", "--percentiles", "0.5,99.5")
    assert one == two and one["state"]["kind"] == "scaled" and one["max_value"] == 1
    n = len(values)
    mean = sum(values) / n
    assert one["raw"]["mean"] == [float(mean)]
    assert one["raw"]["var"] == [float(sum((v - mean) ** 2 for v in values) / n)]
    assert one["raw"]["median"] == [float(exact_percentile(values, 50))]
    assert one["raw"]["percentiles"] == {p: [float(exact_percentile(values, p))] for p in ("0.5", "99.5")}
    floats = np.array([float(v) for v in values])
    np.testing.assert_allclose(one["raw"]["percentiles"]["99.5"], [np.percentile(floats, 99.5)], rtol=1e-14)


def test_shards_merge_and_resume_give_the_whole_runs_bytes(scaled_folder, tmp_path):
    root, _, _ = scaled_folder
    whole = cli_json("compute", root / "images", "-j", "1")
    parts = []
    for k in range(3):
        part = tmp_path / f"p{k}.json"
        assert cli("compute", root / "images", "--shard", f"{k}/3", "-j", "1", "-o", part).exit_code == 0
        parts.append(part)
    merged = cli_json("merge", *reversed(parts))
    assert {k: merged[k] for k in ("mean", "var", "median", "state", "files")} == \
        {k: whole[k] for k in ("mean", "var", "median", "state", "files")}
    checkpoint = tmp_path / "ck.json"
    resumed = cli_json("compute", root / "images", "-j", "1", "--checkpoint", checkpoint)
    assert resumed["state"] == whole["state"]


def test_the_foreground_of_scaled_volumes_and_the_nnunet_export(scaled_folder, tmp_path):
    root, _, foreground = scaled_folder
    out = tmp_path / "fg.json"
    result = cli("compute", root / "images", "--mask", root / "labels", "-j", "2", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    fg = report["foreground"]
    assert fg["pixels"] == len(foreground)
    assert fg["raw"]["median"] == [float(exact_percentile(foreground, 50))]
    exported = json.loads(cli("export", out, "--format", "nnunet").stdout)
    props = exported["foreground_intensity_properties_per_channel"]["0"]
    assert props["percentile_99_5"] == float(exact_percentile(foreground, "99.5"))
    assert props["mean"] == float(sum(foreground) / len(foreground))


def test_ignore_value_names_a_scaled_value(tmp_path):
    stored = np.array([0, 1, 2, 3, 4, 5], np.int16).reshape(1, 2, 3)
    write_volume(tmp_path / "v.nii", stored, 0.5, 10.0)  # values 10, 10.5, ... 12.5
    assert cli_json("compute", tmp_path / "v.nii", "--ignore-value", "11", "-j", "1")["pixels"] == 5
    assert cli_json("compute", tmp_path / "v.nii", "--ignore-value", "2", "-j", "1")["pixels"] == 6  # a stored q
    assert cli_json("compute", tmp_path / "v.nii", "--ignore-value", "10.25", "-j", "1")["pixels"] == 6


def test_a_4d_scaled_series_as_items(tmp_path):
    stored = np.random.default_rng(5).integers(0, 500, (3, 4, 2, 5)).astype(np.int16)
    values = write_volume(tmp_path / "bold.nii.gz", stored, 0.25, -1.0)
    report = cli_json("compute", tmp_path / "bold.nii.gz", "--fourth-axis", "items", "-j", "2")
    assert report["images"] == 5 and report["state"]["kind"] == "scaled"
    assert report["raw"]["median"] == [float(exact_percentile(values, 50))]


def test_too_many_scalings_is_one_line_naming_the_variable(tmp_path, monkeypatch):
    for i in range(3):
        write_volume(tmp_path / f"v{i}.nii", np.arange(8, dtype=np.int16).reshape(2, 2, 2), 1.5 + i, 0.0)
    monkeypatch.setenv("BNSTATS_MAX_SCALES", "2")
    from bnstats import limits

    monkeypatch.setattr(limits, "_current", None)
    line = one_line_error(cli("compute", tmp_path, "-j", "1"), 1)
    assert "BNSTATS_MAX_SCALES" in line


def test_a_rescaled_dicom_file_is_exact(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = 2.5, -1024.5
    ds.save_as(tmp_path / "ct.dcm")
    values = [Fraction(2.5) * int(q) + Fraction(-1024.5) for q in ds.pixel_array.ravel().tolist()]
    report = cli_json("compute", tmp_path / "ct.dcm", "-j", "1")
    assert report["state"]["kind"] == "scaled"
    assert report["raw"]["median"] == [float(exact_percentile(values, 50))]
    assert report["raw"]["mean"] == [float(sum(values) / len(values))]



def test_observers_and_plot_take_scaled_beside_unscaled_volumes(scaled_folder, tmp_path):
    """--trace and --bn-momentum combine per-image summaries of scaled volumes (float) with those of unscaled
    integer ones (exact) in one batch; the plot draws the scaled values' histogram."""
    root, values, _ = scaled_folder
    out = tmp_path / "r.json"
    result = cli("compute", root / "images", "-j", "1", "--trace", tmp_path / "t.csv", "--bn-momentum",
                 "cumulative", "--batch-size", "2", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    mean = float(sum(values) / len(values))
    volumes = [values[i : i + 120] for i in range(0, len(values), 120)]  # 6x5x4 voxels each, in key order
    batches = [sum(volumes[i : i + 2], []) for i in range(0, len(volumes), 2)]
    cumulative = sum(sum(b) / len(b) for b in batches) / len(batches)  # PyTorch's momentum=None: batch means
    np.testing.assert_allclose(report["bn"]["running_mean"], [float(cumulative)], rtol=1e-12)
    np.testing.assert_allclose(report["bn"]["exact_mean"], [mean], rtol=1e-15)
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[-1].split(",")[1] == str(len(values))
    np.testing.assert_allclose(float(rows[-1].split(",")[2]), mean, rtol=1e-12)
    assert cli("plot", out, "-o", tmp_path / "p.png").exit_code == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


# -- the hostile review: values near each other, past float64, and the time percentiles take -----------------


def exact_weighted_percentile(pairs, p) -> Fraction:
    """numpy's method="linear" over ``(value, count)`` pairs, in rationals."""
    ordered = sorted(pairs)
    n = sum(count for _, count in ordered)
    h = (n - 1) * Fraction(p) / 100
    k = h.numerator // h.denominator

    def at(rank):
        for value, count in ordered:
            if rank < count:
                return value
            rank -= count

    below, above = at(k), at(min(k + 1, n - 1))
    return below + (h - k) * (above - below)


# slopes a few ulps apart, intercepts that dwarf the steps, tiny and huge slopes: float64 approximations of
# the values tie or cross where the exact values do not
CLOSE = [(0.1, 0.0), (0.1 + 2**-56, 0.0), (0.1 - 2**-56, 2**-50), (1e-30, 1e6), (3e-30, 1e6), (-1e-12, 1e6),
         (1.0, 1e6), (2.0**-40, 1e6 + 2**-33), (-7.5, 3.0), (1e300, 0.0), (1e-300, -1e-290)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CLOSE), st.lists(st.tuples(st.integers(0, 255), st.integers(1, 5)),
                                                           min_size=1, max_size=8)), min_size=1, max_size=5),
       st.sampled_from(["0", "1", "25", "50", "62.5", "99", "100"]))
def test_percentiles_of_interleaved_scalings_are_exact(drawn, p):
    rs, pairs = RunningStats(), []
    for (slope, inter), bins in drawn:
        counts = np.zeros((1, 256), np.int64)
        for q, count in bins:
            counts[0, q] += count
        rs.update_scaled(counts, slope, inter)
        pairs += [(Fraction(slope) * q + Fraction(inter), int(counts[0, q])) for q in np.flatnonzero(counts[0])]
    got = rs.state.percentiles([Fraction(p)])[0][0]
    assert got == exact_weighted_percentile(pairs, p)


def test_values_whose_float_approximations_cross_are_ordered_exactly():
    """0.09999999999999998·63 < 0.09999999999999998·60 + 0.3 exactly, yet in float64 the first is the greater:
    the percentiles' fast sort of approximations must not give the wrong one as the minimum."""
    slope = 0.09999999999999998
    assert slope * 63 > slope * 60 + 0.3 and Fraction(slope) * 63 < Fraction(slope) * 60 + Fraction(0.3)
    rs = RunningStats()
    for q, inter in ((63, 0.0), (60, 0.3)):
        counts = np.zeros((1, 256), np.int64)
        counts[0, q] = 1
        rs.update_scaled(counts, slope, inter)
    low, high = (row[0] for row in rs.state.percentiles([Fraction(0), Fraction(100)]))
    assert (low, high) == (Fraction(slope) * 63, Fraction(slope) * 60 + Fraction(0.3))


@pytest.mark.slow
def test_values_past_float64_are_inf_for_the_report_to_refuse_not_a_crash():
    rs = RunningStats()
    rs.update_scaled(np.ones((1, 65536), np.int64), 1e305, 0.0, offset=-32768)
    result = rs.result()
    assert result["raw_max"] == [math.inf] and result["raw_min"] == [-math.inf] and result["raw_var"] == [math.inf]
    assert rs.order_statistics(["100"])["raw"]["percentiles"]["100"] == [math.inf]
    assert rs.moments().max.tolist() == [math.inf]


def test_a_dicom_rescale_past_float64_is_one_line(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = "1e300", "0"
    del ds.PixelPaddingValue  # its note (the padding at -2e303) would be a second line
    ds.save_as(tmp_path / "ct.dcm")
    line = one_line_error(cli("compute", tmp_path / "ct.dcm", "-j", "1", "--percentiles", "0,100"), 1)
    assert "not a finite number" in line


@pytest.mark.slow
def test_percentiles_of_64_full_16_bit_scalings_take_seconds_not_minutes():
    rs = RunningStats()
    rng = np.random.default_rng(0)
    for g in range(64):
        rs.update_scaled(rng.integers(1, 100, (1, 65536)), 0.0122 * (g + 1), -3.3 * g, offset=-32768)
    start = time.perf_counter()
    order = rs.order_statistics(["0", "1", "99", "100"])
    # ~0.5 s on an idle 2-core VM; a bound for a loaded machine, far below what exact sorting of 4M values took
    # once 3 channels were asked (minutes): the test names the order of magnitude, not a benchmark
    assert time.perf_counter() - start < 20
    assert order["raw"]["percentiles"]["0"] == rs.result()["raw_min"]
    assert order["raw"]["percentiles"]["100"] == rs.result()["raw_max"]


def test_ignore_value_given_as_the_report_writes_a_value_names_its_pixels(tmp_path):
    """A DICOM rescale of 0.3 and 0.7 (float64s) makes each stored q a value 0.3·q + 0.7 that float64 rounds: the min
    the report writes, given back to --ignore-value, leaves those pixels out (the exact rational is no float)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = "0.3", "0.7"
    ds.save_as(tmp_path / "ct.dcm")
    stored = ds.pixel_array
    report = cli_json("compute", tmp_path / "ct.dcm", "-j", "1")
    shown, low = report["raw"]["min"][0], int(stored.min())
    assert Fraction(shown) != Fraction(0.3) * low + Fraction(0.7)  # the exact value is no float: only its rounding matches
    kept = cli_json("compute", tmp_path / "ct.dcm", "--ignore-value", repr(shown), "-j", "1")["pixels"]
    assert kept == stored.size - int((stored == low).sum())
    assert cli_json("compute", tmp_path / "ct.dcm", "--ignore-value", repr(shown + 0.05), "-j", "1")["pixels"] == \
        stored.size  # between two values: none


def exact_covariance(rows: list[list[Fraction]]) -> list[list[Fraction]]:
    n = len(rows)
    means = [sum(col) / n for col in zip(*rows)]
    return [[sum((r[i] - means[i]) * (r[j] - means[j]) for r in rows) / n for j in range(len(means))]
            for i in range(len(means))]


def test_covariance_of_scaled_beside_signed_volumes_is_exact_in_any_order(tmp_path):
    """--covariance of scaled volumes (each its slope) and an unscaled int16 one: exact rationals rounded once,
    its diagonal bit for bit the var; was a float for scaled data and a layout error beside int16."""
    from bnstats.statistics.covariance import Covariance

    rng = np.random.default_rng(3)
    rows = []
    for i, (slope, inter, dtype) in enumerate([(0.0754, 3100.76, np.int16), (1.0, 0.0, np.int16),
                                               (2.5, -3.25, np.uint16)]):
        stored = rng.integers(0, 3000, (3, 4, 2, 2)).astype(dtype)
        write_volume(tmp_path / f"v{i}.nii", stored, slope, inter)
        loaded = nibabel.load(str(tmp_path / f"v{i}.nii")).dataobj
        a, b = Fraction(loaded.slope), Fraction(loaded.inter)
        rows += [[a * int(q) + b for q in voxel] for voxel in stored.reshape(-1, 2, order="F").tolist()]
    expected = [[float(v) for v in row] for row in exact_covariance(rows)]
    one = cli_json("compute", tmp_path, "--covariance", "-j", "1")
    two = cli_json("compute", tmp_path, "--covariance", "-j", "2")
    assert one["raw"]["covariance"] == expected and one["covariance"] == expected
    assert np.diag(np.array(one["raw"]["covariance"])).tolist() == one["raw"]["var"]
    assert two["raw"]["covariance"] == expected and two["statistics"] == one["statistics"]
    state = one["statistics"]["covariance"]
    assert state["levels"] == 0 and state["shift"] > 0
    assert Covariance.from_dict(json.loads(json.dumps(state))).to_dict() == state
    parts = []
    for k in range(3):
        assert cli("compute", tmp_path, "--covariance", "--shard", f"{k}/3", "-j", "1",
                   "-o", tmp_path / f"p{k}.json").exit_code == 0
        parts.append(tmp_path / f"p{k}.json")
    merged = cli_json("merge", *reversed(parts))
    assert merged["raw"]["covariance"] == expected and merged["statistics"] == one["statistics"]


@pytest.mark.parametrize("edit", [{"shift": -1}, {"shift": 10**6}, {"shift": 3, "levels": 65536},
                                  {"shift": True}])
def test_a_damaged_covariance_shift_is_refused(edit):
    from bnstats.statistics.covariance import Covariance

    state = {"kind": "exact", "levels": 0, "n": 2, "sums": [1], "products": [[1]], "shift": 1, **edit}
    with pytest.raises(ValueError, match="shift"):
        Covariance.from_dict(state)


def test_values_so_small_their_variance_underflows_keep_their_std():
    """Values near 1e-298 have a variance near 1e-596, 0.0 as a float: the std is their exact root, not 0."""
    rs = RunningStats()
    counts = np.zeros((1, 256), np.int64)
    counts[0, [1, 3]] = 1
    rs.update_scaled(counts, 1e-300, 0.0)  # values 1e-300 and 3e-300: std exactly 1e-300
    result = rs.result()
    assert result["raw_var"] == [0.0]
    assert result["raw_std"] == result["std"] == [float(Fraction(1e-300))]


def test_a_hand_edited_state_of_many_wide_groups_is_refused_before_its_histograms_are_built(monkeypatch):
    """64 groups of 1024 empty 16-bit channels: 2 MB of JSON that would build 32 GiB of histograms."""
    groups = [{"slope": 1.5 + g, "inter": 0.0, "levels": 65536, "histogram": [{"start": 0, "counts": []}] * 1024}
              for g in range(64)]
    start = time.perf_counter()
    with pytest.raises(ValueError, match="GiB of histograms"):
        RunningStats.from_dict({"kind": "scaled", "images": 1, "channels": 1024, "groups": groups})
    assert time.perf_counter() - start < 0.5
    from bnstats.statistics import scaled

    monkeypatch.setattr(scaled, "MAX_HISTOGRAM_BYTES", 2 * 4 * 65536 * 8)  # a run: two groups of 4 channels
    assert_a_third_scaling_is_refused(np.ones((4, 65536), np.int64), "GiB of histograms")


def test_an_intercept_of_minus_zero_is_the_same_group_written_the_same_way_in_any_order():
    counts = np.ones((1, 256), np.int64)
    first, second = RunningStats(), RunningStats()
    first.update_scaled(counts, 2.0, -0.0)
    first.update_scaled(counts, 2.0, 0.0)
    second.update_scaled(counts, 2.0, 0.0)
    second.update_scaled(counts, 2.0, -0.0)
    assert json.dumps(first.to_dict()) == json.dumps(second.to_dict())
    assert len(first.state.groups) == 1


def test_a_series_rescaled_slice_by_slice_beside_scaled_ones_is_counted_as_float(tmp_path):
    """MR series rescaled slice by slice are float data; before scaled integers every scaled series was, and a
    run of both counted. Now the exact scaled state becomes float moments beside them (in any order), and
    --covariance too, instead of stopping on "cannot combine scaled integer data with float data"."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    values = []
    for folder, scalings in (("a", [(2.5, -1024.5), (2.5, -1024.5)]), ("b", [(1.5, 0.0), (2.0, 3.0)])):
        (tmp_path / folder).mkdir()
        for i, (slope, inter) in enumerate(scalings):
            ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            ds.RescaleSlope, ds.RescaleIntercept, ds.InstanceNumber = slope, inter, i
            ds.SeriesInstanceUID = f"1.2.3.{1 if folder == 'a' else 2}"
            del ds.ImagePositionPatient
            ds.save_as(tmp_path / folder / f"s{i}.dcm")
            values.append(ds.pixel_array.astype(np.float64).ravel() * slope + inter)
    values = np.concatenate(values)
    for order in ((tmp_path / "a", tmp_path / "b"), (tmp_path / "b", tmp_path / "a")):
        result = cli("compute", *order, "-j", "1", "--covariance")
        assert result.exit_code == 0 and "float data joined signed or scaled integers" in result.stderr
        report = json.loads(result.stdout)
        assert report["state"]["kind"] == "moments" and report["pixels"] == values.size
        np.testing.assert_allclose(report["raw"]["mean"], [values.mean()], rtol=1e-14)
        np.testing.assert_allclose(report["raw"]["var"], [values.var()], rtol=1e-12)
        np.testing.assert_allclose(report["raw"]["covariance"], [[values.var()]], rtol=1e-12)
        assert report["raw"]["min"] == [values.min()] and report["raw"]["max"] == [values.max()]
    parts = [tmp_path / "p0.json", tmp_path / "p1.json"]
    for part, folder in zip(parts, "ab"):
        assert cli("compute", tmp_path / folder, "-j", "1", "-o", part).exit_code == 0
    merged = cli_json("merge", *parts)
    assert merged["state"]["kind"] == "moments"
    np.testing.assert_allclose(merged["raw"]["mean"], [values.mean()], rtol=1e-14)


def test_covariance_combines_own_unit_data_as_the_statistics_do():
    from bnstats.decoding.decode import decode_array
    from bnstats.statistics.covariance import Covariance

    small = np.array([[[-100, 3], [7, 8]]], np.int8)
    wide = np.array([[[-30000, 1], [3, 2]]], np.int16)
    floats = np.array([[[0.5, 1.5], [2.25, -1.0]]], np.float64)
    rows = [r for a in (small, wide, floats) for r in a.reshape(-1, 2).astype(np.float64).tolist()]
    expected = np.cov(np.array(rows).T, ddof=0)
    for order in ((small, wide, floats), (floats, wide, small), (wide, floats, small)):
        parts = []
        for array in order:
            part = Covariance()
            part.add_image(decode_array(array))
            parts.append(part)
        merged = Covariance()
        for part in parts:
            merged.merge(part)
        np.testing.assert_allclose(merged.raw_covariance(), expected, rtol=1e-14)
    exact = Covariance()
    for array in (small, wide):
        exact.add_image(decode_array(array))
    exact_rows = [[Fraction(v) for v in r] for a in (small, wide) for r in a.reshape(-1, 2).tolist()]
    assert exact.raw_covariance() == [[float(v) for v in row] for row in exact_covariance(exact_rows)]
    unsigned = Covariance()
    unsigned.add_image(decode_array(np.zeros((1, 2, 2), np.uint8)))
    with pytest.raises(LayoutError):
        unsigned.merge(parts[0])


@pytest.mark.parametrize("slope, inter, message", [("0", "-1024", "RescaleSlope '0' makes no values"),
                                                   ("1e400", "0", "RescaleSlope '1e400' makes no values"),
                                                   ("2", "nan", "RescaleIntercept 'nan' makes no values"),
                                                   ("1\\2", "0", "is not one number")])
def test_a_dicom_rescale_that_makes_no_values_is_a_skip_entry(tmp_path, slope, inter, message):
    """A slope of 0 made every pixel the intercept (a constant counted as data); an infinite one made every
    pixel infinite (all left out); two slopes a TypeError: each is now a skip entry naming the header."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with warnings.catch_warnings():  # pydicom warns of "nan" as a DS: the damage written on purpose
        warnings.simplefilter("ignore")
        ds.RescaleSlope, ds.RescaleIntercept = slope, inter
    ds.save_as(tmp_path / "bad.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
    ds.save_as(tmp_path / "good.dcm")
    report = cli_json("compute", tmp_path / "bad.dcm", tmp_path / "good.dcm", "-j", "1")  # files: one item each
    assert report["images"] == 1 and len(report["skipped"]) == 1
    assert message in report["skipped"][0]["error"] and "damaged header" in report["skipped"][0]["error"]


def test_the_plot_of_one_huge_scaled_value_is_drawn_without_a_warning(tmp_path):
    """Every voxel 5 · 3e38: the bar's range was [v, v + 1] = [v, v], and matplotlib warned of singular limits."""
    write_volume(tmp_path / "c.nii", np.full((2, 2, 2), 5, np.int16), 3e38, 0.0)
    assert cli("compute", tmp_path / "c.nii", "-j", "1", "-o", tmp_path / "c.json").exit_code == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = cli("plot", tmp_path / "c.json", "-o", tmp_path / "c.png")
    assert result.exit_code == 0 and "Warning" not in result.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_scaled_8_and_16_bit_samples_are_never_copied_to_float():
    from bnstats.inputs.volumes import scaled

    wide = np.array([0, 65535], np.uint16)  # + -1024 does not fit 16 bits signed
    assert scaled(wide, 1.0, -1024.0)[0] is wide and scaled(wide, 1.0, -1024.0)[1] == (1.0, -1024.0)
    half = np.array([0, 3], np.int16)
    assert scaled(half, 1.0, 0.5)[0] is half and scaled(half, 2.0, 0.5)[0] is half
    shifted, scale = scaled(np.array([0, 4095], np.uint16), 1.0, -1024.0)
    assert shifted.dtype == np.int16 and shifted.tolist() == [-1024, 3071] and scale is None
    assert scaled(half, None, None)[0] is half


def test_a_scaled_volume_is_limited_by_its_stored_bytes(tmp_path, monkeypatch):
    """Scaled 16-bit voxels are kept as stored (2 bytes), not as float64 values (8): the image limit counts 2."""
    from bnstats import limits

    write_volume(tmp_path / "v.nii", np.zeros((10, 10, 10), np.int16), 0.5, 1.0)
    monkeypatch.setattr(limits, "_current", limits.Limits(image_bytes=3000))
    assert cli_json("compute", tmp_path / "v.nii", "-j", "1")["pixels"] == 1000
    monkeypatch.setattr(limits, "_current", limits.Limits(image_bytes=1500))
    assert "BNSTATS_MAX_IMAGE_BYTES" in cli("compute", tmp_path / "v.nii", "-j", "1").output
