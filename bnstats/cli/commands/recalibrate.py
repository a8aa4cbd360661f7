"""``bnstats recalibrate``: exact running statistics for every BatchNorm layer of a PyTorch model.

The model comes from ``--model MODULE:FACTORY`` (and ``--weights``), the
images from bnstats' own sources and decoding (every input kind bnstats
reads), as float tensors ``(C, H, W)`` in unit scale (8-bit / 255, 16-bit /
65535, float as stored), normalized with ``--normalize`` or
``--mean``/``--std``. The job is :class:`bnstats.torch.job.RecalibrateJob`;
torch is imported only when the command runs.
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
from ...running.count import describe_error
from ...jsonio import read_json
from ..options import FloatsType, SectionedCommand, input_options, option, pixel_options, quiet_opt, strict_opt
from ..progress import Progress, printable
from ...inputs.base import file_version
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
    try:  # a model built on the 'meta' device takes the file's tensors (copying into meta ones does nothing)
        model.load_state_dict(state, assign=_on_meta(model))
    except Exception as exc:  # noqa: BLE001 - anything else load_state_dict refuses
        raise click.ClickException(f"--weights {path} do not match the model: {describe_error(exc)}") from None


def _on_meta(model) -> bool:
    """Whether any of the model's tensors is on the 'meta' device (shapes, no values)."""
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


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


def check_files(output: str | None, report: str | None, checkpoint: str | None) -> None:
    """Before the run: the model, the report and the checkpoint name distinct files that can be written."""
    lock_file = [("--checkpoint's lock file", f"{checkpoint}.lock")] if checkpoint else []  # removed at the end
    check_not_same_file(("-o", output), ("--report", report), ("--checkpoint", checkpoint), *lock_file)
    check_output_folder(output)
    check_output_folder(report)
    check_output_folder(checkpoint)
    check_regular_file("--checkpoint", checkpoint)


def load_model(spec: str, weights: str | None, torch, bt):
    """The model ``--model`` builds, with ``--weights`` loaded; it must have a BatchNorm layer to recalibrate."""
    model = load_factory(spec)
    if not isinstance(model, torch.nn.Module):
        raise click.ClickException(f"--model {spec} gave a {type(model).__name__}, not a torch.nn.Module")
    if weights:
        load_weights(model, weights, torch)
    if _on_meta(model):
        raise click.ClickException(f"--model {spec} is on the 'meta' device (shapes, no values): give --weights "
                                   "holding every parameter and buffer")
    if not bt.bn_layers(model):
        raise click.ClickException(f"--model {spec} has no BatchNorm layer with running statistics")
    return model


def warn_before(progress, job, checkpoint: str | None, layers: int) -> None:
    """What the listing could not read, and where a resumed run goes on from (said as compute says it)."""
    for note in job.selection.notes:
        progress.warn(note)
    for skip in job.selection.errors:
        progress.warn(f"skipped {skip['path']}: {skip['error']}")
    if job.resumed:
        layers_done = f", {job.layers_done} of {layers} layers done" if job.mode == "sequential" else ""
        progress.warn(f"resuming from {checkpoint}: {job.start} of {len(job.selection)} files already counted"
                      f"{layers_done}")


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
    report_file = None if report == "-" else report  # "-": the report goes to stdout
    check_files(None if dry_run else output, report_file, checkpoint)
    try:
        import torch
        from ... import torch as bt
        from ...torch.batches import RecalibrationError
        from ...torch.job import RecalibrateJob
    except ImportError:
        raise click.ClickException(f"bnstats recalibrate needs PyTorch: {TORCH_EXTRA}") from None
    model = load_model(model_spec, weights, torch, bt)
    if inputs.options.mask is not None:  # the input options are one set: --mask is compute's alone
        raise click.UsageError("--mask is an option of bnstats compute (foreground and per-label statistics)")
    selection = inputs.select()
    identity = {"model": model_spec, "weights": weights and file_version(weights)}
    job = RecalibrateJob(model, selection, options, batch_size=batch_size, mean=mean, std=std, mode=bn_mode,
                         variance=variance, max_batches=max_batches, strict=strict, checkpoint=checkpoint,
                         identity=identity)
    progress = Progress(job.total, quiet=quiet, label="recalibrate")
    warn_before(progress, job, checkpoint, len(bt.bn_layers(model)))
    try:
        result = job.run(progress)
    except RecalibrationError as exc:
        raise click.ClickException(printable(str(exc))) from None
    finally:
        progress.close()
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
        job.done()  # written: the finished checkpoint goes (a --dry-run's too)
    if dry_run:
        if report != "-":  # the audit is the result: stdout, unless the report is there
            print_result(table)
    elif not quiet:
        click.echo(table, err=True, nl=False)
