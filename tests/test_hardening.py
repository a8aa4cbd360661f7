"""Regressions from the hardening pass: each test failed before its fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import cli, run


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
    result = cli("export", "-", "--format", "json", "--digits", "4", input=stats_file.read_text(), expect=0)
    assert json.loads(result.stdout)["mean"] == [round(m, 4) for m in report["mean"]]
    bad = cli("export", "-", "--format", "json", input='{"mean": NaN}')
    assert bad.exit_code == 1 and "<stdin>" in bad.stderr and "Traceback" not in bad.output


class _Terminal:
    """A stderr stand-in that says it is a terminal and keeps what was written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def _tally_of(paths, bad=()):
    from bnstats.running.count import count_files

    tally = count_files([str(p) for p in paths])
    tally.skipped += [{"path": b, "error": "OSError: broken"} for b in bad]
    return tally


def test_progress_bar_ends_with_the_final_mean_and_skip_count(sample_data, monkeypatch):
    import shutil

    from bnstats.cli.progress import Progress
    from helpers import iter_image_paths

    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(0, 0): __import__("os").terminal_size((0, 0)))
    files = iter_image_paths([sample_data])
    term = _Terminal()
    progress = Progress(len(files), stream=term)
    progress(_tally_of(files[:3]), 3)  # the bar samples the running mean here ...
    final = _tally_of(files, bad=["x.png"])
    progress(final, len(files))  # ... and not again within 0.5 s
    progress.close()
    last = term.text.replace("\r", "\n").strip().splitlines()[-1]
    assert " ".join(f"{m:.4f}" for m in final.stats.result()["mean"]) in last
    assert "skipped 1" in last
    assert max(len(line) for line in term.text.replace("\r", "\n").splitlines()) <= 80  # 0 columns: fixed width


def test_file_names_cannot_forge_message_lines():
    from bnstats.cli.progress import Progress

    import io

    log = io.StringIO()  # not a terminal: plain lines
    Progress(1, stream=log).warn("skipped evil\nbnstats: warning: all good.png: OSError")
    assert log.getvalue().count("\n") == 1 and "evil\\nbnstats" in log.getvalue()


def test_decoder_warnings_are_notes_not_stray_stderr(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "big.tif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 pixels: a warning, not an error
    quiet = run("compute", tmp_path, "-q", "-j", "1")
    assert quiet.stderr == ""
    loud = run("compute", tmp_path, "-j", "1")
    assert loud.stderr.count("DecompressionBombWarning") == 1 and "bnstats: warning:" in loud.stderr


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


def test_compare_reports_progress_for_each_side(sample_data):
    from bnstats.running.compare import compare
    from bnstats.inputs.select import select

    seen = []
    doc = compare(select([str(sample_data)]), on_progress=lambda side, done: seen.append((side, done)))
    assert doc["agree"]
    assert [s for s, _ in seen][0] == "streaming" and seen[-1] == ("naive", 36)
    assert ("streaming", 36) in seen


# -- hostile JSON: every damaged input is one line naming the file, never a traceback or garbage -----


# -- merge refuses every overlap the results can prove, and says what is missing ---------------------


# -- checkpoints: constant size, strict resumes -----------------------------------------------------------


def test_compare_estimates_16bit_colour_at_two_bytes_a_value(tmp_path):
    """compare re-derived mode -> bands/depth and took 16-bit colour PNGs for 8-bit."""
    cv2 = pytest.importorskip("cv2")
    from bnstats.running.compare import NAIVE_BYTES_PER_VALUE, estimate_naive_bytes
    from bnstats.decoding.options import DecodeOptions
    from bnstats.inputs.select import select

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 40, 3), np.uint16))
    need, _ = estimate_naive_bytes(select([str(tmp_path)]), DecodeOptions(mode="native"))
    assert need == 30 * 40 * 3 * NAIVE_BYTES_PER_VALUE[2]
    need, _ = estimate_naive_bytes(select([str(tmp_path)]), DecodeOptions(mode="rgb"))
    assert need == 30 * 40 * 3 * NAIVE_BYTES_PER_VALUE[1]


def test_a_large_png_under_twice_the_bomb_limit_adds_no_note(tmp_path, monkeypatch):
    """Pillow warns at open between 1x and 2x MAX_IMAGE_PIXELS: that is no reason for a note, as before."""
    from PIL import Image

    from bnstats.running.count import count_files
    from bnstats.decoding.options import DecodeOptions

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    tally = count_files([str(tmp_path / "big.png")], DecodeOptions(mode="rgb"))
    assert tally.stats.images == 1 and not tally.notes


def test_portable_names_under_the_root_folder():
    from bnstats.inputs.files import FileSource

    source = FileSource(["/"])
    assert [source.portable_identity(k) for k in ("/a.png", "/tmp/x.png")] == ["/a.png", "/tmp/x.png"]
