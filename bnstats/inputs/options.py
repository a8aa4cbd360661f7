"""How inputs are read: :class:`InputOptions`, one field per option every kind of input may read, each
command-line option declared once with its field (:func:`input_option`), and their parsers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

IMG_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".pbm", ".pnm",
    ".jfif", ".jpe", ".jif",
)


def parse_extensions(text: str) -> tuple[str, ...]:
    """``jpg,.png`` -> ``("jpg", "png")``; ValueError when the text names no extension."""
    exts = tuple(e.strip().lstrip(".") for e in text.split(",") if e.strip().lstrip("."))
    if not exts:
        raise ValueError(f"{text!r} names no extension")
    return exts


def choice(what: str, *values: str, default: str | None = None):
    """A parser of one of ``values`` (``what``: the option's word for them, in the error); ``default`` (the
    option's value when not given) parses to None, so that an option given as its default reads as not given."""
    def parse(text: str) -> str | None:
        if text not in values:
            raise ValueError(f"unknown {what} {text!r}: choose from {', '.join(values)}")
        return None if text == default else text

    return parse


parse_stack = choice("stack", "pages", "volume", default="pages")  # --stack
parse_fourth_axis = choice("fourth axis", "channels", "items", default="channels")  # --fourth-axis
parse_layout = choice("layout", "nnunet")  # --layout


def parse_mask(text: str) -> str:
    """``--mask``'s folder or pattern, checked (see :mod:`bnstats.inputs.masks`)."""
    from .masks import check_pattern  # the module that pairs masks builds on this one

    return check_pattern(text)


def parse_storage_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(KEY, value)``, the value parsed as JSON when it parses (``anon=true``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{text!r} is not KEY=VALUE")
    try:
        parsed = json.loads(value)
    except RecursionError:  # json.loads of "[[[[..." thousands deep
        raise ValueError(f"{text[:40]!r}...: the JSON value nests too deep") from None
    except ValueError:
        parsed = value
    return key.strip(), parsed


def input_option(flag: str, help: str, applies_to: str, **click) -> dict:
    """The metadata of an :class:`InputOptions` field that is a command-line option, declared once with the
    field: its ``flag``, ``help`` text, what it ``applies_to`` (named when no input of a run reads it), and
    for ``bnstats.cli.options``: ``metavar``, ``parse`` (text -> value, ValueError for bad text) with its
    ``typename``, ``min`` (an int of at least this), ``multiple`` (the values given, as a tuple; with
    ``joined``, the tuples each value parses to, concatenated)."""
    return {"flag": flag, "help": help, "applies_to": applies_to, **click}


@dataclass(frozen=True)
class InputOptions:
    """How inputs are read, for every kind that cares: ``ext`` (extensions that count, in folders and
    archives; none: the image extensions), ``key`` (one array of an ``.npz``), ``channel_axis`` (arrays),
    ``storage_options`` (URLs), ``column`` and ``group_column`` (Parquet).

    Each field that is a command-line option declares it (:func:`input_option`): ``bnstats.cli.options``
    makes the click options from these fields, and a kind of input lists the fields it reads in
    :attr:`Source.options_read`, so that an option no input of a run reads is refused, not ignored.
    """

    ext: tuple[str, ...] = field(default=(), metadata=input_option(
        "--ext", "Count only files ending in these extensions, and archive members whose whole WebDataset "
                 "extension is one (png: not x.seg.png; seg.png takes it). Repeatable, or jpg,png.",
        "folders, archives and URL prefixes", parse=parse_extensions, typename="EXT", multiple=True, joined=True))
    key: str | None = field(default=None, metadata=input_option(
        "--key", "The array of an .npz or a Zarr store (group/array), or the dataset of an HDF5 file "
                 "(/group/data), to count [default: every one].", "arrays (.npz, .h5, .zarr)", metavar="NAME"))
    channel_axis: int | None = field(default=None, metadata=input_option(
        "--channel-axis", "Axis of the channels in arrays, e.g. 1 for NCHW [default: the last].",
        "arrays (.npy, .npz, IDX, .h5, .zarr)", min=1))
    #: the image column of Parquet files (``--column``; None: detected)
    column: str | None = field(default=None, metadata=input_option(
        "--column", "The image column of Parquet files [default: the only one holding images].", "Parquet files",
        metavar="NAME"))
    #: ``(KEY, value)`` pairs for fsspec filesystems (``--storage-option``): URLs only
    storage_options: tuple[tuple[str, object], ...] = field(default=(), metadata=input_option(
        "--storage-option", "Option for the filesystem of URLs (s3://...), e.g. endpoint_url=http://127.0.0.1:9000 "
                            "or anon=true (repeatable).",
        "URLs (s3://...)", parse=parse_storage_option, typename="KEY=VALUE", multiple=True))
    #: where each item's label map is (``--mask``): a folder, or a pattern (:mod:`bnstats.inputs.masks`)
    mask: str | None = field(default=None, metadata=input_option(
        "--mask", "Label maps, one per image: a folder holding them at the images' relative paths, or a pattern "
                  "such as 'labelsTr/{case}.nii.gz' ({path}, {name}, {case}, {ext}). Adds 'foreground' (label > 0) "
                  "and per-label 'groups' to the report.",
        "image files and volumes (NIfTI, DICOM)", parse=parse_mask, typename="DIR|PATTERN"))
    #: what a 4-D NIfTI's 4th axis is (``--fourth-axis``): its channels (None: multi-modal MRI) or ``items``
    fourth_axis: str | None = field(default=None, metadata=input_option(
        "--fourth-axis", "The 4th axis of 4-D NIfTI volumes: channels (the default: multi-modal MRI) or items "
                         "(a time series: each 3-D volume one item, FILE:T).", "4-D NIfTI volumes",
        parse=parse_fourth_axis, typename="channels|items"))
    #: what a multi-page TIFF is (``--stack``): an item per page (None) or one item, a ``volume`` of its pages
    stack: str | None = field(default=None, metadata=input_option(
        "--stack", "Multi-page TIFF files (z-stacks, time series): pages (the default: each page an item, "
                   "FILE:PAGE) or volume (the file one item, its pages of one size the planes of a volume).",
        "multi-page TIFF files", parse=parse_stack, typename="pages|volume"))
    #: how a folder is laid out (``--layout nnunet``: a raw nnU-Net dataset, :mod:`bnstats.inputs.nnunet`)
    layout: str | None = field(default=None, metadata=input_option(
        "--layout", "Read the folder named as laid out by a tool: nnunet (a raw nnU-Net dataset: a case's "
                    "_0000.. files are its channels, labelsTr its masks).", "a raw nnU-Net dataset folder",
        parse=parse_layout, typename="nnunet"))
    #: the label column of Parquet files for ``--group-by COLUMN`` (an option of its own command, not of inputs)
    group_column: str | None = None

    def extensions(self) -> tuple[str, ...]:
        """The suffixes a file's name must end with to count (lower case, with the dot); archive members
        match ``--ext`` by their whole WebDataset extension instead (:mod:`bnstats.inputs.archives`)."""
        return tuple("." + e.lower().lstrip(".") for e in self.ext) if self.ext else IMG_EXTENSIONS
