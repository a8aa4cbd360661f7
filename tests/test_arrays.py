"""Array inputs (npy, npz, idx) and the decoders' bounds: headers that claim more than the file holds, truncated
arrays, decompression bombs in every decoder, and the messages that say what to do.

Hostile inputs run in a subprocess whose peak memory and time are measured; every count is checked
against a numpy float64 full load.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import subprocess
import sys
import struct
import time
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import SETTINGS, cli, cli_json, one_line_error, stderr_lines, tiff_bytes
from reference import assert_report_matches, center_crop, full_load

MiB = 1 << 20


def bounded_run(*args, env=None, seconds: float = 10, max_rss: int = 300 * MiB):
    """``bnstats ARGS`` in a child process that must end within ``seconds`` using at most ``max_rss``
    (its address space is capped at 3 GiB, so a regression fails here instead of swapping the machine)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bnstats", *map(str, args)], capture_output=True, text=True,
                          timeout=seconds + 20, preexec_fn=cap, env={**os.environ, **(env or {})})
    took = time.monotonic() - started
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert "Traceback" not in proc.stderr, proc.stderr
    assert took < seconds, f"took {took:.1f} s"
    # ru_maxrss of the children is the largest of any child so far: only a rise says something about this one
    assert rss <= max(max_rss, before * 1024), f"peak RSS {rss / MiB:.0f} MiB"
    return proc


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(shape, dtype="|u1") -> bytes:
    """A ``.npy`` header declaring ``shape`` (no data)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def idx_bytes(array: np.ndarray, declared: int | None = None) -> bytes:
    shape = (declared if declared is not None else array.shape[0], *array.shape[1:])
    return b"\0\0\x08" + bytes([array.ndim]) + b"".join(d.to_bytes(4, "big") for d in shape) + array.tobytes()


# -- 1. headers that claim more than the file holds -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(10**9, 28, 28), (2**40,)], ids=["1e9x28x28", "2^40"])
def test_a_header_claiming_billions_of_rows_counts_what_is_there(tmp_path, shape):
    rows = np.arange(10 * int(np.prod(shape[1:])), dtype=np.uint8).reshape(10, *shape[1:])
    path = tmp_path / "x.npy"
    path.write_bytes(npy_header(shape) + rows.tobytes())
    proc = bounded_run("compute", "-q", path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == 10
    width = len(str(shape[0] - 1))
    assert report["skipped"] == [{"path": f"{path}:{10:0{width}d}-{shape[0] - 1}",
                                  "error": f"file ends after row 9 of {shape[0]:,} declared (truncated?)"}]
    strict = bounded_run("compute", "-q", "--strict", path)
    assert strict.returncode == 1 and len(strict.stderr.strip().splitlines()) == 1, strict.stderr
    assert f"{path}:" in strict.stderr


@pytest.mark.slow
def test_an_idx_header_claiming_a_billion_images(tmp_path):
    rows = np.zeros((3, 28, 28), np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(rows, declared=10**9))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(rows, declared=10**9)))
    for name in ("t10k-images-idx3-ubyte", "train-images-idx3-ubyte.gz"):
        proc = bounded_run("compute", "-q", tmp_path / name)
        report = json.loads(proc.stdout)
        assert report["images"] == 3
        assert [s["path"] for s in report["skipped"]] == [f"{tmp_path / name}:000000003-999999999"]


def test_a_compressed_npz_member_declaring_a_bomb_is_one_skip_entry(tmp_path, small_bounds):
    zeros = np.zeros((200, 64, 64), np.uint8)
    good = np.full((3, 4, 4), 7, np.uint8)
    np.savez_compressed(tmp_path / "d.npz", bomb=zeros, good=good)
    small_bounds(ratio=10, ratio_floor=4096)
    report = cli_json("compute", "-q", tmp_path / "d.npz")
    assert report["images"] == 3 and report["mean"] == [7 / 255]
    [entry] = report["skipped"]
    assert entry["path"] == f"{tmp_path / 'd.npz'}:bomb"
    assert "declares 819,328 bytes inflated from" in entry["error"] and "BNSTATS_MAX_RATIO" in entry["error"]


def test_a_gz_idx_over_the_inflation_bound_is_one_skip_entry(tmp_path, small_bounds):
    rows = np.zeros((500, 28, 28), np.uint8)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(rows)))
    small_bounds(ratio=10, ratio_floor=4096)
    result = cli("compute", "-q", path, expect=1)  # nothing else to count: the run fails, naming the file
    assert str(path) in result.stderr and "BNSTATS_MAX_RATIO" in result.stderr


# -- 1. a compressed member is inflated once per task, not once per batch ---------------------------------


def test_a_compressed_member_is_inflated_once_per_task(tmp_path, monkeypatch):
    """Every byte of the member is inflated at most (COMPRESSED_TASKS + 1) / 2 times in all (it was once per
    batch of rows: 4 MiB batches of a 288 MiB member inflated it 36 times)."""
    from bnstats.inputs import arrays

    x = np.random.default_rng(1).integers(0, 256, (400, 32, 32), dtype=np.uint8)
    np.savez_compressed(tmp_path / "d.npz", x=x)
    monkeypatch.setattr(arrays, "BATCH_BYTES", 4096)  # 100 batches of 4 rows
    inflated = []
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = real_read(self, n)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    report = cli_json("compute", "-q", "-j", "1", tmp_path / "d.npz")
    assert report["images"] == 400
    assert_report_matches(report, full_load([a[..., None] for a in x]), tol=1e-12)
    # listing reads each header once; the tasks inflate 1/4 + 2/4 + 3/4 + 4/4 of the data
    assert sum(inflated) <= (arrays.COMPRESSED_TASKS + 1) / 2 * x.nbytes + 64 * 1024


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_members_give_the_same_bytes_for_j1_j2_and_npy(tmp_path, monkeypatch, compress):
    from bnstats.inputs import arrays

    x = np.random.default_rng(2).integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    with zipfile.ZipFile(tmp_path / "d.npz", "w", compress) as z:
        z.writestr("x.npy", npy_bytes(x))
    monkeypatch.setattr(arrays, "BATCH_BYTES", 64 * 192 * 3)
    one = cli_json("compute", "-q", "-j", "1", tmp_path / "d.npz")
    two = cli_json("compute", "-q", "-j", "2", tmp_path / "d.npz")
    assert one == two and one["images"] == 300
    assert_report_matches(one, full_load(list(x)), tol=1e-12)


# -- 2. truncated arrays: the rows present count, the missing range is one skip entry ---------------------


def test_a_truncated_npy_counts_the_rows_present_and_names_the_missing_range(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (10000, 2, 2), dtype=np.uint8)
    data = npy_bytes(x)
    path = tmp_path / "x.npy"
    path.write_bytes(data[: len(data) - 9000 * 4 + 1])  # 1000 rows and 1 byte of the next
    report = cli_json("compute", "-q", path)
    assert report["images"] == 1000
    assert report["skipped"] == [{"path": f"{path}:1000-9999",
                                  "error": "file ends after row 999 of 10,000 declared (truncated?)"}]
    assert_report_matches(report, full_load([a[..., None] for a in x[:1000]]), tol=1e-12)
    assert cli_json("compute", "-q", "-j", "2", path) == report


def test_a_truncated_npz_member_and_idx(tmp_path):
    x = np.random.default_rng(4).integers(0, 256, (50, 5, 5), dtype=np.uint8)
    cut = npy_bytes(x)[: -20 * 25]
    for compress in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        path = tmp_path / f"d{compress}.npz"
        with zipfile.ZipFile(path, "w", compress) as z:
            z.writestr("train.npy", cut)
        report = cli_json("compute", "-q", path)
        assert report["images"] == 30
        assert report["skipped"] == [{"path": f"{path}:train:30-49",
                                      "error": "member ends after row 29 of 50 declared (truncated?)"}]
        assert_report_matches(report, full_load([a[..., None] for a in x[:30]]), tol=1e-12)
    data = idx_bytes(x)[: -20 * 25 - 1]
    (tmp_path / "a-idx3-ubyte").write_bytes(data)
    (tmp_path / "b-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    (tmp_path / "c-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x))[:-300])  # the gzip stream cut
    for name, rows in (("a-idx3-ubyte", 29), ("b-idx3-ubyte.gz", 29)):
        report = cli_json("compute", "-q", tmp_path / name)
        assert report["images"] == rows
        assert report["skipped"] == [{"path": f"{tmp_path / name}:{rows}-49",
                                      "error": f"file ends after row {rows - 1} of 50 declared (truncated?)"}]
    cut_gz = cli_json("compute", "-q", tmp_path / "c-idx3-ubyte.gz")
    present = cut_gz["images"]
    assert 0 < present < 50 and [s["path"] for s in cut_gz["skipped"]] == [f"{tmp_path / 'c-idx3-ubyte.gz'}:{present}-49"]
    assert_report_matches(cut_gz, full_load([a[..., None] for a in x[:present]]), tol=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 40), cut=st.integers(0, 40 * 6), kind=st.sampled_from(["npy", "idx", "idx.gz", "npz"]))
def test_any_truncation_counts_exactly_the_whole_rows_present(tmp_path_factory, rows, cut, kind):
    """Whatever byte an array file ends at: the whole rows before it are counted, exactly, and the rest is
    one skip entry ``FILE:FIRST-LAST``."""
    folder = tmp_path_factory.mktemp("cut")
    x = (np.arange(rows * 6, dtype=np.uint8) * 37).reshape(rows, 2, 3)
    data = idx_bytes(x) if kind.startswith("idx") else npy_bytes(x)
    data = data[: len(data) - min(cut, rows * 6)]
    path = folder / {"npy": "x.npy", "idx": "x-idx3-ubyte", "idx.gz": "x-idx3-ubyte.gz", "npz": "x.npz"}[kind]
    if kind == "npz":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("a.npy", data)
    else:
        path.write_bytes(gzip.compress(data) if kind == "idx.gz" else data)
    present = rows - -(-min(cut, rows * 6) // 6)
    result = cli("compute", "-q", path)
    prefix = f"{path}:a" if kind == "npz" else str(path)
    width = len(str(rows - 1))
    missing = [f"{prefix}:{present:0{width}d}-{rows - 1:0{width}d}"] if present < rows else []
    if present == 0:
        assert result.exit_code == 1  # nothing to count
        return
    report = json.loads(result.stdout)
    assert report["images"] == present and [s["path"] for s in report["skipped"]] == missing
    assert_report_matches(report, full_load([a.reshape(2, 3, 1) for a in x[:present]]), tol=1e-12)


# -- 4. decompression bombs: refused from the header, in every decoder ------------------------------------


def png_claiming(width, height, depth=8, colour=2) -> bytes:
    """A PNG whose (valid) header claims ``width`` x ``height``, with one small IDAT."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096))) + chunk(b"IEND", b"")


