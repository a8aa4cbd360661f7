"""What a BatchNorm layer would hold after seeing the images: ``--bn-momentum``.

In training mode ``torch.nn.BatchNorm2d`` keeps *moving* statistics: for each
batch it computes the per-channel batch mean and (unbiased) variance and
updates its buffers

    running_mean = (1 − m) · running_mean + m · batch_mean
    running_var  = (1 − m) · running_var  + m · batch_var · n / (n − 1)

starting from 0 and 1, with ``m = momentum`` (PyTorch's default 0.1), or,
with ``momentum=None`` ("cumulative"), ``m = 1 / num_batches_tracked`` — the
running update μk = μk−1 + (xk − μk−1)/k over batches. Unlike the dataset
statistics, these depend on batch order and size, so they are computed
sequentially in file order, batches of ``batch_size`` readable images (the
last may be smaller), on the images as counted (mode, resize, crop).

Each image reaches the tracker as its exact per-channel moments: count, sum
and sum of squares (Python ints for integer data) or count, mean and M2
(float data); batch statistics follow exactly (integers) or by Chan's merge.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def image_moments(counts: np.ndarray | None, pixels: np.ndarray | None) -> tuple:
    """Per-channel moments of one image: ``("int", n, sums, squares)`` or ``("float", n, means, m2s)``."""
    if counts is not None:
        values = np.arange(counts.shape[1], dtype=np.int64)
        return ("int", int(counts[0].sum()), (counts @ values).tolist(), (counts @ (values * values)).tolist())
    flat = pixels.reshape(-1, pixels.shape[-1])
    if flat.dtype.kind == "u":
        x = flat.astype(np.int64)
        return ("int", len(x), x.sum(axis=0).tolist(), (x * x).sum(axis=0).tolist())
    x = flat.astype(np.float64)
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    return ("float", len(x), mean.tolist(), np.square(x - mean).sum(axis=0).tolist())


class BatchNormTracker:
    """Feed image moments in file order; read PyTorch's running buffers.

    ``momentum`` is a float, or None for the cumulative moving average.
    ``max_value`` converts integer data to unit scale (what ``ToTensor()``
    feeds the network).
    """

    def __init__(self, batch_size: int, momentum: float | None = 0.1):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.momentum = momentum
        self.running_mean: list[float] | None = None
        self.running_var: list[float] | None = None
        self.num_batches_tracked = 0
        self.max_value = None
        self._batch: list[tuple] = []  # moments of the images of the unfinished batch

    def add(self, moments: tuple, max_value) -> None:
        """Count one image's moments (from :func:`image_moments`)."""
        self.max_value = max_value
        self._batch.append(moments)
        if len(self._batch) == self.batch_size:
            self._update()

    def finish(self) -> None:
        """Feed the last, smaller batch (as a DataLoader without drop_last does)."""
        if self._batch:
            self._update()

    def _update(self) -> None:
        mean, var, n = _batch_stats(self._batch, self.max_value)
        self._batch = []
        if n == 0:  # every pixel ignored (--ignore-value): nothing to normalize
            return
        if self.running_mean is None:
            self.running_mean, self.running_var = [0.0] * len(mean), [1.0] * len(mean)
        self.num_batches_tracked += 1
        m = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        unbiased = [v * n / (n - 1) if n > 1 else v for v in var]
        self.running_mean = [(1 - m) * r + m * b for r, b in zip(self.running_mean, mean)]
        self.running_var = [(1 - m) * r + m * b for r, b in zip(self.running_var, unbiased)]

    def result(self) -> dict:
        """The ``bn`` object of the report."""
        return {
            "running_mean": self.running_mean,
            "running_var": self.running_var,
            "momentum": "cumulative" if self.momentum is None else self.momentum,
            "batch_size": self.batch_size,
            "num_batches_tracked": self.num_batches_tracked,
        }

    def to_dict(self) -> dict:
        """Exact state, for checkpoints (the unfinished batch included)."""
        return {**self.result(), "max_value": self.max_value, "batch": [list(m) for m in self._batch]}

    @classmethod
    def from_dict(cls, d: dict) -> "BatchNormTracker":
        momentum = None if d["momentum"] == "cumulative" else d["momentum"]
        tracker = cls(d["batch_size"], momentum)
        tracker.running_mean, tracker.running_var = d["running_mean"], d["running_var"]
        tracker.num_batches_tracked = d["num_batches_tracked"]
        tracker.max_value = d["max_value"]
        tracker._batch = [tuple(m) for m in d["batch"]]
        return tracker


def _batch_stats(batch: list[tuple], max_value) -> tuple[list[float], list[float], int]:
    """Per-channel mean and biased variance of a batch, in unit scale, and its n per channel."""
    if batch[0][0] == "int":
        n = sum(m[1] for m in batch)
        if n == 0:
            return [], [], 0
        channels = len(batch[0][2])
        sums = [sum(m[2][c] for m in batch) for c in range(channels)]
        squares = [sum(m[3][c] for m in batch) for c in range(channels)]
        mean = [float(Fraction(s, n * max_value)) for s in sums]
        var = [float(Fraction(n * q - s * s, n * n * max_value * max_value)) for s, q in zip(sums, squares)]
        return mean, var, n
    n, mean, m2 = 0, None, None
    for _, nb, mb, m2b in batch:  # Chan et al.'s pairwise merge
        mb, m2b = np.asarray(mb), np.asarray(m2b)
        if n == 0:
            n, mean, m2 = nb, mb, m2b
        elif nb:
            delta = mb - mean
            total = n + nb
            mean = mean + delta * (nb / total)
            m2 = m2 + m2b + delta * delta * (n * nb / total)
            n = total
    if n == 0:
        return [], [], 0
    return (mean / max_value).tolist(), (m2 / n / max_value**2).tolist(), n
