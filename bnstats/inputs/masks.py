"""Label maps paired with images (``--mask``): which file is an item's mask, and its labels as integers.

A mask is named by a folder or a pattern. A folder holds the masks at the
images' own relative paths (``--mask masks/``: ``data/cat/1.png`` pairs
with ``masks/cat/1.png``); a pattern names them with fields of the image's
path below the folder named (``--mask 'labelsTr/{case}.nii.gz'``):

``{path}``  the image's path below the folder named, without its extension (``cat/1``)
``{name}``  its file name without the extension (``1``)
``{case}``  ``{name}`` without a channel suffix ``_0000`` (nnU-Net's ``CASE_0000`` -> ``CASE``)
``{ext}``   its extension, with the dot (``.png``, ``.nii.gz``)

A file named on its own (not under a folder named) has its file name as
``{path}``. The mask is read as the images are (a PNG, a TIFF, a NIfTI or
DICOM volume) and must hold one band of whole numbers, of the image's
shape; anything else is the item's skip entry, naming both files.
"""

from __future__ import annotations

import os
import re
import string
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import limits, registry
from ..decoding import ome, tiff
from ..decoding.decode import decode_spatial, load_image
from ..decoding.stack import StackImage, stack_pages
from ..decoding.image import ArrayImage, DecodedImage, float_values
from ..decoding.pillow import open_pillow
from ..decoding.options import DecodeError, DecodeOptions
from ..statistics.formulas import LayoutError
from .base import ItemError, SourceError
from .reads import read_file

FIELDS = ("path", "name", "case", "ext")
DOUBLE_SUFFIXES = (".nii.gz",)
_CHANNEL = re.compile(r"_\d{4}$")


class MaskError(ItemError):
    """An item's mask that cannot be used (missing, unreadable, another shape): its skip entry."""


def check_pattern(text: str) -> str:
    """``text`` as a mask pattern (a folder, or a pattern of :data:`FIELDS`); ValueError naming the problem."""
    if not text:
        raise ValueError("give a folder of masks or a pattern such as 'masks/{path}.png'")
    try:
        parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(text)
                  if name is not None]
        fields = [name for name, _, _ in parsed]
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a pattern ({exc}); write a literal brace as {{{{ or }}}}") from None
    formatted = next((f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                      for name, spec, conversion in parsed if spec or conversion), None)
    if formatted is not None:
        raise ValueError(f"{formatted} in {text!r}: a field is written as it is, e.g. {{name}}")
    unknown = [name for name in fields if name not in FIELDS]
    if unknown:
        raise ValueError(f"unknown field {{{unknown[0]}}} in {text!r}: use {', '.join('{' + f + '}' for f in FIELDS)}")
    return text


@dataclass(frozen=True)
class MaskRule:
    """How an item's mask is found: ``pattern`` (a folder, or a pattern of :data:`FIELDS`)."""

    pattern: str

    def __post_init__(self):
        check_pattern(self.pattern)

    @property
    def template(self) -> str:
        """The pattern, a folder written as the pattern it means (the images' relative paths under it)."""
        if "{" in self.pattern:
            return self.pattern
        return os.path.join(self.pattern, "{path}{ext}")

    def path_for(self, relative: str) -> str:
        """The mask's path for an image at ``relative`` (its path below the folder named)."""
        stem, ext = split_extension(relative)
        name = os.path.basename(stem)
        return self.template.format(path=stem, name=name, case=_CHANNEL.sub("", name), ext=ext)


def split_extension(path: str) -> tuple[str, str]:
    """``path`` without its extension, and the extension (``.nii.gz`` whole)."""
    lower = path.lower()
    for suffix in DOUBLE_SUFFIXES:
        if lower.endswith(suffix):
            return path[: -len(suffix)], path[-len(suffix) :]
    return os.path.splitext(path)


def read_labels(path: str, page: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, tuple[int, ...] | None, np.ndarray | None]:
    """The labels of the mask file ``path`` as int64 (flat for a volume, ``(H, W)`` for an image), the
    volume's shape and its affine (None for an image); :class:`MaskError` for a mask that cannot be used.
    ``page``: ``(position, pages)`` of the image's page in its TIFF stack, to take the mask's page there."""
    try:
        payload = read_any(path)
        if isinstance(payload, ArrayImage):
            pixels, shape, affine = payload.pixels, payload.shape, payload.affine
            if payload.scale is not None:  # a label map stored scaled (NIfTI's scl_slope): its values
                pixels = float_values(pixels, payload.scale)
        else:
            pixels, shape, affine = _stored_labels(_mask_page(payload, page, path)), None, None
    except MaskError as exc:
        raise MaskError(f"mask {exc}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # Pillow's for a damaged file
        message = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))  # Pillow names its buffer
        raise MaskError(f"mask {path}: {type(exc).__name__}: {message}") from None
    if pixels.shape[-1] != 1:
        raise MaskError(f"mask {path} has {pixels.shape[-1]} bands: a label map has one")
    return _whole_labels(pixels[..., 0], path), shape, affine


