"""``bnstats recalibrate``: exact running statistics for every BatchNorm layer of a PyTorch model.

The model comes from ``--model MODULE:FACTORY`` (and ``--weights``), the
images from bnstats' own sources and decoding (every input kind bnstats
reads), as float tensors ``(C, H, W)`` in unit scale (8-bit / 255, 16-bit /
65535, float as stored), normalized with ``--normalize`` or
``--mean``/``--std``. The math is in :mod:`bnstats.torch`; torch is imported
only when the command runs.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import re
import sys
import warnings

import click

from ...running import interrupts
from ...running.checkpoint import SavedRun
from ...running.count import UnreadableImage, describe_error, single_items
from ...decoding.decode import DecodeError, load_image
from ...jsonio import read_json
from ..options import FloatsType, SectionedCommand, input_options, option, pixel_options, quiet_opt, strict_opt
from ..progress import Progress, printable
from ...inputs.base import SourceError, file_version
from ...statistics.validate import integer
from .common import (check_named, check_not_same_file, check_output_folder, check_regular_file, friendly_errors,
                     print_result, write_output)

TORCH_EXTRA = 'pip install "bnstats[torch]"'
_FLOAT32_MAX = 3.4028234663852886e38  # the inputs are float32 tensors unless the model is float64


def load_factory(spec: str):
    """``MODULE:FACTORY`` -> the model it returns (the working directory is importable, as with ``python -m``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.UsageError(f"--model {spec!r}: give MODULE:FACTORY, e.g. mymodels:resnet18")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is one line
        raise click.ClickException(f"cannot import {module_name} for --model: {describe_error(exc)}") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise click.ClickException(f"--model {spec}: {module_name} has no {attr}")
    from torch import nn

    if isinstance(factory, nn.Module):  # a model object (callable too: calling it would run its forward)
        return factory
    try:
        return factory() if callable(factory) else factory
    except Exception as exc:  # noqa: BLE001
        raise click.ClickException(f"--model {spec}: the factory failed: {describe_error(exc)}") from None


def load_weights(model, path: str, torch) -> None:
    """``torch.load`` a state_dict (or a checkpoint holding one under ``state_dict``/``model``) into ``model``."""
    with warnings.catch_warnings(record=True) as caught:  # torch's warnings are not one line, nor the user's
        warnings.simplefilter("always")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ == "UnpicklingError":  # torch's advice (weights_only=False) is not the user's
                raise click.ClickException(f"cannot load --weights {path}: not a file of tensors torch.load reads "
                                           f"safely (weights_only){_protocol_note(caught)}; save the model's "
                                           "state_dict() with torch.save") from None
            raise click.ClickException(f"cannot load --weights {path}: {describe_error(exc)}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise click.ClickException(f"--weights {path} holds no state_dict")
    ours = model.state_dict()
    missing, unexpected = [k for k in ours if k not in state], [k for k in state if k not in ours]
    problems = [f"{len(keys)} {what} key(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    problems += [f"{k} is {tuple(state[k].shape)}, the model's {tuple(v.shape)}" for k, v in ours.items()
                 if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)][:1]
    if problems:
        raise click.ClickException(f"--weights {path} do not match the model: {'; '.join(problems)}")
    try:
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - anything else load_state_dict refuses
        raise click.ClickException(f"--weights {path} do not match the model: {describe_error(exc)}") from None


def _protocol_note(caught) -> str:
    """", saved with pickle protocol N" when torch warned that the file's protocol is not the one it reads."""
    for warning in caught:
        found = re.search(r"pickle protocol (\d+)", str(warning.message))
        if found:
            return f", saved with pickle protocol {found.group(1)}"
    return ""


def normalization(normalize: str | None, mean, std):
    """``(mean, std)`` per channel from a bnstats result or the options, or ``(None, None)``."""
    if normalize and (mean or std):
        raise click.UsageError("give --normalize STATS.json or --mean/--std, not both")
    if (mean is None) != (std is None):
        raise click.UsageError("--mean and --std go together")
    if normalize:
        stats = read_json(normalize)
        if not isinstance(stats, dict) or not isinstance(stats.get("mean"), list) or \
                not isinstance(stats.get("std"), list):
            raise click.ClickException(f"{normalize} has no per-channel mean and std (a bnstats compute result)")
        mean, std = tuple(stats["mean"]), tuple(stats["std"])
    if mean is not None:
        check_normalization(mean, std, f"--normalize {normalize}" if normalize else "--mean/--std")
    return mean, std


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_normalization(mean, std, where: str) -> None:
    """Refuse values that would make every input NaN or infinite: a usage error.

    A mean must be a finite number, a std a finite number above 0 whose
    reciprocal is finite in float32 (the inputs are divided by it; a std of
    1e-300 turns every pixel into an infinity).
    """
    if len(mean) != len(std):
        raise click.UsageError(f"{where}: {len(mean)} mean values and {len(std)} std values; give one per channel")
    if not mean:
        raise click.UsageError(f"{where}: no mean and std values")
    bad = [m for m in mean if not _number(m)]
    if bad:
        raise click.UsageError(f"{where}: every mean must be a finite number, not {bad[0]}")
    bad = [s for s in std if not _number(s) or s < 1 / _FLOAT32_MAX]  # also every s <= 0
    if bad:
        raise click.UsageError(f"{where}: every std must be a positive number (and not so small that dividing by it "
                               f"overflows float32), not {bad[0]}")


class ImageBatches:
    """The selection as batches of ``(B, C, H, W)`` tensors, re-iterable (sequential mode reads it per pass).

    Unreadable images are skipped (and reported once, on the first pass),
    or stop the run with ``strict``. Images must share a size and bands.
    """

    def __init__(self, selection, options, batch_size, mean, std, dtype, torch, progress, strict, start=0,
                 done=0, skipped=None):
        self.selection, self.options, self.batch_size = selection, options, batch_size
        self.torch, self.dtype, self.progress, self.strict = torch, dtype, progress, strict
        self.mean = None if mean is None else torch.tensor(mean, dtype=dtype).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=dtype).view(-1, 1, 1)
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
            raise click.ClickException(printable(f"{key} {what}"))
        scale = {"u1": 255.0, "u2": 65535.0}.get(f"{pixels.dtype.kind}{pixels.dtype.itemsize}", 1.0)
        x = self.torch.from_numpy(pixels).permute(2, 0, 1).to(self.dtype) / scale
        if self.mean is not None:
            if len(self.mean) != x.shape[0]:
                raise click.ClickException(f"{len(self.mean)} normalization values for {x.shape[0]}-channel images")
            x = (x - self.mean) / self.std
        return x

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
                yield self.torch.stack(batch)
                batch = []
        if batch:
            yield self.torch.stack(batch)


