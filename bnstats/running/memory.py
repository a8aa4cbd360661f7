"""Images a Python caller holds -> a report: an array of images, or an iterable of Pillow images, arrays
or tensors, counted in this process as ``bnstats compute`` counts files.

An ``(N, H, W[, C])`` array is counted as an ``.npy`` file of it would be (rows in batches of a few
megabytes, ``channel_axis`` as ``--channel-axis``, the mode left as stored); a Pillow image as the same
image read from a file (``decode_pillow``: ``--mode``, EXIF, Resize, CenterCrop); an array item is one
``(H, W[, C])`` image, a tensor item torch's ``(C, H, W)``. Items are named ``array:ROW`` and
``item:NUMBER`` in skip entries. An item that cannot be counted is a skip entry, or
:class:`~bnstats.running.count.UnreadableImage` with ``strict``, as for files. The ``files`` record
digests the pixels themselves (no item has a path), so that ``merge`` refuses the same data given twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..decoding.decode import decode_item, decode_pillow
from ..decoding.image import ArrayImage
from ..decoding.pillow import collected_warnings
from ..inputs.arrayfiles import is_pixel_dtype
from ..decoding.image import array_bands
from ..inputs.arrays import BATCH_BYTES, as_images
from ..inputs.base import NoImagesError
from ..output.report import build_report
from ..statistics.formulas import LayoutError
from ..statistics.tally import Tally
from .count import CountSpec, decoded_or_skipped

ITEM_DIGITS = 6  # item numbers are zero-padded so that skip entries sort in item order


def is_tensor(value) -> bool:
    """A PyTorch tensor, told without importing torch."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "numpy")


