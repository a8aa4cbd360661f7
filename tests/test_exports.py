"""Preprocessing (resize, crop, interpolation, EXIF), --group-by, --ignore-value, export (files and stdin).

Every statistic is checked against the *independent* references of
``reference.py``: torchvision's ``Resize``/``CenterCrop`` rules carried out
directly (Pillow's ``img.resize``, zero padding and the rounded centre box in
numpy), then a float64 numpy "load everything" of the resulting pixels.
Nothing in the reference calls into ``bnstats``.

Every ``export`` format is checked by *parsing or executing* its output the
way its framework would (``json.loads``, ``yaml.safe_load``, ``exec`` with
stub namespaces whose callables have the frameworks' signatures, timm's
argparse flags) and comparing the captured numbers with the report's.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

import helpers
from reference import PIL_FILTERS, STAT_KEYS, center_crop, full_load, full_load_files, load_array, output_size
from reference import assert_report_matches as assert_stats

yaml = pytest.importorskip("yaml")

GROUP_KEYS = {"mean", "std", "var", "min", "max", "images", "pixels", "max_value", "raw", "state"}
TOL = 1e-9

# -- running the CLI ------------------------------------------------------------------------------


def cli(*args, expect: int | None = 0):
    return helpers.cli(*args, expect=expect)


def compute(*args) -> dict:
    return json.loads(cli("compute", "-q", *args).stdout)


def export(path, fmt, *extra) -> str:
    return cli("export", path, "--format", fmt, *extra).stdout


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


# -- synthetic images ---------------------------------------------------------------------------------

def textured(w: int, h: int, channels: int = 3, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """Gradients plus noise: interpolation filters and crop positions all change the stats."""
    hi = 65535 if dtype == np.uint16 else 255
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        base = (x / max(w - 1, 1)) * (0.3 + 0.2 * c) + (y / max(h - 1, 1)) * (0.5 - 0.1 * c)
        base += 0.25 * np.sin((x * (c + 1) + y * 2) / 3.0)
        planes.append(base)
    a = np.stack(planes, -1)
    a = (a - a.min()) / (a.max() - a.min())
    a = a * 0.8 * hi + rng.integers(0, int(0.2 * hi), a.shape)
    a = np.clip(a, 0, hi).astype(dtype)
    return a[..., 0] if channels == 1 else a


def save(path: Path, array: np.ndarray, mode=None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **kw)
    return path


# -- resize and center crop, geometry -------------------------------------------------------------

GEOMETRY = [
    # (width, height, resize, crop)
    pytest.param(300, 200, 128, None, id="landscape-resize"),
    pytest.param(150, 317, 100, None, id="portrait-resize"),
    pytest.param(97, 97, 64, None, id="square-resize"),
    pytest.param(133, 100, 64, None, id="truncation-85.12"),  # 64*133/100 = 85.12 -> 85
    pytest.param(101, 75, None, 50, id="odd-crop-half-to-even"),  # left round(25.5)=26, top round(12.5)=12
    pytest.param(77, 131, None, 60, id="odd-portrait-crop"),
    pytest.param(40, 30, None, 64, id="smaller-than-crop-pads"),
    pytest.param(41, 29, None, 64, id="smaller-odd-pads-remainder-right-bottom"),
    pytest.param(100, 30, None, 64, id="pads-height-only"),
    pytest.param(317, 251, None, (200, 100), id="crop-200x100"),
    pytest.param(150, 80, None, (200, 100), id="crop-200x100-pads-both"),
    pytest.param(250, 120, None, (201, 100), id="crop-wide-odd"),
    pytest.param(400, 300, 256, 224, id="resize256-crop224-landscape"),
    pytest.param(250, 333, 256, 224, id="resize256-crop224-portrait"),
    pytest.param(180, 180, 256, 224, id="resize256-crop224-square-upscale"),
    pytest.param(200, 200, (120, 90), None, id="resize-WxH"),
    pytest.param(90, 160, (120, 90), (100, 80), id="resize-WxH-crop-WxH"),
    pytest.param(60, 45, 30, 40, id="resize-then-pad"),
]


def size_arg(v) -> str:
    return str(v) if isinstance(v, int) else f"{v[0]}x{v[1]}"


def preprocess_args(resize=None, crop=None, interpolation=None) -> list[str]:
    args = []
    if resize is not None:
        args += ["--resize", size_arg(resize)]
    if crop is not None:
        args += ["--center-crop", size_arg(crop)]
    if interpolation is not None:
        args += ["--interpolation", interpolation]
    return args


@pytest.mark.parametrize("w,h,resize,crop", GEOMETRY)
def test_geometry_matches_torchvision_rules(tmp_path, w, h, resize, crop):
    path = save(tmp_path / "img.png", textured(w, h, seed=w * h))
    report = compute(path, "-j", "1", *preprocess_args(resize, crop))
    ref = full_load([load_array(path, "rgb", resize, crop)])
    ow, oh = output_size(w, h, resize, crop)
    assert ref["pixels"] == ow * oh  # the reference itself has torchvision's output size
    assert_stats(report, ref)
    as_recorded = lambda size: {"width": size[0], "height": size[1]} if isinstance(size, tuple) else size  # noqa: E731
    assert report["settings"]["resize"] == as_recorded(resize)
    assert report["settings"]["center_crop"] == as_recorded(crop)


def test_pipeline_over_a_folder_of_mixed_sizes(tmp_path):
    """Resize(256) + CenterCrop(224) over many shapes at once, on two workers."""
    sizes = [(300, 200), (200, 300), (256, 256), (256, 400), (130, 90), (90, 131), (511, 257)]
    paths = [save(tmp_path / "d" / f"{i:02d}.png", textured(w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    report = compute(tmp_path / "d", "-j", "2", "--resize", "256", "--center-crop", "224")
    ref = full_load_files(paths, "rgb", resize=256, crop=224)
    assert ref["pixels"] == 224 * 224 * len(sizes)
    assert_stats(report, ref)


def test_crop_rounding_is_observable(tmp_path):
    """An odd margin: the rounded box differs from a floor box, and bnstats takes torchvision's."""
    a = textured(101, 75, seed=3)
    path = save(tmp_path / "odd.png", a)
    report = compute(path, "-j", "1", "--center-crop", "50")
    tv = a[12:62, 26:76]  # top = round(12.5) = 12, left = round(25.5) = 26
    floor = a[12:62, 25:75]
    assert_stats(report, full_load([tv]))
    assert abs(full_load([floor])["mean"][0] - report["mean"][0]) > 1e-6


