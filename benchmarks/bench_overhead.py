"""Where decoding is cheap or the data is not 8-bit: bnstats against the matching bare decode loop.

Builds (or reuses, under ``--data``) five generated datasets and times, as
whole processes on warm files, the bare decode loop that reads the same
files and does nothing else, then ``bnstats compute -j1`` and ``-j2``:

  photos    2000 photo-like JPEGs (~810x600, ~490k px)   Pillow ``convert("RGB").load()``
  tiny      50,000 8x8 RGB PNGs                          Pillow ``convert("RGB").load()``
  mnist     60,000 28x28 grey PNGs, --mode gray          Pillow ``convert("L").load()``
  rgb16     300 16-bit RGB 512x512 PNGs, --mode native   ``cv2.imread(f, IMREAD_UNCHANGED)``
  grey16    300 16-bit grey 512x512 PNGs, --mode native  ``cv2.imread(f, IMREAD_UNCHANGED)``

Repeats are interleaved and medians reported; the ratios are those of the
same run (targets: -j1 / bare >= 0.9, 0.8 for tiny, 0.85 for rgb16; -j2 / -j1
>= 1.8). The bare loops run on one core, like ``-j1``.

    python benchmarks/bench_overhead.py                  # every row, 3 repeats
    python benchmarks/bench_overhead.py --rows tiny,rgb16 --repeat 5 --scale 0.2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compute import compile_bnstats, machine
from make_dataset import make_dataset

import bnstats
from bnstats.running.count import CountSpec
from bnstats.decoding.options import DecodeOptions
from bnstats.running.engine import count_selection
from bnstats.inputs.select import select

PILLOW_LOOP = """
import sys
from PIL import Image
mode = sys.argv[2]
for f in open(sys.argv[1]).read().splitlines():
    Image.open(f).convert(mode).load()
"""

CV2_LOOP = """
import sys
import cv2
cv2.setNumThreads(1)
for f in open(sys.argv[1]).read().splitlines():
    cv2.imread(f, cv2.IMREAD_UNCHANGED)
