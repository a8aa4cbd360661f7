"""Command-line options shared by several commands, each defined once.

As in rasterio's ``rio/options.py``: every option is a named decorator, and
the groups that travel together build typed objects for the command —
:func:`input_options` gives ``inputs`` (an :class:`Inputs`),
:func:`pixel_options` gives ``options`` (a
:class:`~bnstats.decoding.options.DecodeOptions`) — so commands never read a bag of
keyword arguments by string key. Each option also names its ``--help``
section (``option(..., group="Output")``); :class:`SectionedCommand` lists
them so.
"""

from __future__ import annotations

import functools
import os
import math
import re
from dataclasses import dataclass, fields

import click

from .. import limits
from ..observers.batchnorm import CUMULATIVE
from ..decoding.options import INTERPOLATIONS, MODES, DecodeOptions
from ..inputs.select import InputError, OptionNotRead, expand_braces, read_file_list, select
from ..inputs.base import InputOptions, is_url
from ..inputs.keys import KeyChain
from ..inputs.listing import ListingInProgress
from ..inputs.selection import Selection

# -- --help in sections ------------------------------------------------------------


class GroupedOption(click.Option):
    """A click option with a ``help_group``: the ``--help`` section it is listed under."""

    def __init__(self, *param_decls, help_group: str | None = None, **kwargs):
        super().__init__(*param_decls, **kwargs)
        self.help_group = help_group


def option(*param_decls, group: str, **kwargs):
    """``click.option``, listed under ``group`` (e.g. "Output") in ``--help``."""
    return click.option(*param_decls, cls=GroupedOption, help_group=group, **kwargs)


class Command(click.Command):
    """A click command whose usage errors always carry its context.

    click raises some parse errors ("Option '-o' requires an argument")
    without one; the context is what names the command in the one-line
    error's "See 'bnstats merge --help'".
    """

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if exc.ctx is None:
                exc.ctx = ctx
            raise


class SectionedCommand(Command):
    """A command whose ``--help`` lists its options in sections, by ``help_group``.

    Sections come in the order their first option was declared; options
    without a group (``--help``) come last, under "Other". The option column
    has one width in all sections, so they line up.
    """

    def format_options(self, ctx, formatter):
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                sections.setdefault(getattr(param, "help_group", None) or "Other", []).append(record)
        sections["Other"] = sections.pop("Other", [])
        width = min(30, max((len(name) for rows in sections.values() for name, _ in rows), default=0))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    # click sizes the column per call: pad the short names to one width
                    formatter.write_dl([(name.ljust(width), text) for name, text in rows], col_max=width)


# -- option types ---------------------------------------------------------------


class ParsedType(click.ParamType):
    """An option value parsed from its text by :meth:`parse`; a ValueError is click's one-line usage error.

    Values that are not text (defaults, values already converted) pass through.
    """

    def parse(self, text: str):
        raise NotImplementedError

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SizeType(ParsedType):
    """``N`` (an int) or ``WxH`` (a ``(width, height)`` pair)."""

    name = "N|WxH"

    def parse(self, text):
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
        if not m or int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
            raise ValueError(f"{text!r} is not a positive size N or WxH")
        size = int(m.group(1)) if m.group(2) is None else (int(m.group(1)), int(m.group(2)))
        check_size(text, size)
        return size


def check_size(text: str, size) -> None:
    """Refuse a size whose images would be over the pixel limit: each one would be a skip, or take gigabytes.

    ``N`` (a shorter side, or a square crop) makes images of at least N×N pixels.
    """
    bound = limits.current()
    pixels = size * size if isinstance(size, int) else size[0] * size[1]
    if pixels > bound.pixels:
        shown = f"{pixels:,}" if pixels < 10**18 else f"10^{len(str(pixels)) - 1}"
        raise ValueError(f"{text[:40]!r} makes images of {shown} pixels or more, over the limit of {bound.pixels:,} "
                         f"(raise it with {bound.variable('pixels')})")


class ShardType(ParsedType):
    """``K/N``: shard K (0-based) of N."""

    name = "K/N"

    def parse(self, text):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise ValueError(f"{text!r} is not K/N with 0 <= K < N")
        return int(m.group(1)), int(m.group(2))


class ByteSize(ParsedType):
    """Bytes, with an optional K, M, G or T suffix (powers of 1024)."""

    name = "SIZE"

    def parse(self, text):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
        if not m:
            raise ValueError(f"{text!r} is not a size like 512M or 8G")
        size = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))
        if size < 1:
            raise ValueError(f"{text!r} is not a size of at least 1 byte")
        return size


