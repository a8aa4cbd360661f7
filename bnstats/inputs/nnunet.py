"""nnU-Net raw datasets (``--layout nnunet``): a case is one item, its channel files its bands.

A raw dataset folder holds ``dataset.json`` (``channel_names``,
``file_ending``, ``labels``), ``imagesTr/CASE_XXXX{file_ending}`` (one
file per channel ``XXXX``) and ``labelsTr/CASE{file_ending}``. Each case of
``imagesTr`` is one item keyed ``DATASET/imagesTr/CASE``; its channel files
are read by the kind that reads their ending (NIfTI volumes, or 2-D images
such as PNG) and stacked as bands named by ``channel_names``. With the
layout, ``compute`` pairs each case with ``labelsTr/CASE{file_ending}`` as
its mask (``bnstats.inputs.masks``): the report's ``foreground`` is what
nnU-Net's fingerprint samples, counted whole.

A case missing a channel, or whose channels differ in shape, is a skipped
entry; a ``dataset.json`` that cannot be read stops the run in one line.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from ..decoding.decode import load_image
from ..decoding.image import ArrayImage, float_values
from ..decoding.options import DecodeOptions
from .base import ItemError, Source, SourceError
from .keys import PackedKeys
from .masks import read_any, same_grid

LAYOUT = "nnunet"
_CASE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class NnunetSource(Source):
    """One nnU-Net raw dataset folder (module docstring); chosen by ``--layout nnunet``, never by a path's name."""

    options_read = frozenset({"layout", "mask"})
    volumes = True

    def __init__(self, paths, options=None):
        super().__init__(paths, options)
        if len(self.paths) != 1:
            raise SourceError(f"--layout nnunet reads one dataset folder, not {len(self.paths)} paths")
        self.base = os.getcwd()
        self.dataset = self.paths[0].rstrip(os.sep) or os.sep
        self.channels, self.ending = read_dataset_json(os.path.join(self.base, self.dataset))

    def list_items(self):
        folder = os.path.join(self.base, self.dataset, "imagesTr")
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            raise SourceError(f"{self.dataset}: cannot list imagesTr ({type(exc).__name__}: {exc.strerror})") from None
        cases: dict[str, set[int]] = {}
        passed_over = []
        for name in names:
            if name.startswith(".") or not name.endswith(self.ending):
                continue
            match = _CASE.match(name[: -len(self.ending)])
            if match and int(match["channel"]) < len(self.channels):
                cases.setdefault(match["case"], set()).add(int(match["channel"]))
            else:
                passed_over.append(name)
        if passed_over and not cases:  # an MSD task (4-D files, no channel suffixes) or another layout
            raise SourceError(f"{self.dataset}/imagesTr holds no channel files such as CASE_0000{self.ending} "
                              f"({len(passed_over)} other files, first: {passed_over[0]}): convert an MSD task to "
                              "nnU-Net's layout first (nnUNetv2_convert_MSD_dataset), or count it without --layout")
        self.listing_notes = [f"{self.dataset}/imagesTr: {len(passed_over)} files are no channel dataset.json names "
                              f"(first: {passed_over[0]}): not counted"] if passed_over else []
        self.listing_errors = []
        keys = []
        # nnU-Net's natural images: one _0000 file of a case holds every channel (RGB), no case has a _0001
        natural = all(channels == {0} for channels in cases.values())
        for case in sorted(cases):
            missing = [] if natural else [c for c in range(len(self.channels)) if c not in cases[case]]
            key = self._key(case)
            if missing:
                self.listing_errors.append({"path": key, "error": f"no channel file {self._file(case, missing[0])}"})
            else:
                keys.append(key)
        return PackedKeys.of(keys)

    def _key(self, case: str) -> str:
        return os.path.join(self.dataset, "imagesTr", case)

    def _file(self, case: str, channel: int) -> str:
        return os.path.join(self.dataset, "imagesTr", f"{case}_{channel:04d}{self.ending}")

    def read(self, keys):
        for key in keys:
            yield (key,), lambda key=key: self._stack(os.path.basename(key))

    def _stack(self, case: str) -> ArrayImage:
        """The case's channel files as the bands of one image (a volume, for volumes)."""
        planes, scales, shape, affine = [], [], None, None  # per band: its plane and its file's scaling
        for channel in range(len(self.channels)):
            if channel and len(planes) == len(self.channels):  # one file held every channel
                break
            path = os.path.join(self.base, self._file(case, channel))
            payload = read_any(path)
            if isinstance(payload, ArrayImage):
                pixels, own, scale = payload.pixels, payload.shape, payload.scale
                if channel == 0:
                    affine = payload.affine  # the case's grid: its other channels and its mask must lie on it
                elif not same_grid(affine, payload.affine):
                    raise ItemError(f"{self._file(case, channel)} lies on another grid than channel 0 (their "
                                    "affines differ): a case's channels share one grid")
            else:
                pixels, _ = load_image(payload, DecodeOptions(mode="native"))
                own, scale = pixels.shape[:-1], None
            bands = pixels.shape[-1]
            if bands != 1 and not (channel == 0 and bands == len(self.channels)):
                raise ItemError(f"{self._file(case, channel)} has {bands} bands, and dataset.json names "
                                f"{len(self.channels)} channels: a channel file has one, or one file all of them")
            if shape is not None and tuple(own) != shape:
                raise ItemError(f"{self._file(case, channel)} is {'x'.join(map(str, own))}, channel 0 "
                                f"{'x'.join(map(str, shape))}: a case's channels have one shape")
            shape = tuple(own)
            planes.extend(pixels[..., b] for b in range(bands))
            scales += [scale] * bands
        scale = scales[0]
        if len(set(scales)) > 1:  # channels scaled differently (each file its own scl_slope): their values, all
            planes, scale = [float_values(p, s) for p, s in zip(planes, scales)], None  # float64 (unscaled too)
        dtypes = {p.dtype for p in planes}
        if len(dtypes) > 1:  # 8-bit and 16-bit channels would share one unit scale: 1/65535 for the 8-bit one
            raise ItemError(f"case {case}: channels stored as {' and '.join(sorted(map(str, dtypes)))}: a case's "
                            "channels have one type (save them alike)")
        # one file that held every channel: its pixels as they are (stacking its bands again is a copy)
        values = pixels if pixels.shape[-1] == len(planes) else np.stack(planes, axis=-1)
        return ArrayImage(values, self.channels, shape, affine, scale=scale)

    def relative_path(self, key: str) -> str:
        """Channel 0's file name: ``{case}`` and ``{ext}`` of a mask pattern are the case and the file ending."""
        return f"{os.path.basename(key)}_0000{self.ending}"

    def class_of(self, key: str) -> str:
        return ""


