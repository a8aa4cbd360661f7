"""TIFF inputs: multi-page stacks, an OME-TIFF as one volume, reduced-resolution pages, multiband TIFFs, corrupt EXIF, and stacks inside archives."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import SETTINGS, cli, cli_json, tiff_bytes
from reference import assert_report_matches, full_load

from bnstats import limits


@pytest.mark.slow
def test_a_multiband_tiff_in_rgb_mode_says_use_native_and_libtiff_stays_quiet(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    for k in range(2):
        tifffile.imwrite(tmp_path / f"s2_{k}.tif", np.full((8, 8, 13), k, np.uint8), photometric="minisblack",
                         planarconfig="contig")
    proc = subprocess.run([sys.executable, "-m", "bnstats", "compute", "-q", tmp_path], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "More samples per pixel" not in proc.stderr
    assert "13-band TIFF: use --mode native" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    report = cli_json("compute", "-q", "--mode", "native", tmp_path)
    assert report["images"] == 2 and len(report["channels"]) == 13


def corrupt_exif_tiff() -> bytes:
    """An RGB TIFF whose EXIF directory offset points past the end: Pillow warns "Corrupt EXIF data"."""
    import struct

    data = bytearray(tiff_bytes(8, 8, 3, 8, data=bytes(range(192)), compression=1))
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    entries = [bytes(data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]) for i in range(count)]
    entries.append(struct.pack("<HHII", 34665, 4, 1, len(data) - 8))
    data[ifd:] = struct.pack("<H", len(entries)) + b"".join(sorted(entries)) + b"\0\0\0\0"
    return bytes(data)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["compute", "compare"])
def test_corrupt_exif_warnings_are_notes_silenced_by_quiet(tmp_path, command):
    (tmp_path / "a.tif").write_bytes(corrupt_exif_tiff())
    quiet = subprocess.run([sys.executable, "-m", "bnstats", command, "-q", tmp_path / "a.tif"],
                           capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and quiet.stderr == ""  # Python printed it raw, past -q, before


def stack(pages: int, seed: int, shape=(12, 10), dtype=np.uint8) -> np.ndarray:
    top = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, top, (pages, *shape), dtype=np.int64).astype(dtype)


def listed_keys(*paths) -> list[str]:
    from bnstats.inputs.select import select

    return select([str(p) for p in paths]).keys


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_z_stack_counts_every_page(tmp_path, dtype):
    tifffile = pytest.importorskip("tifffile")
    z = stack(7, 20, dtype=dtype)
    tifffile.imwrite(tmp_path / "z.tif", z)
    assert listed_keys(tmp_path) == [f"{tmp_path / 'z.tif'}:{k}" for k in range(7)]
    report = cli_json("compute", "-q", "--mode", "native", tmp_path)
    assert report["images"] == 7 and report["skipped"] == []
    assert_report_matches(report, full_load([page[..., None] for page in z]), tol=1e-12)
    if dtype == np.uint8:  # rgb mode: every page, grey as R = G = B
        rgb = cli_json("compute", "-q", tmp_path / "z.tif")
        assert rgb["images"] == 7 and rgb["raw"]["mean"] == [report["raw"]["mean"][0]] * 3


def test_single_page_tiff_and_animations_keep_their_plain_key(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from PIL import Image

    tifffile.imwrite(tmp_path / "one.tif", stack(1, 21)[0])
    frames = [Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    assert listed_keys(tmp_path) == sorted(str(tmp_path / n) for n in ("one.tif", "anim.gif", "anim.webp", "anim.png"))
    report = cli_json("compute", "-q", tmp_path / "anim.png", tmp_path / "anim.webp")
    assert report["images"] == 2 and report["raw"]["mean"] == [10.0] * 3  # first frames only


def test_reduced_resolution_pages_are_not_counted_and_pages_may_differ(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a, b = stack(1, 22, (16, 16))[0], stack(1, 23, (9, 13))[0]
    thumb = a[::4, ::4]
    with tifffile.TiffWriter(tmp_path / "p.tif") as w:
        w.write(a, subifds=1)
        w.write(a[::2, ::2], subfiletype=1)  # its pyramid level, in a SubIFD: not in the chain of pages
        w.write(thumb, subfiletype=1)  # a reduced-resolution page in the chain: not an image of its own
        w.write(b)
    path = tmp_path / "p.tif"
    assert len(tifffile.TiffFile(path).pages) == 3
    assert listed_keys(path) == [f"{path}:0", f"{path}:2"]
    report = cli_json("compute", "-q", "--mode", "native", path)
    assert report["images"] == 2
    assert_report_matches(report, full_load([a[..., None], b[..., None]]), tol=1e-12)


def test_ome_tiff_is_one_volume_of_its_channels_not_a_page_per_plane(tmp_path):
    """Issue 25: a 2-channel z-stack of 3 planes was 6 gray pages; it is one item of 2 bands (tests/test_ome.py)."""
    tifffile = pytest.importorskip("tifffile")
    planes = stack(6, 24, (8, 8), np.uint16).reshape(3, 2, 8, 8)
    tifffile.imwrite(tmp_path / "cells.ome.tif", planes, ome=True, metadata={"axes": "ZCYX"})
    report = cli_json("compute", "-q", "--mode", "native", tmp_path / "cells.ome.tif")
    assert report["images"] == 1 and report["channels"] == ["C0", "C1"]
    assert_report_matches(report, full_load([np.moveaxis(planes, 1, -1).reshape(-1, 1, 2)]), tol=1e-12)


@pytest.mark.slow
def test_pages_give_the_same_bytes_for_j1_j2_shards_and_resume(tmp_path, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    from helpers import interrupt_after

    folder = tmp_path / "stacks"
    folder.mkdir()
    for k in range(3):
        tifffile.imwrite(folder / f"s{k}.tif", stack(40, 30 + k, (6, 5)))
    tifffile.imwrite(folder / "single.tif", stack(1, 40, (6, 5))[0])
    whole = cli("compute", "-q", "-j", "1", folder, expect=0).stdout
    assert json.loads(whole)["images"] == 121
    assert cli("compute", "-q", "-j", "2", folder, expect=0).stdout == whole
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"part{k}.json")
        cli("compute", "-q", "--shard", f"{k}/3", folder, "-o", parts[-1], expect=0)
    merged = cli_json("merge", *parts)
    expected = json.loads(whole)
    for key in ("mean", "std", "var", "min", "max", "images", "pixels", "files"):
        assert merged[key] == expected[key], key
    ck, out = tmp_path / "ck.json", tmp_path / "out.json"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        cli("compute", "-q", "-j", "1", folder, "--checkpoint", ck, "-o", out, expect=130)
    assert ck.exists()
    cli("compute", "-q", "-j", "2", folder, "--checkpoint", ck, "-o", out, expect=0)
    assert out.read_text() == whole


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 5000), height=st.integers(1, 5000), samples=st.sampled_from([1, 2, 3, 4, 5, 13]),
       bits=st.sampled_from([1, 8, 16, 32, 64, 7, 2**16, 2**32 - 1]), tiled=st.booleans(),
       mode=st.sampled_from(["rgb", "native"]))
def test_no_tiff_header_gets_past_the_bounds(small_bounds, width, height, samples, bits, tiled, mode):
    """Whatever size, bands and sample size a TIFF header claims: a page over the bounds is refused from
    the header, before any decoder allocates for it; one within them decodes or fails, never bigger."""
    from bnstats.decoding.decode import decode_bytes
    from bnstats.decoding.options import DecodeError, DecodeOptions

    small_bounds(pixels=100_000, image_bytes=400_000)
    data = tiff_bytes(width, height, samples, bits, tile=(16, 16) if tiled else None, compression=1)
    over = width * height > 100_000 or width * height * samples * max(1, -(-bits // 8)) > 400_000
    try:
        image = decode_bytes(data, DecodeOptions(mode=mode))
    except limits.LimitError:
        assert over
        return
    except (DecodeError, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - a broken file: any decoder's error is a skip entry
        return
    assert not over and image.values().shape[0] <= 100_000


@pytest.mark.parametrize("container", ["tar", "zip"])
def test_a_stack_inside_an_archive_is_a_skip_entry_not_its_first_page(tmp_path, container):
    """Pages are items only for TIFF files on disk; a stack read whole (an archive member, a URL) was counted
    as page 0 alone, with exit 0. It is now a skip entry naming its pages; a one-page TIFF still counts."""
    tifffile = pytest.importorskip("tifffile")
    import tarfile

    tifffile.imwrite(tmp_path / "z.tif", np.arange(7 * 6 * 5, dtype=np.uint8).reshape(7, 6, 5))
    tifffile.imwrite(tmp_path / "one.tif", np.full((6, 5), 9, np.uint8))
    archive = tmp_path / f"a.{container}"
    if container == "tar":
        with tarfile.open(archive, "w") as tar:
            for name in ("one.tif", "z.tif"):
                tar.add(tmp_path / name, arcname=name)
    else:
        with zipfile.ZipFile(archive, "w") as zf:
            for name in ("one.tif", "z.tif"):
                zf.write(tmp_path / name, name)
    report = cli_json("compute", "-q", "-j", "1", "--mode", "native", archive)
    assert report["images"] == 1 and report["mean"] == [9 / 255]
    assert [s["path"] for s in report["skipped"]] == [f"{archive}:z.tif"]
    assert "7-page TIFF stack" in report["skipped"][0]["error"]


def _stack_with_broken_chain(path, pages: int, after: int, how: str) -> np.ndarray:
    """A ``pages``-page 8-bit stack whose directory ``after`` links to an earlier one (``loop``) or past the
    file's end (``outside``); the stack as written is returned."""
    tifffile = pytest.importorskip("tifffile")
    stack = np.stack([np.full((4, 4), 10 * (i + 1), np.uint8) for i in range(pages)])
    with tifffile.TiffWriter(path) as writer:
        for page in stack:
            writer.write(page, contiguous=False)
    with tifffile.TiffFile(path) as tif:
        offsets = [tif.pages[i].offset for i in range(len(tif.pages))]
    assert len(offsets) == pages
    data = bytearray(path.read_bytes())
    (count,) = struct.unpack_from("<H", data, offsets[after])
    link = offsets[after] + 2 + 12 * count
    struct.pack_into("<I", data, link, offsets[0] if how == "loop" else len(data) + 10**6)
    path.write_bytes(bytes(data))
    return stack