class MomentumType(ParsedType):
    """A momentum in (0, 1], or ``cumulative`` (PyTorch's ``momentum=None``)."""

    name = "M|cumulative"

    def parse(self, text):
        if text.lower() in (CUMULATIVE, "none"):
            return CUMULATIVE
        try:
            m = float(text)
        except ValueError:
            m = -1
        if not 0 < m <= 1:
            raise ValueError(f"{text!r} is not a momentum in (0, 1] or 'cumulative'")
        return m


class NumberType(ParsedType):
    """An int if it looks like one, else a finite float."""

    name = "NUMBER"

    def parse(self, text):
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{text!r}: give a finite number (NaN and infinite float pixels are never counted)")
        return number


class NumbersType(NumberType):
    """A number, or one number per band separated by commas (``0,0,0,65535``) as a tuple."""

    name = "NUMBER[,NUMBER...]"

    def parse(self, text):
        if "," not in text:
            return super().parse(text)
        return tuple(super(NumbersType, self).parse(part.strip()) for part in text.split(","))


class FiniteFloatType(ParsedType):
    """A finite float, at least ``min`` (NaN compares false to every bound: click's FloatRange lets it in)."""

    name = "FLOAT"

    def __init__(self, min: float = -math.inf):
        self.min = min

    def parse(self, text):
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not math.isfinite(number) or number < self.min:
            raise ValueError(f"{text!r} is not a finite number of at least {self.min:g}")
        return number


class FloatsType(ParsedType):
    """``0.485,0.456,0.406`` -> a tuple of floats."""

    name = "X,X,..."

    def parse(self, text):
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"{text!r} is not a comma-separated list of numbers") from None


# -- building typed objects from groups of options -------------------------------------------


