"""What a Dataset yields, made countable: an item's image (and label), as an image the statistics read.

:func:`split_item` takes the image out of an item — the item itself, the
first element of a tuple (the second is its label), or a dict's column (a
Hugging Face ``datasets`` row). :func:`countable` turns the image — a PIL
image, a torch tensor (``CHW``, or ``NCHW`` for a batch), a numpy array
(``HWC``/``NHWC``) — into an object with the decoded-image protocol of
:class:`~bnstats.statistics.base.Statistic` (``histogram()``, ``values()``,
``bands``), counted as :class:`~bnstats.statistics.running.RunningStats`
counts arrays: 8/16-bit integers exactly as histograms, anything else in
float64. Tensors are read in place (no channels-last copy): a ``CHW`` plane
is contiguous, and is counted as one channel. An item that is none of these
is an :class:`ItemError` naming its index and type.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

from ..decoding.decode import DecodeOptions, decode_pillow
from ..decoding.image import DecodedImage, array_bands, keep_mask
from ..inputs.arrayfiles import is_pixel_dtype
from ..statistics.counting import bincount
from ..statistics.formulas import integer_levels, integer_offset

__all__ = ["ItemError", "split_item", "countable", "label_name", "ARRAY_LAYOUTS"]

NATIVE = DecodeOptions(mode="native")  # a PIL image's stored bands and depth (palettes as colours)
ARRAY_LAYOUTS = ("CHW", "HWC")  # of one image; a batch adds N in front
_MAX_CHANNELS = 4  # a channels-first guess wider than RGBA whose last axis would fit is refused (see _check)
_WIDENED = {torch.float16: torch.float32, torch.bfloat16: torch.float32}  # numpy has no bfloat16


class ItemError(TypeError):
    """An item that cannot be counted, in one line naming its index (``str(error)`` is the message)."""


def split_item(item, index: int, column: str | None, label_column: str):
    """``(image, label)`` of an item: a dict's ``column`` (``"image"`` by default) and ``label_column``,
    a tuple's or list's first and second element, else the item itself and no label."""
    if isinstance(item, Mapping):
        key = column or "image"
        if key not in item:
            raise ItemError(f"item {index} is a dict without the column {key!r} (its keys: "
                            f"{', '.join(map(str, list(item)[:8]))}): give column= the image column")
        return item[key], item.get(label_column)
    if isinstance(item, (tuple, list)) and item:
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def label_name(label, index: int, classes=None) -> str:
    """A label as a group name: a class name when ``classes`` names it, else its value as text."""
    if isinstance(label, (torch.Tensor, np.ndarray)):
        if (label.numel() if isinstance(label, torch.Tensor) else label.size) != 1:
            raise ItemError(f"item {index} has a label of shape {tuple(label.shape)}: by_label needs one "
                            "class per item (an integer or a name)")
        label = label.item()
    if isinstance(label, np.generic):
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ItemError(f"item {index} has a label of type {type(label).__name__}: by_label needs an integer "
                        "or a name")
    if classes is not None and isinstance(label, int) and 0 <= label < len(classes):
        return str(classes[label])
    return str(label)


def countable(image, index: int, layout: str | None):
    """The image as an object the statistics count (see the module docstring); ItemError if it cannot be."""
    if isinstance(image, Image.Image):
        return _pillow(image, index)
    if isinstance(image, torch.Tensor):
        return _tensor(image, index, layout or "CHW")
    if isinstance(image, np.ndarray):
        return _array(image, index, layout or "HWC")
    raise ItemError(f"item {index} is a {type(image).__module__}.{type(image).__qualname__}: dataset_stats "
                    "counts PIL images, torch tensors and numpy arrays (alone, first in a tuple, or in a dict's "
                    "column=)")


def _pillow(image: Image.Image, index: int) -> DecodedImage:
    try:
        return decode_pillow(image, NATIVE)  # as bnstats compute counts the same image read from a file
    except ValueError as exc:  # 32-bit integers past 16 bits
        raise ItemError(f"item {index}: {exc}") from None


def _tensor(t: torch.Tensor, index: int, layout: str):
    if t.is_complex():
        raise ItemError(f"item {index} is a {t.dtype} tensor: dataset_stats counts integer, real and boolean pixels")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype in _WIDENED:
        t = t.to(_WIDENED[t.dtype])
    return _array(t.numpy(), index, layout, "tensor")


def _array(a: np.ndarray, index: int, layout: str, what: str = "array"):
    if not is_pixel_dtype(a.dtype):  # the rule of arrays given to bnstats compute: booleans count as 0 and 1
        raise ItemError(f"item {index} is an array of dtype {a.dtype}: dataset_stats counts integer, real and "
                        "boolean pixels")
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    if a.ndim == 2:
        return ChannelPlanes(a[None], 1)
    if a.ndim not in (3, 4):
        raise ItemError(f"item {index} is a {what} of shape {tuple(a.shape)}: an image is (H, W), "
                        f"({', '.join(layout)}) or a batch (N, {', '.join(layout)})")
    _check(a.shape[-3:], index, layout, what)
    images = a.shape[0] if a.ndim == 4 else 1
    if layout == "HWC":
        return DecodedImage.of_array(a, array_bands(a.dtype, a.shape[-1]), NATIVE, count=images)
    last = np.moveaxis(a, -3, -1)
    if last.flags.c_contiguous:  # PILToTensor's permuted view of (H, W, C) pixels: read them as they lie
        image = DecodedImage.of_array(last, array_bands(last.dtype, last.shape[-1]), NATIVE, count=images)
    else:
        planes = np.moveaxis(a, -3, 0) if a.ndim == 4 else a  # (C, N, H, W): one plane of values per channel
        image = ChannelPlanes(planes, images)
    if a.ndim == 3 and a.shape[0] > _MAX_CHANNELS:  # a multispectral image, or a (B, H, W) batch of gray ones
        image.notes = (*image.notes, MANY_CHANNELS)
    return image


#: said once where a 3-dimensional item has more channels than RGBA: a DataLoader collates (H, W) gray
#: images into (B, H, W), which reads as one image of B channels
MANY_CHANNELS = ("a (C, H, W) item of more than 4 channels was counted as one image of C channels (multispectral "
                 "data); a batch of gray images must be (N, 1, H, W) (a DataLoader collates (H, W) images into "
                 "(N, H, W): give them a channel axis, image[None])")


def _check(shape, index: int, layout: str, what: str) -> None:
    """Refuse a shape that looks laid out the other way: counting it would report H or W channels."""
    channels, last = (shape[0], shape[-1]) if layout == "CHW" else (shape[-1], shape[0])
    if channels > _MAX_CHANNELS and last <= _MAX_CHANNELS:
        other = "HWC" if layout == "CHW" else "CHW"
        raise ItemError(f"item {index} is a {what} of shape {tuple(shape)}, which looks {other}, not {layout}: "
                        f"give layout={other!r} (or layout={layout!r} if it has {channels} channels)")


class ChannelPlanes:
    """``(C, ...)`` pixels, channels first, each channel's values contiguous and counted in place: the
    decoded-image protocol (what Tally.add_image and the statistics read) over them."""

    raw = None  # no raw bytes to gather: the histogram is counted at once
    scale = None  # values as they are (no stored integers and scaling)

    def __init__(self, planes: np.ndarray, images: int):
        self.count, self.dtype, self._counts = images, planes.dtype, None
        self.bands = array_bands(planes.dtype, planes.shape[0])
        self.rows = planes.reshape(planes.shape[0], -1)  # (C, n), once: of a batch (C, N, H, W) a copy
        keep, self.notes = keep_mask(self.rows.T, None)  # the one rule: NaN or infinite in any band is left out
        if keep is not None:
            self.rows = self.rows[:, keep]

    @property
    def offset(self) -> int:
        return integer_offset(self.dtype)

    def histogram(self):
        levels = integer_levels(self.dtype)
        if self._counts is None and levels is not None:
            rows = self.rows if self.rows.flags.c_contiguous else np.ascontiguousarray(self.rows)
            self._counts = np.concatenate([bincount(row[:, None], levels) for row in rows])
        return self._counts

    def values(self) -> np.ndarray:
        """``(n, C)`` values: a transposed view of the rows (MomentState reads its rows as they lie)."""
        return self.rows.T
