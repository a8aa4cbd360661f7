"""Counting the inputs of every BatchNorm layer of a model: the passes, the modes, the buffers.

The layers (:func:`bn_layers`), a forward pre-hook per layer feeding its
:class:`~bnstats.torch.moments.Moments` (:func:`counting_pass`), the two
modes (train: one pass; sequential: one pass per layer in forward order,
:func:`count_layers`), going on from a checkpoint (:class:`Resume`), and
reading and writing the running buffers in PyTorch's conventions.
:func:`layer_stats` is the public entry that leaves the model as it was.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .moments import Moments, FvcoreReplay, Scratch, all_merge


MODES = ("train", "sequential")
VARIANCES = ("population", "batch")


class NoBatchNormError(ValueError):
    """The model has no BatchNorm layer that tracks running statistics."""


def bn_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """The BatchNorm layers with running statistics, by ``named_modules()`` name, in registration order."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None}



class _StopForward(Exception):
    """Raised by a hook to end a sequential pass once its layer has been counted."""


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


def first_batches(batches, max_batches):
    """The first ``max_batches`` batches (all with None), none read past them (each one is decoded)."""
    return itertools.islice(batches, max_batches)


@contextmanager
def kept(model: nn.Module, layers: dict[str, _BatchNorm]):
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
        mean, var = result["mean"], [v * n / (n - 1) for v in result["var"]]  # n > 1: check_batch_variance
    else:  # precise BN's estimate: mean of batch means, mean of unbiased batch variances
        mean, var = result["batch_mean"], result["batch_var"]
    return (torch.tensor(mean, dtype=torch.float64).to(bn.running_mean.dtype),
            torch.tensor(var, dtype=torch.float64).to(bn.running_var.dtype))


def check_batch_variance(name: str, result: dict, variance: str) -> None:
    """Refuse to write a variance there is none of: a layer that saw one value per channel in all, or precise
    BN's where a batch held one value per channel (its ``batch_var`` is NaN; PyTorch refuses such a batch in
    training, and sequential mode counts it in eval)."""
    if result["n"] < 2:  # (sequential mode: eval mode counts it) PyTorch's running_var is an unbiased estimate
        raise ValueError(f"layer {name or 'the model'!r} saw one value per channel in all, which has no variance: "
                         "give more data; no statistics written")
    if variance == "batch" and result.get("single_batches"):
        raise ValueError(f"layer {name or 'the model'!r}: {result['single_batches']} batch(es) held one value per "
                         "channel, which has no batch variance (PyTorch refuses it in training): use "
                         "variance='population', or batches of 2 or more (drop_last); no statistics written")


def check_finite(layers: dict, results: dict, variance: str) -> None:
    """Refuse to write statistics that are not finite: a model with NaN buffers gives NaN for every input.

    The first layer named is where it started (inputs that overflow, e.g. a
    normalization by a std of 1e-300, or NaN pixels); later layers only
    inherit it.
    """
    for name, result in results.items():  # the layers a batch reached
        bn = layers[name]
        check_batch_variance(name, result, variance)
        mean, var = _buffers(bn, result, variance)
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            shown = ", ".join(f"{v:.3g}" for v in (mean if not torch.isfinite(mean).all() else var).tolist()[:4])
            which = "mean" if not torch.isfinite(mean).all() else "variance"
            raise NonFiniteStatisticsError(
                f"layer {name or 'the model'!r}: the {which} of its inputs is not finite ([{shown}...] in "
                f"{str(bn.running_var.dtype).removeprefix('torch.')}): the inputs overflow or hold NaN "
                "(check the normalization's mean and std); no statistics written")


def write_buffers(bn: _BatchNorm, result: dict, variance: str) -> None:
    """Write a layer's statistics into its buffers, in PyTorch's conventions (unbiased ``running_var``)."""
    mean, var = _buffers(bn, result, variance)
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.fill_(result["batches"])


