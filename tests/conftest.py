"""Shared fixtures for the bnstats tests.

The references the results are checked against live in ``reference.py``;
CLI helpers in ``helpers.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import Scripted, link_copies

from bnstats import limits

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The small photo dataset shipped in ``sample_data/`` (class folders)."""
    assert SAMPLE_DATA.is_dir(), SAMPLE_DATA
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def sample_files(sample_data) -> list[Path]:
    """Every file of ``sample_data``, sorted (all of them are images)."""
    return sorted(p for p in sample_data.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def big_jpegs(tmp_path_factory) -> list[Path]:
    """Four distinct 1500x1500 JPEGs: each takes a noticeable time to decode."""
    folder = tmp_path_factory.mktemp("big_jpegs")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:1500, 0:1500]
    paths = []
    for k in range(4):
        pixels = np.stack([(xx + 40 * k) % 256, (yy + 17 * k) % 256, (xx ^ yy) % 256], -1).astype(np.uint8)
        path = folder / f"base_{k}.jpg"
        Image.fromarray(pixels ^ rng.integers(0, 32, pixels.shape, np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def slow_data(big_jpegs, tmp_path_factory) -> Path:
    """400 big JPEGs (links to ``big_jpegs``): seconds of decoding on 2 cores, time to press Ctrl-C."""
    return link_copies(big_jpegs, tmp_path_factory.mktemp("slow") / "data", 400)


@pytest.fixture(scope="session")
def small_pngs(tmp_path_factory) -> Path:
    """24 small RGB PNGs i000.png..i023.png (4 to 6 rows of 5 pixels); read-only."""
    root = tmp_path_factory.mktemp("small_pngs") / "d"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (4 + i % 3, 5, 3), dtype=np.uint8)).save(root / f"i{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def stats_file(sample_data, tmp_path_factory) -> Path:
    """The result of ``compute sample_data -q -j 1`` as a file; read-only."""
    from helpers import cli

    path = tmp_path_factory.mktemp("stats_file") / "stats.json"
    cli("compute", sample_data, "-q", "-j", "1", "-o", path, expect=0)
    return path


@pytest.fixture
def scripted():
    """``start(respond)`` -> a running :class:`Scripted` server, shut down after the test."""
    servers = []

    def start(respond):
        server = Scripted(respond)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def small_bounds():
    """Bounds low enough for small test files; the process's bounds come back afterwards."""
    saved = limits.current()

    def install(**bounds):
        limits.install(limits.Limits(**bounds))

    yield install
    limits.install(saved)


@pytest.fixture
def images(tmp_path):
    """Four small RGB PNGs a.png..d.png in tmp_path/imgs, and their pixels."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    arrays = []
    for name in "abcd":
        a = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{name}.png")
        arrays.append(a)
    return folder, arrays