def tensor_array(tensor) -> np.ndarray:
    """A tensor's values as a numpy array (from any device; never part of an autograd graph); bfloat16 as
    float32, exactly (numpy has no bfloat16, and torch refuses to give one)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()


def count_array(array, spec: CountSpec, channel_axis: int | None = None, warn: Callable[[str], None] = print,
                name: str = "array") -> dict:
    """The report of the images of one array: ``(N, H, W[, C])``, or any shape an ``.npy`` input may have;
    a tensor's channels are on axis 1 (``N, C, H, W``) unless ``channel_axis`` says otherwise."""
    if is_tensor(array):
        array, channel_axis = tensor_array(array), 1 if channel_axis is None and array.ndim == 4 else channel_axis
    array = np.asarray(array)
    check_pixels(array, name)
    if not 1 <= array.ndim <= 4:
        raise ValueError(f"an array of shape {array.shape} is no list of images: give (N, H, W) or (N, H, W, C)")
    if channel_axis is not None and not 1 <= channel_axis < array.ndim:
        raise ValueError(f"channel_axis={channel_axis} is not an axis of an array of shape {array.shape} "
                         f"(1..{array.ndim - 1}: axis 0 numbers the images)")
    images = as_images(array, channel_axis)
    digest = _digest_header(images)
    width = len(str(max(len(images) - 1, 0)))
    per_batch = max(1, BATCH_BYTES // max(images[0].nbytes if len(images) else 1, 1))

    def batches():
        for start in range(0, len(images), per_batch):
            rows = np.ascontiguousarray(images[start : start + per_batch])
            digest.update(rows.data)
            keys = tuple(f"{name}:{row:0{width}d}" for row in range(start, start + len(rows)))
            yield keys, ArrayImage(rows, array_bands(rows.dtype, rows.shape[-1]))

    return _count(batches(), spec, warn, digest, decode_item)


def count_items(items: Iterable, spec: CountSpec, channel_axis: int | None = None,
                warn: Callable[[str], None] = print) -> dict:
    """The report of an iterable of images (Pillow images, ``(H, W[, C])`` arrays, ``(C, H, W)`` tensors),
    read once, one image at a time: a generator is counted in constant memory."""
    digest = hashlib.sha256(b"bnstats items\0")

    def each():
        for number, item in enumerate(items):
            key = f"item:{number:0{ITEM_DIGITS}d}"
            yield (key,), _item_payload(item, channel_axis, digest, key)

    return _count(each(), spec, warn, digest, _decode_payload)


def _item_payload(item, channel_axis: int | None, digest, key: str):
    """What to decode for one item: the Pillow image, or an :class:`ArrayImage` of one ``(H, W, C)`` image;
    the item's pixels go into ``digest``. A thing that is no image at all is a TypeError (a caller's
    mistake, not bad data)."""
    from PIL import Image

    if isinstance(item, Image.Image):
        digest.update(f"{item.mode} {item.size}".encode())
        try:
            digest.update(item.tobytes())
        except Exception as exc:  # noqa: BLE001 - a broken lazily opened image: a skip entry when decoded
            return _Broken(exc)
        return item
    axis = channel_axis
    if is_tensor(item):
        item, axis = tensor_array(item), 1 if channel_axis is None else channel_axis
    if not isinstance(item, np.ndarray):
        raise TypeError(f"{key} is a {type(item).__name__}: give Pillow images, numpy arrays or tensors "
                        "(or paths, as a list of str)")
    check_pixels(item, key)
    if item.ndim not in (2, 3):
        raise ValueError(f"{key} has shape {item.shape}: an image is (H, W) or (H, W, C) ((C, H, W) for a tensor)")
    pixels = as_images(item[None], axis if item.ndim == 3 else None)  # the rules of a one-row array
    pixels = np.ascontiguousarray(pixels)
    digest.update(f"{pixels.dtype.str} {pixels.shape}".encode())
    digest.update(pixels.data)
    return ArrayImage(pixels[0], array_bands(pixels.dtype, pixels.shape[-1]))


def check_pixels(array: np.ndarray, name: str) -> None:
    """Refuse arrays of what is no pixel data, as array files are refused (a ValueError naming ``name``)."""
    if not is_pixel_dtype(array.dtype):
        raise ValueError(f"{name}: arrays of {array.dtype} cannot be counted (complex, object and structured "
                         "arrays are not pixel data)")


class _Broken:
    """An item that failed before decoding: decoding it raises the failure (a skip entry)."""

    def __init__(self, exc: Exception):
        self.exc = exc


def _decode_payload(payload, options):
    if isinstance(payload, _Broken):
        raise payload.exc
    if isinstance(payload, ArrayImage):
        return decode_item(payload, options)
    return decode_pillow(payload, options)


def _digest_header(images: np.ndarray):
    digest = hashlib.sha256(b"bnstats array\0")
    digest.update(f"{images.dtype.str} {images.shape}".encode())
    return digest


def _count(items: Iterator, spec: CountSpec, warn, digest, decode) -> dict:
    """Fold ``(keys, payload)`` pairs into a tally, as a worker counts a partition, and report it."""
    tally = Tally.for_spec(spec)
    total = 0
    with collected_warnings():  # decoders' warnings become notes, as in a run
        for keys, payload in items:
            total += len(keys)
            image = decoded_or_skipped(tally, keys, lambda: decode(payload, spec.options), spec.strict)
            if image is None:
                continue
            try:
                tally.add_image(image)
            except LayoutError as exc:
                raise LayoutError(f"{keys[0]}: {exc}") from None
    for skip in tally.skipped:
        warn(f"skipped {skip['path']}: {skip['error']}")
    for note in sorted(tally.notes):
        warn(note)
    _check_counted(tally, total)
    listing = {"count": total, "digest": digest.hexdigest()}
    files = {**listing, "covers": [{"list": dict(listing), "ranges": [[0, total]] if total else []}]}
    return build_report(tally, spec.options, files)


def _check_counted(tally: Tally, total: int) -> None:
    """Refuse a result that counted nothing, as a run of files does."""
    if total == 0:
        raise NoImagesError("no images given (an empty array or iterable)")
    if tally.stats.kind is None:
        first = tally.skipped[0]
        raise NoImagesError(f"none of the {total} images could be read (first: {first['path']}: {first['error']})")
    if tally.stats.pixels == 0:
        raise NoImagesError(f"no pixel was counted: every pixel of the {tally.stats.images} images was left out "
                            "(ignore_value, or NaN/infinite float pixels)")