def check_model(model: nn.Module, layers: dict) -> None:
    """Refuse, before anything is counted, a model whose tensors hold no values: on the 'meta' device, or a
    lazy BatchNorm layer not initialized yet (each failed only after a pass, with torch's words)."""
    lazy = [name for name, bn in layers.items() if isinstance(bn.running_mean, nn.parameter.UninitializedBuffer)]
    if lazy:
        raise ValueError(f"BatchNorm layer {lazy[0]!r} is a lazy module not initialized yet: run one batch "
                         "through the model first")
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ValueError("the model is on the 'meta' device (its tensors hold no values): load its weights "
                         "first (model.to_empty(device='cpu'), then load_state_dict)")


NOTHING_REACHED = "no batch reached the BatchNorm layers (no batches, or only empty ones): nothing written"


def results(states: dict) -> dict:
    """Each reached layer's :meth:`Moments.result`. A layer no batch reached is left out (its buffers stay as
    they were: a branch the model's forward skips in eval mode, such as Inception's auxiliary head, is not
    used at inference either); a ValueError when no layer was reached."""
    reached = {name: state.result() for name, state in states.items() if state.n}
    if states and not reached:
        raise ValueError(NOTHING_REACHED)
    return reached


def unreached_note(names: list[str]) -> str:
    """The warning for layers no batch reached: named, and left as they were."""
    shown = ", ".join(repr(name) for name in names[:3]) + (", ..." if len(names) > 3 else "")
    return (f"no batch reached BatchNorm layer(s) {shown} (a branch the model's forward skips in eval mode, "
            "such as an auxiliary head): left as they were")


def _check(mode: str, variance: str, layers: dict) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, not {variance!r}")
    if not layers:
        raise NoBatchNormError("the model has no BatchNorm layer with running statistics (track_running_stats=True)")


def counting_pass(model, layers: dict, wanted: list[str], batches, max_batches, device, stop_after=None,
                   batch_normalized=(), resume=None, fvcore=False) -> dict:
    """One pass over ``batches`` counting the inputs of the layers ``wanted``; merged across ranks.

    The layers named in ``batch_normalized`` are in eval mode and get each
    batch's own statistics in their running buffers before they run: they
    normalize with batch statistics, as in training, without computing them
    a second time (the caller restores the buffers). ``fvcore``: also replay
    fvcore's estimate in each layer's buffer dtype (:class:`FvcoreReplay`).
    """
    states = {name: Moments(FvcoreReplay(layers[name].running_var.dtype, layers[name].num_features, device)
                             if fvcore else None) for name in wanted}
    if resume is not None:  # a checkpoint's states, and who is told after each batch
        if not isinstance(resume.states, dict) or (resume.batches and set(resume.states) != set(wanted)):
            raise ValueError(DAMAGED)  # not a state for every layer counted
        states.update(_saved_states({name: d for name, d in resume.states.items() if name in states}, layers,
                                    device, fvcore))
        if max_batches is not None:  # the limit counts the batches counted before the checkpoint
            max_batches = max(max_batches - resume.batches, 0)
    scratch = Scratch()

    def hook_for(name):
        normalize = name in batch_normalized

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("input")  # bn(x) or bn(input=x)
            m, mean, m2 = states[name].add_batch(x, scratch)
            if normalize and m:  # (an empty batch normalizes nothing)
                if m < 2:  # what the layer itself would say in training mode
                    raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                                     f"{list(x.shape)}")
                module.running_mean.copy_(mean)
                module.running_var.copy_(m2 / m)  # biased, as BN normalizes in training
            if name == stop_after:
                raise _StopForward
        return hook

    handles = [layers[name].register_forward_pre_hook(hook_for(name), with_kwargs=True) for name in wanted]
    try:
        with torch.no_grad():
            for batch in first_batches(batches, max_batches):
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
    return {name: all_merge(states[name], layers[name].num_features, device) for name in wanted}


DAMAGED = "a saved layer state is damaged: delete the checkpoint to start over"


