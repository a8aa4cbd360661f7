"""The replay of fvcore's ``update_bn_stats`` (detectron2's precise BN since 2021) in a layer's buffer dtype.

fvcore estimates the population variance as ``E[x²] − E[x]²`` from the
batches' buffers, in their dtype; :class:`FvcoreReplay` does the same
arithmetic on the exact batch moments so that the recalibration report
shows what that costs (in float32, or float16 buffers). It is saved in
checkpoints as the hex of its tensors' bytes.
"""

from __future__ import annotations

import copy

import torch

from ..statistics.validate import integer


class FvcoreReplay:
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

    def copy(self) -> "FvcoreReplay":
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
    def from_dict(cls, d: dict, dtype: torch.dtype, device, channels: int) -> "FvcoreReplay":
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
