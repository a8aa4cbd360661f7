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
sequentially in item order, batches of ``batch_size`` readable images (the
last may be smaller), on the images as counted (mode, resize, crop). A batch
with fewer than two values per channel left (``--ignore-value``; PyTorch
refuses one value in training) is not a step; its pixels still count in the
exact values.

The tracker is an observer (``bnstats.observers.base``): each image reaches it as
its exact moments, and a batch's statistics are the core's exact sum of
integer moments or Chan's merge of float ones (``bnstats.statistics.running``).
"""

from __future__ import annotations

from .base import Observer
from ..statistics.states import combine_moments, moments_from_dict, moments_to_dict
from ..statistics.validate import floats, integer

CUMULATIVE = "cumulative"  # the momentum of a cumulative moving average (PyTorch's momentum=None)


class BatchNormTracker(Observer):
    """Feed image moments in item order; read PyTorch's running buffers.

    ``momentum`` is a float, or None (or :data:`CUMULATIVE`) for the
    cumulative moving average. ``max_value`` converts integer data to unit
    scale (what ``ToTensor()`` feeds the network).
    """

    name = "bn"

    def __init__(self, batch_size: int, momentum: float | str | None = 0.1):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.momentum = None if momentum == CUMULATIVE else momentum
        self.running_mean: list[float] | None = None
        self.running_var: list[float] | None = None
        self.num_batches_tracked = 0
        self.max_value = None
        self._batch: list = []  # moments of the images of the unfinished batch
        self.total = None  # moments of every batch so far: the exact dataset statistics
        self.precise_sums: list[list[float]] | None = None  # Σ batch means, Σ unbiased batch variances

    def add(self, moments, max_value) -> None:
        """Count one image's moments (:class:`ExactMoments` or :class:`MomentState`)."""
        self.max_value = max_value
        self._batch.append(moments)
        if len(self._batch) == self.batch_size:
            self._update()

    def finish(self) -> None:
        """Feed the last, smaller batch (as a DataLoader without drop_last does)."""
        if self._batch:
            self._update()

    def _update(self) -> None:
        batch = combine_moments(self._batch)
        self._batch = []
        n = batch.n
        if n == 0:  # every pixel ignored (--ignore-value): nothing to normalize
            return
        self.total = batch if self.total is None else combine_moments([self.total, batch])
        if n == 1:  # one value per channel has no unbiased variance: PyTorch refuses such a batch in training
            return
        mean, var = batch.unit_mean_var(self.max_value)
        if self.running_mean is None:
            self.running_mean, self.running_var = [0.0] * len(mean), [1.0] * len(mean)
            self.precise_sums = [[0.0] * len(mean), [0.0] * len(mean)]
        self.num_batches_tracked += 1
        m = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        unbiased = [v * n / (n - 1) for v in var]
        self.running_mean = [(1 - m) * r + m * b for r, b in zip(self.running_mean, mean)]
        self.running_var = [(1 - m) * r + m * b for r, b in zip(self.running_var, unbiased)]
        self.precise_sums = [[a + b for a, b in zip(self.precise_sums[0], mean)],
                             [a + b for a, b in zip(self.precise_sums[1], unbiased)]]

    def exact(self) -> tuple[list[float], list[float]] | None:
        """The dataset's exact mean and population variance (unit scale) over the batches so far."""
        return None if self.total is None else self.total.unit_mean_var(self.max_value)

    def precise_bn(self) -> tuple[list[float], list[float]] | None:
        """The classic precise-BN estimate (pycls; fvcore before 2021; ``torch.optim.swa_utils.update_bn``):
        the plain average of per-batch means and of per-batch (unbiased) variances, which leaves out the
        spread between batch means."""
        if not self.num_batches_tracked:
            return None
        k = self.num_batches_tracked
        return [v / k for v in self.precise_sums[0]], [v / k for v in self.precise_sums[1]]

    def settings(self) -> dict:
        return {"momentum": CUMULATIVE if self.momentum is None else self.momentum, "batch_size": self.batch_size}

    def result(self) -> dict:
        """The ``bn`` object of the report: the buffers, and how far they and precise-BN's
        estimate are from the dataset's exact mean and variance."""
        out = {
            "running_mean": self.running_mean,
            "running_var": self.running_var,
            **self.settings(),
            "num_batches_tracked": self.num_batches_tracked,
        }
        exact, precise = self.exact(), self.precise_bn()
        if exact is not None:
            out["exact_mean"], out["exact_var"] = exact
        if exact is not None and precise is not None:  # (no step yet: only batches of one value per channel)
            out["distance"] = _distances(self.running_mean, self.running_var, exact)
            out["precise_bn"] = {"running_mean": precise[0], "running_var": precise[1],
                                 "distance": _distances(*precise, exact)}
        return out

    def to_dict(self) -> dict:
        """Exact state, for checkpoints (the unfinished batch included)."""
        return {**self.result(), "max_value": self.max_value, "batch": [moments_to_dict(m) for m in self._batch],
                "total": None if self.total is None else moments_to_dict(self.total),
                "precise_sums": self.precise_sums}

    @classmethod
    def from_dict(cls, d: dict) -> "BatchNormTracker":
        """The state :meth:`to_dict` wrote; ValueError or TypeError for anything else."""
        batch_size, momentum = d["batch_size"], d["momentum"]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError("batch_size must be a positive integer")
        if momentum != CUMULATIVE and (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                                       or not 0 < momentum <= 1):
            raise ValueError("momentum must be in (0, 1] or 'cumulative'")
        tracker = cls(batch_size, momentum)
        running = d["running_mean"], d["running_var"]
        if running != (None, None):
            tracker.running_mean, tracker.running_var = (floats(r, "running buffers") for r in running)
        tracker.num_batches_tracked = integer(d["num_batches_tracked"], "num_batches_tracked")
        tracker.max_value = d["max_value"]
        if tracker.max_value not in (None, 1, 255, 65535):
            raise ValueError("max_value must be 1, 255 or 65535")
        if not isinstance(d["batch"], list) or len(d["batch"]) >= batch_size:
            raise ValueError("batch must be a list shorter than batch_size")
        tracker._batch = [moments_from_dict(m) for m in d["batch"]]
        tracker.total = None if d.get("total") is None else moments_from_dict(d["total"])
        sums = d.get("precise_sums")
        if sums is not None:
            if not isinstance(sums, list) or len(sums) != 2:
                raise ValueError("precise_sums must be two lists")
            tracker.precise_sums = [floats(v, "precise_sums") for v in sums]
        channels = {len(v) for v in (tracker.running_mean, tracker.running_var, *(tracker.precise_sums or ()))
                    if v is not None}
        started = tracker.num_batches_tracked > 0  # a total without a step: batches of one value per channel
        steps = (tracker.running_mean, tracker.precise_sums)
        if len(channels) > 1 or any((part is None) == started for part in steps) or (started and tracker.total is None):
            raise ValueError("the running buffers, precise_sums, total and num_batches_tracked do not agree")
        _check_moments(tracker, channels)
        return tracker


