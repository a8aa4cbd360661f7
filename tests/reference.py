"""The independent references the tests check bnstats against.

Nothing here imports ``bnstats``: each reference is the plain, slow, obvious
way to get the answer.

* :func:`full_load` -- the float64 "load everything" statistics: every
  pixel of every image concatenated, numpy population mean/var/std/min/max.
  :func:`load_array` decodes one file with Pillow (OpenCV for 16-bit colour)
  and converts it as ``--mode`` says; :func:`full_load_files` does both.
* torchvision's ``Resize`` and ``CenterCrop`` rules, written out:
  :func:`resize_size`, :func:`tv_resize`, :func:`center_crop`.
* :func:`batchnorm_buffers` -- PyTorch ``BatchNorm2d``'s running-buffer
  update, in numpy float64.
* :func:`channel_stats` -- the numpy statistics of one channels-last array.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

STAT_KEYS = ("mean", "std", "var", "min", "max")

PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


# -- torchvision geometry --------------------------------------------------------------------------

def _pair(size) -> tuple[int, int]:
    """An int ``n`` means ``(n, n)``; a pair is ``(width, height)``."""
    return (size, size) if isinstance(size, int) else tuple(size)


def resize_size(w: int, h: int, size) -> tuple[int, int]:
    """torchvision ``Resize(size)`` output ``(width, height)`` for a ``w`` x ``h`` image.

    An int is the shorter side (the longer one truncated, not rounded); a
    pair is ``(width, height)``.
    """
    if not isinstance(size, int):
        return _pair(size)
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def tv_resize(img: Image.Image, size, interpolation: str = "bilinear") -> Image.Image:
    """torchvision ``Resize(size)`` on a Pillow image (unchanged when already that size)."""
    new = resize_size(*img.size, size)
    if new == img.size:
        return img
    return img.resize(new, PIL_FILTERS[interpolation])


def center_crop(array: np.ndarray, crop) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """torchvision ``CenterCrop`` on an (H, W) or (H, W, C) array.

    A crop larger than the image first pads it with zeros (the odd pixel
    right/bottom); the box's top-left corner is ``round((size - crop) / 2)``
    (Python's round: half to even). Returns the crop and its box
    ``(left, top, right, bottom)`` in input coordinates (negative: padding).
    """
    cw, ch = _pair(crop)
    h, w = array.shape[:2]
    pad_l = (cw - w) // 2 if cw > w else 0
    pad_t = (ch - h) // 2 if ch > h else 0
    pad_r = (cw - w + 1) // 2 if cw > w else 0
    pad_b = (ch - h + 1) // 2 if ch > h else 0
    if pad_l or pad_t or pad_r or pad_b:
        array = np.pad(array, [(pad_t, pad_b), (pad_l, pad_r)] + [(0, 0)] * (array.ndim - 2))
        h, w = array.shape[:2]
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    box = (left - pad_l, top - pad_t, left - pad_l + cw, top - pad_t + ch)
    return array[top : top + ch, left : left + cw], box


def output_size(w: int, h: int, resize=None, crop=None) -> tuple[int, int]:
    """``(width, height)`` after ``Resize(resize)`` then ``CenterCrop(crop)``."""
    if resize is not None:
        w, h = resize_size(w, h, resize)
    if crop is not None:
        w, h = _pair(crop)
    return w, h


# -- decoding ------------------------------------------------------------------------------------------

def _native_16bit_colour(path: str):
    """The (H, W, C) uint16 R,G,B(,A) array of a 16-bit colour file, else None.

    Pillow reduces these to 8 bits; OpenCV reads them whole (as B,G,R(,A)).
    """
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


def _convert(img: Image.Image, mode: str) -> Image.Image:
    """The Pillow image as ``--mode`` counts it."""
    if mode == "rgb":
        return img.convert("RGB")
    if mode == "gray":
        return img.convert("L")
    if mode != "native":
        raise ValueError(mode)
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "PA":
        return img.convert("RGBA")
    if img.mode == "1":
        return img.convert("L")
    return img


def load_array(path, mode: str = "rgb", resize=None, crop=None, interpolation: str = "bilinear",
               exif: bool = False) -> np.ndarray:
    """One image file as the (H, W, C) array bnstats should count.

    Decoded with Pillow (16-bit colour in native mode with OpenCV), rotated
    as its EXIF orientation says when ``exif``, converted as ``mode`` says,
    then torchvision's ``Resize(resize)`` (with Pillow's ``interpolation``)
    and ``CenterCrop(crop)``.
    """
    path = os.fspath(path)
    wide = _native_16bit_colour(path) if mode == "native" else None
    if wide is not None:
        if exif or resize is not None:
            raise NotImplementedError("16-bit colour: only a crop is supported by this reference")
        a = wide
    else:
        with Image.open(path) as img:
            img.load()
            if exif:
                img = ImageOps.exif_transpose(img)
            img = _convert(img, mode)
            if resize is not None:
                img = tv_resize(img, resize, interpolation)
            a = np.asarray(img)
    if crop is not None:
        a = center_crop(a, crop)[0]
    return a.reshape(a.shape[0], a.shape[1], -1)


# -- statistics --------------------------------------------------------------------------------------

def max_value_of(dtype) -> int:
    """The unit-scale divisor bnstats uses for pixels of ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u" and dtype.itemsize == 1:
        return 255
    if dtype.kind == "u" and dtype.itemsize == 2:
        return 65535
    if dtype.kind == "f":
        return 1
    raise AssertionError(f"unexpected reference dtype {dtype}")


