"""A hostile review of decoding, preprocessing and exports: what happens between bytes and numbers, and
what leaves as numbers.

Each test is a finding (or pins a claim an attack tried and found true). Numbers are checked against
numpy float64 of what Pillow gives (``Image.open(f)``, converted as ``--mode`` says: what a PIL-based
training loader sees).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import cli, cli_json, one_line

RNG = np.random.default_rng(606)


# -- decoding: LAB ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(7, 9), (80, 70)], ids=["thumbnail", "large"])
def test_native_lab_is_counted_as_its_stored_bytes_by_every_statistic(tmp_path, size):
    """Pillow's histogram() of a LAB image shifts a and b by 128 (it reads them as signed): the mean from it
    was not the pixels' (np.asarray, what ToTensor sees), and --covariance (read from the pixels) disagreed."""
    pixels = RNG.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    path = tmp_path / "lab.tif"
    Image.fromarray(pixels, "LAB").save(path)
    want = np.asarray(Image.open(path)).reshape(-1, 3).astype(np.float64)
    result = cli("compute", path, "--mode", "native", "--covariance", "-j", "1", expect=0)
    report = json.loads(result.stdout)
    assert report["channels"] == ["L", "A", "B"]
    np.testing.assert_allclose(report["raw"]["mean"], want.mean(0), rtol=1e-12)
    np.testing.assert_allclose(report["raw"]["std"], want.std(0), rtol=1e-9)
    assert report["raw"]["min"] == want.min(0).tolist() and report["raw"]["max"] == want.max(0).tolist()
    np.testing.assert_allclose(report["covariance"], np.cov(want.T / 255, bias=True), rtol=1e-9)
    assert "LAB" in result.stderr and "stored bytes" in result.stderr  # said, once