def _ome_labels(image: bytes, full_path: str, path: str):
    """The labels of an OME-TIFF image's mask, an OME-TIFF of one channel over the same planes (the same
    axes and sizes but the channels), flat in the order the image's voxels are counted: ``(labels (1,
    voxels), their shape, None)``; :class:`MaskError` for a mask that is not so."""
    data = read_any(full_path)
    if not (isinstance(data, bytes) and tiff.is_tiff(data) and ome.is_ome(tiff.tiff_directories(data))):
        raise MaskError(f"mask {path} is no OME-TIFF (or a damaged one): an OME-TIFF's mask is an OME-TIFF of one "
                        "channel over its planes")
    ours = ome.plane_layout(image)  # a ValueError here is the image's own: its skip entry says so, not the mask's
    try:
        theirs = ome.plane_layout(data)
        if ours != theirs:
            shown = ", ".join(f"{axes} {'x'.join(map(str, shape))}" for axes, shape in theirs)
            raise MaskError(f"mask {path} has planes {shown}, the image "
                            f"{', '.join(f'{a} {chr(120).join(map(str, s))}' for a, s in ours)}: a mask has its "
                            "image's planes, in the same order")
        pixels, bands = ome.read_ome(data, DecodeOptions(mode="native"))
    except ValueError as exc:
        raise MaskError(f"mask {path}: {exc}") from None
    except (MaskError, DecodeError):  # the mask's own message; no tifffile: the run stops in one line
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile's codecs' errors for damaged planes: the mask's, named
        raise MaskError(f"mask {path}: {type(exc).__name__}: {exc}") from None
    if pixels.shape[-1] != 1:
        raise MaskError(f"mask {path} has {pixels.shape[-1]} bands: a label map has one")
    return _whole_labels(pixels[..., 0], path), pixels.shape[:-1], None


def _mask_page(data: bytes, page: tuple[int, int] | None, path: str):
    """The mask's page for the image's page of a TIFF stack: its page at the same place in a stack of as many,
    or its one page for every page; its bytes as they are for an image that is no stack's page."""
    if not tiff.is_tiff(data):
        return data
    pages = tiff.main_pages(tiff.tiff_directories(data))
    if len(pages) <= 1:
        return data  # one label map for every page of the image's stack (a 2-D region of a z-stack)
    if page is None or len(pages) != page[1]:
        raise MaskError(f"{path} is a stack of {len(pages)} pages, the image "
                        f"{'one page' if page is None else f'a stack of {page[1]}'}: a mask has its image's pages")
    return tiff.TiffPage(data, pages[page[0]])


def _stored_labels(data) -> np.ndarray:
    """A 2-D mask file's labels as stored, ``(H, W, bands)``: a palette image's indices (Pascal VOC's label
    maps), a 1-bit image's 0 and 1, gray values as they are; never converted to colours. A TIFF is read
    as images are in ``--mode native`` (16-, 32- and 64-bit samples through tifffile)."""
    if data.__class__ is tiff.TiffPage or tiff.is_tiff(data):
        raw, page = (data.data, data.index) if data.__class__ is tiff.TiffPage else (data, None)
        try:
            with open_pillow(raw, page) as image:
                if image.mode in ("1", "P"):  # indices and bits as stored, as for PNG masks
                    return _pillow_labels(image)
        except (OSError, ValueError, EOFError):  # a TIFF Pillow does not read (64-bit samples): tifffile does
            pass
        return load_image(data, DecodeOptions(mode="native"))[0]  # 16/32/64-bit labels through tifffile
    with open_pillow(data) as image:
        return _pillow_labels(image)


def _pillow_labels(image) -> np.ndarray:
    """A Pillow image's stored values, ``(H, W, bands)``: palette indices, 0 and 1 for bits."""
    image.load()
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)[..., None]
    labels = np.asarray(image)
    return labels if labels.ndim == 3 else labels[..., None]


def _whole_labels(labels: np.ndarray, path: str) -> np.ndarray:
    """``labels`` as int64, refusing values that are no whole numbers or that int64 does not hold exactly."""
    if labels.dtype.kind == "f":
        finite = np.isfinite(labels).all()
        if not finite or (labels != np.round(labels)).any():
            raise MaskError(f"mask {path} holds values that are not whole numbers: a label map holds labels")
        if labels.size and np.abs(labels).max() > 2**53:
            raise MaskError(f"mask {path} holds labels beyond 2**53: a label map holds small whole numbers")
    elif labels.dtype.kind == "u" and labels.dtype.itemsize == 8 and labels.size and labels.max() >= 2**63:
        raise MaskError(f"mask {path} holds labels beyond 2**63: a label map holds small whole numbers")
    elif labels.dtype.kind not in "iub":
        raise MaskError(f"mask {path} holds {labels.dtype} values: a label map holds whole numbers")
    return labels.astype(np.int64, copy=False)


