"""HDF5 files (``.h5``, ``.hdf5``) as array inputs: each dataset is an array whose rows are images.

The ``.npy`` row rules apply (``bnstats.inputs.arrays``): ``(N, H, W, C)``,
``(N, H, W)``, ``(N, C)`` or ``(N,)`` along the first axis, ``--channel-axis``
for ``(N, C, H, W)``, 8/16-bit data exact. Every numeric dataset of a file is
counted, or only ``--key /group/dataset``. Rows are read through h5py in
slices (chunked and compressed datasets decompress only the chunks a slice
touches), in partitions aligned to the dataset's chunks so that no chunk is
read by two tasks, and a chunk of many rows is read whole, once (not once per
batch of its rows). A dataset whose declared sizes are past the bounds (a row
over the image bounds, a chunk over the bytes-per-file bound, more data than
the inflation ratio allows of the file's size: unwritten chunks read as the
fill value) is refused as a Zarr array is. Needs the ``hdf5`` extra
(``pip install "bnstats[hdf5]"``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ..decoding.nodata import attribute_nodata
from .arrayfiles import ArrayInfo, is_pixel_dtype
from .base import InputOptions, SourceError, require


def load_h5py():
    """h5py, or a one-line SourceError naming the ``hdf5`` extra."""
    return require("h5py", "HDF5 files", "hdf5")


def hdf5_arrays(path: str, key: str | None, options: InputOptions | None = None) -> list[ArrayInfo]:
    """The numeric datasets of an HDF5 file (or only ``key``) as arrays, by their full names (``/group/data``);
    one whose declared sizes are past the bounds carries why it is refused (:attr:`ArrayInfo.refused`)."""
    # the bounds of a chunked array's declared sizes: the same as a Zarr array's
    from .zarr import refusal

    h5py = load_h5py()
    options = options or InputOptions()
    stored = os.path.getsize(path)
    with h5py.File(path, "r") as f:
        # name -> whether it holds pixel data: no dataset object is kept (20,000 of them held 400 MB of HDF5's)
        datasets: dict[str, bool] = {}

        def found(name, obj):  # returns None: visititems stops at the first callback that returns a value
            if isinstance(obj, h5py.Dataset):
                datasets["/" + name] = obj.ndim >= 1 and is_pixel_dtype(obj.dtype)

        f.visititems(found)
        if key is not None:
            wanted = key if key.startswith("/") else "/" + key
            if wanted not in datasets:
                raise SourceError(f"{path} has no dataset {key!r} (it has {', '.join(sorted(datasets)) or 'none'})")
            names = [wanted]
        else:  # every dataset of images; names, labels and scalars beside them are not pixel data
            names = [name for name, pixels in sorted(datasets.items()) if pixels]
        infos = []
        for name in names:
            ds = f[name]
            shape = tuple(int(n) for n in ds.shape)
            chunks = tuple(int(n) for n in ds.chunks) if ds.chunks else (1, *shape[1:])  # contiguous: a row
            info = ArrayInfo(path, name, np.dtype(ds.dtype), shape, 0, chunk_rows=chunks[0] if chunks else 1,
                             library="hdf5", nodata=attribute_nodata(ds.attrs, ds.dtype, f"{path}:{name}"))
            held = stored + _elsewhere(path, ds)
            refused = refusal(info, chunks, held, options, "file") if is_pixel_dtype(ds.dtype) else None
            infos.append(info if refused is None else dataclasses.replace(info, refused=refused))
    return infos


def _elsewhere(path: str, ds) -> int:
    """Bytes of the other files a dataset's data is in (a virtual dataset's sources, external raw storage):
    a master file of a few KB may hold gigabytes so, and its declared size is held against theirs too."""
    if ds.is_virtual:
        names = {source.file_name for source in ds.virtual_sources()} - {"."}
    else:
        names = {entry[0] for entry in ds.external or ()}
    folder = os.path.dirname(path)
    sizes = []
    for name in names:
        name = os.fsdecode(name)
        other = name if os.path.isabs(name) else os.path.join(folder, name)
        sizes.append(os.path.getsize(other) if os.path.isfile(other) else 0)  # a missing source reads as fill
    return sum(sizes)


def read_hdf5_rows(info: ArrayInfo, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an HDF5 dataset, as stored."""
    with load_h5py().File(info.path, "r") as f:
        return f[info.member][start:stop]
