"""``dataset_stats``: the exact statistics of whatever a PyTorch Dataset (or a Hugging Face one) yields.

The user's Dataset does its own loading and transforms; bnstats counts the
images it returns. DataLoader workers do the counting: the ``collate_fn``
bnstats gives the loader turns each batch of items into a small
:class:`~bnstats.statistics.tally.Tally` (per-channel histograms of 8/16-bit
pixels, float64 moments of float ones) in the worker, and only that state
crosses to the parent — a few kilobytes a batch, never pixels. The parent
merges the batches' states in batch order (a DataLoader hands batches back
in sampler order whatever its worker count), so the result does not depend
on ``num_workers``; for integer pixels it is the exact histogram, the same
bits for any ``num_workers`` and ``batch_size``.

The result is the ``bnstats compute`` JSON as a dict (statistics, ``raw``
units, median and percentiles, ``state``, per-label ``groups``):
``json.dump`` it and ``bnstats export``, ``merge`` and ``plot`` read it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..decoding.decode import DecodeOptions
from ..output.report import build_report, floats_like_8_bits
from ..running.count import CountSpec
from ..inputs.base import NoImagesError
from ..statistics.formulas import LayoutError
from ..statistics.tally import Tally
from .items import ARRAY_LAYOUTS, ItemError, countable, label_name, split_item

__all__ = ["dataset_stats"]

# collate functions that only stack or convert: counting the items before them counts the same pixels
_PASSIVE_COLLATES = ("default_collate", "default_convert")


def dataset_stats(dataset, *, batch_size: int = 64, num_workers: int | None = None, layout: str | None = None,
                  column: str | None = None, label_column: str = "label", by_label: bool = False,
                  percentiles=(), **loader_options) -> dict:
    """The exact per-channel statistics of the images ``dataset`` yields, as the ``bnstats compute`` JSON.

    ``dataset`` is a ``torch.utils.data.Dataset`` (map-style or iterable), a
    ``DataLoader`` (its dataset, sampler, batch size and worker settings are
    used; see below), anything with ``__len__`` and ``__getitem__`` (a list,
    a Hugging Face ``datasets.Dataset``), or any iterable (counted in this
    process). An item is an image, a tuple or list whose first element is
    the image (the second its label), or a dict whose ``column`` (default
    ``"image"``) is the image and ``label_column`` its label. An image is a
    PIL image (its stored bands and depth, palettes as colours), a torch
    tensor ``(C, H, W)`` or ``(H, W)``, a numpy array ``(H, W, C)`` or
    ``(H, W)``; a 4-dimensional one is a batch (``NCHW`` tensors, ``NHWC``
    arrays), as torch and numpy lay them out (and a Hugging Face dataset
    formatted as torch or numpy gives them); ``layout="HWC"`` or ``"CHW"``
    overrides how both are read. 8- and 16-bit integers are counted exactly
    as histograms, other numbers in float64 as they are (NaN and infinite
    pixels left out, with a warning; floats in 0..255 are not unit scale,
    and a warning says so). A dataset that yields no pixel raises
    :class:`~bnstats.inputs.base.NoImagesError`.

    ``num_workers`` (default: every core) DataLoader workers count the
    batches and send back their states; 0 counts in this process.
    ``by_label`` adds per-label ``groups`` (class names from the dataset's
    ``classes``, as torchvision's ImageFolder has, or the label column's
    ``names``, as a Hugging Face ``ClassLabel`` has). ``percentiles``
    (``["1", "99"]``, ``[1, 99]`` or ``"1,99"``, as ``bnstats compute`` takes them) adds exact percentiles
    of integer data. Other
    keyword arguments go to the DataLoader (``worker_init_fn``,
    ``multiprocessing_context``, ``prefetch_factor``, ...).

    A DataLoader whose ``collate_fn`` is not torch's default is refused: the
    items are counted in the workers before collation, so a collate that
    changes pixels (MixUp, CutMix) would not be counted; pass
    ``(batch for batch in loader)`` to count its batches (in this process).
    An item that is none of the above raises :class:`TypeError` naming its
    index and type; images of other channels or kinds than the first one
    raise :class:`ValueError`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
    if layout is not None and layout not in ARRAY_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(ARRAY_LAYOUTS)} or None, not {layout!r}")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 0):
        raise ValueError(f"num_workers must be 0 or more (None: every core), not {num_workers!r}")
    spec = CountSpec(percentiles=_percentiles(percentiles))
    reader = ItemReader(spec, layout, column, label_column, by_label,
                        _classes(dataset, label_column) if by_label else None)
    if isinstance(dataset, DataLoader):
        parts = _loader_parts(dataset, reader, num_workers, loader_options)
    elif isinstance(dataset, Dataset) or _map_style(dataset):
        parts = _dataset_parts(dataset, reader, batch_size, num_workers, loader_options)
    else:
        parts = _iterable_parts(iter(dataset), reader, batch_size)
    tally = _merged(parts, spec)
    for note in sorted(tally.notes):
        warnings.warn(note, stacklevel=2)
    _check_counted(tally)
    report = build_report(tally, DecodeOptions(mode="native"))
    note = floats_like_8_bits(report)
    if note is not None:
        warnings.warn(note, stacklevel=2)
    return report


