"""The same photos stored four ways: a folder, 8 tar shards, one zip, and (decoded) one ``.npy``.

Builds the photo-like JPEG dataset of ``bench_compute.py`` (``--count``
images, ~400x350), packs it as WebDataset-style tar shards, as one tar and
as one zip, and decodes it into one ``(N, 350, 400, 3)`` uint8 ``.npy``;
warms the page cache; then times ``bnstats.compute()`` in this process on
each (medians of interleaved repeats) and prints the ratios the targets are
stated in:

  * tar shards / folder throughput at the same -j            (target >= 1.0)
  * one tar of every image: -j2 / -j1                        (target >= 1.7)
  * .npy: MB/s per core at -j1                               (target >= 200)
  * peak RSS of ``bnstats compute`` for 200 vs all images, per input kind
    (target: flat, within 5 MiB)

    python benchmarks/bench_inputs.py                        # 2000 images, 3 repeats
    python benchmarks/bench_inputs.py --count 500 --repeat 1
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compute import compile_bnstats, machine, peak_rss  # noqa: E402
from make_dataset import make_dataset  # noqa: E402

import bnstats  # noqa: E402
from bnstats.running.engine import count_selection  # noqa: E402
from bnstats.inputs.select import select  # noqa: E402

NPY_SIZE = (400, 350)  # width, height of the decoded array's images


def build(root: str, count: int) -> dict[str, list[str]]:
    """Each input kind's paths (made once; reused when already there)."""
    folder = os.path.join(root, "folder")
    files = sorted(make_dataset(folder, count, (400, 350), seed=1)) if not os.path.isdir(folder) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)[:count]
    kinds = {"folder": [folder]}
    shards = [os.path.join(root, f"shard-{k:06d}.tar") for k in range(8)]
    whole_tar, whole_zip, npy = (os.path.join(root, n) for n in ("all.tar", "all.zip", "all.npy"))
    if not os.path.exists(shards[-1]):
        for k, shard in enumerate(shards):
            with tarfile.open(shard, "w") as tar:
                for i, f in enumerate(files[k::8]):
                    tar.add(f, arcname=f"{i * 8 + k:06d}.jpg")
    if not os.path.exists(whole_tar):
        with tarfile.open(whole_tar, "w") as tar:
            for i, f in enumerate(files):
                tar.add(f, arcname=f"{i:06d}.jpg")
    if not os.path.exists(whole_zip):
        with zipfile.ZipFile(whole_zip, "w", zipfile.ZIP_STORED) as z:
            for i, f in enumerate(files):
                z.write(f, arcname=f"{i:06d}.jpg")
    if not os.path.exists(npy):
        array = np.lib.format.open_memmap(npy, "w+", np.uint8, (len(files), NPY_SIZE[1], NPY_SIZE[0], 3))
        for i, f in enumerate(files):
            array[i] = np.asarray(Image.open(f).convert("RGB").resize(NPY_SIZE))
        array.flush()
        del array
    kinds.update(shards=shards, tar=[whole_tar], zip=[whole_zip], npy=[npy])
    return kinds


def warm(paths) -> None:
    for path in paths:
        for folder, _, names in os.walk(path) if os.path.isdir(path) else [("", [], [path])]:
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    while f.read(1 << 24):
                        pass


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options the input benchmarks share: --count, --repeat, --data."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "bnstats-bench-inputs"))
    return parser


def bare_loop(kind: str, paths: list[str]) -> None:
    """Read and decode every image of one input kind with the standard library, Pillow and numpy only."""
    from PIL import Image

    if kind == "folder":
        for root in paths:
            for folder, _, files in os.walk(root):
                for f in files:
                    Image.open(os.path.join(folder, f)).convert("RGB").load()
    elif kind in ("shards", "tar"):
        for path in paths:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile():
                        Image.open(tar.extractfile(member)).convert("RGB").load()
    elif kind == "zip":
        for path in paths:
            with zipfile.ZipFile(path) as z:
                for name in z.namelist():
                    if not name.endswith("/"):
                        Image.open(io.BytesIO(z.read(name))).convert("RGB").load()
    else:  # .npy: already pixels; reading every row is the floor
        for path in paths:
            array = np.load(path, mmap_mode="r")
            for row in array:
                np.asarray(row).sum(dtype=np.uint64)


def main() -> None:
    args = arguments(__doc__).parse_args()
    compile_bnstats()
    kinds = build(os.path.join(args.data, str(args.count)), args.count)
    for paths in kinds.values():
        warm(paths)
    print(f"bnstats {bnstats.__version__} · {args.count} photo-like JPEGs ~400x350 · {machine()}\n")
    selections = {name: select(paths) for name, paths in kinds.items()}
    runs = {(name, w): [] for name in kinds for w in ("bare", 1, 2)}
    for _ in range(args.repeat):
        for (name, workers), times in runs.items():
            selection = selections[name]
            t0 = time.perf_counter()
            if workers == "bare":
                bare_loop(name, kinds[name])
            else:
                count_selection(selection.keys, source=selection.source, workers=workers)
            times.append(time.perf_counter() - t0)
    median = {key: statistics.median(times) for key, times in runs.items()}
    print("bare: the matching loop on one core that reads and decodes the same images and counts nothing")
    print(f"{'input':10s} {'bare img/s':>11s} {'-j1 img/s':>10s} {'-j2 img/s':>10s} {'-j1/bare':>9s} {'-j2/-j1':>8s}")
    for name in kinds:
        bare, one, two = (args.count / median[name, w] for w in ("bare", 1, 2))
        print(f"{name:10s} {bare:11.0f} {one:10.0f} {two:10.0f} {one / bare:8.2f}x {two / one:7.2f}x")
    npy_mb = os.path.getsize(kinds["npy"][0]) / 1e6
    print("\nratios (target)")
    for w in (1, 2):
        print(f"  tar shards / folder at -j{w}       {median['folder', w] / median['shards', w]:6.2f}x   (>= 1.0)")
        print(f"  zip / folder at -j{w}              {median['folder', w] / median['zip', w]:6.2f}x")
    print(f"  one tar: -j2 / -j1                 {median['tar', 1] / median['tar', 2]:6.2f}x   (>= 1.7)")
    print(f"  .npy at -j1                        {npy_mb / median['npy', 1]:6.0f} MB/s   (>= 200 per core)")
    print(f"  .npy -j2 / -j1                     {median['npy', 1] / median['npy', 2]:6.2f}x")

    print("\npeak RSS of `bnstats compute` (default workers), largest process, 200 images vs all:")
    small_root = os.path.join(args.data, "200")
    small = build(small_root, 200) if args.count > 200 else kinds
    cli = [sys.executable, "-m", "bnstats", "compute", "--quiet"]
    for name in kinds:
        few, _ = peak_rss(cli + small[name])
        many, _ = peak_rss(cli + kinds[name])
        print(f"  {name:10s} {few / 2**20:7.1f} MiB  {many / 2**20:7.1f} MiB   growth {(many - few) / 2**20:+6.1f} MiB "
              "(< 5)")


if __name__ == "__main__":
    main()
