"""Order-dependent features: observers fed each image's moments in item order.

The dataset statistics do not depend on order, so workers count partitions
in any order and the parent merges them. Some features do depend on order —
what a BatchNorm layer would hold after these batches (``--bn-momentum``),
and next a trace of the running estimates and sampling with a stopping
rule. Each is an :class:`Observer`: workers return every counted image's
compact moments (:class:`~bnstats.statistics.running.ExactMoments` for integer pixels,
:class:`~bnstats.statistics.running.MomentState` for float), and the parent feeds them to
every observer in item order, whatever the number of workers. An observer's
state is saved in checkpoints under its name; its result goes into the
report under its name. Merging results and running on Dask refuse runs with
observers, since their order spans the whole dataset.

A new observer is one subclass plus a line in ``bnstats.registry`` (group
``observers``; Python callers: ``registry.register("observers", name, cls)``).
The registry loads the built-in observers itself on first lookup, so a
report or checkpoint naming one is recognised whatever the caller imported
(``merge`` imports none of them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from .. import registry


class Observer:
    """Sees every counted image's moments, in item order (see the module docstring)."""

    name: ClassVar[str]

    def add(self, moments, max_value) -> None:
        """One image's moments; ``max_value`` is the data's unit-scale divisor."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called once after the last image."""

    def satisfied(self) -> bool:
        """True to stop the run after the current partition (e.g. ``--until-ci``); never by default."""
        return False

    def describe(self, bands, max_value) -> None:
        """The data's band names and unit-scale divisor, given before each partition's images."""

    def link(self, observers) -> None:
        """The run's other observers (a trace reads the BatchNorm and sampling state)."""

    def start(self, resumed: bool) -> None:
        """Called once before the run: afresh, or ``resumed`` from a checkpoint's state."""

    def result(self) -> dict:
        """What the report holds under :attr:`name`."""
        raise NotImplementedError

    def settings(self) -> dict:
        """What shapes the result, checked when a checkpoint is resumed."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The exact state, for checkpoints."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> "Observer":
        raise NotImplementedError


def registered() -> dict[str, type[Observer]]:
    """Every known observer by name (``bnstats.registry``'s ``observers``), the built-in ones always among them."""
    return registry.load("observers")


def feed(observers: Iterable[Observer], images: Iterable, max_value, bands=None) -> None:
    """Give each image's moments, in order, to every observer."""
    observers = list(observers)
    for observer in observers:
        observer.describe(bands, max_value)
    for moments in images:
        for observer in observers:
            observer.add(moments, max_value)