def volume_kind(path: str):
    """The kind of volume file ``path`` names (NIfTI, DICOM), or None for a 2-D image file."""
    return next((kind for kind in registry.load("sources").values()
                 if kind.volumes and getattr(kind, "reader", None) is not None and kind.claims(path)), None)


def _what(kind) -> str:
    return f"read as {kind.what}" if kind is not None else "a 2-D image file"


def read_any(path: str):
    """What the kind that reads the file ``path`` gives: an :class:`ArrayImage` (volumes) or the file's bytes;
    :class:`MaskError` (an item error) when it cannot be read."""
    kind = volume_kind(path)
    try:
        if kind is None and os.path.isdir(path):  # a DICOM series: the mask of a series is a series
            from .dicom import read_series  # the module that reads them needs pydicom

            return read_series(path)
        return _mask_file(path) if kind is None else kind.reader(path)
    except OSError as exc:
        raise MaskError(f"{path}: {type(exc).__name__}: {exc.strerror or exc}") from None
    except ItemError as exc:
        raise MaskError(f"{path}: {exc}") from None
    except SourceError:  # a missing extra: the run stops in one line
        raise
    except Exception as exc:  # noqa: BLE001 - a volume library's many errors for a damaged file
        raise MaskError(f"{path}: {type(exc).__name__}: {exc}") from None


_last_read = threading.local()  # .file: ((path, size, mtime, inode), bytes) of the last mask file read here


def _mask_file(path: str) -> bytes:
    """The bytes of a 2-D mask file, the last one read in this thread kept while it is unchanged: the pages
    of a stack pair, item after item, with the pages of one mask stack, which would otherwise be read again
    for each (and all its directories walked again: quadratic in the pages)."""
    status = os.stat(path)
    version = (path, status.st_size, status.st_mtime_ns, status.st_ino)
    last = getattr(_last_read, "file", None)
    if last is not None and last[0] == version:
        return last[1]
    data = read_file(path)
    _last_read.file = (version, data)
    return data


def masked_parts(source, key: str, payload, rule: MaskRule, options: DecodeOptions):
    """Item ``key`` of ``source`` (``payload``: what it read) and its mask: the decoded image, the images of
    its pixels by label (``{"1": image, ...}``, every label present, 0 too) and of its foreground (label > 0).

    Raises :class:`MaskError` (the item's skip entry) when the mask cannot be used.
    """
    relative = source.relative_path(key)
    path = rule.path_for(relative)
    image_kind, mask_kind = volume_kind(relative), volume_kind(path)
    if key.endswith(os.sep):  # a DICOM series folder: its mask is a series folder too (read_any reads it)
        if mask_kind is not None:  # a NIfTI, a DICOM file: voxels in another order than the series'
            raise MaskError(f"mask {path} is {_what(mask_kind)} and the image a DICOM series folder: a series' mask "
                            "is a series folder of label slices, so that voxels pair in the same order")
        image_kind = None
    if image_kind is not mask_kind:  # a NIfTI's voxels and a DICOM's are in different orders: never paired
        raise MaskError(f"mask {path} is {_what(mask_kind)} and the image {_what(image_kind)}: a mask must be "
                        "stored as its image is, so that voxels pair in the same order")
    if payload.__class__ is tiff.TiffStack:
        return _stack_parts(source, key, payload, rule, options)
    if isinstance(payload, bytes) and tiff.is_tiff(payload) and ome.is_ome(tiff.tiff_directories(payload)):
        labels, mask_shape, mask_affine = _ome_labels(payload, os.path.join(source.base, path), path)
    else:
        labels, mask_shape, mask_affine = read_labels(os.path.join(source.base, path), _page_of(payload))
    # the image by the rules it is counted by alone: its file's nodata, its internal mask, --ignore-value
    pixels, bands, options, keep, notes = decode_spatial(payload, options)
    volume = isinstance(payload, ArrayImage) and payload.shape is not None
    shape = payload.shape if volume else pixels.shape[:-1]
    mask_shape = mask_shape if mask_shape is not None else labels.shape
    if tuple(shape) != tuple(mask_shape):
        raise MaskError(f"mask {path} is {_size(mask_shape)}, the image {_size(shape)}: a mask has its image's shape")
    if volume and not same_grid(payload.affine, mask_affine):
        raise MaskError(f"mask {path} lies on another grid than its image (their affines differ: another "
                        "orientation, spacing or origin): resample it onto the image's grid")
    dicom = key.endswith(os.sep) or getattr(image_kind, "library", "") == "pydicom"
    if volume and payload.affine is None and dicom and os.path.exists(os.path.join(source.base, key)):
        # DICOM without one grid (a series without even positions, a multi-frame file): the slices' places pair
        # them (an nnU-Net case of DICOM channel files is no one file: paired by shape, as its channels are)
        _check_placement(os.path.join(source.base, key), os.path.join(source.base, path), path)
    flat, labels = pixels.reshape(-1, pixels.shape[-1]), labels.reshape(-1)
    present = _labels_present(labels)
    limit = limits.current().labels
    if len(present) > limit:
        raise LayoutError(f"mask {path} holds {len(present)} distinct labels, over {limit} (a state each): label "
                          f"maps, not instance ids, are meant; raise {limits.current().variable('labels')}")
    scale = payload.scale if isinstance(payload, ArrayImage) else None  # a volume's scaled integers
    image = DecodedImage.of_array(pixels, bands, options, notes, keep=keep, scale=scale)
    kept = None if keep is None else keep.reshape(-1)

    def part(chosen: np.ndarray) -> DecodedImage:  # the chosen pixels the image counts, by the same rules
        chosen = chosen if kept is None else chosen & kept
        return DecodedImage.of_array(flat[chosen][:, None], bands, options, scale=scale)

    parts = {str(label): part(labels == label) for label in present}
    return image, parts, part(labels > 0)


