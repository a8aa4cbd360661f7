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
import warnings
from xml.sax.saxutils import escape, quoteattr

from .. import registry
from ..jsonio import ReportError
from ..statistics.percentiles import order_statistics
from .reading import Report

EXACT_KINDS = ("histogram", "scaled")  # states with exact order statistics (8/16-bit integers, scaled or not)
MONAI_CLIP = ("0.5", "99.5")  # the percentiles nnU-Net and MONAI's CT recipes clip at


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
    stats.update({"raw_" + key: report.raw(key) for key in ("min", "max")})
    stats.update(max_value=report.max_value, channels=report.channels)
    if not stats["mean"] or any(v is None for v in stats["mean"]):
        raise ReportError(f"{report.source} counted no pixels (in some channel); nothing to export")
    stats["bgr"] = bgr
    stats["histograms"] = _histograms(report)
    if bgr:
        stats = {k: (v[::-1] if isinstance(v, list) else v) for k, v in stats.items()}
    stats["pixels"] = report.pixels
    stats["raw_clip"] = _exact_percentiles(report, MONAI_CLIP)
    if bgr and stats["raw_clip"] is not None:
        stats["raw_clip"] = [v[::-1] for v in stats["raw_clip"]]
    stats["ignore_value"] = report.options().ignore_value
    stats["foreground"] = _foreground(report)  # in channel order, as nnU-Net numbers its channels
    if stats["foreground"] == []:
        stats["foreground_why"] = (f"{report.source}: no pixel was labelled above 0 in any mask: no foreground to "
                                   "export" if not report.tally().foreground.pixels else
                                   f"{report.source} counted float data: the foreground's median and percentiles "
                                   "are exact for 8/16-bit data only")
    return stats


NNUNET_KEYS = ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")


def _foreground(report: Report) -> list[dict] | None:
    """Per channel the foreground's (``--mask``: label > 0) statistics in nnU-Net's names and the data's units,
    read off the exact state; None for a result without masks, [] for an empty foreground or float data (no
    exact percentiles)."""
    foreground = report.tally().foreground
    if foreground is None:
        return None
    if not foreground.pixels:
        return []  # said by the renderer that needs it
    if foreground.kind not in EXACT_KINDS:
        return []
    raw = foreground.report()["raw"]
    order = order_statistics(foreground, ("0.5", "99.5"))["raw"]
    values = {"mean": raw["mean"], "median": order["median"], "std": raw["std"], "min": raw["min"],
              "max": raw["max"], "percentile_99_5": order["percentiles"]["99.5"],
              "percentile_00_5": order["percentiles"]["0.5"]}
    return [{key: float(values[key][c]) for key in NNUNET_KEYS} for c in range(len(raw["mean"]))]


def _exact_percentiles(report: Report, ps: tuple[str, ...]) -> list[list[float]] | None:
    """Per percentile of ``ps``, each channel's exact value in the data's units, read off the exact state of
    8/16-bit data (never off the report's text); None for float data or a result without a state."""
    state = report.data.get("state") or {}
    if state.get("kind") not in EXACT_KINDS:
        return None
    table = order_statistics(report.tally().stats, ps)["raw"]["percentiles"]
    return [table[p] for p in ps]


def _histograms(report: Report) -> list[tuple[int, list[int]]] | None:
    """Per channel ``(first value, counts)`` of the exact histogram of 8/16-bit data (None for float data)."""
    state = report.data.get("state") or {}
    if state.get("kind") != "histogram":
        return None
    return [(int(h["start"]), h["counts"]) for h in state["histogram"]]  # validated by Report: read, not copied


def torchvision(s: dict) -> str:
    """``transforms.Normalize`` after ``ToTensor()`` (unit scale)."""
    return _sixteen_bit_comment(s) + f"transforms.Normalize(mean={_numbers(s['mean'])}, std={_numbers(s['std'])})\n"


