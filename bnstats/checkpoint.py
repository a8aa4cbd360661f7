"""Saving and resuming progress: ``--checkpoint FILE``.

A checkpoint is constant-size: the exact tally of the items counted so far,
how far along the sorted item list they reach (the engine merges partitions
in item order, so the done items are always a prefix), and the state of each
observer by name. It also records a fingerprint of the run (the items'
canonical identities on this machine, their sizes and modification times,
and every setting that shapes the numbers; see
:meth:`bnstats.sources.Source.fingerprint`), so a checkpoint is never
silently mixed into a different run or with files changed since.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from . import __version__
from .count import Tally
from .decode import differences
from .jsonio import ReportError, read_json, write_atomic
from .observers import OBSERVERS, Observer
from .report import tally_from_dict, tally_to_dict
from .sources import Source

FORMAT = 3  # 3: identities instead of keys, and item versions ("contents")


class CheckpointError(ReportError):
    """The checkpoint belongs to another run, or is not a checkpoint."""


def fingerprint(files: Sequence[str], settings: dict, source: Source | None = None) -> dict:
    """What identifies a run: its items (as ``source`` identifies them), their versions, and its settings."""
    found = (source if source is not None else Source([])).fingerprint(files)
    return {"files": {"count": found["count"], "digest": found["digest"]}, "contents": found["contents"],
            "settings": settings}


class SavedRun:
    """What every checkpoint shares: its path, the fingerprint of the run, the check of a saved file
    against this run, atomic saves every ``interval`` seconds, and removal.

    Subclasses say what progress is (the payload of :meth:`write`, read back from :meth:`read`).
    """

    def __init__(self, path: str, files: Sequence[str], settings: dict, interval: float = 5.0,
                 source: Source | None = None):
        self.path = path
        self.fingerprint = fingerprint(files, settings, source)
        self.interval = interval
        self.last_save = time.monotonic()

    def damaged(self) -> CheckpointError:
        return CheckpointError(f"{self.path} is a damaged bnstats checkpoint; delete it to start over")

    def read(self) -> dict | None:
        """The saved checkpoint of this run, None if there is none; :class:`CheckpointError` if it is another
        run's (naming what differs), of another version, or damaged."""
        if not os.path.exists(self.path):
            return None
        data = read_json(self.path)
        if not isinstance(data, dict) or "bnstats_checkpoint" not in data:
            raise CheckpointError(f"{self.path} is not a bnstats checkpoint")
        if data["bnstats_checkpoint"] != FORMAT:
            raise CheckpointError(f"{self.path} was made by another version of bnstats; delete it to start over")
        saved = data.get("fingerprint")
        if not isinstance(saved, dict):
            raise self.damaged()
        if saved != self.fingerprint:
            other_files = saved.get("files") != self.fingerprint["files"]
            other_settings = saved.get("settings") != self.fingerprint["settings"]
            if not other_files and not other_settings:
                raise CheckpointError(
                    f"{self.path}: files changed since the checkpoint was saved (size or modification time); "
                    "delete it to start over")
            reason = "a different file list" if other_files else "different settings"
            if not other_files and isinstance(saved.get("settings"), dict):
                changed = [d.split(":")[0] for d in differences(self.fingerprint["settings"], saved["settings"])]
                reason += f" ({', '.join(changed)})" if changed else ""
            raise CheckpointError(f"{self.path} is a checkpoint of another run, made with {reason}; delete it to "
                                  "start over, or rerun the command that made it")
        return data

    def due(self) -> bool:
        """True once ``interval`` seconds passed since the last save."""
        return time.monotonic() - self.last_save >= self.interval

    def write(self, payload: dict) -> None:
        """Save the checkpoint now (atomically): the marker, the fingerprint and ``payload``."""
        data = {"bnstats_checkpoint": FORMAT, "bnstats_version": __version__, "fingerprint": self.fingerprint,
                **payload}
        write_atomic(self.path, json.dumps(data) + "\n")
        self.last_save = time.monotonic()

    def remove(self) -> None:
        """Delete the checkpoint after the run finished and its result is written."""
        _unlink_quietly(self.path)


class Checkpoint(SavedRun):
    """Progress of one ``compute`` run: the tally, how many items are done, the observers' states.

    Call :meth:`maybe_save` from the ``on_chunk`` callback of
    :func:`bnstats.engine.compute`, :meth:`save` once more when interrupted,
    :meth:`remove` when done.
    """

    def __init__(self, path: str, files: Sequence[str], settings: dict, interval: float = 5.0,
                 source: Source | None = None):
        super().__init__(path, files, settings, interval, source)
        self.skipped_path = path + ".skipped"  # the skip list, appended to: the checkpoint stays small
        self.skips_saved = 0

    def load(self) -> tuple[Tally, int, dict[str, Observer]] | None:
        """The saved ``(tally, items done, observers by name)`` if the file exists, else None.

        Raises :class:`CheckpointError` if it was made by a different run or is damaged.
        """
        data = self.read()
        if data is None:
            _unlink_quietly(self.skipped_path)  # the skip list of a checkpoint deleted since: not ours
            return None
        damaged = self.damaged()
        if not isinstance(data.get("tally"), dict):
            raise damaged
        done = data.get("files_done")
        if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= self.fingerprint["files"]["count"]:
            raise damaged
        observers = {}
        try:
            for name, state in dict(data.get("observers", {})).items():
                observers[name] = OBSERVERS[name].from_dict(state)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise damaged from None
        tally = tally_from_dict(data["tally"], self.path)
        count = data["tally"].get("skipped_count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise damaged
        tally.skipped = self._load_skips(count, damaged) + tally.skipped
        return tally, done, observers

    def _load_skips(self, count: int, damaged: CheckpointError) -> list[dict]:
        """The first ``count`` skip entries of the side file; entries appended after the
        checkpoint was last saved are dropped (the run counts those items again)."""
        if count == 0:
            self.skips_saved = 0
            if os.path.exists(self.skipped_path):
                os.truncate(self.skipped_path, 0)
            return []
        entries, size = [], 0
        try:
            with open(self.skipped_path, "rb") as f:
                for line in f:
                    if len(entries) == count:
                        break
                    entries.append(json.loads(line))
                    size += len(line)
        except (OSError, ValueError):
            raise damaged from None
        if len(entries) < count or not all(isinstance(e, dict) and isinstance(e.get("path"), str)
                                           and isinstance(e.get("error"), str) for e in entries):
            raise damaged
        os.truncate(self.skipped_path, size)
        self.skips_saved = count
        return entries

    def maybe_save(self, tally: Tally, done: int, observers: Sequence[Observer] = ()) -> None:
        """Save if ``interval`` seconds passed since the last save."""
        if self.due():
            self.save(tally, done, observers)

    def save(self, tally: Tally, done: int, observers: Sequence[Observer] = ()) -> None:
        """Write the checkpoint now (atomically).

        New skip entries are appended to the side file first (and synced), so
        the checkpoint, which says how many of them count, never points past
        what is on disk.
        """
        new = tally.skipped[self.skips_saved :]
        if new:
            with open(self.skipped_path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(entry) + "\n" for entry in new)
                f.flush()
                os.fsync(f.fileno())
            self.skips_saved = len(tally.skipped)
        state = tally_to_dict(tally)
        state["skipped"], state["skipped_count"] = [], len(tally.skipped)
        self.write({"files_done": done, "tally": state,
                    "observers": {observer.name: observer.to_dict() for observer in observers}})

    def remove(self) -> None:
        """Delete the checkpoint and its skip list (after the run finished and its result is written)."""
        super().remove()
        _unlink_quietly(self.skipped_path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
