"""OME-TIFF read as its series: channels (C) as bands named from the OME-XML, Z/T planes as the voxels of
one item; against numpy float64; non-OME stacks keep one item per page."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from helpers import cli, cli_json
from reference import assert_report_matches, full_load

from bnstats import limits

tifffile = pytest.importorskip("tifffile")


def volume(shape, dtype=np.uint16, seed=0) -> np.ndarray:
    top = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, top, shape).astype(dtype)


def by_channel(pixels: np.ndarray, axes: str) -> np.ndarray:
    """The voxels of an array of ``axes`` as ``(n, 1, C)`` rows, channel axes (C, then S) last."""
    at = [axes.index(a) for a in "CS" if a in axes]
    moved = np.moveaxis(pixels, at, list(range(-len(at), 0))) if at else pixels[..., None]
    channels = int(np.prod([pixels.shape[i] for i in at])) if at else 1
    return moved.reshape(-1, 1, channels)


def listed_keys(*paths) -> list[str]:
    from bnstats.inputs.select import select

    return select([str(p) for p in paths]).keys


@pytest.mark.parametrize("axes, shape", [("TCZYX", (2, 3, 4, 5, 6)), ("ZCYX", (5, 2, 7, 6)), ("CYX", (4, 6, 5)),
                                         ("ZYX", (3, 6, 5))])
def test_an_ome_tiff_is_one_item_its_channels_bands_its_planes_voxels(tmp_path, axes, shape):
    pixels = volume(shape, seed=len(axes))
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, pixels, ome=True, photometric="minisblack", metadata={"axes": axes})
    assert listed_keys(path) == [str(path)]  # one item, its plain key: no FILE:PAGE
    report = cli_json("compute", "-q", "--mode", "native", path)
    channels = shape[axes.index("C")] if "C" in axes else 1
    assert report["channels"] == (["L"] if channels == 1 else [f"C{i}" for i in range(channels)])
    assert_report_matches(report, full_load([by_channel(pixels, axes)]), tol=1e-12)  # 1 image, voxels as pixels


def test_ome_channel_names_become_band_names_where_usable(tmp_path):
    pixels = volume((4, 3, 5, 6), np.uint8, seed=7)
    for names, expected in ((["DAPI", "GFP", "RFP"], ["DAPI", "GFP", "RFP"]), (["a", "a", "b"], ["C0", "C1", "C2"]),
                            (["x" * 40, "y", "z"], ["C0", "C1", "C2"])):
        tifffile.imwrite(tmp_path / "n.ome.tif", pixels, ome=True, photometric="minisblack",
                         metadata={"axes": "ZCYX", "Channel": {"Name": names}})
        report = cli_json("compute", "-q", "--mode", "native", tmp_path / "n.ome.tif")
        assert report["channels"] == expected
        assert_report_matches(report, full_load([by_channel(pixels, "ZCYX")]), tol=1e-12)


def test_an_rgb_ome_stack_is_r_g_b_in_any_mode(tmp_path):
    pixels = volume((3, 5, 6, 3), np.uint8, seed=8)
    tifffile.imwrite(tmp_path / "rgb.ome.tif", pixels, ome=True, photometric="rgb", metadata={"axes": "ZYXS"})
    for mode in ("rgb", "native"):
        report = cli_json("compute", "-q", "--mode", mode, tmp_path / "rgb.ome.tif")
        assert report["channels"] == ["R", "G", "B"]
        assert_report_matches(report, full_load([by_channel(pixels, "ZYXS")]), tol=1e-12)


@pytest.mark.parametrize("extra", [[], ["--resize", "4"], ["--center-crop", "3"]])
def test_an_ome_stack_counts_what_its_planes_count_as_pages_of_a_plain_stack(tmp_path, extra):
    """Z planes of one channel: the same voxels as the pages of a non-OME stack (which stays one item per
    page), resized or cropped plane by plane."""
    pixels = volume((4, 9, 8), seed=9)
    tifffile.imwrite(tmp_path / "a.ome.tif", pixels, ome=True, photometric="minisblack", metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "b.tif", pixels, photometric="minisblack")
    ome = cli_json("compute", "-q", "--mode", "native", *extra, tmp_path / "a.ome.tif")
    pages = cli_json("compute", "-q", "--mode", "native", *extra, tmp_path / "b.tif")
    assert ome["images"] == 1 and pages["images"] == 4
    assert ome["pixels"] == pages["pixels"] and ome["raw"] == pages["raw"]


def test_several_ome_images_in_one_file_count_together_or_are_a_skip_entry(tmp_path):
    a, b = volume((2, 2, 5, 6), seed=10), volume((3, 2, 4, 4), seed=11)
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as w:
        w.write(a, photometric="minisblack", metadata={"axes": "ZCYX"})
        w.write(b, photometric="minisblack", metadata={"axes": "ZCYX"})
    report = cli_json("compute", "-q", "--mode", "native", tmp_path / "two.ome.tif")
    rows = np.concatenate([by_channel(a, "ZCYX"), by_channel(b, "ZCYX")])
    assert_report_matches(report, full_load([rows]), tol=1e-12)
    with tifffile.TiffWriter(tmp_path / "mixed.ome.tif", ome=True) as w:
        w.write(a, photometric="minisblack", metadata={"axes": "ZCYX"})
        w.write(volume((3, 4, 4), seed=12), photometric="minisblack", metadata={"axes": "CYX"})
    result = cli("compute", "--mode", "native", tmp_path / "mixed.ome.tif", tmp_path / "two.ome.tif", expect=0)
    assert json.loads(result.stdout)["images"] == 1
    assert "different channels or sample types" in json.loads(result.stdout)["skipped"][0]["error"]


@pytest.mark.parametrize("description", ["<garbage OME>", '<?xml version="1.0"?><OME><Image><Pixels '
                                         'SizeX="99999" SizeY="99999" SizeC="x"/></Image></OME>'])
def test_unreadable_ome_xml_is_a_skip_entry_and_tifffile_prints_nothing(tmp_path, description):
    tifffile.imwrite(tmp_path / "bad.ome.tif", volume((3, 5, 6), np.uint8), description=description, metadata=None,
                     photometric="minisblack")
    tifffile.imwrite(tmp_path / "good.tif", volume((5, 6), np.uint8))
    result = cli("compute", "-j", "1", tmp_path, expect=0)
    report = json.loads(result.stdout)
    assert report["images"] == 1 and len(report["skipped"]) == 1
    assert "OME-XML tifffile cannot read" in report["skipped"][0]["error"]
    assert "tifffile.TiffFile" not in result.stderr  # its logging stays off stderr


def test_an_ome_tiff_over_the_bounds_is_refused_before_a_plane_is_read(tmp_path, small_bounds):
    from bnstats.decoding.decode import decode_bytes
    from bnstats.decoding.options import DecodeOptions

    tifffile.imwrite(tmp_path / "big.ome.tif", volume((6, 2, 30, 30)), ome=True, photometric="minisblack",
                     metadata={"axes": "ZCYX"})
    small_bounds(pixels=6 * 30 * 30 - 1)  # each plane fits, the volume does not
    with pytest.raises(limits.LimitError):
        decode_bytes((tmp_path / "big.ome.tif").read_bytes(), DecodeOptions(mode="native"))


def test_an_ome_tiff_in_an_archive_is_counted_whole(tmp_path):
    pixels = volume((3, 2, 5, 4), seed=13)
    tifffile.imwrite(tmp_path / "c.ome.tif", pixels, ome=True, photometric="minisblack", metadata={"axes": "ZCYX"})
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.write(tmp_path / "c.ome.tif", "c.ome.tif")
    report = cli_json("compute", "-q", "--mode", "native", tmp_path / "a.zip")
    assert report["skipped"] == []
    assert_report_matches(report, full_load([by_channel(pixels, "ZCYX")]), tol=1e-12)


def test_ome_files_give_the_same_bytes_with_j1_and_j2(tmp_path):
    for i in range(4):
        tifffile.imwrite(tmp_path / f"{i}.ome.tif", volume((2, 2, 6, 5), seed=20 + i), ome=True,
                         metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    one = cli("compute", "--mode", "native", "-j", "1", tmp_path, expect=0).stdout
    two = cli("compute", "--mode", "native", "-j", "2", tmp_path, expect=0).stdout
    assert one == two and json.loads(one)["images"] == 4 and json.loads(one)["channels"] == ["DAPI", "GFP"]


def test_an_imagej_hyperstack_keeps_its_pages_and_says_its_channels_are_mixed(tmp_path):
    pixels = volume((4, 3, 8, 9), seed=30)
    tifffile.imwrite(tmp_path / "ij.tif", pixels, imagej=True, metadata={"axes": "ZCYX"})
    result = cli("compute", "--mode", "native", tmp_path / "ij.tif", expect=0)
    report = json.loads(result.stdout)
    assert report["images"] == 12 and report["channels"] == ["L"]  # today's rule: every page an image
    assert_report_matches(report, full_load([pixels.reshape(-1, 1, 1)]) | {"images": 12}, tol=1e-12)
    assert "an ImageJ hyperstack of 3 channels is counted page by page" in result.stderr
    tifffile.imwrite(tmp_path / "one.tif", pixels[:, 0], imagej=True, metadata={"axes": "ZYX"})
    assert "hyperstack" not in cli("compute", "--mode", "native", tmp_path / "one.tif", expect=0).stderr


@pytest.mark.slow
def test_an_ome_tiff_pairs_with_an_ome_mask_of_its_planes(tmp_path):
    """An OME-TIFF's mask is an OME-TIFF of one channel over the same planes (axes and sizes but the
    channels): the foreground equals numpy on the voxels; a mask of other planes, of another plane order, of
    several channels, or no OME-TIFF is the image's skipped entry."""
    for folder in ("img", "lab", "planes", "order", "bands", "plain"):
        (tmp_path / folder).mkdir()
    image = volume((3, 2, 4, 8, 8), np.uint16, seed=5)  # T Z C Y X
    labels = (image[:, :, 0] % 3).astype(np.uint8)  # T Z Y X
    tifffile.imwrite(tmp_path / "img" / "a.ome.tif", image, metadata={"axes": "TZCYX"})
    tifffile.imwrite(tmp_path / "lab" / "a.ome.tif", labels, metadata={"axes": "TZYX"})
    report = cli_json("compute", tmp_path / "img", "--mask", tmp_path / "lab", "--mode", "native", "-j", "1")
    voxels = np.moveaxis(image, 2, -1)  # T Z Y X C
    foreground = voxels[labels > 0].astype(np.float64)
    assert report["skipped"] == [] and report["foreground"]["pixels"] == foreground.shape[0]
    np.testing.assert_allclose(report["foreground"]["raw"]["mean"], foreground.mean(axis=0), rtol=1e-14)
    assert report["foreground"]["raw"]["median"] == np.median(foreground, axis=0).tolist()
    tifffile.imwrite(tmp_path / "planes" / "a.ome.tif", labels[:2], metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "order" / "a.ome.tif", labels.transpose(1, 0, 2, 3).copy(), metadata={"axes": "ZTYX"})
    tifffile.imwrite(tmp_path / "bands" / "a.ome.tif", np.stack([labels] * 2, axis=2), metadata={"axes": "TZCYX"})
    tifffile.imwrite(tmp_path / "plain" / "a.ome.tif", labels[0, 0])
    tifffile.imwrite(tmp_path / "img" / "b.tif", image[0, 0, 0])  # a plain image whose mask fits: the run goes on
    for folder in ("planes", "order", "bands", "plain"):
        tifffile.imwrite(tmp_path / folder / "b.tif", labels[0, 0])
        result = cli("compute", tmp_path / "img", "--mask", tmp_path / folder, "--mode", "native", "-j", "1")
        assert result.exit_code == 0, result.output
        skipped = json.loads(result.stdout)["skipped"]
        assert [entry["path"].rsplit("/", 1)[-1] for entry in skipped] == ["a.ome.tif"], folder
        assert "mask" in skipped[0]["error"]


