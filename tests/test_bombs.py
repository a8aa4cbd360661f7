"""Small hostile files that would cost unbounded time or memory: each is a skip entry naming its bound,
found before a decoder or reader starts on it, while the files it resembles are counted as before."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from helpers import cli_json

from bnstats import limits
from bnstats.decoding.jpeg import count_scans


def progressive_jpeg(size=(48, 32), mode="RGB") -> bytes:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (size[1], size[0], 3 if mode == "RGB" else 1), np.uint8).squeeze()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "JPEG", progressive=True, quality=90)
    return buffer.getvalue()


def with_scans(data: bytes, scans: int) -> bytes:
    """``data`` with its last scan's header repeated until it has ``scans`` scans: each repetition an empty
    scan that libjpeg still passes over the whole image for (the scan bomb)."""
    last = data.rindex(b"\xff\xda")
    header = data[last:last + 2 + struct.unpack(">H", data[last + 2:last + 4])[0]]
    return data[:last] + header * (scans - count_scans(data)) + data[last:]


def comment(text: bytes) -> bytes:
    return b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text


@pytest.mark.parametrize("args", [(), ("--mode", "native"), ("--mode", "gray"), ("--resize", "16")],
                         ids=["simplejpeg", "native", "gray", "pillow"])
def test_a_jpeg_of_more_scans_than_the_bound_is_skipped_before_it_is_decoded(tmp_path, args):
    """A progressive JPEG of 5,000 empty scans (440 KB, 8192x8192) took 48 s of libjpeg's time; more
    scans, longer. Past limits.JPEG_SCANS it is a skip entry, whichever decoder would have taken it."""
    good = progressive_jpeg()
    (tmp_path / "ok.jpg").write_bytes(with_scans(good, limits.JPEG_SCANS))  # at the bound: counted
    (tmp_path / "bomb.jpg").write_bytes(with_scans(good, limits.JPEG_SCANS + 1))
    report = cli_json("compute", tmp_path, "-j", "1", *args)
    assert report["images"] == 1
    [skipped] = report["skipped"]
    assert skipped["path"].endswith("bomb.jpg")
    assert f"{limits.JPEG_SCANS + 1:,} scans is over the limit of {limits.JPEG_SCANS}" in skipped["error"]


def test_the_bound_counts_the_images_scans_not_marker_bytes_inside_its_segments(tmp_path):
    """The start-of-scan bytes in a comment (or a thumbnail, a profile) are no scans of the image: the file is
    counted, to the same numbers as without the comment."""
    good = progressive_jpeg()
    stuffed = good[:2] + comment(b"\xff\xda" * (limits.JPEG_SCANS + 50)) + good[2:]
    assert stuffed.count(b"\xff\xda") > limits.JPEG_SCANS and count_scans(stuffed) == count_scans(good)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(good)
    (tmp_path / "b" / "x.jpg").write_bytes(stuffed)
    plain, commented = (cli_json("compute", tmp_path / d, "-j", "1") for d in "ab")
    assert commented["images"] == 1 and not commented["skipped"]
    assert commented["state"] == plain["state"]
    expected = np.asarray(Image.open(io.BytesIO(good)).convert("RGB"), np.float64).reshape(-1, 3) / 255
    np.testing.assert_allclose(commented["mean"], expected.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("mode, progressive", [("RGB", True), ("L", True), ("RGB", False)])
def test_count_scans_is_the_scans_the_encoder_wrote(mode, progressive):
    """libjpeg writes 10 scans for a progressive colour JPEG, 6 for grey, 1 for a baseline one; a thumbnail
    scan inside an APP segment and a second picture after the end of the image (an MPO) are not counted."""
    buffer = io.BytesIO()
    Image.new(mode, (40, 24), 90).save(buffer, "JPEG", progressive=progressive)
    data = buffer.getvalue()
    expected = {("RGB", True): 10, ("L", True): 6, ("RGB", False): 1}[(mode, progressive)]
    assert count_scans(data) == expected
    app = b"\xff\xe1" + struct.pack(">H", len(data) + 2) + data  # a whole JPEG inside a segment
    assert count_scans(data[:2] + app + data[2:] + data) == expected
