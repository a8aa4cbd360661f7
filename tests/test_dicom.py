"""DICOM files: one file one item, values in the modality's units (CT in HU), checked against pydicom + numpy.

On the files pydicom ships (a CT slice with RescaleIntercept -1024, an MR
slice uncompressed and RLE-compressed, a multi-frame 32-bit RT dose), on
files rewritten here with odd rescales, and for the same bytes across
workers, shards + merge.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

from helpers import assert_same_for_workers_and_shards, cli, cli_json, one_line_error

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


def shipped(name: str) -> str:
    path = get_testdata_file(name, download=False)  # files pydicom ships: never a download
    if path is None:
        pytest.skip(f"pydicom does not ship {name} here")
    return path


def hu(path) -> np.ndarray:
    """``(pixels, samples)`` float64 of a DICOM file: stored values × RescaleSlope + RescaleIntercept (an RT
    Dose's × DoseGridScaling: its doses)."""
    ds = pydicom.dcmread(str(path))
    values = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0)
    if "RescaleSlope" not in ds and ds.get("DoseGridScaling") is not None:
        values = values * float(ds.DoseGridScaling)
    return values.reshape(-1, int(ds.get("SamplesPerPixel", 1)))


def assert_numpy(report: dict, values: np.ndarray) -> None:
    assert report["pixels"] == len(values)
    np.testing.assert_allclose(report["raw"]["mean"], values.mean(axis=0), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(report["raw"]["std"], values.std(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(report["raw"]["min"], values.min(axis=0))
    np.testing.assert_array_equal(report["raw"]["max"], values.max(axis=0))


def test_a_ct_slice_is_counted_exactly_in_hounsfield_units():
    path = shipped("CT_small.dcm")  # int16 stored, RescaleIntercept -1024
    report = cli_json("compute", path, "-j", "1")
    assert report["channels"] == ["L"] and report["state"]["kind"] == "histogram"  # whole HU values: exact
    assert_numpy(report, hu(path))
    np.testing.assert_array_equal(report["raw"]["median"], np.median(hu(path), axis=0))


def test_rle_and_uncompressed_copies_of_one_slice_give_the_same_numbers():
    plain, rle = shipped("MR_small.dcm"), shipped("MR_small_RLE.dcm")
    a, b = cli_json("compute", plain, "-j", "1"), cli_json("compute", rle, "-j", "1")
    assert {k: a[k] for k in ("mean", "std", "min", "max", "pixels")} == {k: b[k] for k in ("mean", "std", "min",
                                                                                                "max", "pixels")}
    assert_numpy(a, hu(plain))


def test_a_multi_frame_32_bit_file_is_one_item_counted_as_float_data():
    path = shipped("rtdose.dcm")  # 15 frames of 10x10 uint32, in doses once scaled by DoseGridScaling (1e-6)
    report = cli_json("compute", path, "-j", "1")
    assert report["raw"]["max"][0] < 1e-6 * 2**32  # doses: its stored numbers were counted, a million times them
    assert report["images"] == 1 and report["pixels"] == 15 * 10 * 10 and report["state"]["kind"] != "histogram"
    assert_numpy(report, hu(path))


@pytest.mark.parametrize("slope, intercept, whole", [(2.5, -1024, False), (1, -1024.5, False), (1, 31000, False),
                                                     (1, 7, True)])
def test_any_rescale_of_16_bit_samples_is_exact(tmp_path, slope, intercept, whole):
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    path = tmp_path / "odd.dcm"
    ds.save_as(path)
    report = cli_json("compute", path, "-j", "1")
    # whole 16-bit values: the integer histogram; any other rescale: the stored integers and their scaling
    assert report["state"]["kind"] == ("histogram" if whole else "scaled")
    assert_numpy(report, hu(path))
    np.testing.assert_allclose(report["raw"]["median"], np.median(hu(path), axis=0), rtol=1e-14)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A folder of slices: the CT slice and copies with other intercepts, and the MR slice twice."""
    root = tmp_path_factory.mktemp("series") / "study"
    (root / "ct").mkdir(parents=True)
    (root / "mr").mkdir()
    ct = pydicom.dcmread(shipped("CT_small.dcm"))
    for i, intercept in enumerate((-1024, -1000, -1100)):
        ct.RescaleIntercept = intercept
        ct.save_as(root / "ct" / f"slice_{i:03d}.dcm")
    for i in range(2):
        shutil.copy(shipped("MR_small.dcm"), root / "mr" / f"slice_{i:03d}.dcm")
    return root


def test_a_series_folder_equals_numpy_by_class_for_any_workers_and_shards(series, tmp_path):
    report = cli_json("compute", series, "-j", "1", "--group-by", "class")
    assert report["images"] == 2 and set(report["groups"]) == {"ct", "mr"}  # a series folder is one volume
    assert_numpy(report, np.concatenate([hu(p) for p in sorted(series.rglob("*.dcm"))]))
    assert_same_for_workers_and_shards(series, tmp_path, shards=2)


def test_a_damaged_or_imageless_file_is_a_skip_entry(series, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(series / "ct", data / "good")
    shutil.copytree(series / "ct", data / "bad")
    (data / "bad" / "broken.dcm").write_bytes(b"DICM but not really")
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(data / "imageless.dcm")
    report = cli_json("compute", data / "bad", data / "good", data / "imageless.dcm", "-j", "1")
    assert report["images"] == 1  # the good series
    errors = {os.path.basename(os.path.normpath(s["path"])): s["error"] for s in report["skipped"]}
    assert errors["bad"].startswith("ValueError: slice broken.dcm: InvalidDicomError")
    assert "no Pixel Data" in errors["imageless.dcm"]


def test_a_series_is_stacked_along_the_slice_normal_and_files_named_are_items(tmp_path):
    from bnstats.inputs.dicom import read_series

    ct = pydicom.dcmread(shipped("CT_small.dcm"))
    folder = tmp_path / "series"
    folder.mkdir()
    for name, z in (("a.dcm", 2.0), ("b.dcm", 0.0), ("c.dcm", 1.0)):
        ct.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ct.ImagePositionPatient = [0, 0, z]
        ct.RescaleIntercept = -1024 + int(z)  # each slice's values tell where it went
        ct.save_as(folder / name)
    volume = read_series(str(folder))
    planes = volume.pixels.reshape(3, -1)
    stored = ct.pixel_array.reshape(-1).astype(np.int64)
    assert volume.shape == (3, ct.Rows, ct.Columns)
    for z in range(3):
        np.testing.assert_array_equal(planes[z], stored - 1024 + z)
    named = cli_json("compute", *sorted(folder.glob("*.dcm")), "-j", "1")
    assert named["images"] == 3 and cli_json("compute", folder, "-j", "1")["images"] == 1
    assert named["raw"]["mean"] == cli_json("compute", folder, "-j", "1")["raw"]["mean"]


def test_a_folder_of_several_series_is_a_skip_entry_naming_it(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(shipped("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(shipped("MR_small.dcm"), folder / "mr.dcm")
    line = one_line_error(cli("compute", folder, "-j", "1", "-q"), 1)
    assert "holds 2 series: name their files" in line


def test_without_pydicom_a_dicom_input_is_one_line_naming_the_extra(series, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    assert "bnstats[medical]" in one_line_error(cli("compute", series), 1)


def test_dicom_files_without_an_extension_are_told_by_their_preamble(tmp_path):
    """A PACS export names slices IM000001..: read as DICOM (their preamble), other extensionless files not."""
    folder = tmp_path / "export" / "series"
    folder.mkdir(parents=True)
    for i in range(3):
        shutil.copy(shipped("CT_small.dcm"), folder / f"IM{i:06d}")
    (folder / "README").write_text("not an image, and 200 bytes long " * 6)
    report = cli_json("compute", tmp_path / "export", "-j", "1")
    assert report["images"] == 1 and report["pixels"] == 3 * 128 * 128  # one series of three slices
    assert cli_json("compute", folder / "IM000001", "-j", "1")["pixels"] == 128 * 128


def test_bytes_past_the_declared_frames_and_fifos_are_refused_not_counted(tmp_path):
    """pydicom hands out Pixel Data past the declared frames as more frames: 40 extra bytes were counted as
    20 more pixels. A FIFO named x.dcm blocked the run."""
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    ds.PixelData = ds.PixelData + bytes(len(ds.PixelData))  # one whole frame more than declared
    ds.save_as(tmp_path / "extra.dcm")
    line = one_line_error(cli("compute", tmp_path / "extra.dcm", "-q"), 1)
    assert "where its header declares 1 frame(s) of 128x128x1: damaged" in line
    os.mkfifo(tmp_path / "pipe.dcm")
    line = one_line_error(cli("compute", tmp_path / "pipe.dcm", "-q"), 1)
    assert "not a regular file (FIFO)" in line


def test_a_series_beside_a_subfolder_and_an_imageless_file_still_counts(tmp_path):
    folder = tmp_path / "cd" / "series"
    folder.mkdir(parents=True)
    for i in range(2):
        shutil.copy(shipped("CT_small.dcm"), folder / f"s{i}.dcm")
    (folder / "sub.dcm").mkdir()  # a folder named like a slice
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    ds.save_as(folder / "DICOMDIR.dcm")  # a file of the export that holds no image
    report = cli_json("compute", tmp_path / "cd", "-j", "1")
    assert report["images"] == 1 and report["pixels"] == 2 * 128 * 128 and report["skipped"] == []



def test_a_cd_exports_dicomdir_is_its_index_not_a_series_of_no_image(tmp_path):
    """A CD or PACS export: DICOMDIR (DICOM's preamble, no extension, no image) at the top, the slices in
    PT000000/ST000000/SE000000/. The top folder was a series too, a skipped entry 'holds no DICOM image'."""
    folder = tmp_path / "cd" / "PT000000" / "ST000000" / "SE000000"
    folder.mkdir(parents=True)
    for i in range(2):
        shutil.copy(shipped("CT_small.dcm"), folder / f"IM{i:06d}")
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    ds.save_as(tmp_path / "cd" / "DICOMDIR")
    report = cli_json("compute", tmp_path / "cd", "-j", "1")
    assert report["images"] == 1 and report["pixels"] == 2 * 128 * 128 and report["skipped"] == []

def _series(folder, slices, positions=True, labels=False, heights=None, numbers=None, names=None):
    """A series folder of CT_small.dcm's geometry: ``slices`` (arrays of its size) at 1.5 mm steps (or at
    ``heights``; without ImagePositionPatient: ordered by InstanceNumber, ``numbers`` if given); with
    ``labels``, stored unsigned and unscaled; files ``s0.dcm ...`` or ``names``."""
    folder.mkdir(parents=True)
    for i, plane in enumerate(slices):
        ds = pydicom.dcmread(shipped("CT_small.dcm"))
        ds.InstanceNumber = numbers[i] if numbers else i + 1
        if positions:
            ds.ImagePositionPatient = [-158.0, -179.0, heights[i] if heights else -75.0 + 1.5 * i]
        else:
            del ds.ImagePositionPatient
        if labels:
            ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 0, 1, 0
        ds.PixelData = np.ascontiguousarray(plane, np.uint16 if labels else np.int16).tobytes()
        ds.save_as(folder / f"{names[i] if names else f's{i}'}.dcm")


def test_a_series_pairs_with_a_label_series_of_its_geometry(tmp_path):
    """A DICOM series' mask is a series folder of the same geometry (the same slice positions, orientation and
    spacing): the foreground equals numpy on its voxels; a mask series elsewhere, or without positions, is a
    skipped entry naming it."""
    rng = np.random.default_rng(3)
    ct = [rng.integers(-1000, 2000, (128, 128)) for _ in range(3)]
    labels = [rng.integers(0, 3, (128, 128)) for _ in range(3)]
    _series(tmp_path / "images" / "case1", ct)
    _series(tmp_path / "labels" / "case1", labels, labels=True)
    report = cli_json("compute", tmp_path / "images", "--mask", tmp_path / "labels", "-j", "1")
    values, marks = np.stack(ct).ravel() - 1024.0, np.stack(labels).ravel()  # CT_small's intercept: -1024
    fg = values[marks > 0]
    assert report["skipped"] == [] and report["foreground"]["pixels"] == fg.size
    assert report["foreground"]["raw"]["mean"] == [pytest.approx(fg.mean(), rel=1e-15)]
    assert report["foreground"]["raw"]["median"] == [np.median(fg)]
    assert {k: g["pixels"] for k, g in report["groups"].items()} == {str(v): int((marks == v).sum()) for v in (0, 1, 2)}
    # the same mask slices one step away, or without positions: not the image's grid
    _series(tmp_path / "shifted" / "case1", labels[1:] + labels[:1], labels=True)
    for i in range(3):  # positions 1.5 mm further: s0 where the image's s1 is
        path = tmp_path / "shifted" / "case1" / f"s{i}.dcm"
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [-158.0, -179.0, -75.0 + 1.5 * (i + 1)]
        ds.save_as(path)
    _series(tmp_path / "unplaced" / "case1", labels, positions=False, labels=True)
    _series(tmp_path / "images" / "case2", ct)
    for masks in ("shifted", "unplaced"):
        _series(tmp_path / masks / "case2", labels, labels=True)  # a mask that fits: the run goes on
        report = cli_json("compute", tmp_path / "images", "--mask", tmp_path / masks, "-j", "1")
        errors = {entry["path"].rstrip("/").rsplit("/", 1)[-1]: entry["error"] for entry in report["skipped"]}
        assert set(errors) == {"case1"} and "another grid" in errors["case1"]


def _label_series_report(tmp_path, ct, labels, image=None, mask=None, label_slices=None):
    """The report of ``ct`` as the series images/c/ (``image``: :func:`_series` options) with the mask series
    labels/c/ (``mask``: its options; ``label_slices``: its slices, ``labels`` by default)."""
    _series(tmp_path / "images" / "c", ct, **(image or {}))
    _series(tmp_path / "labels" / "c", labels if label_slices is None else label_slices, labels=True, **(mask or {}))
    _series(tmp_path / "images" / "d", ct)  # a series whose mask fits: the run goes on
    _series(tmp_path / "labels" / "d", labels, labels=True)
    return cli_json("compute", tmp_path / "images", "--mask", tmp_path / "labels", "-j", "1")


@pytest.mark.parametrize("image, mask", [
    ({"heights": [0.0, 1.0, 3.0], "numbers": [3, 2, 1]}, {"positions": False}),  # uneven: no affine; none
    ({"heights": [0.0, 1.0, 3.0]}, {"heights": [0.0, 2.0, 3.0]}),  # uneven both, other places
    ({"heights": [0.0, 0.0, 0.0]}, {"heights": [0.0, 0.0, 0.0], "names": ["c", "b", "a"]}),  # one place: by name
    ({"positions": False}, {"positions": False, "numbers": [2, 3, 4]}),  # by instance number: other numbers
])
def test_series_without_one_grid_pair_only_slice_for_slice(tmp_path, image, mask):
    """Series without one evenly spaced grid (no positions, uneven ones, slices at one place) pair only where
    their slices lie at the same places (positions, else instance numbers, else file names where places
    tie): other places are the image's skipped entry, never voxels paired by shape."""
    rng = np.random.default_rng(4)
    ct = [rng.integers(-1000, 2000, (128, 128)) for _ in range(3)]
    labels = [rng.integers(0, 3, (128, 128)) for _ in range(3)]
    report = _label_series_report(tmp_path, ct, labels, image, mask)
    errors = {entry["path"].rstrip("/").rsplit("/", 1)[-1]: entry["error"] for entry in report["skipped"]}
    assert set(errors) == {"c"} and "other places" in errors["c"]


def test_series_without_one_grid_pair_at_the_same_places(tmp_path):
    """Uneven slices at the same positions, in another file order, pair by position: the foreground equals
    numpy on the voxels paired by each slice's position."""
    rng = np.random.default_rng(5)
    ct = [rng.integers(-1000, 2000, (128, 128)) for _ in range(3)]
    labels = [rng.integers(0, 3, (128, 128)) for _ in range(3)]
    heights = [0.0, 1.0, 3.0]
    report = _label_series_report(tmp_path, ct, labels, {"heights": heights},
                                  {"heights": heights[::-1], "names": ["a", "b", "c"]}, label_slices=labels[::-1])
    values = np.concatenate([np.stack(ct).ravel(), np.stack(ct).ravel()]) - 1024.0  # c/ and d/
    marks = np.concatenate([np.stack(labels).ravel()] * 2)
    fg = values[marks > 0]
    assert report["skipped"] == [] and report["foreground"]["pixels"] == fg.size
    assert report["foreground"]["raw"]["mean"] == [pytest.approx(fg.mean(), rel=1e-15)]


def _multiframe(path, frames, heights=None, labels=False):
    """A multi-frame file of CT_small.dcm's frame size holding ``frames``; with ``heights``, an enhanced file's
    per-frame positions (PlanePositionSequence) at those heights."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    ds.NumberOfFrames = len(frames)
    if labels:
        ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 0, 1, 0
    if heights is not None:
        groups = []
        for height in heights:
            position, group = Dataset(), Dataset()
            position.ImagePositionPatient = [-158.0, -179.0, height]
            group.PlanePositionSequence = Sequence([position])
            groups.append(group)
        ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.PixelData = np.ascontiguousarray(np.stack(frames), np.uint16 if labels else np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)


def test_a_multiframe_file_pairs_with_a_mask_of_its_frames_places(tmp_path):
    """A multi-frame file's mask file pairs frame for frame where their per-frame positions agree (the
    foreground equals numpy's), and is the image's skipped entry where its frames lie elsewhere or in another
    order."""
    rng = np.random.default_rng(6)
    ct = [rng.integers(-1000, 2000, (128, 128)) for _ in range(3)]
    labels = [rng.integers(0, 3, (128, 128)) for _ in range(3)]
    _multiframe(tmp_path / "images" / "a.dcm", ct, heights=[0.0, 1.5, 3.0])
    _multiframe(tmp_path / "images" / "b.dcm", ct, heights=[0.0, 1.5, 3.0])
    _multiframe(tmp_path / "labels" / "a.dcm", labels, heights=[0.0, 1.5, 3.0], labels=True)
    _multiframe(tmp_path / "labels" / "b.dcm", labels[::-1], heights=[3.0, 1.5, 0.0], labels=True)  # reversed
    names = [tmp_path / "images" / f"{name}.dcm" for name in ("a", "b")]  # files named: one item each
    report = cli_json("compute", *names, "--mask", tmp_path / "labels", "-j", "1")
    errors = {entry["path"].rsplit("/", 1)[-1]: entry["error"] for entry in report["skipped"]}
    assert set(errors) == {"b.dcm"} and "other places" in errors["b.dcm"]
    values, marks = np.stack(ct).ravel() - 1024.0, np.stack(labels).ravel()
    fg = values[marks > 0]
    assert report["foreground"]["pixels"] == fg.size
    assert report["foreground"]["raw"]["mean"] == [pytest.approx(fg.mean(), rel=1e-15)]


def test_a_label_series_of_mixed_spacings_is_no_grid(tmp_path):
    """A label series at the image's positions whose later slices have another PixelSpacing has no one grid
    (its first slice's was taken for all): the image's skipped entry, never paired."""
    rng = np.random.default_rng(7)
    ct = [rng.integers(-1000, 2000, (128, 128)) for _ in range(3)]
    labels = [rng.integers(0, 3, (128, 128)) for _ in range(3)]
    _series(tmp_path / "images" / "c", ct)
    _series(tmp_path / "labels" / "c", labels, labels=True)
    path = tmp_path / "labels" / "c" / "s2.dcm"
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(path)
    result = cli("compute", tmp_path / "images", "--mask", tmp_path / "labels", "-j", "1", expect=1)
    assert "another grid" in result.stderr and "labels/c" in result.stderr


def test_a_series_mask_that_is_a_volume_file_is_refused(tmp_path):
    """A DICOM series' mask named as a NIfTI file (or one DICOM file) is refused by its kind, even where its
    shape agrees: its voxels are in another order."""
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(8)
    _series(tmp_path / "images" / "c", [rng.integers(-1000, 2000, (128, 128)) for _ in range(3)])
    (tmp_path / "labels").mkdir()
    nibabel.save(nibabel.Nifti1Image(rng.integers(0, 3, (3, 128, 128)).astype(np.uint8), np.eye(4)),
                 tmp_path / "labels" / "c.nii.gz")
    result = cli("compute", tmp_path / "images", "--mask", f"{tmp_path}/labels/{{name}}.nii.gz", "-j", "1", expect=1)
    assert "read as NIfTI" in result.stderr and "DICOM series folder" in result.stderr


def test_a_pixel_padding_value_is_counted_and_a_note_names_the_ignore_value_that_leaves_it_out(tmp_path):
    """CT pads the corners outside the scanned circle with PixelPaddingValue: counted as pydicom, nnU-Net and
    MONAI read them, never silently: the note gives the value in HU, and --ignore-value with it leaves it out."""
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    stored = ds.pixel_array.copy()
    stored[:10, :10] = -2000
    ds.PixelData, ds.PixelPaddingValue = stored.astype(np.int16).tobytes(), -2000
    (tmp_path / "series").mkdir()
    for i in range(2):
        ds.InstanceNumber = i + 1
        ds.save_as(tmp_path / "series" / f"s{i}.dcm")
    hu = stored.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    padding = f"{hu[0, 0]:.0f}"
    for path in (tmp_path / "series", tmp_path / "series" / "s0.dcm"):
        result = cli("compute", path, "-j", "1", expect=0)
        assert f"PixelPaddingValue (padding outside the scanned area, {padding} in the modality's units) is " \
               f"counted as pixels: --ignore-value {padding} leaves it out" in result.stderr
        assert json.loads(result.stdout)["raw"]["min"] == [hu.min()]
    kept = cli_json("compute", tmp_path / "series" / "s0.dcm", "--ignore-value", padding)
    assert kept["pixels"] == hu.size - 100
    assert kept["raw"]["mean"] == pytest.approx([hu[hu != hu[0, 0]].mean()], rel=1e-15)


def _enhanced(path, stored, rescales, shared: bool):
    """An enhanced (multi-frame) CT file, as modern scanners write them: no top-level rescale; its
    PixelValueTransformationSequence in the shared functional groups (one for all) or in each frame's."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.NumberOfFrames, ds.Rows, ds.Columns = stored.shape
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11

    def group(slope, inter):
        item, transformation = Dataset(), Dataset()
        transformation.RescaleSlope, transformation.RescaleIntercept, transformation.RescaleType = slope, inter, "HU"
        item.PixelValueTransformationSequence = Sequence([transformation])
        return item

    if shared:
        ds.SharedFunctionalGroupsSequence = Sequence([group(*rescales[0])])
    else:
        ds.PerFrameFunctionalGroupsSequence = Sequence([group(*r) for r in rescales])
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path)


@pytest.mark.parametrize("rescales, shared", [([(1, -1024)] * 3, True), ([(1, -1024)] * 3, False),
                                              ([(1, -1024), (2, 0), (0.5, 10)], False)])
def test_an_enhanced_multi_frame_file_is_in_the_units_of_its_functional_groups(tmp_path, rescales, shared):
    """An enhanced CT's rescale lives in its functional groups: its stored values were counted, 1024 too high."""
    stored = np.random.default_rng(12).integers(0, 4096, (3, 6, 7))
    _enhanced(tmp_path / "enhanced.dcm", stored, rescales, shared)
    values = np.stack([plane * slope + inter for plane, (slope, inter) in zip(stored.astype(np.float64), rescales)])
    report = cli_json("compute", tmp_path / "enhanced.dcm", "-q")
    assert report["pixels"] == values.size and report["raw"]["min"] == [values.min()]
    assert report["raw"]["mean"] == pytest.approx([values.mean()], rel=1e-15)
    if len(set(rescales)) == 1:  # one rescale: exact, with a median
        assert report["raw"]["median"] == [np.median(values)]


def test_a_modality_lut_gives_the_values_and_palette_indices_are_a_skipped_entry(tmp_path):
    """Units from a Modality LUT Sequence (no rescale), and PALETTE COLOR indices: both were counted as the
    stored numbers, silently."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    del ds.RescaleSlope, ds.RescaleIntercept
    stored = np.random.default_rng(13).integers(0, 16, (ds.Rows, ds.Columns))
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit, ds.PixelData = 0, 16, 15, stored.astype(np.uint16).tobytes()
    lut = Dataset()
    lut.LUTDescriptor, lut.ModalityLUTType = [16, 0, 16], "US"
    table = (np.arange(16) * 100 + 7).astype(np.uint16)
    lut.add_new("LUTData", "US", table.tolist())
    ds.ModalityLUTSequence = Sequence([lut])
    ds.save_as(tmp_path / "lut.dcm")
    report = cli_json("compute", tmp_path / "lut.dcm", "-q")
    values = pydicom.pixels.apply_modality_lut(stored, pydicom.dcmread(tmp_path / "lut.dcm")).astype(np.float64)
    assert np.array_equal(values, table[stored])  # pydicom's reading is the table's
    assert report["raw"]["max"] == [values.max()] and report["raw"]["median"] == [np.median(values)]
    assert report["raw"]["mean"] == pytest.approx([values.mean()], rel=1e-15)
    del ds.ModalityLUTSequence
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(tmp_path / "palette.dcm")
    assert "PALETTE COLOR indices" in one_line_error(cli("compute", tmp_path / "palette.dcm", "-q", "--strict"), 1)
    (tmp_path / "series").mkdir()  # the slices of a series folder alike
    for i in range(2):
        ds.InstanceNumber = i + 1
        ds.save_as(tmp_path / "series" / f"s{i}.dcm")
    assert "PALETTE COLOR indices" in one_line_error(cli("compute", tmp_path / "series", "-q", "--strict"), 1)


def test_a_copy_of_a_slice_in_its_series_folder_is_said_never_counted_twice_silently(tmp_path):
    """'s1 (copy).dcm' beside s1.dcm (one SOPInstanceUID, place and pixels) is counted as its files are there,
    twice, and a note names both; slices of one template (one SOPInstanceUID, other places) are no copies."""
    folder = tmp_path / "series"
    _series(folder, [np.full((128, 128), k, np.int16) for k in range(3)])
    assert "slice twice" not in cli("compute", folder, expect=0).stderr
    shutil.copy(folder / "s1.dcm", folder / "s1 (copy).dcm")
    result = cli("compute", folder, expect=0)
    assert ("a DICOM series holds one slice twice (s1 (copy).dcm and s1.dcm: one SOPInstanceUID, place and "
            "pixels), counted twice: remove the copy") in result.stderr
    assert json.loads(result.stdout)["pixels"] == 4 * 128 * 128
