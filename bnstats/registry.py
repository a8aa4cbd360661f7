"""The one registry: input kinds, statistics, observers and export formats by name.

Each group lists its built-ins below as ``name -> "module:attribute"``
strings; nothing is imported until a group is first looked up, and then
all of its built-ins are, so what a command finds never depends on what
some caller happened to import first (``merge`` imports no observer, yet
recognises every one). Third parties plug in through entry points of the
groups ``bnstats.sources``, ``bnstats.statistics`` and ``bnstats.exports``
(``importlib.metadata``, read on the first lookup of the group), e.g. in
a plugin's ``pyproject.toml``::

    [project.entry-points."bnstats.exports"]
    onnx = "my_plugin.exports:onnx"

Python callers add one with :func:`register`. What a group holds:

* ``sources``: :class:`~bnstats.inputs.base.Source` subclasses; the kind
  registered last is asked first whether it claims a path, so plugins come
  before the built-ins and loose image files (``files``) take what no other
  kind claims;
* ``statistics``: :class:`~bnstats.statistics.base.Statistic` subclasses,
  built from their settings (``cls(**settings)``);
* ``observers``: :class:`~bnstats.observers.base.Observer` subclasses;
* ``exports``: callables from the report's statistics dict (unit and raw
  mean/std/var, ``max_value``, ``channels``, ``bgr``) to text.

This module is the ground floor: it imports nothing of bnstats at import
time, so any layer may use it.
"""

from __future__ import annotations

import importlib
import threading
import warnings

__all__ = ["GROUPS", "BUILTINS", "ENTRY_POINT_GROUPS", "UnknownName", "get", "names", "load", "register",
           "unregister"]

BUILTINS: dict[str, dict[str, str]] = {
    # registration order: the last is asked first (files take what no other kind claims)
    "sources": {
        "files": "bnstats.inputs.files:FileSource",
        "nnunet": "bnstats.inputs.nnunet:NnunetSource",  # claims no path: chosen by --layout nnunet
        "remote": "bnstats.inputs.remote:RemoteSource",
        "tar": "bnstats.inputs.tar:TarSource",
        "zip": "bnstats.inputs.zip:ZipSource",
        "arrays": "bnstats.inputs.arrays:ArraySource",
        "zarr": "bnstats.inputs.zarr:ZarrSource",
        "parquet": "bnstats.inputs.parquet:ParquetSource",
        "nifti": "bnstats.inputs.nifti:NiftiSource",
        "dicom": "bnstats.inputs.dicom:DicomSource",
    },
    "statistics": {
        "stats": "bnstats.statistics.running:RunningStats",
        "covariance": "bnstats.statistics.covariance:Covariance",
        "percentiles": "bnstats.statistics.percentiles:Percentiles",
    },
    "observers": {
        "bn": "bnstats.observers.batchnorm:BatchNormTracker",
        "ci95": "bnstats.observers.sampling:Sampler",
        "trace": "bnstats.observers.trace:Trace",
    },
    "exports": {
        "torchvision": "bnstats.output.exports:torchvision",
        "hf": "bnstats.output.exports:hf",
        "timm": "bnstats.output.exports:timm",
        "mmcv": "bnstats.output.exports:mmcv",
        "mmdet": "bnstats.output.exports:mmdet",
        "keras": "bnstats.output.exports:keras",
        "keras-unit": "bnstats.output.exports:keras_unit",
        "albumentations": "bnstats.output.exports:albumentations",
        "yaml": "bnstats.output.exports:yaml",
        "json": "bnstats.output.exports:plain_json",
        "detectron2": "bnstats.output.exports:detectron2",
        "gdal": "bnstats.output.exports:gdal",
        "stac": "bnstats.output.exports:stac",
        "monai": "bnstats.output.exports:monai",
        "nnunet": "bnstats.output.exports:nnunet",
    },
}
GROUPS = tuple(BUILTINS)
ENTRY_POINT_GROUPS = {"sources": "bnstats.sources", "statistics": "bnstats.statistics",
                      "exports": "bnstats.exports"}

_loaded: dict[str, dict[str, object]] = {}  # group -> name -> object, once the group was looked up
_added: dict[str, dict[str, object]] = {group: {} for group in GROUPS}  # register()'s, kept across reloads
_lock = threading.RLock()  # Dask runs tasks in threads: one first lookup loads a group


