"""The counting kernel: the compiled extension and the numpy fallback give the same exact counts.

CI runs the whole suite with the extension built (a C compiler is there);
these tests also run both implementations side by side, and one run of the
command line with ``BNSTATS_PURE_PYTHON=1`` must print the same bytes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnstats.statistics import kernels
from bnstats.statistics.counting import bincount, raw_histogram


def numpy_counts(data: bytes, itemsize: int, stride: int, channels: int) -> np.ndarray:
    pixels = np.frombuffer(data, np.uint8 if itemsize == 1 else np.uint16).reshape(-1, stride)
    levels = 256 if itemsize == 1 else 65536
    return np.stack([np.bincount(pixels[:, c], minlength=levels) for c in range(channels)]).astype(np.int64)


@pytest.fixture(params=["compiled", "numpy"])
def implementation(request, monkeypatch):
    """Each test below runs against the compiled kernel and against the fallback."""
    if request.param == "compiled":
        if kernels._kernels is None:
            if os.environ.get("BNSTATS_PURE_PYTHON", "") not in ("", "0"):
                pytest.skip("BNSTATS_PURE_PYTHON is set: this run checks the fallback")
            if not compiler():
                pytest.skip("no C compiler here: bnstats counts with numpy, as designed")
            pytest.fail("the compiled kernel is missing although a C compiler is here")
    else:
        monkeypatch.setattr(kernels, "_kernels", None)
        monkeypatch.setattr(kernels, "ACTIVE", "numpy")
    return request.param


@settings(max_examples=60, deadline=None)
@given(itemsize=st.sampled_from([1, 2]), stride=st.integers(1, 5), data=st.data())
def test_counts_equal_numpy_for_any_layout(itemsize, stride, data):
    channels = data.draw(st.integers(1, stride))
    pixels = data.draw(st.integers(0, 67))  # odd counts and fewer than one unrolled step too
    values = data.draw(st.lists(st.integers(0, 255 if itemsize == 1 else 65535), min_size=pixels * stride,
                                max_size=pixels * stride))
    raw = np.array(values, np.uint8 if itemsize == 1 else np.uint16).tobytes()
    expected = numpy_counts(raw, itemsize, stride, channels)
    for module in (kernels._kernels, None):
        saved = kernels._kernels
        kernels._kernels = module
        try:
            got = kernels.histogram(raw, itemsize, stride, channels)
        finally:
            kernels._kernels = saved
        assert got.dtype == np.int64 and np.array_equal(got, expected)


def test_runs_of_equal_values_and_large_buffers(implementation):
    rng = np.random.default_rng(3)
    flat = np.repeat(rng.integers(0, 256, (1000, 4), dtype=np.uint8), 997, axis=0)  # long runs, 997 000 pixels
    assert np.array_equal(kernels.histogram(flat, 1, 4, 3), numpy_counts(flat.tobytes(), 1, 4, 3))
    wide = rng.integers(0, 65536, (300_001, 3), dtype=np.uint16)
    assert np.array_equal(kernels.histogram(wide, 2, 3, 3), numpy_counts(wide.tobytes(), 2, 3, 3))


def test_bincount_views_and_signed(implementation):
    rng = np.random.default_rng(4)
    for dtype in (np.uint8, np.int8, np.uint16, np.int16):
        info = np.iinfo(dtype)
        levels = 256 if info.bits == 8 else 65536
        a = rng.integers(info.min, info.max + 1, (2001, 3)).astype(dtype)
        for view in (a, a[:, ::-1], a[::3], a[:, 1:]):  # contiguous, BGR read as RGB, strided rows, a slice
            expected = np.stack([np.bincount(view[:, c].astype(np.int64) - info.min, minlength=levels)
                                 for c in range(view.shape[1])])
            assert np.array_equal(bincount(view, levels), expected), (dtype, view.strides)


def test_raw_histogram_of_small_images(implementation):
    rng = np.random.default_rng(5)
    chunks = [rng.integers(0, 256, (8, 8, 4), dtype=np.uint8).tobytes() for _ in range(10)]
    joined = np.frombuffer(b"".join(chunks), np.uint8).reshape(-1, 4)
    expected = np.stack([np.bincount(joined[:, c], minlength=256) for c in range(3)])
    assert np.array_equal(raw_histogram(chunks, 4, 3), expected)
    grey = np.stack([np.bincount(joined[:, 0], minlength=256)] * 3)  # the first byte counted as R, G and B
    assert np.array_equal(raw_histogram(chunks, 4, 3, counted=1), grey)


def test_bad_arguments_are_value_errors():
    if kernels._kernels is None:
        pytest.skip("checks the compiled kernel's argument checks")
    out = np.zeros((1, 256), np.int64)
    for args in ((b"abc", 3, 1, 1, out), (b"abcd", 1, 3, 1, out), (b"abc", 1, 1, 2, out),
                 (b"abc", 1, 1, 1, np.zeros((1, 255), np.int64)), (b"abc", 1, 3, 1, out[:, ::2])):
        with pytest.raises((ValueError, TypeError, BufferError)):  # a non-contiguous out: the buffer protocol says
            kernels._kernels.histogram(*args)


# -- channel_moments: a BatchNorm input's float64 moments, read in place from float32 ----------------------------


def reference_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and M2 of an (n, channels, values) array, two-pass in float64 with numpy."""
    y = x.astype(np.float64).transpose(1, 0, 2).reshape(x.shape[1], -1)
    mean = y.mean(axis=1)
    return mean, ((y - mean[:, None]) ** 2).sum(axis=1)


