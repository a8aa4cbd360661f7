"""NIfTI volumes: one volume one item, voxels counted exactly in their own units (nibabel's files and ours).

Checked against numpy on ``np.asanyarray(img.dataobj)`` in float64 — on the
example files nibabel ships (a big-endian 3-D anatomy, a 4-D two-channel
volume, a scaled functional run) and on volumes written here with odd
headers — and for the same bytes across workers, shards + merge and resume.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from helpers import assert_same_for_workers_and_shards, cli, cli_json, in_a_forked_child, one_line_error

nibabel = pytest.importorskip("nibabel")
from nibabel.testing import data_path  # noqa: E402


def voxels(path) -> np.ndarray:
    """``(voxels, channels)`` float64 of a NIfTI file, the last axis of a 4-D one as channels."""
    data = np.asanyarray(nibabel.load(str(path)).dataobj).astype(np.float64)
    return data.reshape(-1, data.shape[3] if data.ndim == 4 else 1, order="F")


def assert_report_is_numpy(report: dict, values: np.ndarray, exact: bool = True) -> None:
    assert report["pixels"] == len(values)
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(report["raw"]["mean"], values.mean(axis=0), rtol=1e-14, atol=0)
    np.testing.assert_allclose(report["raw"]["std"], values.std(axis=0), rtol=1e-12 if not exact else 1e-14, atol=0)
    np.testing.assert_allclose(report["raw"]["min"], values.min(axis=0), **tol)
    np.testing.assert_allclose(report["raw"]["max"], values.max(axis=0), **tol)


@pytest.mark.parametrize("name, channels", [("anatomical.nii", ["L"]), ("example4d.nii.gz", ["C0", "C1"]),
                                            ("example_nifti2.nii.gz", ["C0", "C1"]), ("standard.nii.gz", ["L"])])
def test_nibabels_example_volumes_equal_numpy(name, channels):
    path = os.path.join(data_path, name)
    report = cli_json("compute", path, "-j", "1")
    assert report["channels"] == channels and report["images"] == 1
    assert_report_is_numpy(report, voxels(path))
    if report["max_value"] is not None and report["max_value"] != 1:  # integer data: an exact median too
        np.testing.assert_array_equal(report["raw"]["median"], np.median(voxels(path), axis=0))


@pytest.mark.slow
def test_a_scaled_volume_counts_its_stored_integers_exactly_in_the_scaled_units():
    path = os.path.join(data_path, "functional.nii")  # int16 stored, scl_slope 0.0754, scl_inter 3100.76
    report = cli_json("compute", path, "-j", "1")
    assert report["max_value"] == 1 and len(report["channels"]) == 20  # 4-D: the last axis is channels
    assert report["state"]["kind"] == "scaled"
    assert_report_is_numpy(report, voxels(path), exact=False)
    np.testing.assert_allclose(report["raw"]["median"], np.median(voxels(path), axis=0), rtol=1e-14)


def _write(path, data, **header):
    image = nibabel.Nifti1Image(data, np.eye(4))
    if "slope" in header:
        image.header.set_slope_inter(header["slope"], header["inter"])
    nibabel.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def volume_folder(tmp_path_factory):
    """Six volumes of odd headers in two class folders: big-endian uint16, int16, .nii and .nii.gz."""
    root = tmp_path_factory.mktemp("volumes") / "data"
    rng = np.random.default_rng(7)
    for i in range(6):
        folder = root / ("ct" if i % 2 else "mr")
        folder.mkdir(parents=True, exist_ok=True)
        shape = (5 + i, 4, 3 + i % 3)
        data = rng.integers(-1024, 3000, shape).astype(">i2" if i % 3 == 0 else "<i2")
        _write(folder / f"case_{i:02d}.nii{'.gz' if i % 2 else ''}", data)
    return root


def test_a_folder_of_volumes_equals_numpy_and_groups_by_class(volume_folder):
    paths = sorted(str(p) for p in volume_folder.rglob("*.nii*"))
    report = cli_json("compute", volume_folder, "-j", "1", "--group-by", "class")
    assert report["images"] == 6 and set(report["groups"]) == {"ct", "mr"}
    assert_report_is_numpy(report, np.concatenate([voxels(p) for p in paths]))


def test_workers_and_shards_give_the_same_bytes(volume_folder, tmp_path):
    assert_same_for_workers_and_shards(volume_folder, tmp_path, shards=3)


def test_a_damaged_volume_is_a_skip_entry_and_the_others_count(volume_folder, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    _write(data / "good.nii", np.arange(60, dtype=np.int16).reshape(5, 4, 3))
    (data / "bad.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    raw = (data / "good.nii").read_bytes()
    (data / "cut.nii").write_bytes(raw[: len(raw) - 50])  # the header promises voxels the file does not hold
    report = cli_json("compute", data, "-j", "1")
    assert report["images"] == 1 and report["pixels"] == 60
    assert sorted(os.path.basename(s["path"]) for s in report["skipped"]) == ["bad.nii.gz", "cut.nii"]


def test_a_header_claiming_a_huge_volume_is_refused_before_reading(tmp_path):
    path = _write(tmp_path / "huge.nii", np.zeros((2, 2, 2), np.uint8))
    image = nibabel.load(str(path))
    header = image.header.copy()
    header.set_data_shape((30000, 30000, 30000))
    raw = header.binaryblock + b"\0" * (352 - len(header.binaryblock)) + b"\0" * 8
    path.write_bytes(raw)
    result = cli("compute", path, "-j", "1", "--strict")
    assert "over the limit" in one_line_error(result, 1) and "27,000,000,000,000" in result.stderr


def test_resize_and_crop_are_refused_for_volumes_in_one_line(volume_folder):
    for option in (["--resize", "16"], ["--center-crop", "8"]):
        line = one_line_error(cli("compute", volume_folder, *option), 2)
        assert "volumes" in line


def test_without_nibabel_a_nifti_input_is_one_line_naming_the_extra(volume_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel raises ImportError
    line = one_line_error(cli("compute", volume_folder), 1)
    assert "bnstats[medical]" in line


def test_ct_stored_unsigned_with_a_whole_intercept_is_counted_exactly_in_hounsfield_units(tmp_path):
    """``scl_slope`` 1 and ``scl_inter`` -1024 (CT stored as uint16): whole numbers, counted exactly (median
    and percentiles) as int16; another slope makes scaled integers, exact too (tests/test_scaled.py)."""
    stored = np.random.default_rng(3).integers(0, 3000, (6, 5, 4), dtype=np.uint16)
    for slope, inter, exact in ((1, -1024, True), (0.5, 10, False)):
        image = nibabel.Nifti1Image(stored, np.eye(4))
        image.header.set_slope_inter(slope, inter)
        path = tmp_path / f"ct_{slope}.nii"
        nibabel.save(image, path)
        expected = np.asanyarray(nibabel.load(path).dataobj).astype(np.float64).ravel()
        report = cli_json("compute", path, "-j", "1")
        assert report["raw"]["mean"] == pytest.approx([expected.mean()], rel=1e-12)
        assert report["raw"]["min"] == [expected.min()] and report["raw"]["max"] == [expected.max()]
        assert report["raw"]["median"] == [float(np.median(expected))] and report["max_value"] == 1
        assert report["state"]["kind"] == ("histogram" if exact else "scaled")


def test_a_time_series_counts_each_volume_as_an_item_with_fourth_axis_items(tmp_path):
    """fMRI's (X, Y, Z, T): by default T is channels (multi-modal MRI); --fourth-axis items counts each 3-D
    volume as an item FILE:T, one channel, pooled exactly, and pairs a 3-D mask with each."""
    series = np.random.default_rng(4).integers(0, 4000, (4, 5, 3, 6), dtype=np.int16)
    (tmp_path / "bold").mkdir()
    (tmp_path / "mask").mkdir()
    nibabel.save(nibabel.Nifti1Image(series, np.eye(4)), tmp_path / "bold" / "run.nii.gz")
    brain = (np.arange(60).reshape(4, 5, 3) % 3 == 0).astype(np.uint8)
    nibabel.save(nibabel.Nifti1Image(brain, np.eye(4)), tmp_path / "mask" / "run.nii.gz")
    channels = cli_json("compute", tmp_path / "bold", "-j", "1")
    assert channels["channels"] == [f"C{t}" for t in range(6)] and channels["images"] == 1
    items = cli_json("compute", tmp_path / "bold", "--fourth-axis", "items", "-j", "1", "--mask", tmp_path / "mask")
    voxels = series.astype(np.float64).ravel()
    assert items["channels"] == ["L"] and items["images"] == 6 and items["pixels"] == voxels.size
    assert items["raw"]["mean"] == pytest.approx([voxels.mean()], rel=1e-12)
    assert items["raw"]["median"] == [float(np.median(voxels))]
    inside = series[brain.astype(bool)].astype(np.float64).ravel()  # the 3-D mask on every volume
    assert items["foreground"]["pixels"] == inside.size
    assert items["foreground"]["raw"]["mean"] == pytest.approx([inside.mean()], rel=1e-12)
    assert cli("compute", tmp_path / "bold", "--fourth-axis", "items", "-j", "2", "--mask", tmp_path / "mask",
               expect=0).stdout == cli("compute", tmp_path / "bold", "--fourth-axis", "items", "-j", "1", "--mask",
                                       tmp_path / "mask", expect=0).stdout
    from PIL import Image

    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "x.png")  # no 4-D NIfTI here: refused, not ignored
    assert "--fourth-axis" in one_line_error(cli("compute", tmp_path / "x.png", "--fourth-axis", "items"), 2)


def test_fourth_axis_items_counts_every_volume_of_a_file_alike(tmp_path):
    """uint16 stored with scl_inter -1024: a volume whose values fit int16 and one whose do not were counted as
    int16 and as float, which cannot mix: every volume of a file is now counted alike (by its storage)."""
    stored = np.full((3, 4, 2, 2), 100, np.uint16)
    stored[0, 0, 0, 1] = 60000
    image = nibabel.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(1, -1024)
    nibabel.save(image, tmp_path / "ct.nii.gz")
    report = cli_json("compute", tmp_path / "ct.nii.gz", "--fourth-axis", "items", "-j", "1")
    expected = stored.astype(np.float64) - 1024
    assert report["images"] == 2 and report["raw"]["mean"] == pytest.approx([expected.mean()], rel=1e-12)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    nibabel.save(nibabel.Nifti1Image(np.zeros((2, 2, 2, 3), np.int16), np.eye(4)), mixed / "a.nii.gz")
    nibabel.save(nibabel.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), mixed / "b.nii.gz")
    assert "--fourth-axis items" in one_line_error(cli("compute", mixed, "-j", "1", "-q"), 1)


def rgb_volume(shape, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI RGB24 volume's structured voxels (datatype 128, as colour FA maps and histology store them)
    and the same values as ``(..., 3)`` uint8."""
    planes = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    rgb = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for k, name in enumerate("RGB"):
        rgb[name] = planes[..., k]
    return rgb, planes