@pytest.mark.parametrize("how", ["loop", "outside"])
def test_a_broken_page_chain_counts_the_pages_before_it_and_names_the_break(tmp_path, how):
    stack = _stack_with_broken_chain(tmp_path / "s.tif", 7, 1, how)
    out = cli_json("compute", tmp_path / "s.tif", "-q", "-j", "1", "--mode", "native")
    assert out["images"] == 2
    assert out["raw"]["mean"] == [float(stack[:2].mean())]
    assert [entry["path"] for entry in out["skipped"]] == [f"{tmp_path / 's.tif'}:2"]
    assert "damaged TIFF" in out["skipped"][0]["error"]


def test_a_one_page_member_with_a_broken_chain_is_no_first_page_alone(tmp_path):
    stack = _stack_with_broken_chain(tmp_path / "s.tif", 3, 0, "outside")
    assert len(stack) == 3
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        tar.add(tmp_path / "s.tif", "s.tif")
        tar.add(tmp_path / "s.tif", "t.tif")
    result = cli("compute", tmp_path / "a.tar", "-q", "-j", "1", "--mode", "native", expect=1)
    assert "damaged TIFF" in result.stderr


@SETTINGS
@given(pages=st.integers(2, 6), data=st.data(), how=st.sampled_from(["loop", "outside"]))
def test_every_page_before_a_break_counts_and_the_break_is_one_entry(tmp_path_factory, pages, data, how):
    after = data.draw(st.integers(0, pages - 1))
    folder = tmp_path_factory.mktemp("tif")
    stack = _stack_with_broken_chain(folder / "s.tif", pages, after, how)
    out = cli_json("compute", folder, "-q", "-j", "1", "--mode", "native")
    # the directory `after` still counts: only its link is damaged
    assert out["images"] == after + 1
    assert out["raw"]["mean"] == [pytest.approx(float(stack[: after + 1].mean()))]
    assert [entry["path"] for entry in out["skipped"]] == [f"{folder / 's.tif'}:{after + 1}"]


