"""A hostile review of decoding, preprocessing and exports: what happens between bytes and numbers, and
what leaves as numbers.

Each test is a finding (or pins a claim an attack tried and found true). Numbers are checked against
numpy float64 of what Pillow gives (``Image.open(f)``, converted as ``--mode`` says: what a PIL-based
training loader sees).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import cli, cli_json, in_a_forked_child, one_line

RNG = np.random.default_rng(606)


# -- decoding: LAB ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(7, 9), (80, 70)], ids=["thumbnail", "large"])
def test_native_lab_is_counted_as_its_stored_bytes_by_every_statistic(tmp_path, size):
    """Pillow's histogram() of a LAB image shifts a and b by 128 (it reads them as signed): the mean from it
    was not the pixels' (np.asarray, what ToTensor sees), and --covariance (read from the pixels) disagreed."""
    pixels = RNG.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    path = tmp_path / "lab.tif"
    Image.fromarray(pixels, "LAB").save(path)
    want = np.asarray(Image.open(path)).reshape(-1, 3).astype(np.float64)
    result = cli("compute", path, "--mode", "native", "--covariance", "-j", "1", expect=0)
    report = json.loads(result.stdout)
    assert report["channels"] == ["L", "A", "B"]
    np.testing.assert_allclose(report["raw"]["mean"], want.mean(0), rtol=1e-12)
    np.testing.assert_allclose(report["raw"]["std"], want.std(0), rtol=1e-9)
    assert report["raw"]["min"] == want.min(0).tolist() and report["raw"]["max"] == want.max(0).tolist()
    np.testing.assert_allclose(report["covariance"], np.cov(want.T / 255, bias=True), rtol=1e-9)
    assert "LAB" in result.stderr and "stored bytes" in result.stderr  # said, once


# -- exports ---------------------------------------------------------------------------------------------------

NORMALIZING = ("torchvision", "hf", "timm", "mmcv", "mmdet", "keras", "keras-unit", "albumentations", "yaml", "json",
               "detectron2", "monai")


