"""Throughput and memory of ``bnstats compute`` against its competitors, in one run.

Builds a photo-like JPEG dataset (random crops and rescales of real photos,
~400x350), warms the page cache, then times on the same files:

  (a) a bare Pillow decode loop: ``Image.open(f).convert("RGB").load()``,
      run as its own ``python -c`` process
  (b) ``bnstats compute --workers 1``, (c) ``--workers 2``, and default
      settings, run as the command users type (interpreter start-up, folder
      walk and JSON output included); also the library call
      ``bnstats.compute()`` in this process, which shows the steady state
  (d) the common PyTorch recipe: a DataLoader over an ImageFolder-like dataset
      with ToTensor(), summing per-channel sum and sum of squares, at its best
      worker count, in this process (torch's import time not counted; skipped
      with a message where torch is not installed)
  (e) peak RSS of ``bnstats compute`` on 200 vs all images

Each timing is repeated (interleaved) and the median is reported; these
machines are noisy, so compare ratios from the same run.

    python benchmarks/bench_compute.py                    # 2000 images, 3 repeats
    python benchmarks/bench_compute.py --count 500 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_dataset import make_dataset  # noqa: E402
from torch_recipe import torch_recipe  # noqa: E402

import bnstats  # noqa: E402
from bnstats.running.engine import count_selection, default_workers  # noqa: E402


BARE_LOOP = """
import sys
from PIL import Image
for f in open(sys.argv[1]).read().splitlines():
    Image.open(f).convert("RGB").load()