def _stack(*decorators):
    """Apply click decorators in the order listed (top to bottom, as when written above a function)."""
    def decorate(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return decorate


def _collect(target: str, build, names: tuple[str, ...]):
    """A decorator that replaces the keyword arguments ``names`` by ``target=build(**those)``."""
    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            kwargs[target] = build(**{name: kwargs.pop(name) for name in names})
            return f(*args, **kwargs)
        return wrapper
    return decorate


class InputPath(ParsedType):
    """A path that exists, or a brace pattern (``train-{000..146}.tar``) whose every path exists;
    URLs (``s3://...``) are taken as they are, and checked when listed."""

    name = "PATH"

    def parse(self, text):
        paths = []
        for path in expand_braces(text):  # an InputError is a ValueError: one line, as any other
            if not is_url(path) and not os.path.lexists(path):  # URLs: checked when listed
                where = f" (from {text!r})" if path != text else ""
                raise ValueError(f"{path!r} does not exist{where}")  # at once: not after a million more
            paths.append(path)
        return tuple(paths)


class TextType(ParsedType):
    """A value parsed from its text by a function of the inputs layer (ValueError: one line), shown as ``name``."""

    def __init__(self, name: str, parse):
        self.name, self.parse = name, parse


@dataclass(frozen=True)
class Inputs:
    """What the user named: ``paths`` (braces expanded), ``files_from`` (a list file or ``-``),
    ``shard`` ``(K, N)`` or None, and ``options``: how inputs are read (an :class:`InputOptions`)."""

    paths: tuple[tuple[str, ...], ...] = ()
    shard: tuple[int, int] | None = None
    files_from: str | None = None
    options: InputOptions = InputOptions()

    @classmethod
    def from_options(cls, paths=(), shard=None, files_from=None, **given) -> "Inputs":
        """The inputs from the click options: ``given`` holds the :class:`InputOptions` fields' values."""
        values = {}
        for name, value in given.items():
            metadata = _INPUT_FIELDS[name].metadata
            if metadata.get("joined"):
                value = tuple(item for part in value for item in part)
            elif metadata.get("multiple"):
                value = tuple(value)
            values[name] = value
        return cls(paths, shard, files_from, InputOptions(**values))

    def listing(self) -> ListingInProgress | None:
        """The items listed in the background, to be counted while a folder is walked, when that is possible
        (one folder named, no shard: :meth:`ListingInProgress.possible`); else None (use :meth:`select`)."""
        paths = [p for group in self.paths for p in group]
        if self.files_from is not None or self.shard is not None or not ListingInProgress.possible(paths,
                                                                                                   self.options):
            return None
        return ListingInProgress(paths, self.options)

    def select(self) -> Selection:
        """The items of the run: paths named and listed, sorted, one shard of them if asked."""
        paths = [p for group in self.paths for p in group]
        listed_errors = []
        if self.files_from is not None:
            listed, listed_errors = read_file_list(self.files_from)
            paths = KeyChain([paths, listed]) if paths else listed  # the list stays packed
        if not paths and listed_errors:
            first = listed_errors[0]
            raise InputError(f"no usable path in {self.files_from} ({first['path']}: {first['error']})")
        if not paths:
            raise click.UsageError("give PATHS, or a list of them with --files-from")
        try:
            return select(paths, self.shard, self.options, listed_errors)
        except OptionNotRead as exc:  # a usage error, as --group-by class for inputs without classes
            raise click.UsageError(str(exc)) from None


_INPUT_FIELDS = {f.name: f for f in fields(InputOptions) if "flag" in f.metadata}


def input_kind_option(name: str):
    """The click option of the :class:`InputOptions` field ``name``, made from what the field declares
    (:func:`~bnstats.inputs.base.input_option`): each input option is written once, with its field."""
    metadata = _INPUT_FIELDS[name].metadata
    kwargs = {"help": metadata["help"], "multiple": bool(metadata.get("multiple"))}
    if "metavar" in metadata:
        kwargs["metavar"] = metadata["metavar"]
    if "parse" in metadata:
        kwargs["type"] = TextType(metadata["typename"], metadata["parse"])
    elif "min" in metadata:
        kwargs["type"] = click.IntRange(min=metadata["min"])
    return option(metadata["flag"], name, group="Inputs", **kwargs)


paths_arg = click.argument("paths", nargs=-1, type=InputPath())
shard_opt = option("--shard", group="Inputs", type=ShardType(), help="Take only shard K of N of the sorted file list.")

#: the options :func:`input_options` collects into ``inputs``, and :func:`pixel_options` into ``options``
#: (``bnstats.compute`` takes them as keyword arguments and builds the same objects from them)
INPUT_NAMES = ("paths", "files_from", "shard", *_INPUT_FIELDS)
PIXEL_NAMES = ("mode", "resize", "center_crop", "interpolation", "exif_transpose", "ignore_value")

input_options = _stack(
    paths_arg,
    option("--files-from", group="Inputs", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True),
           help="Also take the paths listed in FILE, one a line ('-': standard input; # comments)."),
    input_kind_option("ext"),
    shard_opt,
    *(input_kind_option(name) for name in _INPUT_FIELDS if name != "ext"),
    _collect("inputs", Inputs.from_options, INPUT_NAMES),
)

pixel_options = _stack(
    option("--mode", group="Preprocessing", type=click.Choice(MODES), default="rgb", show_default=True,
                 help="rgb: convert('RGB') as torchvision's loader; gray: one band (L); "
                      "native: stored bands and bit depth (16-bit stays 16-bit)."),
    option("--resize", group="Preprocessing", type=SizeType(), help="torchvision Resize: N (shorter side) or WxH."),
    option("--center-crop", group="Preprocessing", type=SizeType(), help="torchvision CenterCrop: N or WxH."),
    option("--interpolation", group="Preprocessing", type=click.Choice(list(INTERPOLATIONS)), default="bilinear",
                 show_default=True, help="Resampling filter for --resize."),
    option("--exif-transpose", group="Preprocessing", is_flag=True,
           help="Apply EXIF orientation (torchvision does not)."),
    option("--ignore-value", group="Preprocessing", type=NumbersType(),
                 help="Do not count pixels equal to this value in every band (padding, nodata), or to these "
                      "values band by band (0,0,0,65535). Overrides a TIFF's own GDAL_NODATA."),
    _collect("options", DecodeOptions, PIXEL_NAMES),
)

workers_opt = option("-j", "--workers", group="Running", type=click.IntRange(min=1),
                     help="Worker processes [default: all cores].")
strict_opt = option("--strict", group="Running", is_flag=True, help="Stop at the first unreadable image (exit 1).")
quiet_opt = option("-q", "--quiet", group="Running", is_flag=True, help="No progress bar, no warnings.")
output_opt = option("-o", "--output", group="Output", type=click.Path(dir_okay=False),
                    help="Write the JSON to this file (atomically) instead of stdout.")