def _percentiles(given) -> tuple[str, ...]:
    """Percentiles as text, read as ``bnstats compute`` reads them: a list, one number, or ``"1,99"`` (a string
    is not iterated: ``"50"`` would be the 5th and the 0th)."""
    if isinstance(given, str):
        given = given.split(",")
    elif isinstance(given, (int, float)) and not isinstance(given, bool):
        given = [given]
    return tuple(str(p).strip() for p in given)


def _check_counted(tally: Tally) -> None:
    """Refuse a result that counted no pixel (as ``bnstats compute`` does): its mean would be ``[]`` or ``None``."""
    if tally.stats.kind is None:
        raise NoImagesError("the dataset yielded no images")
    if tally.stats.pixels == 0:
        raise NoImagesError(f"no pixel was counted: the {tally.stats.images} images were empty, or every pixel "
                            "NaN or infinite")


# -- counting items (in a worker, or here) ---------------------------------------------------------


@dataclass
class Part:
    """What a worker sends back for one batch: its state, how many items it read, or why it stopped."""

    tally: Tally
    items: int
    error: str | None = None
    error_type: type = TypeError


class ItemReader:
    """Counts a batch of items into a Tally; picklable (it is the DataLoader's ``collate_fn``)."""

    def __init__(self, spec: CountSpec, layout, column, label_column, by_label, classes):
        self.spec, self.layout, self.column = spec, layout, column
        self.label_column, self.by_label, self.classes = label_column, by_label, classes
        self.indexed = False  # items come as (dataset index, item): see Indexed

    def count(self, items, start: int = 0) -> Part:
        """The Part of a batch of items; ``start`` numbers them when they carry no index."""
        tally = Tally.for_spec(self.spec)
        if self.by_label:
            tally.groups = {}
        for offset, item in enumerate(items):
            index, item = item if self.indexed else (start + offset, item)
            try:
                self._add(tally, item, index)
            except ItemError as exc:
                return Part(tally, offset, str(exc))
            except LayoutError as exc:
                return Part(tally, offset, f"item {index}: {_plain(exc)}", ValueError)
        return Part(tally, len(items))

    __call__ = count

    def _add(self, tally: Tally, item, index: int) -> None:
        image, label = split_item(item, index, self.column, self.label_column)
        group = None
        if self.by_label:
            if label is None:
                raise ItemError(f"item {index} has no label: by_label needs (image, label) items or a "
                                f"{self.label_column!r} column (label_column=)")
            group = label_name(label, index, self.classes)
        tally.add_image(countable(image, index, self.layout), group)


class Indexed(Dataset):
    """A map-style dataset whose items come with their index (for messages naming the item)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return index, self.dataset[index]


def _merged(parts, spec: CountSpec) -> Tally:
    """The batches' states merged in order; the first error a worker reported, raised here in one line."""
    tally = Tally.for_spec(spec)
    for part in parts:
        try:
            tally.merge(part.tally)
        except LayoutError as exc:
            raise ValueError(f"a batch of items cannot be counted with the earlier ones: {_plain(exc)}") from None
        if part.error is not None:
            raise part.error_type(part.error)
        _check_groups(tally)
    return tally


#: the most bytes the per-label states of ``by_label`` may hold (a 16-bit RGB label's histograms are 1.5 MiB:
#: 1365 labels; an 8-bit one's 6 KiB: 350,000): past it the labels are ids, not classes
GROUP_BYTES = 2 * 2**30
_MOMENTS_BYTES = 1024  # about what a float state of a few channels costs, its Python objects included


