"""Memory and start-up at scale: peak RSS and time to the first counted partition, by dataset size.

Builds (once, under ``--root``) folders of tiny PNGs (hard links to a few
8x8 images: the walk and the per-item costs, not decoding, are what grow)
and ``.npy`` arrays of ``(N, 4, 4)`` uint8 rows; then, for each size, runs
a fresh ``python -m bnstats compute DATA -q -j J`` for its peak RSS and
wall time, and a fresh interpreter that times, as ``compute`` runs, the first partition
merged (the time to the first count) and the end of the listing (a folder
is counted while it is walked: the listing ends after the first count).
Then the same for ``--files-from`` lists of those files (30k, 300k) and for
folders of tar shards of 20,000 members (1, 10). Last, ``-j2/-j1`` as a
command on 40,000 tiny PNGs and on 60,000 MNIST-sized ones (28x28 gray pen
strokes; medians of interleaved repeats).

The targets (issue 24): peak RSS grows by at most 10 MiB from 100k to 2M
array rows and from 10k to 1M loose files; the first partition is counted
within 1 s on a 1M-file tree; ``-j2/-j1`` >= 1.8 on 40,000 tiny PNGs and on
MNIST's 60,000.

    python benchmarks/bench_scale.py                              # 10k, 100k, 1M files; 100k, 2M, 10M rows
    python benchmarks/bench_scale.py --files 10000 100000 --rows 100000 2000000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compute import compile_bnstats, machine  # noqa: E402

LINKS_PER_IMAGE = 50_000  # below ext4's 65,000 links per inode

FIRST_COUNT = """
import json, resource, sys, time
t0 = time.perf_counter()
from bnstats.inputs.listing import ListingInProgress
from bnstats.inputs.select import select
from bnstats.running.job import ComputeJob


class First(Exception):
    pass


def stop(tally, done):
    raise First(time.perf_counter() - t0)


# as `bnstats compute DATA` does: a folder is counted while it is walked, anything else is listed first
listing = ListingInProgress([sys.argv[1]]) if ListingInProgress.possible([sys.argv[1]]) else None
job = ComputeJob(listing or select([sys.argv[1]]), workers=int(sys.argv[2]))
try:
    job.run(on_chunk=stop)
except First as exc:
    first = exc.args[0]