class UnknownName(LookupError):
    """A name no built-in, plugin or :func:`register` call gave; the message lists the known ones."""


def _resolve(target: str):
    """The object ``"module:attribute"`` names."""
    module, _, attribute = target.partition(":")
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _any_plugin_declared() -> bool:
    """Whether an installed distribution may declare a bnstats entry point (else no plugin is read at all).

    ``importlib.metadata`` costs ~30 ms a run (its import and a read of every
    installed distribution, per group); this looks at each ``*.dist-info`` or
    ``*.egg-info`` folder of ``sys.path``'s folders (any case; an unzipped ``.egg``'s ``EGG-INFO``, as
    importlib.metadata does) for an ``entry_points.txt``
    naming a ``bnstats.`` group first. A path entry that is not a folder (a
    zip), or anything unexpected, answers "maybe": the full lookup decides.
    """
    global _plugins_maybe
    if _plugins_maybe is None:
        _plugins_maybe = _scan_for_plugins()
    return _plugins_maybe


def _scan_for_plugins() -> bool:
    import os
    import sys

    for entry in sys.path:
        folder = entry or "."
        if not os.path.isdir(folder):
            if os.path.exists(folder):
                return True  # a zip or egg on the path: only importlib.metadata reads those
            continue
        egg = os.path.basename(os.path.normpath(folder)).lower().endswith(".egg")
        try:
            with os.scandir(folder) as found:  # importlib.metadata's names: in any case, an egg's EGG-INFO
                names = [e.name for e in found if e.name.lower().endswith((".dist-info", ".egg-info"))
                         or (egg and e.name.lower() == "egg-info")]
        except OSError:
            return True
        for name in names:
            path = os.path.join(folder, name, "entry_points.txt")
            try:
                with open(path, "rb") as file:
                    if b"[bnstats." in file.read():
                        return True
            except FileNotFoundError:
                continue
            except OSError:
                return True
    return False


_plugins_maybe: bool | None = None


def _entry_points(group: str) -> dict[str, object]:
    """The objects third-party packages declare for ``group`` (a broken plugin is one line naming it)."""
    if group not in ENTRY_POINT_GROUPS or not _any_plugin_declared():
        return {}
    from importlib.metadata import entry_points

    found = {}
    for point in entry_points(group=ENTRY_POINT_GROUPS[group]):
        try:
            found[point.name] = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop runs that do not use it
            warnings.warn(f"plugin {point.name!r} of {ENTRY_POINT_GROUPS[group]} ({point.value}) does not load "
                          f"({type(exc).__name__}: {exc}); it is left out: fix or uninstall it", stacklevel=2)
    return found


def _check_group(group: str) -> None:
    if group not in BUILTINS:
        raise ValueError(f"unknown registry group {group!r}; groups: {', '.join(GROUPS)}")


def load(group: str) -> dict[str, object]:
    """Every object of ``group`` by name: built-ins, then plugins' entry points, then :func:`register`'s."""
    _check_group(group)
    with _lock:
        if group not in _loaded:
            table = {name: _resolve(target) for name, target in BUILTINS[group].items()}
            table.update(_entry_points(group))
            _loaded[group] = table
        return {**_loaded[group], **_added[group]}


def names(group: str) -> list[str]:
    """The names ``group`` knows, in registration order."""
    return list(load(group))


def get(group: str, name: str):
    """The object registered as ``name`` in ``group``; :class:`UnknownName` listing the known names."""
    table = load(group)
    if name not in table:
        raise UnknownName(f"unknown {group[:-1] if group.endswith('s') else group} {name!r}; "
                          f"known: {', '.join(table)}")
    return table[name]


def register(group: str, name: str, obj):
    """Make ``obj`` known as ``name`` in ``group`` (replacing one of that name); returns ``obj``."""
    _check_group(group)
    with _lock:
        _added[group].pop(name, None)  # re-registered: it moves to the end (asked first, for sources)
        _added[group][name] = obj
    return obj


def unregister(group: str, name: str) -> None:
    """Forget what :func:`register` made known as ``name`` (built-ins and plugins stay)."""
    _check_group(group)
    with _lock:
        _added[group].pop(name, None)
