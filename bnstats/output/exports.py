"""The statistics in each framework's own form: ``bnstats export``.

Every renderer takes a ``compute``/``merge`` report and returns text that
its framework parses or executes as is. Frameworks disagree on units: most
take unit-scale values (what ``ToTensor()`` produces), OpenMMLab takes the
data's own units (0-255), Keras takes *variance* in whatever units the
pipeline feeds it.

Each renderer is registered by name in ``bnstats.registry`` (group
``exports``); a plugin adds one through an entry point of group
``bnstats.exports``: a callable from the statistics dict of :func:`_stats`
(``mean std var`` in unit scale, ``raw_mean raw_std raw_var``,
``max_value``, ``channels``, ``bgr``) to text.
"""

from __future__ import annotations

import json

from .. import registry
from ..jsonio import ReportError
from .reading import Report


def _number(value) -> str:
    """A float literal that Python, JSON and YAML 1.1 all read as a float.

    ``repr`` gives the shortest round-tripping digits, but writes 5e-05
    without a dot, which YAML 1.1 (PyYAML) reads as a string.
    """
    text = repr(float(value))
    return text.replace("e", ".0e") if "e" in text and "." not in text else text


def _numbers(values) -> str:
    return "[" + ", ".join(map(_number, values)) + "]"


def _stats(report: Report, bgr: bool = False, digits: int | None = None) -> dict:
    """mean/std/var in unit and raw scale, channel order reversed with ``bgr``, rounded to ``digits`` decimals."""
    stats = {key: report.unit(key) for key in ("mean", "std", "var")}
    stats.update({"raw_" + key: report.raw(key) for key in ("mean", "std", "var")})
    if digits is not None and None not in stats["mean"]:
        stats = {k: [round(v, digits) for v in values] for k, values in stats.items()}
    stats.update(max_value=report.max_value, channels=report.channels)
    if not stats["mean"] or any(v is None for v in stats["mean"]):
        raise ReportError(f"{report.source} counted no pixels (in some channel); nothing to export")
    stats["bgr"] = bgr
    if bgr:
        stats = {k: (v[::-1] if isinstance(v, list) else v) for k, v in stats.items()}
    return stats


def torchvision(s: dict) -> str:
    """``transforms.Normalize`` after ``ToTensor()`` (unit scale)."""
    return f"transforms.Normalize(mean={_numbers(s['mean'])}, std={_numbers(s['std'])})\n"


def hf(s: dict) -> str:
    """A Hugging Face ``preprocessor_config.json`` fragment."""
    fragment = {
        "do_normalize": True,
        "do_rescale": True,
        "image_mean": s["mean"],
        "image_std": s["std"],
        "rescale_factor": 1 / s["max_value"],
    }
    return json.dumps(fragment, indent=2) + "\n"


def timm(s: dict) -> str:
    """timm: ``pretrained_cfg_overlay`` values and ``train.py`` flags (unit scale)."""
    mean, std = tuple(s["mean"]), tuple(s["std"])
    flags = " ".join(map(repr, mean)), " ".join(map(repr, std))
    return (
        f"pretrained_cfg_overlay = dict(mean={mean!r}, std={std!r})\n"
        f"# train.py flags: --mean {flags[0]} --std {flags[1]}\n"
    )


def mmcv(s: dict, flag: str = "to_rgb") -> str:
    """OpenMMLab ``data_preprocessor`` in the data's own units (0-255), as mmpretrain reads it.

    OpenMMLab loads images as BGR. ``to_rgb=True`` converts them to RGB before
    normalizing, so the values are in RGB order; with ``--bgr`` the values
    are in BGR order and the images stay BGR (``to_rgb=False``).
    """
    extra = f", {flag}={not s['bgr']}" if len(s["channels"]) == 3 else ""
    return f"data_preprocessor = dict(mean={_numbers(s['raw_mean'])}, std={_numbers(s['raw_std'])}{extra})\n"


def mmdet(s: dict) -> str:
    """The same for mmdet, mmseg and mmpose 3.x (MMEngine's ``ImgDataPreprocessor``), which read ``bgr_to_rgb``.

    In a config that inherits a ``data_preprocessor`` with its ``type``, this
    dict is merged into it.
    """
    return mmcv(s, flag="bgr_to_rgb")


def keras(s: dict) -> str:
    """``keras.layers.Normalization`` with mean and *variance* in raw units.

    Keras image pipelines (``image_dataset_from_directory``) feed pixels as
    floats in 0-255, so the values are in the data's own units; put a
    ``Rescaling(1/255)`` before it and use ``--format keras-unit`` instead.
    """
    return f"layers.Normalization(axis=-1, mean={_numbers(s['raw_mean'])}, variance={_numbers(s['raw_var'])})\n"


def keras_unit(s: dict) -> str:
    """``keras.layers.Normalization`` for pipelines that rescale to 0-1 first."""
    return f"layers.Normalization(axis=-1, mean={_numbers(s['mean'])}, variance={_numbers(s['var'])})\n"


def albumentations(s: dict) -> str:
    """``A.Normalize``: unit-scale mean/std times ``max_pixel_value``."""
    return (
        f"A.Normalize(mean={_numbers(s['mean'])}, std={_numbers(s['std'])}, "
        f"max_pixel_value={float(s['max_value'])!r})\n"
    )


def yaml(s: dict) -> str:
    """Plain YAML: unit-scale mean/std, the divisor, the channel names."""
    return (
        f"mean: {_numbers(s['mean'])}\n"
        f"std: {_numbers(s['std'])}\n"
        f"max_value: {s['max_value']}\n"
        f"channels: [{', '.join(json.dumps(c) for c in s['channels'])}]\n"
    )


def plain_json(s: dict) -> str:
    """Plain JSON: unit-scale mean/std, the divisor, the channel names."""
    return json.dumps({k: s[k] for k in ("mean", "std", "max_value", "channels")}) + "\n"


def formats() -> list[str]:
    """The names of every export format: the built-ins, then plugins' (``bnstats.registry``'s ``exports``)."""
    return registry.names("exports")


def render(report: Report | dict, fmt: str, bgr: bool = False, digits: int | None = None) -> str:
    """The report's statistics as text for ``fmt`` (one of :func:`formats`), optionally rounded."""
    try:
        renderer = registry.get("exports", fmt)
    except registry.UnknownName:
        raise ReportError(f"unknown format {fmt!r}; choose from {', '.join(formats())}") from None
    if not isinstance(report, Report):
        report = Report(report)
    return renderer(_stats(report, bgr, digits))
