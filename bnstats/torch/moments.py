"""One BatchNorm layer's exact input moments: a batch's, their merge, their exchange between ranks.

A batch's per-channel ``(m, mean, M2)`` is computed two-pass in float64 on
the model's device (:func:`batch_moments`: the compiled kernel reads a
contiguous float32 CPU tensor in place; anything else is copied into one
reused float64 :class:`Scratch` buffer). :class:`Moments` merges batches
with Chan's formula (:func:`bnstats.statistics.formulas.chan_merge`) and
keeps precise BN's per-batch sums beside it; :func:`all_merge` merges every
rank's state in rank order under ``torch.distributed``.
"""

from __future__ import annotations

import copy

import torch

from ..statistics import kernels
from ..statistics.formulas import chan_merge
from ..statistics.validate import floats, integer
from .fvcore import FvcoreReplay


def _sum_nv(y: torch.Tensor) -> torch.Tensor:
    """Per-channel sums of an ``(N, C, values)`` tensor, reducing the contiguous axis first unless it is short."""
    return y.sum(dim=0).sum(dim=1) if y.shape[2] <= 8 else y.sum(dim=2).sum(dim=0)


def batch_moments(x: torch.Tensor, scratch: Scratch) -> tuple[int, torch.Tensor, torch.Tensor]:
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