def test_an_rgb24_volume_counts_its_colours_as_three_bands(tmp_path):
    rgb, planes = rgb_volume((5, 4, 3))
    nibabel.save(nibabel.Nifti1Image(rgb, np.eye(4)), tmp_path / "fa.nii.gz")
    report = cli_json("compute", tmp_path / "fa.nii.gz", "-q")
    assert report["channels"] == ["R", "G", "B"]
    assert_report_is_numpy(report, planes.reshape(-1, 3).astype(np.float64))
    assert report["raw"]["median"] == np.median(planes.reshape(-1, 3), axis=0).tolist()


def test_a_complex_volume_is_a_skipped_entry_never_its_real_part(tmp_path):
    values = (np.random.default_rng(1).random((4, 4, 3)) + 1j).astype(np.complex64)
    nibabel.save(nibabel.Nifti1Image(values, np.eye(4)), tmp_path / "phase.nii")
    error = one_line_error(cli("compute", tmp_path / "phase.nii", "-q", "--strict"), 1)
    assert "complex64" in error and "phase.nii" in error


@pytest.mark.parametrize("values, exact", [
    (np.arange(-1024, 3072, 4, dtype=np.float32), True),  # CT in HU, as the Decathlon stores it: float32
    (np.arange(-1024, 3072, 4, dtype=np.float32) + 0.5, False),  # fractions: float data
    (np.arange(0, 40000, 40, dtype=np.float32), False),  # whole, past int16
    (np.r_[np.arange(10, dtype=np.float64), np.nan], False),  # NaN: float data, NaN left out
], ids=["whole-hu", "fractions", "past-int16", "nan"])
def test_a_float_volume_of_whole_16_bit_numbers_is_counted_exactly(tmp_path, values, exact):
    """MSD/nnU-Net volumes saved as float32 hold whole numbers (HU, MR intensities): they were float moments,
    so no median or percentile, and `export --format nnunet` refused every such dataset. Whole 16-bit
    numbers are counted as the int16 volume of the same values is, to the byte; any other float data stays
    float."""
    volume = values.reshape(-1, 1, 1)
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), tmp_path / "f.nii.gz")
    percentiles = ["--percentiles", "0.5,99.5"] if exact else []  # float data refuses them
    report = cli_json("compute", tmp_path / "f.nii.gz", "--mode", "native", *percentiles, "-j", "1")
    finite = values[np.isfinite(values)].astype(np.float64)
    assert report["raw"]["mean"] == pytest.approx([finite.mean()], rel=1e-12)
    assert ("median" in report["raw"]) is exact
    if exact:
        nibabel.save(nibabel.Nifti1Image(volume.astype(np.int16), np.eye(4)), tmp_path / "i.nii.gz")
        as_int16 = cli_json("compute", tmp_path / "i.nii.gz", "--mode", "native", "--percentiles", "0.5,99.5",
                            "-j", "1")
        assert report["raw"] == as_int16["raw"] and report["state"] == as_int16["state"]
        assert report["raw"]["percentiles"]["99.5"] == [np.percentile(finite, 99.5)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_worker_opens_a_4d_file_anew_never_the_parents_open_one(tmp_path):
    """The volumes of a 4-D file are read through an image kept open per thread; a worker forked after an
    in-process read inherited it, and parent and workers moved one shared file offset: `-j 2` after a `-j 1`
    in the same process counted wrong voxels (mean 2013.5 for 2042.2), exit 0."""
    from bnstats.inputs import nifti

    series = np.random.default_rng(4).integers(0, 4000, (4, 5, 3, 6), dtype=np.int16)
    nibabel.save(nibabel.Nifti1Image(series, np.eye(4)), tmp_path / "run.nii.gz")
    path = str(tmp_path / "run.nii.gz")
    first = nifti._read_held(path, 0)
    inherited = nifti._held.file[1]
    def opens_its_own():  # the child reads volume 4 through an image of its own
        image = nifti._read_held(path, 4)
        return nifti._held.file[1] is not inherited and np.array_equal(image.pixels.reshape(4, 5, 3, order="F"),
                                                                       series[..., 4])

    assert in_a_forked_child(opens_its_own)
    assert np.array_equal(first.pixels.reshape(4, 5, 3, order="F"), series[..., 0])
    again = nifti._read_held(path, 1)  # the parent's own image, its offset untouched
    assert nifti._held.file[1] is inherited
    assert np.array_equal(again.pixels.reshape(4, 5, 3, order="F"), series[..., 1])