@pytest.fixture(scope="module")
def interpolated(tmp_path_factory) -> Path:
    """A 173x121 textured PNG: each resampling filter gives it different statistics."""
    return save(tmp_path_factory.mktemp("interp") / "img.png", textured(173, 121, seed=11))


@pytest.mark.parametrize("interpolation", list(PIL_FILTERS))
def test_each_interpolation_matches_pillow(interpolated, interpolation):
    path = interpolated
    report = compute(path, "-j", "1", *preprocess_args(77, 64, interpolation))
    assert report["settings"]["interpolation"] == interpolation
    assert_stats(report, full_load([load_array(path, "rgb", 77, 64, interpolation)]))


def test_interpolations_give_different_stats(interpolated):
    path = interpolated
    means = {
        interp: tuple(compute(path, "-j", "1", "--resize", "77", "--interpolation", interp)["std"])
        for interp in PIL_FILTERS
    }
    assert len(set(means.values())) == len(PIL_FILTERS), means


def test_default_interpolation_is_bilinear(tmp_path):
    path = save(tmp_path / "img.png", textured(173, 121, seed=12))
    default = compute(path, "-j", "1", "--resize", "50")
    bilinear = compute(path, "-j", "1", "--resize", "50", "--interpolation", "bilinear")
    assert default["mean"] == bilinear["mean"] and default["std"] == bilinear["std"]
    assert default["settings"]["interpolation"] == "bilinear"


@pytest.mark.parametrize(
    "w,h,resize",
    [(256, 300, 256), (300, 256, 256), (256, 256, 256), (120, 90, (120, 90))],
    ids=["portrait-short-256", "landscape-short-256", "square", "WxH-equal"],
)
def test_image_already_at_target_size_is_unchanged(tmp_path, w, h, resize):
    path = save(tmp_path / "img.png", textured(w, h, seed=5))
    plain = compute(path, "-j", "1")
    resized = compute(path, "-j", "1", "--resize", size_arg(resize))
    for key in STAT_KEYS:
        assert resized[key] == plain[key], key
    assert resized["pixels"] == plain["pixels"] == w * h
    assert_stats(resized, full_load([np.asarray(Image.open(path))]))


# -- gray, RGBA, 16-bit ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["rgb", "native"])
@pytest.mark.parametrize("kind", ["L", "RGBA"])
@pytest.mark.parametrize("resize,crop", [(64, 56), (50, (80, 40)), (None, 100)], ids=["resize-crop", "resize-pad", "pad-only"])
def test_gray_and_rgba_images(tmp_path, kind, mode, resize, crop):
    if kind == "L":
        array = textured(91, 67, channels=1, seed=21)
    else:
        array = textured(91, 67, channels=4, seed=22)
        array[..., 3] = np.linspace(0, 255, 91, dtype=np.uint8)[None, :]  # alpha varies: premultiplied resize
    path = save(tmp_path / f"img_{kind}.png", array, kind)
    assert Image.open(path).mode == kind
    report = compute(path, "-j", "1", "--mode", mode, *preprocess_args(resize, crop))
    expected_channels = {"rgb": ["R", "G", "B"], "native": list(kind)}[mode]
    assert report["channels"] == expected_channels
    assert_stats(report, full_load([load_array(path, mode, resize, crop)]))
    if kind == "L" and mode == "rgb":
        assert report["mean"][0] == report["mean"][1] == report["mean"][2]


@pytest.fixture(scope="module")
def gray16(tmp_path_factory) -> Path:
    """A 90x130 16-bit grayscale PNG (Pillow mode I;16)."""
    a = textured(90, 130, channels=1, seed=31, dtype=np.uint16)
    a[0, 0], a[1, 1] = 65535, 256  # full range, and a value whose low byte is 0
    path = tmp_path_factory.mktemp("gray16") / "g16.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
        assert np.array_equal(np.asarray(im), a)
    return path


@pytest.mark.parametrize(
    "resize,crop,interpolation",
    [(64, 60, "bilinear"), (64, 60, "bicubic"), (40, (70, 30), "bilinear"), (None, 100, None), ((50, 77), None, "lanczos")],
    ids=["resize-crop", "resize-crop-bicubic", "resize-pad-width", "pad-only", "resize-WxH-lanczos"],
)
def test_16bit_gray_native_resize_crop(gray16, resize, crop, interpolation):
    report = compute(gray16, "-j", "1", "--mode", "native", *preprocess_args(resize, crop, interpolation))
    assert report["channels"] == ["L"]
    assert report["max_value"] == 65535
    ref_array = load_array(gray16, "native", resize, crop, interpolation or "bilinear")  # Pillow on I;16 itself
    assert ref_array.dtype == np.uint16
    assert_stats(report, full_load([ref_array]))


# -- EXIF orientation ---------------------------------------------------------------------------------

def exif6_jpeg(path: Path, w: int = 120, h: int = 80) -> Path:
    """A landscape JPEG whose EXIF says: rotate 90° clockwise to display (orientation 6)."""
    a = textured(w, h, seed=41)
    a[:, : w // 3] //= 4  # a dark left third: which pixels a crop keeps depends on orientation
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif, quality=95)
    with Image.open(path) as im:
        assert im.size == (w, h) and im.getexif().get(0x0112) == 6
        assert ImageOps.exif_transpose(im).size == (h, w)
    return path


@pytest.fixture(scope="module")
def rotated_jpeg(tmp_path_factory) -> Path:
    return exif6_jpeg(tmp_path_factory.mktemp("exif") / "rot.jpg")


@pytest.mark.parametrize(
    "resize,crop",
    [(None, (100, 40)), (None, 100), (64, (60, 40)), (64, 56)],
    ids=["crop-100x40", "crop-100-pads", "resize-crop-60x40", "resize-crop-56"],
)
def test_exif_transpose_flag(rotated_jpeg, resize, crop):
    path = rotated_jpeg
    args = ["-j", "1", *preprocess_args(resize, crop)]
    with_flag = compute(path, *args, "--exif-transpose")
    without = compute(path, *args)
    assert with_flag["settings"]["exif_transpose"] is True
    assert without["settings"]["exif_transpose"] is False
    assert_stats(with_flag, full_load([load_array(path, "rgb", resize, crop, exif=True)]))
    assert_stats(without, full_load([load_array(path, "rgb", resize, crop, exif=False)]))
    if isinstance(crop, tuple):  # a non-square crop keeps different pixels of the two orientations
        assert max(abs(a - b) for a, b in zip(with_flag["mean"], without["mean"])) > 1e-3


