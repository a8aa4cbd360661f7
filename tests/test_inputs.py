"""Datasets as they are stored: file lists, tar/WebDataset shards, zip, npy/npz/IDX arrays, multi-band TIFF.

Each input kind is built in tmp_path and checked against a numpy full load;
the same images as a folder, tar shards, a zip and a file list give the same
numbers; shards, merge, -j and Dask give the same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from helpers import cli, cli_json, interrupt_after
from reference import STAT_KEYS, assert_report_matches, full_load

tifffile = pytest.importorskip("tifffile")


def run(*args, expect=0, input=None):
    return cli(*args, expect=expect, input=input)


def compute(*args, **kwargs) -> dict:
    return json.loads(run("compute", "-q", *args, **kwargs).stdout)


def same_numbers(a: dict, b: dict) -> None:
    for key in (*STAT_KEYS, "pixels", "images", "channels", "max_value"):
        assert a[key] == b[key], key
    assert a["raw"] == b["raw"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 small RGB images (PNG and JPEG, several sizes) in a folder, and their decoded arrays."""
    root = tmp_path_factory.mktemp("photos")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(12)
    arrays = []
    for i in range(24):
        h, w = 10 + i % 5, 12 + i % 7
        a = (rng.integers(0, 200, 3) + rng.integers(0, 56, (h, w, 3))).astype(np.uint8)
        path = folder / (f"{i:03d}.png" if i % 3 else f"{i:03d}.jpg")
        Image.fromarray(a).save(path, quality=95)
        arrays.append(np.asarray(Image.open(path).convert("RGB")))
    return folder, arrays


def _tar(path, files, names, mode="w"):
    with tarfile.open(path, mode) as tar:
        for f, name in zip(files, names):
            tar.add(f, arcname=name)


# -- the same images, stored four ways ----------------------------------------------------------------


def test_folder_tar_shards_zip_and_file_list_give_the_same_numbers(photos, tmp_path):
    folder, arrays = photos
    files = sorted(folder.iterdir())
    from_folder = compute(folder)
    assert_report_matches(from_folder, full_load(arrays), tol=1e-12)
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):  # WebDataset-style shards, named by a brace range
        _tar(shards / f"train-{k:06d}.tar", files[k::3], [f.name for f in files[k::3]])
    same_numbers(compute(shards / "train-{000000..000002}.tar"), from_folder)
    with zipfile.ZipFile(tmp_path / "all.zip", "w") as z:
        for f in files:
            z.write(f, arcname=f"images/{f.name}")
    same_numbers(compute(tmp_path / "all.zip"), from_folder)
    listing = "# made by find\n\n" + "\n".join(map(str, files)) + "\n"
    same_numbers(compute("--files-from", "-", input=listing), from_folder)
    _tar(tmp_path / "all.tar.gz", files, [f.name for f in files], "w:gz")
    same_numbers(compute(tmp_path / "all.tar.gz"), from_folder)


def test_archives_found_in_a_folder_are_read(photos, tmp_path):
    folder, arrays = photos
    files = sorted(folder.iterdir())
    mixed = tmp_path / "mixed"
    (mixed / "loose").mkdir(parents=True)
    for f in files[:10]:
        (mixed / "loose" / f.name).write_bytes(f.read_bytes())
    _tar(mixed / "rest.tar", files[10:], [f.name for f in files[10:]])
    report = compute(mixed)
    same_numbers(report, compute(folder))
    assert report["files"]["count"] == 24


def test_webdataset_ext_keeps_images_and_leaves_out_masks(photos, tmp_path):
    folder, arrays = photos
    files = sorted(folder.iterdir())
    masks = []
    for i, f in enumerate(files):  # a sample: n0001.jpg and its n0001.seg.png mask
        mask = tmp_path / f"{i}.seg.png"
        Image.fromarray(np.full(arrays[i].shape[:2], i, np.uint8)).convert("RGB").save(mask)
        masks.append(mask)
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for i, (f, m) in enumerate(zip(files, masks)):
            tar.add(f, arcname=f"n{i:04d}.{f.suffix[1:]}")
            tar.add(m, arcname=f"n{i:04d}.seg.png")
    both = compute(tmp_path / "shard.tar")
    assert both["images"] == 48
    only_masks = compute(tmp_path / "shard.tar", "--ext", "seg.png")
    assert only_masks["images"] == 24
    images = compute(tmp_path / "shard.tar", "--ext", "jpg,jpeg", "--ext", "png")
    assert images["images"] == 24  # in an archive --ext names the whole WebDataset extension: not seg.png
    jpgs = compute(tmp_path / "shard.tar", "--ext", "jpg")
    assert jpgs["images"] == len([f for f in files if f.suffix == ".jpg"])