@pytest.mark.parametrize("samples,photometric,extra", [
    (2, "minisblack", None), (2, "minisblack", 0), (3, "minisblack", None), (4, "minisblack", 0),
    (4, "rgb", 0), (4, "rgb", 1), (2, "minisblack", 1), (2, "minisblack", 2), (4, "rgb", 2), (3, "rgb", None),
])
def test_8bit_tiffs_of_several_samples_count_every_sample_as_stored_in_native_mode(tmp_path, samples, photometric,
                                                                                  extra):
    # Pillow reads a gray page with an unspecified extra sample as L (the 2nd band dropped without a word), an
    # RGB page with one as RGB, one with premultiplied alpha as RGBA with the alpha divided out of the colours
    # (other numbers than stored), and gray pages of 3 or 4 samples not at all: tifffile reads these as stored
    tifffile = pytest.importorskip("tifffile")
    pixels = np.random.default_rng(samples * 10 + (extra or 0)).integers(0, 256, (3, 5, 4, samples), dtype=np.uint8)
    for i, image in enumerate(pixels):
        tifffile.imwrite(tmp_path / f"{i}.tif", image, photometric=photometric, planarconfig="contig",
                         **({"extrasamples": [extra] * (samples - (3 if photometric == "rgb" else 1))}
                            if extra is not None else {}))
    report = cli_json("compute", tmp_path, "--mode", "native", "-q")
    assert len(report["channels"]) == samples
    assert_report_matches(report, full_load(list(pixels)), tol=1e-12)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_transpose_turns_tiffs_read_by_tifffile_as_pillows(tmp_path, orientation):
    # --exif-transpose turned TIFFs Pillow reads (8-bit RGB) and 16-bit colour read through OpenCV, but a page
    # read by tifffile (16-bit colour with the extra, signed or multi-band data) was counted as stored
    tifffile = pytest.importorskip("tifffile")
    from PIL import Image

    from reference import center_crop

    turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}[orientation]
    tag = [(274, "H", 1, orientation, True)]
    rng = np.random.default_rng(orientation)
    for name, pixels, photometric in (("u8.tif", rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), "rgb"),
                                      ("u16.tif", rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16), "rgb"),
                                      ("i16.tif", rng.integers(-999, 999, (5, 7, 2), dtype=np.int16), "minisblack")):
        tifffile.imwrite(tmp_path / name, pixels, photometric=photometric, planarconfig="contig", extratags=tag)
        upright = np.stack([np.asarray(Image.fromarray(pixels[..., b]).transpose(turn)) for b in range(pixels.shape[2])],
                           -1).astype(pixels.dtype)
        want, _ = center_crop(upright, (3, 4))
        report = cli_json("compute", tmp_path / name, "--mode", "native", "--exif-transpose", "--center-crop", "3x4",
                          "-q")
        flat = want.reshape(-1, want.shape[-1]).astype(np.float64)  # the crop of the upright image, not another
        assert report["pixels"] == 12, name
        np.testing.assert_allclose(report["raw"]["mean"], flat.mean(0), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(report["raw"]["var"], flat.var(0), rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("ome, extra", [(False, ()), (False, ("--stack", "volume")), (True, ())])
def test_complex_samples_are_a_skipped_entry_never_their_real_part(tmp_path, ome, extra):
    tifffile = pytest.importorskip("tifffile")
    values = (np.random.default_rng(3).random((2, 6, 5)) + 1j).astype(np.complex64)
    path = tmp_path / ("c.ome.tif" if ome else "c.tif")
    tifffile.imwrite(path, values, ome=ome, photometric="minisblack")
    result = cli("compute", path, "-q", "--mode", "native", "--strict", *extra, expect=1)
    assert "complex64" in result.stderr and "Traceback" not in result.stderr


def test_sentinel_tiles_with_and_without_band_descriptions_are_refused_naming_each_band(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    names = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">B{i + 1:02d}</Item>' for i in range(13))
    tile = np.ones((4, 4, 13), np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", tile, photometric="minisblack", planarconfig="contig",
                     extratags=[(42112, "s", 0, f"<GDALMetadata>{names}</GDALMetadata>", True)])
    tifffile.imwrite(tmp_path / "b.tif", tile, photometric="minisblack", planarconfig="contig")
    error = cli("compute", tmp_path, "-q", "--mode", "native", expect=1).stderr
    assert "B01,B02," in error and "B1,B2," in error and "band descriptions" in error
    assert "--mode rgb" not in error  # no remedy that would clip 13 bands of 16 bits to 3 of 8
