"""One recalibration from Python: a model and bnstats' inputs in, exact BatchNorm buffers and the audit out.

What ``bnstats recalibrate`` does around :func:`~bnstats.torch.recalibrate_bn`
— reading the images as batches, resuming from and saving a checkpoint,
turning what goes wrong into one line — so that all of it is reachable from
Python too::

    from bnstats.inputs.select import select
    from bnstats.torch.job import RecalibrateJob

    job = RecalibrateJob(model, select(["data/train"]), batch_size=64, checkpoint="bn.ckpt")
    report = job.run()              # the buffers are written; Ctrl-C saves bn.ckpt
    job.done()                      # once the model is saved: the checkpoint goes
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..decoding.decode import DecodeError, DecodeOptions
from ..inputs.base import SourceError
from ..inputs.selection import Selection, as_selection
from ..running import interrupts
from ..running.count import UnreadableImage, describe_error
from .batches import ImageBatches, RecalibrationError
from .checkpoint import RecalibrationCheckpoint
from .layers import Resume, bn_layers
from .recalibrate import recalibrate_bn

CHECKPOINT_VERSION = 3  # 3: layers done saved as their states; older checkpoints are another run's


class Silent:
    """A progress that shows nothing: the default for Python callers (``bnstats recalibrate`` shows a bar)."""

    def warn(self, message: str) -> None:
        """Drop a warning."""

    def advance(self, done: int) -> None:
        """Drop the count of items read."""


class RecalibrateJob:
    """Recalibrate every BatchNorm layer of ``model`` over a selection of images.

    ``items`` is a :class:`~bnstats.inputs.selection.Selection` or a list of
    image paths, decoded with ``options`` and normalized with ``mean``/``std``
    (unit scale, per channel) into batches of ``batch_size``. ``mode``,
    ``variance`` and ``max_batches`` are :func:`~bnstats.torch.recalibrate_bn`'s.
    ``checkpoint`` is a file to resume from (if it exists) and to save progress
    to; ``identity`` names the model and its weights in its fingerprint (the
    CLI gives ``--model`` and the ``--weights`` file's version) [default: the
    model's class]. After construction, ``start`` and ``layers_done`` say what
    a checkpoint restored; ``total`` is the items :meth:`run` reads in all.
    """

    def __init__(self, model: nn.Module, items: Selection | Sequence[str], options: DecodeOptions = DecodeOptions(),
                 *, batch_size: int, mean=None, std=None, mode: str = "train", variance: str = "population",
                 max_batches: int | None = None, strict: bool = False, checkpoint: str | None = None,
                 identity: dict | None = None):
        self.model, self.selection, self.options = model, as_selection(items), options
        self.batch_size, self.mean, self.std, self.strict = batch_size, mean, std, strict
        self.mode, self.variance = mode, variance
        self.max_batches = None if max_batches is None else min(max_batches, sys.maxsize)  # more than exist: all
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.saver = None
        if checkpoint:
            if identity is None:
                identity = {"model": f"{type(model).__module__}:{type(model).__qualname__}", "weights": None}
            settings = {**identity, "options": options.to_dict(), "batch_size": batch_size,
                        "mean": mean and list(mean), "std": std and list(std), "dtype": str(self.dtype),
                        "max_batches": self.max_batches, "bn_mode": mode, "states": CHECKPOINT_VERSION}
            self.saver = RecalibrationCheckpoint(checkpoint, self.selection, settings)  # another run's: an error
        self.resumed = self.saver is not None and self.saver.resumed
        self.start = self.saver.items if self.saver else 0
        self.layers_done = len(self.saver.saved["finished"]) if self.saver else 0

    @property
    def per_pass(self) -> int:
        """The items one pass reads (about: what ``max_batches`` lets through)."""
        items = len(self.selection)
        return items if self.max_batches is None else min(items, self.max_batches * self.batch_size)

    @property
    def total(self) -> int:
        """The items read in all: one pass in train mode; in sequential mode one per layer, after one batch
        that learns their order (unless a checkpoint knows it)."""
        if self.mode == "train":
            return self.per_pass
        learning = 0 if self.saver and self.saver.saved["order"] else min(self.batch_size, len(self.selection))
        return self.per_pass * len(bn_layers(self.model)) + learning

    def run(self, progress=Silent()) -> dict:
        """Write exact statistics into the model's BatchNorm buffers; return the audit report.

        ``progress`` has ``warn(message)`` and ``advance(done)``. What goes
        wrong with the images or the model raises :class:`RecalibrationError`
        (one line); on Ctrl-C (or SIGTERM, SIGHUP) the checkpoint, if any, is
        saved and the interrupt propagates. The checkpoint stays until
        :meth:`done`.
        """
        saver = self.saver
        done = self.start + self.layers_done * self.per_pass
        batches = ImageBatches(self.selection, self.options, self.batch_size, self.mean, self.std, self.dtype,
                               progress, self.strict, start=self.start, done=done,
                               skipped=saver.skipped if saver else None)
        resume = None
        if saver is not None:
            resume = Resume(**saver.saved, after_batch=saver.after_batch, after_layer=saver.after_layer)
            saver.follow(resume, batches)
        try:
            with warnings.catch_warnings(record=True) as caught:  # shown as the run's own warning lines
                report = self._recalibrate(batches, resume)
            for warning in caught:
                progress.warn(str(warning.message))
            return report
        except KeyboardInterrupt:
            if saver is not None:
                with interrupts.deferred(second_raises=False):  # a second Ctrl-C must not stop the save half-way
                    saved = saver.save()
                if saved:
                    progress.warn(f"progress saved to {saver.path}: run the same command to go on")
            raise
        finally:
            if saver is not None and sys.exc_info()[0] is not None:
                saver.unlock()  # stopped or failed: the checkpoint stays for a rerun, the lock goes

    def _recalibrate(self, batches: ImageBatches, resume: Resume | None) -> dict:
        """:func:`recalibrate_bn` over the batches, what goes wrong as one line."""
        try:
            return recalibrate_bn(self.model, batches, mode=self.mode, variance=self.variance,
                                  max_batches=self.max_batches, resume=resume)
        except (RecalibrationError, UnreadableImage, SourceError, DecodeError, OSError):
            raise  # bnstats' own one-line errors
        except ValueError as exc:  # no batch reached a layer (every image skipped), or the model's own refusal
            if batches.shape is None and batches.skipped:  # not one image read: say why, as compute does
                key, error = next(iter(batches.skipped.items()))
                raise RecalibrationError(f"none of the {len(self.selection)} images could be read "
                                         f"(first: {key}: {error})") from None
            text = str(exc).strip()
            raise RecalibrationError(text.splitlines()[0] if text else describe_error(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - the user's model failed on a batch: one line, not a traceback
            raise RecalibrationError(f"the model failed on a batch: {describe_error(exc)}") from exc

    def done(self) -> None:
        """Remove the checkpoint: call once the outputs are safely written."""
        if self.saver is not None:
            self.saver.remove()
