"""Exact percentiles and median (``--percentiles``) and the channel covariance (``--covariance``).

Percentiles follow numpy's default ``method="linear"``, computed exactly from
the histogram; the covariance is exact for integer data (Python-int
cross-moments) and Chan-merged float64 for float data.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from bnstats.running.count import CountSpec
from bnstats.statistics.covariance import Covariance
from bnstats.decoding.image import DecodedImage
from bnstats.running.engine import count_selection
from bnstats.inputs.select import select
from bnstats.running.job import ComputeJob
from bnstats import registry
from bnstats.statistics.percentiles import normalize_percentile
from bnstats.statistics.running import RunningStats
from helpers import cli, cli_json, stderr_lines

PS = ["0", "0.5", "1", "25", "33.3", "50", "99", "99.5", "100"]
SCALE = {np.uint8: 255, np.uint16: 65535, np.int16: 1, np.int8: 1}


def assert_one_line_error(result, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def integer_images(dtype, count: int, size=(3, 3), seed: int = 3) -> np.ndarray:
    """``(count, H, W, 3)`` random pixels of ``dtype``; channel 2 holds one value only."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    x = rng.integers(info.min, info.max, (count, *size, 3), endpoint=True, dtype=np.int64)
    x[..., 1] = np.clip(x[..., 1] // 7 + 20, info.min, info.max)  # many ties
    x[..., 2] = 7
    return x.astype(dtype)


def exact_percentile(values, p: str) -> Fraction:
    """numpy's linear rule in exact arithmetic: position (n-1)·p/100 in the sorted values."""
    ordered = sorted(int(v) for v in values)
    h = (len(ordered) - 1) * Fraction(p) / 100
    k = math.floor(h)
    hi = ordered[min(k + 1, len(ordered) - 1)]
    return ordered[k] + (h - k) * (hi - ordered[k])


def close_to_numpy(got: float, want: float, magnitude: float) -> bool:
    """Equal, or within the few roundings of numpy's own float steps (p/100, (n-1)·q, the lerp),
    which scale with the values interpolated between (``magnitude``)."""
    return got == want or abs(got - want) <= 8 * np.finfo(float).eps * magnitude


def compute_npy(tmp_path: Path, x: np.ndarray, *args) -> dict:
    path = tmp_path / "x.npy"
    np.save(path, x)
    return cli_json("compute", path, "-q", *args)


# -- percentiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
@pytest.mark.parametrize("count", [5, 6, 1])  # 45 (odd), 54 (even) and 9 pixels
def test_percentiles_equal_numpy_on_a_full_load(tmp_path, dtype, count):
    x = integer_images(dtype, count)
    report = compute_npy(tmp_path, x, "--percentiles", ",".join(PS))
    values = x.reshape(-1, 3).astype(np.int64)  # numpy's int16 lerp overflows: give it int64
    assert list(report["percentiles"]) == PS and list(report["raw"]["percentiles"]) == PS
    scale = SCALE[dtype]
    for c in range(3):
        column = values[:, c]
        assert report["raw"]["median"][c] == np.median(column)
        assert report["median"][c] == float(Fraction(np.median(column)) / scale)
        magnitude = np.abs(column).max() / scale
        assert close_to_numpy(report["median"][c], np.median(column / scale), magnitude)
        for p in PS:
            raw, unit = report["raw"]["percentiles"][p][c], report["percentiles"][p][c]
            exact = exact_percentile(column, p)
            assert raw == float(exact) and unit == float(exact / scale), (p, c)  # rounded once
            assert close_to_numpy(raw, np.percentile(column, float(p)), magnitude * scale), (p, c, raw)
            assert close_to_numpy(unit, np.percentile(column / scale, float(p)), magnitude), (p, c, unit)
    assert report["raw"]["percentiles"]["0"] == report["raw"]["min"]
    assert report["raw"]["percentiles"]["100"] == report["raw"]["max"]
    assert report["raw"]["percentiles"]["50"] == report["raw"]["median"]
    assert report["raw"]["median"][2] == 7.0  # the channel with one value


def test_percentiles_of_a_single_pixel(tmp_path):
    report = compute_npy(tmp_path, np.array([[[[3, 200, 9]]]], np.uint8), "--percentiles", "0,37.5,100")
    assert report["raw"]["percentiles"] == {p: [3.0, 200.0, 9.0] for p in ("0", "37.5", "100")}
    assert report["raw"]["median"] == [3.0, 200.0, 9.0]


def test_median_is_always_reported_for_integer_data(sample_data, tmp_path):
    report = cli_json("compute", sample_data, "-q", "--group-by", "class")
    assert len(report["median"]) == 3 and len(report["raw"]["median"]) == 3
    assert "percentiles" not in report and "percentiles" not in report["raw"]
    assert all("median" in group and "median" in group["raw"] for group in report["groups"].values())
    x = integer_images(np.uint16, 4)
    sixteen = compute_npy(tmp_path, x)
    assert sixteen["raw"]["median"] == [float(np.median(x[..., c])) for c in range(3)]


def test_median_is_absent_for_float_data(tmp_path):
    x = np.random.default_rng(1).normal(0.3, 2, (4, 3, 3, 3)).astype(np.float32)
    report = compute_npy(tmp_path, x)
    assert "median" not in report and "median" not in report["raw"]


def test_percentiles_of_float_data_are_a_one_line_error(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(1).normal(0.3, 2, (4, 3, 3, 3)).astype(np.float32))
    result = cli("compute", path, "-q", "--percentiles", "50")
    assert_one_line_error(result, 1, "percentiles are exact only for integer")
    assert result.stdout == ""


def test_percentile_keys_are_normalized(tmp_path):
    report = compute_npy(tmp_path, integer_images(np.uint8, 2), "--percentiles", "0.50, 1.0,050,99.5,100.000,.25")
    assert list(report["percentiles"]) == ["0.5", "1", "50", "99.5", "100", "0.25"]
    assert normalize_percentile("-0") == "0" and normalize_percentile("+7.10") == "7.1"


@pytest.mark.parametrize("bad", ["101", "-1", "100.0001", "abc", "", "1,,2", "nan", "inf", "1e2", "5,5.0", "0x10"])
def test_bad_percentiles_are_one_line_usage_errors(sample_data, bad):
    result = cli("compute", sample_data, "-q", "--percentiles", bad)
    assert_one_line_error(result, 2, "--percentiles")
    assert result.stdout == ""


def test_bad_percentiles_from_python_are_value_errors():
    with pytest.raises(ValueError, match="outside"):
        CountSpec(percentiles=("120",))
    with pytest.raises(ValueError, match="twice"):
        CountSpec(percentiles=("50", "50.0"))
    assert CountSpec(percentiles=(1, "99.50")).percentiles == ("1", "99.5")


def test_percentiles_survive_shards_and_merge_in_any_order(sample_data, tmp_path):
    args = ("--percentiles", "1,50,99.5")
    full = cli("compute", sample_data, "-q", *args, expect=0).stdout_bytes
    parts = []
    for k in range(3):
        part = tmp_path / f"part{k}.json"
        cli("compute", sample_data, "-q", "--shard", f"{k}/3", *args, "-o", part, expect=0)
        parts.append(part)
    for order in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):
        assert cli("merge", *[parts[k] for k in order], expect=0).stdout_bytes == full
    assert list(json.loads(full)["percentiles"]) == ["1", "50", "99.5"]