def _sixteen_bit_comment(s: dict) -> str:
    """For 16-bit data, a comment line: unit scale is /65535, which ``ToTensor()`` does not do (it divides 8-bit
    images only; a 16-bit one stays int16, unscaled), else nothing."""
    if s["max_value"] != 65535:
        return ""
    return ("# 16-bit data, in unit scale (/65535): ToTensor() leaves 16-bit images unscaled; scale them first "
            "(torchvision.transforms.v2: ToImage(), then ToDtype(torch.float32, scale=True))\n")


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
    return _sixteen_bit_comment(s) + (
        f"pretrained_cfg_overlay = dict(mean={mean!r}, std={std!r})\n"
        f"# train.py flags: --mean {flags[0]} --std {flags[1]}\n"
    )


def mmcv(s: dict, flag: str = "to_rgb") -> str:
    """OpenMMLab ``data_preprocessor`` in the data's own units (0-255), as mmpretrain reads it.

    OpenMMLab loads images as BGR. ``to_rgb=True`` converts them to RGB before
    normalizing, so the values are in RGB order; with ``--bgr`` the values
    are in BGR order and the images stay BGR (``to_rgb=False``).
    """
    extra = f", {flag}={not s['bgr']}" if _colour(s) else ""  # no colours to swap in other bands
    return f"data_preprocessor = dict(mean={_numbers(s['raw_mean'])}, std={_numbers(s['raw_std'])}{extra})\n"


def mmdet(s: dict) -> str:
    """The same for mmdet, mmseg and mmpose 3.x (MMEngine's ``ImgDataPreprocessor``), which read ``bgr_to_rgb``.

    In a config that inherits a ``data_preprocessor`` with its ``type``, this
    dict is merged into it.
    """
    return mmcv(s, flag="bgr_to_rgb")


def _colour(s: dict) -> bool:
    """Whether the result's bands are R, G, B (B, G, R with ``bgr``): colours a BGR-loading framework swaps,
    unlike 3 bands of another kind (``B1 B2 B3`` of an array, ``YCbCr`` or ``LAB`` stored so)."""
    return s["channels"] == (["B", "G", "R"] if s["bgr"] else ["R", "G", "B"])


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


def detectron2(s: dict) -> str:
    """detectron2's ``cfg.MODEL.PIXEL_MEAN``/``PIXEL_STD`` in the data's own units (0-255), in the channel order of
    ``cfg.INPUT.FORMAT``: BGR for RGB results (detectron2's default), as stored otherwise."""
    mean, std, order = s["raw_mean"], s["raw_std"], "".join(s["channels"])
    if _colour(s) and not s["bgr"]:  # RGB results: detectron2 reads images as BGR
        mean, std, order = mean[::-1], std[::-1], order[::-1]
    lines = [f"cfg.MODEL.PIXEL_MEAN = {_numbers(mean)}", f"cfg.MODEL.PIXEL_STD = {_numbers(std)}"]
    if order in ("BGR", "RGB", "L"):
        lines.append(f"cfg.INPUT.FORMAT = {order!r}")
    return "\n".join(lines) + "\n"


def gdal(s: dict) -> str:
    """A GDAL PAM ``.aux.xml``: each band's exact ``STATISTICS_*`` in the data's own units (population std, as
    GDAL's own), ``STATISTICS_APPROXIMATE=NO``, after a comment saying which pixels were left out and how
    that differs from GDAL's nodata rule (:func:`_nodata_comment`)."""
    bands = []
    for i, name in enumerate(s["channels"]):
        items = {"STATISTICS_APPROXIMATE": "NO", "STATISTICS_MAXIMUM": _number(s["raw_max"][i]),
                 "STATISTICS_MEAN": _number(s["raw_mean"][i]), "STATISTICS_MINIMUM": _number(s["raw_min"][i]),
                 "STATISTICS_STDDEV": _number(s["raw_std"][i])}
        mdi = "".join(f"      <MDI key={quoteattr(k)}>{v}</MDI>\n" for k, v in items.items())
        bands.append(f"  <PAMRasterBand band=\"{i + 1}\">\n    <Description>{escape(name)}</Description>\n"
                     f"    <Metadata>\n{mdi}    </Metadata>\n  </PAMRasterBand>\n")
    return "<PAMDataset>\n" + _nodata_comment(s["ignore_value"]) + "".join(bands) + "</PAMDataset>\n"