def jpeg_claiming(width, height) -> bytes:
    """A small JPEG whose frame header is patched to claim ``width`` x ``height``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def bmp_claiming(width, height) -> bytes:
    """A BMP header claiming ``width`` x ``height`` at 24 bits, with almost no pixel data."""
    import struct

    return (b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0) + bytes(64))


HOSTILE = {
    "tiled-5-band-40000.tif": lambda: tiff_bytes(40000, 40000, 5, 8, tile=(1024, 1024)),
    "bits-2^32-1.tif": lambda: tiff_bytes(64, 64, 1, 2**32 - 1, compression=1),
    "rgb-bits-2^32-1.tif": lambda: tiff_bytes(64, 64, 3, 2**32 - 1, compression=1),
    "rgb-40000.tif": lambda: tiff_bytes(40000, 40000, 3, 8, compression=1),
    "rgb16-20000.tif": lambda: tiff_bytes(20000, 20000, 3, 16, tile=(1024, 1024)),
    "40000.png": lambda: png_claiming(40000, 40000),
    "rgb16-20000.png": lambda: png_claiming(20000, 20000, 16, 2),
    "30000.jpg": lambda: jpeg_claiming(30000, 30000),
    "20000.bmp": lambda: bmp_claiming(20000, 20000),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rgb", "native"])
def test_hostile_headers_are_refused_before_decoding(tmp_path, mode):
    """Each claims gigabytes in a few kilobytes: every one is a skip entry naming the bound, within
    10 s and 300 MiB, whichever decoder would have read it (Pillow, tifffile, OpenCV, simplejpeg, PNG)."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    for name, make in HOSTILE.items():
        data = make()
        assert len(data) < 40 * 1024
        (folder / name).write_bytes(data)
    from PIL import Image

    Image.new("RGB", (4, 4), (255, 0, 0)).save(folder / "good.png")
    proc = bounded_run("compute", "-q", "--mode", mode, folder)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == 1 and proc.stderr == ""
    errors = {os.path.basename(s["path"]): s["error"] for s in report["skipped"]}
    assert sorted(errors) == sorted(HOSTILE)
    for name, error in errors.items():
        assert len(error.splitlines()) == 1
        if "bits" in name:
            assert "4294967295 bits per sample" in error
        else:
            assert error.startswith(("LimitError: ", "DecompressionBombError: ")), (name, error)
            assert "BNSTATS_MAX_" in error, (name, error)


