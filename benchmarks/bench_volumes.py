"""3-D volumes: ``bnstats compute`` against a plain nibabel loop on the same NIfTI files.

Writes (once, under ``--root``) ``--count`` CT-like int16 volumes of
``--shape`` as ``.nii.gz`` (and ``.nii`` with ``--plain``), then times, in
one process and interleaved, medians of ``--repeat``:

* the loop: ``np.asanyarray(nib.load(path).dataobj)`` per file (nibabel's
  own read, no float conversion), with the float64 sum and sum of squares
  (mean and std: the least a loop computes);
* bnstats: ``count_selection`` of ``select([folder])`` at -j1 and -j2 (the
  exact histogram, mean, std, min, max and median of every voxel).

Target (issue 25): bnstats at >= 0.9x the loop's speed. ``--scaled`` writes MR-like volumes whose header
scales them (``scl_slope`` 0.5, ``scl_inter`` 10): nibabel's read gives float64 values, bnstats counts the
stored integers exactly in the scaled units.

    python benchmarks/bench_volumes.py
    python benchmarks/bench_volumes.py --count 8 --shape 512 512 100 --plain
    python benchmarks/bench_volumes.py --scaled
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compute import machine  # noqa: E402


def make_volumes(root: str, count: int, shape: tuple[int, ...], suffix: str, scaled: bool = False) -> str:
    """``count`` CT-like int16 volumes (air, soft tissue, bone, noise) in a folder of their own (``scaled``: with
    a header scaling them)."""
    import nibabel as nib

    kind = "mr" if scaled else "ct"
    folder = os.path.join(root, f"{kind}_{count}_{'x'.join(map(str, shape))}{suffix.replace('.', '_')}")
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        return folder
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((z - shape[0] / 2) ** 2 / (shape[0] / 2.2) ** 2 + (y - shape[1] / 2) ** 2 / (shape[1] / 2.5) ** 2) < 1
    for i in range(count):
        volume = np.full(shape, -1000, np.int16)
        volume[np.broadcast_to(body, shape)] = 40
        volume += rng.normal(0, 20, shape).astype(np.int16)
        image = nib.Nifti1Image(volume, np.eye(4))
        if scaled:
            image.header.set_slope_inter(0.5, 10.0)
        nib.save(image, os.path.join(folder, f"case_{i:03d}{suffix}"))
    open(done, "w").close()
    return folder


def nibabel_loop(folder: str) -> tuple[float, float]:
    """Mean and std of every voxel, as a loop over nibabel's reads computes them."""
    import nibabel as nib

    total = squares = count = 0.0
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        data = np.asanyarray(nib.load(os.path.join(folder, name)).dataobj)
        values = data.astype(np.float64).ravel()
        total += values.sum()
        squares += np.dot(values, values)
        count += values.size
    mean = total / count
    return mean, (squares / count - mean * mean) ** 0.5


def bnstats_count(folder: str, workers: int) -> tuple[float, float]:
    from bnstats.inputs.select import select
    from bnstats.running.engine import count_selection

    selection = select([folder])
    result = count_selection(selection.keys, source=selection.source, workers=workers).stats.report()["raw"]
    return result["mean"][0], result["std"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bnstats-bench-volumes"))
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 64])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--plain", action="store_true", help="uncompressed .nii instead of .nii.gz")
    parser.add_argument("--scaled", action="store_true", help="volumes whose header scales them (scl_slope 0.5)")
    args = parser.parse_args()
    folder = make_volumes(args.root, args.count, tuple(args.shape), ".nii" if args.plain else ".nii.gz",
                          args.scaled)
    voxels = args.count * int(np.prod(args.shape))
    print(f"# {time.strftime('%Y-%m-%d')} — {machine()}")
    print(f"{args.count} int16 volumes{' scaled by their headers' if args.scaled else ''} of "
          f"{'x'.join(map(str, args.shape))} "
          f"({'.nii' if args.plain else '.nii.gz'}), {voxels / 1e6:.0f} M voxels, medians of {args.repeat}\n")
    runs = {"loop": lambda: nibabel_loop(folder), "bnstats -j1": lambda: bnstats_count(folder, 1),
            "bnstats -j2": lambda: bnstats_count(folder, 2)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for _ in range(args.repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - started)
    loop = statistics.median(times["loop"])
    print("| run | median | Mvoxels/s | speed vs loop | mean, std |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name in runs:
        median = statistics.median(times[name])
        mean, std = results[name]
        print(f"| {name} | {median:.2f} s | {voxels / median / 1e6:.0f} | {loop / median:.2f}x | "
              f"{mean:.6f}, {std:.6f} |")


if __name__ == "__main__":
    main()