def _check_groups(tally: Tally) -> None:
    """Refuse per-label states past :data:`GROUP_BYTES`: a label that is an item's id or file name (a state
    per item) would take memory without bound, 1.5 MiB an item for 16-bit colour."""
    if not tally.groups:
        return
    counts = next(iter(tally.groups.values())).counts
    each = counts.nbytes if counts is not None else _MOMENTS_BYTES
    if each * len(tally.groups) > GROUP_BYTES:
        raise ValueError(f"by_label keeps one state per label, and {len(tally.groups)} labels hold "
                         f"{each * len(tally.groups) / 2**30:.1f} GiB, over {GROUP_BYTES / 2**30:g} GiB: labels "
                         "are meant to be classes (is the label an item's id or name? give label_column= the class)")


# -- where the items come from ---------------------------------------------------------------------


def _dataset_parts(dataset, reader: ItemReader, batch_size: int, num_workers, loader_options):
    if isinstance(dataset, IterableDataset):
        return _numbered(_loader(dataset, reader, batch_size, num_workers, loader_options))
    reader.indexed = True
    return _loader(Indexed(dataset), reader, batch_size, num_workers, loader_options)


def _loader_parts(loader: DataLoader, reader: ItemReader, num_workers, loader_options):
    """A user's DataLoader, rebuilt around the counting collate (its dataset, sampler and worker settings)."""
    collate = getattr(loader.collate_fn, "__name__", "")
    if collate not in _PASSIVE_COLLATES:
        raise ValueError(f"the DataLoader's collate_fn {collate or type(loader.collate_fn).__name__} may change "
                         "pixels, and bnstats counts items before collation: pass loader.dataset, or "
                         "(batch for batch in loader) to count the batches it yields")
    options = dict(worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                   multiprocessing_context=loader.multiprocessing_context, timeout=loader.timeout)
    options.update(loader_options)
    workers = loader.num_workers if num_workers is None else num_workers
    if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
        batch_size = loader.batch_size or 1
        return _dataset_parts(loader.dataset, reader, batch_size, workers, options)
    reader.indexed = True
    return _loader(Indexed(loader.dataset), reader, None, workers, {**options, "batch_sampler": loader.batch_sampler})


def _loader(dataset, reader: ItemReader, batch_size, num_workers, options):
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    options = {k: v for k, v in options.items() if v is not None}
    if not workers:  # DataLoader refuses these without worker processes
        options.pop("prefetch_factor", None)
        options.pop("multiprocessing_context", None)
    if batch_size is not None:
        options["batch_size"] = batch_size
    return DataLoader(dataset, num_workers=workers, collate_fn=reader, **options)


def _numbered(parts):
    """Parts of an iterable dataset, with an error's item numbered from the items received before it."""
    received = 0
    for part in parts:  # a worker numbered its batch's items from 0, and stopped at item part.items
        if part.error is not None and received:
            part.error = part.error.replace(f"item {part.items}", f"item {received + part.items}", 1)
        received += part.items
        yield part


def _iterable_parts(items, reader: ItemReader, batch_size: int):
    """Any iterable, counted here a batch at a time (items numbered in the order they come)."""
    start, batch = 0, []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield reader.count(batch, start)
            start, batch = start + batch_size, []
    if batch:
        yield reader.count(batch, start)


# -- what the dataset says about itself ------------------------------------------------------------


def _map_style(dataset) -> bool:
    """Anything indexable with a length (a list, a Hugging Face Dataset): read by index, in workers."""
    return hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__") and not isinstance(dataset, (str, bytes))


def _inner(dataset):
    """The dataset itself, or a DataLoader's."""
    return dataset.dataset if isinstance(dataset, DataLoader) else dataset


def _classes(dataset, label_column: str):
    """Class names by label: torchvision's ``classes``, or a Hugging Face ClassLabel's ``names``."""
    dataset = _inner(dataset)
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)):
        return list(classes)
    features = getattr(dataset, "features", None)
    names = getattr(features.get(label_column), "names", None) if isinstance(features, dict) else None
    return list(names) if isinstance(names, (list, tuple)) else None


def _plain(exc: Exception) -> str:
    """A layout message with a Dataset's remedy instead of the command line's (``--mode``)."""
    message = str(exc).split("; use --mode")[0]
    if message.startswith("bands"):  # a gray file among colour ones, as PIL opens them
        message += ": convert the images to one mode in the dataset (image.convert('RGB') or a transform)"
    return message