def test_merge_refuses_different_percentile_lists(sample_data, tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    cli("compute", sample_data, "-q", "--shard", "0/2", "--percentiles", "1,99", "-o", a, expect=0)
    cli("compute", sample_data, "-q", "--shard", "1/2", "--percentiles", "1", "-o", b, expect=0)
    cli("compute", sample_data, "-q", "--shard", "1/2", "-o", c, expect=0)
    assert_one_line_error(cli("merge", a, b), 1, "different --percentiles", "1, 99")
    assert_one_line_error(cli("merge", a, c), 1, "different --percentiles", "none")


def test_merge_refuses_malformed_percentiles(sample_data, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    cli("compute", sample_data, "-q", "--shard", "0/2", "--percentiles", "1", "-o", a, expect=0)
    cli("compute", sample_data, "-q", "--shard", "1/2", "--percentiles", "1", "-o", b, expect=0)
    data = json.loads(b.read_text())
    data["percentiles"] = {"1.0": data["percentiles"]["1"]}
    b.write_text(json.dumps(data))
    assert_one_line_error(cli("merge", a, b), 1, str(b), "percentiles")


def test_groups_get_median_and_percentiles(sample_data):
    report = cli_json("compute", sample_data, "-q", "--group-by", "class", "--percentiles", "5,95")
    for name, group in report["groups"].items():
        alone = cli_json("compute", sample_data / name, "-q", "--percentiles", "5,95")
        for key in ("median", "percentiles"):
            assert group[key] == alone[key] and group["raw"][key] == alone["raw"][key], name


def test_percentiles_are_part_of_the_checkpoint_settings(sample_data, tmp_path):
    assert CountSpec(percentiles=("1",)).settings() != CountSpec(percentiles=("1", "99")).settings()
    assert "percentiles" not in CountSpec().settings()  # default runs fingerprint as before
    selection = select([str(sample_data)])
    ck = tmp_path / "ck.json"
    spec = CountSpec(percentiles=("1",))
    saver = ComputeJob(selection, spec, checkpoint=str(ck)).saver
    saver.save(count_selection(selection.keys[:5], source=selection.source, spec=spec), 5)
    before = ck.read_bytes()
    result = cli("compute", sample_data, "-q", "-j", "1", "--percentiles", "1,99", "--checkpoint", ck)
    assert_one_line_error(result, 1, str(ck), "percentiles")
    assert ck.read_bytes() == before
    resumed = cli("compute", sample_data, "-q", "-j", "1", "--percentiles", "1", "--checkpoint", ck, expect=0)
    assert resumed.stdout == cli("compute", sample_data, "-q", "--percentiles", "1", expect=0).stdout
    assert not ck.exists()


# -- covariance -----------------------------------------------------------------------------------


def test_covariance_is_a_registered_statistic():
    assert registry.get("statistics", "covariance") is Covariance


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_covariance_equals_a_numpy_full_load(tmp_path, dtype):
    if dtype == np.float32:
        rng = np.random.default_rng(2)
        x = rng.normal(0.4, 0.2, (7, 5, 4, 3)).astype(np.float32)
        x[..., 1] += 0.5 * x[..., 0]  # correlated channels
    else:
        x = integer_images(dtype, 7, (5, 4))
        x[..., 2] = x[..., 0] // 3  # correlated channels, not constant
    report = compute_npy(tmp_path, x, "--covariance")
    scale = SCALE.get(dtype, 1)
    values = x.reshape(-1, 3).astype(np.float64)
    want = np.cov(values.T, bias=True)
    for key, divisor in (("raw", 1), ("unit", scale * scale)):
        got = np.array(report["raw"]["covariance"] if key == "raw" else report["covariance"])
        np.testing.assert_allclose(got, want / divisor, rtol=1e-12, atol=1e-12 * np.abs(want).max() / divisor)
    cov = np.array(report["covariance"])
    assert (cov == cov.T).all()
    if dtype != np.float32:  # exact: the diagonal is var, bit for bit
        assert np.diag(cov).tolist() == report["var"]
        assert np.diag(np.array(report["raw"]["covariance"])).tolist() == report["raw"]["var"]
    state = report["statistics"]["covariance"]
    assert state["n"] == len(values)
    if dtype != np.float32:
        assert state["sums"] == values.sum(axis=0).astype(np.int64).tolist()
        assert state["products"] == (values.T.astype(np.int64) @ values.astype(np.int64)).tolist()


def test_eigen_decomposition_reconstructs_the_covariance(sample_data):
    report = cli_json("compute", sample_data, "-q", "--covariance")
    cov, values = np.array(report["covariance"]), np.array(report["eigenvalues"])
    vectors = np.array(report["eigenvectors"])  # columns are the eigenvectors
    assert (np.diff(values) <= 0).all()  # descending
    np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, cov, atol=1e-15)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-14)
    for j in range(3):
        np.testing.assert_allclose(cov @ vectors[:, j], values[j] * vectors[:, j], atol=1e-15)
        assert vectors[np.argmax(np.abs(vectors[:, j])), j] > 0  # the sign rule


