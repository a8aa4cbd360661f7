"""The PNG fast path (bnstats/png.py) must give Pillow's pixels to the bit, or step aside.

It must never decode a file Pillow refuses, nor refuse one Pillow decodes:
for any file, the outcome with the fast path is the outcome without it.
The PNGs below are written by a small encoder of our own (every row filter,
chunks placed anywhere), by Pillow and by OpenCV, then broken in many ways.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bnstats.statistics import kernels
from bnstats.decoding import png
from bnstats.decoding.decode import decode_bytes, decode_item, load_image, load_pixels
from bnstats.decoding.options import DecodeOptions
from helpers import cli_in_a_fresh_interpreter

pytestmark = pytest.mark.skipif(kernels._kernels is None, reason="the PNG fast path needs the compiled kernel")

COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type
MODES = ("rgb", "gray", "native")


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def filtered(pixels: np.ndarray, filters) -> bytes:
    """PNG image data before compression: each row's filter type, then the row filtered with it."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).astype(int)
    out = bytearray()
    for y, kind in zip(range(height), filters):
        row, prior = rows[y], rows[y - 1] if y else np.zeros_like(rows[0])
        out.append(kind)
        for i, x in enumerate(row):
            left = row[i - channels] if i >= channels else 0
            up, corner = prior[i], prior[i - channels] if i >= channels else 0
            predictor = (0, left, up, (left + up) // 2, _paeth(left, up, corner))[kind] if kind <= 4 else 0
            out.append((int(x) - int(predictor)) % 256)
    return bytes(out)


def encode(pixels: np.ndarray, filters=None, *, pieces: int = 1, before=(), after=(), ihdr=None) -> bytes:
    """A PNG of ``(H, W, C)`` uint8 pixels; the zlib stream split over ``pieces`` IDAT chunks."""
    height, width, channels = pixels.shape
    filters = filters if filters is not None else [y % 5 for y in range(height)]
    data = zlib.compress(filtered(pixels, filters))
    cut = [len(data) * k // pieces for k in range(pieces + 1)]
    header = ihdr or struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join([png.MAGIC, chunk(b"IHDR", header), *before,
                     *(chunk(b"IDAT", data[a:b]) for a, b in zip(cut, cut[1:])), *after, chunk(b"IEND", b"")])


def pixels_of(rng, height: int, width: int, channels: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def outcome(data: bytes, options: DecodeOptions, monkeypatch, fast: bool):
    """What decoding ``data`` gives: bands, counts, pixels and notes, or the exception's type."""
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(png, "read_png", lambda data: None)
        try:
            image = decode_item(data, options)
            counts, values = image.histogram(), image.values()
            return ("ok", image.bands, counts.tobytes(), np.array(values).tobytes(), image.notes,
                    load_image(data, options)[0].tobytes())
        except Exception as error:  # noqa: BLE001 - the type is what is compared
            return ("error", type(error).__name__)


def assert_as_pillow(data: bytes, monkeypatch, fast_expected: bool | None = None) -> None:
    for mode in MODES:
        options = DecodeOptions(mode=mode)
        assert outcome(data, options, monkeypatch, True) == outcome(data, options, monkeypatch, False), mode
    if fast_expected is not None:
        assert (png.read_png(data) is not None) == fast_expected


@settings(max_examples=80, deadline=None)
@given(channels=st.sampled_from([1, 2, 3, 4]), height=st.integers(1, 9), width=st.integers(1, 9),
       pieces=st.integers(1, 3), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_every_row_filter_reads_back_as_stored(channels, height, width, pieces, seed, data):
    pixels = pixels_of(np.random.default_rng(seed), height, width, channels)
    filters = data.draw(st.lists(st.integers(0, 4), min_size=height, max_size=height))
    encoded = encode(pixels, filters, pieces=pieces)
    assert png.read_png(encoded) == (pixels.tobytes(), width, height, channels)
    pillow = np.asarray(Image.open(io.BytesIO(encoded)))
    np.testing.assert_array_equal(pillow.reshape(pixels.shape), pixels)


@pytest.mark.parametrize(("writer", "channels"), [(w, c) for w in ("ours", "pillow", "opencv") for c in (1, 2, 3, 4)
                                                  if (w, c) != ("opencv", 2)])  # OpenCV writes no grey + alpha
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (28, 28), (70, 71)])  # 70 x 71: past the batched thumbnails
def test_every_mode_counts_what_pillow_gives(monkeypatch, writer, channels, size):
    rng = np.random.default_rng(channels * 1000 + size[0])
    smooth = np.cumsum(rng.integers(-2, 3, (*size, channels)), axis=1) + 128  # photo-like rows: real filters
    pixels = np.clip(smooth, 0, 255).astype(np.uint8)
    if writer == "ours":
        data = encode(pixels)
    elif writer == "pillow":
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels, ("L", "LA", "RGB", "RGBA")[channels - 1]).save(
            buffer, "PNG")
        data = buffer.getvalue()
    else:
        import cv2  # a test extra

        bgr = pixels[..., [2, 1, 0, 3][:channels]] if channels >= 3 else pixels
        data = cv2.imencode(".png", bgr)[1].tobytes()
    assert png.read_png(data) is not None
    assert_as_pillow(data, monkeypatch)
    for mode in MODES:
        options = DecodeOptions(mode=mode)
        fast = load_pixels(data, options)
        with monkeypatch.context() as m:
            m.setattr(png, "read_png", lambda data: None)
            slow = load_pixels(data, options)
        assert fast[1] == slow[1]
        np.testing.assert_array_equal(fast[0], slow[0])


def test_chunks_pillow_reads_without_effect_keep_the_fast_path(monkeypatch):
    pixels = pixels_of(np.random.default_rng(1), 6, 5, 3)
    harmless = [chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"sRGB", b"\0"), chunk(b"pHYs", bytes(9)),
                chunk(b"cHRM", bytes(32)), chunk(b"tEXt", b"Software\0bnstats"), chunk(b"tEXt", b"\0odd"),
                chunk(b"tEXt", b"no separator"), chunk(b"bKGD", b"\0\0\0\0\0\0"), chunk(b"prVt", b"x" * 40),
                chunk(b"IDAT", b"")]
    for data in (encode(pixels, before=harmless[:-1]), encode(pixels, after=harmless, pieces=3),
                 encode(pixels, pieces=2)[:-12],  # no IEND
                 encode(pixels) + b"trailing junk"):
        assert_as_pillow(data, monkeypatch, fast_expected=True)


