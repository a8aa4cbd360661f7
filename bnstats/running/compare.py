"""Streaming vs naive full load, side by side: ``bnstats compare``.

The *naive* method is what many people were taught: decode every image into
memory, concatenate all pixels, take numpy float64 ``mean``/``std`` per
channel. It is exact too, but its memory grows with the dataset. Each side
runs in its own fresh process so wall time and peak memory are measured
fairly. The *forum recipe* numbers (mean of per-image std, float32
``E[x²] − E[x]²``) are computed alongside the naive load to show why old
numbers differ.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence

import numpy as np

from .count import CountSpec, single_items
from ..decoding.decode import load_pixels, probe
from ..decoding.options import DecodeOptions
from .engine import chunk_size_for, count_selection, default_workers, uses_pool
from .pool import die_with
from ..inputs.selection import Selection, as_selection
from ..statistics.formulas import MOMENTS

# Bytes the naive load holds per counted value at its peak: the decoded
# arrays (one byte each for 8-bit), their concatenation, its float64 copy,
# and numpy's float64 temporary inside std(). Measured: 200 photos of
# ~400x350 estimated 1.41 GiB, peak RSS 1.42 GiB.
NAIVE_BYTES_PER_VALUE = {1: 1 + 1 + 8 + 8, 2: 2 + 2 + 8 + 8, 4: 4 + 4 + 8 + 8}


class CompareError(Exception):
    """One side of the comparison could not run; the message says why."""


class MemoryGuardError(CompareError):
    """The naive full load would not fit in the allowed memory."""


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def estimate_naive_bytes(selection: Selection, options: DecodeOptions) -> tuple[int, list[int]]:
    """Peak bytes of a naive full load, from image headers alone.

    Returns the total and the running total after each item (to suggest a
    ``--limit`` that fits). Items whose header cannot be read count 0; they
    will be skipped by both methods.
    """
    running, total = [], 0
    for _, load in single_items(selection.source, selection.keys):
        try:
            (width, height), channels, itemsize = probe(load(), options)
        except Exception:
            running.append(total)
            continue
        # samples of 8 bytes (float64, int64 arrays) take their own size twice, as the others do
        total += width * height * channels * NAIVE_BYTES_PER_VALUE.get(itemsize, 2 * itemsize + 16)
        running.append(total)
    return total, running


def check_memory(selection: Selection, options: DecodeOptions, max_memory: int) -> int:
    """Raise :class:`MemoryGuardError` if the naive load would exceed ``max_memory``."""
    selection = as_selection(selection)
    files = selection.keys
    need, running = estimate_naive_bytes(selection, options)
    if need > max_memory:
        fits = sum(1 for r in running if r <= max_memory)
        advice = (f"compare on the first {fits} images with --limit {fits}" if fits
                  else "not even the first image fits: raise --max-memory")
        raise MemoryGuardError(
            f"a naive full load of {len(files)} images needs about {_size(need)}, "
            f"more than --max-memory {_size(max_memory)}; {advice}"
        )
    return need


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def naive_load(selection: Selection, options: DecodeOptions, on_item=None) -> list[np.ndarray]:
    """Every image's counted pixels as an ``(n, C)`` array, all held in memory.

    ``on_item(done)`` is called after each item (progress).
    """
    arrays = []
    for done, (_, load) in enumerate(single_items(selection.source, selection.keys), 1):
        try:
            arrays.append(load_pixels(load(), options)[0])
        except Exception:  # unreadable: the streaming side skips it too
            pass
        if on_item is not None:
            on_item(done)
    if not arrays:
        raise CompareError("none of the images could be read")
    return arrays


def naive_stats(arrays: Sequence[np.ndarray]) -> dict:
    """The naive method: concatenate everything, numpy float64 mean and std."""
    everything = np.concatenate(arrays).astype(np.float64)
    everything /= _scale(arrays[0].dtype)
    return {"images": len(arrays), "mean": everything.mean(axis=0).tolist(), "std": everything.std(axis=0).tolist()}


def forum_recipe(arrays: Sequence[np.ndarray], scale) -> dict:
    """What the common snippets compute (wrongly), from per-image pixel arrays.

    ``mean_of_image_std``: the mean over images of each image's own mean and
    std, which is not the dataset's std (it leaves out the spread *between*
    images). ``float32_moments``: running float32 sums of x and x², then
    ``E[x²] − E[x]²``, which loses digits to rounding and cancellation.
    """
    arrays = [a for a in arrays if len(a)]  # an image whose pixels were all ignored
    image_means = [a.mean(axis=0, dtype=np.float64) / scale for a in arrays]
    image_stds = [a.std(axis=0, dtype=np.float64) / scale for a in arrays]
    s = np.zeros(arrays[0].shape[1], np.float32)
    sq = np.zeros_like(s)
    n = 0
    for a in arrays:
        x = a.astype(np.float32) / np.float32(scale)
        s += x.sum(axis=0)
        sq += (x * x).sum(axis=0)
        n += len(a)
    mean32 = s / np.float32(n)
    var32 = np.maximum(sq / np.float32(n) - mean32 * mean32, 0)
    return {
        "mean_of_image_std": {"mean": np.mean(image_means, axis=0).tolist(), "std": np.mean(image_stds, axis=0).tolist()},
        "float32_moments": {"mean": mean32.astype(float).tolist(), "std": np.sqrt(var32).astype(float).tolist()},
    }


def _scale(dtype) -> int:
    dtype = np.dtype(dtype)
    # as streaming: 8/16-bit unsigned data in unit scale, wider integers (uint32/uint64 arrays) in their own units
    return np.iinfo(dtype).max if dtype.kind == "u" and dtype.itemsize <= 2 else 1


def streaming_stats(selection: Selection, options: DecodeOptions, workers: int | None, strict: bool = False,
                    on_item=None) -> dict:
    tally = count_selection(selection.keys, source=selection.source, spec=CountSpec(options, strict=strict),
                            workers=workers, on_chunk=None if on_item is None else lambda tally, done: on_item(done))
    if tally.stats.kind is None:  # nothing was read: no statistics to compare
        first = f" (first: {tally.skipped[0]['path']}: {tally.skipped[0]['error']})" if tally.skipped else ""
        raise CompareError(f"none of the {len(selection)} images could be read{first}")
    if tally.stats.pixels == 0:  # as compute says it (the naive side would fail on an empty concatenation)
        raise CompareError(f"no pixel was counted: every pixel of the {tally.stats.images} images was left out "
                           "(--ignore-value, or NaN/infinite float pixels)")
    result = tally.stats.result()
    return {
        "images": tally.stats.images, "channels": list(tally.bands), "kind": tally.stats.kind,
        "mean": result["mean"], "std": result["std"], "skipped": tally.skipped,
    }


def _side(conn, side: str, selection: Selection, options, workers, strict=False, environ=None,
          parent_pid=None) -> None:
    """Child process: run one method, send back its result, seconds and peak memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if parent_pid is not None:  # our parent is the fork server, which lives as long as we do: watch bnstats
        die_with(parent_pid)
    if environ is not None:  # the fork server's environment is the one it started with: take the caller's
        os.environ.clear()
        os.environ.update(environ)
    last = [0.0]

    def progress(done: int) -> None:  # at most 10 messages a second: the pipe is not the work
        now = time.monotonic()
        if now - last[0] > 0.1 or done == len(selection):
            last[0] = now
            conn.send(("progress", done))

    try:
        t0 = time.perf_counter()
        if side == "streaming":
            out = streaming_stats(selection, options, workers, strict, progress)
        else:
            arrays = naive_load(selection, options, progress)
            out = naive_stats(arrays)
        out["seconds"] = time.perf_counter() - t0
        partitions = -(-len(selection) // chunk_size_for(len(selection)))
        pooled = side == "streaming" and uses_pool(workers, partitions)
        out["peak_bytes"] = _peak_rss_bytes((workers or default_workers()) if pooled else 0)
        if side == "naive":  # after the measurements: not part of the naive method's cost
            out["forum"] = forum_recipe(arrays, _scale(arrays[0].dtype))
        conn.send(("ok", out))
    except CompareError as exc:  # our own message: as it is
        conn.send(("error", str(exc)))
    except BaseException as exc:  # report, don't print a traceback in the child
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _peak_rss_bytes(workers: int) -> int:
    """Peak RSS of this process plus, as an upper bound, each of its ``workers``.

    Our own peak is VmHWM, which starts afresh at exec (``ru_maxrss`` would
    carry over the peak of the process that started us; forked from the fork
    server, it starts from that small process's). ``ru_maxrss`` of
    children is the largest worker's peak; N workers hold at most N times it.
    """
    unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    try:
        with open("/proc/self/status") as f:
            own = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    return own + workers * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit


def _fresh_context():
    """Processes that start from a fresh interpreter, not a copy of this one (whose memory would count).

    On Linux a fork server does that once and forks each side from it with
    numpy and Pillow already imported; elsewhere each side is spawned.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["bnstats.running.compare"])
        return ctx
    return multiprocessing.get_context("spawn")


def run_side(side: str, selection: Selection, options: DecodeOptions, workers: int | None = None,
             strict: bool = False, on_progress=None) -> dict:
    """Run one method in a fresh process; return its result with ``seconds`` and ``peak_bytes``.

    ``on_progress(side, done)`` reports how many items the side has processed.
    """
    ctx = _fresh_context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_side, args=(child, side, as_selection(selection), options, workers, strict,
                                           dict(os.environ), os.getpid()))
    proc.start()
    child.close()
    try:
        status, payload = parent.recv()
        while status == "progress":
            if on_progress is not None:
                on_progress(side, payload)
            status, payload = parent.recv()
    except EOFError:
        status, payload = "error", f"the {side} process died (exit code {proc.exitcode})"
    except BaseException:  # Ctrl-C: the child ignores it; stop it rather than wait
        proc.terminate()
        raise
    finally:
        proc.join()
    if status != "ok":
        raise CompareError(f"the {side} method failed: {payload}")
    return payload


def agreement(streaming: dict, naive: dict, tolerance: float) -> tuple[float, bool]:
    """The largest absolute difference of the two sides' mean and std, and whether every difference is
    within ``tolerance`` relative to max(1, |value|): unit-scale numbers are compared absolutely, data in
    large units of its own (uint32 or float values near 1e9) by its last digits, not by a difference of
    1e-6 that is float64 rounding. A value on one side only is a difference of infinity."""
    pairs = [(a, b) for key in ("mean", "std") for a, b in zip(streaming[key], naive[key])]
    diffs = [0.0 if a is None and b is None else abs(a - b) if None not in (a, b) else math.inf for a, b in pairs]
    within = all(d <= tolerance * max(1.0, abs(b) if b is not None else 0.0) for d, (_, b) in zip(diffs, pairs))
    return max(diffs), within


def compare(items: Selection | Sequence[str], options: DecodeOptions = DecodeOptions(), workers: int | None = None,
            tolerance: float = 1e-9, strict: bool = False, on_progress=None) -> dict:
    """Both methods on the same files; the ``compare --json`` document.

    Streaming runs first; the files it could not read (listed under
    ``streaming.skipped``) are left out of the naive load, so both methods
    see the same images.
    """
    selection = as_selection(items)
    streaming = run_side("streaming", selection, options, workers, strict, on_progress)
    unreadable = {s["path"] for s in streaming["skipped"]}
    readable = Selection(selection.source, [k for k in selection.keys if k not in unreadable])
    naive = run_side("naive", readable, options, on_progress=on_progress)
    max_abs_diff, within = agreement(streaming, naive, tolerance)
    forum = naive.pop("forum")
    return {
        "images": naive["images"],
        "streaming": streaming,
        "naive": naive,
        "forum_recipe": forum,
        "max_abs_diff": max_abs_diff if math.isfinite(max_abs_diff) else None,
        "tolerance": tolerance,
        "agree": within and streaming["images"] == naive["images"],
    }


def rounding_note(kind: str | None) -> str:
    """Where the differences come from, for the kind of state the streaming side counted in."""
    if kind == MOMENTS:  # float pixels: neither side is exact
        return "(float data is accumulated in float64 with Chan's merge; differences up to ~1e-12 are rounding)"
    return "(integer pixels are counted exactly by streaming; the naive float64 sums carry rounding)"


def format_table(doc: dict) -> str:
    """The human-readable comparison ``bnstats compare`` prints."""
    s, n = doc["streaming"], doc["naive"]
    lines = [f"bnstats compare: {doc['images']} images", ""]
    if s["skipped"]:
        lines[-1:] = [f"{len(s['skipped'])} unreadable files left out of both methods", ""]
    lines.append(f"{'':10s} {'streaming':>20s} {'naive full load':>20s} {'|difference|':>13s}")
    for key in ("mean", "std"):
        for channel, a, b in zip(s["channels"], s[key], n[key]):
            lines.append(f"{key + ' ' + channel:10s} {a:20.15f} {b:20.15f} {abs(a - b):13.1e}")
    lines.append("")
    lines.append(f"{'':10s} {'seconds':>20s} {'peak memory':>20s}")
    for name, side in (("streaming", s), ("naive", n)):
        lines.append(f"{name:10s} {side['seconds']:20.2f} {side['peak_bytes'] / 2**20:16.1f} MiB")
    ratio = n["peak_bytes"] / max(s["peak_bytes"], 1)
    lines.append(f"{'':10s} {'':20s} {f'naive uses {ratio:.1f}x the memory':>30s}")
    lines.append("")
    lines.append("the forum recipe, for comparison (WRONG):")
    labels = {
        "mean_of_image_std": "mean of per-image std",
        "float32_moments": "float32 E[x²]−E[x]²",
    }
    for key, label in labels.items():
        std = doc["forum_recipe"][key]["std"]
        off = max(abs(a - b) for a, b in zip(std, n["std"]))
        lines.append(f"  {label:24s} std [{', '.join(f'{v:.6f}' for v in std)}]  off by up to {off:.1e}")
    lines.append("")
    lines.append(rounding_note(s.get("kind")))
    verdict = "agree" if doc["agree"] else "DISAGREE"
    diff = "n/a" if doc["max_abs_diff"] is None else f"{doc['max_abs_diff']:.1e}"
    lines.append(f"verdict: streaming and naive {verdict} (max |difference| {diff}, tolerance {doc['tolerance']:.0e})")
    return "\n".join(lines) + "\n"
