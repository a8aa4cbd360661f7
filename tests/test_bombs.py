"""Small hostile files that would cost unbounded time or memory: each is a skip entry naming its bound,
found before a decoder or reader starts on it, while the files it resembles are counted as before."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from helpers import cli, cli_json
from PIL import Image

from bnstats import limits
from bnstats.decoding.jpeg import count_scans, is_progressive


def progressive_jpeg(size=(48, 32), mode="RGB") -> bytes:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (size[1], size[0], 3 if mode == "RGB" else 1), np.uint8).squeeze()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "JPEG", progressive=True, quality=90)
    return buffer.getvalue()


def with_scans(data: bytes, scans: int) -> bytes:
    """``data`` with its last scan's header repeated until it has ``scans`` scans: each repetition an empty
    scan that libjpeg still passes over the whole image for (the scan bomb)."""
    last = data.rindex(b"\xff\xda")
    header = data[last:last + 2 + struct.unpack(">H", data[last + 2:last + 4])[0]]
    return data[:last] + header * (scans - count_scans(data)) + data[last:]


def comment(text: bytes) -> bytes:
    return b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text


@pytest.mark.parametrize("args", [(), ("--mode", "native"), ("--mode", "gray"), ("--resize", "16")],
                         ids=["simplejpeg", "native", "gray", "pillow"])
def test_a_jpeg_of_more_scans_than_the_bound_is_skipped_before_it_is_decoded(tmp_path, args):
    """A progressive JPEG of 5,000 empty scans (440 KB, 8192x8192) took 48 s of libjpeg's time; more
    scans, longer. Past limits.JPEG_SCANS it is a skip entry, whichever decoder would have taken it."""
    good = progressive_jpeg()
    (tmp_path / "ok.jpg").write_bytes(with_scans(good, limits.JPEG_SCANS))  # at the bound: counted
    (tmp_path / "bomb.jpg").write_bytes(with_scans(good, limits.JPEG_SCANS + 1))
    report = cli_json("compute", tmp_path, "-j", "1", *args)
    assert report["images"] == 1
    [skipped] = report["skipped"]
    assert skipped["path"].endswith("bomb.jpg")
    assert f"{limits.JPEG_SCANS + 1:,} scans is over the limit of {limits.JPEG_SCANS}" in skipped["error"]


def test_the_bound_counts_the_images_scans_not_marker_bytes_inside_its_segments(tmp_path):
    """The start-of-scan bytes in a comment (or a thumbnail, a profile) are no scans of the image: the file is
    counted, to the same numbers as without the comment."""
    good = progressive_jpeg()
    stuffed = good[:2] + comment(b"\xff\xda" * (limits.JPEG_SCANS + 50)) + good[2:]
    assert stuffed.count(b"\xff\xda") > limits.JPEG_SCANS and count_scans(stuffed) == count_scans(good)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(good)
    (tmp_path / "b" / "x.jpg").write_bytes(stuffed)
    plain, commented = (cli_json("compute", tmp_path / d, "-j", "1") for d in "ab")
    assert commented["images"] == 1 and not commented["skipped"]
    assert commented["state"] == plain["state"]
    expected = np.asarray(Image.open(io.BytesIO(good)).convert("RGB"), np.float64).reshape(-1, 3) / 255
    np.testing.assert_allclose(commented["mean"], expected.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("mode, progressive", [("RGB", True), ("L", True), ("RGB", False)])
def test_count_scans_is_the_scans_the_encoder_wrote(mode, progressive):
    """libjpeg writes 10 scans for a progressive colour JPEG, 6 for grey, 1 for a baseline one; a thumbnail
    scan inside an APP segment and a second picture after the end of the image (an MPO) are not counted."""
    buffer = io.BytesIO()
    Image.new(mode, (40, 24), 90).save(buffer, "JPEG", progressive=progressive)
    data = buffer.getvalue()
    expected = {("RGB", True): 10, ("L", True): 6, ("RGB", False): 1}[(mode, progressive)]
    assert count_scans(data) == expected
    app = b"\xff\xe1" + struct.pack(">H", len(data) + 2) + data  # a whole JPEG inside a segment
    assert count_scans(data[:2] + app + data[2:] + data) == expected
    baseline = io.BytesIO()
    Image.new("L", (8, 8)).save(baseline, "JPEG")
    thumbnail = b"\xff\xe1" + struct.pack(">H", len(baseline.getvalue()) + 2) + baseline.getvalue()
    # the frame's own start-of-frame marker decides, not a baseline thumbnail's before it
    assert is_progressive(data[:2] + thumbnail + data[2:]) is progressive


def test_an_hdf5_dataset_declaring_more_than_its_file_can_hold_is_refused_before_a_row_is_read(tmp_path,
                                                                                                small_bounds):
    """An 8 KB HDF5 file declared (4000, 1024, 1024) bytes never written (h5py reads the fill value): 4,000
    images counted in 10 s, a million would take hours. Past the inflation ratio of the file's size it is
    refused, as a Zarr array declaring more than its store is; a written dataset beside it is counted."""
    h5py = pytest.importorskip("h5py")
    small_bounds(ratio=10, ratio_floor=1 << 10)
    images = np.random.default_rng(4).integers(0, 256, (30, 16, 16), np.uint8)
    with h5py.File(tmp_path / "bomb.h5", "w") as f:
        f.create_dataset("x", shape=(3000, 64, 64), dtype="u1", chunks=(1, 64, 64), compression="gzip")
    with h5py.File(tmp_path / "ok.h5", "w") as f:
        f.create_dataset("x", data=images, chunks=(5, 16, 16), compression="gzip")
    report = cli_json("compute", tmp_path, "-j", "1", "--mode", "native")
    assert report["images"] == 30
    [skipped] = report["skipped"]
    assert skipped["path"].endswith("bomb.h5:/x") and "12,288,000 bytes of data" in skipped["error"]
    assert "BNSTATS_MAX_RATIO" in skipped["error"]
    np.testing.assert_allclose(report["raw"]["mean"], [images.astype(np.float64).mean()], rtol=1e-14)


def test_an_hdf5_chunk_over_the_bytes_per_file_bound_is_refused(tmp_path, small_bounds):
    """One chunk is inflated whole by any read of a row of it: a chunk past the bytes-per-file bound is refused
    (a 1.7 MB file of one 1.7 GB chunk of zeros took 2 GB and 61 s)."""
    h5py = pytest.importorskip("h5py")
    small_bounds(file_bytes=10_000)
    images = np.random.default_rng(5).integers(0, 256, (8, 32, 32), np.uint8)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("big", data=images, chunks=(8, 32, 32), compression="gzip")  # 8,192 bytes: counted
        f.create_dataset("huge", data=np.concatenate([images, images]), chunks=(16, 32, 32))  # 16,384: refused
    report = cli_json("compute", tmp_path / "a.h5", "-j", "1", "--mode", "native")
    assert report["images"] == 8
    [skipped] = report["skipped"]
    assert skipped["path"].endswith("a.h5:/huge") and "a chunk of 16,384 bytes is over the limit" in skipped["error"]


def test_an_hdf5_chunk_of_many_rows_is_read_once_not_once_per_batch(tmp_path, monkeypatch):
    """A chunk holding more rows than a batch was inflated once per batch of its rows (a 60 MB file, one
    chunk of 256 rows read 4 at a time: 64 inflations, 56 s). Such a chunk is now one batch, read once."""
    h5py = pytest.importorskip("h5py")
    from bnstats.inputs import arrays, hdf5

    images = np.random.default_rng(6).integers(0, 256, (45, 8, 8), np.uint8)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=images, chunks=(20, 8, 8), compression="gzip")
    monkeypatch.setattr(arrays, "BATCH_BYTES", 3 * 64)  # 3 rows a batch: a chunk is 7 batches' worth
    reads = []
    real = hdf5.read_hdf5_rows
    monkeypatch.setattr(hdf5, "read_hdf5_rows", lambda info, start, stop: reads.append((start, stop)) or
                        real(info, start, stop))
    report = cli_json("compute", tmp_path / "a.h5", "-j", "1", "--mode", "native")
    assert sorted(reads) == [(0, 20), (20, 40), (40, 45)]
    assert report["images"] == 45
    np.testing.assert_allclose(report["raw"]["mean"], [images.astype(np.float64).mean()], rtol=1e-14)
    np.testing.assert_allclose(report["raw"]["std"], [images.astype(np.float64).std()], rtol=1e-12)


def test_a_parquet_row_group_declaring_more_than_the_ratio_allows_of_its_file_is_skipped_unread(tmp_path,
                                                                                                 small_bounds):
    """One zstd cell of 600 MB zeros is a 24 KB file: under the bytes-per-file bound, it was inflated (1.9 GB
    of memory) before its cell was refused. Its row group's declared size is now held against the file's
    inflation budget first; a file of images that compress as images do is read."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from bnstats.inputs import parquet

    small_bounds(ratio=20, ratio_floor=1 << 10)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (8, 8, 3), np.uint8)).save(buffer, "PNG")
    png = buffer.getvalue()
    pq.write_table(pa.table({"image": pa.array([png + bytes(1 << 20)], pa.binary())}), tmp_path / "bomb.parquet",
                   compression="zstd")
    pq.write_table(pa.table({"image": pa.array([png] * 3, pa.binary())}), tmp_path / "ok.parquet",
                   compression="zstd")
    calls = []
    real = parquet._Cells.value
    parquet._Cells.value = lambda self, i: calls.append(i) or real(self, i)
    try:
        report = cli_json("compute", tmp_path, "-j", "1")
    finally:
        parquet._Cells.value = real
    assert report["images"] == 3 and len(calls) == 3  # the bomb's cell was never copied out
    [skipped] = report["skipped"]
    assert skipped["path"].endswith("bomb.parquet:0")
    assert "more than 20× the file's size" in skipped["error"] and "BNSTATS_MAX_RATIO" in skipped["error"]


