"""--stack volume: a multi-page TIFF counted as one item whose pages are the planes of a volume, against numpy
on every page; the same pixels as --stack pages, one image per file; workers, shards + merge, resume; pages
that make no volume (sizes, sample types, a broken chain) as skipped entries; what takes no volume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import cli, cli_json, one_line_error
from reference import assert_report_matches, full_load

tifffile = pytest.importorskip("tifffile")


def write_stacks(folder, dtype=np.uint16, shape=(5, 8, 9), count=3, seed=0) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    stacks = []
    for i in range(count):
        if info is None:
            data = rng.normal(0, 3, shape).astype(dtype)
        else:
            data = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
        tifffile.imwrite(folder / f"s{i}.tif", data, photometric="rgb" if shape[-1] == 3 else "minisblack")
        stacks.append(data)
    return stacks


@pytest.mark.parametrize("dtype, shape", [(np.uint8, (4, 6, 7)), (np.uint16, (5, 8, 9)), (np.int16, (3, 5, 5)),
                                          (np.float32, (4, 6, 6)), (np.uint8, (3, 6, 7, 3))])
def test_a_stack_is_one_item_of_every_page(tmp_path, dtype, shape):
    stacks = write_stacks(tmp_path / "z", dtype, shape)
    volume = cli_json("compute", tmp_path / "z", "--mode", "native", "--stack", "volume", "-j", "1")
    pages = cli_json("compute", tmp_path / "z", "--mode", "native", "-j", "1")
    planes = [page if page.ndim == 3 else page[..., None] for s in stacks for page in s]
    values = np.concatenate([p.reshape(-1, p.shape[-1]) for p in planes]).astype(np.float64)
    assert pages["images"] == len(planes) and volume["images"] == len(stacks)
    assert volume["pixels"] == pages["pixels"] == values.shape[0]
    np.testing.assert_allclose(volume["raw"]["mean"], values.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(volume["raw"]["std"], values.std(axis=0), rtol=1e-12)
    assert volume["raw"]["min"] == values.min(axis=0).tolist() and volume["raw"]["max"] == values.max(axis=0).tolist()
    if np.dtype(dtype).kind != "f":  # integers: the very same exact state as the pages counted one by one
        assert volume["state"]["histogram"] == pages["state"]["histogram"]
        assert {k: volume[k] for k in ("mean", "var", "median")} == {k: pages[k] for k in ("mean", "var", "median")}
    if dtype == np.uint8 and len(shape) == 3:
        assert_report_matches(volume, full_load(planes) | {"images": len(stacks)})


@pytest.mark.slow
def test_workers_shards_merge_and_resume_give_the_same_bytes(tmp_path):
    write_stacks(tmp_path / "z", count=7)
    args = ("--mode", "native", "--stack", "volume")
    one = cli_json("compute", tmp_path / "z", *args, "-j", "1")
    assert cli_json("compute", tmp_path / "z", *args, "-j", "2") == one
    parts = []
    for k in range(3):
        part = tmp_path / f"p{k}.json"
        assert cli("compute", tmp_path / "z", *args, "--shard", f"{k}/3", "-j", "1", "-o", part).exit_code == 0
        parts.append(part)
    merged = cli_json("merge", *parts)
    assert {k: merged[k] for k in ("state", "files", "images")} == {k: one[k] for k in ("state", "files", "images")}
    resumed = cli_json("compute", tmp_path / "z", *args, "-j", "1", "--checkpoint", tmp_path / "ck.json")
    assert resumed["state"] == one["state"] and resumed["files"] == one["files"]


def test_pages_that_make_no_volume_are_skipped_entries_naming_the_remedy(tmp_path):
    write_stacks(tmp_path / "z", count=1)
    with tifffile.TiffWriter(tmp_path / "z" / "sizes.tif") as writer:
        writer.write(np.zeros((8, 9), np.uint16))
        writer.write(np.zeros((4, 9), np.uint16))
    with tifffile.TiffWriter(tmp_path / "z" / "types.tif") as writer:
        writer.write(np.zeros((8, 9), np.uint16))
        writer.write(np.zeros((8, 9), np.uint8))
    report = cli_json("compute", tmp_path / "z", "--mode", "native", "--stack", "volume", "-j", "1")
    assert report["images"] == 1
    errors = {entry["path"].rsplit("/", 1)[-1]: entry["error"] for entry in report["skipped"]}
    assert set(errors) == {"sizes.tif", "types.tif"}
    assert all("--stack pages" in error for error in errors.values())


def test_a_broken_chain_skips_the_whole_stack(tmp_path):
    from test_tiff import _stack_with_broken_chain

    (tmp_path / "z").mkdir()
    _stack_with_broken_chain(tmp_path / "z" / "s.tif", 5, 2, "outside")
    write_stacks(tmp_path / "z", count=1)
    report = cli_json("compute", tmp_path / "z", "--mode", "native", "--stack", "volume", "-j", "1")
    assert report["images"] == 1 and "damaged TIFF" in report["skipped"][0]["error"] and "--stack pages" in report["skipped"][0]["error"]


def test_one_page_files_and_the_file_nodata_of_each_page(tmp_path):
    folder = tmp_path / "z"
    folder.mkdir()
    single = np.arange(20, dtype=np.uint16).reshape(4, 5)
    tifffile.imwrite(folder / "one.tif", single)
    stack = np.arange(60, dtype=np.uint16).reshape(3, 4, 5) % 7
    with tifffile.TiffWriter(folder / "geo.tif") as writer:
        for page in stack:
            writer.write(page, extratags=[(42113, "s", 0, "0", True)])
    report = cli_json("compute", folder, "--mode", "native", "--stack", "volume", "-j", "1")
    kept = np.concatenate([single.ravel(), stack.ravel()[stack.ravel() != 0]]).astype(np.float64)
    assert report["images"] == 2 and report["pixels"] == kept.size
    assert report["raw"]["mean"] == [pytest.approx(kept.mean(), rel=1e-15)]


def test_per_image_observers_see_one_image_per_stack(tmp_path):
    stacks = write_stacks(tmp_path / "z", count=4)
    out = tmp_path / "r.json"
    result = cli("compute", tmp_path / "z", "--mode", "native", "--stack", "volume", "-j", "1",
                 "--trace", tmp_path / "t.csv", "--trace-every", "1", "-o", out)
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "t.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == [1, 2, 3, 4]
    assert int(rows[0].split(",")[1]) == stacks[0].size
    assert json.loads(out.read_text())["images"] == 4


@pytest.mark.slow
def test_a_stack_and_its_mask_stack_or_one_mask_page(tmp_path):
    """Each page pairs with its mask's page (or the mask's one page), as page by page; the foreground and the
    labels' groups are the same numbers, one image per stack."""
    stacks = write_stacks(tmp_path / "z", count=2)
    (tmp_path / "m").mkdir()
    rng = np.random.default_rng(9)
    labels = [rng.integers(0, 3, s.shape).astype(np.uint8) for s in stacks]
    tifffile.imwrite(tmp_path / "m" / "s0.tif", labels[0], photometric="minisblack")
    tifffile.imwrite(tmp_path / "m" / "s1.tif", labels[1][0], photometric="minisblack")  # one page for all
    labels[1] = np.broadcast_to(labels[1][0], labels[1].shape)
    args = ("--mask", tmp_path / "m", "--mode", "native", "-j", "1")
    volume = cli_json("compute", tmp_path / "z", "--stack", "volume", *args)
    pages = cli_json("compute", tmp_path / "z", *args)
    foreground = np.concatenate([s[m > 0] for s, m in zip(stacks, labels)]).astype(np.float64)
    assert volume["foreground"]["raw"]["mean"] == [pytest.approx(foreground.mean(), rel=1e-15)]
    assert volume["foreground"]["raw"]["median"] == [np.median(foreground)]
    assert volume["foreground"]["images"] == 2 and pages["foreground"]["images"] == 10
    for name in ("mean", "var", "median", "pixels"):
        assert volume["foreground"][name] == pages["foreground"][name]
        assert {k: g[name] for k, g in volume["groups"].items()} == {k: g[name] for k, g in pages["groups"].items()}
    assert cli_json("compute", tmp_path / "z", "--stack", "volume", *args[:-1], "2") == volume