def test_what_only_pillow_may_decide_steps_aside(monkeypatch):
    """Palette, transparency, colour profiles, EXIF, animation, 16 bits, interlacing: Pillow reads them."""
    rng = np.random.default_rng(2)
    pixels = pixels_of(rng, 6, 5, 3)
    grey = pixels_of(rng, 6, 5, 1)
    ihdr = lambda depth, colour, interlace=0, width=5, height=6: struct.pack(  # noqa: E731
        ">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    for data in (encode(pixels, before=[chunk(b"tRNS", b"\0\1\0\2\0\3")]),
                 encode(pixels, before=[chunk(b"iCCP", b"p\0\0" + zlib.compress(b"profile"))]),
                 encode(pixels, before=[chunk(b"eXIf", b"MM\0*\0\0\0\x08\0\0")]),
                 encode(pixels, after=[chunk(b"zTXt", b"k\0\0" + zlib.compress(b"text"))]),
                 encode(pixels, before=[chunk(b"acTL", struct.pack(">II", 1, 0))]),
                 encode(pixels, before=[chunk(b"ABCD", b"unknown critical")]),
                 encode(pixels, ihdr=ihdr(8, 2, interlace=1)),
                 encode(grey, ihdr=ihdr(16, 0, width=5, height=3)),
                 encode(grey, ihdr=ihdr(4, 0, width=10, height=3)),
                 encode(grey, before=[chunk(b"PLTE", bytes(range(256)) * 3)], ihdr=ihdr(8, 3)),
                 encode(pixels, before=[chunk(b"gAMA", b"\0\0")]),  # too short: Pillow raises
                 encode(pixels, ihdr=struct.pack(">IIBBBBB", 5, 6, 8, 2, 0, 1, 0))):  # unknown filter method
        assert_as_pillow(data, monkeypatch, fast_expected=False)


