"""What the user sees on stderr while a run goes on: a bar, skips, notes."""

from __future__ import annotations

import os
import shutil
import sys
import time

from ..statistics.tally import Tally

FALLBACK_COLUMNS = 80  # for terminals that report a width of 0 (some CI consoles, serial lines)
FALLBACK_ROWS = 24


def terminal_size(stream) -> tuple[int, int]:
    """``(columns, lines)`` of the terminal ``stream`` writes to (``COLUMNS``/``LINES`` first); 0 when unknown.

    The bar's own terminal, not stdout's (``shutil.get_terminal_size``): stdout is often a pipe.
    """
    variables = [int(os.environ[name]) if os.environ.get(name, "").isdigit() else 0 for name in ("COLUMNS", "LINES")]
    try:
        own = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        own = shutil.get_terminal_size((0, 0))
    return variables[0] or own.columns, variables[1] or own.lines


def _has_descriptor(stream) -> bool:
    try:
        stream.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    return True


def printable(text: str) -> str:
    """``text`` with control characters escaped, so that a crafted file name cannot forge lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Progress:
    """A tqdm bar (when stderr is a terminal) plus one line per skipped file.

    Call it as ``on_chunk(tally, files_done)``. The bar shows images done of
    total, img/s, ETA, the live running mean per channel and the number of
    skipped files. ``quiet`` silences everything.
    """

    def __init__(self, total: int | None, done: int = 0, quiet: bool = False, stream=None,
                 tally: Tally | None = None, label: str | None = None, to=None):
        self.stream = stream or sys.stderr
        self.to = to  # where warning lines go instead of stderr (bnstats.compute: Python warnings); no bar then
        self.total = total  # None until known (a folder counted while it is walked): set_total
        self.quiet = quiet
        # a resumed run's earlier skips and notes were shown by the earlier run
        self.skips_shown = len(tally.skipped) if tally else 0
        self.shown: set[str] = set()  # skip lines shown: a count started again shows none twice
        self.done = done
        self.notes_shown: set[str] = set(tally.notes) if tally else set()
        self.last_postfix = 0.0
        self.tally = tally
        self.bar = None
        if not quiet and to is None and self.stream.isatty():
            from tqdm import tqdm  # imported only for a bar: ~20 ms of every run's start-up

            columns, rows = terminal_size(self.stream)
            # tqdm follows a resized terminal only through the stream's own descriptor, and draws nothing on a
            # terminal of 0x0 (0 rows for the bar): elsewhere it gets the size found here, or one of its own
            # and only "... (more hidden) ..." on a terminal of fewer than 3 rows (its bar sits past nrows - 1)
            rows = rows if rows >= 3 else 0
            dynamic = columns > 0 and rows > 0 and _has_descriptor(self.stream)
            self.bar = tqdm(total=total, initial=done, unit="img", file=self.stream, smoothing=0.1, desc=label,
                            dynamic_ncols=dynamic, ncols=None if dynamic else columns or FALLBACK_COLUMNS,
                            nrows=None if dynamic else rows or FALLBACK_ROWS)

    def __call__(self, tally: Tally, done: int) -> None:
        if done < self.done:
            # a count started again (a folder that also held archives or arrays, counted with them once
            # listed): the bar starts again, and the skips the first count showed are not shown twice
            self.skips_shown = 0
            if self.bar is not None:
                self.bar.reset(total=self.total)
        self.tally, self.done = tally, done
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if self.quiet:
            return
        for skip in tally.skipped[self.skips_shown :]:
            line = f"skipped {skip['path']}: {skip['error']}"
            if line not in self.shown:
                self.shown.add(line)
                self.warn(line)
        self.skips_shown = len(tally.skipped)
        for note in sorted(tally.notes - self.notes_shown):
            self.warn(note)
        self.notes_shown |= tally.notes
        now = time.monotonic()
        if self.bar is not None and now - self.last_postfix > 0.5:
            self.last_postfix = now
            self._postfix()

    def listed(self, selection, resumed: bool = False, checkpoint: str | None = None) -> None:
        """The items are listed: the bar's total, the listing's notes and skips, and where a resumed run starts."""
        self.set_total(len(selection))
        for note in selection.notes:
            self.warn(note)
        for skip in selection.errors:
            self.warn(f"skipped {skip['path']}: {skip['error']}")
        if resumed:
            self.warn(f"resuming from {checkpoint}: {self.done} of {len(selection)} files already counted")

    def set_total(self, total: int) -> None:
        """The number of items, once listed (the bar had none: a count while the folder was walked)."""
        self.total = total
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def advance(self, done: int) -> None:
        """Move the bar to ``done`` items (for work that has no tally to show)."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def _postfix(self) -> None:
        """Running mean per channel and skipped count, from the tally as it stands."""
        parts = []
        if self.tally is not None and self.tally.stats.pixels:
            mean = self.tally.stats.result()["mean"]
            parts.append("mean " + " ".join(f"{m:.4f}" for m in mean if m is not None))
        if self.tally is not None and self.tally.skipped:
            parts.append(f"skipped {len(self.tally.skipped)}")
        if parts:
            self.bar.set_postfix_str(", ".join(parts), refresh=False)

    def warn(self, message: str) -> None:
        """One line on stderr that does not break the bar."""
        if self.quiet:
            return
        if self.to is not None:
            self.to(message)
            return
        line = f"bnstats: warning: {printable(message)}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar, showing the final mean (not the last one sampled)."""
        if self.bar is not None:
            self._postfix()
            self.bar.close()
            self.bar = None
