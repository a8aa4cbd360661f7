"""``bnstats.compute(...)``: the ``compute`` command as one Python call, with the same JSON.

The keyword arguments are the command's options, by their Python names
(``--center-crop`` is ``center_crop``), read from the click command itself
and checked by the same parsers, so that the call and the command line
cannot drift: ``compute("data", resize=256, center_crop=224)`` is
``bnstats compute data --resize 256 --center-crop 224``, and its
:meth:`~bnstats.output.result.Result.to_json` is what that prints, byte for
byte. A bad value is an :class:`OptionError` (a ValueError) naming the
argument, never a click exception. Paths and URLs run the command's job
(workers, shards, checkpoints, Dask); arrays and iterables of images are
counted in this process (:mod:`bnstats.running.memory`). Warnings (skipped
items, notes) are Python warnings of category :class:`BnstatsWarning`.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Iterable

import click

from .cli.commands.compute import compute as command
from .cli.commands.compute import check_files, plan_job
from .cli.progress import Progress
from .cli.options import INPUT_NAMES, PIXEL_NAMES, Inputs, InputPath, ShardType, SizeType
from .decoding.options import DecodeOptions
from .decoding.sixteen import HELD_AS_8_BITS, held_as_8_bits
from .output.report import floats_like_8_bits
from .output.result import Result
from .running.count import CountSpec
from .running.job import Following, JobSettingsError
from .running.memory import count_array, count_items, is_tensor

#: command-line options that have no keyword: what they do is the caller's (the result is returned, not
#: written or summed up; warnings are Python warnings, filtered as any)
NOT_KEYWORDS = ("paths", "output", "quiet", "summary")
#: the keywords that apply to images in memory; any other given is refused, never ignored
IN_MEMORY = (*PIXEL_NAMES, "strict", "percentiles", "covariance", "channel_axis", "workers")
JOINED_BY = {SizeType: "x", ShardType: "/"}  # how a pair is written on the command line; other lists: commas


class OptionError(ValueError):
    """A keyword argument of :func:`compute` that the ``compute`` command would refuse (its usage errors)."""


class BnstatsWarning(UserWarning):
    """A warning of a run (a skipped item, a note about the data): what ``bnstats compute`` prints on stderr."""


def _warn(message: str) -> None:
    warnings.warn(message, BnstatsWarning, stacklevel=3)


def options() -> tuple[str, ...]:
    """The keyword arguments :func:`compute` takes: the ``compute`` command's options, by their Python names."""
    return tuple(p.name for p in command.params if p.name not in NOT_KEYWORDS)


def compute(data, **given) -> Result:
    """Count ``data`` as ``bnstats compute`` does and return the :class:`~bnstats.output.result.Result`.

    ``data`` is a path or URL (a folder, files, archives, arrays, brace patterns as on the command line),
    a list of them, an ``(N, H, W[, C])`` numpy array or tensor, or an iterable of images (Pillow images,
    ``(H, W[, C])`` arrays, ``(C, H, W)`` tensors). ``given`` are the command's options as keyword
    arguments (:func:`options` lists them): ``mode="gray"``, ``resize=256`` or ``(W, H)``,
    ``percentiles=[1, 99]``, ``group_by="class"``, ``shard=(0, 2)``, ``strict=True``, ...

    Raises :class:`OptionError` for a bad option, and what the command reports in one line for bad
    inputs: :class:`~bnstats.inputs.base.NoImagesError`, :class:`~bnstats.running.count.UnreadableImage`
    with ``strict``, ...
    """
    values = _parse(given)
    spec_options = DecodeOptions(**{name: values[name] for name in PIXEL_NAMES})
    paths = _paths(data)
    if paths is None:
        return _in_memory(data, values, given, spec_options)
    inputs_given = {name: values[name] for name in INPUT_NAMES if name != "paths"}
    inputs = Inputs.from_options(paths=paths, **inputs_given)
    following = Following(values["sample"], values["until_ci"], values["seed"], values["bn_momentum"],
                          values["batch_size"], values["trace_path"], values["trace_every"])
    try:
        check_files(None, values["checkpoint"], values["trace_path"], stdout=False)
        job = plan_job(inputs, spec_options, following, warn=_warn, workers=values["workers"],
                       strict=values["strict"], group_by=values["group_by"], percentiles=values["percentiles"],
                       covariance=values["covariance"], scheduler=values["scheduler"],
                       checkpoint=values["checkpoint"])
    except click.ClickException as exc:  # usage errors, and a checkpoint or trace file that cannot be written
        raise OptionError(exc.format_message()) from None

    warnings_of = Progress(None, done=job.start, tally=job.tally, to=_warn)  # skips and notes, once each
    try:
        report = job.run(on_chunk=warnings_of, on_listed=lambda items: warnings_of.listed(
            items, job.tally is not None, values["checkpoint"]))
    except JobSettingsError as exc:  # checked once a folder counted while walked is listed
        raise OptionError(str(exc)) from None
    job.done()
    return Result(report, _describe(paths))