def test_tar_shards_and_merge_workers_and_dask_give_the_same_bytes(photos, tmp_path):
    folder, _ = photos
    files = sorted(folder.iterdir())
    _tar(tmp_path / "one.tar", files, [f.name for f in files])
    one = run("compute", "-q", tmp_path / "one.tar", "-j", "1").stdout
    assert run("compute", "-q", tmp_path / "one.tar", "-j", "2").stdout == one
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"p{k}.json")
        run("compute", "-q", tmp_path / "one.tar", "--shard", f"{k}/3", "-o", parts[-1])
    assert run("merge", *reversed(parts)).stdout == one


def test_dask_counts_a_tar_and_an_npy_as_locally(photos, tmp_path):
    distributed = pytest.importorskip("distributed")
    folder, arrays = photos
    files = sorted(folder.iterdir())
    _tar(tmp_path / "one.tar", files, [f.name for f in files])
    np.save(tmp_path / "x.npy", np.stack([a[:10, :12] for a in arrays]))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        for path in (tmp_path / "one.tar", tmp_path / "x.npy"):
            local = run("compute", "-q", path, "-j", "1").stdout
            assert run("compute", "-q", path, "--scheduler", c.scheduler_address).stdout == local


# -- arrays -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW", "NC", "N"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_npy_layouts_match_a_full_load(tmp_path, layout, dtype):
    rng = np.random.default_rng(5)
    top = 255 if dtype == np.uint8 else 65535 if dtype == np.uint16 else 1
    x = rng.integers(0, 256, (37, 6, 5, 3)).astype(dtype) * (257 if dtype == np.uint16 else 1)
    if dtype == np.float32:
        x = rng.normal(0.2, 3, (37, 6, 5, 3)).astype(np.float32)
    stored, args, images = {
        "NHWC": (x, (), [a for a in x]),
        "NCHW": (np.ascontiguousarray(x.transpose(0, 3, 1, 2)), ("--channel-axis", "1"), [a for a in x]),
        "NHW": (x[..., 0], (), [a[..., :1] for a in x]),
        "NC": (x[:, 0, 0, :], (), [a[:1, :1] for a in x]),
        "N": (x[:, 0, 0, 0], (), [a[:1, :1, :1] for a in x]),
    }[layout]
    np.save(tmp_path / "x.npy", stored)
    report = compute(tmp_path / "x.npy", *args)
    ref = full_load(images)
    assert report["max_value"] == top and report["images"] == 37
    assert_report_matches(report, ref, tol=1e-12)
    assert compute(tmp_path / "x.npy", *args, "-j", "2") == report


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_signed_arrays_are_exact_in_their_own_units(tmp_path, dtype):
    """CT slices in Hounsfield units: exact, not rescaled."""
    info = np.iinfo(dtype)
    x = np.random.default_rng(8).integers(info.min, info.max, (9, 7, 6), endpoint=True, dtype=dtype)
    np.save(tmp_path / "ct.npy", x)
    report = compute(tmp_path / "ct.npy")
    values = [Fraction(int(v)) for v in x.ravel()]
    mean = sum(values) / len(values)
    assert report["max_value"] == 1 and report["channels"] == ["L"]
    assert report["mean"] == [float(mean)]
    assert report["var"] == [float(sum((v - mean) ** 2 for v in values) / len(values))]
    assert report["min"] == [float(x.min())] and report["max"] == [float(x.max())]