def test_pillow_raises_at_our_bound_with_a_clear_message(tmp_path, small_bounds):
    """limits.install sets Pillow's MAX_IMAGE_PIXELS: its DecompressionBombError comes at our bound,
    and the skip entry says which variable raises it."""
    from PIL import Image

    small_bounds(pixels=10_000)
    Image.new("RGB", (100, 100)).save(tmp_path / "at.bmp")  # 10,000 pixels: allowed
    Image.new("RGB", (101, 100)).save(tmp_path / "over.bmp")
    report = cli_json("compute", "-q", tmp_path)
    assert report["images"] == 1
    [entry] = report["skipped"]
    assert entry == {"path": str(tmp_path / "over.bmp"), "error": "DecompressionBombError: image of 10,100 pixels is over "
                     "the limit of 10,000 (decompression-bomb guard; raise it with BNSTATS_MAX_PIXELS)"}


def test_decoded_bytes_bound_applies_to_16bit_colour_and_tifffile(tmp_path, small_bounds):
    """16-bit colour (OpenCV) and many bands (tifffile) have more bytes per pixel than Pillow's pixel
    count sees: the decoded-bytes bound is checked from the header."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("cv2")
    from PIL import Image  # noqa: F401

    rgb16 = np.full((40, 50, 3), 1000, np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", rgb16, photometric="rgb")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((10, 10, 13), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    small_bounds(image_bytes=40 * 50 * 6 - 1)
    report = cli_json("compute", "-q", "--mode", "native", tmp_path / "a.tif", tmp_path / "b.tif")
    assert report["images"] == 1 and report["channels"] == [f"B{i}" for i in range(1, 14)]
    [entry] = report["skipped"]
    assert entry["path"] == str(tmp_path / "a.tif") and "12,000 decoded bytes" in entry["error"]
    assert "BNSTATS_MAX_IMAGE_BYTES" in entry["error"]


# -- 5. messages that say what to do ----------------------------------------------------------------------


def test_an_npz_of_images_and_labels_names_the_key(tmp_path):
    np.savez(tmp_path / "cifar.npz", x=np.zeros((5, 8, 8, 3), np.uint8), y=np.arange(5))
    result = cli("compute", "-q", tmp_path / "cifar.npz", expect=1)
    assert len(result.stderr.splitlines()) == 1
    assert "--key x" in result.stderr and "x (5, 8, 8, 3), y (5,)" in result.stderr
    assert "--mode" not in result.stderr
    assert cli_json("compute", "-q", "--key", "x", tmp_path / "cifar.npz")["images"] == 5


# -- 6. small items of stats and settings -----------------------------------------------------------------


@pytest.mark.parametrize("layout", [None, "NCHW", "HW"])
def test_running_stats_round_trip_keeps_the_layout(layout):
    from bnstats.statistics.running import RunningStats

    rs = RunningStats(layout=layout)
    again = RunningStats.from_dict(rs.to_dict())
    assert again.layout_hint == layout
    batch = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    if layout == "NCHW":  # the rebuilt accumulator reads the next batch as the first one did
        rs.update(batch)
        again = RunningStats.from_dict(rs.to_dict())
        again.update(batch)
        rs.update(batch)
        assert again == rs and again.channels == 3


def test_a_float_array_of_4_channels_is_named_c0_to_c3(tmp_path):
    x = np.random.default_rng(6).normal(size=(20, 4)).astype(np.float32)
    np.save(tmp_path / "features.npy", x)
    np.save(tmp_path / "rgba.npy", (x * 40 + 128).astype(np.uint8).reshape(20, 1, 1, 4))
    assert cli_json("compute", "-q", tmp_path / "features.npy")["channels"] == ["C0", "C1", "C2", "C3"]
    assert cli_json("compute", "-q", tmp_path / "rgba.npy")["channels"] == ["R", "G", "B", "A"]
    np.save(tmp_path / "rgb.npy", x[:, :3])
    assert cli_json("compute", "-q", tmp_path / "rgb.npy")["channels"] == ["R", "G", "B"]


def test_settings_say_which_size_is_the_width_and_old_reports_still_merge(tmp_path):
    from PIL import Image

    for k in range(2):
        Image.new("RGB", (80, 60), (k, 2, 3)).save(tmp_path / f"{k}.png")
    parts = [tmp_path / f"part{k}.json" for k in range(2)]
    for k, out in enumerate(parts):
        cli("compute", "-q", "--resize", "64x48", "--center-crop", "32x16", "--shard", f"{k}/2",
            tmp_path / "0.png", tmp_path / "1.png", "-o", out, expect=0)
    report = json.loads(parts[0].read_text())
    assert report["settings"]["resize"] == {"width": 64, "height": 48}
    assert report["settings"]["center_crop"] == {"width": 32, "height": 16}
    old = json.loads(parts[1].read_text())  # as earlier versions wrote it: [width, height]
    old["settings"].update(resize=[64, 48], center_crop=[32, 16])
    parts[1].write_text(json.dumps(old))
    merged = cli_json("merge", *parts)
    assert merged["images"] == 2 and merged["settings"]["resize"] == {"width": 64, "height": 48}


# -- 3. multi-page TIFF: every page an image, keys FILE:PAGE -----------------------------------------------


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npy_header(descr: str, shape: tuple, version: int = 1, length: int | None = None) -> bytes:
    """A hand-written ``.npy`` header (numpy writes no lying one)."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    text = text.ljust(117) + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", length or len(text)) + text


