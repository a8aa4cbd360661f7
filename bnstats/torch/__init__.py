"""Exact moving metrics of every BatchNorm layer of a PyTorch model: audit and recalibration.

``pip install "bnstats[torch]"``. This is the only module that imports
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
buffers, in their dtype; :func:`recalibrate_bn` replays it (:class:`_Fvcore`)
so that its report shows what that costs in float32. The replay assumes
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
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..statistics import kernels
from ..statistics.validate import floats, integer

MODES = ("train", "sequential")
VARIANCES = ("population", "batch")


class NoBatchNormError(ValueError):
    """The model has no BatchNorm layer that tracks running statistics."""


def bn_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """The BatchNorm layers with running statistics, by ``named_modules()`` name, in registration order."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None}


def _sum_nv(y: torch.Tensor) -> torch.Tensor:
    """Per-channel sums of an ``(N, C, values)`` tensor, reducing the contiguous axis first unless it is short."""
    return y.sum(dim=0).sum(dim=1) if y.shape[2] <= 8 else y.sum(dim=2).sum(dim=0)


def _batch_moments(x: torch.Tensor, scratch: _Scratch) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Per-channel ``(m, mean, M2)`` of one batch (channels on dim 1), two-pass in float64 on ``x``'s device.

    A C-contiguous float32 CPU tensor goes to the compiled kernel, which
    reads it in place (several times faster than torch's float64 copy and
    four passes over it, and it leaves the cache to the model); anything
    else, or no kernel, is copied into ``scratch`` and reduced with torch ops.
    """
    n, channels = x.shape[0], x.shape[1]
    m = x.numel() // channels if channels else 0
    if not m:  # an empty batch counts nothing
        zeros = torch.zeros(channels, dtype=torch.float64, device=x.device)
        return 0, zeros, zeros.clone()
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous() and not x.is_neg():
        found = kernels.channel_moments(x.numpy().reshape(n, channels, -1))
        if found is not None:
            return m, torch.from_numpy(found[0]), torch.from_numpy(found[1])
    y = scratch.float64_copy(x).view(n, channels, -1)  # (N, C, values)
    mean = _sum_nv(y) / m
    y.sub_(mean.view(1, -1, 1))
    return m, mean, _sum_nv(y.square_())  # two-pass: no E[x²] - E[x]² cancellation


class _Fvcore:
    """fvcore's ``update_bn_stats`` (detectron2's precise BN since 2021), replayed in the layer's buffer dtype.

    There, each batch leaves its mean and unbiased variance in the layer's
    buffers (momentum 1), and fvcore's ``_PopulationVarianceEstimator``
    averages the batch means and ``E_b[x²] = mean² + var·(b−1)/b``, weighted
    by the batch's values per channel ``b``, in tensors of the buffers' dtype
    that start at zero; the variance is ``E[x²] − E[x]²``. The same arithmetic
    here, on the batch's exact moments rounded to that dtype. PyTorch's own
    float32 batch statistics may differ from those in the last bit, and
    where ``E[x²] − E[x]²`` has cancelled that moves the result: the replay
    shows how large fvcore's error is, not always its exact bits.
    """

    def __init__(self, dtype: torch.dtype, channels: int, device):
        self.tot = 0
        self.mean = torch.zeros(channels, dtype=dtype, device=device)
        self.square_mean = torch.zeros(channels, dtype=dtype, device=device)

    def update(self, b: int, mean: torch.Tensor, unbiased: torch.Tensor) -> None:
        batch_mean, batch_var = mean.to(self.mean.dtype), unbiased.to(self.mean.dtype)
        self.tot += b
        batch_square_mean = batch_mean.square() + batch_var * ((b - 1) / b)
        self.mean += (batch_mean - self.mean) * (b / self.tot)
        self.square_mean += (batch_square_mean - self.square_mean) * (b / self.tot)

    def copy(self) -> "_Fvcore":
        other = copy.copy(self)
        other.mean, other.square_mean = self.mean.clone(), self.square_mean.clone()
        return other

    def estimate(self) -> dict:
        """What fvcore writes: ``{"mean", "var"}`` (zeros for a layer no batch reached, as there)."""
        return {"mean": self.mean.double().tolist(), "var": (self.square_mean - self.mean.square()).double().tolist()}

    def to_dict(self) -> dict:
        """The state, its tensors as the hex of their bytes: exact in any dtype, infinities and NaN too (fp16
        overflows where a channel's E[x²] passes 65504)."""
        return {"tot": self.tot, "mean": _hex(self.mean), "square_mean": _hex(self.square_mean)}

    @classmethod
    def from_dict(cls, d: dict, dtype: torch.dtype, device, channels: int) -> "_Fvcore":
        """The state :meth:`to_dict` saved; ValueError (or KeyError, TypeError) for anything else."""
        state = cls(dtype, channels, device)
        state.tot = integer(d["tot"], "tot")
        state.mean, state.square_mean = (_unhex(d[key], dtype, channels).to(device) for key in ("mean", "square_mean"))
        return state


def _hex(t: torch.Tensor) -> str:
    return t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes().hex()


def _unhex(text, dtype: torch.dtype, channels: int) -> torch.Tensor:
    raw = bytes.fromhex(text)  # TypeError for a non-string, ValueError for other text
    if len(raw) != channels * torch.empty(0, dtype=dtype).element_size():
        raise ValueError(f"not {channels} numbers")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).clone()


