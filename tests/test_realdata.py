"""Scientific datasets laid out as their fields store them, checked against the field's own reader.

Small but realistic copies of what medical, microscopy and remote-sensing users count: an MSD task folder
(4-D multi-modal float32 NIfTI with label maps 0..3, int16 CT scaled by ``scl_slope``/``scl_inter`` down to
negative HU), an nnU-Net raw dataset, a DICOM CT series written slice by slice out of order, Sentinel-2-like
13-band uint16 GeoTIFFs (``GDAL_NODATA`` 0 and 65535, tiled, deflate/LZW, an internal mask), float32
rasters with NaN and -9999 nodata, HDF5 and Zarr arrays with ``_FillValue``, and a multi-series OME-TIFF.
Each report is compared with numpy on the pixels nibabel, pydicom, tifffile, h5py or zarr read — exactly
(Python integers and Fractions) where the pixels are integers — and each integer dataset gives the same
bytes with -j1, -j2, shards + merge and a resumed checkpoint.
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from helpers import cli, cli_json, interrupt_after

from bnstats.running import engine

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
tifffile = pytest.importorskip("tifffile")
h5py = pytest.importorskip("h5py")


# -- exact references ------------------------------------------------------------------------------------

def exact_moments(values) -> tuple[float, float]:
    """The mean and population variance of integers (or binary floats, each exactly), as Fractions rounded once."""
    values = np.ravel(values)
    if values.dtype.kind in "iu":  # sums of Python integers: exact whatever their size
        n, s1, s2 = len(values), int(values.astype(np.int64).sum()), int((values.astype(np.int64) ** 2).sum())
        return float(Fraction(s1, n)), float(Fraction(n * s2 - s1 * s1, n * n))
    xs = [Fraction(float(v)) for v in values]
    mean = sum(xs) / len(xs)
    return float(mean), float(sum((x - mean) ** 2 for x in xs) / len(xs))


def assert_exact(raw: dict, columns: np.ndarray, percentiles=()) -> None:
    """``raw`` statistics of a report equal the exact ones of ``columns`` (``(n, C)`` values), channel by channel:
    mean and var exactly, std within one rounding, min/max/median exactly, percentiles as numpy's ``linear``."""
    for c in range(columns.shape[1]):
        values = columns[:, c]
        mean, var = exact_moments(values)
        assert raw["mean"][c] == mean and raw["var"][c] == var, c
        assert raw["std"][c] == pytest.approx(np.sqrt(var), rel=2e-16, abs=0)
        assert (raw["min"][c], raw["max"][c]) == (float(values.min()), float(values.max()))
        assert raw["median"][c] == float(np.median(values.astype(np.float64)))
        for p in percentiles:
            want = np.percentile(values.astype(np.float64), float(p))
            assert raw["percentiles"][p][c] == pytest.approx(want, rel=1e-13, abs=1e-9), (p, c)


def same_bytes_everywhere(tmp_path, monkeypatch, *args) -> dict:
    """``compute ARGS`` gives the same bytes with -j1 and -j2, as two shards merged and after a Ctrl-C and
    resume; returns the report."""
    whole = cli("compute", *args, "-q", "-j", "1", expect=0).stdout
    assert cli("compute", *args, "-q", "-j", "2", expect=0).stdout == whole
    parts = [tmp_path / f"part{k}.json" for k in range(2)]
    for k, part in enumerate(parts):
        cli("compute", *args, "-q", "-j", "1", "--shard", f"{k}/2", "-o", part, expect=0)
    merged = json.loads(cli("merge", *parts, expect=0).stdout)
    report = json.loads(whole)
    assert {k: v for k, v in merged.items() if k != "files"} == {k: v for k, v in report.items() if k != "files"}
    checkpoint = tmp_path / "ck.json"
    with monkeypatch.context() as m:
        m.setattr(engine, "CHUNK_SIZE", 1)  # an item a partition: a few volumes are still stopped part way
        calls = interrupt_after(m, 2)
        stopped = cli("compute", *args, "-q", "-j", "1", "--checkpoint", checkpoint)
    assert stopped.exit_code == 130, (len(calls), stopped.stderr)  # stopped part way: the resume counts the rest
    assert cli("compute", *args, "-q", "-j", "2", "--checkpoint", checkpoint, expect=0).stdout == whole
    return report