DAMAGED_HEADERS = {
    "negative rows": _npy_header("|u1", (-10, 4, 4, 3)) + bytes(480),
    "negative side": _npy_header("|u1", (3, -4, 4, 3)) + bytes(480),
    "header longer than the file": b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{",
    "no header at all": b"\x93NUMPY",
    "not an npy": b"hello world, not an array",
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_HEADERS))
def test_a_damaged_npy_among_good_ones_is_a_skip_entry(tmp_path, damage):
    good = np.arange(10 * 4 * 4 * 3, dtype=np.uint8).reshape(10, 4, 4, 3)
    np.save(tmp_path / "a.npy", good)
    (tmp_path / "b.npy").write_bytes(DAMAGED_HEADERS[damage])
    out = cli_json("compute", tmp_path, "-q", "-j", "1")
    assert out["images"] == 10
    assert out["raw"]["mean"] == pytest.approx(good.reshape(-1, 3).astype(np.float64).mean(axis=0).tolist())
    assert [entry["path"] for entry in out["skipped"]] == [str(tmp_path / "b.npy")]
    strict = cli("compute", tmp_path, "-q", "-j", "1", "--strict", expect=1)
    assert "b.npy" in strict.stderr and len(strict.stderr.strip().splitlines()) == 1


def test_a_negative_shape_alone_is_no_silent_empty_run(tmp_path):
    (tmp_path / "neg.npy").write_bytes(DAMAGED_HEADERS["negative rows"])
    result = cli("compute", tmp_path / "neg.npy", "-q", expect=1)
    assert "negative" in result.stderr


