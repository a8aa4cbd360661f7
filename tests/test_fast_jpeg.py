"""The simplejpeg fast path must give Pillow's pixels to the bit, or step aside."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from bnstats.decoding import jpeg
from bnstats.decoding.decode import decode_bytes, load_pixels
from bnstats.decoding.options import DecodeOptions

pytest.importorskip("simplejpeg")

PHOTOS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "photos")


def photo(name="coffee.jpg", size=None, mode="RGB"):
    image = Image.open(os.path.join(PHOTOS, name)).convert(mode)
    return image.resize(size, Image.Resampling.BILINEAR) if size else image


def jpeg_bytes(image, **save):
    buf = io.BytesIO()
    image.save(buf, "JPEG", **save)
    return buf.getvalue()


def pillow_only(monkeypatch):
    monkeypatch.setattr(jpeg, "simplejpeg", None)


VARIANTS = {
    "baseline 4:2:0": dict(quality=85),
    "4:4:4": dict(quality=95, subsampling=0),
    "4:2:2": dict(quality=80, subsampling=1),
    "progressive": dict(quality=90, progressive=True),
    "optimized low quality": dict(quality=30, optimize=True),
}
SIZES = [None, (1, 1), (17, 9), (9, 17), (333, 251)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("source_mode", ["RGB", "L"])
def test_fast_path_pixels_identical_to_pillow(tmp_path, monkeypatch, variant, size, source_mode):
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg_bytes(photo(size=size, mode=source_mode), **VARIANTS[variant]))
    for mode in ("rgb", "gray", "native"):
        options = DecodeOptions(mode=mode)
        assert jpeg.open_jpeg_fast(path.read_bytes(), options) is not None
        fast = load_pixels(str(path), options)
        fast_counts = decode_bytes(path.read_bytes(), options)
        with monkeypatch.context() as m:
            pillow_only(m)
            slow = load_pixels(str(path), options)
            slow_counts = decode_bytes(path.read_bytes(), options)
        assert fast[1] == slow[1]
        np.testing.assert_array_equal(fast[0], slow[0])
        np.testing.assert_array_equal(fast_counts.counts, slow_counts.counts)
        assert fast_counts.bands == slow_counts.bands


def test_pillow_itself_decodes_what_the_fast_path_declines(tmp_path):
    cmyk = jpeg_bytes(photo().convert("CMYK"))
    assert jpeg.open_jpeg_fast(cmyk, DecodeOptions()) is None
    assert decode_bytes(cmyk, DecodeOptions(mode="native")).bands == ("C", "M", "Y", "K")
    data = jpeg_bytes(photo())
    for options in (DecodeOptions(resize=64), DecodeOptions(center_crop=32), DecodeOptions(exif_transpose=True)):
        assert jpeg.open_jpeg_fast(data, options) is None
    assert jpeg.open_jpeg_fast(b"\x89PNG\r\n\x1a\n" + data, DecodeOptions()) is None


def test_truncated_jpeg_is_left_to_pillow_which_raises():
    data = jpeg_bytes(photo())
    truncated = data[: len(data) // 2]
    assert jpeg.open_jpeg_fast(truncated, DecodeOptions()) is None
    with pytest.raises(OSError):
        decode_bytes(truncated, DecodeOptions())


def test_decompression_bomb_limit_applies_to_the_fast_path(monkeypatch):
    data = jpeg_bytes(photo(size=(100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert jpeg.open_jpeg_fast(data, DecodeOptions()) is None
    with pytest.raises(Image.DecompressionBombError):
        decode_bytes(data, DecodeOptions())


def test_reused_buffer_does_not_leak_between_images():
    big = jpeg_bytes(photo(size=(300, 200)))
    small = jpeg_bytes(photo("chelsea.jpg", size=(40, 30)))
    first = decode_bytes(small, DecodeOptions()).counts
    decode_bytes(big, DecodeOptions())
    assert np.array_equal(decode_bytes(small, DecodeOptions()).counts, first)
    assert first.sum(axis=1).tolist() == [40 * 30] * 3