def _nodata_comment(ignore_value) -> str:
    """Why these statistics may differ from GDAL's own where a nodata value was left out: bnstats leaves a
    pixel out when it equals the value in every band (``--ignore-value``, or a TIFF's ``GDAL_NODATA`` tag),
    GDAL a band's nodata value band by band. No ``STATISTICS_VALID_PERCENT``: a result counts the pixels
    kept, not those left out."""
    if isinstance(ignore_value, (list, tuple)):
        which = f"pixels of exactly the values {', '.join(map(_number, ignore_value))}, band by band (--ignore-value)"
    elif ignore_value is not None:
        which = f"pixels equal to {_number(ignore_value)} in every band (--ignore-value)"
    else:
        which = "pixels equal in every band to a TIFF's GDAL_NODATA value (where a file declared one)"
    return (f"  <!-- bnstats: exact statistics of the pixels counted; {which} were left out. GDAL leaves nodata "
            "out band by band: where a pixel holds the value in some bands only, GDAL's own statistics of "
            "those bands differ. No STATISTICS_VALID_PERCENT: the pixels left out are not counted. -->\n")


STAC_BUCKETS = 256  # histogram buckets at most, as GDAL's own


def stac(s: dict) -> str:
    """STAC raster extension ``raster:bands``: each band's ``statistics`` in the data's own units and, for
    8/16-bit data, its exact ``histogram`` (at most 256 equal buckets from minimum to maximum)."""
    bands = []
    for i, name in enumerate(s["channels"]):
        band = {"name": name, "statistics": {"minimum": s["raw_min"][i], "maximum": s["raw_max"][i],
                                             "mean": s["raw_mean"][i], "stddev": s["raw_std"][i]}}
        if s["histograms"] is not None:
            band["histogram"] = _buckets(*s["histograms"][i])
        bands.append(band)
    return json.dumps({"raster:bands": bands}, indent=2) + "\n"