@pytest.mark.parametrize("values", [
    [10000001, 10000003, 10000002],  # NIST StRD NumAcc1
    [1.2, 1.1] * 500 + [1.2],  # NumAcc2 (shape: 1001 values, as NIST's)
    [1000000.2, 1000000.1] * 500 + [1000000.2],  # NumAcc3
    [10000000.2, 10000000.1] * 500 + [10000000.2],  # NumAcc4
], ids=["NumAcc1", "NumAcc2", "NumAcc3", "NumAcc4"])
def test_float_arrays_stay_accurate_where_the_one_pass_formula_fails(tmp_path, values):
    """Within 1e-12 relative of the exact statistics of the stored doubles, split across tasks too."""
    x = np.array(values, np.float64)
    np.save(tmp_path / "x.npy", x)
    exact = [Fraction(v) for v in x.tolist()]
    mean = sum(exact) / len(exact)
    var = sum((v - mean) ** 2 for v in exact) / len(exact)
    for args in ((), ("-j", "2")):
        report = compute(tmp_path / "x.npy", *args)
        assert abs(Fraction(report["mean"][0]) - mean) <= abs(mean) * Fraction(1, 10**12)
        assert abs(Fraction(report["var"][0]) - var) <= var * Fraction(1, 10**12)
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"p{k}.json")
        run("compute", "-q", tmp_path / "x.npy", "--shard", f"{k}/3", "-o", parts[-1])
    merged = json.loads(run("merge", *parts).stdout)
    assert abs(Fraction(merged["var"][0]) - var) <= var * Fraction(1, 10**12)


def test_npz_every_array_or_one_by_key(tmp_path):
    rng = np.random.default_rng(9)
    a, b = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8), rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "d.npz", train=a, val=b)
    both = compute(tmp_path / "d.npz")
    assert both["images"] == 12
    assert_report_matches(both, full_load([*a, *b]), tol=1e-12)
    only = compute(tmp_path / "d.npz", "--key", "val")
    assert_report_matches(only, full_load(list(b)), tol=1e-12)
    missing = run("compute", "-q", tmp_path / "d.npz", "--key", "test", expect=1)
    assert missing.stderr.count("\n") == 1 and "train, val" in missing.stderr


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_of_the_mnist_family(tmp_path, gz):
    x = np.random.default_rng(10).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    data = b"\0\0\x08\x03" + b"".join(d.to_bytes(4, "big") for d in x.shape) + x.tobytes()
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    report = compute(tmp_path / name, "-j", "2")
    assert report["channels"] == ["L"] and report["images"] == 50
    assert_report_matches(report, full_load([a[..., None] for a in x]), tol=1e-12)
    labels = np.arange(50, dtype=np.uint8) % 10
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + (50).to_bytes(4, "big") + labels.tobytes())
    assert compute(tmp_path / "train-labels-idx1-ubyte")["raw"]["mean"] == [float(labels.mean())]


