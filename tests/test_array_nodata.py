"""Nodata that HDF5 datasets and Zarr arrays declare in their attributes (netCDF/CF's ``_FillValue``, else
``missing_value``): values equal to it left out, against numpy on the kept values; --ignore-value
overriding it; declared values that cannot be used; workers, shards + merge and per-row counting alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import cli, cli_json

from bnstats.decoding.nodata import attribute_nodata

h5py = pytest.importorskip("h5py")

FILL = -9999


def science(seed: int = 0, shape=(6, 5, 4)) -> np.ndarray:
    """int16 rows with a block of fill values in every row (and a whole row of them)."""
    data = np.random.default_rng(seed).integers(-300, 300, shape).astype(np.int16)
    data[:, :2, :1] = FILL
    data[3] = FILL
    return data


def write_h5(path, arrays: dict, attrs: dict):
    with h5py.File(path, "w") as f:
        for name, data in arrays.items():
            ds = f.create_dataset(name, data=data, chunks=(2, *data.shape[1:]))
            for key, value in attrs.get(name, {}).items():
                ds.attrs[key] = value
    return path


def assert_kept(report: dict, data: np.ndarray, fill) -> None:
    values = data.astype(np.float64).ravel()
    values = values[values != fill]
    assert report["pixels"] == values.size
    np.testing.assert_allclose(report["raw"]["mean"], [values.mean()], rtol=1e-14)
    np.testing.assert_allclose(report["raw"]["std"], [values.std()], rtol=1e-12)
    assert report["raw"]["min"] == [values.min()] and report["raw"]["max"] == [values.max()]
    if "median" in report["raw"]:
        assert report["raw"]["median"] == [np.median(values)]
    assert report["settings"]["ignore_value"] is None  # the file's value, not a setting: merge compares settings


@pytest.mark.parametrize("attribute", ["_FillValue", "missing_value"])
def test_an_hdf5_fill_value_leaves_out_its_values(tmp_path, attribute):
    data = science()
    path = write_h5(tmp_path / "t.h5", {"temp": data}, {"temp": {attribute: np.int16(FILL)}})
    result = cli("compute", path, "-j", "1")
    assert result.exit_code == 0, result.output
    assert_kept(json.loads(result.stdout), data, FILL)
    assert f"nodata value {FILL} from the {attribute} attribute of" in result.stderr
    assert result.stderr.count("nodata value") == 1  # one note, however many rows and batches


def test_float_data_with_a_fill_value_and_nan_text(tmp_path):
    data = science().astype(np.float32) / 8
    fill = np.float32(FILL / 8)
    nan = data.copy()
    nan[1, 0, 0] = np.nan
    path = write_h5(tmp_path / "f.h5", {"a": data, "b": nan},
                    {"a": {"_FillValue": fill}, "b": {"_FillValue": "NaN"}})
    assert_kept(cli_json("compute", path, "--key", "a", "-j", "1"), data, float(fill))
    report = cli_json("compute", path, "--key", "b", "-j", "1")  # NaN fill: non-finite values are left out anyway
    assert report["pixels"] == np.isfinite(nan).sum()


def test_ignore_value_overrides_the_declared_value(tmp_path):
    data = science()
    path = write_h5(tmp_path / "t.h5", {"temp": data}, {"temp": {"_FillValue": np.int16(FILL)}})
    result = cli("compute", path, "--ignore-value", "0", "-j", "1")
    assert result.exit_code == 0 and "--ignore-value overrides it" in result.stderr
    report = json.loads(result.stdout)
    assert report["raw"]["min"] == [FILL] and report["pixels"] == data.size - (data == 0).sum()


@pytest.mark.parametrize("value", [1e10, 2.5, [1, 2], "no data", np.array([], np.int16)])
def test_a_declared_value_the_data_cannot_hold_is_ignored_with_a_note(tmp_path, value):
    data = science()
    path = write_h5(tmp_path / "t.h5", {"temp": data}, {"temp": {"_FillValue": value}})
    result = cli("compute", path, "-j", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pixels"] == data.size  # every value counted, and said so
    assert "attribute" in result.stderr and "ignored" in result.stderr and "Traceback" not in result.stderr


def test_workers_shards_merge_and_per_row_counting_give_the_same_numbers(tmp_path):
    data = science(1, (40, 6, 5))
    path = write_h5(tmp_path / "t.h5", {"temp": data}, {"temp": {"_FillValue": np.int16(FILL)}})
    one = cli_json("compute", path, "-j", "1")
    two = cli_json("compute", path, "-j", "2")
    assert one == two
    assert_kept(one, data, FILL)
    parts = []
    for k in range(3):
        part = tmp_path / f"p{k}.json"
        assert cli("compute", path, "--shard", f"{k}/3", "-o", part, "-j", "1").exit_code == 0
        parts.append(part)
    merged = cli_json("merge", *parts)
    assert {k: merged[k] for k in ("mean", "std", "pixels", "state")} == {k: one[k] for k in
                                                                          ("mean", "std", "pixels", "state")}
    traced = cli_json("compute", path, "-j", "1", "--trace", tmp_path / "t.csv")  # rows one by one
    assert traced["pixels"] == one["pixels"] and traced["mean"] == one["mean"]


def test_a_zarr_fill_value_attribute_leaves_out_its_values(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = science(2)
    for zarr_format in (2, 3):
        path = tmp_path / f"s{zarr_format}.zarr"
        array = zarr.create_array(str(path), shape=data.shape, chunks=(2, 5, 4), dtype=data.dtype,
                                  zarr_format=zarr_format, attributes={"_FillValue": FILL})
        array[:] = data
        result = cli("compute", path, "-j", "1")
        assert result.exit_code == 0, result.output
        assert_kept(json.loads(result.stdout), data, FILL)
        assert "_FillValue attribute" in result.stderr


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=8),
                 st.lists(st.integers(-5, 5), max_size=3)),
       st.sampled_from(["uint8", "int16", "uint16", "float32", "float64"]))
def test_attribute_nodata_never_raises(value, dtype):
    found = attribute_nodata({"_FillValue": value}, np.dtype(dtype), "x")
    assert found is None or isinstance(found, tuple)
    if found is not None and not isinstance(found[0], str) and np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        assert info.min <= found[0] <= info.max


# -- the hostile review: what a declared value does not cover is said, never silently counted ----------------


def test_pixels_with_the_fill_value_in_some_bands_only_are_said_to_be_counted(tmp_path):
    """CF leaves out each element equal to _FillValue; bnstats leaves out a pixel equal in every band: a pixel
    with the value in one band is counted (the value in the mean), and a note says so."""
    data = np.ones((2, 4, 4, 3), np.int16)
    data[0, 0, 0, 0] = FILL  # one band only: counted
    data[0, 1, 1] = FILL  # every band: left out
    path = write_h5(tmp_path / "m.h5", {"x": data}, {"x": {"_FillValue": np.int16(FILL)}})
    result = cli("compute", path, "-j", "1")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pixels"] == 2 * 16 - 1 and report["raw"]["min"] == [FILL, 1, 1]
    assert "in some bands only are counted" in result.stderr
    whole = write_h5(tmp_path / "w.h5", {"x": np.where(data == FILL, FILL, data)[:, :, :, :1]},
                     {"x": {"_FillValue": np.int16(FILL)}})
    assert "some bands only" not in cli("compute", whole, "-j", "1").stderr  # one band: nothing to say


def test_a_second_cf_value_and_packing_attributes_are_said_not_to_be_applied(tmp_path):
    data = science()
    data[0, 0, 1] = FILL + 1
    path = write_h5(tmp_path / "t.h5", {"a": data, "b": data, "c": data},
                    {"a": {"_FillValue": np.int16(FILL), "missing_value": np.int16(FILL + 1)},
                     "b": {"_FillValue": np.int16(FILL), "missing_value": np.int16(FILL)},
                     "c": {"scale_factor": 0.01, "add_offset": 273.15, "valid_range": np.array([-300, 300])}})
    result = cli("compute", path, "--key", "a", "-j", "1")
    assert result.exit_code == 0, result.output
    assert_kept(json.loads(result.stdout), data, FILL)  # -9998 counted, and said so
    assert f"missing_value attribute of {path}:/a ({FILL + 1}) not used" in result.stderr
    assert "not used" not in cli("compute", path, "--key", "b", "-j", "1").stderr  # the same value twice
    packed = cli("compute", path, "--key", "c", "-j", "1")
    assert json.loads(packed.stdout)["pixels"] == data.size
    assert "scale_factor and add_offset attributes" in packed.stderr and "packed units" in packed.stderr
    assert "valid_range attribute" in packed.stderr and "outside the valid range are counted" in packed.stderr


def test_a_fill_value_bool_data_cannot_hold_is_ignored_with_a_note():
    assert isinstance(attribute_nodata({"_FillValue": 5}, np.dtype(bool), "x")[0], str)
    assert attribute_nodata({"_FillValue": 1}, np.dtype(bool), "x")[0] == 1


def test_an_unusable_fill_value_leaves_the_missing_value_in_use():
    found = attribute_nodata({"_FillValue": "no data", "missing_value": np.int16(FILL)}, np.dtype(np.int16), "x")
    assert found[0] == FILL and "_FillValue attribute of x ('no data')" in found[2]


def test_a_declared_value_in_text_with_control_whitespace_is_read_not_a_crash():
    """str.strip() removes "\\x1f", float() does not: the value is read from the stripped text (it raised)."""
    assert attribute_nodata({"_FillValue": "0\x1f"}, np.dtype("int16"), "x")[0] == 0
    assert attribute_nodata({"_FillValue": b" -9999\x1c"}, np.dtype("int16"), "x")[0] == -9999