class RecalibrationCheckpoint(SavedRun):
    """``--checkpoint``: where counting stands after the last whole batch, the items read, the skipped ones.

    Train mode makes one pass; sequential mode one per layer, and also keeps
    the forward order and the states of the layers done. Saved atomically
    every few seconds, at the end of each layer's pass and on a stop; a run
    with the same fingerprint (its files and their versions; model, weights,
    preprocessing, batch size, mode) goes on from it, and gives the same
    bytes as a run never stopped.
    """

    verify_digest = True  # an edited layer state would resume to other buffers in the model, exit 0

    def __init__(self, path: str, selection, settings: dict):
        super().__init__(path, selection.keys, settings, source=selection.source)
        self.saved = {"states": {}, "batches": 0, "order": None, "finished": {}}
        self.items, self.skipped = 0, {}
        self.resume = self.source = self._last = None
        self.lock()  # a second run on this checkpoint stops at once, naming the owner (as compute's)
        try:
            data = self.read()
        except BaseException:
            self.unlock()
            raise
        self.resumed = data is not None
        if data is not None:
            try:
                order = data["order"]
                self.saved = {"states": dict(data["states"]), "batches": data["batches"],
                              "order": None if order is None else ([str(n) for n in order[0]], bool(order[1])),
                              "finished": dict(data["finished"])}
                self.items, self.skipped = integer(data["items"], "items", len(selection)), dict(data["skipped"])
                integer(self.saved["batches"], "batches")
            except (KeyError, TypeError, ValueError, IndexError):
                self.unlock()
                raise self.damaged() from None

    def follow(self, resume, batches: ImageBatches) -> None:
        """Save the progress ``resume`` records (``bnstats.torch.Resume``) as ``batches`` are read."""
        self.resume, self.source = resume, batches

    def after_batch(self, states: dict) -> None:
        """Keep the state at this batch boundary; write it if the last save is a while ago."""
        self._keep(states, self.resume.batches, self.source.position)
        if self.due():
            self.save()

    def after_layer(self, name: str) -> None:
        """A layer's pass has ended (sequential mode): the next one starts from nothing."""
        self._keep({}, 0, 0)
        self.save()

    def _keep(self, states, batches, items) -> None:
        order = self.resume.order and [list(self.resume.order[0]), self.resume.order[1]]
        self._last = {"items": items, "batches": batches, "skipped": dict(self.source.skipped), "order": order,
                      "finished": dict(self.resume.finished), "states": states}

    def save(self) -> bool:
        """Write the last batch boundary kept; False when there is none yet (nothing counted)."""
        if self._last is None:
            return False
        last = self._last
        self.write({**last, "states": {name: state.to_dict() for name, state in last["states"].items()}})
        return True