def test_text_keywords_pillow_reads_as_its_own_go_to_pillow(monkeypatch):
    """Pillow keeps tEXt keywords in the image's info, beside its own keys: "interlace" makes it decode
    the rows as Adam7, "bbox" raises, "transparency" breaks convert("RGB"). Found by review."""
    grey = pixels_of(np.random.default_rng(10), 8, 8, 1)
    for keyword in (b"interlace", b"bbox", b"transparency"):
        for placed in ("before", "after"):
            text = [chunk(b"tEXt", keyword + b"\x001")]
            data = encode(grey, before=text) if placed == "before" else encode(grey, after=text)
            assert_as_pillow(data, monkeypatch, fast_expected=False)
    assert_as_pillow(encode(grey, before=[chunk(b"tEXt", b"Comment\x00interlace")]), monkeypatch, fast_expected=True)


def test_a_zlib_stream_cut_after_the_last_row_goes_to_pillow(monkeypatch):
    """Pillow needs the stream to go on, or end, once it has every row; cut short, it says truncated."""
    rows = filtered(np.arange(4, dtype=np.uint8).reshape(4, 1, 1), [0] * 4)
    for cut in range(1, 8):
        data = with_idat(encode(np.zeros((4, 1, 1), np.uint8)), lambda z: zlib.compress(rows)[:-cut])
        assert_as_pillow(data, monkeypatch)
    assert_as_pillow(with_idat(encode(np.zeros((4, 1, 1), np.uint8)), lambda z: zlib.compress(rows) + b"more"),
                     monkeypatch, fast_expected=True)
    found = bytes.fromhex(  # found by review: every row inflates, the stream's end is missing; Pillow raises
        "89504e470d0a1a0a0000000d49484452000000010000000408000000006ab30ae60000000949444154789c6360606460"
        "0242ef8bb6050000000049454e44ae426082")
    assert outcome(found, DecodeOptions(), monkeypatch, False)[0] == "error"
    assert_as_pillow(found, monkeypatch, fast_expected=False)


def test_pillow_loading_truncated_images_decides_alone(monkeypatch):
    from PIL import ImageFile

    data = encode(pixels_of(np.random.default_rng(11), 3, 3, 3))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert_as_pillow(data, monkeypatch, fast_expected=False)


def test_broken_files_fail_as_with_pillow(monkeypatch):
    rng = np.random.default_rng(3)
    pixels = pixels_of(rng, 8, 9, 3)
    good = encode(pixels, pieces=2, before=[chunk(b"tEXt", b"a\0b")])
    idat = good.index(b"IDAT") - 4
    broken = {
        "truncated anywhere": [good[:n] for n in range(0, len(good), 7)],
        "a bad header checksum": [good[:30] + bytes([good[30] ^ 1]) + good[31:]],
        "a bad checksum before the data": [good[:idat - 5] + bytes([good[idat - 5] ^ 1]) + good[idat - 4:]],
        "an unknown row filter": [encode(pixels, [0, 1, 2, 5, 0, 0, 0, 0])],
        "zero width": [encode(pixels[:, :0])],
        "a corrupt zlib stream": [good[: idat + 10] + b"\xff\xff\xff" + good[idat + 13:]],
        "a wrong zlib checksum": [with_idat(encode(pixels), lambda z: z[:-1] + bytes([z[-1] ^ 1]))],
        "a zlib stream cut short": [with_idat(encode(pixels), lambda z: z[: len(z) // 2])],
        "a short data chunk after the pixels": [good[:-12] + chunk(b"tEXt", b"k\0v")[:-6]],
        "more pixels than Pillow allows": [encode(pixels_of(rng, 2, 3, 1))],
    }
    limit = Image.MAX_IMAGE_PIXELS
    for name, datas in broken.items():
        for data in datas:
            if name == "more pixels than Pillow allows":
                monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2)
            assert_as_pillow(data, monkeypatch)
            monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)


def test_the_data_chunks_checksums_are_not_checked_as_in_pillow(monkeypatch):
    good = encode(pixels_of(np.random.default_rng(8), 5, 4, 3))
    at = good.index(b"IDAT") - 4
    end = at + 8 + struct.unpack_from(">I", good, at)[0]
    assert_as_pillow(good[:end] + b"\0\0\0\0" + good[end + 4:], monkeypatch, fast_expected=True)


def with_idat(data: bytes, change) -> bytes:
    """``data`` (one IDAT chunk) with its zlib stream changed, the chunk's checksum made right again."""
    at = data.index(b"IDAT") - 4
    length = struct.unpack_from(">I", data, at)[0]
    return data[:at] + chunk(b"IDAT", change(data[at + 8 : at + 8 + length])) + data[at + 12 + length:]


def test_random_damage_never_changes_the_outcome(monkeypatch):
    """A few hundred files with bytes flipped, cut, inserted or chunks added: fast path or not, the same."""
    rng = np.random.default_rng(4)
    fast = 0
    for trial in range(150):
        pixels = pixels_of(rng, int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 5)))
        data = bytearray(encode(pixels, [int(f) for f in rng.integers(0, 5, pixels.shape[0])],
                                pieces=int(rng.integers(1, 3))))
        for _ in range(int(rng.integers(1, 4))):
            where = int(rng.integers(8, len(data)))
            kind = trial % 4
            if kind == 0:
                data[where] = int(rng.integers(0, 256))
            elif kind == 1:
                data = data[:where]
            elif kind == 2:
                data[where:where] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
            else:
                kinds = [b"gAMA", b"tEXt", b"tRNS", b"IDAT", b"IEND", b"ABCD", b"abcd", b"sRGB"]
                body = bytes(rng.integers(0, 256, int(rng.integers(0, 10)), dtype=np.uint8))
                data[33:33] = chunk(kinds[int(rng.integers(0, len(kinds)))], body)
        data = bytes(data)
        fast += png.read_png(data) is not None
        assert_as_pillow(data, monkeypatch)
    assert fast > 10  # some damage (inserted harmless chunks, trailing bytes) leaves the fast path on