def needs_moments_kernel():
    if kernels._kernels is None:
        pytest.skip("checks the compiled kernel (bnstats.torch uses torch ops without it)")


def test_channel_moments_of_the_documented_example():
    needs_moments_kernel()
    mean, m2 = kernels.channel_moments(np.array([[[1, 2], [5, 5]], [[3, 4], [5, 9]]], np.float32))
    assert mean.tolist() == [2.5, 6.0] and m2.tolist() == [5.0, 12.0]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 5), channels=st.integers(1, 9),
       values=st.sampled_from([1, 2, 3, 4, 7, 8, 12, 15, 16, 17, 31, 32, 60, 63, 64, 65, 100, 256]),
       offset=st.sampled_from([0.0, 1.0, -300.0, 1e4, 3e7]), scale=st.sampled_from([1e-3, 1.0, 50.0]),
       seed=st.integers(0, 2**32 - 1))
def test_channel_moments_equal_numpy_in_float64(n, channels, values, offset, scale, seed):
    """Every lane layout (16 or 4 lanes, tails), and data far from zero next to a small spread (two passes, and
    tiles merged around a pivot: no rounding of the mean in Chan's terms), to 1e-12 of numpy's float64."""
    needs_moments_kernel()
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, channels, values)) * scale + offset).astype(np.float32)
    mean, m2 = kernels.channel_moments(x)
    expected_mean, expected_m2 = reference_moments(x)
    assert np.allclose(mean, expected_mean, rtol=1e-12, atol=1e-12 * scale)
    assert np.allclose(m2, expected_m2, rtol=1e-12, atol=1e-12 * scale**2)
    assert mean.dtype == m2.dtype == np.float64


@pytest.mark.parametrize("shape", [(3, 2, 100), (64, 8, 32 * 32), (3, 70, 1024), (5, 2, 16384)])
def test_channel_moments_of_constant_and_large_batches(shape):
    """Batches over the kernel's 256 KiB tiles: 8 samples a tile, one sample over a tile, 2 + 2 + 1 samples."""
    needs_moments_kernel()
    constant = np.full(shape, 0.1, np.float32)  # an exact zero, not a rounding residue
    mean, m2 = kernels.channel_moments(constant)
    assert mean.tolist() == [float(np.float32(0.1))] * shape[1] and m2.tolist() == [0.0] * shape[1]
    rng = np.random.default_rng(6)
    big = (rng.standard_normal(shape) * 2 + 5).astype(np.float32)
    for got, want in zip(kernels.channel_moments(big), reference_moments(big)):
        assert np.allclose(got, want, rtol=1e-12, atol=0)


