"""What the user sees on stderr while a run goes on: a bar, skips, notes."""

from __future__ import annotations

import sys
import time

from .count import Tally


class Progress:
    """A tqdm bar (when stderr is a terminal) plus one line per skipped file.

    Call it as ``on_chunk(tally, files_done)``. The bar shows images done of
    total, img/s, ETA and the live running mean per channel. ``quiet``
    silences everything.
    """

    def __init__(self, total: int, done: int = 0, quiet: bool = False, stream=None, tally: Tally | None = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        # a resumed run's earlier skips and notes were shown by the earlier run
        self.skips_shown = len(tally.skipped) if tally else 0
        self.notes_shown: set[str] = set(tally.notes) if tally else set()
        self.last_postfix = 0.0
        self.bar = None
        if not quiet and self.stream.isatty():
            from tqdm import tqdm  # imported only for a bar: ~20 ms of every run's start-up

            self.bar = tqdm(total=total, initial=done, unit="img", file=self.stream, dynamic_ncols=True, smoothing=0.1)

    def __call__(self, tally: Tally, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if self.quiet:
            return
        for skip in tally.skipped[self.skips_shown :]:
            self.warn(f"skipped {skip['path']}: {skip['error']}")
        self.skips_shown = len(tally.skipped)
        for note in sorted(tally.notes - self.notes_shown):
            self.warn(note)
        self.notes_shown |= tally.notes
        now = time.monotonic()
        if self.bar is not None and now - self.last_postfix > 0.5 and tally.stats.kind is not None:
            self.last_postfix = now
            mean = tally.stats.result()["mean"]
            self.bar.set_postfix_str("mean " + " ".join(f"{m:.4f}" for m in mean if m is not None))

    def warn(self, message: str) -> None:
        """One line on stderr that does not break the bar."""
        if self.quiet:
            return
        line = f"bnstats: warning: {message}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
