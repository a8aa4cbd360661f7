"""Regressions from the hardening pass: each test failed before its fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bnstats.cli import main


def run(*args, expect=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    assert "Traceback" not in result.output
    return result


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
    report = json.loads(run("compute", tmp_path / "a.ppm", "--mode", "native", "-q").stdout)
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
    report = json.loads(run("compute", tmp_path, "--mode", "native", "-q").stdout)
    assert report["images"] == 1 and [s["path"] for s in report["skipped"]] == [str(tmp_path / "b.ppm")]


def test_all_pixels_ignored_is_an_error_not_null_statistics(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    result = run("compute", tmp_path, "--ignore-value", "0", "-q", expect=1)
    assert result.stderr.count("\n") == 1 and "no pixel was counted" in result.stderr
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "nan.tif")
    result = run("compute", tmp_path / "nan.tif", "--mode", "native", "-q", expect=1)
    assert "no pixel was counted" in result.stderr


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


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory, sample_data):
    path = tmp_path_factory.mktemp("export") / "stats.json"
    run("compute", sample_data, "-q", "-j", "1", "-o", path)
    return path


def _img_data_preprocessor(mean=None, std=None, pad_size_divisor=1, pad_value=0, bgr_to_rgb=False,
                           rgb_to_bgr=False, non_blocking=False):
    """MMEngine 0.x ``ImgDataPreprocessor.__init__``'s signature (mmdet/mmseg/mmpose 3.x build on it)."""
    return {"mean": mean, "std": std, "bgr_to_rgb": bgr_to_rgb}


@pytest.mark.parametrize("bgr", [False, True])
def test_export_mmdet_uses_bgr_to_rgb(stats_file, bgr):
    report = json.loads(stats_file.read_text())
    text = run("export", stats_file, "--format", "mmdet", *(["--bgr"] if bgr else [])).stdout
    namespace = {}
    exec(text, namespace)
    built = _img_data_preprocessor(**namespace["data_preprocessor"])
    order = slice(None, None, -1) if bgr else slice(None)
    assert built == {"mean": report["raw"]["mean"][order], "std": report["raw"]["std"][order], "bgr_to_rgb": not bgr}


def test_export_reads_stdin_and_rounds(stats_file):
    report = json.loads(stats_file.read_text())
    result = CliRunner().invoke(main, ["export", "-", "--format", "json", "--digits", "4"],
                                input=stats_file.read_text())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mean"] == [round(m, 4) for m in report["mean"]]
    bad = CliRunner().invoke(main, ["export", "-", "--format", "json"], input='{"mean": NaN}')
    assert bad.exit_code == 1 and "<stdin>" in bad.stderr and "Traceback" not in bad.output