def test_channel_moments_of_a_large_mean_over_many_tiles():
    """A mean 3e7 times the spread, over 22 tiles: Chan's merges around the channel's first value keep M2 exact."""
    needs_moments_kernel()
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((24, 13, 237 * 9)) + 3e7).astype(np.float32)
    for got, want in zip(kernels.channel_moments(x), reference_moments(x)):
        assert np.allclose(got, want, rtol=1e-13, atol=0)
    x[0, :, 0] = np.inf  # a first value that is not finite is no pivot; the statistics are not finite either
    mean, m2 = kernels.channel_moments(x)
    assert not np.isfinite(mean).any() and np.isnan(m2).all()


def test_channel_moments_takes_native_float32_only():
    for bad in (np.zeros((2, 3, 4), np.float64), np.zeros((2, 3, 4), ">f4"), np.zeros((2, 3), np.float32)):
        with pytest.raises(ValueError, match="native float32"):
            kernels.channel_moments(bad)


def test_channel_moments_bad_arguments_are_value_errors():
    needs_moments_kernel()
    x, out = np.zeros((2, 3, 4), np.float32), np.zeros(3)
    for args in ((x, 2, 3, 5, out, out), (x, 0, 3, 4, out, out), (x.astype(np.float64), 2, 3, 4, out, out),
                 (x, 2, 3, 4, np.zeros(2), out), (x, 2, 3, 4, out, np.zeros(3, np.float32)),
                 (x[:, :, ::2], 2, 3, 2, out, out), (x, 2, 3, 4, np.zeros(6)[::2], out)):
        with pytest.raises((ValueError, TypeError, BufferError)):
            kernels._kernels.channel_moments(*args)


def test_channel_moments_without_the_kernel_is_none(monkeypatch):
    monkeypatch.setattr(kernels, "_kernels", None)
    assert kernels.channel_moments(np.zeros((1, 1, 1), np.float32)) is None


def compiler() -> bool:
    return shutil.which(os.environ.get("CC", "cc")) is not None or shutil.which("gcc") is not None


def test_extension_is_built_where_a_compiler_is():
    if not compiler():
        pytest.skip("no C compiler here: bnstats counts with numpy, as designed")
    assert importlib.util.find_spec("bnstats.statistics._kernels") is not None, "pip install . should have built bnstats.statistics._kernels"


@pytest.mark.slow
def test_the_fallback_prints_the_same_bytes(sample_data, tmp_path):
    """``BNSTATS_PURE_PYTHON=1`` switches to numpy: ``bnstats compute`` prints exactly the same JSON."""
    # one process per value: the counting kernel it chose (first line), then the command's JSON
    command = [sys.executable, "-c", "import sys, bnstats.statistics.kernels as k; print(k.ACTIVE); "
               "from bnstats.__main__ import main; main()", "compute", str(sample_data), "-q", "--percentiles", "1,50,99"]
    runs = {}
    for value in ("0", "1"):
        env = {**os.environ, "BNSTATS_PURE_PYTHON": value}
        active, runs[value] = subprocess.run(command, capture_output=True, text=True, check=True, env=env,
                                             cwd=tmp_path).stdout.split("\n", 1)
        built = importlib.util.find_spec("bnstats.statistics._kernels") is not None
        assert active.strip() == ("compiled" if value == "0" and built else "numpy")
    assert runs["0"] == runs["1"] and '"images": 36' in runs["0"]


# -- thumbnails: counted from raw bytes in batches, exactly, for any split of the work -------------------------


