"""Nodata a TIFF declares itself: the GDAL_NODATA tag (42113) and internal masks (NewSubfileType 4 pages),
against numpy on the kept pixels; --ignore-value overriding the file's; hostile tags; the gdal export."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import SETTINGS, cli, cli_json
from reference import assert_report_matches, full_load

from bnstats.decoding.nodata import parse_nodata

tifffile = pytest.importorskip("tifffile")


def geotiff(path, pixels: np.ndarray, nodata: str | bytes | None, **write) -> np.ndarray:
    """Write ``pixels`` as a one-page TIFF with a GDAL_NODATA tag (None: without one); returns the pixels."""
    tags = [] if nodata is None else [(42113, "s", 0, nodata, True)]
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        write.setdefault("photometric", "rgb")
    elif pixels.ndim == 3:
        write.setdefault("photometric", "minisblack")
        write.setdefault("planarconfig", "contig")
    tifffile.imwrite(path, pixels, extratags=tags, **write)
    return pixels


def kept(arrays, nodata) -> dict:
    """numpy float64 statistics of the pixels not equal to ``nodata`` in every band (as (n, 1, C) rows)."""
    rows = []
    for a in arrays:
        a = a.reshape(-1, 1, a.shape[-1] if a.ndim == 3 else 1)
        rows.append(a[(a != nodata).any(axis=-1)[:, 0]])
    return full_load(rows) | {"images": len(rows)}


def rng_pixels(seed, shape, dtype, top):
    return np.random.default_rng(seed).integers(0, top, shape).astype(dtype)


CASES = {  # name: (pixels, tag, value)
    "uint8-rgb": (rng_pixels(1, (13, 17, 3), np.uint8, 3), "0", 0),
    "uint16-gray": (rng_pixels(2, (13, 17), np.uint16, 4) * 20000, "0", 0),
    "float32": (np.where(rng_pixels(3, (13, 17), np.uint8, 3) == 0, np.float32(-9999),
                         np.random.default_rng(4).normal(size=(13, 17)).astype(np.float32)), "-9999", -9999),
    # a value float32 cannot hold exactly: compared in the pixels' type, as GDAL does
    "float32-two-bands": (np.where(rng_pixels(5, (13, 17, 1), np.uint8, 3) == 0, np.float32(0.1),
                                   np.random.default_rng(6).normal(size=(13, 17, 2)).astype(np.float32)),
                          "0.1", np.float32(0.1)),
}


@pytest.mark.parametrize("case", CASES)
def test_gdal_nodata_leaves_out_pixels_equal_to_it_in_every_band(tmp_path, case):
    pixels, tag, value = CASES[case]
    geotiff(tmp_path / "a.tif", pixels, tag)
    result = cli("compute", "--mode", "native", tmp_path / "a.tif", expect=0)
    report = json.loads(result.stdout)
    assert 0 < report["pixels"] < pixels.shape[0] * pixels.shape[1]  # some were left out, not all
    assert_report_matches(report, kept([pixels], value), tol=1e-12)
    assert report["settings"]["ignore_value"] is None  # the file's value, not a setting
    assert f"nodata value {tag} from the file (GDAL_NODATA) left out" in result.stderr


def test_gdal_nodata_in_rgb_mode_where_the_stored_values_are_counted(tmp_path):
    pixels, _, _ = CASES["uint8-rgb"]
    gray = pixels[..., 0]
    geotiff(tmp_path / "rgb.tif", pixels, "0")
    assert_report_matches(cli_json("compute", "-q", tmp_path / "rgb.tif"), kept([pixels], 0), tol=1e-12)
    geotiff(tmp_path / "gray.tif", gray, "0")  # gray read as R = G = B: the same pixels left out
    report = cli_json("compute", "-q", tmp_path / "gray.tif")
    assert report["pixels"] == int((gray != 0).sum()) and report["channels"] == ["R", "G", "B"]


def test_gdal_nodata_is_not_applied_where_the_mode_changes_the_stored_values(tmp_path):
    pixels = CASES["uint16-gray"][0]
    geotiff(tmp_path / "a.tif", pixels, "0")  # --mode rgb clips 16 bits to 8: 0 no longer names the same pixels
    result = cli("compute", tmp_path / "a.tif", expect=0)
    assert json.loads(result.stdout)["pixels"] == pixels.size
    assert "not applied: --mode rgb changes the stored values" in result.stderr


def test_ignore_value_overrides_the_files_nodata(tmp_path):
    pixels = CASES["uint16-gray"][0]
    geotiff(tmp_path / "a.tif", pixels, "0")
    result = cli("compute", "--mode", "native", "--ignore-value", "20000", tmp_path / "a.tif", expect=0)
    assert_report_matches(json.loads(result.stdout), kept([pixels], 20000), tol=1e-12)
    assert "nodata value 0 from the file (GDAL_NODATA) not used: --ignore-value overrides it" in result.stderr


def test_nan_nodata_leaves_out_non_finite_pixels_as_always(tmp_path):
    pixels = np.random.default_rng(5).normal(size=(9, 11)).astype(np.float32)
    pixels[2:4] = np.nan
    geotiff(tmp_path / "a.tif", pixels, "nan")
    result = cli("compute", "--mode", "native", tmp_path / "a.tif", expect=0)
    report = json.loads(result.stdout)
    assert report["pixels"] == 9 * 11 - 22
    assert report["raw"]["mean"][0] == pytest.approx(np.nanmean(pixels.astype(np.float64)), rel=1e-12)
    assert "nodata value nan from the file (GDAL_NODATA)" in result.stderr


@pytest.mark.parametrize("tag", ["abc", "0x10", "", "1,2", "--5", "nan nan", b"\xff\xfe0", "9" * 200])
def test_a_garbage_gdal_nodata_tag_is_ignored_with_a_note(tmp_path, tag):
    pixels = CASES["uint16-gray"][0]
    geotiff(tmp_path / "a.tif", pixels, tag)
    result = cli("compute", "--mode", "native", tmp_path / "a.tif", expect=0)
    assert json.loads(result.stdout)["pixels"] == pixels.size  # every pixel counted
    assert "GDAL_NODATA tag" in result.stderr and "is not a number: ignored" in result.stderr


@pytest.mark.parametrize("dtype, tag, holds", [(np.uint16, "-9999", False), (np.uint8, "300", False),
                                               (np.uint16, "2.5", False), (np.int16, "-9999", True),
                                               (np.uint16, "65535", True)])
def test_a_nodata_value_its_samples_cannot_hold_says_nothing_is_left_out(tmp_path, dtype, tag, holds):
    """-9999 on uint16 printed 'left out' though no pixel can equal it: the note was false."""
    pixels = np.full((4, 5), 7, dtype)
    pixels[0, 0] = np.iinfo(dtype).max if tag == "65535" else -9999 if tag == "-9999" and holds else 1
    geotiff(tmp_path / "a.tif", pixels, tag)
    result = cli("compute", "--mode", "native", tmp_path / "a.tif", expect=0)
    counted = json.loads(result.stdout)["pixels"]
    if holds:
        assert "left out: pixels equal to it" in result.stderr and counted == pixels.size - 1
    else:
        assert f"nodata value {tag} from the file (GDAL_NODATA) is no value of its" in result.stderr
        assert "no pixel is left out" in result.stderr and counted == pixels.size


@SETTINGS
@given(st.binary(max_size=80))
def test_parse_nodata_never_raises_and_gives_a_number_or_none(raw):
    value = parse_nodata(raw)
    assert value is None or isinstance(value, (int, float))


@pytest.mark.parametrize("text, value", [("0", 0), (" -9999 ", -9999), ("1e3", 1000), ("0.5", 0.5),
                                         ("-3.4028234663852886e+38", -3.4028234663852886e38)])
def test_parse_nodata_reads_gdals_numbers(text, value):
    assert parse_nodata(text.encode() + b"\0") == value


def test_one_note_per_value_and_j1_j2_give_the_same_bytes(tmp_path):
    arrays = [rng_pixels(10 + i, (8, 9), np.uint16, 3) for i in range(5)]
    for i, a in enumerate(arrays):
        geotiff(tmp_path / f"{i}.tif", a, "0" if i % 2 else "1")
    one = cli("compute", "--mode", "native", "-j", "1", tmp_path, expect=0)
    two = cli("compute", "--mode", "native", "-j", "2", tmp_path, expect=0)
    assert one.stdout == two.stdout
    rows = [a[a != (0 if i % 2 else 1)].reshape(-1, 1, 1) for i, a in enumerate(arrays)]
    assert_report_matches(json.loads(one.stdout), full_load(rows) | {"images": 5}, tol=1e-12)
    for value in (0, 1):
        assert one.stderr.count(f"nodata value {value} from the file") == 1


def test_the_gdal_export_says_how_bnstats_rule_differs_from_gdals(tmp_path):
    pixels = CASES["uint8-rgb"][0]
    geotiff(tmp_path / "a.tif", pixels, "0")
    cli("compute", "-q", "--mode", "native", tmp_path / "a.tif", "-o", tmp_path / "s.json", expect=0)
    text = cli("export", tmp_path / "s.json", "--format", "gdal", expect=0).stdout
    root = ET.fromstring(text)  # still a PAM document
    assert len(root.findall("PAMRasterBand")) == 3
    assert "GDAL_NODATA" in text and "band by band" in text and "STATISTICS_VALID_PERCENT" in text
    cli("compute", "-q", "--mode", "native", "--ignore-value", "0,0,1", tmp_path / "a.tif", "-o",
        tmp_path / "t.json", expect=0)
    assert "pixels of exactly the values 0.0, 0.0, 1.0, band by band (--ignore-value)" in \
        cli("export", tmp_path / "t.json", "--format", "gdal", expect=0).stdout


# -- internal masks ----------------------------------------------------------------------------------------

def masked_tiff(path, images, masks) -> None:
    """Each image page followed by its transparency mask page (NewSubfileType 4), as GDAL writes them."""
    with tifffile.TiffWriter(path) as w:
        for image, mask in zip(images, masks):
            w.write(image, photometric="rgb" if image.ndim == 3 else "minisblack")
            if mask is not None:
                w.write(mask, subfiletype=4, photometric=4)


def block_mask(shape, seed) -> np.ndarray:
    mask = np.random.default_rng(seed).random(shape) < 0.6
    mask[0, 0] = True
    return mask


@pytest.mark.parametrize("mode", ["rgb", "native"])
def test_an_internal_mask_leaves_out_the_pixels_where_it_is_0(tmp_path, mode):
    image, mask = rng_pixels(20, (11, 14, 3), np.uint8, 256), block_mask((11, 14), 21)
    masked_tiff(tmp_path / "m.tif", [image], [mask])
    result = cli("compute", "--mode", mode, tmp_path / "m.tif", expect=0)
    report = json.loads(result.stdout)
    assert report["images"] == 1  # the mask page is no image of its own
    assert_report_matches(report, full_load([image[mask][:, None]]), tol=1e-12)
    assert "internal mask applied" in result.stderr


def test_a_stack_with_masks_counts_its_image_pages_each_with_its_own_mask(tmp_path):
    images = [rng_pixels(30 + i, (7, 9), np.uint16, 65536) for i in range(3)]
    masks = [block_mask((7, 9), 40), None, block_mask((7, 9), 41)]
    masked_tiff(tmp_path / "s.tif", images, masks)
    report = cli_json("compute", "-q", "--mode", "native", tmp_path / "s.tif")
    assert report["images"] == 3
    rows = [(im[m] if m is not None else im.ravel())[:, None, None] for im, m in zip(images, masks)]
    assert_report_matches(report, full_load(rows) | {"images": 3}, tol=1e-12)


def test_mask_and_nodata_together_and_a_resize_that_cannot_use_the_mask(tmp_path):
    image, mask = rng_pixels(50, (10, 12), np.uint16, 3), block_mask((10, 12), 51)
    with tifffile.TiffWriter(tmp_path / "b.tif") as w:
        w.write(image, extratags=[(42113, "s", 0, "0", True)])
        w.write(mask, subfiletype=4, photometric=4)
    both = mask & (image != 0)
    report = cli_json("compute", "-q", "--mode", "native", tmp_path / "b.tif")
    assert_report_matches(report, full_load([image[both][:, None, None]]), tol=1e-12)
    result = cli("compute", "--mode", "native", "--center-crop", "8", tmp_path / "b.tif", expect=0)
    assert "internal mask was not applied: --resize, --center-crop" in result.stderr
    assert json.loads(result.stdout)["images"] == 1


def test_a_mask_of_another_size_is_not_applied_and_says_so(tmp_path):
    image = rng_pixels(60, (10, 12), np.uint8, 256)
    masked_tiff(tmp_path / "c.tif", [image], [np.ones((5, 6), bool)])
    result = cli("compute", "--mode", "native", tmp_path / "c.tif", expect=0)
    assert json.loads(result.stdout)["pixels"] == image.size
    assert "internal mask was not applied: it is not one mask of the page's size" in result.stderr


def test_a_mask_that_cannot_be_read_makes_its_page_a_skip_entry(tmp_path):
    image, mask = rng_pixels(70, (10, 12), np.uint8, 256), block_mask((10, 12), 71)
    path = tmp_path / "d.tif"
    with tifffile.TiffWriter(path) as w:
        w.write(image)
        w.write(mask, subfiletype=4, photometric=4, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        at, size = tif.pages[1].dataoffsets[0], tif.pages[1].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[at : at + size] = b"\xff" * size  # no zlib stream
    path.write_bytes(bytes(data))
    geotiff(tmp_path / "e.tif", image, None)
    report = cli_json("compute", "-q", "--mode", "native", tmp_path)
    assert report["images"] == 1 and report["pixels"] == image.size  # e.tif; d.tif is not counted whole
    assert [s["path"] for s in report["skipped"]] == [str(path)]
    assert "internal mask (page 1) cannot be read" in report["skipped"][0]["error"]


@SETTINGS
@given(st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=90), st.sampled_from(["native", "rgb"]))
def test_no_gdal_nodata_text_crashes_and_a_number_leaves_out_its_pixels(tag, mode):
    import io

    from bnstats.decoding.decode import decode_bytes
    from bnstats.decoding.options import DecodeOptions

    pixels = CASES["uint8-rgb"][0]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, photometric="rgb", extratags=[(42113, "s", 0, tag, True)])
    image = decode_bytes(buffer.getvalue(), DecodeOptions(mode=mode))
    value = parse_nodata(tag.encode())
    if value is None or not np.isfinite(value):
        expected = pixels.reshape(-1, 3)
    else:
        expected = pixels.reshape(-1, 3)[(pixels.reshape(-1, 3) != value).any(axis=-1)]
    assert np.array_equal(image.values(), expected)


@pytest.mark.slow
@pytest.mark.parametrize("masked", [False, True])
def test_pixels_holding_gdal_nodata_in_some_bands_only_are_counted_with_a_note(tmp_path, masked):
    """A Sentinel-2 pixel (0, 17, 0) with GDAL_NODATA 0: counted in every band (GDAL leaves band 1 and 3 out),
    as netCDF/HDF5 arrays say in a note; without one the TIFF's numbers differed from GDAL's silently."""
    tifffile = pytest.importorskip("tifffile")
    bands = np.random.default_rng(5).integers(1, 9000, (8, 8, 13), dtype=np.uint16)
    bands[:2] = 0  # whole pixels of nodata: left out, no note
    path = tmp_path / "s2.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(bands, photometric="minisblack", planarconfig="contig", extratags=[(42113, "s", 0, "0", True)])
        if masked:
            writer.write(np.ones((8, 8), bool), subfiletype=4, photometric=4)
    quiet = cli("compute", path, "--mode", "native", expect=0)
    assert "some bands only" not in quiet.stderr
    bands[5, 5, 3] = 0
    with tifffile.TiffWriter(path) as writer:
        writer.write(bands, photometric="minisblack", planarconfig="contig", extratags=[(42113, "s", 0, "0", True)])
        if masked:
            writer.write(np.ones((8, 8), bool), subfiletype=4, photometric=4)
    result = cli("compute", path, "--mode", "native", expect=0)
    assert ("pixels that hold the nodata value 0 from the file (GDAL_NODATA) in some bands only are counted, that "
            "value with them (GDAL would leave out each such value") in result.stderr
    assert json.loads(result.stdout)["pixels"] == 6 * 8
    assert "some bands only" not in cli("compute", path, "--mode", "native", "--ignore-value", "0", expect=0).stderr