def _check_moments(tracker: BatchNormTracker, channels: set[int]) -> None:
    """The saved moments must be ones the report can divide: a positive pixel count in ``total``, a
    ``max_value`` once any image was fed, and the running buffers' channel count throughout (a checkpoint's
    state is read back into a report, where a zero count or a missing scale would be a traceback)."""
    moments = [*tracker._batch, *([tracker.total] if tracker.total is not None else [])]
    if moments and tracker.max_value is None:
        raise ValueError("max_value must be set once images were fed")
    if tracker.total is not None and tracker.total.n <= 0:
        raise ValueError("total must count at least one pixel")
    widths = channels | {len(m.sums) if hasattr(m, "sums") else len(m.mean) for m in moments}
    if len(widths) > 1:
        raise ValueError("the saved moments and buffers disagree on the channel count")


def _distances(mean: list[float], var: list[float], exact: tuple[list[float], list[float]]) -> dict:
    """``{"running_mean": {"abs": [...], "rel": [...]}, "running_var": {...}}`` from the exact values."""
    def gap(estimate, truth):
        absolute = [abs(e - t) for e, t in zip(estimate, truth)]
        return {"abs": absolute, "rel": [a / abs(t) if t else None for a, t in zip(absolute, truth)]}
    return {"running_mean": gap(mean, exact[0]), "running_var": gap(var, exact[1])}