@click.command(cls=SectionedCommand)
@option("--model", "model_spec", group="Model", required=True, metavar="MODULE:FACTORY",
        help="A function (or a model object) that builds the model, e.g. mymodels:resnet18.")
@option("--weights", group="Model", type=click.Path(exists=True, dir_okay=False),
        help="A state_dict to load into the model (torch.save'd).")
@input_options
@pixel_options
@option("--normalize", group="Normalization", type=click.Path(exists=True, dir_okay=False), metavar="STATS.json",
        help="Normalize with the mean and std of a bnstats compute result.")
@option("--mean", group="Normalization", type=FloatsType(),
        help="Per-channel mean in unit scale, e.g. 0.485,0.456,0.406.")
@option("--std", group="Normalization", type=FloatsType(),
        help="Per-channel std in unit scale, e.g. 0.229,0.224,0.225.")
@option("--batch-size", group="BatchNorm", type=click.IntRange(min=1), required=True,
        help="Images per batch (the batch statistics train mode normalizes with, and precise BN's batches).")
@option("--bn-mode", group="BatchNorm", type=click.Choice(["train", "sequential"]), default="train",
        show_default=True,
        help="train: one pass, BN layers normalizing with batch statistics; sequential: layer by layer, "
             "earlier layers recalibrated, as at inference (one pass per layer).")
@option("--variance", group="BatchNorm", type=click.Choice(["population", "batch"]), default="population",
        show_default=True, help="Write the population variance, or the batch-average one (precise BN's).")
@option("--max-batches", group="BatchNorm", type=click.IntRange(min=1), help="Use only the first N batches.")
@option("-o", "--output", group="Output", type=click.Path(dir_okay=False), metavar="MODEL.pt",
        help="Write the recalibrated state_dict here (atomically).")
@option("--report", group="Output", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE.json",
        help="Write the per-layer audit as JSON ('-': stdout).")
@option("--dry-run", group="Output", is_flag=True, help="Print the audit table; write no model.")
@option("--checkpoint", group="Output", type=click.Path(dir_okay=False), metavar="FILE.json",
        help="Save progress here (every few seconds, after each layer in sequential mode, and on Ctrl-C); "
             "the same command resumes from it.")