@pytest.fixture(scope="module")
def thumbnails(tmp_path_factory):
    """400 small images in two classes, in every 8-bit mode Pillow saves, with a few large ones among them."""
    from PIL import Image

    root = tmp_path_factory.mktemp("thumbs")
    rng = np.random.default_rng(9)
    paths = []
    for i in range(400):
        folder = root / ("cats" if i % 3 else "dogs")
        folder.mkdir(exist_ok=True)
        size = (96, 80) if i % 50 == 7 else (int(rng.integers(1, 24)), int(rng.integers(1, 24)))  # large: > 4096 px
        mode = ["RGB", "L", "RGBA", "P", "LA"][i % 5]
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        path = folder / f"{i:04d}.png"
        image.save(path)
        paths.append(path)
    return root, sorted(paths)


def test_thumbnails_equal_a_float64_full_load(thumbnails):
    from helpers import cli_json
    from reference import STAT_KEYS, full_load_files

    root, paths = thumbnails
    result = cli_json("compute", root, "-q", "-j", "1")
    reference = full_load_files(paths, "rgb")
    for key in STAT_KEYS:
        assert np.allclose(result[key], reference[key], rtol=1e-12, atol=1e-15), key
    assert result["images"] == 400 and result["pixels"] == reference["pixels"]


@pytest.mark.parametrize("mode", ["rgb", "gray", "native"])
def test_thumbnails_same_bytes_for_workers_shards_resume_and_groups(thumbnails, tmp_path, monkeypatch, mode):
    from helpers import cli, interrupt_after

    root, paths = thumbnails
    if mode == "native":  # RGBA, LA and RGB do not mix as stored: the RGB ones (i % 5 == 0)
        args = (*[p for p in paths if p.name.endswith(("0.png", "5.png"))], "-q", "--mode", "native")
    else:
        args = (root, "-q", "--mode", mode, "--group-by", "class")
    args = (*args, "--percentiles", "1,50,99")
    one = cli("compute", *args, "-j", "1", expect=0).stdout
    assert cli("compute", *args, "-j", "2", expect=0).stdout == one
    parts = [tmp_path / f"{k}.json" for k in range(3)]
    for k, part in enumerate(parts):
        cli("compute", *args, "--shard", f"{k}/3", "-o", part, expect=0)
    assert cli("merge", *reversed(parts), expect=0).stdout == one
    ck, out = tmp_path / "ck.json", tmp_path / "out.json"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        cli("compute", *args, "-j", "1", "--checkpoint", ck, "-o", out, expect=130)
    cli("compute", *args, "-j", "1", "--checkpoint", ck, "-o", out, expect=0)
    assert out.read_text() == one


def test_a_wide_image_after_thumbnails_is_a_layout_error(tmp_path):
    """Batched thumbnails still fix the layout at once: 16-bit data after them is refused, naming the file."""
    from PIL import Image

    from helpers import cli

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "b.png")
    result = cli("compute", tmp_path, "--mode", "native", "-j", "1", expect=1)
    assert "b.png" in result.stderr and "16-bit" in result.stderr


def test_more_channels_than_the_kernel_takes_are_counted_by_numpy():
    rng = np.random.default_rng(6)
    wide = rng.integers(0, 65536, (999, 20), dtype=np.uint16)
    expected = np.stack([np.bincount(wide[:, c], minlength=65536) for c in range(20)])
    assert np.array_equal(bincount(wide, 65536), expected)
    assert np.array_equal(kernels.histogram(wide, 2, 20, 20), expected)


def test_copy_of_running_stats_is_independent():
    """copy.copy of an accumulator with gathered thumbnails: two independent counts, none counted twice."""
    import copy

    from PIL import Image

    from bnstats.decoding.image import DecodedImage
    from bnstats.decoding.options import DecodeOptions
    from bnstats.statistics.running import RunningStats

    def small():
        return DecodedImage.of_pillow(Image.new("RGB", (4, 4), (9, 9, 9)), ("R", "G", "B"), DecodeOptions())

    rs = RunningStats()
    rs.add_image(small())
    twin = copy.copy(rs)
    rs.add_image(small())
    twin.add_image(small())
    twin.add_image(small())
    assert (rs.pixels, rs.images, twin.pixels, twin.images) == (32, 2, 48, 3)