def test_a_stack_volume_is_no_option_for_arrays(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 4), np.uint8))
    result = cli("compute", tmp_path / "a.npy", "--stack", "volume", "-j", "1")
    assert result.exit_code == 2 and "--stack" in result.stderr


def test_a_stack_over_the_volume_bounds_is_skipped_before_a_page_is_decoded(tmp_path, monkeypatch):
    from bnstats import limits

    write_stacks(tmp_path / "z", np.uint8, (6, 10, 10), count=1)
    tifffile.imwrite(tmp_path / "z" / "flat.tif", np.zeros((10, 10), np.uint8))
    monkeypatch.setattr(limits, "_current", limits.Limits(pixels=500))  # a page fits, the volume does not
    report = cli_json("compute", tmp_path / "z", "--mode", "native", "--stack", "volume", "-j", "1")
    assert report["images"] == 1 and "BNSTATS_MAX_PIXELS" in report["skipped"][0]["error"]
    assert cli_json("compute", tmp_path / "z", "--mode", "native", "-j", "1")["images"] == 7


# -- hostile review: time and memory of stacks of many pages ---------------------------------------------

@pytest.mark.parametrize("kind", ["classic", "bigtiff", "lzw", "planar-rgb"])
def test_a_page_is_opened_at_its_directory_without_walking_the_ones_before_it(tmp_path, monkeypatch, kind):
    """Pillow's seek to page N loads every directory before it: N pages cost N² (2,000 pages took a minute
    in either --stack). A page is opened where it is, with the pixels tifffile reads there."""
    from PIL import TiffImagePlugin

    from bnstats.decoding.pillow import open_pillow

    shape = (300, 3, 4, 5) if kind == "planar-rgb" else (300, 4, 5)
    stack = (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)
    extra = {"bigtiff": {"bigtiff": True}, "lzw": {"compression": "lzw"},
             "planar-rgb": {"photometric": "rgb", "planarconfig": "separate"}}.get(kind, {"photometric": "minisblack"})
    tifffile.imwrite(tmp_path / "s.tif", stack, **extra)
    data = (tmp_path / "s.tif").read_bytes()
    loads = []
    original = TiffImagePlugin.ImageFileDirectory_v2.load
    monkeypatch.setattr(TiffImagePlugin.ImageFileDirectory_v2, "load",
                        lambda self, fp: (loads.append(1), original(self, fp))[1])
    for page in (0, 1, 150, 299):
        image = open_pillow(data, page)
        expected = np.moveaxis(stack[page], 0, -1) if kind == "planar-rgb" else stack[page]
        np.testing.assert_array_equal(np.asarray(image), expected)
    assert len(loads) < 20