@pytest.mark.slow
def test_a_damaged_ome_mask_or_image_is_named_in_the_skipped_entry(tmp_path):
    """A mask whose planes cannot be decoded is the image's skipped entry naming the mask; an image whose
    OME-XML cannot be read is its own skipped entry, never blamed on its mask."""
    for folder in ("img", "lab"):
        (tmp_path / folder).mkdir()
    image = volume((2, 3, 8, 8), np.uint16, seed=6)  # Z C Y X
    labels = (image[:, 0] % 3).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img" / "a.ome.tif", image, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "img" / "b.ome.tif", image, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "img" / "c.ome.tif", image, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "lab" / "a.ome.tif", labels, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "lab" / "c.ome.tif", labels, metadata={"axes": "ZYX"})
    damaged = tmp_path / "lab" / "b.ome.tif"
    tifffile.imwrite(damaged, labels, metadata={"axes": "ZYX"}, compression="zlib")
    with tifffile.TiffFile(damaged) as tif:
        start, length = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(damaged.read_bytes())
    data[start + 2 : start + length] = b"\xff" * (length - 2)  # the zlib stream's body: no deflate data
    damaged.write_bytes(bytes(data))
    broken = tmp_path / "img" / "c.ome.tif"  # its OME-XML names an order of no axes: tifffile cannot read it
    broken.write_bytes(broken.read_bytes().replace(b'DimensionOrder="XYCZT"', b'DimensionOrder="QQQQQ"'))
    report = cli_json("compute", tmp_path / "img", "--mask", tmp_path / "lab", "--mode", "native", "-j", "1")
    errors = {entry["path"].rsplit("/", 1)[-1]: entry["error"] for entry in report["skipped"]}
    assert set(errors) == {"b.ome.tif", "c.ome.tif"}
    assert errors["b.ome.tif"].startswith(f"mask {damaged}") and "Error" in errors["b.ome.tif"]
    assert "mask" not in errors["c.ome.tif"] and "OME-XML" in errors["c.ome.tif"]
    assert report["foreground"]["pixels"] == int((labels > 0).sum())  # a.ome.tif's alone


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_ome_masks_of_rgb_planes_and_several_images_pair_voxel_for_voxel(tmp_path, dtype):
    """An RGB (``S``) z-stack pairs with ``ZYX`` labels of any whole-number type, and an OME-TIFF of two
    images with a mask of the same two images, in order: the foreground equals numpy's."""
    for folder in ("img", "lab"):
        (tmp_path / folder).mkdir()
    rng = np.random.default_rng(9)
    rgb, first, second = (rng.integers(0, 255, (2, 8, 8, 3)).astype(np.uint8),
                          volume((2, 2, 8, 8), seed=1), volume((3, 2, 8, 8), seed=2))  # Z Y X S; Z C Y X twice
    labels = [rng.integers(0, 3, shape).astype(dtype) for shape in ((2, 8, 8), (2, 8, 8), (3, 8, 8))]
    tifffile.imwrite(tmp_path / "img" / "rgb.ome.tif", rgb, photometric="rgb", metadata={"axes": "ZYXS"})
    tifffile.imwrite(tmp_path / "lab" / "rgb.ome.tif", labels[0], metadata={"axes": "ZYX"})
    for folder, parts, axes in (("img", (first, second), "ZCYX"), ("lab", labels[1:], "ZYX")):
        with tifffile.TiffWriter(tmp_path / folder / "two.ome.tif", ome=True) as writer:
            for part in parts:
                writer.write(part, metadata={"axes": axes})
    for name, voxels, marks in (("rgb", rgb.reshape(-1, 3), labels[0].ravel()),
                                ("two", np.concatenate([np.moveaxis(p, 1, -1).reshape(-1, 2) for p in (first, second)]),
                                 np.concatenate([m.ravel() for m in labels[1:]]))):
        report = cli_json("compute", tmp_path / "img" / f"{name}.ome.tif", "--mask", tmp_path / "lab", "--mode",
                          "native", "-j", "1")
        foreground = voxels[marks > 0].astype(np.float64)
        assert report["skipped"] == [] and report["foreground"]["pixels"] == foreground.shape[0]
        np.testing.assert_allclose(report["foreground"]["raw"]["mean"], foreground.mean(axis=0), rtol=1e-14)