@SETTINGS
@given(rows=st.integers(1, 6), side=st.integers(-3, -1), where=st.integers(0, 2))
def test_any_negative_dimension_is_named_never_an_empty_count(tmp_path_factory, rows, side, where):
    folder = tmp_path_factory.mktemp("neg")
    shape = [rows, 2, 2]
    shape[where] = side
    (folder / "x.npy").write_bytes(_npy_header("|u1", tuple(shape)) + bytes(64))
    np.save(folder / "y.npy", np.ones((2, 2, 2), np.uint8))
    out = cli_json("compute", folder, "-q", "-j", "1")
    assert out["images"] == 2
    assert [entry["path"] for entry in out["skipped"]] == [str(folder / "x.npy")]


def _npz_with_copies(path, copies: list[np.ndarray], others: dict | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        with zipfile.ZipFile(path, "w") as z:
            for array in copies:
                z.writestr("x.npy", _npy_bytes(array))
            for name, array in (others or {}).items():
                z.writestr(name + ".npy", _npy_bytes(array))


def test_an_npz_member_stored_twice_is_not_counted_twice(tmp_path):
    # numpy.load reads the last copy; the listing took the name twice and counted the last copy twice
    first, last = np.zeros((10, 4, 4, 3), np.uint8), np.full((10, 4, 4, 3), 255, np.uint8)
    _npz_with_copies(tmp_path / "d.npz", [first, last])
    out = cli_json("compute", tmp_path / "d.npz", "-q", "-j", "1")
    assert out["images"] == 10
    assert out["raw"]["mean"] == [255.0, 255.0, 255.0]
    assert [entry["path"] for entry in out["skipped"]] == [f"{tmp_path / 'd.npz'}:x"]
    assert "2 times" in out["skipped"][0]["error"]


@SETTINGS
@given(copies=st.integers(1, 4), rows=st.lists(st.integers(1, 5), min_size=4, max_size=4),
       other=st.booleans())
def test_npz_counts_each_name_once_as_numpy_load_reads_it(tmp_path_factory, copies, rows, other):
    folder = tmp_path_factory.mktemp("npz")
    arrays = [np.full((rows[i], 2, 2, 3), 10 * i + 1, np.uint8) for i in range(copies)]
    others = {"z": np.full((3, 2, 2, 3), 7, np.uint8)} if other else None
    _npz_with_copies(folder / "d.npz", arrays, others)
    with np.load(folder / "d.npz") as loaded:
        expected = np.concatenate([loaded[name] for name in sorted(set(loaded.files))])
    out = cli_json("compute", folder / "d.npz", "-q", "-j", "1")
    assert out["images"] == len(expected)
    assert out["raw"]["mean"] == pytest.approx(expected.reshape(-1, 3).astype(np.float64).mean(axis=0).tolist())
    named = [entry["path"] for entry in out["skipped"]]
    assert named == ([f"{folder / 'd.npz'}:x"] if copies > 1 else [])


def test_an_npz_whose_comment_holds_an_end_record_is_a_skip_entry(tmp_path):
    np.save(tmp_path / "a.npy", np.full((2, 2, 2, 3), 9, np.uint8))
    with zipfile.ZipFile(tmp_path / "b.npz", "w") as z:
        z.writestr("x.npy", _npy_bytes(np.zeros((5, 2, 2, 3), np.uint8)))
        z.comment = b"PK\x05\x06" + bytes(18)
    out = cli_json("compute", tmp_path, "-q", "-j", "1")
    assert out["images"] == 2
    assert [entry["path"] for entry in out["skipped"]] == [str(tmp_path / "b.npz")]


def _run(*args):
    """A real process (numpy's warnings print to the real stderr): (exit code, stdout, stderr)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "bnstats", *map(str, args)], capture_output=True, text=True,
                          timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("extra", [[], ["--covariance"]])
def test_values_past_float64_fail_in_one_line_without_a_raw_warning(tmp_path, extra):
    np.save(tmp_path / "huge.npy", np.full((2, 2, 2, 3), 1e308))
    code, out, err = _run("compute", tmp_path / "huge.npy", "-q", "-j", "1", *extra)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1, err  # was a RuntimeWarning (and LinAlgError's traceback)
    assert "not a finite number" in err


@pytest.mark.parametrize("dtype", ["float64", "int64", "uint64", "uint32"])
def test_compare_takes_arrays_of_8_byte_samples(tmp_path, dtype):
    np.save(tmp_path / "a.npy", (np.arange(3 * 2 * 2 * 3) % 7).reshape(3, 2, 2, 3).astype(dtype))
    result = cli("compare", tmp_path / "a.npy", "-q", expect=0)  # was KeyError: 8
    assert "agree" in result.stdout


UNCOUNTABLE = {
    "objects": lambda path: np.save(path, np.array([1, None], dtype=object), allow_pickle=True),
    "complex": lambda path: np.save(path, np.zeros((2, 2, 2), np.complex64)),
    "structured": lambda path: np.save(path, np.zeros(3, dtype=[("a", "u1"), ("b", "f4")])),
    "scalar": lambda path: np.save(path, np.array(5, np.uint8)),
    "five axes": lambda path: np.save(path, np.zeros((2, 2, 2, 2, 2), np.uint8)),
    "images of no pixel": lambda path: np.save(path, np.zeros((3, 0, 4, 3), np.uint8)),
}


@pytest.mark.parametrize("kind", sorted(UNCOUNTABLE))
def test_an_uncountable_array_among_good_ones_is_a_skip_entry(tmp_path, kind):
    np.save(tmp_path / "a.npy", np.full((2, 2, 2, 3), 7, np.uint8))
    UNCOUNTABLE[kind](tmp_path / "b.npy")
    out = cli_json("compute", tmp_path, "-q", "-j", "1")
    assert out["images"] == 2  # "images of no pixel" made it 5
    assert [entry["path"] for entry in out["skipped"]] == [str(tmp_path / "b.npy")]


def test_ambiguous_array_shapes_are_refused_with_the_fix():
    """A gray (N, H, W) batch or an NCHW batch once counted W "channels" without a word."""
    from bnstats import RunningStats

    rng = np.random.default_rng(0)
    gray_batch = rng.integers(0, 256, (4, 8, 9), dtype=np.uint8)
    with pytest.raises(ValueError, match="layout='NHW'"):
        RunningStats().update(gray_batch)
    nchw = rng.integers(0, 256, (2, 3, 8, 9), dtype=np.uint8)
    with pytest.raises(ValueError, match="layout='NCHW'"):
        RunningStats().update(nchw)
    by_layout = RunningStats(layout="NHW")
    by_layout.update(gray_batch)
    assert by_layout.channels == 1 and by_layout.images == 4
    assert np.array_equal(by_layout.counts, _stats_of(gray_batch.reshape(-1, 1, 1)).counts)
    nchw_stats = RunningStats()
    nchw_stats.update(nchw, layout="NCHW")
    assert nchw_stats == _stats_of(np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))) and nchw_stats.images == 2
    chw = RunningStats(layout="CHW")
    chw.update(nchw[0])
    assert chw == _stats_of(nchw[0].transpose(1, 2, 0))
    with pytest.raises(ValueError, match="does not fit"):
        RunningStats(layout="NHWC").update(gray_batch)
    with pytest.raises(ValueError, match="layout must be one of"):
        RunningStats(layout="WHC")
    many = RunningStats(layout="HWC")
    many.update(rng.random((5, 6, 13)))  # 13 bands: fine when said
    assert many.channels == 13


def _stats_of(x):
    from bnstats import RunningStats

    rs = RunningStats()
    rs.update(x)
    return rs


# -- --ignore-value per band: a nodata colour ------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bands=st.integers(1, 5), nodata_share=st.floats(0, 1))
def test_per_band_ignore_values_leave_out_exactly_the_pixels_of_that_colour(tmp_path_factory, seed, bands,
                                                                            nodata_share):
    rng = np.random.default_rng(seed)
    nodata = tuple(int(v) for v in rng.integers(0, 4, bands))
    pixels = rng.integers(0, 4, (6, 5, 7, bands), dtype=np.uint16)  # small values: partial matches are common
    pixels[rng.random((6, 5, 7)) < nodata_share] = nodata
    path = tmp_path_factory.mktemp("nodata") / "x.npy"
    np.save(path, pixels)
    result = cli("compute", path, "-j", "1", "--ignore-value", ",".join(map(str, nodata)))  # one band: one number
    flat = pixels.reshape(-1, bands)
    kept = flat[(flat != np.array(nodata)).any(axis=1)].astype(np.float64)
    if not len(kept):
        assert result.exit_code == 1  # nothing left to count: one line
        return
    report = json.loads(result.stdout)
    assert report["pixels"] == len(kept)
    assert report["settings"]["ignore_value"] == (list(nodata) if bands > 1 else nodata[0])
    np.testing.assert_allclose(report["raw"]["mean"], kept.mean(axis=0), rtol=1e-14)
    np.testing.assert_array_equal(report["raw"]["min"], kept.min(axis=0))


def test_per_band_ignore_values_must_match_the_bands_and_merge_compares_them(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4, 4, 4), np.uint16) + np.arange(4, dtype=np.uint16))
    assert "3 values, one per band, for an image of 4 bands" in one_line_error(
        cli("compute", tmp_path / "x.npy", "--ignore-value", "0,0,0"), 1)
    for k, values in enumerate(["0,1,2,9", "0,1,2,8"]):
        cli("compute", tmp_path / "x.npy", "--ignore-value", values, "-o", tmp_path / f"r{k}.json", expect=0)
    assert "ignore_value" in one_line_error(cli("merge", tmp_path / "r0.json", tmp_path / "r1.json"), 1)


def test_arrays_counted_together_are_said_on_stderr(tmp_path):
    """Images and masks of one shape in one .npz are counted together, as documented: never silently."""
    path = tmp_path / "seg.npz"
    np.savez(path, images=np.zeros((3, 4, 5), np.uint8), masks=np.ones((3, 4, 5), np.uint8))
    result = cli("compute", path, "-j", "1", expect=0)
    assert f"{path}: 2 arrays counted together (images, masks); --key NAME counts one" in result.stderr
    assert "counted together" not in cli("compute", path, "--key", "images", "-j", "1", expect=0).stderr


def test_mode_gray_says_array_rows_keep_their_stored_bands(tmp_path):
    """--mode gray converts image files; RGB array rows are counted in their bands, as documented, and the
    report said "mode": "gray" without a word. A warning says so; the numbers are the stored bands'."""
    rows = np.random.default_rng(4).integers(0, 256, (5, 3, 2, 3), dtype=np.uint8)
    np.save(tmp_path / "rows.npy", rows)
    result = cli("compute", tmp_path / "rows.npy", "--mode", "gray", "-j", "1")
    report = json.loads(result.stdout)
    assert report["channels"] == ["R", "G", "B"] and report["raw"]["mean"] == rows.reshape(-1, 3).mean(0).tolist()
    assert any("--mode gray converted the image files only" in line for line in stderr_lines(result))
    assert not stderr_lines(cli("compute", tmp_path / "rows.npy", "-j", "1"))


def test_cropped_float64_and_int16_arrays_count_their_own_pixels(tmp_path):
    # a crop changes no value: float64 rows stay float64 (10000000.1 was counted as 10000000.0, var 0) and
    # int16 rows stay exact integers (they were counted as float32 moments, and --percentiles refused them)
    rng = np.random.default_rng(31)
    wide = 10000000 + rng.integers(1, 4, (6, 4, 5, 1)) / 10
    np.save(tmp_path / "f64.npy", wide)
    cropped = cli_json("compute", tmp_path / "f64.npy", "--center-crop", "3", "-j", "1")
    want = np.stack([center_crop(row, 3)[0] for row in wide])
    assert_report_matches(cropped, full_load(list(want)), tol=1e-12)
    assert cropped["raw"]["var"][0] > 0.001
    ct = rng.integers(-1024, 3000, (5, 6, 7), dtype=np.int16)
    np.save(tmp_path / "ct.npy", ct)
    whole = cli_json("compute", tmp_path / "ct.npy", "--percentiles", "1,50", "-j", "1")
    same = cli_json("compute", tmp_path / "ct.npy", "--percentiles", "1,50", "--center-crop", "7x6", "-j", "1")
    assert same["raw"] == whole["raw"] and same["state"]["kind"] == whole["state"]["kind"]


def test_a_float_tiff_and_a_float_array_of_the_same_pixels_count_together(tmp_path):
    # a float TIFF's band was named F and an array's L: counted together or merged they were refused
    # ('bands L differ from earlier images' F; use --mode rgb or --mode gray', which would clip the floats)
    from PIL import Image

    pixels = np.random.default_rng(41).standard_normal((3, 4, 5)).astype(np.float32)
    for i, image in enumerate(pixels):
        Image.fromarray(image, "F").save(tmp_path / f"f{i}.tif")
    np.save(tmp_path / "f.npy", pixels)
    tiffs = cli_json("compute", *sorted(tmp_path.glob("*.tif")), "--mode", "native", "-q")
    array = cli_json("compute", tmp_path / "f.npy", "--mode", "native", "-q")
    both = cli_json("compute", tmp_path, "--mode", "native", "-q")
    assert tiffs["channels"] == array["channels"] == both["channels"] == ["L"]
    assert both["images"] == 6 and both["pixels"] == 2 * pixels.size
    assert_report_matches(both, full_load([*pixels[..., None], *pixels[..., None]]), tol=1e-12)