@pytest.mark.slow
def test_covariance_is_bit_identical_across_workers_shards_and_merge_order(sample_data, tmp_path):
    args = ("--covariance", "--percentiles", "1,99")
    one = cli("compute", sample_data, "-q", "-j", "1", *args, expect=0).stdout_bytes
    assert cli("compute", sample_data, "-q", "-j", "2", *args, expect=0).stdout_bytes == one
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"part{k}.json")
        cli("compute", sample_data, "-q", "--shard", f"{k}/3", *args, "-o", parts[-1], expect=0)
    for order in ((0, 1, 2), (2, 1, 0), (1, 0, 2)):
        assert cli("merge", *[parts[k] for k in order], expect=0).stdout_bytes == one
    report = json.loads(one)
    assert all(isinstance(v, int) for row in report["statistics"]["covariance"]["products"] for v in row)


def test_float_covariance_agrees_across_workers(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(4).normal(100, 0.5, (40, 4, 4, 2)))
    one = cli_json("compute", path, "-q", "-j", "1", "--covariance")
    two = cli_json("compute", path, "-q", "-j", "2", "--covariance")
    np.testing.assert_allclose(one["covariance"], two["covariance"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(one["covariance"], np.cov(np.load(path).reshape(-1, 2).T, bias=True), rtol=1e-12)


def test_covariance_merge_and_checkpoint_carry_the_exact_state(sample_data, tmp_path):
    selection = select([str(sample_data)])
    spec = CountSpec(statistics=("covariance",), percentiles=("50",))
    whole = ComputeJob(selection, spec, workers=1).run()
    ck = tmp_path / "ck.json"
    saver = ComputeJob(selection, spec, checkpoint=str(ck)).saver
    saver.save(count_selection(selection.keys[:7], source=selection.source, spec=spec), 7)
    resumed = ComputeJob(selection, spec, workers=2, checkpoint=str(ck))
    assert resumed.start == 7 and resumed.tally.extra["covariance"].n > 0
    report = resumed.run()
    for key in ("covariance", "eigenvalues", "eigenvectors", "median", "percentiles", "statistics"):
        assert report[key] == whole[key], key
    assert report["raw"] == whole["raw"]


def test_merge_refuses_with_and_without_covariance(sample_data, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    cli("compute", sample_data, "-q", "--shard", "0/2", "--covariance", "-o", a, expect=0)
    cli("compute", sample_data, "-q", "--shard", "1/2", "-o", b, expect=0)
    assert_one_line_error(cli("merge", a, b), 1, "different statistics")


@pytest.fixture(scope="module")
def covariance_halves(sample_data, tmp_path_factory):
    """The two halves of sample_data with --covariance, as JSON text (computed once for the damage cases)."""
    folder = tmp_path_factory.mktemp("halves")
    halves = []
    for k in range(2):
        out = folder / f"{k}.json"
        cli("compute", sample_data, "-q", "--shard", f"{k}/2", "--covariance", "-o", out, expect=0)
        halves.append(out.read_text())
    return halves


@pytest.mark.parametrize("damage", [
    lambda s: s.update(products=[[1, 2], [3, 4]]),
    lambda s: s.update(sums=[1.5, 2, 3]),
    lambda s: s.update(kind="fancy"),
    lambda s: s.update(n=-1),
    lambda s: s.update(levels=100),
    lambda s: s.pop("products"),
])
def test_merge_refuses_a_malformed_covariance_state(covariance_halves, tmp_path, damage):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(covariance_halves[0])
    data = json.loads(covariance_halves[1])
    damage(data["statistics"]["covariance"])
    b.write_text(json.dumps(data))
    assert_one_line_error(cli("merge", a, b), 1, str(b), "statistics")


def test_covariance_flag_takes_no_value(sample_data):
    assert_one_line_error(cli("compute", sample_data, "-q", "--covariance=yes"), 2, "--covariance")


def test_covariance_refuses_mixed_layouts_and_handles_empty_states():
    empty = Covariance()
    assert empty.report() == {"covariance": [], "eigenvalues": [], "eigenvectors": [], "raw": {"covariance": []}}
    eight, sixteen = Covariance(), Covariance()
    eight.add_image(DecodedImage("RGB", values=np.ones((4, 3), np.uint8)))
    sixteen.add_image(DecodedImage("RGB", values=np.ones((4, 3), np.uint16)))
    with pytest.raises(ValueError, match="8-bit.*16-bit|16-bit.*8-bit"):
        eight.merge(sixteen)
    merged = Covariance.combine([empty, eight, Covariance()])
    assert merged.to_dict() == eight.to_dict() and merged.report()["covariance"] == [[0.0] * 3] * 3
    assert Covariance.from_dict(json.loads(json.dumps(eight.to_dict()))).to_dict() == eight.to_dict()


@pytest.mark.parametrize("memory_block", [None, 10**9])
def test_exact_covariance_is_exact_beyond_2_53(monkeypatch, memory_block):
    """3M rows of 16-bit values: Σx² passes 2**53, yet blocks of rows keep every float64 partial sum exact."""
    from bnstats.statistics import covariance
    if memory_block:  # only the 2**53 rule splits the rows
        monkeypatch.setattr(covariance, "_BLOCK_ROWS", memory_block)
    x = np.full((3_000_000, 2), 65535, np.uint16)
    x[::3, 1] = 65533
    x[::7, 0] = 3
    x[1::5, 0] = 65534  # without the blocks, one float64 product of these is off by thousands
    cov = Covariance()
    cov.add_image(DecodedImage("LA", values=x))
    wide = x.astype(np.int64)
    assert cov.products.tolist() == (wide.T @ wide).tolist()  # int64 holds these sums exactly
    assert (wide.T @ wide).max() > 2**53
    rs = RunningStats()
    rs.update(x.reshape(-1, 1, 2))
    assert [cov.report()["covariance"][i][i] for i in range(2)] == rs.result()["var"]