# -- medical -------------------------------------------------------------------------------------------

def nifti(path, data, affine=None, slope=None, inter=None):
    image = nibabel.Nifti1Image(data, np.eye(4) if affine is None else affine)
    image.header.set_data_dtype(data.dtype)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nibabel.save(image, path)


def voxels(path) -> np.ndarray:
    """``(voxels, channels)`` of a NIfTI file as nibabel scales it, in Fortran order (the last axis of a 4-D one
    as its channels)."""
    data = np.asanyarray(nibabel.load(str(path)).dataobj)
    return data.reshape(-1, data.shape[3] if data.ndim == 4 else 1, order="F")


@pytest.fixture(scope="module")
def liver(tmp_path_factory):
    """An MSD Task03_Liver-like folder: int16 CT in HU (one stored as is, one unsigned with intercept -1024, one
    with slope 0.5), label maps 0 (background), 1 (liver), 2 (tumour)."""
    root = tmp_path_factory.mktemp("Task03_Liver")
    (root / "imagesTr").mkdir(), (root / "labelsTr").mkdir()
    rng = np.random.default_rng(3)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    for i, (slope, inter) in enumerate([(None, None), (1.0, -1024.0), (0.5, -100.0)]):
        shape = (12, 10, 3 + i)
        hu = rng.integers(-1024, 2000, shape).astype(np.int16)
        stored = (hu + 1024).astype(np.int16) if inter == -1024.0 else hu
        nifti(root / "imagesTr" / f"liver_{i}.nii.gz", stored, affine, slope, inter)
        labels = np.zeros(shape, np.uint8)
        labels[2:9, 3:8, 1:3], labels[4:6, 4:6, 2] = 1, 2
        nifti(root / "labelsTr" / f"liver_{i}.nii.gz", labels, affine)
    return root


@pytest.mark.slow
def test_ct_in_hounsfield_units_and_its_foreground_are_exact(liver, tmp_path, monkeypatch):
    images = sorted((liver / "imagesTr").iterdir())
    report = same_bytes_everywhere(tmp_path, monkeypatch, liver / "imagesTr", "--mask", liver / "labelsTr",
                                   "--percentiles", "0.5,99.5")
    hu = np.concatenate([voxels(p) for p in images])
    labels = np.concatenate([voxels(liver / "labelsTr" / p.name) for p in images])[:, 0]
    assert hu.min() < 0  # air and fat: negative HU
    assert report["pixels"] == len(hu) and report["foreground"]["pixels"] == int((labels > 0).sum())
    assert_exact(report["raw"], hu, ("0.5", "99.5"))
    assert_exact(report["foreground"]["raw"], hu[labels > 0], ("0.5", "99.5"))
    for label in (0, 1, 2):
        assert_exact(report["groups"][str(label)]["raw"], hu[labels == label])