def test_exif_transpose_without_geometry_keeps_the_pixel_multiset(rotated_jpeg):
    """Rotation alone moves pixels but keeps them all: the histogram-exact stats are equal."""
    path = rotated_jpeg
    with_flag = compute(path, "-j", "1", "--exif-transpose")
    without = compute(path, "-j", "1")
    for key in STAT_KEYS:
        assert with_flag[key] == without[key]
    assert with_flag["pixels"] == without["pixels"] == 120 * 80
    assert_stats(with_flag, full_load([load_array(path, "rgb", exif=True)]))


def test_exif_transpose_gray16_native(tmp_path):
    a = textured(90, 50, channels=1, seed=43, dtype=np.uint16)
    a[:, :30] //= 8
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "g16_rot.png"
    img.save(path, exif=exif)
    with Image.open(path) as im:
        assert im.mode == "I;16" and im.getexif().get(0x0112) == 6
    args = ["-j", "1", "--mode", "native", "--center-crop", "80x30"]
    with_flag = compute(path, *args, "--exif-transpose")
    without = compute(path, *args)
    assert_stats(with_flag, full_load([load_array(path, "native", crop=(80, 30), exif=True)]))
    assert_stats(without, full_load([load_array(path, "native", crop=(80, 30), exif=False)]))
    assert abs(with_flag["mean"][0] - without["mean"][0]) > 1e-3


def _png_with_exif_orientation(png: bytes, orientation: int) -> bytes:
    """``png`` with an eXIf chunk (taken from a Pillow-written PNG) before its first IDAT."""
    carrier = Image.new("RGB", (2, 2))
    exif = carrier.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    carrier.save(buf, "PNG", exif=exif)
    data = buf.getvalue()
    i = data.index(b"eXIf") - 4
    chunk = data[i : i + 12 + struct.unpack(">I", data[i : i + 4])[0]]
    j = png.index(b"IDAT") - 4
    return png[:j] + chunk + png[j:]