def test_npy_resume_from_a_checkpoint_gives_the_same_bytes(tmp_path, monkeypatch):
    x = np.random.default_rng(11).integers(0, 256, (3000, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    whole = run("compute", "-q", tmp_path / "x.npy", "-j", "1").stdout
    ck, out = tmp_path / "ck.json", tmp_path / "out.json"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        m.setattr("bnstats.inputs.arrays.BATCH_BYTES", 64 * 192)  # small tasks: several of them
        run("compute", "-q", tmp_path / "x.npy", "-j", "1", "--checkpoint", ck, "-o", out, expect=130)
        assert ck.exists()
        run("compute", "-q", tmp_path / "x.npy", "-j", "2", "--checkpoint", ck, "-o", out)
    assert out.read_text() == whole


# -- multi-band and scientific TIFF ---------------------------------------------------------------------


def _gdal_names(names):
    items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>' for i, n in enumerate(names))
    return [(42112, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True)]


@pytest.mark.parametrize("compression", [None, "zlib", "lzw"])
@pytest.mark.parametrize("planar", ["separate", "contig"])
def test_thirteen_band_int16_tiff(tmp_path, compression, planar):
    pytest.importorskip("imagecodecs") if compression == "lzw" else None
    x = np.random.default_rng(13).integers(-1000, 3000, (13, 20, 30)).astype(np.int16)
    stored = x if planar == "separate" else np.moveaxis(x, 0, -1)
    tifffile.imwrite(tmp_path / "s2.tif", stored, photometric="minisblack", planarconfig=planar,
                     compression=compression)
    report = compute(tmp_path / "s2.tif", "--mode", "native")
    assert report["channels"] == [f"B{i}" for i in range(1, 14)] and report["max_value"] == 1
    ref = full_load([np.moveaxis(x, 0, -1).astype(np.float32)])
    np.testing.assert_allclose(report["raw"]["mean"], ref["raw"]["mean"], rtol=1e-12)
    np.testing.assert_allclose(report["raw"]["var"], ref["raw"]["var"], rtol=1e-12)
    assert report["raw"]["min"] == ref["raw"]["min"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.uint8])
def test_multiband_tiff_types_and_band_names(tmp_path, dtype):
    x = (np.random.default_rng(14).random((6, 16, 12)) * 1000).astype(dtype)
    names = ["blue", "green", "red", "nir", "swir1", "swir2"]
    tifffile.imwrite(tmp_path / "t.tif", x, photometric="minisblack", planarconfig="separate",
                     extratags=_gdal_names(names))
    report = compute(tmp_path / "t.tif", "--mode", "native", "--ignore-value", "0")
    assert report["channels"] == names
    pixels = np.moveaxis(x, 0, -1)
    ref = full_load([pixels], ignore=0)
    assert report["max_value"] == ref["max_value"]
    np.testing.assert_allclose(report["raw"]["mean"], ref["raw"]["mean"], rtol=1e-12)
    np.testing.assert_allclose(report["raw"]["var"], ref["raw"]["var"], rtol=1e-10)


def test_scientific_tiff_without_tifffile_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    x = np.zeros((5, 8, 8), np.int16)
    tifffile.imwrite(tmp_path / "t.tif", x, photometric="minisblack", planarconfig="separate")
    monkeypatch.setitem(sys.modules, "tifffile", None)
    result = run("compute", "-q", tmp_path / "t.tif", "--mode", "native", expect=1)
    assert result.stderr.count("\n") == 1 and 'bnstats[tiff]' in result.stderr


# -- bad input: one line or a skip entry, and everything readable still counted -----------------------


def test_truncated_tar_counts_what_precedes_the_damage(photos, tmp_path):
    folder, arrays = photos
    files = sorted(folder.iterdir())
    _tar(tmp_path / "t.tar", files, [f.name for f in files])
    data = (tmp_path / "t.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[: len(data) * 2 // 3])
    report = compute(tmp_path / "t.tar")
    assert 0 < report["images"] < 24
    assert any(s["path"].startswith(str(tmp_path / "t.tar")) for s in report["skipped"])


def test_truncated_tar_gz_and_corrupt_zip(photos, tmp_path):
    folder, _ = photos
    files = sorted(folder.iterdir())
    _tar(tmp_path / "t.tar.gz", files, [f.name for f in files], "w:gz")
    data = (tmp_path / "t.tar.gz").read_bytes()
    (tmp_path / "t.tar.gz").write_bytes(data[: len(data) // 2])
    report = compute(tmp_path / "t.tar.gz")
    assert report["images"] < 24 and report["skipped"]
    (tmp_path / "z.zip").write_bytes(b"PK\x03\x04 not really a zip")
    result = run("compute", "-q", tmp_path / "z.zip", expect=1)
    assert result.stderr.count("\n") == 1 and "z.zip" in result.stderr


def test_a_member_that_is_not_an_image_is_a_skip_entry_named_archive_member(photos, tmp_path):
    folder, _ = photos
    files = sorted(folder.iterdir())[:3]
    bogus = tmp_path / "bogus.jpg"
    bogus.write_bytes(b"not a jpeg")
    _tar(tmp_path / "t.tar", [*files, bogus], [f.name for f in files] + ["x/bogus.jpg"])
    report = compute(tmp_path / "t.tar")
    assert report["images"] == 3
    assert [s["path"] for s in report["skipped"]] == [f"{tmp_path / 't.tar'}:x/bogus.jpg"]
    strict = run("compute", "-q", tmp_path / "t.tar", "--strict", expect=1)
    assert "t.tar:x/bogus.jpg" in strict.stderr and strict.stderr.count("\n") == 1


@pytest.mark.parametrize("array,args,words", [
    (np.zeros((4, 3), np.complex64), (), "complex"),
    (np.array([{"a": 1}, None], dtype=object), (), "object"),
    (np.zeros(4, dtype=[("a", "u1"), ("b", "f4")]), (), "structured"),
    (np.zeros((4, 3, 3), np.uint8), ("--channel-axis", "3"), "--channel-axis"),
])
def test_unusable_arrays_are_one_line_errors(tmp_path, array, args, words):
    np.save(tmp_path / "a.npy", array, allow_pickle=True)
    result = run("compute", "-q", tmp_path / "a.npy", *args, expect=1)
    assert result.stderr.count("\n") == 1 and words.split()[0] in result.stderr


def test_brace_range_with_a_missing_shard_is_a_usage_error(tmp_path):
    (tmp_path / "s-000.tar").write_bytes(b"")
    result = run("compute", "-q", str(tmp_path / "s-{000..002}.tar"), expect=2)
    assert result.stderr.count("\n") == 1 and "s-001.tar" in result.stderr


def test_file_list_with_missing_files_skips_them(photos, tmp_path):
    folder, arrays = photos
    files = sorted(map(str, folder.iterdir()))
    (tmp_path / "list.txt").write_text("\n".join(files[:5] + [str(tmp_path / "gone.png")]) + "\n")
    report = compute("--files-from", tmp_path / "list.txt")
    assert report["images"] == 5 and report["skipped"][0]["path"] == str(tmp_path / "gone.png")
    nothing = run("compute", "-q", expect=2)
    assert "--files-from" in nothing.stderr


@pytest.mark.slow
def test_files_from_stdin_in_a_real_pipe(photos):
    folder, _ = photos
    listing = "\n".join(map(str, sorted(folder.iterdir())))
    proc = subprocess.run([sys.executable, "-m", "bnstats", "compute", "-q", "--files-from", "-"],
                          input=listing, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 24


def test_compare_on_array_rows_and_a_tar(photos, tmp_path):
    folder, arrays = photos
    files = sorted(folder.iterdir())
    np.save(tmp_path / "x.npy", np.stack([a[:10, :12] for a in arrays]))
    _tar(tmp_path / "t.tar", files, [f.name for f in files])
    for path in (tmp_path / "x.npy", tmp_path / "t.tar"):
        doc = json.loads(run("compare", "-q", path, "--json", "--limit", "20").stdout)
        assert doc["agree"] and doc["images"] == 20 and doc["naive"]["images"] == 20


def test_tar_resume_from_a_checkpoint_gives_the_same_bytes(photos, tmp_path, monkeypatch):
    folder, _ = photos
    files = sorted(folder.iterdir())
    _tar(tmp_path / "one.tar", files, [f.name for f in files])
    whole = run("compute", "-q", tmp_path / "one.tar", "-j", "1").stdout
    ck, out = tmp_path / "ck.json", tmp_path / "out.json"
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        run("compute", "-q", tmp_path / "one.tar", "-j", "1", "--checkpoint", ck, "-o", out, expect=130)
    assert json.loads(ck.read_text())["files_done"] == 16
    run("compute", "-q", tmp_path / "one.tar", "-j", "2", "--checkpoint", ck, "-o", out)
    assert out.read_text() == whole


def test_tar_made_with_dot_member_names_is_read(photos, tmp_path):
    """``tar -cf x.tar -C dir .`` names members ``./NAME``: they are not hidden files."""
    folder, arrays = photos
    with tarfile.open(tmp_path / "dot.tar", "w") as tar:
        tar.add(folder, arcname=".")
        hidden = tmp_path / ".secret.png"
        Image.fromarray(arrays[0]).save(hidden)
        tar.add(hidden, arcname="./.secret.png")
    report = compute(tmp_path / "dot.tar")
    same_numbers(report, compute(folder))


def test_a_rewritten_zip_is_read_again_in_the_same_process(tmp_path):
    """Open zips are kept per process; one rewritten at the same path is parsed again, even with the same
    size and modification time (rsync -a, cp -p)."""

    def write(path, value, count):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(buffer, format="BMP")  # fixed size
                z.writestr(zipfile.ZipInfo(f"{i}.bmp", (2020, 1, 1, 0, 0, 0)), buffer.getvalue())

    path = tmp_path / "set.zip"
    for value, count in ((10, 3), (200, 5)):
        write(path, value, count)
        os.utime(path, ns=(value * 10**9, value * 10**9))
        result = json.loads(run("compute", "-q", path, "-j", "1").stdout)
        assert result["images"] == count and result["raw"]["mean"] == [float(value)] * 3
    stat = path.stat()
    same = tmp_path / "same.zip"
    write(same, 77, 5)
    assert same.stat().st_size == stat.st_size
    os.utime(same, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(same, path)
    assert json.loads(run("compute", "-q", path, "-j", "1").stdout)["raw"]["mean"] == [77.0] * 3


def test_archives_named_in_any_order_list_the_same_sorted_items(tmp_path):
    from bnstats.inputs.select import select

    for name, value in (("b.tar", 200), ("a.tar", 10)):
        with tarfile.open(tmp_path / name, "w") as tar:
            image = tmp_path / f"{name}.png"
            Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(image)
            tar.add(image, arcname="x.png")
    forward = select([tmp_path / "a.tar", tmp_path / "b.tar"]).keys
    assert select([tmp_path / "b.tar", tmp_path / "a.tar"]).keys == forward == sorted(forward)


def test_big_endian_npy_counts_as_its_native_twin(tmp_path):
    x = np.random.default_rng(12).integers(0, 65536, (40, 6, 5, 3)).astype(">u2")
    np.save(tmp_path / "be.npy", x)
    np.save(tmp_path / "le.npy", x.astype("<u2"))
    be = compute(tmp_path / "be.npy", "--mode", "native", "-j", "1")
    same_numbers(be, compute(tmp_path / "le.npy", "--mode", "native", "-j", "1"))
    assert be["images"] == 40


def test_a_name_stored_twice_in_a_tar_is_its_last_copy_however_it_is_read(tmp_path):
    """tar keeps every copy of a name (an append); extraction, the listing and seeking reads take the last. A
    compressed tar is read as a stream: it must take the same copy, once (it took the first, or both)."""
    def png(value):
        buffer = io.BytesIO()
        Image.new("L", (4, 4), value).save(buffer, "PNG")
        return buffer.getvalue()

    for order in (("a", 0), ("b", 100), ("a", 200)), (("a", 0), ("a", 200), ("b", 100)):
        results = []
        for name, mode in (("x.tar", "w"), ("x.tar.gz", "w:gz")):
            with tarfile.open(tmp_path / name, mode) as tar:
                for member, value in order:
                    data = png(value)
                    info = tarfile.TarInfo(f"{member}.png")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            results.append(cli_json("compute", tmp_path / name, "-q", "-j", "1", "--mode", "gray"))
        assert [r["images"] for r in results] == [2, 2]
        assert results[0]["mean"] == results[1]["mean"] == [(200 + 100) / 2 / 255]


# -- an input reached twice counts once ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    """Six gray 3x2 images as each kind of container, in one folder ``d``; and their report as an .npy."""
    import h5py
    import zarr

    d = tmp_path_factory.mktemp("twice") / "d"
    d.mkdir()
    x = np.repeat(np.arange(6, dtype=np.uint8) * 40, 6).reshape(6, 3, 2, 1)
    np.save(d / "x.npy", x)
    np.savez(d / "x.npz", a=x)
    with h5py.File(d / "x.h5", "w") as f:
        f.create_dataset("d", data=x)
    zarr.open_array(str(d / "x.zarr"), mode="w", shape=x.shape, dtype=x.dtype, chunks=(4, 3, 2, 1))[:] = x
    pngs = []
    for i, image in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(image[..., 0]).save(buf, "PNG")
        pngs.append((f"{i}.png", buf.getvalue()))
    for name, mode in (("x.tar", "w"), ("x.tar.gz", "w:gz")):
        with tarfile.open(d / name, mode) as tar:
            for member, data in pngs:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(d / "x.zip", "w") as archive:
        for member, data in pngs:
            archive.writestr(member, data)
    return d, cli_json("compute", d / "x.npy", "-q", "--mode", "gray")["raw"]


@pytest.mark.parametrize("name", ["x.npy", "x.npz", "x.h5", "x.zarr", "x.tar", "x.tar.gz", "x.zip"])
def test_a_container_named_twice_or_named_and_walked_counts_once(containers, name, monkeypatch):
    # docs/inputs.md: each file counts once, however it is reached. Image files did; an array file or store
    # named twice counted twice (12 images, exit 0), and a tar named twice stopped the run ('a member of both')
    d, once = containers
    monkeypatch.chdir(d)
    trailing = "/" if name.endswith(".zarr") else ""  # a store is a folder
    for twice in ([name, name], [name, f"./{name}{trailing}"], [name, str(d / name)]):
        report = cli_json("compute", *twice, "-q", "--mode", "gray")
        assert report["images"] == 6 and report["raw"] == once, twice
    walked = cli_json("compute", ".", name, "-q", "--mode", "gray")
    assert walked["images"] == 6 * 7  # the folder's seven containers, this one once
    assert walked["raw"]["mean"] == once["mean"]
