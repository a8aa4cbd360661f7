"""NIfTI volumes (``.nii``, ``.nii.gz``) as inputs: one volume is one item, read with nibabel.

A 3-D volume is one channel (``L``); a 4-D volume's last axis is its
channels (multi-modal MRI: ``C0``, ``C1``, ...); an RGB24 (RGBA32) volume's
colours are its bands ``R G B`` (``A``). The voxels are what
``numpy.asanyarray(img.dataobj)`` gives — the stored values when the header
declares no scaling, so 8- and 16-bit data (signed or not, either byte
order) are counted exactly in their own units. A header that scales
(``scl_slope``/``scl_inter``) stored 8/16-bit integers makes them whole
16-bit numbers where it can (a slope of 1, a whole intercept: CT stored
unsigned with -1024), else scaled integers: both counted exactly in the
scaled units (``bnstats.statistics.scaled``: mean, variance, median and
percentiles). Scaled 32-bit or float samples are float64 values, counted
as float data.
A report's ``pixels`` are voxels. Resize and center crop do not apply to
volumes and are refused in one line.

The declared shape is checked against ``BNSTATS_MAX_PIXELS`` and
``BNSTATS_MAX_IMAGE_BYTES`` before any voxel is read; a file nibabel cannot
read is a skip entry. Needs the ``medical`` extra (``pip install
"bnstats[medical]"``); without it a run that names a NIfTI file stops in
one line saying so.
"""

from __future__ import annotations

import functools
import os
import re
import threading

import numpy as np

from .. import limits
from ..decoding.image import ArrayImage
from .base import require
from .volumes import EXTRA, VolumeSource, scaled, whole_int16

SUFFIXES = (".nii", ".nii.gz")


def read_volume(path: str, index: int | None = None, image=None) -> ArrayImage:
    """The voxels of a NIfTI file as a one-row image: ``(1, voxels, channels)``, with its band names; with
    ``index``, the 3-D volume at that place of its 4th axis alone (one channel); ``image``: the file's nibabel
    image, already loaded."""
    image = image if image is not None else require("nibabel", "NIfTI volumes", EXTRA).load(path)
    shape = tuple(int(n) for n in image.shape)
    if len(shape) not in (2, 3, 4):
        raise ValueError(f"a NIfTI volume of {len(shape)} dimensions {shape}: bnstats reads 2-D, 3-D and 4-D ones")
    if index is not None and (len(shape) != 4 or not 0 <= index < shape[3]):
        raise ValueError(f"holds no volume {index} (its shape is {shape}): changed since it was listed?")
    if index is not None:
        shape = shape[:3]
    colours = _colour_fields(image)
    if colours and len(shape) == 4:
        raise ValueError(f"an RGB volume of 4 dimensions {shape}: bnstats reads 2-D and 3-D colour volumes")
    channels = len(colours) if colours else shape[3] if len(shape) == 4 else 1
    voxels = int(np.prod(shape[:3], dtype=np.int64))
    itemsize = np.dtype(image.get_data_dtype()).itemsize // max(1, len(colours))
    # float64 values where the header scales samples that are not 8/16-bit integers; those are kept as stored
    floats = _scaled(image) and not _exactly_scaled(image)
    limits.current().check_image(voxels, channels, max(itemsize, 8 if floats else 1), "NIfTI volume")
    scale = None
    if _exactly_scaled(image):  # stored integers and the header's scaling: counted exactly in its units
        data = image.dataobj._get_unscaled((..., index) if index is not None else ())
        data, scale = scaled(np.asanyarray(data), image.dataobj.slope, image.dataobj.inter)
    elif index is not None:  # that volume alone is read (nibabel slices the file)
        data = np.asanyarray(image.dataobj[..., index])
    else:
        data = np.asanyarray(image.dataobj)
    if colours:  # RGB24/RGBA32 voxels: their colours are the bands
        data = np.stack([data[name] for name in colours], axis=-1)
    elif scale is None and (whole := whole_int16(data)) is not None:  # float32 HU: exact, as int16 would be
        data = whole
    # voxels in Fortran order, as nibabel reads most files (then with no copy, the channel axis last): always
    # that order, so that a label map (--mask) pairs voxel for voxel whatever order its own file gave
    pixels = data.reshape((1, voxels, channels), order="F")
    bands = colours or (("L",) if channels == 1 else tuple(f"C{i}" for i in range(channels)))
    return ArrayImage(pixels, bands, shape[:3], tuple(map(tuple, np.asarray(image.affine, float).tolist())),
                      scale=scale)