def _stack_parts(source, key: str, stack, rule: MaskRule, options: DecodeOptions):
    """:func:`masked_parts` of a TIFF stack counted as one volume (``--stack volume``): each page paired with its
    mask's page (or the mask's one page) as ``--stack pages`` pairs them, then the pages' images, each label's
    parts and the foregrounds counted as one image each."""
    data = stack.data
    pages = stack_pages(data, options.mode) if tiff.is_tiff(data) and not ome.is_ome(tiff.tiff_directories(data)) else []
    if len(pages) <= 1:
        return masked_parts(source, key, data, rule, options)
    per_page = [masked_parts(source, key, tiff.TiffPage(data, page), rule, options) for page in pages]
    labels = sorted({label for _, parts, _ in per_page for label in parts}, key=int)
    parts = {label: StackImage([p[label] for _, p, _ in per_page if label in p]) for label in labels}
    return StackImage([image for image, _, _ in per_page]), parts, StackImage([fg for _, _, fg in per_page])


def _check_placement(image: str, mask: str, path: str) -> None:
    """Refuse a DICOM mask whose slices (a series folder's) or frames (a file's) do not lie where the image's
    do, one for one, where neither has one affine (no positions, uneven ones, multi-frame files): slices are
    stacked by position, else instance number, else file name, frames as stored, and only the same places in
    both make the same order."""
    from .dicom import placement  # the module that reads them needs pydicom

    try:
        same = placement(image) == placement(mask)
    except Exception as exc:  # noqa: BLE001 - pydicom's many errors for a damaged file (both were read once)
        raise MaskError(f"mask {path}: {type(exc).__name__}: {exc}") from None
    if not same:
        raise MaskError(f"mask {path} has slices or frames at other places than its image's (other positions, "
                        "instance numbers or frames; neither has one evenly spaced grid): a DICOM mask has its "
                        "image's slices and frames, at the same places")


def _page_of(payload) -> tuple[int, int] | None:
    """``(position, pages)`` of an image that is a page of a TIFF stack, among the stack's images; else None."""
    if payload.__class__ is not tiff.TiffPage:
        return None
    pages = tiff.main_pages(tiff.tiff_directories(payload.data))
    return (pages.index(payload.index), len(pages)) if payload.index in pages else None


def same_grid(affine, other) -> bool:
    """Whether two volumes' voxel-to-world affines agree to a thousandth of a voxel (compared in the first's
    voxels, so that 0.5 µm voxels are held to 0.5 nm): the same voxels are the same places. Volumes without one
    (DICOM, arrays) pair by shape alone."""
    if affine is None or other is None:
        return affine is None and other is None
    first, second = np.asarray(affine, float), np.asarray(other, float)
    try:
        relative = np.linalg.solve(first, second)  # the second's voxels in the first's: the identity if one grid
    except np.linalg.LinAlgError:
        return bool(np.array_equal(first, second))
    return bool(np.all(np.isfinite(relative)) and np.allclose(relative, np.eye(4), rtol=0, atol=1e-3))


def _labels_present(labels: np.ndarray) -> list[int]:
    """The distinct labels, in order (a count per value when they span a small range: no sort of the voxels)."""
    if not labels.size:
        return []
    low, high = int(labels.min()), int(labels.max())
    if high - low < 1 << 20:
        return (np.flatnonzero(np.bincount(labels - low)) + low).tolist()
    return np.unique(labels).tolist()


def _size(shape) -> str:
    return "x".join(str(n) for n in shape)