class _Moments:
    """One layer's float64 state on the device: Chan's ``(n, mean, M2)`` and the per-batch sums of precise BN;
    with ``fvcore``, also the replay of fvcore's estimate (:class:`_Fvcore`)."""

    def __init__(self, fvcore: _Fvcore | None = None):
        self.n = 0
        self.batches = 0
        self.mean = self.m2 = self.batch_mean_sum = self.batch_var_sum = None
        self.fvcore = fvcore

    def add_batch(self, x: torch.Tensor, scratch: "_Scratch") -> tuple[int, torch.Tensor, torch.Tensor]:
        """Count one batch of a layer's input (channels on dim 1); its ``(m, mean, M2)``, float64."""
        m, mean, m2 = _batch_moments(x.detach(), scratch)
        unbiased = m2 / (m - 1) if m > 1 else torch.zeros_like(m2)  # as BN writes running_var at momentum 1
        self._merge(m, mean, m2, 1, mean, unbiased)
        if self.fvcore is not None and m:
            self.fvcore.update(m, mean, unbiased)
        return m, mean, m2

    def _merge(self, n, mean, m2, batches, batch_mean_sum, batch_var_sum) -> None:
        if n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = n, mean.clone(), m2.clone()
            self.batches, self.batch_mean_sum, self.batch_var_sum = batches, batch_mean_sum.clone(), batch_var_sum.clone()
            return
        total = self.n + n
        delta = mean - self.mean
        # in place (a state's tensors are its own, see snapshot), and no fused multiply-add: add_(alpha=) and
        # addcmul_ fuse in torch's AVX2 kernels only, so the bits would depend on the CPU
        self.mean.add_(delta * (n / total))
        self.m2.add_(m2).add_(delta.square().mul_(self.n * n / total))
        self.n = total
        self.batches += batches
        self.batch_mean_sum.add_(batch_mean_sum)
        self.batch_var_sum.add_(batch_var_sum)

    def pack(self, channels: int, device) -> torch.Tensor:
        """``[n, batches, mean.., M2.., batch mean sums.., batch var sums..]`` as one float64 tensor (for all_gather)."""
        if self.n == 0:
            zeros = torch.zeros(4 * channels, dtype=torch.float64, device=device)
            return torch.cat([torch.zeros(2, dtype=torch.float64, device=device), zeros])
        head = torch.tensor([float(self.n), float(self.batches)], dtype=torch.float64, device=device)
        return torch.cat([head, self.mean, self.m2, self.batch_mean_sum, self.batch_var_sum])

    @classmethod
    def unpack(cls, packed: torch.Tensor, channels: int) -> "_Moments":
        state = cls()
        n, batches = int(packed[0].item()), int(packed[1].item())  # counts below 2**53: exact in float64
        parts = packed[2:].view(4, channels)
        state._merge(n, parts[0], parts[1], batches, parts[2], parts[3])
        return state

    def snapshot(self) -> "_Moments":
        """A copy of the state as it is now, kept while counting goes on (:meth:`_merge` works in place)."""
        state = copy.copy(self)
        if self.n:
            state.mean, state.m2 = self.mean.clone(), self.m2.clone()
            state.batch_mean_sum, state.batch_var_sum = self.batch_mean_sum.clone(), self.batch_var_sum.clone()
        if self.fvcore is not None:
            state.fvcore = self.fvcore.copy()
        return state

    def to_dict(self) -> dict:
        """The exact state as JSON-ready numbers (float64 values round-trip through JSON exactly)."""
        if self.n == 0:
            return {"n": 0, "batches": 0}
        d = {"n": self.n, "batches": self.batches, "mean": self.mean.tolist(), "m2": self.m2.tolist(),
             "batch_mean_sum": self.batch_mean_sum.tolist(), "batch_var_sum": self.batch_var_sum.tolist()}
        if self.fvcore is not None:
            d["fvcore"] = self.fvcore.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, device, channels: int, fvcore: torch.dtype | None = None) -> "_Moments":
        """The state :meth:`to_dict` saved for a layer of ``channels`` (with the fvcore replay in that dtype);
        ValueError for anything else."""
        state = cls(None if fvcore is None else _Fvcore(fvcore, channels, device))
        n, batches = integer(d["n"], "n"), integer(d.get("batches"), "batches")
        if bool(n) != bool(batches) or batches > n:
            raise ValueError("values and batches do not agree")
        if n:
            values = {key: floats(d[key], key, channels) for key in ("mean", "m2", "batch_mean_sum", "batch_var_sum")}
            if min(values["m2"]) < 0 or min(values["batch_var_sum"]) < 0:
                raise ValueError("a negative sum of squares")
            tensors = [torch.tensor(values[key], dtype=torch.float64, device=device)
                       for key in ("mean", "m2", "batch_mean_sum", "batch_var_sum")]
            state._merge(n, tensors[0], tensors[1], batches, tensors[2], tensors[3])
            if fvcore is not None:
                state.fvcore = _Fvcore.from_dict(d["fvcore"], fvcore, device, channels)
                if state.fvcore.tot != n:
                    raise ValueError("the fvcore replay counted other values")
        return state

    def result(self) -> dict:
        """Plain floats: population ``mean``/``var``, precise BN's ``batch_mean``/``batch_var``, ``n``, ``batches``
        (and ``fvcore``: the replay's ``{"mean", "var"}``, when replayed)."""
        if self.n == 0:
            raise ValueError("no batch reached this layer")
        out = {"mean": self.mean.tolist(), "var": (self.m2 / self.n).tolist(),
               "batch_var": (self.batch_var_sum / self.batches).tolist(), "n": self.n,
               "batch_mean": (self.batch_mean_sum / self.batches).tolist(), "batches": self.batches}
        if self.fvcore is not None:
            out["fvcore"] = self.fvcore.estimate()
        return out