def test_the_nnunet_export_is_numpy_on_the_foreground_voxels(liver, tmp_path):
    out = tmp_path / "ct.json"
    cli("compute", liver / "imagesTr", "--mask", f"{liver}/labelsTr/{{name}}.nii.gz",
        "--percentiles", "0.5,99.5", "-q", "-o", out, expect=0)
    exported = json.loads(cli("export", out, "--format", "nnunet", expect=0).stdout)
    channel = exported["foreground_intensity_properties_per_channel"]["0"]
    images = sorted((liver / "imagesTr").iterdir())
    fg = np.concatenate([voxels(p)[:, 0][voxels(liver / "labelsTr" / p.name)[:, 0] > 0] for p in images])
    fg = fg.astype(np.float64)
    assert channel["mean"] == exact_moments(fg)[0] and channel["median"] == np.median(fg)
    assert channel["std"] == pytest.approx(fg.std(), rel=1e-15)
    assert (channel["min"], channel["max"]) == (fg.min(), fg.max())
    assert channel["percentile_00_5"] == pytest.approx(np.percentile(fg, 0.5), rel=1e-13)
    assert channel["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5), rel=1e-13)


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """An MSD Task01_BrainTumour-like folder: 4-D float32 volumes of 4 modalities (zeros outside the head),
    label maps 0..3, and the AppleDouble ``._`` files MSD's archives carry (hidden: never counted)."""
    root = tmp_path_factory.mktemp("Task01_BrainTumour")
    (root / "imagesTr").mkdir(), (root / "labelsTr").mkdir()
    rng = np.random.default_rng(4)
    for i in range(3):
        shape = (9 + i, 8, 5)
        image = np.stack([rng.normal(400 + 100 * c, 80, shape) for c in range(4)], -1).astype(np.float32)
        image[:2] = 0
        nifti(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", image)
        labels = np.zeros(shape, np.uint8)
        labels[3:7, 2:6, 1:4], labels[4:6, 3:5, 2], labels[7, 1, 1] = 1, 2, 3
        nifti(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", labels)
        (root / "imagesTr" / f"._BRATS_{i:03d}.nii.gz").write_bytes(b"\0\5\26\7 AppleDouble")
    return root


def test_multi_modal_float_volumes_and_their_labels_equal_numpy(brats):
    report = cli_json("compute", brats / "imagesTr", "--mask", brats / "labelsTr", "-q", "-j", "2")
    names = [f"BRATS_{i:03d}.nii.gz" for i in range(3)]
    values = np.concatenate([voxels(brats / "imagesTr" / n) for n in names]).astype(np.float64)
    labels = np.concatenate([voxels(brats / "labelsTr" / n) for n in names])[:, 0]
    assert report["channels"] == ["C0", "C1", "C2", "C3"] and report["images"] == 3 and report["skipped"] == []
    for raw, chosen in [(report["raw"], values), (report["foreground"]["raw"], values[labels > 0]),
                        *((report["groups"][str(k)]["raw"], values[labels == k]) for k in range(4))]:
        np.testing.assert_allclose(raw["mean"], chosen.mean(0), rtol=1e-13)
        np.testing.assert_allclose(raw["std"], chosen.std(0), rtol=1e-12)
        assert raw["min"] == chosen.min(0).tolist() and raw["max"] == chosen.max(0).tolist()


def test_each_modality_as_an_item_with_fourth_axis_items(brats):
    report = cli_json("compute", brats / "imagesTr", "--fourth-axis", "items", "-q",
                      "--mask", str(brats / "labelsTr") + "/{name}.nii.gz")
    labelled = sum(int((voxels(p)[:, 0] > 0).sum()) for p in sorted((brats / "labelsTr").iterdir()))
    assert report["images"] == 12 and report["channels"] == ["L"]
    assert report["foreground"]["pixels"] == 4 * labelled  # each modality's voxels under its case's labels


@pytest.fixture(scope="module")
def hippocampus(tmp_path_factory):
    """An nnU-Net raw dataset: two int16 channel files per case, dataset.json's channel_names, and one case
    whose label map is empty."""
    root = tmp_path_factory.mktemp("nnUNet_raw") / "Dataset004_Hippocampus"
    (root / "imagesTr").mkdir(parents=True), (root / "labelsTr").mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        shape = (7 + i, 8, 5)
        for c in range(2):
            nifti(root / "imagesTr" / f"hippo_{i:03d}_{c:04d}.nii.gz",
                  rng.integers(0, 3000 + 1000 * c, shape).astype(np.int16))
        labels = np.zeros(shape, np.uint8)
        if i != 3:
            labels[2:6, 3:7, 1:4], labels[3:5, 4:6, 2] = 1, 2
        nifti(root / "labelsTr" / f"hippo_{i:03d}.nii.gz", labels)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": 4, "file_ending": ".nii.gz"}))
    return root


@pytest.mark.slow
def test_an_nnunet_dataset_is_exact_and_the_same_bytes_everywhere(hippocampus, tmp_path, monkeypatch):
    report = same_bytes_everywhere(tmp_path, monkeypatch, hippocampus, "--layout", "nnunet",
                                   "--percentiles", "0.5,99.5")
    cases = [f"hippo_{i:03d}" for i in range(4)]
    values = np.concatenate([np.concatenate([voxels(hippocampus / "imagesTr" / f"{case}_{c:04d}.nii.gz")
                                             for c in range(2)], axis=1) for case in cases])
    labels = np.concatenate([voxels(hippocampus / "labelsTr" / f"{case}.nii.gz") for case in cases])[:, 0]
    assert report["channels"] == ["T1", "T2"] and report["images"] == 4
    assert_exact(report["raw"], values)
    assert_exact(report["foreground"]["raw"], values[labels > 0], ("0.5", "99.5"))


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """Two DICOM CT series folders written by pydicom: 12-bit unsigned samples, RescaleIntercept -1024, the slices
    written out of order under shuffled file names; and the HU slices numpy expects."""
    root = tmp_path_factory.mktemp("dicom")
    stored = np.random.default_rng(6).integers(0, 4096, (6, 9, 11)).astype(np.uint16)
    for patient, slices in (("patient1", (3, 0, 5, 1)), ("patient2", (4, 2))):
        _write_series(root / patient / "CT", stored, slices)
    hu = np.stack([pydicom.dcmread(p).pixel_array for p in sorted(root.glob("*/CT/*.dcm"))]).astype(np.int64) - 1024
    return root, hu


def _write_series(folder, stored, slices) -> None:
    """The ``slices`` of ``stored`` as one CT series, written in that order under shuffled names."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series = generate_uid()
    for k in slices:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{(k * 7) % 6:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.InstanceNumber = series, "1.2.3", 6 - k
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [-100.0, -100.0, -50 + 2.5 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.Rows, ds.Columns = [0.7, 0.7], 9, 11
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = stored[k].tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)


def test_a_dicom_series_out_of_order_is_exact_in_hu(ct_series, tmp_path, monkeypatch):
    root, hu = ct_series
    report = same_bytes_everywhere(tmp_path, monkeypatch, root, "--percentiles", "1,99")
    assert report["images"] == 2 and report["pixels"] == hu.size and report["skipped"] == []
    assert_exact(report["raw"], hu.reshape(-1, 1), ("1", "99"))


# -- remote sensing --------------------------------------------------------------------------------------

def gdal_tags(nodata: str, bands: int) -> list:
    names = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">B{i + 1:02d}</Item>'
                    for i in range(bands))
    return [(42113, "s", 0, nodata, True), (42112, "s", 0, f"<GDALMetadata>{names}</GDALMetadata>", True)]


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    """Sentinel-2-like scenes, 13 uint16 bands: nodata 0 in a swath (and one band-only 0 that counts), tiled and
    planar with deflate, LZW or none; a contiguous one with nodata 65535; and the pixels that must count."""
    root = tmp_path_factory.mktemp("S2")
    rng = np.random.default_rng(7)
    kept = []
    for i, compression in enumerate(["zlib", "lzw", None]):
        bands = rng.integers(1, 12000, (13, 16, 32), dtype=np.uint16)
        bands[:, :5, :], bands[3, 10, 20] = 0, 0
        tifffile.imwrite(root / f"T32TQM_{i}.tif", bands, planarconfig="separate", tile=(16, 16),
                         compression=compression, photometric="minisblack", extratags=gdal_tags("0", 13))
        pixels = bands.reshape(13, -1).T
        kept.append(pixels[(pixels != 0).any(axis=1)])
    scene = rng.integers(0, 30000, (16, 20, 13), dtype=np.uint16)
    scene[10:, 12:, :] = 65535
    tifffile.imwrite(root / "T33UUP.tif", scene, planarconfig="contig", compression="zlib",
                     photometric="minisblack", extratags=gdal_tags("65535.0", 13))
    pixels = scene.reshape(-1, 13)
    kept.append(pixels[(pixels != 65535).any(axis=1)])
    return root, np.concatenate(kept)


@pytest.mark.slow
def test_sentinel_scenes_leave_their_nodata_out_exactly(sentinel, tmp_path, monkeypatch):
    root, kept = sentinel
    report = same_bytes_everywhere(tmp_path, monkeypatch, root, "--mode", "native", "--percentiles", "2,98")
    assert report["channels"] == [f"B{i:02d}" for i in range(1, 14)] and report["pixels"] == len(kept)
    assert_exact(report["raw"], kept, ("2", "98"))


def test_an_internal_mask_and_float_nodata_leave_their_pixels_out(tmp_path):
    rng = np.random.default_rng(8)
    bands = rng.integers(0, 4000, (32, 32, 4), dtype=np.uint16)
    mask = np.ones((32, 32), bool)
    mask[:, :8], mask[28:] = False, False
    with tifffile.TiffWriter(tmp_path / "masked.tif") as writer:  # as GDAL_TIFF_INTERNAL_MASK lays it out
        writer.write(bands, photometric="minisblack", planarconfig="contig", tile=(16, 16), compression="zlib")
        writer.write(mask, subfiletype=4, photometric=4, tile=(16, 16), compression="zlib")
    report = cli_json("compute", tmp_path / "masked.tif", "--mode", "native", "-q")
    assert_exact(report["raw"], bands.reshape(-1, 4)[mask.ravel()])
    lst = rng.normal(280, 15, (20, 24)).astype(np.float32)
    lst[:3] = np.nan
    ndvi = rng.normal(0.3, 0.1, (16, 16)).astype(np.float32)
    ndvi[ndvi < 0.2] = -9999
    (tmp_path / "f").mkdir()
    tifffile.imwrite(tmp_path / "f" / "lst.tif", lst, compression="lzw", predictor=3,
                     extratags=[(42113, "s", 0, "nan", True)])
    tifffile.imwrite(tmp_path / "f" / "ndvi.tif", ndvi, tile=(16, 16), compression="zlib",
                     extratags=[(42113, "s", 0, "-9999", True)])
    report = cli_json("compute", tmp_path / "f", "--mode", "native", "-q")
    values = np.concatenate([lst.ravel()[np.isfinite(lst.ravel())], ndvi.ravel()[ndvi.ravel() != -9999]])
    assert report["pixels"] == len(values)
    mean, var = exact_moments(values.astype(np.float64))
    assert report["raw"]["mean"] == pytest.approx([mean], rel=1e-14)
    assert report["raw"]["var"] == pytest.approx([var], rel=1e-12)
    assert report["raw"]["min"] == [float(values.min())] and report["raw"]["max"] == [float(values.max())]


def test_hdf5_and_zarr_fill_values_are_left_out(tmp_path, monkeypatch):
    rng = np.random.default_rng(9)
    landcover = rng.integers(0, 200, (6, 10, 12), dtype=np.int16)
    landcover[:, :, :3] = -32768
    (tmp_path / "tiles").mkdir()
    for k in range(2):  # two tiles: two partitions, so that a resume starts part way
        with h5py.File(tmp_path / "tiles" / f"lc{k}.h5", "w") as f:
            tile = f.create_dataset("lc", data=landcover[3 * k:3 * k + 3], chunks=(1, 10, 12), compression="gzip")
            tile.attrs["_FillValue"] = np.int16(-32768)
    report = same_bytes_everywhere(tmp_path, monkeypatch, tmp_path / "tiles")
    flat = landcover.reshape(-1, 1)
    assert report["images"] == 6 and report["pixels"] == int((flat != -32768).sum())
    assert_exact(report["raw"], flat[flat[:, 0] != -32768])
    zarr = pytest.importorskip("zarr")
    stored = rng.integers(1, 10000, (8, 6, 6), dtype=np.uint16)
    stored[2:4], stored[:, 0, :] = 65535, 65535
    array = zarr.open_array(tmp_path / "ndvi.zarr", mode="w", shape=stored.shape, chunks=(2, 6, 6),
                            dtype="uint16", zarr_format=2, fill_value=0)
    array[:] = stored
    array.attrs["_FillValue"] = 65535
    report = cli_json("compute", tmp_path / "ndvi.zarr", "-q")
    flat = stored.reshape(-1, 1)
    assert_exact(report["raw"], flat[flat[:, 0] != 65535])


# -- microscopy -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """A well of a plate: an OME-TIFF of two positions (TZCYX, 16-bit, channels DAPI/GFP/mCherry) and one tiled,
    compressed ZCYX z-stack of a 12-bit camera; and their pixels as ``(n, 3)``."""
    root = tmp_path_factory.mktemp("plate")
    rng = np.random.default_rng(10)
    metadata = {"Channel": {"Name": ["DAPI", "GFP", "mCherry"]}}
    pixels = []
    with tifffile.TiffWriter(root / "A1.ome.tif", ome=True) as writer:
        for _ in range(2):
            image = rng.integers(100, 60000, (2, 3, 3, 8, 10), dtype=np.uint16)
            writer.write(image, metadata={"axes": "TZCYX", **metadata}, photometric="minisblack")
            pixels.append(np.moveaxis(image, 2, -1).reshape(-1, 3))
    stack = rng.integers(0, 4096, (4, 3, 16, 16), dtype=np.uint16)
    tifffile.imwrite(root / "A2.ome.tif", stack, ome=True, metadata={"axes": "ZCYX", **metadata},
                     photometric="minisblack", tile=(16, 16), compression="zlib")
    pixels.append(np.moveaxis(stack, 1, -1).reshape(-1, 3))
    return root, np.concatenate(pixels)


@pytest.mark.slow
def test_ome_tiff_positions_and_z_stacks_are_their_channels_exactly(plate, tmp_path, monkeypatch):
    root, pixels = plate
    report = same_bytes_everywhere(tmp_path, monkeypatch, root, "--percentiles", "1,99.9")
    assert report["channels"] == ["DAPI", "GFP", "mCherry"] and report["images"] == 2
    assert report["pixels"] == len(pixels)
    assert_exact(report["raw"], pixels, ("1", "99.9"))


@pytest.mark.slow
def test_z_stacks_give_one_state_page_by_page_or_as_volumes(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    stacks = [rng.integers(0, 65535, (3 + i, 6, 7), dtype=np.uint16) for i in range(3)]
    for i, stack in enumerate(stacks):
        tifffile.imwrite(tmp_path / f"stack{i}.tif", stack, photometric="minisblack")
    pages = cli_json("compute", tmp_path, "--mode", "native", "-q")
    (tmp_path / "runs").mkdir()
    volumes = same_bytes_everywhere(tmp_path / "runs", monkeypatch, tmp_path, "--mode", "native", "--stack",
                                    "volume", "--ext", "tif")
    assert (pages["images"], volumes["images"]) == (sum(len(s) for s in stacks), 3)
    assert pages["raw"] == volumes["raw"] and pages["pixels"] == volumes["pixels"]
    assert_exact(volumes["raw"], np.concatenate([s.reshape(-1, 1) for s in stacks]))