@pytest.mark.slow
def test_a_16_bit_stack_of_many_small_pages_holds_one_histogram_not_one_a_page(tmp_path):
    """A 16-bit page's histogram is 512 KiB whatever its size: 3,000 pages of 5x5 held 2 GB."""
    import tracemalloc

    from bnstats.decoding.decode import decode_item
    from bnstats.decoding.options import DecodeOptions
    from bnstats.decoding.tiff import TiffStack

    stack = (np.arange(200 * 25) % 977).astype(np.uint16).reshape(200, 5, 5)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    data = (tmp_path / "s.tif").read_bytes()
    tracemalloc.start()
    try:
        image = decode_item(TiffStack(data), DecodeOptions(mode="native"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.histogram().sum() == stack.size
    np.testing.assert_array_equal(image.histogram()[0], np.bincount(stack.ravel(), minlength=65536))
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB for 200 pages of 25 pixels"


@pytest.mark.slow
@pytest.mark.parametrize("dtype, decode", [(np.uint8, "gray"), (np.int16, "native")])  # Pillow, tifffile
def test_ten_thousand_tiny_pages_take_seconds_in_either_mode(tmp_path, dtype, decode):
    import time

    stack = (np.arange(10_000 * 16) % 251).astype(dtype).reshape(10_000, 4, 4)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    for mode in ("pages", "volume"):
        start = time.perf_counter()
        report = cli_json("compute", tmp_path / "s.tif", "--mode", decode, "--stack", mode, "-j", "1")
        assert time.perf_counter() - start < 60
        assert report["pixels"] == stack.size and report["images"] == (10_000 if mode == "pages" else 1)
        assert report["raw"]["mean"] == [pytest.approx(stack.mean(), rel=1e-14)]


def test_a_damaged_page_in_the_middle_skips_the_stack_naming_the_page(tmp_path):
    """Its chain is whole, one page's data is not: the volume is a skipped entry (never its other pages
    counted as the whole) that says which page, where --stack pages skips that page alone."""
    (tmp_path / "z").mkdir()
    stack = (np.arange(5 * 8 * 8) % 200).astype(np.uint8).reshape(5, 8, 8)
    path = tmp_path / "z" / "s.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        start, size = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[start : start + size] = bytes(size)
    path.write_bytes(bytes(data))
    write_stacks(tmp_path / "z", np.uint8, (3, 8, 8), count=1)
    volume = cli_json("compute", tmp_path / "z", "--mode", "native", "--stack", "volume", "-j", "1")
    assert volume["images"] == 1 and [entry["path"] for entry in volume["skipped"]] == [str(path)]
    assert "page 2" in volume["skipped"][0]["error"] and "--stack pages" in volume["skipped"][0]["error"]
    pages = cli_json("compute", tmp_path / "z", "--mode", "native", "-j", "1")
    assert pages["images"] == 7 and [entry["path"] for entry in pages["skipped"]] == [f"{path}:2"]


def test_merge_refuses_a_volume_part_with_a_pages_part_of_the_same_stacks(tmp_path):
    """Shard 0 counted as volumes and shard 0 counted as pages cover the same files under different lists:
    merged, every pixel counted twice with only a warning about gaps. The parts say how they counted."""
    write_stacks(tmp_path / "z", count=4)
    volume, pages = tmp_path / "v0.json", tmp_path / "p0.json"
    assert cli("compute", tmp_path / "z", "--mode", "native", "--stack", "volume", "--shard", "0/2", "-j", "1",
               "-o", volume).exit_code == 0
    assert cli("compute", tmp_path / "z", "--mode", "native", "--shard", "0/2", "-j", "1", "-o", pages).exit_code == 0
    assert json.loads(volume.read_text())["files"]["stack"] == "volume"
    assert "stack" not in json.loads(pages.read_text())["files"]
    line = one_line_error(cli("merge", volume, pages), 1)
    assert "--stack volume" in line and "--stack pages" in line


def test_the_volume_bound_takes_the_widest_page_not_the_first(tmp_path, monkeypatch):
    """A first page of one 8-bit band and later pages of 16-bit RGB: sized by the first, the volume passed
    the bound and every page was decoded before the stack was refused."""
    from bnstats import limits

    (tmp_path / "z").mkdir()
    with tifffile.TiffWriter(tmp_path / "z" / "s.tif") as writer:
        writer.write(np.zeros((10, 10), np.uint8))
        for _ in range(3):
            writer.write(np.zeros((10, 10, 3), np.uint16), photometric="rgb")
    monkeypatch.setattr(limits, "_current", limits.Limits(image_bytes=1000))  # 400 bytes as the first page
    report = cli("compute", tmp_path / "z", "--mode", "native", "--stack", "volume", "-j", "1")
    assert "BNSTATS_MAX_IMAGE_BYTES" in report.output


@pytest.mark.parametrize("mode,bands", [("rgb", 3), ("gray", 1), ("native", 1)])
def test_the_volume_bound_takes_the_bands_of_the_mode_decoded(tmp_path, monkeypatch, mode, bands):
    """Gray pages in --mode rgb are 3 bands once decoded: sized by their stored band, a volume of 3x the
    bound's bytes was held (40 pages of 1000x1000 under a 50 MB bound: 120 MB). The bound takes the mode's."""
    from bnstats import limits

    (tmp_path / "z").mkdir()
    tifffile.imwrite(tmp_path / "z" / "s.tif", np.ones((5, 10, 10), np.uint8))  # 5 pages, 500 stored bytes
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "z" / "t.png")  # the run has an image
    monkeypatch.setattr(limits, "_current", limits.Limits(image_bytes=1000))
    report = cli_json("compute", tmp_path / "z", "--mode", mode, "--stack", "volume", "-j", "1")
    if 500 * bands > 1000:
        assert report["images"] == 1 and "1,500 decoded bytes" in report["skipped"][0]["error"], report
    else:
        assert report["images"] == 2 and report["pixels"] == 504 and not report["skipped"]


def test_a_one_page_tiff_with_stack_volume_pairs_with_its_mask(tmp_path):
    """--stack volume reads every .tif as a stack; one of one page is an image, and takes a mask as with
    --stack pages (it was a TypeError skip entry for every file)."""
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    tifffile.imwrite(tmp_path / "i" / "a.tif", image)
    tifffile.imwrite(tmp_path / "m" / "a.tif", (np.arange(16) % 2).astype(np.uint8).reshape(4, 4))
    args = ("compute", tmp_path / "i", "--mask", tmp_path / "m", "--mode", "native", "-j", "1")
    volume, pages = cli_json(*args, "--stack", "volume"), cli_json(*args)
    assert volume["skipped"] == [] and volume["pixels"] == 16
    assert {k: volume[k] for k in ("groups", "foreground")} == {k: pages[k] for k in ("groups", "foreground")}


@pytest.mark.parametrize("stack", ["pages", "volume"])
def test_a_thumbnail_first_and_one_main_page_counts_the_main_page(tmp_path, stack):
    """A reduced-resolution page is never counted (main_pages): with one main page after it, the file's
    one item is that page, not the thumbnail (a second main page made the file count its main pages)."""
    (tmp_path / "z").mkdir()
    main = (np.arange(256) % 251).astype(np.uint8).reshape(16, 16)
    with tifffile.TiffWriter(tmp_path / "z" / "t.tif") as writer:
        writer.write(np.full((4, 4), 200, np.uint8), subfiletype=1)
        writer.write(main)
    report = cli_json("compute", tmp_path / "z", "--mode", "gray", "--stack", stack, "-j", "1")
    assert report["images"] == 1 and report["pixels"] == main.size
    assert report["raw"]["mean"] == [pytest.approx(main.mean(), rel=1e-14)]


def test_tifffile_reads_a_page_at_its_directory_too(tmp_path, monkeypatch):
    """Signed, float64 and many-band pages are read with tifffile, whose ``pages[index]`` walks every page
    before it (10,000 int16 pages: 41 s in --stack volume). The page is read where its directory is."""
    from bnstats.decoding import scientific

    stack = (np.arange(300 * 20) % 977 - 400).astype(np.int16).reshape(300, 4, 5)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    data = (tmp_path / "s.tif").read_bytes()
    import io
    import types

    seeks = []

    class Counted(io.BytesIO):
        def seek(self, *args):
            seeks.append(1)
            return super().seek(*args)

    monkeypatch.setattr(scientific, "io", types.SimpleNamespace(BytesIO=Counted))
    for page in (0, 1, 150, 299):
        pixels, bands = scientific.read_tiff(data, page)
        np.testing.assert_array_equal(pixels[..., 0], stack[page])
        assert bands == ("L",)
    assert len(seeks) < 100, len(seeks)  # walking to pages 150 and 299 alone seeks 450 times


@pytest.mark.parametrize("stack", ["pages", "volume"])
def test_a_stack_and_its_mask_stack_walk_their_directories_once(tmp_path, monkeypatch, stack):
    """Each page pairs with the mask stack's page: the image's and the mask's directories are read once each,
    not once a page (1,000 pages with a mask took 18 s, quadratic in the pages)."""
    from bnstats.decoding import tiff

    (tmp_path / "m").mkdir()
    stacks = write_stacks(tmp_path / "z", np.uint8, (40, 6, 7), count=1)
    tifffile.imwrite(tmp_path / "m" / "s0.tif", (stacks[0] > 128).astype(np.uint8), photometric="minisblack")
    walks = []
    real = tiff.read_chain
    monkeypatch.setattr(tiff, "read_chain", lambda data: walks.append(1) or real(data))
    report = cli_json("compute", tmp_path / "z", "--mask", tmp_path / "m", "--mode", "native", "--stack", stack,
                      "-j", "1")
    assert report["foreground"]["pixels"] == int((stacks[0] > 128).sum())
    assert len(walks) <= 6