class _Scratch:
    """One float64 buffer, reused by every layer's hook: the size of the largest BN input of a batch.

    Converting each activation into fresh memory costs several times more
    than the moments themselves (page faults on every new 2x-size tensor);
    the hooks run one at a time, so one buffer serves them all.
    """

    def __init__(self):
        self.buffer = None

    def float64_copy(self, x: torch.Tensor) -> torch.Tensor:
        if self.buffer is None or self.buffer.numel() < x.numel() or self.buffer.device != x.device:
            self.buffer = torch.empty(x.numel(), dtype=torch.float64, device=x.device)
        return self.buffer[: x.numel()].view(x.shape).copy_(x)


class _StopForward(Exception):
    """Raised by a hook to end a sequential pass once its layer has been counted."""


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _all_merge(state: _Moments, channels: int, device) -> _Moments:
    """Every rank's state for one layer, merged in rank order (identical on every rank)."""
    if not _distributed():
        return state
    dist = torch.distributed
    if dist.get_backend() == "nccl" and torch.device(device).type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    local = state.pack(channels, device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    merged = _Moments()
    for packed in gathered:  # rank order: the same arithmetic on every rank
        part = _Moments.unpack(packed, channels)
        merged._merge(part.n, part.mean, part.m2, part.batches, part.batch_mean_sum, part.batch_var_sum)
    merged.fvcore = state.fvcore  # fvcore estimates on each rank alone (so ranks differ there, as with fvcore)
    return merged


def _model_device(model: nn.Module):
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _inputs(batch, device):
    """A batch as the model takes it: a tensor, or the first item of an ``(inputs, targets, ...)`` tuple/list."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"a batch must be a tensor or an (inputs, ...) tuple, not {type(batch).__name__}")
    return batch.to(device, non_blocking=True)


def _batches(batches, max_batches):
    """The first ``max_batches`` batches (all with None), none read past them (each one is decoded)."""
    return itertools.islice(batches, max_batches)


@contextmanager
def _kept(model: nn.Module, layers: dict[str, _BatchNorm]):
    """Restore every module's training flag and the BN layers' buffers when the block ends (also on error)."""
    flags = [(m, m.training) for m in model.modules()]
    saved = {name: (bn.running_mean.clone(), bn.running_var.clone(),
                    None if bn.num_batches_tracked is None else bn.num_batches_tracked.clone())
             for name, bn in layers.items()}
    try:
        yield saved
    finally:
        for m, flag in flags:
            m.training = flag
        with torch.no_grad():
            for name, bn in layers.items():
                _restore(bn, saved[name])


def _restore(bn: _BatchNorm, saved) -> None:
    mean, var, tracked = saved
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    if tracked is not None:
        bn.num_batches_tracked.copy_(tracked)


class NonFiniteStatisticsError(ValueError):
    """A layer's statistics are NaN or infinite (or overflow its buffers): nothing is written."""


def _buffers(bn: _BatchNorm, result: dict, variance: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The running mean and variance to write for ``result``, in PyTorch's conventions (unbiased
    ``running_var``) and the buffers' dtype."""
    if variance == "population":
        n = result["n"]
        mean, var = result["mean"], [v * n / (n - 1) if n > 1 else v for v in result["var"]]
    else:  # precise BN's estimate: mean of batch means, mean of unbiased batch variances
        mean, var = result["batch_mean"], result["batch_var"]
    return (torch.tensor(mean, dtype=torch.float64).to(bn.running_mean.dtype),
            torch.tensor(var, dtype=torch.float64).to(bn.running_var.dtype))


def _check_finite(layers: dict, results: dict, variance: str) -> None:
    """Refuse to write statistics that are not finite: a model with NaN buffers gives NaN for every input.

    The first layer named is where it started (inputs that overflow, e.g. a
    normalization by a std of 1e-300, or NaN pixels); later layers only
    inherit it.
    """
    for name, bn in layers.items():
        mean, var = _buffers(bn, results[name], variance)
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            shown = ", ".join(f"{v:.3g}" for v in (mean if not torch.isfinite(mean).all() else var).tolist()[:4])
            which = "mean" if not torch.isfinite(mean).all() else "variance"
            raise NonFiniteStatisticsError(
                f"layer {name or 'the model'!r}: the {which} of its inputs is not finite ([{shown}...] in "
                f"{str(bn.running_var.dtype).removeprefix('torch.')}): the inputs overflow or hold NaN "
                "(check the normalization's mean and std); no statistics written")


def _write(bn: _BatchNorm, result: dict, variance: str) -> None:
    """Write a layer's statistics into its buffers, in PyTorch's conventions (unbiased ``running_var``)."""
    mean, var = _buffers(bn, result, variance)
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.fill_(result["batches"])


def _check(mode: str, variance: str, layers: dict) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, not {variance!r}")
    if not layers:
        raise NoBatchNormError("the model has no BatchNorm layer with running statistics (track_running_stats=True)")


def _counting_pass(model, layers: dict, wanted: list[str], batches, max_batches, device, stop_after=None,
                   batch_normalized=(), resume=None, fvcore=False) -> dict:
    """One pass over ``batches`` counting the inputs of the layers ``wanted``; merged across ranks.

    The layers named in ``batch_normalized`` are in eval mode and get each
    batch's own statistics in their running buffers before they run: they
    normalize with batch statistics, as in training, without computing them
    a second time (the caller restores the buffers). ``fvcore``: also replay
    fvcore's estimate in each layer's buffer dtype (:class:`_Fvcore`).
    """
    states = {name: _Moments(_Fvcore(layers[name].running_var.dtype, layers[name].num_features, device)
                             if fvcore else None) for name in wanted}
    if resume is not None:  # a checkpoint's states, and who is told after each batch
        if not isinstance(resume.states, dict) or (resume.batches and set(resume.states) != set(wanted)):
            raise ValueError(DAMAGED)  # not a state for every layer counted
        states.update(_saved_states({name: d for name, d in resume.states.items() if name in states}, layers,
                                    device, fvcore))
        if max_batches is not None:  # the limit counts the batches counted before the checkpoint
            max_batches = max(max_batches - resume.batches, 0)
    scratch = _Scratch()

    def hook_for(name):
        normalize = name in batch_normalized

        def hook(module, args):
            m, mean, m2 = states[name].add_batch(args[0], scratch)
            if normalize and m:  # (an empty batch normalizes nothing)
                if m < 2:  # what the layer itself would say in training mode
                    raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                                     f"{list(args[0].shape)}")
                module.running_mean.copy_(mean)
                module.running_var.copy_(m2 / m)  # biased, as BN normalizes in training
            if name == stop_after:
                raise _StopForward
        return hook

    handles = [layers[name].register_forward_pre_hook(hook_for(name)) for name in wanted]
    try:
        with torch.no_grad():
            for batch in _batches(batches, max_batches):
                try:
                    model(_inputs(batch, device))
                except _StopForward:
                    pass
                if resume is not None:
                    resume.batches += 1
                    resume.after_batch({name: state.snapshot() for name, state in states.items()})
    finally:
        for handle in handles:
            handle.remove()
    return {name: _all_merge(states[name], layers[name].num_features, device) for name in wanted}