"""

# name: (count, what the bare loop is, bnstats options, target -j1/bare)
ROWS = {
    "photos": (2000, ("pillow", "RGB"), (), 0.9),
    "tiny": (50_000, ("pillow", "RGB"), (), 0.8),
    "mnist": (60_000, ("pillow", "L"), ("--mode", "gray"), 0.9),
    "rgb16": (300, ("cv2",), ("--mode", "native"), 0.85),
    "grey16": (300, ("cv2",), ("--mode", "native"), 0.9),
}


def build(name: str, folder: str, count: int) -> list[str]:
    """The dataset's files (made once; a ``.done`` marker says the folder is complete)."""
    marker = os.path.join(folder, ".done")
    if not os.path.exists(marker):
        os.makedirs(folder, exist_ok=True)
        rng = np.random.default_rng(7)
        if name == "photos":
            make_dataset(folder, count, (810, 600), seed=1)
        for i in range(count if name != "photos" else 0):
            sub = os.path.join(folder, f"{i // 1000:03d}")
            os.makedirs(sub, exist_ok=True)
            path = os.path.join(sub, f"{i:06d}.png")
            if name == "tiny":
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
            elif name == "mnist":  # a dark field with a bright blob, like a digit
                img = np.zeros((28, 28), np.uint8)
                y, x = rng.integers(6, 22, 2)
                img[y - 5 : y + 5, x - 3 : x + 3] = rng.integers(128, 256, (10, 6), dtype=np.uint8)
                Image.fromarray(img).save(path)
            else:
                import cv2

                shape = (512, 512, 3) if name == "rgb16" else (512, 512)
                ramp = np.linspace(0, 40000, 512, dtype=np.float64)[None, :]
                noise = rng.normal(0, 3000, shape)
                pixels = np.clip((ramp[..., None] if name == "rgb16" else ramp) + noise + i * 50, 0, 65535)
                cv2.imwrite(path, pixels.astype(np.uint16))
        open(marker, "w").close()
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if not f.startswith("."))


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each row's image count")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "bnstats-bench-overhead"))
    args = parser.parse_args()
    compile_bnstats()
    rows = [r for r in args.rows.split(",") if r]
    print(f"bnstats {bnstats.__version__} · {machine()}")
    results = {}
    for name in rows:
        count, bare, options, target = ROWS[name]
        count = max(1, int(count * args.scale))
        folder = os.path.join(args.data, f"{name}-{count}")
        files = build(name, folder, count)
        listing = os.path.join(args.data, f"{name}-{count}.txt")
        with open(listing, "w") as f:
            f.write("\n".join(files))
        for path in files:  # warm the page cache
            with open(path, "rb") as fh:
                fh.read()
        loop = [sys.executable, "-c", PILLOW_LOOP, listing, bare[1]] if bare[0] == "pillow" else \
            [sys.executable, "-c", CV2_LOOP, listing]
        out = os.path.join(args.data, f"{name}-{count}.json")
        cli = [sys.executable, "-m", "bnstats", "compute", folder, "--quiet", "-o", out, *options]
        methods = {"bare": loop, "j1": cli + ["-j", "1"], "j2": cli + ["-j", "2"]}
        selection = select([folder])
        spec = CountSpec(DecodeOptions(mode="native" if "native" in options else
                                       "gray" if "gray" in options else "rgb"))
        in_process = {  # the steady state: no interpreter start-up, listing done once
            "bare in": lambda: bare_loop(bare, files),
            "lib j1": lambda: count_selection(selection.keys, source=selection.source, workers=1, spec=spec),
            "lib j2": lambda: count_selection(selection.keys, source=selection.source, workers=2, spec=spec),
        }
        times = {k: [] for k in [*methods, *in_process]}
        for _ in range(args.repeat):
            for k, cmd in methods.items():
                times[k].append(run(cmd))
            for k, fn in in_process.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        median = {k: statistics.median(v) for k, v in times.items()}
        results[name] = (len(files), median, target)

    print("\ncommands (whole processes: interpreter start-up, listing and JSON included)")
    print(f"{'row':8s} {'images':>7s} {'bare img/s':>11s} {'-j1 img/s':>10s} {'-j2 img/s':>10s} "
          f"{'-j1/bare':>9s} {'target':>7s} {'-j2/-j1':>8s} {'target':>7s}")
    for name, (n, m, target) in results.items():
        print(f"{name:8s} {n:7d} {n / m['bare']:11.0f} {n / m['j1']:10.0f} {n / m['j2']:10.0f} "
              f"{m['bare'] / m['j1']:8.2f}x {target:6.2f}x {m['j1'] / m['j2']:7.2f}x {1.8:6.2f}x")
    print("\nin this process (bare loop and bnstats.compute() on the listed files: the steady state)")
    print(f"{'row':8s} {'images':>7s} {'bare img/s':>11s} {'j1 img/s':>10s} {'j2 img/s':>10s} "
          f"{'j1/bare':>9s} {'j2/j1':>8s}")
    for name, (n, m, target) in results.items():
        print(f"{name:8s} {n:7d} {n / m['bare in']:11.0f} {n / m['lib j1']:10.0f} {n / m['lib j2']:10.0f} "
              f"{m['bare in'] / m['lib j1']:8.2f}x {m['lib j1'] / m['lib j2']:7.2f}x")
    print(f"\nmedians of {args.repeat} interleaved runs")


def bare_loop(bare: tuple, files: list[str]) -> None:
    if bare[0] == "pillow":
        for f in files:
            Image.open(f).convert(bare[1]).load()
    else:
        import cv2

        cv2.setNumThreads(1)
        for f in files:
            cv2.imread(f, cv2.IMREAD_UNCHANGED)


if __name__ == "__main__":
    main()