def full_load(arrays, ignore=None) -> dict:
    """float64 statistics of every pixel of the (H, W, C) ``arrays``, all concatenated.

    Laid out as a bnstats report: unit-scale values under ``mean`` ...
    ``max``, raw ones under ``raw``, plus ``max_value``, ``pixels``,
    ``channels`` and ``images``. With ``ignore``, pixels equal to it in every
    band are left out.
    """
    arrays = list(arrays)
    max_value = max_value_of(arrays[0].dtype)
    # one row per channel (contiguous, so numpy sums each row pairwise)
    bands = np.concatenate([a.reshape(-1, a.shape[-1]).T for a in arrays], axis=1)
    if ignore is not None:
        bands = bands[:, (bands != ignore).any(axis=0)]
    values = bands.astype(np.float64)
    var = values.var(axis=1, ddof=0)
    raw = {
        "mean": values.mean(axis=1),
        "var": var,
        "std": np.sqrt(var),  # what numpy's std is
        "min": bands.min(axis=1).astype(np.float64),  # exact in any dtype; faster before the float64 copy
        "max": bands.max(axis=1).astype(np.float64),
    }
    out = {"max_value": max_value, "pixels": values.shape[1], "channels": values.shape[0], "images": len(arrays),
           "raw": {}}
    for key, values in raw.items():
        out["raw"][key] = values.tolist()
        out[key] = (values / max_value ** (2 if key == "var" else 1)).tolist()
    return out


def full_load_files(paths, mode: str = "rgb", **preprocessing) -> dict:
    """:func:`full_load` of the files, each read by :func:`load_array`."""
    return full_load(load_array(p, mode, **preprocessing) for p in paths)


def mean_of_image_std(arrays, max_value: int = 255) -> list[float]:
    """The "forum recipe" std: each image's own std, averaged over images (unit scale)."""
    return np.mean([a.reshape(-1, a.shape[-1]).T.astype(np.float64).std(axis=1) / max_value for a in arrays],
                   axis=0).tolist()


def channel_stats(x) -> dict:
    """Raw per-channel float64 statistics of one channels-last array ((H, W) is one channel)."""
    x64 = np.asarray(x).astype(np.float64)
    axis = None if x64.ndim <= 2 else tuple(range(x64.ndim - 1))
    return {
        "mean": np.atleast_1d(x64.mean(axis=axis)).tolist(),
        "var": np.atleast_1d(x64.var(axis=axis)).tolist(),
        "std": np.atleast_1d(x64.std(axis=axis)).tolist(),
        "min": np.atleast_1d(x64.min(axis=axis)).tolist(),
        "max": np.atleast_1d(x64.max(axis=axis)).tolist(),
    }


def assert_stats_close(result: dict, ref: dict, tol: float = 1e-9) -> None:
    """Every statistic of ``result`` within ``tol`` (relative to max(1, |value|)) of :func:`full_load`'s.

    ``result`` is ``RunningStats.result()`` (raw values under ``raw_*``) or a
    report (raw values under ``raw``). Raw values are compared relative to
    the full scale (``max_value``, squared for the variance).
    """
    for key in STAT_KEYS:
        got = result[key]
        raw = result["raw_" + key] if "raw_" + key in result else result["raw"][key]
        assert len(got) == len(ref[key]) == len(raw), key
        for c, (g, want) in enumerate(zip(got, ref[key])):
            assert abs(g - want) <= tol * max(1.0, abs(want)), f"{key}[{c}]: {g!r} != {want!r}"
        scale = ref["max_value"] ** (2 if key == "var" else 1)
        for c, (g, want) in enumerate(zip(raw, ref["raw"][key])):
            assert abs(g - want) <= tol * max(scale, abs(want)), f"raw {key}[{c}]: {g!r} != {want!r}"


def assert_report_matches(report: dict, ref: dict, tol: float = 1e-9) -> None:
    """A report's counts equal :func:`full_load`'s and its statistics are close (see :func:`assert_stats_close`)."""
    assert report["max_value"] == ref["max_value"]
    assert report["pixels"] == ref["pixels"]
    assert report["images"] == ref["images"]
    assert_stats_close(report, ref, tol)


# -- BatchNorm ---------------------------------------------------------------------------------------

def batchnorm_buffers(batches, momentum, max_value: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch ``BatchNorm2d``'s ``running_mean`` / ``running_var`` after ``batches``, in numpy float64.

    ``batches`` is a list of batches, each a list of channels-last arrays;
    pixels are divided by ``max_value``. The buffers start at 0 and 1; each
    batch moves them by ``momentum`` towards its mean and its *unbiased*
    (ddof 1) variance; ``momentum=None`` is the cumulative average (the k-th
    batch weighs 1/k).
    """
    running_mean = running_var = None
    for k, batch in enumerate(batches, 1):
        x = np.concatenate([b.reshape(-1, b.shape[-1]) for b in batch]).astype(np.float64) / max_value
        if running_mean is None:
            running_mean, running_var = np.zeros(x.shape[1]), np.ones(x.shape[1])
        m = 1 / k if momentum is None else momentum
        running_mean = (1 - m) * running_mean + m * x.mean(axis=0)
        running_var = (1 - m) * running_var + m * x.var(axis=0, ddof=1)
    return running_mean, running_var

