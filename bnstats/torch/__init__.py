"""Exact moving metrics of every BatchNorm layer of a PyTorch model (audit, recalibration), and a Dataset's statistics.

``pip install "bnstats[torch]"``. This is the only package that imports
torch; ``import bnstats`` never loads it.

For every BatchNorm layer (any ``torch.nn.modules.batchnorm._BatchNorm``
with ``track_running_stats``: BatchNorm1d/2d/3d, SyncBatchNorm) a forward
pre-hook takes the layer's *input* batch by batch and computes its
per-channel moments in float64 on the model's device, two-pass (the batch
mean, then ``M2 = sum((x - mean)**2)``; channels on dim 1, every other dim
reduced). A C-contiguous float32 activation on the CPU is read in place by
the optional compiled kernel (``bnstats.statistics.kernels.channel_moments``); others
are copied into one reused float64 buffer and reduced with torch ops. Batches are merged with Chan's formula ``(n, mean, M2)``: constant
memory, no activation is kept. Two variances come from the same pass:

- ``var``: the **population** variance of the layer's input over all the
  data (``M2 / n``);
- ``batch_var``: the **batch-average** variance, the mean over batches of
  each batch's *unbiased* variance ``M2_b / (n_b - 1)``. This is what the
  classic precise BN estimates (current pycls, and fvcore before 2021: momentum 1,
  the ``running_var`` each batch writes averaged; PyTorch writes a batch's
  unbiased variance there), and what ``torch.optim.swa_utils.update_bn``
  writes (momentum None: a cumulative average). With equal batches of ``m``
  values per channel, ``var = batch_var * (m - 1) / m + between``, where
  ``between`` is the population variance of the batch means: precise BN
  leaves out the spread of the batch means.

fvcore's ``update_bn_stats`` (detectron2's precise BN) has estimated the
population variance since 2021, as ``E[x²] − E[x]²`` from the batches'
buffers, in their dtype; :func:`recalibrate_bn` replays it
(:class:`~bnstats.torch.fvcore.FvcoreReplay`) so that its report shows what
that costs in float32. The replay assumes
what a caller of fvcore sets: the BN layers in training mode, each called
once per forward (fvcore refuses a layer called twice; the replay counts
every call). With ``torch.distributed`` it is each rank's own, as fvcore's
is (with SyncBatchNorm, fvcore would see the synchronized statistics).

PyTorch's ``running_var`` holds an *unbiased* estimate: writing the
population variance means writing ``var * n / (n - 1)``.

Modes: ``"train"`` runs one pass in which each BN layer normalizes with its
batch's statistics, as during training and as precise BN does, and every
other module is in eval mode (Dropout, RReLU and the like off). The hook has
computed those statistics already, so a plain BatchNorm layer is left in
eval mode with the batch's mean and biased variance put in its running
buffers: the same normalization without counting each batch twice.
SyncBatchNorm, subclasses with their own ``forward`` and layers with half-precision
buffers (a variance above 65504 would overflow there) run in training
mode instead. The running buffers are copied before and restored after.
``"sequential"`` visits the layers in forward order, one pass each, the
whole model in eval mode: layer k is counted with layers 0..k-1 already
recalibrated, so each layer sees the inputs it will see at inference. A pass
stops right after the layer it counts (when each layer runs once per
forward), so a chain of L layers costs about L/2 full passes, plus one
forward of the first batch to learn the order.

With ``torch.distributed`` initialized, each rank counts its own batches and
the per-layer states are all-gathered and merged in rank order: every rank
gets identical statistics, equal to one process counting all the batches.

The modules: :mod:`~bnstats.torch.moments` (a layer's exact moments, Chan's
merge, ranks), :mod:`~bnstats.torch.fvcore` (the fvcore replay),
:mod:`~bnstats.torch.layers` (the counting passes, modes, buffers,
:func:`layer_stats`), :mod:`~bnstats.torch.recalibrate` (writing the
statistics, the audit report), and the ``bnstats recalibrate`` job over
bnstats' own inputs: :mod:`~bnstats.torch.batches` (images as tensors),
:mod:`~bnstats.torch.checkpoint` (its checkpoint), :mod:`~bnstats.torch.job`.

:func:`dataset_stats` (:mod:`~bnstats.torch.dataset`, items made countable by
:mod:`~bnstats.torch.items`) gives the exact per-channel statistics of what a
``torch.utils.data.Dataset`` or a Hugging Face dataset yields, counted in
DataLoader workers that send back states, not pixels.
"""

from __future__ import annotations

from .dataset import dataset_stats
from .layers import MODES, VARIANCES, NoBatchNormError, NonFiniteStatisticsError, Resume, bn_layers, layer_stats
from .recalibrate import audit_table, recalibrate_bn, report_json

__all__ = ["MODES", "VARIANCES", "NoBatchNormError", "NonFiniteStatisticsError", "Resume", "audit_table",
           "bn_layers", "dataset_stats", "layer_stats", "recalibrate_bn", "report_json"]