selection = listing.result() if listing is not None else job.selection  # waits for the walk's end
listed = time.perf_counter() - t0 if listing is not None else None
print(json.dumps({"listed": listed, "first": first, "items": len(selection.keys),
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def tiny_folder(root: str, count: int) -> str:
    """``count`` 8x8 PNGs in folders of 1,000 (hard links to one image per 50,000)."""
    folder = os.path.join(root, f"files_{count}")
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        return folder
    sources = []
    for k in range(count // LINKS_PER_IMAGE + 1):
        source = os.path.join(root, f"source_{count}_{k}.png")
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(source)
        sources.append(source)
    for i in range(count):
        sub = os.path.join(folder, f"c{i // 1000:05d}")
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"img_{i:08d}.png")
        if not os.path.exists(path):
            os.link(sources[i // LINKS_PER_IMAGE], path)
    open(done, "w").close()
    return folder


def mnist_folder(root: str, count: int = 60_000, distinct: int = 600) -> str:
    """MNIST's shape: ``count`` 28x28 gray PNGs of pen strokes on black, in ten class folders (``distinct``
    drawings, hard-linked: decoding, not the disk, is what is timed)."""
    from PIL import ImageDraw, ImageFilter

    folder = os.path.join(root, f"mnist_{count}")
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        return folder
    rng = np.random.default_rng(0)
    drawings = []
    for k in range(distinct):
        image = Image.new("L", (28, 28))
        draw = ImageDraw.Draw(image)
        points = [tuple(int(v) for v in rng.integers(5, 23, 2)) for _ in range(rng.integers(3, 7))]
        draw.line(points, fill=255, width=int(rng.integers(2, 4)))
        path = os.path.join(root, f"mnist_source_{k}.png")
        image.filter(ImageFilter.GaussianBlur(0.6)).save(path)
        drawings.append(path)
    for i in range(count):
        sub = os.path.join(folder, str(i % 10))
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"{i:05d}.png")
        if not os.path.exists(path):
            os.link(drawings[i % distinct], path)
    open(done, "w").close()
    return folder


def row_array(root: str, count: int) -> str:
    """``(count, 4, 4)`` uint8 rows in one ``.npy``."""
    path = os.path.join(root, f"rows_{count}.npy")
    if not os.path.exists(path):
        rows = np.lib.format.open_memmap(path + ".part", mode="w+", dtype=np.uint8, shape=(count, 4, 4))
        for start in range(0, count, 1 << 20):
            stop = min(count, start + (1 << 20))
            rows[start:stop] = np.random.default_rng(start).integers(0, 256, (stop - start, 4, 4), dtype=np.uint8)
        rows.flush()
        del rows
        os.replace(path + ".part", path)
    return path


def file_list(root: str, count: int, folder: str) -> str:
    """A ``--files-from`` list of the first ``count`` files of ``folder``, in reverse order (bnstats sorts)."""
    path = os.path.join(root, f"list_{count}.txt")
    if not os.path.exists(path):
        with open(path + ".part", "w") as f:
            f.writelines(f"{folder}/c{i // 1000:05d}/img_{i:08d}.png\n" for i in reversed(range(count)))
        os.replace(path + ".part", path)
    return path


def tar_shards(root: str, shards: int, members: int = 20_000) -> str:
    """A folder of ``shards`` uncompressed tars (hard links of one) of ``members`` tiny PNG members each."""
    import io
    import tarfile

    folder = os.path.join(root, f"shards_{shards}x{members}")
    first = os.path.join(root, f"shard_{members}.tar")
    if not os.path.exists(first):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
        with tarfile.open(first + ".part", "w") as tar:
            for i in range(members):
                info = tarfile.TarInfo(f"c{i % 10}/{i:08d}.png")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
        os.replace(first + ".part", first)
    os.makedirs(folder, exist_ok=True)
    for k in range(shards):
        path = os.path.join(folder, f"shard-{k:04d}.tar")
        if not os.path.exists(path):
            os.link(first, path)
    return folder


def command_run(data: str | list[str], workers: int) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of ``python -m bnstats compute DATA -q -j WORKERS``."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter();"
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")
    data = [data] if isinstance(data, str) else data
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "bnstats", "compute", *data, "-q",
                          "-j", str(workers)], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1])


def first_count(data: str, workers: int) -> dict:
    """Listing time, time to the first partition merged, and peak RSS of a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", FIRST_COUNT, data, str(workers)], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bnstats-bench-scale"))
    parser.add_argument("--files", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 2_000_000, 10_000_000])
    parser.add_argument("--lists", type=int, nargs="*", default=[30_000, 300_000])
    parser.add_argument("--shards", type=int, nargs="*", default=[1, 10])
    parser.add_argument("--speedup-files", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("-j", "--workers", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.root, exist_ok=True)
    compile_bnstats()
    print(f"# {time.strftime('%Y-%m-%d')} — {machine()}\n")

    print("| input | items | command peak RSS | command time | listed after | first count after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, sizes, make in (("tiny PNGs", args.files, tiny_folder), ("(N, 4, 4) uint8 .npy", args.rows, row_array)):
        base = None
        for size in sizes:
            data = make(args.root, size)
            seconds, rss = command_run(data, args.workers)
            first = first_count(data, args.workers)
            base = rss if base is None else base
            listed = "listed first" if first["listed"] is None else f"{first['listed']:.2f} s"
            print(f"| {kind} | {size:,} | {rss / 2**20:.1f} MiB ({(rss - base) / 2**20:+.1f}) | {seconds:.1f} s "
                  f"| {listed} | {first['first']:.2f} s |", flush=True)

    print()
    print("| input | items | command peak RSS | command time |")
    print("| --- | ---: | ---: | ---: |")
    base = None
    for count in args.lists:  # a --files-from list: read packed, sorted by runs
        data = ["--files-from", file_list(args.root, count, tiny_folder(args.root, max(args.lists)))]
        seconds, rss = command_run(data, args.workers)
        base = rss if base is None else base
        print(f"| --files-from list | {count:,} | {rss / 2**20:.1f} MiB ({(rss - base) / 2**20:+.1f}) | "
              f"{seconds:.1f} s |", flush=True)
    base = None
    for shards in args.shards:  # tar shards of 20,000 members: members packed with their offsets
        seconds, rss = command_run(tar_shards(args.root, shards), args.workers)
        base = rss if base is None else base
        print(f"| tar shards of 20,000 members | {shards * 20_000:,} | {rss / 2**20:.1f} MiB "
              f"({(rss - base) / 2**20:+.1f}) | {seconds:.1f} s |", flush=True)

    print()
    # the serial part of every command: the interpreter, numpy, Pillow and click imported, one image counted
    one_image = os.path.join(args.root, "one_image")
    if not os.path.exists(one_image):
        os.makedirs(one_image)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(one_image, "a.png"))
    serial = statistics.median(command_run(one_image, 1)[0] for _ in range(max(3, args.repeat)))
    print(f"one image as a command (the serial start-up and finish of any run): {serial:.2f} s", flush=True)
    for name, data in ((f"{args.speedup_files:,} tiny PNGs", tiny_folder(args.root, args.speedup_files)),
                       ("60,000 MNIST-sized PNGs", mnist_folder(args.root))):
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.repeat):
            for workers in (1, 2):
                times[workers].append(command_run(data, workers)[0])
        one, two = statistics.median(times[1]), statistics.median(times[2])
        # Amdahl on 2 cores: the start-up runs on one core in both; only the rest can be halved
        bound = one / (serial + (one - serial) / 2)
        print(f"{name} as a command: -j1 {one:.2f} s, -j2 {two:.2f} s (medians of {args.repeat}): "
              f"-j2/-j1 = {one / two:.2f} (at most {bound:.2f} with the start-up serial)", flush=True)


if __name__ == "__main__":
    main()