def _saved_states(saved: dict, layers: dict, device, fvcore: bool) -> dict:
    """The :class:`Moments` a checkpoint saved (:meth:`Moments.to_dict`) for these layers; ValueError for
    a damaged one."""
    try:
        return {name: Moments.from_dict(d, device, layers[name].num_features,
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
            for batch in first_batches(batches, 1):
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
    return _saved_states(resume.finished, layers, device, fvcore)  # n 0: a layer no batch reached


def count_layers(model, batches, mode, max_batches, device, variance, resume=None, fvcore=False) -> dict:
    """Count every layer (writing earlier layers in sequential mode); the caller restores or writes. The layers
    no batch reached are not in the result, and a warning names them (to the caller's caller)."""
    counted = _count_layers(model, batches, mode, max_batches, device, variance, resume, fvcore)
    unreached = [name for name in bn_layers(model) if name not in counted]
    if unreached:
        warnings.warn(unreached_note(unreached), UserWarning, stacklevel=3)
    return counted


def _count_layers(model, batches, mode, max_batches, device, variance, resume, fvcore) -> dict:
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
        states = counting_pass(model, layers, list(layers), batches, max_batches, device, batch_normalized=handed,
                                resume=resume, fvcore=fvcore)
        return results(states)
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
    counted = {}
    for name in order:
        state = done.get(name)
        if state is None:
            state = counting_pass(model, layers, [name], batches, max_batches, device,
                                   stop_after=name if once else None, resume=resume, fvcore=fvcore)[name]
            if resume is not None:  # the next pass starts from nothing
                resume.finished[name], resume.states, resume.batches = state.to_dict(), {}, 0
                resume.after_layer(name)
        if not state.n:  # no batch reached it: left as it was (see results)
            continue
        counted[name] = state.result()
        check_batch_variance(name, counted[name], variance)  # before later layers count what it would give
        write_buffers(layers[name], counted[name], variance)  # later layers see it as at inference
    if not counted:
        raise ValueError(NOTHING_REACHED)
    return {name: counted[name] for name in layers if name in counted}


def layer_stats(model: nn.Module, batches, *, mode: str = "train", max_batches: int | None = None,
                device=None) -> dict:
    """The exact per-channel statistics of the input of every BatchNorm layer, over all ``batches``.

    ``batches`` yields tensors, or ``(inputs, targets, ...)`` tuples whose
    first item is fed to the model (a DataLoader); ``mode="sequential"``
    needs them re-iterable. ``device`` is where inputs go and moments are
    computed [default: the model's]. Returns ``{name: {"mean", "var",
    "batch_var", "n", "batch_mean", "batches", "single_batches"}}`` keyed by
    ``model.named_modules()`` names, plain floats: ``var`` is the population
    variance, ``batch_var`` the mean of the per-batch unbiased variances and
    ``batch_mean`` the mean of the batch means (precise BN's estimates;
    ``batch_var`` is NaN if any of the ``single_batches`` held one value per
    channel, which has no batch variance), ``n`` the values per channel. A
    layer no batch reached (a branch skipped in eval mode) is not in it, and a
    warning names it. The model is left as it was: buffers and training flags
    are restored.
    """
    layers = bn_layers(model)
    check_model(model, layers)
    with kept(model, layers):
        return count_layers(model, batches, mode, max_batches, device, "population")


class Resume:
    """Counting that goes on from a saved point (``bnstats recalibrate --checkpoint``), and reports its progress.

    The pass under way: ``states`` are its layers' :meth:`Moments.to_dict`
    states by name (empty at the start) after ``batches`` batches (which
    ``max_batches`` counts); ``batches`` must then yield only the batches not
    counted yet, on its first iteration. ``after_batch(states)`` is called
    after every batch with a snapshot of the pass's states, consistent at
    that batch boundary. Sequential mode also keeps ``order`` (the forward
    order and whether each layer runs once, learned on the first run) and
    ``finished`` (the :meth:`Moments.to_dict` states of the layers done,
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
