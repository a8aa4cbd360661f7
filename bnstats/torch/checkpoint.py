"""``bnstats recalibrate --checkpoint``: the file a recalibration goes on from after a stop."""

from __future__ import annotations

from ..running.checkpoint import SavedRun
from ..statistics.validate import integer
from .batches import ImageBatches


class RecalibrationCheckpoint(SavedRun):
    """``--checkpoint``: where counting stands after the last whole batch, the items read, the skipped ones.

    Train mode makes one pass; sequential mode one per layer, and also keeps
    the forward order and the states of the layers done. Saved atomically
    every few seconds, at the end of each layer's pass and on a stop; a run
    with the same fingerprint (its files and their versions; model, weights,
    preprocessing, batch size, mode) goes on from it, and gives the same
    bytes as a run never stopped.
    """

    verify_digest = True  # an edited layer state would resume to other buffers in the model, exit 0

    def __init__(self, path: str, selection, settings: dict):
        super().__init__(path, selection.keys, settings, source=selection.source)
        self.saved = {"states": {}, "batches": 0, "order": None, "finished": {}}
        self.items, self.skipped = 0, {}
        self.resume = self.source = self._last = None
        self.lock()  # a second run on this checkpoint stops at once, naming the owner (as compute's)
        try:
            data = self.read()
        except BaseException:
            self.unlock()
            raise
        self.resumed = data is not None
        if data is not None:
            try:
                order = data["order"]
                self.saved = {"states": dict(data["states"]), "batches": data["batches"],
                              "order": None if order is None else ([str(n) for n in order[0]], bool(order[1])),
                              "finished": dict(data["finished"])}
                self.items, self.skipped = integer(data["items"], "items", len(selection)), dict(data["skipped"])
                integer(self.saved["batches"], "batches")
            except (KeyError, TypeError, ValueError, IndexError):
                self.unlock()
                raise self.damaged() from None

    def follow(self, resume, batches: ImageBatches) -> None:
        """Save the progress ``resume`` records (``bnstats.torch.Resume``) as ``batches`` are read."""
        self.resume, self.source = resume, batches

    def after_batch(self, states: dict) -> None:
        """Keep the state at this batch boundary; write it if the last save is a while ago."""
        self._keep(states, self.resume.batches, self.source.position)
        if self.due():
            self.save()

    def after_layer(self, name: str) -> None:
        """A layer's pass has ended (sequential mode): the next one starts from nothing."""
        self._keep({}, 0, 0)
        self.save()

    def _keep(self, states, batches, items) -> None:
        order = self.resume.order and [list(self.resume.order[0]), self.resume.order[1]]
        self._last = {"items": items, "batches": batches, "skipped": dict(self.source.skipped), "order": order,
                      "finished": dict(self.resume.finished), "states": states}

    def save(self) -> bool:
        """Write the last batch boundary kept; False when there is none yet (nothing counted)."""
        if self._last is None:
            return False
        last = self._last
        self.write({**last, "states": {name: state.to_dict() for name, state in last["states"].items()}})
        return True