def _in_memory(data, values: dict, given: dict, options: DecodeOptions) -> Result:
    """An array or an iterable of images, counted in this process with the options that apply to them."""
    refused = [name for name, value in given.items() if value is not None and name not in IN_MEMORY]
    if refused:
        raise OptionError(f"{refused[0]} applies to paths, not to images in memory: leave it out (those take "
                          f"{', '.join(IN_MEMORY)})")
    if values["workers"] not in (None, 1):
        raise OptionError("images in memory are counted in this process: leave workers out")
    asked = [("percentiles", {"ps": list(values["percentiles"])})] if values["percentiles"] else []
    asked += ["covariance"] if values["covariance"] else []
    spec = CountSpec(options, strict=values["strict"], statistics=tuple(asked))
    notes = set()
    if _is_array(data):
        if values["channel_axis"] is None:
            _refuse_one_image(data.shape)
        result = Result(count_array(data, spec, values["channel_axis"], _warn), "array")
    else:
        items = [data] if _is_pillow(data) else data  # one image: an iterable of one
        items = _checked_items(items, values["channel_axis"], options.mode, notes)
        result = Result(count_items(items, spec, values["channel_axis"], _warn), "images")
    notes.add(floats_like_8_bits(result.report))
    for note in sorted(notes - {None}):
        _warn(note)
    return result


#: where a Dataset's or a DataLoader's items go instead
DATASETS = ("the items of a PyTorch or Hugging Face Dataset or DataLoader ((image, label) tuples, dict rows, "
            "batches) are counted by bnstats.torch.dataset_stats(dataset)")
#: at most this many channels make a 3-dimensional array look like one colour image (RGBA's 4)
IMAGE_CHANNELS = 4


def _looks(shape) -> str | None:
    """``"CHW"`` or ``"HWC"`` where a 3-dimensional shape looks like one colour image laid out so (2 to 4
    channels on one side, more than 4 on the other), else None."""
    if len(shape) != 3:
        return None
    first, last = shape[0], shape[-1]
    if 2 <= first <= IMAGE_CHANNELS < last:
        return "CHW"
    if 2 <= last <= IMAGE_CHANNELS < first:
        return "HWC"
    return None


def _refuse_one_image(shape) -> None:
    """Refuse a 3-dimensional array or tensor that looks like one colour image, ``(C, H, W)`` or ``(H, W, C)``:
    an array is ``(N, H, W)`` gray images, so it would be counted as C (or H) gray images, every band mixed
    into one channel ``L``. Others (MNIST's ``(60000, 28, 28)``) are gray images, as the docs say."""
    looks = _looks(shape)
    if looks is None:
        return
    remedy = "array[None] with channel_axis=1" if looks == "CHW" else "array[None]"
    rows = "" if looks == "CHW" else f", or channel_axis=2 for {shape[0]} rows of pixels of {shape[-1]} channels"
    raise OptionError(f"an array of shape {tuple(shape)} looks like one ({', '.join(looks)}) image, but a "
                      f"3-dimensional array is (N, H, W) gray images: give {remedy} for one image, "
                      f"array[..., None] for {shape[0]} gray images{rows}")


