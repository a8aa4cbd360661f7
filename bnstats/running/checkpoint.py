"""Saving and resuming progress: ``--checkpoint FILE``.

A checkpoint is constant-size: the exact tally of the items counted so far,
how far along the sorted item list they reach (the engine merges partitions
in item order, so the done items are always a prefix), and the state of each
observer by name. It also records a fingerprint of the run (the items'
canonical identities on this machine, their sizes and modification times,
and every setting that shapes the numbers; see
:meth:`bnstats.inputs.base.Source.fingerprint`), so a checkpoint is never
silently mixed into a different run or with files changed since.

**Integrity.** A checkpoint carries a SHA-256 of its own content; a
``compute`` checkpoint (:class:`Checkpoint`) whose content does not match
it is one line ("damaged"), never a resumed run with other numbers. Item
versions are kept per block (at most :data:`BLOCKS`), so a resume refused
for changed files names where the change is.

**The files it uses.** Every path comes from the command line: the
checkpoint ``FILE``, its skip list ``FILE.skipped`` and its lock
``FILE.lock`` (the trace is ``--trace``'s path, which the run's settings
must match). bnstats deletes or cuts back only files in its own format and
never follows a symlink or opens a FIFO for them. While a run owns the
checkpoint it holds a lock on ``FILE.lock`` (``fcntl.lockf``), so a second
run with the same ``--checkpoint`` stops at once, naming the owner's pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Sequence

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; runs sharing a checkpoint are not told (documented)
    fcntl = None

from .. import __version__, limits
from ..statistics.tally import Tally
from ..decoding.options import differences
from ..jsonio import ReportError, output_problem, read_json, write_atomic
from ..observers.base import Observer, registered
from ..output.state import tally_from_dict, tally_to_dict
from ..inputs.base import Source
from ..inputs.digests import combine_digests

FORMAT = 4  # 3: identities instead of keys, and item versions ("contents"); 4: blocks, digest, lock
BLOCKS = 64  # item versions are compared in at most this many blocks (to name where files changed)
MAX_SKIP_LINE = 1 << 20  # one skip entry of FILE.skipped: a path and a message, far below this
LOCK_TEXT = "bnstats checkpoint lock, pid {pid}\n"


class CheckpointError(ReportError):
    """The checkpoint belongs to another run, or is not a checkpoint."""


def fingerprint(files: Sequence[str], settings: dict, source: Source | None = None) -> dict:
    """What identifies a run: its items (as ``source`` identifies them), their versions, and its settings.

    The versions are digested per block of consecutive items (``blocks``, at most :data:`BLOCKS`, 16 hex
    digits each: constant size), so a resume can say which items changed.
    """
    source = source if source is not None else Source([])
    size = max(1, -(-len(files) // BLOCKS))
    parts = [source.fingerprint(files[i : i + size]) for i in range(0, len(files), size)]
    names = combine_digests(parts) if parts else {"count": 0, "digest": "0" * 64}
    blocks = [part["contents"][:16] for part in parts]
    return {"files": {"count": names["count"], "digest": names["digest"]}, "block_size": size,
            "blocks": blocks, "settings": settings}


def _digest(data: dict) -> str:
    """The SHA-256 of a checkpoint's content (everything but ``digest``), canonical JSON."""
    content = {k: v for k, v in data.items() if k != "digest"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class SavedRun:
    """What every checkpoint shares: its path, the fingerprint of the run, the check of a saved file
    against this run, atomic saves every ``interval`` seconds, and removal.

    Subclasses say what progress is (the payload of :meth:`write`, read back from :meth:`read`), and
    whether :meth:`read` refuses a file whose content does not match its digest (``verify_digest``).
    """

    verify_digest = False  # written always; checked by the subclasses that opt in

    def __init__(self, path: str, files: Sequence[str], settings: dict, interval: float = 5.0,
                 source: Source | None = None):
        self.path = path
        self.files = files
        self.fingerprint = fingerprint(files, settings, source)
        self.interval = interval
        self.last_save = time.monotonic()
        self.lock_path = path + ".lock"
        self._lock_fd: int | None = None

    def damaged(self) -> CheckpointError:
        return CheckpointError(f"{self.path} is a damaged bnstats checkpoint; delete it to start over")

    def lock(self) -> None:
        """Own the checkpoint for this run: a lock on ``FILE.lock`` held until :meth:`unlock` or exit;
        :class:`CheckpointError` naming the pid of a run that owns it already."""
        for _ in range(5):  # another run may delete the lock file between our open and our lock
            fd = _open_side_file(self.lock_path, os.O_RDWR | os.O_CREAT, "lock")
            text = os.pread(fd, 200, 0).decode("utf-8", "replace")
            if text and not re.fullmatch(r"bnstats checkpoint lock, pid \d+\n", text):
                os.close(fd)
                raise CheckpointError(f"{self.lock_path} is not a lock file bnstats wrote; move it away or use "
                                      "another --checkpoint")
            try:
                if fcntl is not None:  # lockf, not flock: a lock per process, so one process may reopen it
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                owner = re.search(r"pid (\d+)", text)
                raise CheckpointError(f"checkpoint {self.path} is in use by another run "
                                      f"(pid {owner.group(1) if owner else 'unknown'})") from None
            try:
                same = os.stat(self.lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, LOCK_TEXT.format(pid=os.getpid()).encode(), 0)
                self._lock_fd = fd
                return
            os.close(fd)
        raise CheckpointError(f"checkpoint {self.path} is in use by another run (its lock file keeps changing)")

    def unlock(self, remove: bool = False) -> None:
        """Let other runs have the checkpoint (``remove``: and delete the lock file, once the run is done)."""
        if self._lock_fd is None:
            return
        if remove:
            _unlink_quietly(self.lock_path)  # while still locked: a waiting run then sees a new inode
        os.close(self._lock_fd)  # closing releases the lock
        self._lock_fd = None

    def read(self) -> dict | None:
        """The saved checkpoint of this run, None if there is none; :class:`CheckpointError` if it is another
        run's (naming what differs), of another version, or damaged."""
        if not os.path.lexists(self.path):
            return None
        if not _regular(self.path, follow=True):  # a FIFO would hang the read; a symlink is like -o's
            raise CheckpointError(f"{self.path} is not a regular file: not a bnstats checkpoint")
        data = read_json(self.path)
        if not isinstance(data, dict) or "bnstats_checkpoint" not in data:
            raise CheckpointError(f"{self.path} is not a bnstats checkpoint")
        if data["bnstats_checkpoint"] != FORMAT:
            raise CheckpointError(f"{self.path} was made by another version of bnstats; delete it to start over")
        if self.verify_digest and data.get("digest") != _digest(data):
            raise self.damaged()
        saved = data.get("fingerprint")
        if not isinstance(saved, dict):
            raise self.damaged()
        if saved != self.fingerprint:
            other_files = saved.get("files") != self.fingerprint["files"]
            other_settings = saved.get("settings") != self.fingerprint["settings"]
            if not other_files and not other_settings:
                raise CheckpointError(f"{self.path}: {self._changed(saved)} since the checkpoint was saved (size "
                                      "or modification time); delete it to start over")
            reason = "a different file list" if other_files else "different settings"
            if not other_files and isinstance(saved.get("settings"), dict):
                changed = [d.split(":")[0] for d in differences(self.fingerprint["settings"], saved["settings"])]
                reason += f" ({', '.join(changed)})" if changed else ""
            raise CheckpointError(f"{self.path} is a checkpoint of another run, made with {reason}; delete it to "
                                  "start over, or rerun the command that made it")
        return data

    def _changed(self, saved: dict) -> str:
        """Which items changed: the first block whose versions differ from ``saved``'s, by its item names."""
        size, blocks = self.fingerprint["block_size"], self.fingerprint["blocks"]
        old = saved.get("blocks")
        if saved.get("block_size") != size or not isinstance(old, list) or len(old) != len(blocks):
            return "files changed"
        first = next((i for i, (a, b) in enumerate(zip(blocks, old)) if a != b), None)
        if first is None:
            return "files changed"
        start, stop = first * size, min((first + 1) * size, len(self.files))
        if stop - start == 1:
            return f"{self.files[start]} changed"
        return f"one of the items {self.files[start]} .. {self.files[stop - 1]} (items {start}..{stop - 1}) changed"

    def due(self) -> bool:
        """True once ``interval`` seconds passed since the last save."""
        return time.monotonic() - self.last_save >= self.interval

    def write(self, payload: dict) -> None:
        """Save the checkpoint now (atomically): the marker, the fingerprint and ``payload``."""
        data = {"bnstats_checkpoint": FORMAT, "bnstats_version": __version__, "fingerprint": self.fingerprint,
                **payload}
        data["digest"] = _digest(data)
        write_atomic(self.path, json.dumps(data) + "\n")
        self.last_save = time.monotonic()

    def remove(self) -> None:
        """Delete the checkpoint (and the lock) after the run finished and its result is written."""
        _unlink_quietly(self.path)
        self.unlock(remove=True)


class Checkpoint(SavedRun):
    """Progress of one ``compute`` run: the tally, how many items are done, the observers' states.

    Call :meth:`maybe_save` from the ``on_chunk`` callback of
    :func:`bnstats.running.engine.count_selection`, :meth:`save` once more when interrupted,
    :meth:`remove` when done.
    """

    verify_digest = True  # an edited tally or observer state would resume to other numbers, exit 0

    def __init__(self, path: str, files: Sequence[str], settings: dict, interval: float = 5.0,
                 source: Source | None = None):
        super().__init__(path, files, settings, interval, source)
        self.skipped_path = path + ".skipped"  # the skip list, appended to: the checkpoint stays small
        self.skips_saved = 0

    def load(self) -> tuple[Tally, int, dict[str, Observer]] | None:
        """Own the checkpoint (:meth:`lock`), and return its saved ``(tally, items done, observers by name)``
        if the file exists, else None.

        Raises :class:`CheckpointError` if it is in use by another run, was made by a different run, or is
        damaged; the observers must be the run's own (by name and settings), a trace path included.
        """
        problem = output_problem(self.skipped_path)
        if problem:
            raise CheckpointError(f"cannot write {self.skipped_path}: {problem}")
        self.lock()
        data = self.read()
        if data is None:
            self._remove_old_skips()  # the skip list of a checkpoint deleted since
            return None
        damaged = self.damaged()
        if not isinstance(data.get("tally"), dict):
            raise damaged
        done = data.get("files_done")
        if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= self.fingerprint["files"]["count"]:
            raise damaged
        observers = self._load_observers(data.get("observers", {}), damaged)
        tally = tally_from_dict(data["tally"], self.path)
        count = data["tally"].get("skipped_count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise damaged
        tally.skipped = self._load_skips(count, damaged) + tally.skipped
        return tally, done, observers

    def _load_observers(self, states, damaged: CheckpointError) -> dict[str, Observer]:
        """The saved observers, each rebuilt by its class (the registry knows every built-in one), and
        each with the settings of this run's observer of that name: paths come from the command line."""
        expected = self.fingerprint["settings"].get("observers", {}) if isinstance(
            self.fingerprint["settings"], dict) else {}
        if not isinstance(states, dict) or set(states) != set(expected):
            raise damaged
        observers = {}
        try:
            for name, state in states.items():
                observers[name] = registered()[name].from_dict(state)
                if observers[name].settings() != expected[name]:
                    raise ValueError(f"{name} settings differ from the run's")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, ZeroDivisionError):
            raise damaged from None
        return observers

    def _remove_old_skips(self) -> None:
        """Delete a skip list left by an earlier checkpoint of this name, if it is one bnstats wrote; refuse
        in one line to delete anything else (a user's file that happens to have the name)."""
        if not os.path.lexists(self.skipped_path):
            return
        if _regular(self.skipped_path):
            fd = _open_side_file(self.skipped_path, os.O_RDONLY, "skip list")
            with os.fdopen(fd, "rb") as f:
                first = f.readline(MAX_SKIP_LINE)
            if not first or _skip_entry(first) is not None:
                _unlink_quietly(self.skipped_path)
                return
        raise CheckpointError(f"{self.skipped_path} is not a skip list bnstats wrote; move it away or use another "
                              "--checkpoint")

    def _load_skips(self, count: int, damaged: CheckpointError) -> list[dict]:
        """The first ``count`` skip entries of the side file; entries appended after the
        checkpoint was last saved are dropped (the run counts those items again)."""
        self.skips_saved = 0
        if count == 0:
            self._remove_old_skips()
            return []
        entries, size, budget = [], 0, limits.current().file_bytes
        try:
            with os.fdopen(_open_side_file(self.skipped_path, os.O_RDWR, "skip list"), "r+b") as f:
                while len(entries) < count:
                    line = f.readline(MAX_SKIP_LINE)
                    entry = _skip_entry(line)
                    size += len(line)
                    if entry is None or size > budget:
                        raise damaged
                    entries.append(entry)
                f.truncate(size)
        except (OSError, CheckpointError):
            raise damaged from None
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
            fd = _open_side_file(self.skipped_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "skip list")
            with os.fdopen(fd, "a", encoding="utf-8") as f:
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
        _unlink_quietly(self.skipped_path)
        super().remove()  # the lock last: a waiting run finds nothing of ours


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _regular(path: str, follow: bool = False) -> bool:
    """Whether ``path`` (itself, or with ``follow`` its symlink's target) is a regular file."""
    try:
        return stat.S_ISREG(os.stat(path, follow_symlinks=follow).st_mode)
    except OSError:
        return False


def _open_side_file(path: str, flags: int, what: str) -> int:
    """A descriptor of the checkpoint's side file ``path`` (skip list, lock): never through a symlink,
    never blocking on a FIFO, and only a regular file; :class:`CheckpointError` in one line otherwise."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        kind = "a symlink" if os.path.islink(path) else exc.strerror
        raise CheckpointError(f"cannot use {path} as the checkpoint's {what}: {kind}; move it away or use "
                              "another --checkpoint") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"cannot use {path} as the checkpoint's {what}: not a regular file; move it away "
                              "or use another --checkpoint")
    return fd


def _skip_entry(line: bytes) -> dict | None:
    """One line of a skip list as ``{"path", "error"}``, or None if it is not one (or not a whole line)."""
    if not line.endswith(b"\n"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(entry, dict) and {"path", "error"} <= set(entry)
            and isinstance(entry["path"], str) and isinstance(entry["error"], str)):
        return None
    return entry