def test_exif_transpose_16bit_colour_native(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rgb = textured(90, 60, seed=44, dtype=np.uint16)
    rgb[:, :30] //= 8
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    path = tmp_path / "rgb16_rot.png"
    path.write_bytes(_png_with_exif_orientation(encoded.tobytes(), 6))
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == 6
    # orientation 6: displayed = stored rotated 90° clockwise (what exif_transpose does)
    shown = np.rot90(rgb, k=-1)
    want, _ = center_crop(shown, (40, 60))
    report = compute(path, "-j", "1", "--mode", "native", "--exif-transpose", "--center-crop", "40x60")
    assert_stats(report, full_load([want]))


# -- the "done when": compute with resize+crop, export hf ---------------------------------------

def test_end_to_end_resize_crop_export_hf(sample_data, sample_files, tmp_path):
    out = tmp_path / "s.json"
    cli("compute", sample_data, "-q", "-j", "2", "--resize", "256", "--center-crop", "224", "-o", out)
    fragment = json.loads(export(out, "hf"))
    ref = full_load_files(sample_files, "rgb", resize=256, crop=224)
    assert ref["pixels"] == 224 * 224 * len(sample_files)
    assert fragment["do_normalize"] is True and fragment["do_rescale"] is True
    assert fragment["rescale_factor"] == 1 / 255
    assert len(fragment["image_mean"]) == len(fragment["image_std"]) == 3
    for got, want in zip(fragment["image_mean"], ref["mean"]):
        assert abs(got - want) <= TOL
    for got, want in zip(fragment["image_std"], ref["std"]):
        assert abs(got - want) <= TOL
    report = json.loads(out.read_text())
    assert_stats(report, ref)


# -- --group-by class -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An ImageFolder tree with > CHUNK_SIZE files; ``gray`` holds only grayscale images."""
    root = tmp_path_factory.mktemp("folder") / "train"
    files = {"cat": [], "dog": [], "gray": []}
    for i in range(7):
        files["cat"].append(save(root / "cat" / f"c{i}.png", textured(30 + 3 * i, 25 + 2 * i, seed=100 + i)))
    files["cat"].append(save(root / "cat" / "sub" / "deep.png", textured(33, 41, seed=150)))  # nested: still "cat"
    for i in range(8):
        a = textured(40 + i, 28, seed=200 + i)
        a = (a * 0.5 + 100).astype(np.uint8)  # a different distribution from cat
        files["dog"].append(save(root / "dog" / f"d{i}.jpg", a, quality=90))
    for i in range(5):
        files["gray"].append(save(root / "gray" / f"g{i}.png", textured(26, 31 + i, channels=1, seed=300 + i), "L"))
    files["gray"].append(save(root / "gray" / "gj.jpg", textured(35, 22, channels=1, seed=399), "L", quality=90))
    (root / "notes.txt").write_text("not an image")
    return root, {k: sorted(v) for k, v in files.items()}


def test_group_by_class_matches_per_class_full_load(image_folder):
    root, files = image_folder
    report = compute(root, "-j", "1", "--group-by", "class")
    groups = report["groups"]
    assert sorted(groups) == ["cat", "dog", "gray"]
    for name, paths in files.items():
        g = groups[name]
        assert GROUP_KEYS <= set(g), set(g)
        assert_stats(g, full_load_files(paths, "rgb"))
    all_paths = [p for paths in files.values() for p in paths]
    assert_stats(report, full_load_files(all_paths, "rgb"))
    assert sum(g["images"] for g in groups.values()) == report["images"] == len(all_paths)
    assert sum(g["pixels"] for g in groups.values()) == report["pixels"]
    gray = groups["gray"]["mean"]
    assert gray[0] == gray[1] == gray[2]
    assert groups["cat"]["mean"][0] != groups["cat"]["mean"][2]


def test_group_by_class_with_preprocessing(image_folder):
    root, files = image_folder
    report = compute(root, "-j", "2", "--group-by", "class", "--resize", "32", "--center-crop", "30x24")
    for name, paths in files.items():
        assert_stats(report["groups"][name], full_load_files(paths, "rgb", resize=32, crop=(30, 24)))
    assert report["groups"]["gray"]["pixels"] == 30 * 24 * len(files["gray"])


def test_group_by_class_sample_data(sample_data):
    report = compute(sample_data, "-j", "2", "--group-by", "class")
    classes = sorted(p.name for p in sample_data.iterdir() if p.is_dir())
    assert sorted(report["groups"]) == classes
    for name in classes:
        paths = sorted(p for p in (sample_data / name).rglob("*") if p.is_file())
        assert_stats(report["groups"][name], full_load_files(paths, "rgb"))
    assert sum(g["images"] for g in report["groups"].values()) == report["images"]


@pytest.mark.parametrize("spelling", ["train", "train/", "./train", ".", "absolute"])
def test_group_by_class_names_do_not_depend_on_how_the_root_is_spelled(image_folder, monkeypatch, spelling):
    root, files = image_folder
    if spelling == ".":
        monkeypatch.chdir(root)
    else:
        monkeypatch.chdir(root.parent)
    arg = str(root) if spelling == "absolute" else spelling
    groups = compute(arg, "-j", "1", "--group-by", "class")["groups"]
    assert {k: g["images"] for k, g in groups.items()} == {k: len(v) for k, v in files.items()}


def test_no_groups_key_without_group_by(image_folder):
    root, _ = image_folder
    assert "groups" not in compute(root, "-j", "1")


# -- --ignore-value ---------------------------------------------------------------------------------

def letterboxed(w: int, h: int, pad: int, seed: int, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    """Content with no all-zero pixels, inside zero bars top and bottom."""
    a = np.zeros((h, w, channels), dtype)
    content = textured(w, h - 2 * pad, channels=channels, seed=seed, dtype=dtype).reshape(h - 2 * pad, w, channels)
    content[..., 0] = np.maximum(content[..., 0], 1)
    a[pad : h - pad] = content
    return a


def test_ignore_value_letterbox_rgb(tmp_path):
    arrays = []
    for i, (w, h, pad) in enumerate([(60, 40, 6), (33, 47, 10), (50, 50, 0)]):
        a = letterboxed(w, h, pad, seed=400 + i)
        if pad:
            a[0, 0] = (0, 5, 0)  # not zero in every band: counted
            a[1, 3] = (7, 0, 0)
            a[h - 1, w - 1] = (0, 0, 255)
        a[pad + 2, 4] = (0, 0, 0)  # an all-zero pixel inside the content: not counted either
        arrays.append(a)
        save(tmp_path / "d" / f"{i}.png", a)
    report = compute(tmp_path / "d", "-j", "1", "--ignore-value", "0")
    ref = full_load(arrays, ignore=0)
    assert ref["pixels"] == sum((a != 0).any(-1).sum() for a in arrays)
    assert_stats(report, ref)
    assert report["settings"]["ignore_value"] == 0
    counted_all = compute(tmp_path / "d", "-j", "1")
    assert counted_all["pixels"] == sum(a.shape[0] * a.shape[1] for a in arrays) > report["pixels"]


def test_ignore_value_counts_pixels_zero_in_some_bands_only(tmp_path):
    a = np.zeros((4, 6, 3), np.uint8)
    a[1, 2] = (0, 5, 0)
    a[3, 5] = (3, 3, 3)
    path = save(tmp_path / "sparse.png", a)
    report = compute(path, "-j", "1", "--ignore-value", "0")
    assert report["pixels"] == 2
    assert report["raw"]["mean"] == [1.5, 4.0, 1.5]
    assert report["raw"]["min"] == [0.0, 3.0, 0.0]
    assert report["raw"]["max"] == [3.0, 5.0, 3.0]
    assert_stats(report, full_load([a], ignore=0))


def test_ignore_value_other_than_zero(tmp_path):
    a = letterboxed(50, 40, 5, seed=410)
    a[:5] = 255
    a[-5:] = 255
    a[0, 0] = (255, 255, 254)
    path = save(tmp_path / "white.png", a)
    report = compute(path, "-j", "1", "--ignore-value", "255")
    assert_stats(report, full_load([a], ignore=255))
    assert report["pixels"] == 50 * 30 + 1


@pytest.mark.parametrize("mode", ["native", "rgb", "gray"])
def test_ignore_value_gray_L(tmp_path, mode):
    a = letterboxed(45, 36, 7, seed=420, channels=1)[..., 0]
    a[0, :3] = (1, 0, 2)
    path = save(tmp_path / "gray.png", a, "L")
    report = compute(path, "-j", "1", "--mode", mode, "--ignore-value", "0")
    ref_arr = load_array(path, mode)
    assert_stats(report, full_load([ref_arr], ignore=0))
    assert report["pixels"] == int((a != 0).sum())


def test_ignore_value_gray_jpeg_read_as_rgb(tmp_path):
    """The fast JPEG path (one L band standing for R, G and B) honours the mask too."""
    a = np.zeros((48, 64), np.uint8)
    a[8:40] = textured(64, 32, channels=1, seed=430) // 2 + 60
    path = save(tmp_path / "gray.jpg", a, "L", quality=95)
    report = compute(path, "-j", "1", "--ignore-value", "0")
    ref_arr = load_array(path, "rgb")
    ref = full_load([ref_arr], ignore=0)
    assert 0 < ref["pixels"] < 48 * 64
    assert_stats(report, ref)


def test_ignore_value_rgb_jpeg(tmp_path):
    a = letterboxed(64, 48, 8, seed=435)
    path = save(tmp_path / "rgb.jpg", a, quality=95)
    report = compute(path, "-j", "1", "--ignore-value", "0")
    ref = full_load([load_array(path, "rgb")], ignore=0)
    assert 0 < ref["pixels"] < 64 * 48
    assert_stats(report, ref)


def test_ignore_value_16bit_native(tmp_path):
    a = letterboxed(50, 40, 6, seed=440, channels=1, dtype=np.uint16)[..., 0]
    a[10, 10], a[11, 11], a[12, 12] = 256, 65280, 65535  # low or high byte zero: not the ignored value
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)
    report = compute(path, "-j", "1", "--mode", "native", "--ignore-value", "0")
    assert report["max_value"] == 65535
    assert report["pixels"] == int((a != 0).sum())
    assert_stats(report, full_load([a[..., None]], ignore=0))


@pytest.mark.parametrize("kind", ["RGB", "L", "I;16"])
def test_ignore_value_excludes_center_crop_padding(tmp_path, kind):
    if kind == "RGB":
        a = textured(40, 30, seed=450)
        a[..., 0] = np.maximum(a[..., 0], 1)
        mode = "rgb"
    elif kind == "L":
        a = np.maximum(textured(40, 30, channels=1, seed=451), 1)
        mode = "native"
    else:
        a = np.maximum(textured(40, 30, channels=1, seed=452, dtype=np.uint16), 1)
        mode = "native"
    path = tmp_path / "small.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == kind
    padded = compute(path, "-j", "1", "--mode", mode, "--center-crop", "64x48", "--ignore-value", "0")
    plain = full_load([a.reshape(30, 40, -1)])
    assert_stats(padded, plain)  # the padding zeros are gone, nothing else
    assert padded["pixels"] == 40 * 30
    with_padding = compute(path, "-j", "1", "--mode", mode, "--center-crop", "64x48")
    assert with_padding["pixels"] == 64 * 48
    assert_stats(with_padding, full_load([load_array(path, mode, crop=(64, 48))]))
    assert with_padding["mean"][0] < padded["mean"][0]


def test_ignore_value_16bit_colour_native_with_crop_padding(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rgb = letterboxed(40, 30, 4, seed=460, dtype=np.uint16)
    rgb[1, 1] = (0, 0, 9)
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    report = compute(path, "-j", "1", "--mode", "native", "--center-crop", "50x36", "--ignore-value", "0")
    assert report["channels"] == ["R", "G", "B"] and report["max_value"] == 65535
    # torchvision padding: left (50-40)//2 = 5, top (36-30)//2 = 3; the zeros are ignored anyway
    assert report["pixels"] == int((rgb != 0).any(-1).sum())
    assert_stats(report, full_load([rgb], ignore=0))


def test_ignore_value_with_resize_crop_matches_reference(tmp_path):
    paths = [save(tmp_path / "d" / f"{i}.png", letterboxed(70 + 9 * i, 50 + 5 * i, 8, seed=470 + i)) for i in range(3)]
    args = ["--resize", "40", "--center-crop", "48x36", "--ignore-value", "0"]
    report = compute(tmp_path / "d", "-j", "1", *args)
    assert_stats(report, full_load((load_array(p, "rgb", 40, (48, 36)) for p in paths), ignore=0))
    assert report == compute(tmp_path / "d", "-j", "2", *args)


# -- export: each format parsed or executed as its framework would ------------------------------------

@pytest.fixture(scope="module")
def rgb_stats(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    paths = [save(root / "d" / f"{i}.png", textured(37 + 5 * i, 29 + 3 * i, seed=500 + i)) for i in range(3)]
    out = root / "s.json"
    cli("compute", root / "d", "-q", "-j", "1", "-o", out)
    report = json.loads(out.read_text())
    ref = full_load_files(paths, "rgb")
    assert_stats(report, ref)
    return out, report, ref


@pytest.fixture(scope="module")
def gray16_stats(tmp_path_factory):
    root = tmp_path_factory.mktemp("export16")
    for i in range(2):
        Image.fromarray(textured(30 + i, 20, channels=1, seed=510 + i, dtype=np.uint16)).save(root / f"{i}.png")
    out = root / "s16.json"
    cli("compute", root, "-q", "-j", "1", "--mode", "native", "-o", out)
    report = json.loads(out.read_text())
    assert report["max_value"] == 65535 and report["channels"] == ["L"]
    return out, report


def close_to(values, ref_values, scale=1.0):
    return all(abs(a - b) <= TOL * scale for a, b in zip(values, ref_values)) and len(values) == len(ref_values)


def run_python(text: str, **names) -> dict:
    """Execute an export as Python code, with only ``names`` (and ``dict``) in scope."""
    namespace = {"__builtins__": {"dict": dict}, **names}
    exec(compile(text, "<export>", "exec"), namespace)
    return namespace


class Recorder:
    """Stand-ins for the frameworks' callables, with their real signatures."""

    def __init__(self):
        self.calls = []

    def torchvision_normalize(self, mean, std, inplace=False):
        self.calls.append({"mean": mean, "std": std, "inplace": inplace})

    def albumentations_normalize(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                 max_pixel_value=255.0, normalization="standard", p=1.0):
        self.calls.append({"mean": mean, "std": std, "max_pixel_value": max_pixel_value})

    def keras_normalization(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        self.calls.append({"axis": axis, "mean": mean, "variance": variance, "invert": invert, **kwargs})


def test_export_torchvision(rgb_stats):
    path, report, ref = rgb_stats
    rec = Recorder()
    run_python(export(path, "torchvision"), transforms=SimpleNamespace(Normalize=rec.torchvision_normalize))
    (call,) = rec.calls
    assert list(call["mean"]) == report["mean"] and list(call["std"]) == report["std"]
    assert close_to(call["mean"], ref["mean"]) and close_to(call["std"], ref["std"])


def test_export_hf(rgb_stats):
    path, report, ref = rgb_stats
    d = json.loads(export(path, "hf"))
    assert d["image_mean"] == report["mean"] and d["image_std"] == report["std"]
    assert d["do_normalize"] is True and d["do_rescale"] is True
    assert d["rescale_factor"] == 1 / 255 == 1 / report["max_value"]
    assert close_to(d["image_mean"], ref["mean"])


def test_export_json(rgb_stats):
    path, report, _ = rgb_stats
    d = json.loads(export(path, "json"))
    assert d["mean"] == report["mean"] and d["std"] == report["std"]
    assert d["max_value"] == 255 and d["channels"] == ["R", "G", "B"]


def test_export_yaml(rgb_stats):
    path, report, _ = rgb_stats
    d = yaml.safe_load(export(path, "yaml"))
    assert d["mean"] == report["mean"] and d["std"] == report["std"]
    assert all(isinstance(v, float) for v in d["mean"] + d["std"])
    assert d["max_value"] == 255 and d["channels"] == ["R", "G", "B"]


def test_export_yaml_small_values_are_numbers(tmp_path):
    a = textured(200, 100, seed=520)
    a[..., 2] = 0
    a[0, 0, 2] = 255  # blue mean = 255 / (255 * 20000) = 5e-05 exactly
    path = save(tmp_path / "img.png", a)
    out = tmp_path / "s.json"
    cli("compute", path, "-q", "-j", "1", "-o", out)
    report = json.loads(out.read_text())
    assert report["mean"][2] == 5e-05
    d = yaml.safe_load(export(out, "yaml"))
    assert d["mean"] == report["mean"]


def test_export_timm(rgb_stats):
    path, report, _ = rgb_stats
    text = export(path, "timm")
    ns = run_python(text)
    overlay = ns["pretrained_cfg_overlay"]
    assert list(overlay["mean"]) == report["mean"] and list(overlay["std"]) == report["std"]
    # the flags line parses with train.py's own argparse definitions
    (line,) = [l for l in text.splitlines() if l.startswith("# train.py flags:")]
    parser = argparse.ArgumentParser()
    parser.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN")
    parser.add_argument("--std", type=float, nargs="+", default=None, metavar="STD")
    args = parser.parse_args(shlex.split(line.split(":", 1)[1]))
    assert args.mean == report["mean"] and args.std == report["std"]


@pytest.mark.parametrize("bgr", [False, True], ids=["rgb", "bgr"])
def test_export_mmcv(rgb_stats, bgr):
    path, report, ref = rgb_stats
    ns = run_python(export(path, "mmcv", *(["--bgr"] if bgr else [])))
    cfg = ns["data_preprocessor"]
    order = slice(None, None, -1) if bgr else slice(None)
    assert list(cfg["mean"]) == report["raw"]["mean"][order]
    assert list(cfg["std"]) == report["raw"]["std"][order]
    assert cfg["to_rgb"] is (not bgr)
    # raw units: 0-255, not unit scale
    assert close_to(cfg["mean"], [m * 255 for m in report["mean"][order]], scale=255)
    assert close_to(cfg["std"], ref["raw"]["std"][order], scale=255)


def test_export_keras_takes_raw_variance(rgb_stats):
    path, report, ref = rgb_stats
    rec = Recorder()
    run_python(export(path, "keras"), layers=SimpleNamespace(Normalization=rec.keras_normalization))
    (call,) = rec.calls
    assert call["axis"] == -1
    assert list(call["mean"]) == report["raw"]["mean"]
    assert list(call["variance"]) == report["raw"]["var"]
    assert close_to(call["variance"], [s * s for s in ref["raw"]["std"]], scale=255 ** 2)
    assert close_to(call["mean"], ref["raw"]["mean"], scale=255)


def test_export_keras_unit_takes_unit_variance(rgb_stats):
    path, report, ref = rgb_stats
    rec = Recorder()
    run_python(export(path, "keras-unit"), layers=SimpleNamespace(Normalization=rec.keras_normalization))
    (call,) = rec.calls
    assert list(call["mean"]) == report["mean"]
    assert list(call["variance"]) == report["var"]
    assert close_to(call["variance"], ref["var"])


def test_export_albumentations_8bit(rgb_stats):
    path, report, _ = rgb_stats
    rec = Recorder()
    run_python(export(path, "albumentations"), A=SimpleNamespace(Normalize=rec.albumentations_normalize))
    (call,) = rec.calls
    assert list(call["mean"]) == report["mean"] and list(call["std"]) == report["std"]
    assert call["max_pixel_value"] == 255.0 and isinstance(call["max_pixel_value"], float)


def test_export_16bit_native_report(gray16_stats):
    path, report = gray16_stats
    rec = Recorder()
    run_python(export(path, "albumentations"), A=SimpleNamespace(Normalize=rec.albumentations_normalize))
    (call,) = rec.calls
    assert call["max_pixel_value"] == 65535.0
    assert list(call["mean"]) == report["mean"]
    hf = json.loads(export(path, "hf"))
    assert hf["rescale_factor"] == 1 / 65535 and hf["image_mean"] == report["mean"]
    assert yaml.safe_load(export(path, "yaml"))["max_value"] == 65535
    ns = run_python(export(path, "mmcv"))
    assert list(ns["data_preprocessor"]["mean"]) == report["raw"]["mean"]
    assert "to_rgb" not in ns["data_preprocessor"]  # one band: no colour order to convert
    assert abs(report["raw"]["mean"][0] - report["mean"][0] * 65535) <= TOL * 65535


def test_export_one_band_report_every_format_parses(gray16_stats):
    path, report = gray16_stats
    rec = Recorder()
    run_python(export(path, "torchvision"), transforms=SimpleNamespace(Normalize=rec.torchvision_normalize))
    run_python(export(path, "keras"), layers=SimpleNamespace(Normalization=rec.keras_normalization))
    run_python(export(path, "keras-unit"), layers=SimpleNamespace(Normalization=rec.keras_normalization))
    assert [len(c["mean"]) for c in rec.calls] == [1, 1, 1]
    assert rec.calls[1]["variance"] == report["raw"]["var"]
    assert len(run_python(export(path, "timm"))["pretrained_cfg_overlay"]["mean"]) == 1
    assert json.loads(export(path, "json"))["channels"] == ["L"]


def test_export_of_resize_crop_report_keeps_numbers(tmp_path):
    """export reads what compute wrote, including preprocessed runs (settings don't get in the way)."""
    out = tmp_path / "s.json"
    path = save(tmp_path / "img.png", textured(90, 70, seed=530))
    cli("compute", path, "-q", "-j", "1", "--resize", "64", "--center-crop", "60", "--ignore-value", "0", "-o", out)
    report = json.loads(out.read_text())
    assert json.loads(export(out, "hf"))["image_std"] == report["std"]


# -- export errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "content",
    [
        '{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_normalize": true}',
        "[1, 2, 3]",
        '"hello"',
        "null",
        '{"mean": [0.4], "std": [0.2], "max_value": 255, "channels": ["L"]}',  # bnstats' own --format json
    ],
    ids=["hf-config", "list", "string", "null", "export-json"],
)
def test_export_non_bnstats_json_is_one_line_error(tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content)
    result = cli("export", path, "--format", "hf", expect=1)
    line = one_line_error(result)
    assert "bnstats" in line


@pytest.mark.parametrize("content", ["hello, world\n", "", "mean: [0.5]\n", "{not json"], ids=["text", "empty", "yaml", "broken"])
def test_export_non_json_text_is_one_line_error(tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_text(content)
    result = cli("export", path, "--format", "torchvision", expect=1)
    assert "JSON" in one_line_error(result)


def test_export_binary_file_is_one_line_error(tmp_path):
    path = save(tmp_path / "image.png", textured(8, 8, seed=540))
    result = cli("export", path, "--format", "hf", expect=1)
    one_line_error(result)


def test_export_unknown_format_is_usage_error(rgb_stats):
    path, _, _ = rgb_stats
    result = cli("export", path, "--format", "caffe", expect=2)
    assert result.stdout == ""


def test_export_report_without_pixels_is_one_line_error(tmp_path):
    path = save(tmp_path / "black.png", np.zeros((5, 5, 3), np.uint8))
    out = tmp_path / "s.json"
    # a whole run that counts no pixel is an error; a shard still writes its (empty) part
    cli("compute", path, "-q", "-j", "1", "--ignore-value", "0", "-o", out, expect=1)
    cli("compute", path, "-q", "-j", "1", "--ignore-value", "0", "--shard", "0/1", "-o", out)
    assert json.loads(out.read_text())["pixels"] == 0
    one_line_error(cli("export", out, "--format", "hf", expect=1))


def test_export_of_a_result_that_counted_nothing_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"broken")
    (tmp_path / "b.png").write_bytes(b"broken")
    part = tmp_path / "part.json"
    cli("compute", tmp_path, "--shard", "0/2", "-q", "-o", part)
    assert json.loads(part.read_text())["images"] == 0
    for fmt in ("torchvision", "hf", "albumentations", "timm"):
        result = cli("export", part, "--format", fmt, expect=1)
        assert "counted no pixels" in result.stderr and result.stdout == ""


def test_float_image_with_only_nodata_writes_valid_json(tmp_path):
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "empty.tif")
    report = compute(tmp_path, "--mode", "native", "--shard", "0/1")  # unsharded: an error, no JSON
    assert report["images"] == 1 and report["pixels"] == 0
    assert report["mean"] == [None] and report["state"]["min"] is None


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_ignore_value_must_be_finite(sample_data, value):
    result = cli("compute", sample_data, "--ignore-value", value, expect=2)
    assert "finite" in result.stderr


# -- --ignore-value that ignores every pixel -----------------------------------------------------------------


def test_all_pixels_ignored_is_an_error_not_null_statistics(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    result = cli("compute", tmp_path, "--ignore-value", "0", "-q", expect=1)
    assert result.stderr.count("\n") == 1 and "no pixel was counted" in result.stderr
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "nan.tif")
    result = cli("compute", tmp_path / "nan.tif", "--mode", "native", "-q", expect=1)
    assert "no pixel was counted" in result.stderr


# -- --resize past the pixel limit on a thin image -----------------------------------------------------------


def test_a_thin_image_resized_past_the_pixel_limit_is_a_skip_not_an_allocation(tmp_path):
    """--resize 5000 passes the option check (25·10⁶ pixels), but a 1x2000 image would become 5000x10⁷."""
    Image.fromarray(np.zeros((1, 2000, 3), np.uint8)).save(tmp_path / "thin.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "square.png")
    result = helpers.cli("compute", tmp_path, "--resize", "5000", "-j", 1)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 1
    assert "10000000x5000" in report["skipped"][0]["error"] and "BNSTATS_MAX_PIXELS" in report["skipped"][0]["error"]


# -- export: mmdet's bgr_to_rgb, standard input, --digits ----------------------------------------------------


def _img_data_preprocessor(mean=None, std=None, pad_size_divisor=1, pad_value=0, bgr_to_rgb=False,
                           rgb_to_bgr=False, non_blocking=False):
    """MMEngine 0.x ``ImgDataPreprocessor.__init__``'s signature (mmdet/mmseg/mmpose 3.x build on it)."""
    return {"mean": mean, "std": std, "bgr_to_rgb": bgr_to_rgb}


@pytest.mark.parametrize("bgr", [False, True])
def test_export_mmdet_uses_bgr_to_rgb(stats_file, bgr):
    report = json.loads(stats_file.read_text())
    text = cli("export", stats_file, "--format", "mmdet", *(["--bgr"] if bgr else [])).stdout
    namespace = {}
    exec(text, namespace)
    built = _img_data_preprocessor(**namespace["data_preprocessor"])
    order = slice(None, None, -1) if bgr else slice(None)
    assert built == {"mean": report["raw"]["mean"][order], "std": report["raw"]["std"][order], "bgr_to_rgb": not bgr}


def test_export_reads_stdin_and_rounds(stats_file):
    report = json.loads(stats_file.read_text())
    result = helpers.cli("export", "-", "--format", "json", "--digits", "4", input=stats_file.read_text(), expect=0)
    assert json.loads(result.stdout)["mean"] == [round(m, 4) for m in report["mean"]]
    bad = helpers.cli("export", "-", "--format", "json", input='{"mean": NaN}')
    assert bad.exit_code == 1 and "<stdin>" in bad.stderr and "Traceback" not in bad.output


# -- geospatial and detection formats: gdal, stac, detectron2 ------------------------------------------------

@pytest.fixture(scope="module")
def bands_16(tmp_path_factory):
    """Two 16-bit 3-band TIFF-free arrays as PNGs (native mode), their report and the pixels (N, 3)."""
    root = tmp_path_factory.mktemp("geo")
    arrays = [textured(23 + i, 19, channels=3, seed=540 + i, dtype=np.uint16) for i in range(2)]
    for i, a in enumerate(arrays):
        np.save(root / f"{i}.npy", a[None])
    out = root / "s.json"
    cli("compute", root, "-q", "-j", "1", "-o", out)
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64)
    return out, json.loads(out.read_text()), pixels


def test_gdal_pam_holds_each_bands_exact_statistics(bands_16):
    import xml.etree.ElementTree as ET

    path, report, pixels = bands_16
    root = ET.fromstring(export(path, "gdal"))
    assert root.tag == "PAMDataset"
    bands = root.findall("PAMRasterBand")
    assert [b.get("band") for b in bands] == ["1", "2", "3"]
    for i, band in enumerate(bands):
        mdi = {m.get("key"): m.text for m in band.find("Metadata").findall("MDI")}
        assert mdi["STATISTICS_APPROXIMATE"] == "NO"
        assert float(mdi["STATISTICS_MINIMUM"]) == pixels[:, i].min()
        assert float(mdi["STATISTICS_MAXIMUM"]) == pixels[:, i].max()
        assert float(mdi["STATISTICS_MEAN"]) == pytest.approx(pixels[:, i].mean(), rel=1e-12)
        assert float(mdi["STATISTICS_STDDEV"]) == pytest.approx(pixels[:, i].std(), rel=1e-12)  # population, as GDAL


def test_stac_bands_hold_statistics_and_an_exact_histogram(bands_16):
    path, report, pixels = bands_16
    bands = json.loads(export(path, "stac"))["raster:bands"]
    assert [b["name"] for b in bands] == report["channels"]
    for i, band in enumerate(bands):
        stats, hist = band["statistics"], band["histogram"]
        assert set(stats) == {"minimum", "maximum", "mean", "stddev"}
        assert stats["mean"] == pytest.approx(pixels[:, i].mean(), rel=1e-12)
        assert hist["count"] == len(hist["buckets"]) <= 256 and sum(hist["buckets"]) == len(pixels)
        expected, _ = np.histogram(pixels[:, i], bins=hist["count"], range=(hist["min"], hist["max"]))
        assert hist["buckets"] == expected.tolist()  # every value in the bucket numpy puts it in


def test_stac_of_float_data_has_statistics_without_a_histogram(tmp_path):
    np.save(tmp_path / "f.npy", np.random.default_rng(3).random((4, 5, 5, 2)))
    cli("compute", tmp_path / "f.npy", "-q", "-j", "1", "-o", tmp_path / "s.json")
    bands = json.loads(export(tmp_path / "s.json", "stac"))["raster:bands"]
    assert len(bands) == 2 and all("histogram" not in b and "mean" in b["statistics"] for b in bands)


@pytest.mark.parametrize("bgr", [False, True])
def test_detectron2_gets_bgr_pixel_mean_and_std_in_0_255(rgb_stats, bgr):
    path, report, _ = rgb_stats
    cfg = SimpleNamespace(MODEL=SimpleNamespace(), INPUT=SimpleNamespace())
    run_python(export(path, "detectron2", *(["--bgr"] if bgr else [])), cfg=cfg)
    assert cfg.INPUT.FORMAT == "BGR"
    assert cfg.MODEL.PIXEL_MEAN == report["raw"]["mean"][::-1]  # detectron2's own default is BGR order
    assert cfg.MODEL.PIXEL_STD == report["raw"]["std"][::-1]


# -- monai: percentile clipping and z-scoring in the data's own units -----------------------------------------

def _monai_calls(text: str) -> dict:
    calls = {}

    def recorder(name):
        def call(**kwargs):
            calls[name] = kwargs
        return call

    run_python(text, ScaleIntensityRanged=recorder("scale"), NormalizeIntensityd=recorder("normalize"))
    return calls


def test_monai_clips_at_the_exact_percentiles_and_z_scores_with_the_exact_statistics(tmp_path):
    values = np.random.default_rng(9).integers(-1024, 3000, (3, 16, 16)).astype(np.int16)  # CT-like, one channel
    np.save(tmp_path / "ct.npy", values)
    cli("compute", tmp_path / "ct.npy", "-j", "1", "--percentiles", "0.5,99.5", "-o", tmp_path / "s.json",
        expect=0)
    calls = _monai_calls(export(tmp_path / "s.json", "monai"))
    flat = values.ravel().astype(np.float64)
    assert calls["scale"]["a_min"] == np.percentile(flat, 0.5) and calls["scale"]["a_max"] == np.percentile(flat,
                                                                                                              99.5)
    assert calls["scale"]["clip"] is True and (calls["scale"]["b_min"], calls["scale"]["b_max"]) == (0.0, 1.0)
    assert calls["normalize"]["subtrahend"] == pytest.approx([flat.mean()], rel=1e-14)
    assert calls["normalize"]["divisor"] == pytest.approx([flat.std()], rel=1e-13)
    assert calls["normalize"]["nonzero"] is False and calls["normalize"]["channel_wise"] is True


def test_monai_reads_percentiles_off_the_state_and_nonzero_follows_ignore_value(tmp_path):
    values = np.random.default_rng(10).integers(0, 5, (2, 8, 8)).astype(np.uint16)
    np.save(tmp_path / "x.npy", values)
    cli("compute", tmp_path / "x.npy", "-j", "1", "--ignore-value", "0", "-o", tmp_path / "s.json", expect=0)
    calls = _monai_calls(export(tmp_path / "s.json", "monai"))  # no --percentiles: the exact state has them
    kept = values[values != 0].astype(np.float64)
    assert (calls["scale"]["a_min"], calls["scale"]["a_max"]) == (np.percentile(kept, 0.5), np.percentile(kept, 99.5))
    assert calls["normalize"]["nonzero"] is True
    assert calls["normalize"]["subtrahend"] == pytest.approx([kept.mean()], rel=1e-14)


def test_monai_of_float_data_has_no_clip_range(tmp_path):
    np.save(tmp_path / "f.npy", np.random.default_rng(11).random((3, 4, 4)))
    cli("compute", tmp_path / "f.npy", "-j", "1", "-o", tmp_path / "s.json", expect=0)
    text = export(tmp_path / "s.json", "monai")
    assert "float data has no exact percentiles" in text and "scale" not in _monai_calls(text)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_groups_past_their_memory_bound_are_one_line_naming_the_variable(tmp_path, monkeypatch, workers):
    """A state per group had no bound: a folder per image (60,000 identities of 16-bit faces) would keep a
    1.5 MiB state per image. Past BNSTATS_MAX_GROUP_BYTES the run stops in one line; within it, every group."""
    from bnstats import limits

    for i in range(12):
        (tmp_path / f"person{i:02d}").mkdir()
        Image.fromarray(np.full((2, 2, 3), i, np.uint8)).save(tmp_path / f"person{i:02d}" / "a.png")
    monkeypatch.setattr(limits, "_current", limits.Limits(group_bytes=10 * 6 * 1024))  # ten 8-bit RGB states
    line = helpers.one_line_error(helpers.cli("compute", tmp_path, "--group-by", "class", "-j", workers), 1)
    assert "11 groups of 6,144 bytes" in line and "BNSTATS_MAX_GROUP_BYTES" in line
    monkeypatch.setattr(limits, "_current", limits.Limits(group_bytes=12 * 6 * 1024))
    assert len(compute(tmp_path, "--group-by", "class", "-j", workers)["groups"]) == 12
