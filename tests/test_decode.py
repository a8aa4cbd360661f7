"""Loading and decoding: every Pillow mode, 16-bit colour (PNG and PPM), layouts, sources,
torchvision geometry, unreadable files, worker-count invariance, and decoder warnings and
errors (notes, not stray stderr; libpng's message in the one-line error).

Statistics are checked against the float64 full-load reference
(``reference.full_load``): decode with Pillow, convert as the mode says,
concatenate every pixel, numpy mean/var/std/min/max with ddof 0.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bnstats.running import engine
from bnstats.decoding.decode import decode_file
from bnstats.decoding.options import DecodeError, DecodeOptions
from bnstats.decoding.transforms import center_crop_box, resized_size
from bnstats.running.count import CountSpec, UnreadableImage, count_files
from bnstats.running.engine import count_selection
from bnstats.jsonio import to_json
from bnstats.output.report import build_report
from helpers import cli, iter_image_paths
from bnstats.inputs.base import NoImagesError
from bnstats.inputs.files import FileSource
from bnstats.inputs.selection import shard
from bnstats.statistics.formulas import LayoutError
from reference import assert_stats_close, center_crop, full_load, full_load_files, output_size, resize_size

cv2 = pytest.importorskip("cv2")

# Pillow warns when converting a palette image whose transparency is a byte
# string to RGB; both bnstats and the reference do that on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")

RNG_SEED = 20240601


def rng(extra: int = 0) -> np.random.Generator:
    return np.random.default_rng(RNG_SEED + extra)


def run(paths, mode="rgb", **options):
    """bnstats on ``paths`` in this process: the tally."""
    return count_files([os.fspath(p) for p in paths], DecodeOptions(mode=mode, **options))


# -- test images -----------------------------------------------------------------

def _noise(shape, seed, lo=0, hi=256, dtype=np.uint8):
    return rng(seed).integers(lo, hi, shape, dtype=dtype)


def _write_png16_la(path: Path, la: np.ndarray) -> None:
    """A 16-bit grey+alpha PNG (colour type 4), written by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = la.shape
    be = la.astype(">u2")
    raw = b"".join(b"\x00" + be[y].tobytes() for y in range(h))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _make_cases(d: Path) -> dict[str, Path]:
    """One small file per Pillow mode/format of interest."""
    files = {}

    def save(name, image, **kw):
        files[name] = d / name
        image.save(files[name], **kw)

    save("rgb.png", Image.fromarray(_noise((23, 37, 3), 1)))
    # smooth content so that JPEG keeps a spread of values
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    save("rgb.jpg", Image.fromarray(smooth), quality=90)
    save("gray.jpg", Image.fromarray(smooth[..., 0] // 2 + smooth[..., 1] // 3), quality=90)
    save("progressive.jpg", Image.fromarray(smooth[:, ::-1]), quality=80, progressive=True)
    save("sub444.jpg", Image.fromarray(smooth[::-1, ::-1]), quality=95, subsampling=0)
    save("odd.jpg", Image.fromarray(_noise((13, 7, 3), 17)), quality=75)  # odd sizes, 4:2:0
    save("l.png", Image.fromarray(_noise((19, 29), 2)))
    save("rgba.png", Image.fromarray(_noise((17, 21, 4), 3), "RGBA"))

    palette = _noise(256 * 3, 4).tolist()
    index = _noise((15, 26), 5, hi=40)
    p = Image.fromarray(index, "P")
    p.putpalette(palette)
    save("p.png", p)
    save("p_trans.png", p, transparency=7)
    save("p_trans_bytes.png", p, transparency=bytes(range(0, 250, 6)))

    cmyk = Image.fromarray(_noise((16, 24, 4), 6), "CMYK")
    save("cmyk.jpg", cmyk, quality=95)
    save("cmyk.tif", cmyk)
    save("la.png", Image.fromarray(_noise((13, 11, 2), 7), "LA"))
    save("bilevel.png", Image.fromarray(_noise((33, 17), 8, hi=2).astype(bool)))
    i16 = _noise((14, 18), 9, hi=65536, dtype=np.uint16)
    i16[0, 0], i16[0, 1] = 0, 65535
    save("i16.png", Image.fromarray(i16))  # mode I;16
    f = (rng(10).random((12, 16)) * 3 - 1).astype(np.float32)
    save("f.tif", Image.fromarray(f))  # mode F

    # animated GIF: the first frame is dark, the second bright
    f1 = Image.new("RGB", (20, 10), (10, 20, 30))
    f1.paste((250, 0, 0), (0, 0, 5, 5))
    f2 = Image.new("RGB", (20, 10), (200, 200, 200))
    files["anim.gif"] = d / "anim.gif"
    f1.save(files["anim.gif"], save_all=True, append_images=[f2], duration=100, loop=0)

    save("one.png", Image.fromarray(np.array([[[7, 130, 255]]], np.uint8)))
    save("UPPER.JPG", Image.fromarray(smooth[::-1]), format="JPEG", quality=85)
    save("UPPER.PNG", Image.fromarray(_noise((9, 31, 4), 11), "RGBA"), format="PNG")
    save("rgb.bmp", Image.fromarray(_noise((10, 13, 3), 12)))
    save("rgb.webp", Image.fromarray(smooth), lossless=True)
    save("rgb.ppm", Image.fromarray(_noise((8, 9, 3), 13)))
    save("l.pgm", Image.fromarray(_noise((8, 9), 14)))
    save("rgb.tiff", Image.fromarray(_noise((11, 7, 3), 15)))
    return files


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Path]:
    return _make_cases(tmp_path_factory.mktemp("cases"))


# name: (Pillow mode when opened, native bands, native max_value)
CASES = {
    "rgb.png": ("RGB", ("R", "G", "B"), 255),
    "rgb.jpg": ("RGB", ("R", "G", "B"), 255),
    "gray.jpg": ("L", ("L",), 255),
    "progressive.jpg": ("RGB", ("R", "G", "B"), 255),
    "sub444.jpg": ("RGB", ("R", "G", "B"), 255),
    "odd.jpg": ("RGB", ("R", "G", "B"), 255),
    "l.png": ("L", ("L",), 255),
    "rgba.png": ("RGBA", ("R", "G", "B", "A"), 255),
    "p.png": ("P", ("R", "G", "B"), 255),
    "p_trans.png": ("P", ("R", "G", "B", "A"), 255),
    "p_trans_bytes.png": ("P", ("R", "G", "B", "A"), 255),
    "cmyk.jpg": ("CMYK", ("C", "M", "Y", "K"), 255),
    "cmyk.tif": ("CMYK", ("C", "M", "Y", "K"), 255),
    "la.png": ("LA", ("L", "A"), 255),
    "bilevel.png": ("1", ("L",), 255),
    "i16.png": ("I;16", ("L",), 65535),
    "f.tif": ("F", ("L",), 1),  # as a float array's one band
    "anim.gif": ("P", ("R", "G", "B"), 255),
    "one.png": ("RGB", ("R", "G", "B"), 255),
    "UPPER.JPG": ("RGB", ("R", "G", "B"), 255),
    "UPPER.PNG": ("RGBA", ("R", "G", "B", "A"), 255),
    "rgb.bmp": ("RGB", ("R", "G", "B"), 255),
    "rgb.webp": ("RGB", ("R", "G", "B"), 255),
    "rgb.ppm": ("RGB", ("R", "G", "B"), 255),
    "l.pgm": ("L", ("L",), 255),
    "rgb.tiff": ("RGB", ("R", "G", "B"), 255),
}


def test_cases_have_the_intended_pillow_modes(cases):
    for name, (mode, _, _) in CASES.items():
        with Image.open(cases[name]) as im:
            assert im.mode == mode, name


@pytest.mark.parametrize("mode", ["rgb", "gray", "native"])
@pytest.mark.parametrize("name", list(CASES))
def test_single_image_matches_full_load(cases, name, mode):
    path = cases[name]
    tally = run([path], mode)
    ref = full_load_files([path], mode)
    _, native_bands, native_max = CASES[name]
    bands, max_value = {"rgb": (("R", "G", "B"), 255), "gray": (("L",), 255)}.get(mode, (native_bands, native_max))
    assert tally.bands == bands
    assert tally.stats.max_value == max_value == ref["max_value"]
    assert tally.stats.images == 1
    with Image.open(path) as im:
        assert tally.stats.pixels == im.width * im.height == ref["pixels"]
    assert tally.skipped == []
    assert_stats_close(tally.stats.result(), ref)


@pytest.mark.parametrize("mode", ["rgb", "gray"])
def test_many_images_of_mixed_modes_match_full_load(cases, mode):
    """Converted modes pool images of every kind; sizes weight the pixels."""
    paths = sorted(cases.values())
    tally = run(paths, mode)
    ref = full_load_files(paths, mode)
    assert tally.stats.images == len(paths)
    assert tally.stats.pixels == ref["pixels"]
    assert_stats_close(tally.stats.result(), ref)
    report = build_report(tally, DecodeOptions(mode=mode))
    assert_stats_close(report, ref)
    assert report["images"] == len(paths) and report["pixels"] == ref["pixels"]


def test_native_rgba_keeps_alpha(cases):
    report = build_report(run([cases["rgba.png"]], "native"), DecodeOptions(mode="native"))
    assert report["channels"] == ["R", "G", "B", "A"]
    alpha = np.asarray(Image.open(cases["rgba.png"]))[..., 3].astype(np.float64)
    assert report["raw"]["mean"][3] == pytest.approx(alpha.mean(), abs=1e-9)


def test_native_i16_is_exact_16_bit(cases):
    tally = run([cases["i16.png"]], "native")
    raw = tally.stats.result()
    values = np.asarray(Image.open(cases["i16.png"])).astype(np.int64)
    assert tally.stats.max_value == 65535
    assert raw["raw_min"] == [0.0] and raw["raw_max"] == [65535.0]
    assert raw["min"] == [0.0] and raw["max"] == [1.0]
    # the exact mean, rounded once
    from fractions import Fraction

    assert raw["raw_mean"] == [float(Fraction(int(values.sum()), values.size))]


def test_native_float_tiff_is_float(cases):
    tally = run([cases["f.tif"]], "native")
    values = np.asarray(Image.open(cases["f.tif"])).astype(np.float64)
    result = tally.stats.result()
    assert tally.stats.max_value == 1
    assert result["min"] == [float(values.min())] and result["max"] == [float(values.max())]
    assert result["mean"][0] == pytest.approx(values.mean(), rel=1e-12)
    assert result["min"][0] < 0  # float data is not clipped or rescaled


def test_native_bilevel_becomes_0_and_255(cases):
    result = run([cases["bilevel.png"]], "native").stats.result()
    assert result["raw_min"] == [0.0] and result["raw_max"] == [255.0]


def test_animated_gif_counts_only_the_first_frame(cases):
    tally = run([cases["anim.gif"]], "rgb")
    frame = np.zeros((10, 20, 3))
    frame[:] = (10, 20, 30)
    frame[:5, :5] = (250, 0, 0)
    assert tally.stats.images == 1
    assert tally.stats.pixels == 200
    assert tally.stats.result()["raw_mean"] == pytest.approx(frame.reshape(-1, 3).mean(0).tolist(), abs=1e-9)
    assert tally.stats.result()["raw_max"] == [250.0, 20.0, 30.0]


# -- a large image ---------------------------------------------------------------

@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory) -> Path:
    yy, xx = np.mgrid[0:2000, 0:3000]
    base = np.stack([xx % 256, yy % 256, (xx // 12 + yy // 8) % 256], axis=-1).astype(np.int16)
    base += _noise((2000, 3000, 1), 16, lo=-20, hi=21, dtype=np.int16)
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rgb", "gray", "native"])
def test_large_image(large_jpeg, mode):
    tally = run([large_jpeg], mode)
    ref = full_load_files([large_jpeg], mode)
    assert tally.stats.pixels == 3000 * 2000
    assert_stats_close(tally.stats.result(), ref)


# -- 16-bit colour -----------------------------------------------------------------

def _rgb16(h, w, seed, alpha=False) -> np.ndarray:
    """R low, G middle, B high (and A) values so that a band swap shows."""
    r = rng(seed)
    bands = [
        r.integers(0, 4000, (h, w)),
        r.integers(20000, 40000, (h, w)),
        r.integers(50000, 65536, (h, w)),
    ]
    if alpha:
        bands.append(r.integers(0, 65536, (h, w)))
    a = np.stack(bands, axis=-1).astype(np.uint16)
    a[0, 0, 0], a[0, 1, 2] = 0, 65535
    return a


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    d = tmp_path_factory.mktemp("wide")
    out = {}
    for name, ext, alpha in [
        ("rgb16.png", ".png", False),
        ("rgba16.png", ".png", True),
        ("rgb16.tif", ".tiff", False),
        ("rgba16.tif", ".tiff", True),
    ]:
        rgb = _rgb16(21, 34, len(out), alpha)
        bgr = rgb[..., [2, 1, 0, 3][: rgb.shape[2]]]
        ok, buf = cv2.imencode(ext, bgr)
        assert ok
        (d / name).write_bytes(buf.tobytes())
        out[name] = (d / name, rgb)
    return out


WIDE = ["rgb16.png", "rgba16.png", "rgb16.tif", "rgba16.tif"]


@pytest.mark.parametrize("name", WIDE)
def test_16bit_colour_native_is_exact(wide, name):
    path, rgb = wide[name]
    with Image.open(path) as im:  # the premise: Pillow alone would give 8 bits
        assert np.asarray(im).dtype == np.uint8
    tally = run([path], "native")
    assert tally.bands == ("R", "G", "B", "A")[: rgb.shape[2]]
    assert tally.stats.max_value == 65535
    ref = full_load([rgb])
    assert ref["max_value"] == 65535
    assert_stats_close(tally.stats.result(), ref)
    result = tally.stats.result()
    assert result["raw_min"][:3] == [float(rgb[..., c].min()) for c in range(3)]
    assert result["raw_max"][:3] == [float(rgb[..., c].max()) for c in range(3)]
    # the file-based reference (cv2) agrees too
    assert_stats_close(result, full_load_files([path], "native"))


@pytest.mark.parametrize("mode", ["rgb", "gray"])
@pytest.mark.parametrize("name", WIDE)
def test_16bit_colour_converted_modes_are_8_bit(wide, name, mode):
    path, _ = wide[name]
    tally = run([path], mode)
    assert tally.stats.max_value == 255
    assert tally.bands == (("R", "G", "B") if mode == "rgb" else ("L",))
    assert_stats_close(tally.stats.result(), full_load_files([path], mode))


@pytest.mark.parametrize("name", WIDE)
def test_16bit_colour_without_opencv_names_the_extra(wide, monkeypatch, name):
    path, _ = wide[name]
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    monkeypatch.setitem(sys.modules, "tifffile", None)  # TIFFs have a second reader: neither is there
    with pytest.raises(DecodeError, match=r"bnstats\[16bit\]"):
        run([path], "native")
    # the converted modes do not need it
    assert run([path], "rgb").stats.images == 1


def test_16bit_colour_native_center_crop_is_exact(wide):
    path, rgb = wide["rgb16.png"]
    tally = run([path], "native", center_crop=(10, 7))
    box = center_crop_box((rgb.shape[1], rgb.shape[0]), (10, 7))
    left, top, right, bottom = box
    assert_stats_close(tally.stats.result(), full_load([rgb[top:bottom, left:right]]))


def test_16bit_grey_big_endian_tiff_native_stays_16_bit(tmp_path):
    """Big-endian ("MM") 16-bit TIFFs open in Pillow as I;16B."""
    g = np.array([[0, 1, 255, 256, 1000, 65535]], np.uint16)
    path = tmp_path / "be.tif"
    Image.fromarray(g.astype(">u2")).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16B"
    tally = run([path], "native")
    assert tally.stats.max_value == 65535
    assert_stats_close(tally.stats.result(), full_load([g[..., None]]))


def test_16bit_grey_alpha_png_native_keeps_bands_and_depth(tmp_path):
    la = np.stack([_noise((5, 6), 30, hi=65536, dtype=np.uint16), _noise((5, 6), 31, hi=65536, dtype=np.uint16)], -1)
    path = tmp_path / "la16.png"
    _write_png16_la(path, la)
    tally = run([path], "native")
    assert tally.bands == ("L", "A")
    assert tally.stats.max_value == 65535
    assert_stats_close(tally.stats.result(), full_load([la]))


# -- incompatible layouts in native mode ----------------------------------------------

@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Folders rgb/ and l/ of CHUNK_SIZE images each: a file after them starts a new chunk."""
    d = tmp_path_factory.mktemp("mixed")
    (d / "rgb").mkdir()
    (d / "l").mkdir()
    for i in range(engine.CHUNK_SIZE):
        Image.fromarray(_noise((6, 5, 3), 40 + i)).save(d / "rgb" / f"{i:02d}.png")
        Image.fromarray(_noise((6, 5), 40 + i)).save(d / "l" / f"{i:02d}.png")
    return d


def test_native_rgb_then_l_raises_layout_error_naming_the_file(cases):
    paths = [cases["rgb.png"], cases["l.png"]]
    with pytest.raises(LayoutError, match=re.escape(str(cases["l.png"]))):
        run(paths, "native")


def test_native_8bit_then_16bit_raises_layout_error_naming_the_file(cases):
    paths = [cases["l.png"], cases["i16.png"]]
    with pytest.raises(LayoutError, match=re.escape(str(cases["i16.png"]))):
        run(paths, "native")


def test_native_16bit_then_float_raises_layout_error(cases):
    with pytest.raises(LayoutError, match=re.escape(str(cases["f.tif"]))):
        run([cases["i16.png"], cases["f.tif"]], "native")


@pytest.mark.parametrize("mode", ["rgb", "gray"])
def test_converted_modes_accept_any_layout(cases, mode):
    paths = [cases["rgb.png"], cases["l.png"], cases["i16.png"], cases["rgba.png"], cases["f.tif"]]
    tally = run(paths, mode)
    assert tally.stats.images == len(paths)
    assert_stats_close(tally.stats.result(), full_load_files(paths, mode))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("first,last", [("rgb", "l.png"), ("l", "i16.png")])
def test_layout_error_across_chunks_names_the_file(mixed, cases, workers, first, last):
    paths = sorted(str(p) for p in (mixed / first).iterdir()) + [str(cases[last])]
    chunks = [p.keys for p in FileSource([]).partitions(paths, engine.chunk_size_for(len(paths)))]  # as counting cuts them
    assert [len(c) for c in chunks] == [len(paths) - 1, 1]
    with pytest.raises(LayoutError, match=re.escape(str(cases[last]))):
        count_selection(paths, spec=CountSpec(DecodeOptions(mode="native")), workers=workers)


# -- sources -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Files the walk must take or leave; their contents are never read."""
    root = tmp_path_factory.mktemp("tree") / "data"
    for rel in [
        "b.png", "a.JPG", "c.Jpeg", "z.TIFF", "notes.txt", "README", ".hidden.png", "archive.png.zip",
        "sub/d.png", "sub/data.json", "sub/deeper/e.webp", "sub/deeper/f.GIF", "sub/.secret/g.png",
        ".hiddendir/h.png", "sub2/i.bmp", "sub2/j.ppm", "sub2/k.pgm", "sub2/l.tif",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not really an image; sources only look at names")
    return root


TREE_IMAGES = [
    "a.JPG", "b.png", "c.Jpeg", "sub/d.png", "sub/deeper/e.webp", "sub/deeper/f.GIF",
    "sub2/i.bmp", "sub2/j.ppm", "sub2/k.pgm", "sub2/l.tif", "z.TIFF",
]


def test_iter_image_paths_walks_sorted_and_filters(tree):
    found = iter_image_paths([str(tree)])
    assert found == sorted(found)
    assert sorted(os.path.relpath(p, tree) for p in found) == sorted(TREE_IMAGES)
    assert found == sorted(os.path.join(str(tree), rel) for rel in TREE_IMAGES)


def test_iter_image_paths_accepts_path_objects_and_files(tree):
    assert iter_image_paths([tree / "b.png"]) == [str(tree / "b.png")]
    assert iter_image_paths([tree / "sub"]) == sorted(
        str(tree / rel) for rel in ["sub/d.png", "sub/deeper/e.webp", "sub/deeper/f.GIF"]
    )


def test_iter_image_paths_removes_duplicates(tree):
    found = iter_image_paths([str(tree), str(tree / "sub"), str(tree / "b.png"), str(tree)])
    assert len(found) == len(set(found)) == len(TREE_IMAGES)


def test_iter_image_paths_removes_duplicates_spelled_differently(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    found = iter_image_paths(["data", "./data/sub", str(tree / "b.png")])
    assert len(found) == len(TREE_IMAGES)


def test_iter_image_paths_symlink_loop_counts_files_once(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "a.png").write_bytes(b"x")
    os.symlink("..", tmp_path / "data" / "sub" / "up")
    found = iter_image_paths([str(tmp_path / "data")])
    assert len({os.path.realpath(p) for p in found}) == 1
    assert len(found) == 1


def test_iter_image_paths_explicit_non_image_is_taken(tree):
    # a file named directly is tried whatever its extension (it is skipped later if unreadable)
    assert iter_image_paths([tree / "notes.txt", tree / "b.png"]) == [str(tree / "b.png"), str(tree / "notes.txt")]


@pytest.mark.parametrize("contents", [[], ["notes.txt"], [".hidden.png"], [".dir/a.png", "x.json"]])
def test_no_images_error(tmp_path, contents):
    for rel in contents:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(NoImagesError, match="no images found"):
        iter_image_paths([str(tmp_path)])


def test_no_images_error_for_explicit_non_image_is_gone(tree):
    assert iter_image_paths([tree / "notes.txt"]) == [str(tree / "notes.txt")]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), count=st.integers(1, 40))
def test_shards_partition_exactly(n, count):
    paths = [f"p{i:04d}" for i in range(n)]
    parts = [shard(paths, k, count) for k in range(count)]
    assert [p for part in parts for p in part] == paths
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("index,count", [(2, 2), (-1, 2), (0, 0), (5, 3)])
def test_shard_rejects_bad_index(index, count):
    with pytest.raises(ValueError):
        shard(["a", "b"], index, count)


# -- torchvision geometry ---------------------------------------------------------------

@pytest.mark.parametrize(
    "size,n,expected",
    [
        ((500, 375), 256, (341, 256)),
        ((375, 500), 256, (256, 341)),
        ((224, 224), 224, (224, 224)),
        ((640, 480), 224, (298, 224)),
        ((3, 1000), 2, (2, 666)),
        ((1, 1), 7, (7, 7)),
        ((999, 1001), 100, (100, 100)),
    ],
)
def test_resized_size_known_cases(size, n, expected):
    assert resized_size(size, n) == expected == resize_size(*size, n)


def test_resized_size_pair_is_width_height():
    assert resized_size((100, 50), (320, 240)) == (320, 240)


@settings(max_examples=300, deadline=None)
@given(w=st.integers(1, 3000), h=st.integers(1, 3000), n=st.integers(1, 1000))
def test_resized_size_matches_torchvision(w, h, n):
    assert resized_size((w, h), n) == resize_size(w, h, n)


@pytest.mark.parametrize(
    "size,crop,expected",
    [
        ((256, 256), 224, (16, 16, 240, 240)),
        ((257, 255), 224, (16, 16, 240, 240)),  # round(16.5) == 16, round(15.5) == 16
        ((259, 253), 224, (18, 14, 242, 238)),  # round(17.5) == 18, round(14.5) == 14
        ((10, 10), 15, (-2, -2, 13, 13)),  # pad 2 left/top, 3 right/bottom
        ((10, 20), (13, 4), (-1, 8, 12, 12)),
        ((1, 1), 1, (0, 0, 1, 1)),
    ],
)
def test_center_crop_box_known_cases(size, crop, expected):
    assert center_crop_box(size, crop) == expected
    assert center_crop(np.zeros(size[::-1]), crop)[1] == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.integers(1, 40), h=st.integers(1, 40), cw=st.integers(1, 60), ch=st.integers(1, 60), square=st.booleans())
def test_center_crop_matches_torchvision_pixels(w, h, cw, ch, square):
    if square:
        ch = cw
    crop = cw if square else (cw, ch)
    array = (np.arange(w * h).reshape(h, w) % 255 + 1).astype(np.uint8)  # no zeros: padding shows
    want, want_box = center_crop(array, crop)
    box = center_crop_box((w, h), crop)
    assert box == want_box
    got = np.asarray(Image.fromarray(array).crop(box))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("resize,crop", [(None, 8), (None, (40, 5)), (12, None), ((9, 4), None), (12, 10), (5, 30)])
def test_preprocess_pixel_counts(cases, resize, crop):
    path = cases["rgb.png"]  # 37 x 23
    tally = run([path], "rgb", resize=resize, center_crop=crop)
    w, h = output_size(37, 23, resize, crop)
    assert tally.stats.pixels == w * h


def test_preprocess_crop_matches_reference(cases):
    """A crop larger than the image counts the zero padding, as torchvision does."""
    path = cases["l.png"]  # 29 x 19
    array = np.asarray(Image.open(path))
    want, _ = center_crop(array, (33, 16))
    tally = run([path], "gray", center_crop=(33, 16))
    assert_stats_close(tally.stats.result(), full_load([want[..., None]]))


# -- unreadable files ------------------------------------------------------------------

@pytest.fixture(scope="module")
def with_bad(tmp_path_factory) -> tuple[list[str], list[str]]:
    """(good paths, bad paths) in one folder."""
    d = tmp_path_factory.mktemp("bad")
    good = []
    for i in range(5):
        p = d / f"good_{i}.png"
        Image.fromarray(_noise((9 + i, 7, 3), 50 + i)).save(p)
        good.append(str(p))
    yy, xx = np.mgrid[0:120, 0:160]
    real = io.BytesIO()
    Image.fromarray(np.stack([xx, yy, xx ^ yy], -1).astype(np.uint8)).save(real, "JPEG", quality=95)
    jpeg = real.getvalue()
    bad = {
        "corrupt.jpg": bytes(rng(60).integers(0, 256, 3000, dtype=np.uint8)),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.jpg": b"",
        "text.png": b"this is a text file, not a PNG\n",
    }
    for name, data in bad.items():
        (d / name).write_bytes(data)
    return good, [str(d / name) for name in bad]


def test_unreadable_files_are_skipped_and_do_not_change_stats(with_bad):
    good, bad = with_bad
    paths = sorted(good + bad)
    tally = run(paths)
    assert sorted(s["path"] for s in tally.skipped) == sorted(bad)
    for skip in tally.skipped:
        assert set(skip) == {"path", "error"}
        assert isinstance(skip["error"], str) and skip["error"]
        assert "\n" not in skip["error"]
    clean = run(good)
    assert tally.stats == clean.stats
    assert tally.stats.images == len(good)
    assert_stats_close(tally.stats.result(), full_load_files(good, "rgb"))


def test_truncated_jpeg_is_reported_as_truncated(with_bad):
    _, bad = with_bad
    truncated = [p for p in bad if p.endswith("truncated.jpg")]
    (skip,) = run(truncated).skipped
    assert "truncated" in skip["error"].lower()


@pytest.mark.parametrize("index", range(4))
def test_strict_raises_unreadable_image(with_bad, index):
    good, bad = with_bad
    with pytest.raises(UnreadableImage) as info:
        count_files(good + [bad[index]] + good, DecodeOptions(), strict=True)
    assert info.value.path == bad[index]
    assert bad[index] in str(info.value)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_decompression_bomb_is_skipped(tmp_path, monkeypatch, ext):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    small = tmp_path / f"small.{ext}"  # 100 pixels
    warn = tmp_path / f"warn.{ext}"  # 1600: over the limit, under twice it (a warning only)
    bomb = tmp_path / f"bomb.{ext}"  # 2500: over twice the limit
    Image.fromarray(_noise((10, 10, 3), 70)).save(small)
    Image.fromarray(_noise((40, 40, 3), 71)).save(warn)
    Image.fromarray(_noise((50, 50, 3), 72)).save(bomb)
    tally = run([small, warn, bomb])
    assert [s["path"] for s in tally.skipped] == [str(bomb)]
    assert "DecompressionBombError" in tally.skipped[0]["error"]
    assert tally.stats.images == 2 and tally.stats.pixels == 1700
    with pytest.raises(UnreadableImage, match="DecompressionBombError"):
        count_files([str(bomb)], DecodeOptions(), strict=True)


def test_decompression_bomb_is_skipped_by_compute_in_process(tmp_path, monkeypatch):
    """count_selection() with one worker runs in this process, so the patched limit applies."""
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        side = 50 if i == 1 else 10  # 2500 pixels > 2 * MAX_IMAGE_PIXELS
        Image.fromarray(_noise((side, side, 3), 73 + i)).save(p)
        paths.append(str(p))
    tally = count_selection(paths, workers=1)
    assert [s["path"] for s in tally.skipped] == [paths[1]]


# -- worker-count invariance --------------------------------------------------------------

@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("many")
    for i in range(45):
        size = (5 + i % 7, 4 + i % 5)
        if i % 3 == 0:
            Image.fromarray(_noise(size + (3,), 100 + i)).save(d / f"{i:03d}.png")
        elif i % 3 == 1:
            Image.fromarray(_noise(size, 100 + i)).save(d / f"{i:03d}.png")  # L
        else:
            Image.fromarray(_noise(size + (4,), 100 + i), "RGBA").save(d / f"{i:03d}.png")
        (d / "f").mkdir(exist_ok=True)
        Image.fromarray((rng(200 + i).random(size) * 1000).astype(np.float32)).save(d / "f" / f"{i:03d}.tif")
    (d / "020_broken.jpg").write_bytes(b"garbage")
    return d


@pytest.mark.parametrize("mode,sub", [("rgb", "."), ("gray", "."), ("native", "f")])
def test_worker_count_does_not_change_the_report(many, mode, sub):
    paths = iter_image_paths([str(many / sub)]) if sub != "." else [
        p for p in iter_image_paths([str(many)]) if not p.endswith(".tif")
    ]
    assert len(FileSource([]).partitions(paths, engine.chunk_size_for(len(paths)))) >= 3  # as counting cuts them
    options = DecodeOptions(mode=mode)
    one = build_report(count_selection(paths, spec=CountSpec(options), workers=1), options)
    two = build_report(count_selection(paths, spec=CountSpec(options), workers=2), options)
    three = build_report(count_selection(paths, spec=CountSpec(options), workers=3), options)
    assert to_json(one) == to_json(two) == to_json(three)
    assert one["images"] == len(paths) - len(one["skipped"])
    if sub == ".":
        assert [s["path"] for s in one["skipped"]] == [str(many / "020_broken.jpg")]


def test_count_selection_matches_count_files(many):
    paths = [p for p in iter_image_paths([str(many)]) if not p.endswith(".tif")]
    assert count_selection(paths, workers=2).stats == count_files(paths).stats


def test_decode_file_reads_from_disk(cases):
    decoded = decode_file(str(cases["rgb.png"]), DecodeOptions())
    assert decoded.bands == ("R", "G", "B")
    assert decoded.counts.shape == (3, 256) and decoded.counts.sum() == 3 * 37 * 23


def test_non_finite_float_pixels_are_not_counted(tmp_path):
    values = np.array([[1.0, np.nan, 3.0], [np.inf, 5.0, -np.inf]], np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values).save(path)
    tally = run([path], "native")
    result = tally.stats.result()
    assert tally.stats.pixels == 3
    assert result["mean"] == [3.0]
    assert result["var"] == [np.var([1.0, 3.0, 5.0])]
    assert any("NaN" in note for note in tally.notes)


# -- 16-bit PPM in native mode -------------------------------------------------------------------------------


def _ppm(path, pixels: np.ndarray, maxval: int, plain: bool = False):
    h, w, _ = pixels.shape
    if plain:
        body = " ".join(map(str, pixels.ravel())).encode() + b"\n"
        path.write_bytes(b"P3\n%d %d\n%d\n" % (w, h, maxval) + body)
    else:
        path.write_bytes(b"P6\n# a comment\n%d %d\n%d\n" % (w, h, maxval) + pixels.astype(">u2").tobytes())


@pytest.mark.parametrize("plain", [False, True], ids=["binary", "plain"])
@pytest.mark.parametrize("maxval", [65535, 1023])
def test_16bit_colour_ppm_keeps_its_values_in_native_mode(tmp_path, maxval, plain):
    rng = np.random.default_rng(maxval)
    pixels = rng.integers(0, maxval + 1, (7, 5, 3), dtype=np.uint16)
    _ppm(tmp_path / "a.ppm", pixels, maxval, plain)
    report = json.loads(cli("compute", tmp_path / "a.ppm", "--mode", "native", "-q", expect=0).stdout)
    flat = pixels.reshape(-1, 3).astype(np.float64)
    assert report["max_value"] == 65535
    np.testing.assert_allclose(report["raw"]["mean"], flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(report["raw"]["std"], flat.std(axis=0), rtol=1e-12)
    assert report["raw"]["max"] == flat.max(axis=0).tolist()


def test_truncated_16bit_ppm_is_skipped(tmp_path):
    pixels = np.full((4, 4, 3), 1000, np.uint16)
    _ppm(tmp_path / "a.ppm", pixels, 65535)
    data = (tmp_path / "a.ppm").read_bytes()
    (tmp_path / "b.ppm").write_bytes(data[:-10])
    report = json.loads(cli("compute", tmp_path, "--mode", "native", "-q", expect=0).stdout)
    assert report["images"] == 1 and [s["path"] for s in report["skipped"]] == [str(tmp_path / "b.ppm")]


# -- decoder warnings are notes; libpng errors are part of the one-line error --------------------------------


def test_decoder_warnings_are_notes_not_stray_stderr(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "big.tif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 pixels: a warning, not an error
    quiet = cli("compute", tmp_path, "-q", "-j", "1", expect=0)
    assert quiet.stderr == ""
    loud = cli("compute", tmp_path, "-j", "1", expect=0)
    assert loud.stderr.count("DecompressionBombWarning") == 1 and "bnstats: warning:" in loud.stderr


def test_a_large_png_under_twice_the_bomb_limit_adds_no_note(tmp_path, monkeypatch):
    """Pillow warns at open between 1x and 2x MAX_IMAGE_PIXELS: that is no reason for a note, as before."""
    from PIL import Image

    from bnstats.running.count import count_files
    from bnstats.decoding.options import DecodeOptions

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    tally = count_files([str(tmp_path / "big.png")], DecodeOptions(mode="rgb"))
    assert tally.stats.images == 1 and not tally.notes


@pytest.mark.slow
def test_libpng_errors_are_part_of_the_one_line_error(tmp_path):
    import subprocess
    import sys

    cv2 = pytest.importorskip("cv2")
    ok, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 65535, (64, 64, 3), dtype=np.uint16))
    data = bytearray(buf.tobytes())
    data[200:210] = b"0123456789"  # inside IDAT: a CRC error
    (tmp_path / "bad.png").write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "bnstats", "compute", str(tmp_path), "--mode", "native", "-q",
                           "--strict"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "libpng error" in proc.stderr and "bad.png" in proc.stderr


# -- transforms of arrays Pillow cannot hold as they are (float64, wide or signed integers) -----------------------


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.int8, np.int64, np.uint32])
@pytest.mark.parametrize("crop", [(7, 5), (3, 2), (10, 9)])
def test_a_center_crop_of_any_array_is_its_pixels_unchanged_in_their_type(dtype, crop):
    # a crop moves pixels and pads zeros: no value changes, so no type does (float64 went through float32:
    # 10000000.1 became 10000000.0; int16 became float32 and lost its exact histogram and percentiles)
    from bnstats.decoding.transforms import transform_array

    base = 10000000 if np.dtype(dtype).itemsize == 8 else 100
    pixels = (np.arange(35 * 2).reshape(5, 7, 2) % 9 + base).astype(dtype)
    if dtype is np.float64:
        pixels += 0.1
    got = transform_array(pixels, DecodeOptions(mode="native", center_crop=crop))
    want, _ = center_crop(pixels, crop)
    assert got.dtype == pixels.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_of_any_array_is_pillows_transpose_in_its_type(orientation):
    from bnstats.decoding.transforms import EXIF_TRANSPOSE, transform_array

    pixels = np.random.default_rng(orientation).integers(0, 256, (3, 5, 2)).astype(np.float64) + 1e7 + 0.1
    got = transform_array(pixels, DecodeOptions(mode="native"), orientation)
    want = np.stack([np.asarray(Image.fromarray(pixels[..., b].astype(np.float32)).transpose(EXIF_TRANSPOSE[orientation]))
                     for b in range(2)], -1)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-7)  # Pillow's own transpose, on float32
    np.testing.assert_array_equal(np.sort(got, axis=None), np.sort(pixels, axis=None))  # no value changed


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 12), h=st.integers(1, 12), ow=st.integers(1, 15), oh=st.integers(1, 15),
       interpolation=st.sampled_from(["nearest", "bilinear", "bicubic", "lanczos"]), seed=st.integers(0, 2**16))
def test_float64_arrays_resize_as_pillow_does_in_float64(w, h, ow, oh, interpolation, seed):
    # Pillow resamples F images in float32: float64 pixels went through it and lost ~9 digits (10000000.1,
    # .2 and .3 all became 10000000.0, var 0). They are resampled with Pillow's filters in float64 instead.
    from bnstats.decoding.transforms import transform_array

    small = np.random.default_rng(seed).integers(-1000, 1000, (h, w, 1)) / 8  # exact in float32
    options = DecodeOptions(mode="native", resize=(ow, oh), interpolation=interpolation)
    got = transform_array(small.astype(np.float64), options)
    pillow = transform_array(small.astype(np.float32), options)  # Pillow's F resample
    assert got.dtype == np.float64 and got.shape == pillow.shape == (oh, ow, 1)
    np.testing.assert_allclose(got, pillow, rtol=1e-5, atol=1e-3)
    shifted = transform_array(small + 1e7, options)  # linear: shifting the pixels shifts the result
    np.testing.assert_allclose(shifted - 1e7, got, rtol=0, atol=1e-7)
