"""How an array handed to ``RunningStats.update`` is laid out: the layouts accepted, and the guess without one.

A channels-last array with up to 4 channels is read without a layout;
any other shape is ambiguous and refused with the layout to give.
"""
from __future__ import annotations

__all__ = ["LAYOUTS", "infer_layout"]

LAYOUTS = ("HW", "HWC", "CHW", "NHW", "NHWC", "NCHW")
_MAX_INFERRED_CHANNELS = 4  # more channels than RGBA in the last axis: more likely H, W or N


def infer_layout(shape: tuple) -> str:
    """The layout of a channels-last array given without one, or ValueError naming the layout to give."""
    ndim = len(shape)
    if ndim <= 2:
        return "HW"
    if ndim in (3, 4) and shape[-1] <= _MAX_INFERRED_CHANNELS:
        return "HWC" if ndim == 3 else "NHWC"
    if ndim == 3:
        return _refuse(shape, "layout='NHW' for a batch of one-channel images, 'CHW' for one "
                              "channels-first image, or 'HWC' if it really has that many channels")
    if ndim == 4:
        return _refuse(shape, "layout='NCHW' for a channels-first batch, or 'NHWC' if it really has "
                              "that many channels")
    return _refuse(shape, "a layout")


def _refuse(shape, fix: str):
    raise ValueError(f"an array of shape {tuple(shape)} is ambiguous: give {fix}")

