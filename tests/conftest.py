"""Shared fixtures for the bnstats tests.

``full_load_stats`` is the float64 "load everything" reference the streaming
results are checked against: decode each image with Pillow, convert it as the
mode says, concatenate all pixels and compute population statistics.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"

STAT_KEYS = ("mean", "std", "var", "min", "max")


def _native_16bit_colour(path: str):
    """The (H, W, C) uint16 R,G,B(,A) array of a 16-bit colour file, else None."""
    if not path.lower().endswith((".png", ".tif", ".tiff")):
        return None
    try:
        import cv2
    except ImportError:
        return None
    a = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] not in (3, 4):
        return None
    return a[..., [2, 1, 0, 3][: a.shape[2]]]


def load_reference_array(path, mode: str) -> np.ndarray:
    """One image as an (H, W, C) array, converted the way ``mode`` says."""
    path = os.fspath(path)
    with Image.open(path) as im:
        if mode == "rgb":
            a = np.asarray(im.convert("RGB"))
        elif mode == "gray":
            a = np.asarray(im.convert("L"))
        elif mode == "native":
            wide = _native_16bit_colour(path)
            if wide is not None:
                a = wide
            elif im.mode == "P":
                a = np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))
            elif im.mode == "PA":
                a = np.asarray(im.convert("RGBA"))
            elif im.mode == "1":
                a = np.asarray(im.convert("L"))
            else:
                a = np.asarray(im)
        else:
            raise ValueError(mode)
    return a.reshape(a.shape[0], a.shape[1], -1)


def array_stats(arrays) -> dict:
    """Reference statistics of a list of (H, W, C) arrays (all pixels concatenated)."""
    arrays = list(arrays)
    dtype = arrays[0].dtype
    if dtype == np.uint8:
        max_value = 255
    elif dtype.kind == "u" and dtype.itemsize == 2:
        max_value = 65535
    elif dtype.kind == "f":
        max_value = 1
    else:
        raise AssertionError(f"unexpected reference dtype {dtype}")
    flat = np.concatenate([a.reshape(-1, a.shape[-1]).astype(np.float64) for a in arrays])
    raw = {
        "mean": flat.mean(axis=0),
        "var": flat.var(axis=0, ddof=0),
        "std": flat.std(axis=0, ddof=0),
        "min": flat.min(axis=0),
        "max": flat.max(axis=0),
    }
    out = {"max_value": max_value, "pixels": flat.shape[0], "channels": flat.shape[1], "images": len(arrays)}
    for key, values in raw.items():
        out["raw_" + key] = values.tolist()
        scale = max_value**2 if key == "var" else max_value
        out[key] = (values / scale).tolist()
    return out


def reference_stats(paths, mode: str) -> dict:
    return array_stats(load_reference_array(p, mode) for p in paths)


def assert_stats_close(result: dict, ref: dict, tol: float = 1e-9) -> None:
    """``result`` is ``RunningStats.result()`` or a report (raw values under ``raw``)."""
    for key in STAT_KEYS:
        got = result[key]
        raw = result["raw_" + key] if "raw_" + key in result else result["raw"][key]
        assert len(got) == len(ref[key]), key
        for c, (g, want) in enumerate(zip(got, ref[key])):
            assert abs(g - want) <= tol * max(1.0, abs(want)), f"{key}[{c}]: {g!r} != {want!r}"
        for c, (g, want) in enumerate(zip(raw, ref["raw_" + key])):
            scale = ref["max_value"] ** (2 if key == "var" else 1)
            assert abs(g - want) <= tol * max(scale, abs(want)), f"raw {key}[{c}]: {g!r} != {want!r}"


@pytest.fixture(scope="session")
def sample_data() -> Path:
    assert SAMPLE_DATA.is_dir(), SAMPLE_DATA
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def full_load():
    """The reference: ``full_load.stats(paths, mode)``, ``full_load.close(result, ref)``."""

    class FullLoad:
        stats = staticmethod(reference_stats)
        arrays = staticmethod(array_stats)
        load = staticmethod(load_reference_array)
        close = staticmethod(assert_stats_close)

    return FullLoad