def _buckets(start: int, counts: list[int]) -> dict:
    """An exact integer histogram as STAC's ``{count, min, max, buckets}``: values ``start..start+len-1`` in
    at most :data:`STAC_BUCKETS` buckets of equal whole widths (every count lands in one bucket)."""
    width = -(-len(counts) // STAC_BUCKETS)
    buckets = [sum(counts[i : i + width]) for i in range(0, len(counts), width)]
    # edges half a unit off the integers, as GDAL's (-0.5 .. 255.5 for bytes): each value inside one bucket
    return {"count": len(buckets), "min": start - 0.5, "max": start + width * len(buckets) - 0.5, "buckets": buckets}




def monai(s: dict) -> str:
    """MONAI dictionary transforms in the data's own units, two alternatives: ``ScaleIntensityRanged`` mapping the
    exact 0.5th-99.5th percentile range to 0-1, clipped (8/16-bit data: read off the exact state), or
    ``NormalizeIntensityd`` with each channel's exact mean and std (``nonzero=True`` when zeros were left out
    with ``--ignore-value 0``)."""
    lo, hi = s["raw_clip"] if s["raw_clip"] is not None else (None, None)
    lines = ["# either: the 0.5-99.5 percentile range to 0-1, clipped"]
    if lo is not None and hi is not None and len(s["channels"]) == 1:
        lines.append(f"ScaleIntensityRanged(keys=\"image\", a_min={_number(lo[0])}, a_max={_number(hi[0])}, "
                     "b_min=0.0, b_max=1.0, clip=True)")
    elif lo is not None and hi is not None:  # one range per channel: clip each, as ScaleIntensityRange cannot
        lines.append(f"# per channel: clip to a_min={_numbers(lo)}, a_max={_numbers(hi)} (ScaleIntensityRanged "
                     "takes one range)")
    else:
        lines.append("# (float data has no exact percentiles: choose a_min and a_max for ScaleIntensityRanged)")
    nonzero = s["ignore_value"] == 0
    lines.append("# or: zero mean and unit variance, with the exact statistics")
    lines.append(f"NormalizeIntensityd(keys=\"image\", subtrahend={_numbers(s['raw_mean'])}, "
                 f"divisor={_numbers(s['raw_std'])}, nonzero={nonzero}, channel_wise=True)")
    return "\n".join(lines) + "\n"


def nnunet(s: dict) -> str:
    """nnU-Net's ``foreground_intensity_properties_per_channel`` (its dataset fingerprint's key), exact: the
    statistics of every foreground voxel (``compute --mask``) where nnU-Net samples 10,000 per case."""
    if s["foreground"] is None:
        raise ReportError("the nnunet format needs the foreground statistics of a result of bnstats compute "
                          "--mask (e.g. --layout nnunet, or --mask 'labelsTr/{case}.nii.gz')")
    if not s["foreground"]:
        raise ReportError(s["foreground_why"])
    properties = {str(c): channel for c, channel in enumerate(s["foreground"])}
    return json.dumps({"foreground_intensity_properties_per_channel": properties}, indent=2) + "\n"


def formats() -> list[str]:
    """The names of every export format: the built-ins, then plugins' (``bnstats.registry``'s ``exports``)."""
    return registry.names("exports")


#: what each built-in format's framework divides by (its std or variance, in its units); a plugin's: unknown
DIVISORS = {"torchvision": "std", "hf": "std", "timm": "std", "albumentations": "std", "yaml": "std",
            "json": "std", "keras-unit": "var", "keras": "raw_var", "mmcv": "raw_std", "mmdet": "raw_std",
            "detectron2": "raw_std", "monai": "raw_std"}


class ConstantChannelWarning(UserWarning):
    """An exported channel has a std of 0 (constant, such as an opaque alpha band): normalizing divides by it."""


def render(report: Report | dict, fmt: str, bgr: bool = False, digits: int | None = None) -> str:
    """The report's statistics as text for ``fmt`` (one of :func:`formats`), optionally rounded.

    A divisor (the std or variance the format's framework divides by) that ``digits`` rounds to 0 is a
    :class:`ReportError`; one that is 0 (a constant channel) a :class:`ConstantChannelWarning`."""
    if digits is not None and (isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 17):
        raise ValueError(f"digits must be an integer from 0 to 17 (decimals, as --digits), not {digits!r}")
    try:
        renderer = registry.get("exports", fmt)
    except registry.UnknownName:
        raise ReportError(f"unknown format {fmt!r}; choose from {', '.join(formats())}") from None
    if not isinstance(report, Report):
        report = Report(report)
    stats = _stats(report, bgr, digits)
    if fmt in DIVISORS:
        _check_divisors(stats, DIVISORS[fmt], digits, report, bgr)
    return renderer(stats)


def _check_divisors(stats: dict, key: str, digits: int | None, report: Report, bgr: bool) -> None:
    """Refuse a divisor rounded to 0 (``digits`` too few), warn of one that is 0 (a constant channel)."""
    zero = [i for i, value in enumerate(stats[key]) if value == 0]
    if not zero:
        return
    exact = _stats(report, bgr)[key] if digits is not None else stats[key]
    what = {"std": "std", "var": "variance", "raw_std": "std", "raw_var": "variance"}[key]
    for i in zero:
        if exact[i] != 0:
            raise ReportError(f"rounding to {digits} decimals makes the {what} of channel {stats['channels'][i]} "
                              f"({exact[i]!r}) 0, which normalizing divides by: give more digits")
    names = ", ".join(stats["channels"][i] for i in zero)
    warnings.warn(f"channel {names} is constant (std 0): normalizing divides by its std (NaN or inf, or an error "
                  "where the framework checks); leave the channel out, or give it a std of 1",
                  ConstantChannelWarning, stacklevel=3)