def _checked_items(items, channel_axis, mode: str, notes: set):
    """The items, each refused where its layout looks like the other one: a numpy item is ``(H, W, C)``, a
    tensor item ``(C, H, W)`` (without ``channel_axis``), so a ``(3, H, W)`` array would be counted as W
    channels, a ``(H, W, 3)`` tensor as H channels. A Pillow image of a 16-bit colour file in native mode
    adds a note to ``notes`` (said after the count: decoders' warnings are collected during it), found while
    the image can still tell (counting reads its pixels first, for the digest)."""
    for number, item in enumerate(items):
        if isinstance(item, (tuple, list, dict)):  # a Dataset's (image, label), a DataLoader's batch, a row
            raise TypeError(f"item {number} is a {type(item).__name__}, not an image: {DATASETS}")
        if mode == "native" and _is_pillow(item) and held_as_8_bits(item):
            notes.add(HELD_AS_8_BITS)
        shape = getattr(item, "shape", None)
        if channel_axis is None and shape is not None:
            expected = "CHW" if is_tensor(item) else "HWC" if hasattr(item, "__array__") else None
            looks = _looks(shape)
            if expected is not None and looks is not None and looks != expected:
                kind = "a tensor" if expected == "CHW" else "a numpy array"
                raise OptionError(f"item {number} of shape {tuple(shape)} looks ({', '.join(looks)}), but "
                                  f"{kind} item is ({', '.join(expected)}): give channel_axis="
                                  f"{1 if looks == 'CHW' else 3} (counted as an array of one: axis 0 numbers "
                                  "the images), or lay it out so")
        yield item


def _is_array(data) -> bool:
    return hasattr(data, "shape") and hasattr(data, "dtype") and (is_tensor(data) or hasattr(data, "__array__"))


def _is_pillow(data) -> bool:
    return type(data).__module__.startswith("PIL.") and hasattr(data, "getbands")


def _paths(data) -> tuple[tuple[str, ...], ...] | None:
    """``data`` as the command's PATHS (each checked and brace-expanded as the command does), or None for
    images in memory."""
    if isinstance(data, (str, os.PathLike)):
        named = [data]
    elif isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data):
        named = list(data)
    elif isinstance(data, Iterable) or _is_array(data) or _is_pillow(data):
        return None
    else:
        hint = f": {DATASETS}" if hasattr(data, "__getitem__") and hasattr(data, "__len__") else ""
        raise TypeError(f"compute takes a path, a list of paths, an array or an iterable of images, "
                        f"not {type(data).__name__}{hint}")
    parsed = []
    for path in named:
        try:
            parsed.append(InputPath().parse(os.fspath(path)))
        except ValueError as exc:
            raise OptionError(str(exc)) from None
    return tuple(parsed)


def _describe(paths) -> str:
    flat = [p for group in paths for p in group]
    return flat[0] if len(flat) == 1 else f"{flat[0]} and {len(flat) - 1} more"


def _parse(given: dict) -> dict:
    """Every option's value, as the command would have it: ``given`` checked by the command's own
    parsers, the command's defaults for the rest."""
    params = {p.name: p for p in command.params if p.name not in NOT_KEYWORDS}
    unknown = [name for name in given if name not in params]
    if unknown:
        close = difflib.get_close_matches(unknown[0], params, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise OptionError(f"compute() has no option {unknown[0]!r}{hint}; it takes {', '.join(params)}")
    ctx = click.Context(command)
    values = {}
    for name, param in params.items():
        value = given.get(name)
        if value is None:
            default = param.get_default(ctx)
            values[name] = (() if param.multiple else None) if default in (None, _UNSET) else default
            continue
        try:
            values[name] = param.type_cast_value(ctx, _as_text(param, value))
        except click.BadParameter as exc:
            raise OptionError(f"{name}={value!r}: {exc.message}") from None
    return values


_UNSET = getattr(click.core, "UNSET", None)  # click 8.2+: the default of an option declared without one


def _as_text(param: click.Parameter, value):
    """A Python value as the text the option takes on the command line (``(256, 224)`` -> ``256x224``,
    ``[1, 99]`` -> ``1,99``), so that the command's parser checks it; flags stay booleans."""
    if getattr(param, "is_flag", False):
        if not isinstance(value, bool):
            raise OptionError(f"{param.name}={value!r}: give True or False")
        return value
    if isinstance(value, bool):
        raise OptionError(f"{param.name}={value!r}: not a flag (give a value, as on the command line)")
    if param.multiple:
        if isinstance(value, dict):  # storage_options={"anon": True}
            return tuple(f"{k}={json.dumps(v)}" for k, v in value.items())
        return (value,) if isinstance(value, (str, os.PathLike)) else tuple(_one(param, v) for v in value)
    return _one(param, value)


def _one(param: click.Parameter, value) -> str:
    if isinstance(value, (list, tuple)):
        return JOINED_BY.get(type(param.type), ",").join(_one(param, v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if isinstance(value, str) else str(value)