def test_large_images_go_to_pillow(monkeypatch):
    """Past MAX_PIXELS Pillow decodes: its per-file work is lost in the inflating, and it holds one copy."""
    monkeypatch.setattr(png, "MAX_PIXELS", 20)
    assert_as_pillow(encode(pixels_of(np.random.default_rng(9), 4, 5, 3)), monkeypatch, fast_expected=True)
    assert_as_pillow(encode(pixels_of(np.random.default_rng(9), 3, 7, 3)), monkeypatch, fast_expected=False)


def test_without_the_kernel_pillow_reads_every_png(monkeypatch):
    monkeypatch.setattr(kernels, "_kernels", None)
    assert png.read_png(encode(pixels_of(np.random.default_rng(5), 3, 3, 3))) is None


def test_options_only_pillow_applies_step_aside():
    data = encode(pixels_of(np.random.default_rng(6), 9, 8, 3))
    for options in (DecodeOptions(exif_transpose=True), DecodeOptions(resize=4), DecodeOptions(center_crop=4),
                    DecodeOptions(mode="gray")):  # colour to grey: Pillow's arithmetic
        assert png.read_pixels(data, options) is None
    assert png.read_pixels(data, DecodeOptions()) is not None
    image = decode_bytes(data, DecodeOptions(mode="native", ignore_value=0))  # counted from the array
    assert image.histogram().sum() == np.count_nonzero(
        (np.frombuffer(png.read_png(data)[0], np.uint8).reshape(-1, 3) != 0).any(axis=1)) * 3


@pytest.mark.slow
def test_command_prints_the_same_bytes_with_and_without_the_fast_path(tmp_path):
    """Thumbnails and larger PNGs of every colour type, in every mode: the compiled fast path and
    ``BNSTATS_PURE_PYTHON=1`` (Pillow decodes) print the same JSON."""
    rng = np.random.default_rng(7)
    for i in range(60):
        channels = 1 + i % 4
        size = (70, 66) if i % 20 == 3 else (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        (tmp_path / "data" / f"c{channels}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / f"c{channels}" / f"{i:03d}.png").write_bytes(
            encode(pixels_of(rng, *size, channels), pieces=1 + i % 3))
    runs = (("rgb", "data"), ("gray", "data/c2"), ("native", "data/c3"), ("native", "data/c4"))
    commands = [["compute", tmp_path / folder, "-q", "--mode", mode, "--percentiles", "1,50,99", "--covariance",
                 "-j", "2"] for mode, folder in runs]
    fast, pure = (cli_in_a_fresh_interpreter(*commands, env={**os.environ, "BNSTATS_PURE_PYTHON": value})
                  for value in ("0", "1"))  # the switch is read at import: one interpreter each
    for run, with_kernel, without in zip(runs, fast, pure):
        assert with_kernel == without, run
        assert json.loads(with_kernel)["images"] > 0, run
