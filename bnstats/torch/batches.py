"""bnstats' own inputs as batches of float tensors for a model: decoded, scaled to unit, normalized.

Images come from bnstats' sources and decoding (every input kind bnstats
reads) as float tensors ``(C, H, W)`` in unit scale (8-bit / 255, 16-bit /
65535, float as stored), normalized with a per-channel mean and std.
"""

from __future__ import annotations

import torch

from ..decoding.decode import DecodeError, load_image
from ..inputs.base import SourceError
from ..running.count import UnreadableImage, describe_error, single_items


class RecalibrationError(ValueError):
    """Why a recalibration over bnstats' inputs cannot go on, in one line (images that do not batch, no image
    read, the model failing on a batch)."""


class ImageBatches:
    """The selection as batches of ``(B, C, H, W)`` tensors, re-iterable (sequential mode reads it per pass).

    Unreadable images are skipped (and reported once, on the first pass,
    with ``progress.warn``), or stop the run with ``strict``. Images must
    share a size and bands (:class:`RecalibrationError` names the first that
    does not). ``progress.advance(done)`` is told the items read in every
    pass; ``start`` items were counted before a resume.
    """

    def __init__(self, selection, options, batch_size, mean, std, dtype, progress, strict, start=0,
                 done=0, skipped=None):
        self.selection, self.options, self.batch_size = selection, options, batch_size
        self.dtype, self.progress, self.strict = dtype, progress, strict
        # scaled and normalized in float32 (float64 for a float64 model), rounded once to the model's dtype: in
        # half precision each step would round (bfloat16: 3/4 of the inputs off, their mean by +0.005)
        self.work = torch.float64 if dtype == torch.float64 else torch.float32
        self.mean = None if mean is None else torch.tensor(mean, dtype=self.work).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=self.work).view(-1, 1, 1)
        self.skipped: dict[str, str] = dict(skipped or {})
        self.start = start  # items counted before a resume: the first pass begins after them
        self.position = start  # items read in this pass
        self.done = done  # items read in every pass (the progress bar's count)
        self.shape = None

    def _images(self, start: int):
        keys = self.selection.keys[start:]
        for key, load in single_items(self.selection.source, keys):
            try:
                pixels, bands = load_image(load(), self.options)
            except (DecodeError, SourceError):
                raise
            except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
                if self.strict:
                    raise UnreadableImage(key, describe_error(exc)) from None
                if key not in self.skipped:
                    self.skipped[key] = describe_error(exc)
                    self.progress.warn(f"skipped {key}: {self.skipped[key]}")
                self._advance()
                continue
            yield key, pixels, bands

    def _tensor(self, key, pixels, bands):
        layout = (pixels.shape, bands)
        if self.shape is None:
            self.shape = layout
        elif layout != self.shape:
            (h, w, _), first = pixels.shape, self.shape[0]
            what = (f"is {w}x{h}, earlier images {first[1]}x{first[0]}: give --resize and --center-crop so "
                    "that images batch" if pixels.shape[:2] != first[:2] else
                    f"has bands {''.join(bands)}, earlier images {''.join(self.shape[1])}: use --mode rgb or gray")
            raise RecalibrationError(f"{key} {what}")
        scale = {"u1": 255.0, "u2": 65535.0}.get(f"{pixels.dtype.kind}{pixels.dtype.itemsize}", 1.0)
        x = torch.from_numpy(pixels).permute(2, 0, 1).to(self.work) / scale
        if self.mean is not None:
            if len(self.mean) != x.shape[0]:
                raise RecalibrationError(f"{len(self.mean)} normalization values for {x.shape[0]}-channel images")
            x = (x - self.mean) / self.std
        return x.to(self.dtype)

    def _advance(self):
        self.position += 1
        self.done += 1
        self.progress.advance(self.done)

    def __iter__(self):
        # at once, not when the first batch is asked for: a pass that reads none (its --max-batches reached
        # before a stop) still moves the next pass to the start
        self.position, self.start = self.start, 0  # a later pass (sequential mode) reads everything
        return self._batches(self.position)

    def _batches(self, start: int):
        batch = []
        for key, pixels, bands in self._images(start):
            batch.append(self._tensor(key, pixels, bands))
            self._advance()
            if len(batch) == self.batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)