@pytest.fixture(scope="module")
def opaque_rgba(tmp_path_factory):
    """A result of RGBA images whose alpha is 255 everywhere: a channel of std 0."""
    root = tmp_path_factory.mktemp("opaque")
    pixels = RNG.integers(0, 256, (6, 5, 4, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    np.save(root / "rgba.npy", pixels)
    cli("compute", root / "rgba.npy", "-q", "-j", "1", "-o", root / "s.json", expect=0)
    return root / "s.json"


@pytest.mark.parametrize("fmt", NORMALIZING)
def test_a_constant_channel_is_exported_with_a_warning_that_normalizing_divides_by_its_zero_std(opaque_rgba, fmt):
    """Normalize by a std of 0 gives inf (HF, albumentations, mmcv) or fails later (torchvision): said on stderr,
    the config itself still on stdout."""
    result = cli("export", opaque_rgba, "--format", fmt, expect=0)
    assert result.stdout.strip()
    assert result.stderr.count("\n") == 1 and "channel A" in result.stderr and "std 0" in result.stderr


@pytest.mark.parametrize("fmt", ["gdal", "stac"])
def test_statistics_records_of_a_constant_channel_need_no_warning(opaque_rgba, fmt):
    assert cli("export", opaque_rgba, "--format", fmt, expect=0).stderr == ""


def test_the_python_export_warns_of_a_constant_channel_too(opaque_rgba):
    from bnstats import Result

    with pytest.warns(UserWarning, match="channel A .*std 0"):
        Result.load(opaque_rgba).export("torchvision")


@pytest.mark.parametrize("fmt", ["torchvision", "hf", "timm", "keras-unit", "albumentations", "yaml", "json"])
def test_digits_that_round_a_std_or_variance_to_zero_are_refused_in_one_line(stats_file, fmt):
    """--digits 0 printed Normalize(std=[0.0, 0.0, 0.0]): a division by zero, from a dataset of std 0.23."""
    line = one_line(cli("export", stats_file, "--format", fmt, "--digits", "0"))
    assert "0 decimals" in line and "channel R" in line and "more digits" in line


@pytest.mark.parametrize("fmt, digits", [("json", 2), ("hf", 1), ("mmcv", 0), ("keras", 0), ("detectron2", 0)])
def test_digits_that_keep_every_divisor_are_still_taken(stats_file, fmt, digits):
    """Raw-unit formats (0..255) keep their std at 0 decimals; unit ones at 1 or 2."""
    report = json.loads(stats_file.read_text())
    divisor = {"json": report["std"], "hf": report["std"], "mmcv": report["raw"]["std"],
               "keras": report["raw"]["var"], "detectron2": report["raw"]["std"]}[fmt]
    text = cli("export", stats_file, "--format", fmt, "--digits", digits, expect=0).stdout
    assert all(repr(float(round(v, digits))) in text for v in divisor) and all(round(v, digits) for v in divisor)


@pytest.fixture(scope="module")
def three_bands(tmp_path_factory):
    """A result of 3-band data that is no RGB: a YCbCr TIFF in native mode, bands Y Cb Cr of distinct means."""
    root = tmp_path_factory.mktemp("bands")
    pixels = np.stack([RNG.integers(0, 50, (6, 6)), RNG.integers(100, 150, (6, 6)),
                       RNG.integers(200, 250, (6, 6))], -1).astype(np.uint8)
    Image.fromarray(pixels, "YCbCr").save(root / "ycc.tif")
    out = root / "s.json"
    cli("compute", root / "ycc.tif", "--mode", "native", "-q", "-j", "1", "-o", out, expect=0)
    return out


def test_detectron2_keeps_the_stored_order_of_three_bands_that_are_not_rgb(three_bands):
    """detectron2's export reversed any 3-band result to 'BGR' order, although only RGB has a BGR: Cr Cb Y came
    out with no INPUT.FORMAT to say so (the docs: 'as stored otherwise')."""
    report = json.loads(three_bands.read_text())
    assert report["channels"] == ["Y", "Cb", "Cr"]
    text = cli("export", three_bands, "--format", "detectron2", expect=0).stdout
    assert f"cfg.MODEL.PIXEL_MEAN = {report['raw']['mean']!r}" in text
    assert "FORMAT" not in text


@pytest.mark.parametrize("fmt, flag", [("mmcv", "to_rgb"), ("mmdet", "bgr_to_rgb")])
def test_openmmlab_gets_no_colour_swap_flag_for_three_bands_that_are_not_rgb(three_bands, fmt, flag):
    """to_rgb=True swaps the first and third band of whatever is loaded: for Y Cb Cr data it would
    normalize Cr with Y's numbers."""
    text = cli("export", three_bands, "--format", fmt, expect=0).stdout
    assert flag not in text


# -- decoding: 16-bit colour in rgb and gray modes ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["c16.png", "c16.tif"])
@pytest.mark.parametrize("mode", ["rgb", "gray"])
def test_16bit_colour_read_as_8_bits_is_said_once(tmp_path, name, mode):
    """Pillow opens 16-bit colour PNG and TIFF as 8-bit RGB (the high bytes): the numbers are what torchvision's
    loader sees, but unlike 16-bit gray (clipped, and said) this went without a word."""
    cv2 = pytest.importorskip("cv2")
    wide = RNG.integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    for k in range(2):
        cv2.imwrite(str(tmp_path / f"{k}{name}"), wide[::-1] if k else wide)
    result = cli("compute", tmp_path, "--mode", mode, "-j", "1", expect=0)
    report = json.loads(result.stdout)
    want = np.concatenate([np.asarray(Image.open(p).convert({"rgb": "RGB", "gray": "L"}[mode])).reshape(
        -1, 3 if mode == "rgb" else 1) for p in sorted(tmp_path.iterdir())]).astype(np.float64)
    np.testing.assert_allclose(report["raw"]["mean"], want.mean(0), rtol=1e-12)
    assert report["max_value"] == 255
    notes = [line for line in result.stderr.splitlines() if "16-bit colour" in line]
    assert len(notes) == 1 and "--mode native" in notes[0]


@pytest.mark.parametrize("name", ["c16.png", "c16.tif"])
def test_a_16bit_colour_pillow_image_counted_in_native_mode_says_it_is_8_bits(tmp_path, name):
    """bnstats.compute(images) counts a Pillow image 'as the same image read from a file', but Pillow holds
    16-bit colour as 8 bits: native mode gave max_value 255 where the file gives 65535, without a word."""
    import warnings

    import bnstats

    cv2 = pytest.importorskip("cv2")
    cv2.imwrite(str(tmp_path / name), RNG.integers(0, 65536, (6, 7, 3)).astype(np.uint16))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        report = bnstats.compute([Image.open(tmp_path / name)], mode="native").report
    want = np.asarray(Image.open(tmp_path / name)).reshape(-1, 3).astype(np.float64)  # what Pillow holds
    np.testing.assert_allclose(report["raw"]["mean"], want.mean(0), rtol=1e-12)
    assert report["max_value"] == 255
    assert [str(w.message) for w in said if "16-bit colour" in str(w.message) and "file" in str(w.message)]
    assert bnstats.compute(tmp_path / name, mode="native", workers=1).report["max_value"] == 65535


# -- decoding: a process that lets Pillow load truncated images ----------------------------------------------------


@pytest.fixture
def truncated(tmp_path):
    """A folder of a truncated JPEG, a truncated PNG and one whole PNG."""
    import io

    pixels = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for fmt, name in (("JPEG", "t.jpg"), ("PNG", "t.png")):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt)
        (tmp_path / name).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.fromarray(pixels[:4]).save(tmp_path / "whole.png")
    return tmp_path


@pytest.mark.parametrize("how", ["paths", "pillow-images"])
def test_truncated_files_are_skipped_even_where_the_process_lets_pillow_load_them(truncated, monkeypatch, how):
    """Training code often sets ImageFile.LOAD_TRUNCATED_IMAGES = True at import; bnstats.compute in that process
    counted half images (the rest grey) as whole ones, without a word. Counting keeps its own rule and leaves
    the process's setting as it was."""
    import warnings

    import bnstats
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = truncated if how == "paths" else [Image.open(p) for p in sorted(truncated.iterdir())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = bnstats.compute(data, workers=1).report if how == "paths" else bnstats.compute(data).report
    assert report["images"] == 1 and len(report["skipped"]) == 2
    assert all("truncated" in entry["error"] for entry in report["skipped"])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_truncated_files_are_skipped_by_the_cli_in_such_a_process(truncated, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    report = cli_json("compute", truncated, "-j", "1", "-q")
    assert report["images"] == 1 and len(report["skipped"]) == 2
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_the_naive_and_model_loaders_refuse_truncated_files_in_such_a_process_too(truncated, monkeypatch):
    """compare's naive load (decode_file) and recalibrate's (load_image) read files outside a counting loop."""
    from PIL import ImageFile

    from bnstats.decoding.decode import decode_file, load_image
    from bnstats.decoding.options import DecodeOptions

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for name in ("t.jpg", "t.png"):
        with pytest.raises(OSError, match="truncated"):
            decode_file(str(truncated / name))
        with pytest.raises(OSError, match="truncated"):
            load_image((truncated / name).read_bytes(), DecodeOptions())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP"])
def test_the_pixel_bound_holds_where_the_process_turned_pillows_off(tmp_path, small_bounds, monkeypatch, fmt):
    """Image.MAX_IMAGE_PIXELS = None (common in remote sensing and medical code) switched off the only guard
    these formats have: a small file declaring a huge image was decoded whole. Counting keeps bnstats' bound
    (a skip entry naming its variable) and leaves the process's setting as it was."""
    import warnings

    import bnstats

    small_bounds(pixels=10_000)
    Image.new("RGB" if fmt != "GIF" else "P", (300, 200)).save(tmp_path / f"big.{fmt.lower()}", fmt)
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = bnstats.compute(tmp_path, workers=1).report
    assert report["images"] == 1 and len(report["skipped"]) == 1
    assert "BNSTATS_MAX_PIXELS" in report["skipped"][0]["error"]
    assert Image.MAX_IMAGE_PIXELS is None


def test_a_float_image_reduced_to_8_bits_says_what_became_of_values_in_0_1(tmp_path):
    """--mode rgb converts an F image as torchvision's loader does: Pillow truncates each value to a whole number,
    so a 0..1 float image is all 0 (and 1): the note said only 'clipping values above 255'."""
    values = RNG.random((6, 8)).astype(np.float32)
    values[0, 0] = 1.0
    Image.fromarray(values).save(tmp_path / "f.tif")
    result = cli("compute", tmp_path / "f.tif", "-j", "1", expect=0)
    report = json.loads(result.stdout)
    want = np.asarray(Image.open(tmp_path / "f.tif").convert("RGB")).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(report["raw"]["mean"], want.mean(0), rtol=1e-12)  # what the loader sees: 0s, a 1
    assert report["raw"]["max"] == [1.0, 1.0, 1.0]
    note = [line for line in result.stderr.splitlines() if "reduced to 8 bits" in line]
    assert len(note) == 1 and "whole number" in note[0] and "0..1" in note[0] and "--mode native" in note[0]


@pytest.fixture(scope="module")
def grouped_file(sample_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("grouped") / "g.json"
    cli("compute", sample_data, "-q", "-j", "1", "--group-by", "class", "-o", path, expect=0)
    return path


@pytest.mark.parametrize("value", ["x", [], {}, None])
@pytest.mark.parametrize("key", ["mean", "std", "min"])
@pytest.mark.parametrize("command", ["export", "merge"])
def test_a_group_statistic_that_is_no_number_is_a_one_line_error(grouped_file, tmp_path, value, key, command):
    """groups.CLASS.raw.mean: ["x", ...] reached math.isclose: a TypeError traceback from export, merge, plot."""
    from helpers import with_damage

    report = json.loads(grouped_file.read_text())
    group = sorted(report["groups"])[0]
    damaged = tmp_path / "d.json"
    damaged.write_text(json.dumps(with_damage(report, ("groups", group, "raw", key, 0), value)))
    args = ("export", damaged, "--format", "torchvision") if command == "export" else ("merge", damaged)
    line = one_line(cli(*args))
    assert f"groups.{group}.raw.{key}" in line


@pytest.fixture(scope="module")
def gray16_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("gray16")
    Image.fromarray(RNG.integers(0, 65536, (6, 7), dtype=np.uint16)).save(root / "g.png")
    cli("compute", root / "g.png", "--mode", "native", "-q", "-j", "1", "-o", root / "s.json", expect=0)
    return root / "s.json"


@pytest.mark.parametrize("fmt", ["torchvision", "timm"])
def test_unit_scale_exports_of_16bit_data_say_that_totensor_does_not_scale_them(gray16_file, fmt):
    """The numbers are /65535, but ToTensor() divides 8-bit images only (a 16-bit image stays int16): pasted
    after ToTensor they normalize unscaled values. Said in a comment the framework reads past."""
    from types import SimpleNamespace

    text = cli("export", gray16_file, "--format", fmt, expect=0).stdout
    comments = [line for line in text.splitlines() if line.startswith("#") and "65535" in line]
    assert len(comments) == 1 and "ToTensor" in comments[0] and "scale=True" in comments[0]
    calls = []
    exec(text, {"transforms": SimpleNamespace(Normalize=lambda **kw: calls.append(kw)), "dict": dict})
    report = json.loads(gray16_file.read_text())
    assert fmt == "timm" or calls == [{"mean": report["mean"], "std": report["std"]}]


def test_unit_scale_exports_of_8bit_data_have_no_such_comment(stats_file):
    assert "#" not in cli("export", stats_file, "--format", "torchvision", expect=0).stdout


@pytest.mark.parametrize("digits", [-1, 18, "3", True, 2.5])
def test_the_python_export_refuses_digits_the_command_would(stats_file, digits):
    """Result.export(digits=-1) rounded to tens (0.57 -> 0.0), "3" raised a TypeError inside round(): the command
    takes 0..17 only."""
    from bnstats import Result

    with pytest.raises(ValueError, match="digits must be an integer from 0 to 17"):
        Result.load(stats_file).export("torchvision", digits=digits)
    assert Result.load(stats_file).export("torchvision", digits=3).startswith("transforms.Normalize(mean=[0.575")


@pytest.mark.parametrize("raw", ["I;16N", "I;16L", "I;16B"])
def test_16bit_gray_of_any_byte_order_is_counted_as_16_bits(raw):
    """An I;16N image (native byte order, as Image.frombuffer makes it) went to Pillow's 8-bit histogram():
    mean 60 and max_value 255 for pixels of mean 15326."""
    import bnstats

    values = np.array([[1000, 60000], [5, 300]], np.uint16)
    order = ">u2" if raw == "I;16B" else "=u2" if raw == "I;16N" else "<u2"
    image = Image.frombytes(raw, (2, 2), values.astype(order).tobytes())
    report = bnstats.compute([image], mode="native").report
    assert report["max_value"] == 65535 and report["channels"] == ["L"]
    assert report["raw"]["mean"] == [values.mean()] and report["raw"]["max"] == [60000.0]


# -- decoding: what libtiff prints ---------------------------------------------------------------------------


def _damaged_deflate_tiff(path):
    import io

    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buffer, "TIFF",
                                                                             compression="tiff_adobe_deflate")
    data = bytearray(buffer.getvalue())
    for i in range(20, 60):  # inside the deflate stream: its checksum fails
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_libtiff_errors_are_part_of_the_skip_entry_not_stray_lines_past_quiet(tmp_path, capfd):
    """libtiff printed 'ZIPDecode: Decoding error ...' on the C stderr, past -q; the entry said 'decoder error -2'."""
    _damaged_deflate_tiff(tmp_path / "bad.tif")
    Image.fromarray(RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(tmp_path / "good.tif")
    capfd.readouterr()
    report = cli_json("compute", tmp_path, "-q", "-j", "1")
    said = capfd.readouterr()
    assert said.err == "" and report["images"] == 1
    (entry,) = report["skipped"]
    assert entry["path"].endswith("bad.tif") and "ZIPDecode" in entry["error"]


def test_what_libtiff_says_of_an_image_it_decodes_is_a_note(tmp_path, capfd, monkeypatch):
    """A warning libtiff prints while the image still decodes is a one-time note (under -q: nothing)."""
    import os

    from bnstats.decoding import decode

    real = decode._decode_bytes

    def warning_libtiff(data, options):  # what libtiff does: a line on descriptor 2, then the pixels
        os.write(2, b"TIFFReadDirectory: Warning, Unknown field with tag 65000 (0xfde8) encountered.\n")
        return real(data, options)

    monkeypatch.setattr(decode, "_decode_bytes", warning_libtiff)
    for k in range(2):
        Image.fromarray(RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(tmp_path / f"{k}.tif")
    capfd.readouterr()
    quiet = cli("compute", tmp_path, "-q", "-j", "1", expect=0)
    assert quiet.stderr == "" and capfd.readouterr().err == ""
    loud = cli("compute", tmp_path, "-j", "1", expect=0)
    notes = [line for line in loud.stderr.splitlines() if "decoder said" in line]
    assert notes == ["bnstats: warning: the decoder said: TIFFReadDirectory: Warning, Unknown field with tag N (NxfdeN) "
                     "encountered. (the image was counted)"]
    assert capfd.readouterr().err == ""


def test_pillow_rules_overlapping_in_threads_give_the_process_its_settings_back_last(monkeypatch):
    """Two threads decoding at once (a Dask threads scheduler): the first to leave must not restore the
    process's loose settings under the other's decode."""
    from PIL import ImageFile

    from bnstats.decoding.pillow import pillow_rules

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    first, second = pillow_rules(), pillow_rules()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False and Image.MAX_IMAGE_PIXELS is not None  # still decoding
    second.__exit__(None, None, None)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True and Image.MAX_IMAGE_PIXELS is None


def test_a_process_without_a_stderr_still_decodes_tiffs(tmp_path, monkeypatch):
    """Catching the C stderr needs descriptor 2: where it is closed (2>&-), TIFFs decode as before."""
    from bnstats.decoding import cstderr
    from bnstats.decoding.decode import decode_file

    def closed(fd):
        raise OSError(9, "Bad file descriptor")

    Image.fromarray(RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(tmp_path / "a.tif")
    monkeypatch.setattr(cstderr.os, "dup", closed)
    assert decode_file(str(tmp_path / "a.tif")).histogram().sum() == 3 * 20


def test_stderr_capture_is_the_outer_blocks_alone_and_the_main_threads():
    """Descriptor 2 is the process's: a capture inside another wiped the outer one's buffer (a message said
    twice), and tasks on threads put each other's buffers back (stderr lost for good). The inner block and
    other threads now leave descriptor 2 as it is."""
    import threading

    from bnstats.decoding import cstderr
    import os

    with cstderr.captured() as outer:
        os.write(2, b"first\n")
        with cstderr.captured() as inner:
            os.write(2, b"second\n")
    assert inner() == "" and outer() == "first\nsecond\n"
    seen = []
    before = os.fstat(2)
    thread = threading.Thread(target=lambda: seen.append(cstderr.captured().__enter__()()))
    thread.start()
    thread.join()
    assert seen == [""] and os.fstat(2).st_ino == before.st_ino


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork")
def test_a_forked_worker_catches_c_stderr_in_a_buffer_of_its_own():
    """The per-thread buffer libtiff's messages are caught in was inherited by forked workers: parent and
    workers wrote, read and truncated one file through one offset, so a worker's message could become
    another image's note, or be lost."""
    import os

    from bnstats.decoding import cstderr

    with cstderr.captured() as said:
        os.write(2, b"parent\n")
    assert said() == "parent\n"
    parents = os.fstat(cstderr._buffers.file.fileno()).st_ino
    def own_buffer():
        with cstderr.captured() as said:
            os.write(2, b"child\n")
        return os.fstat(cstderr._buffers.file.fileno()).st_ino != parents and said() == "child\n"

    assert in_a_forked_child(own_buffer)
    with cstderr.captured() as said:
        os.write(2, b"again\n")
    assert said() == "again\n"