def read_dataset_json(folder: str) -> tuple[tuple[str, ...], str]:
    """``(channel names in channel order, file ending)`` of a raw dataset's ``dataset.json``; SourceError if it
    cannot be read or lacks them."""
    path = os.path.join(folder, "dataset.json")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 20))
        names = doc.get("channel_names", doc.get("modality"))  # nnU-Net v2, and v1's "modality"
        ending = doc.get("file_ending", ".nii.gz")
        order = sorted(names, key=int)
        channels = tuple(names[k] for k in order)
        if not all(isinstance(name, str) and name.isprintable() and 0 < len(name) <= 64 for name in channels):
            raise ValueError("channel names must be short printable strings")
        if not channels or order != [str(i) for i in range(len(order))] or not isinstance(ending, str) or not ending:
            raise ValueError("channel_names must number the channels 0, 1, ... and file_ending must be given")
    except OSError as exc:
        raise SourceError(f"{path}: {type(exc).__name__}: {exc.strerror} (--layout nnunet reads a raw nnU-Net "
                          "dataset folder)") from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise SourceError(f"{path}: not an nnU-Net dataset.json ({type(exc).__name__}: {exc})") from None
    if len(set(channels)) != len(channels):
        channels = tuple(f"{name}{i}" for i, name in enumerate(channels))  # band names must differ
    return channels, ending
