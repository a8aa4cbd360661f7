"""Saving and resuming progress: ``--checkpoint FILE``.

A checkpoint is constant-size: the exact tally of the files counted so far
and how far along the sorted file list they reach (the engine merges chunks
in file order, so the done files are always a prefix). It also records a
fingerprint of the run (the file list and every setting that shapes the
numbers), so a checkpoint is never silently mixed into a different run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from . import __version__
from .engine import Tally
from .report import ReportError, files_digest, read_json, tally_from_dict, tally_to_dict, write_atomic

FORMAT = 1


class CheckpointError(ReportError):
    """The checkpoint belongs to another run, or is not a checkpoint."""


def fingerprint(files: Sequence[str], settings: dict) -> dict:
    """What identifies a run: its file list (digested as in reports) and its settings."""
    return {"files": files_digest(files), "settings": settings}


class Checkpoint:
    """Progress of one run, written atomically to ``path`` every ``interval`` seconds.

    Call :meth:`maybe_save` from the ``on_chunk`` callback of
    :func:`bnstats.engine.compute`, :meth:`save` once more when interrupted,
    :meth:`remove` when done.
    """

    def __init__(self, path: str, files: Sequence[str], settings: dict, interval: float = 5.0):
        self.path = path
        self.fingerprint = fingerprint(files, settings)
        self.interval = interval
        self.last_save = time.monotonic()

    def load(self) -> tuple[Tally, int, dict | None] | None:
        """The saved ``(tally, files_done, batchnorm state)`` if the file exists, else None.

        Raises :class:`CheckpointError` if it was made by a different run.
        """
        if not os.path.exists(self.path):
            return None
        data = read_json(self.path)
        if not isinstance(data, dict) or data.get("bnstats_checkpoint") != FORMAT:
            raise CheckpointError(f"{self.path} is not a bnstats checkpoint")
        saved = data.get("fingerprint")
        if not isinstance(saved, dict) or not isinstance(data.get("tally"), dict):
            raise CheckpointError(f"{self.path} is a damaged bnstats checkpoint; delete it to start over")
        if saved != self.fingerprint:
            other_files = saved.get("files") != self.fingerprint["files"]
            reason = "a different file list" if other_files else "different settings"
            if not other_files:
                ours, theirs = self.fingerprint["settings"], saved.get("settings", {})
                changed = [k for k in ours if ours.get(k) != theirs.get(k)]
                reason += f" ({', '.join(changed)})" if changed else ""
            raise CheckpointError(
                f"{self.path} was made with {reason}; delete it to start over, or rerun the command that made it"
            )
        try:
            done = int(data["files_done"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{self.path} is a damaged bnstats checkpoint; delete it to start over") from None
        return tally_from_dict(data["tally"], self.path), done, data.get("batchnorm")

    def maybe_save(self, tally: Tally, done: int, batchnorm=None) -> None:
        """Save if ``interval`` seconds passed since the last save."""
        if time.monotonic() - self.last_save >= self.interval:
            self.save(tally, done, batchnorm)

    def save(self, tally: Tally, done: int, batchnorm=None) -> None:
        """Write the checkpoint now (atomically)."""
        data = {
            "bnstats_checkpoint": FORMAT,
            "bnstats_version": __version__,
            "fingerprint": self.fingerprint,
            "files_done": done,
            "tally": tally_to_dict(tally),
        }
        if batchnorm is not None:
            data["batchnorm"] = batchnorm.to_dict()
        write_atomic(self.path, json.dumps(data) + "\n")
        self.last_save = time.monotonic()

    def remove(self) -> None:
        """Delete the checkpoint (after the run finished and its result is written)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