@strict_opt
@quiet_opt
@friendly_errors
def recalibrate(model_spec, weights, inputs, options, normalize, mean, std, batch_size, bn_mode, variance,
                max_batches, output, report, dry_run, checkpoint, strict, quiet):
    """Recalibrate every BatchNorm layer of a PyTorch model with exact statistics.

    \b
    Example:
        bnstats recalibrate --model mymodels:resnet18 --weights swa.pt data/train \\
            --resize 256 --center-crop 224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \\
            --batch-size 64 -o recalibrated.pt --report layers.json
        bnstats recalibrate --model mymodels:resnet18 --weights model.pt data/val ... --dry-run
    """
    check_named(("-o", output), ("--report", report), ("--checkpoint", checkpoint))
    if not output and not dry_run:
        raise click.UsageError("give -o MODEL.pt, or --dry-run to only print the audit")
    if options.ignore_value is not None:
        raise click.UsageError("--ignore-value leaves pixels out; a model needs whole images")
    mean, std = normalization(normalize, mean, std)
    if max_batches is not None:
        max_batches = min(max_batches, sys.maxsize)  # more batches than can exist: all of them
    report_file = None if report == "-" else report  # "-": the report goes to stdout
    lock_file = [("--checkpoint's lock file", f"{checkpoint}.lock")] if checkpoint else []  # removed at the end
    check_not_same_file(("-o", None if dry_run else output), ("--report", report_file), ("--checkpoint", checkpoint),
                        *lock_file)
    check_output_folder(None if dry_run else output)
    check_output_folder(report_file)
    check_output_folder(checkpoint)
    check_regular_file("--checkpoint", checkpoint)
    try:
        import torch
        from ... import torch as bt
    except ImportError:
        raise click.ClickException(f"bnstats recalibrate needs PyTorch: {TORCH_EXTRA}") from None
    model = load_factory(model_spec)
    if not isinstance(model, torch.nn.Module):
        raise click.ClickException(f"--model {model_spec} gave a {type(model).__name__}, not a torch.nn.Module")
    if weights:
        load_weights(model, weights, torch)
    layers = bt.bn_layers(model)
    if not layers:
        raise click.ClickException(f"--model {model_spec} has no BatchNorm layer with running statistics")
    selection = inputs.select()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    saver = None
    if checkpoint:
        settings = {"model": model_spec, "weights": weights and file_version(weights), "options": options.to_dict(),
                    "batch_size": batch_size, "mean": mean and list(mean), "std": std and list(std),
                    "dtype": str(dtype), "max_batches": max_batches, "bn_mode": bn_mode,
                    "states": 3}  # 3: layers done saved as their states; older checkpoints are another run's
        saver = RecalibrationCheckpoint(checkpoint, selection, settings)  # another run's: a one-line error
    # the progress bar counts items read: per pass (about) what --max-batches lets through, and in sequential
    # mode one pass per layer after one batch that learns their order (unless a checkpoint knows it)
    per_pass = len(selection) if max_batches is None else min(len(selection), max_batches * batch_size)
    learning = 0 if bn_mode == "train" or (saver and saver.saved["order"]) else min(batch_size, len(selection))
    finished = len(saver.saved["finished"]) if saver else 0
    progress = Progress(per_pass * (1 if bn_mode == "train" else len(layers)) + learning, quiet=quiet,
                        label="recalibrate")
    for note in selection.notes:
        progress.warn(note)
    for skip in selection.errors:
        progress.warn(f"skipped {skip['path']}: {skip['error']}")
    if saver is not None and saver.resumed:  # said as compute says it
        layers_done = f", {finished} of {len(layers)} layers done" if bn_mode == "sequential" else ""
        progress.warn(f"resuming from {checkpoint}: {saver.items} of {len(selection)} files already counted"
                      f"{layers_done}")
    start = saver.items if saver else 0
    done = start + finished * per_pass
    batches = ImageBatches(selection, options, batch_size, mean, std, dtype, torch, progress, strict,
                           start=start, done=done, skipped=saver.skipped if saver else None)
    resume = None
    if saver is not None:
        resume = bt.Resume(**saver.saved, after_batch=saver.after_batch, after_layer=saver.after_layer)
        saver.follow(resume, batches)
    try:
        result = bt.recalibrate_bn(model, batches, mode=bn_mode, variance=variance, max_batches=max_batches,
                                   resume=resume)
    except (click.ClickException, UnreadableImage, SourceError, DecodeError, OSError):
        raise  # bnstats' own one-line errors (friendly_errors)
    except ValueError as exc:  # no batch reached a layer (every image skipped), or the model's own refusal
        if batches.shape is None and batches.skipped:  # not one image read: say why, as compute does
            key, error = next(iter(batches.skipped.items()))
            raise click.ClickException(printable(f"none of the {len(selection)} images could be read "
                                                 f"(first: {key}: {error})")) from None
        raise click.ClickException(printable(str(exc).strip().splitlines()[0] if str(exc).strip() else
                                             describe_error(exc))) from None
    except Exception as exc:  # noqa: BLE001 - the user's model failed on a batch: one line, not a traceback
        raise click.ClickException(printable(f"the model failed on a batch: {describe_error(exc)}")) from None
    except KeyboardInterrupt:
        if saver is not None:
            with interrupts.deferred(second_raises=False):  # a second Ctrl-C must not stop the save half-way
                saved = saver.save()
            if saved:
                progress.warn(f"progress saved to {checkpoint}: run the same command to go on")
        raise
    finally:
        progress.close()
        if saver is not None and sys.exc_info()[0] is not None:
            saver.unlock()  # stopped or failed: the checkpoint stays for a rerun, the lock goes
    # counting is done: a stop now waits for the outputs, so that they are written together (never a new
    # report beside an old model) and the checkpoint goes only once they are
    with interrupts.deferred(second_raises=False):
        table = bt.audit_table(result)
        if report:
            write_output(bt.report_json(result), report_file)
        if not dry_run:
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            write_output(buffer.getvalue(), output)
        if saver is not None:  # written: the finished checkpoint goes (a --dry-run's too)
            saver.remove()
    if dry_run:
        if report != "-":  # the audit is the result: stdout, unless the report is there
            print_result(table)
    elif not quiet:
        click.echo(table, err=True, nl=False)
