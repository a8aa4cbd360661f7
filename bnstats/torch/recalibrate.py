"""Recalibration: exact statistics written into a model's BatchNorm buffers, and its audit report.

:func:`recalibrate_bn` counts every layer (:mod:`bnstats.torch.layers`),
writes the statistics and reports how far the old buffers, precise BN's
batch-average estimate and fvcore's are from exact; :func:`report_json` and
:func:`audit_table` write that report.
"""

from __future__ import annotations

import json
import math

from torch import nn

from .layers import Resume, bn_layers, check_finite, check_model, count_layers, kept, write_buffers


def distance(estimate: list[float], exact: list[float]) -> dict:
    """The largest absolute and relative distance over channels; NaN when an estimate is NaN (no channel's
    distance may hide it), and relative distances to an exact 0 left out."""
    abs_ = [abs(a - b) for a, b in zip(estimate, exact, strict=True)]
    if any(math.isnan(d) for d in abs_):
        return {"max_abs": math.nan, "max_rel": math.nan}
    rel = [d / abs(b) if b else (0.0 if d == 0 else math.inf) for d, b in zip(abs_, exact)]
    finite = [r for r in rel if math.isfinite(r)]
    return {"max_abs": max(abs_, default=0.0), "max_rel": max(finite, default=0.0)}



def recalibrate_bn(model: nn.Module, batches, *, mode: str = "train", variance: str = "population",
                   max_batches: int | None = None, device=None, resume: Resume | None = None) -> dict:
    """Write exact statistics into every BatchNorm layer's running buffers; return the audit report.

    ``variance="population"`` writes the population mean and variance of
    each layer's input (``running_var = var * n / (n - 1)``: PyTorch keeps an
    unbiased estimate there); ``variance="batch"`` writes precise BN's
    estimates (mean of the batch means, mean of the per-batch unbiased
    variances). ``num_batches_tracked`` becomes the number of batches. The
    training flags are restored. See :func:`layer_stats` for ``batches``,
    ``mode`` and ``device``; :class:`Resume` for ``resume`` (going on from a
    checkpoint).

    The report maps each layer's name to ``channels``, ``n``, ``batches``,
    ``exact`` (population ``mean``/``var``), ``batch_var``, ``before`` (the
    running buffers the model held), ``precise_bn`` (the batch-average
    estimates over the same batches: the mean of the batch means and of the
    per-batch unbiased variances, what pycls's precise BN and
    ``torch.optim.swa_utils.update_bn`` compute), ``fvcore`` (what fvcore's
    ``update_bn_stats``, detectron2's precise BN, computes over the same
    batches: batch-size-weighted ``E[x²] − E[x]²`` in the buffers' dtype,
    replayed), ``written``, and ``distance``: for ``before``, ``precise_bn``
    and ``fvcore``, the ``max_abs`` and ``max_rel`` (over channels) distance
    of ``mean`` and ``var`` from the exact values (variances compared as
    estimates of the population variance, as stored).

    Statistics that are NaN or infinite (or overflow the buffers' dtype) raise
    :class:`NonFiniteStatisticsError` naming the first such layer; the model
    is then left as it was. A layer no batch reached (a branch the model's
    forward skips in eval mode, such as Inception's auxiliary head) is left
    as it was, with a warning naming it; its report entry has ``n`` 0, its
    ``before`` and ``written`` buffers, and ``left``, saying why.
    """
    layers = bn_layers(model)
    check_model(model, layers)
    with kept(model, layers) as saved:
        results = count_layers(model, batches, mode, max_batches, device, variance, resume, fvcore=True)
    check_finite(layers, results, variance)  # the buffers were restored: the model is as it was
    report = {}
    unreached = [name for name in layers if name not in results]
    for name, bn in layers.items():
        before = {"mean": saved[name][0].double().tolist(), "var": saved[name][1].double().tolist()}
        if name in unreached:
            report[name] = {"channels": bn.num_features, "n": 0, "batches": 0, "before": before, "written": before,
                            "left": "no batch reached it: its buffers are left as they were"}
            continue
        result = results[name]
        write_buffers(bn, result, variance)
        precise = {"mean": result["batch_mean"], "var": result["batch_var"]}
        exact = {"mean": result["mean"], "var": result["var"]}
        estimates = {"before": before, "precise_bn": precise, "fvcore": result["fvcore"]}
        report[name] = {
            "channels": bn.num_features, "n": result["n"], "batches": result["batches"],
            "exact": exact, "batch_var": result["batch_var"], **estimates,
            "written": {"mean": bn.running_mean.double().tolist(), "var": bn.running_var.double().tolist()},
            "distance": {which: {key: distance(values[key], exact[key]) for key in ("mean", "var")}
                         for which, values in estimates.items()},
        }
    return report


def report_json(report: dict) -> str:
    """The report of :func:`recalibrate_bn` as JSON text (infinite distances as null)."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    return json.dumps({"layers": clean(report)}, indent=2) + "\n"


def audit_table(report: dict) -> str:
    """The report as a text table: per layer, how far the running buffers, the batch-average (precise BN)
    estimate and fvcore's are from exact (the largest absolute distance over channels)."""
    rows = [("layer", "C", "running |Δmean|", "running |Δvar|", "precise |Δmean|", "precise |Δvar|",
             "fvcore |Δmean|", "fvcore |Δvar|")]
    for name, layer in report.items():
        d = layer.get("distance")
        if d is None:  # no batch reached it: left as it was
            rows.append((name, str(layer["channels"]), *["-"] * 6))
            continue
        rows.append((name, str(layer["channels"]), *(f"{d[w][k]['max_abs']:.3g}"
                                                      for w in ("before", "precise_bn", "fvcore")
                                                      for k in ("mean", "var"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))) for row in rows) + "\n"