DAMAGED = "a saved layer state is damaged: delete the checkpoint to start over"


def _saved_states(saved: dict, layers: dict, device, fvcore: bool) -> dict:
    """The :class:`_Moments` a checkpoint saved (:meth:`_Moments.to_dict`) for these layers; ValueError for
    a damaged one."""
    try:
        return {name: _Moments.from_dict(d, device, layers[name].num_features,
                                         layers[name].running_var.dtype if fvcore else None)
                for name, d in saved.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(DAMAGED) from None


def _forward_order(model, layers: dict, batches, device) -> tuple[list[str], bool]:
    """The layers in the order the first batch calls them, and whether each is called exactly once."""
    calls: list[str] = []
    handles = [bn.register_forward_pre_hook(lambda m, a, name=name: calls.append(name)) for name, bn in layers.items()]
    try:
        with torch.no_grad():
            for batch in _batches(batches, 1):
                model(_inputs(batch, device))
    finally:
        for handle in handles:
            handle.remove()
    order = list(dict.fromkeys(calls))
    once = len(order) == len(calls)
    return order + [name for name in layers if name not in order], once  # layers never called: counted last


def _finished(resume: "Resume", order: list[str], layers: dict, device, fvcore: bool) -> dict:
    """The states of the layers a sequential checkpoint finished, if it fits these layers (the same order, the
    state under way the next layer's); ValueError otherwise."""
    following = [name for name in order if name not in resume.finished][:1]
    if sorted(order) != sorted(layers) or (resume.states and list(resume.states) != following):
        raise ValueError(DAMAGED)
    done = _saved_states(resume.finished, layers, device, fvcore)
    if any(state.n == 0 for state in done.values()):
        raise ValueError(DAMAGED)  # a layer finished without a value
    return done


def _run(model, batches, mode, max_batches, device, variance, resume=None, fvcore=False) -> dict:
    """Count every layer (writing earlier layers in sequential mode); the caller restores or writes."""
    layers = bn_layers(model)
    _check(mode, variance, layers)
    device = _model_device(model) if device is None else torch.device(device)
    if mode == "train":
        model.eval()
        # Plain BatchNorm layers with float32/64 buffers stay in eval mode and are handed each batch's statistics
        # (cheaper than letting them compute their own); others (SyncBatchNorm, custom forwards, half-precision
        # buffers, where a variance above 65504 would overflow) run in training mode. Buffers are restored by
        # the caller.
        handed = [name for name, bn in layers.items() if type(bn).forward is _BatchNorm.forward
                  and bn.running_var.dtype in (torch.float32, torch.float64)]  # fp16 buffers would overflow
        for name, bn in layers.items():
            bn.train(name not in handed)
        states = _counting_pass(model, layers, list(layers), batches, max_batches, device, batch_normalized=handed,
                                resume=resume, fvcore=fvcore)
        return {name: state.result() for name, state in states.items()}
    if isinstance(batches, Iterator):  # read once only (asking iter() would start a pass)
        raise TypeError("mode='sequential' makes one pass per layer: give re-iterable batches (a list, a DataLoader)")
    model.eval()
    done = {}
    if resume is not None and resume.order is not None:  # learned by the run that saved the checkpoint
        order, once = resume.order
        done = _finished(resume, order, layers, device, fvcore)
    elif resume is not None and (resume.finished or resume.states or resume.batches):
        raise ValueError(DAMAGED)  # layers counted, and no order
    else:
        order, once = _forward_order(model, layers, batches, device)
    if resume is not None:
        resume.order = (order, once)
    results = {}
    for name in order:
        state = done.get(name)
        if state is None:
            state = _counting_pass(model, layers, [name], batches, max_batches, device,
                                   stop_after=name if once else None, resume=resume, fvcore=fvcore)[name]
            if resume is not None:  # the next pass starts from nothing
                resume.finished[name], resume.states, resume.batches = state.to_dict(), {}, 0
                resume.after_layer(name)
        results[name] = state.result()
        _write(layers[name], results[name], variance)  # later layers see it as at inference
    return {name: results[name] for name in layers}


def layer_stats(model: nn.Module, batches, *, mode: str = "train", max_batches: int | None = None,
                device=None) -> dict:
    """The exact per-channel statistics of the input of every BatchNorm layer, over all ``batches``.

    ``batches`` yields tensors, or ``(inputs, targets, ...)`` tuples whose
    first item is fed to the model (a DataLoader); ``mode="sequential"``
    needs them re-iterable. ``device`` is where inputs go and moments are
    computed [default: the model's]. Returns ``{name: {"mean", "var",
    "batch_var", "n", "batch_mean", "batches"}}`` keyed by
    ``model.named_modules()`` names, plain floats: ``var`` is the population
    variance, ``batch_var`` the mean of the per-batch unbiased variances and
    ``batch_mean`` the mean of the batch means (precise BN's estimates),
    ``n`` the values per channel. The model is left as it was: buffers and
    training flags are restored.
    """
    layers = bn_layers(model)
    with _kept(model, layers):
        return _run(model, batches, mode, max_batches, device, "population")


def _distance(estimate: list[float], exact: list[float]) -> dict:
    """The largest absolute and relative distance over channels; NaN when an estimate is NaN (no channel's
    distance may hide it), and relative distances to an exact 0 left out."""
    abs_ = [abs(a - b) for a, b in zip(estimate, exact, strict=True)]
    if any(math.isnan(d) for d in abs_):
        return {"max_abs": math.nan, "max_rel": math.nan}
    rel = [d / abs(b) if b else (0.0 if d == 0 else math.inf) for d, b in zip(abs_, exact)]
    finite = [r for r in rel if math.isfinite(r)]
    return {"max_abs": max(abs_, default=0.0), "max_rel": max(finite, default=0.0)}


class Resume:
    """Counting that goes on from a saved point (``bnstats recalibrate --checkpoint``), and reports its progress.

    The pass under way: ``states`` are its layers' :meth:`_Moments.to_dict`
    states by name (empty at the start) after ``batches`` batches (which
    ``max_batches`` counts); ``batches`` must then yield only the batches not
    counted yet, on its first iteration. ``after_batch(states)`` is called
    after every batch with a snapshot of the pass's states, consistent at
    that batch boundary. Sequential mode also keeps ``order`` (the forward
    order and whether each layer runs once, learned on the first run) and
    ``finished`` (the :meth:`_Moments.to_dict` states of the layers done,
    written before the next ones are counted); ``after_layer(name)`` is called when a layer's
    pass ends. This object is updated as counting goes on: its fields are
    what a checkpoint saves.
    """

    def __init__(self, states: dict | None = None, after_batch=None, *, batches: int = 0, order=None,
                 finished: dict | None = None, after_layer=None):
        self.states, self.batches = dict(states or {}), batches
        self.order, self.finished = order, dict(finished or {})
        self.after_batch = after_batch or (lambda states: None)
        self.after_layer = after_layer or (lambda name: None)


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
    is then left as it was.
    """
    layers = bn_layers(model)
    with _kept(model, layers) as saved:
        results = _run(model, batches, mode, max_batches, device, variance, resume, fvcore=True)
    _check_finite(layers, results, variance)  # the buffers were restored: the model is as it was
    report = {}
    for name, bn in layers.items():
        result = results[name]
        _write(bn, result, variance)
        before = {"mean": saved[name][0].double().tolist(), "var": saved[name][1].double().tolist()}
        precise = {"mean": result["batch_mean"], "var": result["batch_var"]}
        exact = {"mean": result["mean"], "var": result["var"]}
        estimates = {"before": before, "precise_bn": precise, "fvcore": result["fvcore"]}
        report[name] = {
            "channels": bn.num_features, "n": result["n"], "batches": result["batches"],
            "exact": exact, "batch_var": result["batch_var"], **estimates,
            "written": {"mean": bn.running_mean.double().tolist(), "var": bn.running_var.double().tolist()},
            "distance": {which: {key: _distance(values[key], exact[key]) for key in ("mean", "var")}
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
        d = layer["distance"]
        rows.append((name, str(layer["channels"]), *(f"{d[w][k]['max_abs']:.3g}"
                                                      for w in ("before", "precise_bn", "fvcore")
                                                      for k in ("mean", "var"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))) for row in rows) + "\n"