def test_the_pages_of_a_tiff_are_walked_once_not_once_per_task(tmp_path, monkeypatch):
    """Each task of a multi-page TIFF's pages reads the file anew; each walked every directory again, so a
    file's cost grew with pages² (20,000 pages of 1×1, 4.8 MB: 35 s). The same bytes find their walk."""
    tifffile = pytest.importorskip("tifffile")
    from bnstats.decoding import tiff

    pages = np.random.default_rng(8).integers(0, 256, (600, 2, 3), np.uint8)
    with tifffile.TiffWriter(tmp_path / "s.tif") as writer:
        for page in pages:
            writer.write(page, contiguous=False)
    walks = []
    real = tiff.read_chain
    monkeypatch.setattr(tiff, "read_chain", lambda data: walks.append(callable(data)) or real(data))
    report = cli_json("compute", tmp_path / "s.tif", "-j", "1", "--mode", "native")
    assert report["images"] == 600 and not report["skipped"]
    assert walks.count(False) == 1  # the bytes walked once (a listing may read the directories from the file)
    np.testing.assert_allclose(report["raw"]["mean"], [pages.astype(np.float64).mean()], rtol=1e-14)


def test_a_tiff_of_other_bytes_of_the_same_length_is_walked_anew():
    """Bytes of the same length are the same file only if they are equal: the walk of one is never another's."""
    from bnstats.decoding import tiff

    def tiff_bytes(width):
        buffer = io.BytesIO()
        Image.new("L", (width, 12 // width)).save(buffer, "TIFF")
        return buffer.getvalue()

    one, other = tiff_bytes(3), tiff_bytes(4)
    assert len(one) == len(other) and one != other
    assert tiff.tiff_directories(one)[0]["width"] == 3
    assert tiff.tiff_directories(other)[0]["width"] == 4
    assert tiff.tiff_directories(bytes(bytearray(one)))[0]["width"] == 3


def test_a_deflated_dicom_that_inflates_past_the_bounds_is_refused_before_pydicom_inflates_it(tmp_path,
                                                                                               small_bounds):
    """pydicom inflates a deflated dataset whole: a 917 KB file holding a 900 MB private element took 1.9 GB.
    It is inflated in pieces and held against the inflation bounds first; the same file without the element
    is counted as pydicom reads it."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    source = get_testdata_file("CT_small.dcm", download=False)
    if source is None:
        pytest.skip("pydicom does not ship CT_small.dcm here")
    small_bounds(ratio=10, ratio_floor=1 << 16)
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "ok.dcm")
    ds.add_new(0x00091010, "OB", bytes(1 << 20))  # 1 MiB of zeros: a few KB deflated
    ds.save_as(tmp_path / "bomb.dcm")
    assert (tmp_path / "bomb.dcm").stat().st_size < (tmp_path / "ok.dcm").stat().st_size + 10_000
    report = cli_json("compute", tmp_path / "ok.dcm", tmp_path / "bomb.dcm", "-j", "1")
    [skipped] = report["skipped"]
    assert skipped["path"].endswith("bomb.dcm") and "deflated dataset inflates to over" in skipped["error"]
    assert "BNSTATS_MAX_RATIO" in skipped["error"]
    stored = pydicom.dcmread(tmp_path / "ok.dcm")
    values = stored.pixel_array.astype(np.float64).ravel() * float(stored.RescaleSlope) + float(stored.RescaleIntercept)
    assert report["images"] == 1 and report["pixels"] == values.size
    np.testing.assert_allclose(report["raw"]["mean"], [values.mean()], rtol=1e-13)
    np.testing.assert_allclose(report["raw"]["std"], [values.std()], rtol=1e-12)


def test_the_volumes_of_a_4d_nifti_gz_are_read_through_one_open_file(tmp_path, monkeypatch):
    """With --fourth-axis items each volume is a task, and each opened the .nii.gz anew and inflated it from
    its start (1,000 volumes of a 1 MB file: 82 s, growing with their square). The file is now opened once
    and its volumes read in order; the numbers are numpy's."""
    nib = pytest.importorskip("nibabel")
    from bnstats.inputs import nifti

    volumes = np.random.default_rng(9).integers(-500, 500, (6, 5, 4, 40), np.int16)
    nib.save(nib.Nifti1Image(volumes, np.eye(4)), tmp_path / "t.nii.gz")
    opened = []
    real = nib.load
    monkeypatch.setattr(nib, "load", lambda path, **kw: opened.append(kw.get("keep_file_open")) or real(path, **kw))
    monkeypatch.setattr(nifti, "_held", __import__("threading").local())
    report = cli_json("compute", tmp_path / "t.nii.gz", "--mode", "native", "--fourth-axis", "items", "-j", "1")
    assert report["images"] == 40 and opened.count(True) == 1
    values = volumes.astype(np.float64).ravel()
    np.testing.assert_allclose(report["raw"]["mean"], [values.mean()], rtol=1e-13)
    np.testing.assert_allclose(report["raw"]["std"], [values.std()], rtol=1e-12)
    assert report["raw"]["min"] == [values.min()] and report["raw"]["max"] == [values.max()]


def test_a_plain_16_bit_ppm_reads_its_declared_samples_not_every_token_after_them(tmp_path):
    """The samples of a plain (P3) 16-bit PPM were the file split whole: 100 MB of "0 " after a 2x2 image took
    660 MB, an object per token. The declared samples alone are taken now, the file not copied."""
    import tracemalloc

    from bnstats.decoding.decode import decode_bytes
    from bnstats.decoding.options import DecodeOptions

    samples = [1, 2, 3, 400, 500, 600, 7000, 8000, 9000, 65535, 0, 12]
    data = b"P3\n2 2\n65535\n" + " ".join(map(str, samples)).encode() + b"\n" + b"0 " * (1 << 20)
    tracemalloc.start()
    try:
        image = decode_bytes(data, DecodeOptions(mode="native"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # split whole: ~40 MB of tokens
    (tmp_path / "a.ppm").write_bytes(data)
    report = cli_json("compute", tmp_path / "a.ppm", "--mode", "native", "-j", "1")
    expected = np.array(samples, np.float64).reshape(4, 3)
    assert image is not None and report["pixels"] == 4
    np.testing.assert_allclose(report["raw"]["mean"], expected.mean(axis=0), rtol=1e-14)
    assert report["raw"]["max"] == expected.max(axis=0).tolist()


def jpeg_dicom(path, jpeg: bytes, size: tuple[int, int]):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Columns, ds.Rows = size
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return pydicom


def test_a_jpeg_scan_bomb_inside_a_dicom_file_is_refused_before_pydicom_decodes_it(tmp_path):
    """pydicom decodes JPEG frames with libjpeg too (through Pillow or a plugin), past bnstats' decoders: a
    129 KB frame of 3,000 empty scans took 4 s. Each frame's scans are held to the bound first; a JPEG file
    of ordinary scans is counted as pydicom decodes it."""
    good = progressive_jpeg((40, 24), "L")
    pydicom = jpeg_dicom(tmp_path / "ok.dcm", good, (40, 24))
    try:
        expected = pydicom.dcmread(tmp_path / "ok.dcm").pixel_array.astype(np.float64).ravel()
    except Exception as exc:  # noqa: BLE001 - no JPEG decoder for pydicom here
        pytest.skip(f"pydicom cannot decode JPEG here: {exc}")
    jpeg_dicom(tmp_path / "bomb.dcm", with_scans(good, limits.JPEG_SCANS + 1), (40, 24))
    report = cli_json("compute", tmp_path / "ok.dcm", tmp_path / "bomb.dcm", "-j", "1", "--mode", "native")
    [skipped] = report["skipped"]
    assert skipped["path"].endswith("bomb.dcm") and f"{limits.JPEG_SCANS + 1:,} scans" in skipped["error"]
    assert report["images"] == 1 and report["pixels"] == expected.size
    np.testing.assert_allclose(report["raw"]["mean"], [expected.mean()], rtol=1e-13)


def test_a_damaged_jpeg_that_pillow_counts_is_counted_with_what_libjpeg_said(tmp_path):
    """Half a JPEG and its end marker (or 631 bytes declaring 13000×13000: 169 M pixels) decodes in Pillow
    without a word, libjpeg filling the missing rows with grey: counted as torchvision's loader would see it,
    but never silently. A whole JPEG has no such note."""
    from helpers import stderr_lines

    rng = np.random.default_rng(10)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    whole = buffer.getvalue()
    (tmp_path / "cut").mkdir()
    (tmp_path / "whole").mkdir()
    (tmp_path / "cut" / "a.jpg").write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")
    (tmp_path / "whole" / "a.jpg").write_bytes(whole)
    cut = cli("compute", tmp_path / "cut", "-j", "1", expect=0)
    said = "bnstats: warning: the decoder said: Corrupt JPEG data: premature end of data segment (the image was counted)"
    assert stderr_lines(cut) == [said]
    expected = np.asarray(Image.open(tmp_path / "cut" / "a.jpg").convert("RGB"), np.float64).reshape(-1, 3) / 255
    np.testing.assert_allclose(json.loads(cut.stdout)["mean"], expected.mean(axis=0), rtol=1e-12)
    assert stderr_lines(cli("compute", tmp_path / "whole", "-j", "1", expect=0)) == []


@pytest.mark.parametrize("name", ["data.parquet", "x.npy", "train-images-idx3-ubyte", "x.h5", "shards.tar", "a.zip"])
def test_a_folder_named_like_a_file_kind_is_walked_when_given(tmp_path, name):
    """Spark writes a Parquet table as a folder ``data.parquet/`` of part files; a folder so named (or like
    an array file, an archive) given on the command line was opened as a file: no images found. It is walked
    as any folder is."""
    folder = tmp_path / name
    folder.mkdir()
    pixels = np.random.default_rng(11).integers(0, 256, (5, 4, 3), np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    report = cli_json("compute", folder, "-j", "1")
    assert report["images"] == 1 and not report["skipped"]
    np.testing.assert_allclose(report["mean"], pixels.reshape(-1, 3).mean(axis=0) / 255, rtol=1e-12)


def test_an_hdf5_virtual_dataset_is_held_against_its_sources_sizes_not_its_master_files(tmp_path, small_bounds):
    """A virtual dataset's master file is a few KB whatever its sources hold: its declared data is held against
    the sources' sizes too, so it is counted; sources that are missing read as the fill value and count for
    nothing, so a master of missing sources is still refused."""
    h5py = pytest.importorskip("h5py")
    small_bounds(ratio=3, ratio_floor=1 << 10)
    parts = [np.random.default_rng(i).integers(0, 256, (10, 32, 32), np.uint8) for i in range(2)]
    layout = h5py.VirtualLayout(shape=(20, 32, 32), dtype="u1")
    for i, part in enumerate(parts):
        with h5py.File(tmp_path / f"src{i}.h5", "w") as f:
            f["x"] = part
        layout[i * 10 : (i + 1) * 10] = h5py.VirtualSource(f"src{i}.h5", "x", shape=part.shape)
    with h5py.File(tmp_path / "master.h5", "w") as f:
        f.create_virtual_dataset("data", layout, fillvalue=0)
    assert (tmp_path / "master.h5").stat().st_size * 3 < 20 * 32 * 32  # the master alone would be refused
    report = cli_json("compute", tmp_path / "master.h5", "-j", "1", "--mode", "native")
    values = np.concatenate(parts).astype(np.float64)
    assert report["images"] == 20 and not report["skipped"]
    np.testing.assert_allclose(report["raw"]["mean"], [values.mean()], rtol=1e-14)
    for i in range(2):
        (tmp_path / f"src{i}.h5").unlink()
    gone = cli("compute", tmp_path / "master.h5", "-j", "1", "--mode", "native")
    assert gone.exit_code == 1 and "BNSTATS_MAX_RATIO" in gone.stderr


def test_a_file_of_many_arrays_is_said_in_one_short_line(tmp_path):
    """An HDF5 file of 5,000 datasets was a warning line of 40 KB naming every one: the first ten are named."""
    h5py = pytest.importorskip("h5py")
    from helpers import stderr_lines

    with h5py.File(tmp_path / "many.h5", "w") as f:
        for i in range(30):
            f.create_dataset(f"d{i:02d}", data=np.full((1, 2, 2), i, np.uint8))
    result = cli("compute", tmp_path / "many.h5", "-j", "1", "--mode", "native", expect=0)
    [line] = [line for line in stderr_lines(result) if "arrays counted together" in line]
    assert "(/d00, /d01, /d02, /d03, /d04, /d05, /d06, /d07, /d08, /d09, and 20 more)" in line
    report = json.loads(result.stdout)
    assert report["images"] == 30 and report["raw"]["mean"] == [14.5]


def test_an_archive_found_in_a_folder_is_read_whatever_the_working_directory_holds(tmp_path, monkeypatch):
    """The walk asked each kind of a file's bare name, and the kinds asked the disk whether it was a folder,
    of the working directory: a folder ``a.tar`` there made a walked ``a.tar`` no archive (passed over)."""
    import tarfile

    (tmp_path / "data").mkdir()
    (tmp_path / "cwd" / "a.tar").mkdir(parents=True)
    pixels = np.random.default_rng(12).integers(0, 256, (5, 4, 3), np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    with tarfile.open(tmp_path / "data" / "a.tar", "w") as tar:
        info = tarfile.TarInfo("x.png")
        info.size = len(png.getvalue())
        tar.addfile(info, io.BytesIO(png.getvalue()))
    monkeypatch.chdir(tmp_path / "cwd")
    report = cli_json("compute", tmp_path / "data", "-j", "1")
    assert report["images"] == 1 and not report["skipped"]