def _colour_fields(image) -> tuple[str, ...]:
    """The colours of an RGB24 or RGBA32 volume (``("R", "G", "B")``: its voxels are records of bytes), else ()."""
    stored = np.dtype(image.get_data_dtype())
    names = stored.names or ()
    if names in (("R", "G", "B"), ("R", "G", "B", "A")) and all(stored[n] == np.uint8 for n in names):
        return names
    return ()


def _exactly_scaled(image) -> bool:
    """Whether the header scales stored 8/16-bit integers (their values are then counted exactly)."""
    stored = np.dtype(image.get_data_dtype())
    return _scaled(image) and stored.kind in "iu" and stored.itemsize <= 2 and hasattr(image.dataobj,
                                                                                          "_get_unscaled")


def _scaled(image) -> bool:
    """Whether the header scales the stored values (then nibabel gives float64)."""
    slope, inter = image.dataobj.slope, image.dataobj.inter
    return not (slope in (1, None) and inter in (0, None))


_VOLUME_KEY = re.compile(r"^(.*\.nii(?:\.gz)?):(\d+)$", re.IGNORECASE | re.DOTALL)


class NiftiSource(VolumeSource):
    """``.nii``/``.nii.gz`` files named directly or found in folders: one volume per item (module docstring);
    with ``--fourth-axis items``, each 3-D volume of a 4-D file one item ``FILE:T``."""

    suffixes, library, what = SUFFIXES, "nibabel", "NIfTI volumes"
    reader = staticmethod(read_volume)
    options_read = VolumeSource.options_read | {"fourth_axis"}

    @staticmethod
    def split_key(key: str) -> tuple[str, int | None]:
        match = _VOLUME_KEY.match(key)
        return (match.group(1), int(match.group(2))) if match else (key, None)

    def _items_of(self, key: str) -> list[str]:
        if self.options.fourth_axis != "items":
            return [key]
        try:  # the header alone: how many volumes the 4th axis holds
            shape = require("nibabel", "NIfTI volumes", EXTRA).load(os.path.join(self.base, key)).shape
        except Exception:  # noqa: BLE001 - a file nibabel cannot read: one item, whose read says why
            return [key]
        if len(shape) != 4:
            return [key]
        width = len(str(shape[3] - 1))
        return [f"{key}:{t:0{width}d}" for t in range(shape[3])]

    def read(self, keys):
        for key in keys:
            file, index = self.split_key(key)
            path = os.path.join(self.base, file)
            yield (key,), functools.partial(read_volume if index is None else _read_held, path, index)


_held = threading.local()  # .file: ((pid, path, size, mtime), the nibabel image kept open): the last 4-D file read


def _read_held(path: str, index: int) -> ArrayImage:
    """Volume ``index`` of a 4-D file, through a nibabel image kept open in this thread for the volumes that
    follow (each is a task of its own): a ``.nii.gz`` opened anew for each volume was inflated from its start
    each time (1,000 volumes of a 1 MB file: 82 s, growing with their square); kept open, the volumes read in
    order inflate it once. A file changed since (size, modification time) is opened anew, and so is one a
    forked worker inherited from its parent: the two would share one file offset, each moving the other's
    reads (a -j 2 run after an in-process one read wrong voxels, exit 0)."""
    stat = os.stat(path)
    version = (os.getpid(), path, stat.st_size, stat.st_mtime_ns)
    held = getattr(_held, "file", None)
    if held is None or held[0] != version:
        _held.file = None  # the file before is closed (its image dropped) before the next is opened
        held = _held.file = (version, require("nibabel", "NIfTI volumes", EXTRA).load(path, keep_file_open=True))
    return read_volume(path, index, held[1])
