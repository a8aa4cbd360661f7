"""A Zarr store counted by bnstats against a plain ``zarr`` read loop that computes the float64 mean and std.

Builds (once, under ``--data``) a store of ``--rows`` uint8 images of
64×64 in chunks of 256 rows, in each Zarr format asked for (zarr's default
codecs: zstd for v3, blosc/zstd for v2), with image-like content (a
gradient, shapes, noise) so that the chunks compress as photos' pixels
would. Then times, in this process, with the page cache warm, medians of
interleaved repeats:

  * loop: ``for i in range(0, N, 256): c = z[i:i+256]`` and the chunk's sum and sum of squares in float64
    (the mean and std of every pixel: no histogram, no median, no min/max);
  * bnstats at -j1 and -j2 (``count_selection`` of ``select([store])``: every statistic of a run, exact).

The target (issue 25): bnstats at -j1 >= 0.9x the loop's speed.

    python benchmarks/bench_zarr.py                    # 20000 rows, v2 and v3, 5 repeats
    python benchmarks/bench_zarr.py --rows 5000 --repeat 3 --format 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compute import compile_bnstats, machine  # noqa: E402

import bnstats  # noqa: E402
from bnstats.inputs.select import select  # noqa: E402
from bnstats.running.engine import count_selection  # noqa: E402

SIDE, CHUNK = 64, 256


def images(start: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` image-like 64×64 uint8 images: a gradient of random direction, a bright disc, noise."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    out = np.empty((count, SIDE, SIDE), np.uint8)
    for i in range(count):
        a, b, c = rng.uniform(-1, 1, 3)
        cx, cy, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.3)]
        image = 128 + 60 * (a * x + b * y) + 40 * c + 70 * (((x - cx) ** 2 + (y - cy) ** 2) < r * r)
        out[i] = np.clip(image + rng.normal(0, 6, (SIDE, SIDE)), 0, 255).astype(np.uint8)
    return out


def build(root: str, rows: int, zarr_format: int) -> str:
    """The store (made once; reused when already there)."""
    import zarr

    path = os.path.join(root, f"images-{rows}-v{zarr_format}.zarr")
    if os.path.isdir(path):
        return path
    array = zarr.create_array(path + ".tmp", shape=(rows, SIDE, SIDE), chunks=(CHUNK, SIDE, SIDE), dtype="u1",
                              zarr_format=zarr_format)
    rng = np.random.default_rng(zarr_format)
    for start in range(0, rows, 8 * CHUNK):
        count = min(8 * CHUNK, rows - start)
        array[start : start + count] = images(start, count, rng)
    os.rename(path + ".tmp", path)
    return path


def warm(path: str) -> None:
    for folder, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                f.read()


def zarr_loop(path: str) -> tuple[float, float]:
    """The plain loop: every chunk read through zarr, its float64 sum and sum of squares; the mean and std."""
    import zarr

    array = zarr.open_array(path, mode="r")
    total = squares = 0.0
    for start in range(0, array.shape[0], CHUNK):
        chunk = array[start : start + CHUNK].astype(np.float64)
        total += chunk.sum()
        squares += np.square(chunk).sum()
    n = array.size
    mean = total / n
    return mean, (squares / n - mean * mean) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--format", type=int, choices=(2, 3), action="append", help="Zarr format (repeatable)")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "bnstats-bench-zarr"))
    args = parser.parse_args()
    import zarr

    compile_bnstats()
    os.makedirs(args.data, exist_ok=True)
    formats = args.format or [2, 3]
    stores = {f: build(args.data, args.rows, f) for f in formats}
    for path in stores.values():
        warm(path)
    megabytes = args.rows * SIDE * SIDE / 1e6
    print(f"bnstats {bnstats.__version__} · zarr {zarr.__version__} · ({args.rows}, {SIDE}, {SIDE}) uint8 in chunks "
          f"of {CHUNK} rows ({megabytes:.0f} MB) · {machine()} · medians of {args.repeat}\n")
    print(f"{'store':6s} {'stored MB':>9s} {'loop MB/s':>10s} {'-j1 MB/s':>9s} {'-j2 MB/s':>9s} {'-j1/loop':>9s} "
          f"{'-j2/loop':>9s} {'loop CPU':>9s} {'-j1 CPU':>8s}")
    for zarr_format, path in stores.items():
        selection = select([path])
        stored = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(path) for n in ns) / 1e6
        times, cpu = {"loop": [], 1: [], 2: []}, {"loop": [], 1: []}
        for _ in range(args.repeat):  # interleaved: a slow moment of the machine falls on every contender
            for how in times:
                t0, c0 = time.perf_counter(), time.process_time()
                if how == "loop":
                    mean, std = zarr_loop(path)
                else:
                    tally = count_selection(selection.keys, source=selection.source, workers=how)
                times[how].append(time.perf_counter() - t0)
                if how in cpu:  # this process's CPU time, zarr's decoding threads included (-j2: in workers)
                    cpu[how].append(time.process_time() - c0)
        raw = tally.stats.report()["raw"]
        assert abs(raw["mean"][0] - mean) < 1e-9 * mean and abs(raw["std"][0] - std) < 1e-6 * std  # the same numbers
        speed = {how: megabytes / statistics.median(t) for how, t in times.items()}
        seconds = {how: statistics.median(t) for how, t in cpu.items()}
        print(f"v{zarr_format:<5d} {stored:9.1f} {speed['loop']:10.0f} {speed[1]:9.0f} {speed[2]:9.0f} "
              f"{speed[1] / speed['loop']:8.2f}x {speed[2] / speed['loop']:8.2f}x {seconds['loop']:8.2f}s "
              f"{seconds[1]:7.2f}s")
    print("\ntarget: -j1/loop >= 0.9x. CPU: seconds of CPU of this process (zarr decodes chunks on threads: a read of"
          "\nseveral chunks, as bnstats makes, decodes them concurrently; the loop reads one chunk per call)")


if __name__ == "__main__":
    main()
