"""How many images ``--until-ci W`` needs, and how much time it saves, as the population grows.

Builds the photo-like JPEG datasets (2000 images ~400x350 as in
``bench_compute.py``, and a larger one, 20,000 images ~200x175 by default),
warms the page cache, and for each runs ``bnstats.compute()`` (default
workers) over everything, then the same as ``--until-ci W`` for each W:
images used, wall time, the speed-up against the full pass, and whether
every channel's 95% interval holds the full-data mean and std.

    python benchmarks/bench_sampling.py                        # W = 0.01, 0.005, 0.002
    python benchmarks/bench_sampling.py --large 5000 --widths 0.01
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compute import machine  # noqa: E402
from make_dataset import make_dataset  # noqa: E402

from bnstats.running.engine import count_selection  # noqa: E402
from bnstats.inputs.select import select  # noqa: E402
from bnstats.observers.sampling import CHECK_EVERY, Sampler, draw  # noqa: E402


def dataset(root: str, count: int, size: tuple[int, int]) -> str:
    folder = os.path.join(root, f"{count}-{size[0]}x{size[1]}")
    if not os.path.isdir(folder):
        make_dataset(folder, count, size, seed=1)
    for d, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(d, name), "rb") as f:
                f.read()
    return folder


def until_ci(selection, width: float, seed: int = 0):
    """(tally, images counted, seconds, half-widths) of one --until-ci run."""
    sampled = draw(selection, None, seed)
    sampler = Sampler(len(selection), width)
    t0 = time.perf_counter()
    tally = count_selection(sampled.keys, source=sampled.source, observers=[sampler], chunk_size=CHECK_EVERY)
    return tally, sampler.m, time.perf_counter() - t0, sampler.half_widths()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--widths", default="0.01,0.005,0.002")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "bnstats-bench-sampling"))
    args = parser.parse_args()
    widths = [float(w) for w in args.widths.split(",")]
    print(f"{machine()}\n")
    print(f"{'images':>8s} {'W':>7s} {'used':>7s} {'seconds':>8s} {'full s':>7s} {'speed-up':>9s}  intervals hold")
    for count, size in ((args.small, (400, 350)), (args.large, (200, 175))):
        selection = select([dataset(args.data, count, size)])
        t0 = time.perf_counter()
        full = count_selection(selection.keys, source=selection.source).stats.result()
        full_seconds = time.perf_counter() - t0
        for width in widths:
            tally, used, seconds, half = until_ci(selection, width)
            got = tally.stats.result()
            holds = all(abs(g - f) <= h for key in ("mean", "std")
                        for g, f, h in zip(got[key], full[key], half[key]))
            print(f"{count:8d} {width:7.3f} {used:7d} {seconds:8.2f} {full_seconds:7.2f} "
                  f"{full_seconds / seconds:8.1f}x  {'yes' if holds else 'NO'}")


if __name__ == "__main__":
    main()