"""


def run_command(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def bnstats_run(files, workers):
    return count_selection(files, workers=workers)


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def peak_rss(cmd):
    """Run ``cmd``; return (peak RSS of its largest process, peak of the whole tree) in bytes.

    The largest process is exact (``ru_maxrss`` of waited-for descendants,
    measured in a fresh wrapper); the tree total is sampled every 5 ms with
    psutil.
    """
    wrapper = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *cmd], stdout=subprocess.PIPE, text=True)
    peak_tree = 0
    done = threading.Event()

    def sample():
        nonlocal peak_tree
        while not done.is_set():
            peak_tree = max(peak_tree, _tree_rss(proc.pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed")
    return int(out.split()[-1]) * 1024, peak_tree


def _tree_rss(pid):
    """Sum of RSS over a process's descendants (not the wrapper itself)."""
    total = 0
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def compile_bnstats() -> None:
    """Byte-compile bnstats' modules, as ``pip install .`` does.

    An editable install (or ``PYTHONDONTWRITEBYTECODE=1``) leaves them
    uncompiled, and every command would then compile ~30 modules at start-up
    (~30 ms here): a cost installed users never pay.
    """
    import compileall

    import bnstats

    compileall.compile_dir(os.path.dirname(bnstats.__file__), quiet=1)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, Pillow {Image.__version__}, numpy {np.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", default="400x350")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", help="dataset folder (built there if empty; default: a temp folder)")
    args = parser.parse_args()
    compile_bnstats()

    w, h = (int(v) for v in args.size.split("x"))
    data = args.data or tempfile.mkdtemp(prefix="bnstats-bench-")
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs if f.endswith(".jpg")
    )[: args.count]
    if len(files) < args.count:
        files = sorted(make_dataset(data, args.count, (w, h), seed=1))
    for f in files:  # warm the page cache: every method reads from memory
        with open(f, "rb") as fh:
            fh.read()
    cores = default_workers()
    print(f"bnstats {bnstats.__version__} · {len(files)} JPEGs ~{w}x{h} in {data}")
    print(f"machine: {machine()}\n")

    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
        print("torch is not installed: skipping the PyTorch DataLoader recipe (pip install torch)\n")

    listing = os.path.join(data, "..", "bench-files.txt")
    with open(listing, "w") as f:
        f.write("\n".join(files))
    out = os.path.join(data, "..", "bench-out.json")
    cli = [sys.executable, "-m", "bnstats", "compute", data, "--quiet", "-o", out]
    methods = {
        "bare Pillow decode loop (python -c)": lambda: run_command([sys.executable, "-c", BARE_LOOP, listing]),
        "bnstats compute --workers 1": lambda: run_command(cli + ["--workers", "1"]),
        "bnstats compute --workers 2": lambda: run_command(cli + ["--workers", "2"]),
        f"bnstats compute (default: {cores} cores)": lambda: run_command(cli),
        "library compute(workers=1), in-process": lambda: bnstats_run(files, 1),
        "library compute(workers=2), in-process": lambda: bnstats_run(files, 2),
        "library compute(default), in-process": lambda: bnstats_run(files, None),
        "python -m bnstats --version (start-up)": lambda: run_command([sys.executable, "-m", "bnstats", "--version"]),
    }
    if have_torch:
        recipe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_recipe.py")
        for nw in sorted({0, 1, 2, cores}):
            methods[f"torch recipe, {nw} workers (python script)"] = (
                lambda nw=nw: run_command([sys.executable, recipe, listing, str(nw)]))
            methods[f"torch recipe, {nw} workers, in-process"] = lambda nw=nw: torch_recipe(files, nw)

    times = {name: [] for name in methods}
    for _ in range(args.repeat):
        for name, fn in methods.items():
            times[name].append(timed(fn))
    rate = {name: len(files) / statistics.median(ts) for name, ts in times.items()}

    startup = statistics.median(times.pop("python -m bnstats --version (start-up)"))
    del rate["python -m bnstats --version (start-up)"]
    print(f"{'method':45s} {'img/s (median)':>15s} {'runs':>6s}")
    for name in times:
        print(f"{name:45s} {rate[name]:15.0f} {len(times[name]):6d}")
    print(f"bnstats start-up (python -m bnstats --version): {startup * 1000:.0f} ms, median")

    bare = rate["bare Pillow decode loop (python -c)"]
    one, two = rate["bnstats compute --workers 1"], rate["bnstats compute --workers 2"]
    lib_one, lib_two = rate["library compute(workers=1), in-process"], rate["library compute(workers=2), in-process"]
    default = rate[f"bnstats compute (default: {cores} cores)"]
    print("\nratios (target)                          command   library, in-process")
    print(f"  -j1 / bare Pillow loop               {one / bare:7.2f}x {lib_one / bare:9.2f}x   (>= 0.9)")
    print(f"  -j2 / -j1                            {two / one:7.2f}x {lib_two / lib_one:9.2f}x   (>= 1.8 on 2 cores)")
    if have_torch:
        script = max((n for n in rate if n.startswith("torch") and "script" in n), key=rate.get)
        inproc = max((n for n in rate if n.startswith("torch") and "in-process" in n), key=rate.get)
        lib_default = rate["library compute(default), in-process"]
        print(f"  default / torch recipe at its best   {default / rate[script]:7.2f}x {lib_default / rate[inproc]:9.2f}x   "
              f"(>= 3; best: {script.split(' (')[0]} / {inproc.split(', in')[0]})")

    cli = [sys.executable, "-m", "bnstats", "compute", "--quiet", "-o", out]
    small_rss, small_tree = peak_rss(cli + files[:200])
    big_rss, big_tree = peak_rss(cli + [data])
    mib = 1 / 2**20
    print("\npeak RSS of `bnstats compute` (default workers):")
    print(f"  largest process: {min(200, len(files))} images {small_rss * mib:6.1f} MiB, "
          f"{len(files)} images {big_rss * mib:6.1f} MiB, growth {(big_rss - small_rss) * mib:+.1f} MiB (< 5, < 150)")
    print(f"  whole process tree (sampled): {small_tree * mib:6.1f} MiB vs {big_tree * mib:6.1f} MiB")


if __name__ == "__main__":
    main()
