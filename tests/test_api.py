"""``bnstats.compute(...)`` and its Result: the CLI's bytes from one call, arrays and images in memory
against numpy, the command's option rules as ValueErrors, data errors as the command's."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings

import click
import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

import bnstats
from bnstats.api import BnstatsWarning, OptionError, options
from bnstats.cli.commands.compute import compute as compute_command
from bnstats.jsonio import ReportError
from bnstats.running.count import UnreadableImage
from helpers import FAST, cli, module_env
from reference import full_load

STATE_KEYS = ("mean", "std", "var", "min", "max", "median", "raw", "channels", "images", "pixels", "max_value",
              "state", "settings")


def same_numbers(a: dict, b: dict, keys=STATE_KEYS) -> None:
    for key in keys:
        assert a.get(key) == b.get(key), key


@pytest.fixture(scope="module")
def rgb_batch() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)


# -- the command line's bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize("args, keywords", [
    ((), {}),
    (("--mode", "gray"), {"mode": "gray"}),
    (("--percentiles", "1,50,99.5"), {"percentiles": [1, 50, 99.5]}),
    (("--group-by", "class"), {"group_by": "class"}),
    (("--resize", "20x16", "--center-crop", "12", "--covariance"),
     {"resize": (20, 16), "center_crop": 12, "covariance": True}),
    (("--ignore-value", "0,0,0", "--interpolation", "nearest"),
     {"ignore_value": (0, 0, 0), "interpolation": "nearest"}),
], ids=["default", "gray", "percentiles", "group-by", "resize-crop-covariance", "ignore-value"])
def test_json_is_the_command_lines_bytes(sample_data, args, keywords):
    printed = cli("compute", sample_data, "-j", "1", *args, expect=0).stdout
    result = bnstats.compute(sample_data, workers=1, **keywords)
    assert result.to_json() == printed
    assert result.mean == tuple(json.loads(printed)["mean"])


def test_shards_merge_as_the_command_lines(sample_data, tmp_path):
    parts = [bnstats.compute(sample_data, workers=1, shard=(k, 2)) for k in range(2)]
    for k, part in enumerate(parts):
        cli("compute", sample_data, "-j", "1", "--shard", f"{k}/2", "-o", tmp_path / f"p{k}.json", expect=0)
        assert (tmp_path / f"p{k}.json").read_text() == part.to_json()
    merged = parts[0].merge(parts[1])
    assert merged.to_json() == cli("merge", tmp_path / "p0.json", tmp_path / "p1.json", expect=0).stdout
    whole = bnstats.compute(sample_data, workers=1)
    same_numbers(merged.report, whole.report, ("mean", "std", "var", "median", "state", "files"))


def test_a_list_of_paths_and_a_brace_pattern(sample_data):
    folders = sorted(p.name for p in sample_data.iterdir() if p.is_dir())
    pattern = f"{sample_data}/{{{','.join(folders)}}}"
    printed = cli("compute", pattern, "-j", "1", expect=0).stdout
    assert bnstats.compute(pattern, workers=1).to_json() == printed
    listed = bnstats.compute([sample_data / name for name in folders], workers=1)
    assert listed.to_json() == printed


def test_keywords_are_the_commands_options():
    names = {p.name for p in compute_command.params} - {"paths", "output", "quiet", "summary"}
    assert set(options()) == names
    assert {"mode", "resize", "center_crop", "workers", "strict", "group_by", "percentiles", "covariance", "sample",
            "seed", "shard", "ignore_value", "key", "checkpoint"} <= names


# -- images in memory, against numpy ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, shape", [(np.uint8, (6, 5, 7, 3)), (np.uint16, (4, 9, 3)), (np.float32, (3, 4, 4, 2)),
                                          (np.int16, (5, 3, 3, 1))])
def test_an_array_against_numpy(dtype, shape):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    data = (rng.integers(info.min, info.max, shape, endpoint=True) if info else rng.normal(size=shape)).astype(dtype)
    images = [a if a.ndim == 3 else a[..., None] for a in data]
    ref = full_load(images) if info is None or info.min == 0 else None
    result = bnstats.compute(data)
    assert result.images == shape[0]
    assert result.pixels == sum(a.shape[0] * a.shape[1] for a in images)
    raw = np.concatenate([a.reshape(-1, a.shape[-1]) for a in images]).astype(np.float64)
    np.testing.assert_allclose(result.report["raw"]["mean"], raw.mean(0), rtol=1e-12)
    np.testing.assert_allclose(result.report["raw"]["var"], raw.var(0), rtol=1e-9)
    if ref is not None:
        np.testing.assert_allclose(result.mean, ref["mean"], rtol=1e-12)
        np.testing.assert_allclose(result.std, ref["std"], rtol=1e-12)
        np.testing.assert_allclose(result.var, ref["var"], rtol=1e-9)


def test_an_array_counts_as_its_npy_file(rgb_batch, tmp_path):
    np.save(tmp_path / "batch.npy", rgb_batch)
    printed = json.loads(cli("compute", tmp_path / "batch.npy", "-j", "1", "--percentiles", "5,95", expect=0).stdout)
    same_numbers(bnstats.compute(rgb_batch, percentiles=[5, 95]).report, printed, (*STATE_KEYS, "percentiles"))
    moved = np.ascontiguousarray(np.moveaxis(rgb_batch, -1, 1))  # NCHW
    same_numbers(bnstats.compute(moved, channel_axis=1).report, printed, ("mean", "std", "state"))


def test_pillow_images_count_as_their_files(tmp_path, rgb_batch):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, pixels in enumerate(rgb_batch):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    Image.fromarray((np.arange(35, dtype=np.uint16) * 1800).reshape(5, 7)).save(folder / "wide.png")
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(2):
        Image.fromarray((np.arange(48, dtype=np.uint16) * (1000 + i)).reshape(6, 8)).save(wide / f"{i}.png")
    for where, keywords in ((folder, {}), (folder, {"mode": "gray", "resize": 4}),
                            (wide, {"mode": "native", "center_crop": 3}), (wide, {"mode": "rgb"})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BnstatsWarning)  # 16-bit reduced to 8 (both ways alike)
            from_files = bnstats.compute(where, workers=1, **keywords).report
            opened = (Image.open(path) for path in sorted(where.iterdir()))  # a generator: read once
            from_images = bnstats.compute(opened, **keywords).report
        same_numbers(from_images, from_files, ("mean", "std", "var", "min", "max", "state", "settings", "images",
                                               "pixels", "max_value", "channels"))
    ref = full_load(list(rgb_batch))
    result = bnstats.compute([Image.fromarray(p) for p in rgb_batch])
    np.testing.assert_allclose(result.mean, ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(result.std, ref["std"], rtol=1e-12)


def test_tensors_are_channels_first(rgb_batch):
    torch = pytest.importorskip("torch")
    whole = bnstats.compute(rgb_batch)
    batch = torch.from_numpy(rgb_batch).permute(0, 3, 1, 2)
    same_numbers(bnstats.compute(batch).report, whole.report, ("mean", "std", "state", "files"))
    same_numbers(bnstats.compute(list(batch)).report, whole.report, ("mean", "std", "state"))


@given(cut=st.integers(1, 5), seed=st.integers(0, 2**16))
@FAST
def test_parts_in_memory_merge_to_the_whole(cut, seed):
    data = np.random.default_rng(seed).integers(0, 256, (6, 3, 4, 3), dtype=np.uint8)
    merged = bnstats.compute(data[:cut]).merge(bnstats.compute(data[cut:]))
    same_numbers(merged.report, bnstats.compute(data).report, ("mean", "std", "var", "median", "state", "images"))


def test_the_same_data_twice_is_refused_in_a_merge(rgb_batch):
    once = bnstats.compute(rgb_batch)
    with pytest.raises(ReportError, match="count items 0..5 of the same list"):
        once.merge(bnstats.compute(rgb_batch.copy()))
    assert bnstats.compute(rgb_batch[::-1]).report["files"]["digest"] != once.report["files"]["digest"]


# -- options: the command's rules, as ValueErrors ---------------------------------------------------------------


@pytest.mark.parametrize("keywords, message", [
    ({"resize": 0}, "resize=0: '0' is not a positive size"),
    ({"resize": (0, 5)}, "not a positive size"),
    ({"mode": "cmyk"}, "'cmyk' is not one of"),
    ({"shard": (2, 2)}, "'2/2' is not K/N"),
    ({"percentiles": [50, 101]}, "outside 0..100"),
    ({"workers": 0}, "workers=0"),
    ({"workers": 1.5}, "workers=1.5"),
    ({"strict": "yes"}, "give True or False"),
    ({"seed": True}, "not a flag"),
    ({"workrs": 2}, "did you mean workers"),
    ({"group_by": "label"}, "names a column of Parquet files"),
    ({"sample": 5, "shard": (0, 2)}, "not with --shard"),
    ({"bn_momentum": 0.1}, "go together"),
    ({"key": "x"}, "--key applies to"),
    ({"storage_options": {"anon": True}}, "--storage-option applies to URLs"),
    ({"storage_options": ["anon"]}, "'anon' is not KEY=VALUE"),
    ({"ext": ["", " "]}, "names no extension"),
    ({"checkpoint": "/nonexistent/run.ckpt"}, "cannot write /nonexistent/run.ckpt"),
    ({"checkpoint": "-"}, "cannot be standard output"),
])
def test_a_bad_option_is_a_value_error(sample_data, keywords, message):
    keywords = {"workers": 1, **keywords}
    with pytest.raises(OptionError, match=message) as caught:
        bnstats.compute(sample_data, **keywords)
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, click.ClickException)


def test_a_missing_path_and_a_wrong_type(tmp_path):
    with pytest.raises(OptionError, match="does not exist"):
        bnstats.compute(tmp_path / "nothing")
    with pytest.raises(TypeError, match="not int"):
        bnstats.compute(3)


@pytest.mark.parametrize("keywords", [{"shard": (0, 2)}, {"group_by": "class"}, {"workers": 2}, {"sample": 3}])
def test_options_for_paths_are_refused_in_memory(rgb_batch, keywords):
    with pytest.raises(OptionError, match="leave"):
        bnstats.compute(rgb_batch, **keywords)


def test_arrays_that_are_no_pixels_are_refused(rgb_batch):
    with pytest.raises(ValueError, match="complex"):
        bnstats.compute(rgb_batch.astype(complex))
    with pytest.raises(TypeError, match="item:000001 is a str"):
        bnstats.compute([rgb_batch[0], "a.png"])
    with pytest.raises(ValueError, match="no list of images"):
        bnstats.compute(np.zeros((1, 1, 1, 1, 1), np.uint8))


# -- data errors: the command's rules ---------------------------------------------------------------------------


def test_a_bad_file_is_a_skip_entry_and_a_warning_or_strict_raises(images):
    folder, arrays = images
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(BnstatsWarning, match="skipped .*broken.png"):
        result = bnstats.compute(folder, workers=1)
    assert [s["path"] for s in result.skipped] == [str(folder / "broken.png")]
    np.testing.assert_allclose(result.mean, full_load(arrays)["mean"], rtol=1e-12)
    assert result.to_json() == cli("compute", folder, "-j", "1", "-q", expect=0).stdout
    with pytest.raises(UnreadableImage, match="broken.png"):
        bnstats.compute(folder, workers=1, strict=True)


def test_a_broken_image_in_memory_is_a_skip_entry(rgb_batch):
    buffer = io.BytesIO()
    Image.fromarray(rgb_batch[0]).save(buffer, "PNG")

    def truncated():
        return Image.open(io.BytesIO(buffer.getvalue()[:60]))

    with pytest.warns(BnstatsWarning, match="skipped item:000001"):
        result = bnstats.compute([Image.fromarray(rgb_batch[0]), truncated(), Image.fromarray(rgb_batch[1])])
    assert result.images == 2 and [s["path"] for s in result.skipped] == ["item:000001"]
    with pytest.raises(UnreadableImage, match="item:000000"):
        bnstats.compute([truncated()], strict=True)


# -- the Result ---------------------------------------------------------------------------------------------


def test_save_load_export_and_repr(sample_data, tmp_path):
    result = bnstats.compute(sample_data, workers=1)
    result.save(tmp_path / "stats.json")
    assert (tmp_path / "stats.json").read_text() == result.to_json()
    loaded = bnstats.Result.load(tmp_path / "stats.json")
    assert loaded == result and loaded.var == result.var and loaded.channels == ("R", "G", "B")
    assert result.export("hf") == cli("export", tmp_path / "stats.json", "--format", "hf", expect=0).stdout
    assert result.export("timm", digits=3) == cli("export", tmp_path / "stats.json", "-f", "timm", "--digits", "3",
                                                  expect=0).stdout
    with pytest.raises(ReportError, match="unknown format"):
        result.export("nope")
    assert repr(result) == "<bnstats.Result 36 images, RGB: mean=(0.5745, 0.3858, 0.295) std=(0.2382, 0.2285, 0.2308)>"
    with pytest.raises(TypeError, match="not dict"):
        result.merge(result.report)


def test_import_stays_light():
    code = ("import sys, bnstats; assert 'numpy' not in sys.modules and 'click' not in sys.modules; "
            "assert 'compute' in dir(bnstats) and 'Result' in bnstats.__all__")
    done = subprocess.run([sys.executable, "-c", code], env=module_env(), capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the attribute resolves without warnings
        assert bnstats.compute.__module__ == "bnstats.api"


# -- what paths take: URLs, input options, checkpoints --------------------------------------------------------


def test_urls_and_their_storage_options_as_on_the_command_line(images):
    pytest.importorskip("aiohttp")
    from helpers import static_files

    folder, _ = images
    with static_files(folder) as url:
        urls = [f"{url}/a.png", f"{url}/c.png"]
        printed = cli("compute", *urls, "-j", "1", "--storage-option", "block_size=0", expect=0).stdout
        assert bnstats.compute(urls, workers=1, storage_options={"block_size": 0}).to_json() == printed


def test_input_options_and_a_checkpoint(tmp_path, images):
    folder, arrays = images
    Image.fromarray(arrays[0]).save(folder / "extra.bmp")
    printed = cli("compute", folder, "-j", "1", "--ext", "png", expect=0).stdout
    with pytest.warns(BnstatsWarning, match=r"ignored 1 file that is not an image by extension \(.bmp 1\)"):
        assert bnstats.compute(folder, workers=1, ext="png").to_json() == printed
    checkpoint = tmp_path / "run.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BnstatsWarning)
        assert bnstats.compute(folder, workers=1, ext=[".png"]).to_json() == printed
        assert bnstats.compute(folder, workers=1, ext="png", checkpoint=checkpoint).to_json() == printed
    assert not checkpoint.exists()  # removed once the result is made, as the command removes it