class Moments:
    """One layer's float64 state on the device: Chan's ``(n, mean, M2)`` and the per-batch sums of precise BN;
    with ``fvcore``, also the replay of fvcore's estimate (:class:`FvcoreReplay`)."""

    def __init__(self, fvcore: FvcoreReplay | None = None):
        self.n = 0
        self.batches = 0
        self.singles = 0  # batches of one value per channel: no batch variance (PyTorch refuses them in training)
        self.mean = self.m2 = self.batch_mean_sum = self.batch_var_sum = None
        self.fvcore = fvcore

    def add_batch(self, x: torch.Tensor, scratch: "Scratch") -> tuple[int, torch.Tensor, torch.Tensor]:
        """Count one batch of a layer's input (channels on dim 1); its ``(m, mean, M2)``, float64."""
        m, mean, m2 = batch_moments(x.detach(), scratch)
        unbiased = m2 / (m - 1) if m > 1 else torch.zeros_like(m2)  # as BN writes running_var at momentum 1
        self._merge(m, mean, m2, 1, mean, unbiased, singles=int(m == 1))
        if self.fvcore is not None and m:
            self.fvcore.update(m, mean, unbiased)
        return m, mean, m2

    def _merge(self, n, mean, m2, batches, batch_mean_sum, batch_var_sum, singles=0) -> None:
        if n == 0:
            return
        self.singles += singles
        if self.n == 0:
            self.n, self.mean, self.m2 = n, mean.clone(), m2.clone()
            self.batches, self.batch_mean_sum, self.batch_var_sum = batches, batch_mean_sum.clone(), batch_var_sum.clone()
            return
        # Chan's formula, bnstats' one. The state keeps no low part of the mean (its checkpoints hold float64
        # means), so both lows are 0 and the bits are those of the plain update. Its plain tensor operations
        # fuse no multiply-add (add_(alpha=) and addcmul_ do, in torch's AVX2 kernels only: the bits would
        # depend on the CPU); and they give new tensors, so a snapshot's stay its own
        self.n, self.mean, _, self.m2 = chan_merge((self.n, self.mean, 0.0, self.m2), (n, mean, 0.0, m2))
        self.batches += batches
        self.batch_mean_sum.add_(batch_mean_sum)
        self.batch_var_sum.add_(batch_var_sum)

    def pack(self, channels: int, device) -> torch.Tensor:
        """``[n, batches, singles, mean.., M2.., batch mean sums.., batch var sums..]`` as one float64 tensor (for
        all_gather)."""
        if self.n == 0:
            zeros = torch.zeros(4 * channels, dtype=torch.float64, device=device)
            return torch.cat([torch.zeros(3, dtype=torch.float64, device=device), zeros])
        head = torch.tensor([float(self.n), float(self.batches), float(self.singles)], dtype=torch.float64,
                            device=device)
        return torch.cat([head, self.mean, self.m2, self.batch_mean_sum, self.batch_var_sum])

    @classmethod
    def unpack(cls, packed: torch.Tensor, channels: int) -> "Moments":
        state = cls()
        n, batches, singles = (int(packed[i].item()) for i in range(3))  # counts below 2**53: exact in float64
        parts = packed[3:].view(4, channels)
        state._merge(n, parts[0], parts[1], batches, parts[2], parts[3], singles)
        return state

    def snapshot(self) -> "Moments":
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
        if self.singles:  # (written only when there are some: checkpoints without them read as before)
            d["singles"] = self.singles
        if self.fvcore is not None:
            d["fvcore"] = self.fvcore.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, device, channels: int, fvcore: torch.dtype | None = None) -> "Moments":
        """The state :meth:`to_dict` saved for a layer of ``channels`` (with the fvcore replay in that dtype);
        ValueError for anything else."""
        state = cls(None if fvcore is None else FvcoreReplay(fvcore, channels, device))
        n, batches = integer(d["n"], "n"), integer(d.get("batches"), "batches")
        singles = integer(d.get("singles", 0), "singles")
        if bool(n) != bool(batches) or batches > n or singles > batches:
            raise ValueError("values and batches do not agree")
        if n:
            values = {key: floats(d[key], key, channels) for key in ("mean", "m2", "batch_mean_sum", "batch_var_sum")}
            if min(values["m2"]) < 0 or min(values["batch_var_sum"]) < 0:
                raise ValueError("a negative sum of squares")
            tensors = [torch.tensor(values[key], dtype=torch.float64, device=device)
                       for key in ("mean", "m2", "batch_mean_sum", "batch_var_sum")]
            state._merge(n, tensors[0], tensors[1], batches, tensors[2], tensors[3], singles)
            if fvcore is not None:
                state.fvcore = FvcoreReplay.from_dict(d["fvcore"], fvcore, device, channels)
                if state.fvcore.tot != n:
                    raise ValueError("the fvcore replay counted other values")
        return state

    def result(self) -> dict:
        """Plain floats: population ``mean``/``var``, precise BN's ``batch_mean``/``batch_var``, ``n``, ``batches``
        (and ``fvcore``: the replay's ``{"mean", "var"}``, when replayed). ``batch_var`` is NaN when a batch
        held one value per channel (``single_batches`` of them): it has no unbiased variance, and PyTorch
        refuses such a batch in training."""
        if self.n == 0:
            raise ValueError("no batch reached this layer")
        batch_var = self.batch_var_sum / self.batches
        out = {"mean": self.mean.tolist(), "var": (self.m2 / self.n).tolist(),
               "batch_var": (batch_var.fill_(float("nan")) if self.singles else batch_var).tolist(), "n": self.n,
               "batch_mean": (self.batch_mean_sum / self.batches).tolist(), "batches": self.batches,
               "single_batches": self.singles}
        if self.fvcore is not None:
            out["fvcore"] = self.fvcore.estimate()
        return out


class Scratch:
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


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def all_merge(state: Moments, channels: int, device) -> Moments:
    """Every rank's state for one layer, merged in rank order (identical on every rank)."""
    if not _distributed():
        return state
    dist = torch.distributed
    if dist.get_backend() == "nccl" and torch.device(device).type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    local = state.pack(channels, device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    merged = Moments()
    for packed in gathered:  # rank order: the same arithmetic on every rank
        part = Moments.unpack(packed, channels)
        merged._merge(part.n, part.mean, part.m2, part.batches, part.batch_mean_sum, part.batch_var_sum,
                      part.singles)
    merged.fvcore = state.fvcore  # fvcore estimates on each rank alone (so ranks differ there, as with fvcore)
    return merged
