"""The photos from a local S3 endpoint (moto) and as one Parquet file, against the same from local disk.

Builds (or reuses) the photo-like JPEG dataset of ``bench_inputs.py``
(``--count`` images, ~400x350) as a folder and 8 uncompressed tar shards,
writes one Parquet file of the images (Hugging Face layout, 8 row groups),
starts moto's S3 server as its own process on 127.0.0.1 and uploads the
images as loose objects, the 8 shards and the Parquet file. Then times
``bnstats.compute()`` in this process at -j1 and -j2 on each (medians of
repeats, each in a shuffled order) and prints the ratios the targets are
stated in (ratios of medians, and medians of the ratios within a repeat):

  * Parquet (local) / folder                 (target >= 1.0)
  * S3 tar shards / local tar shards         (target >= 0.8)
  * peak RSS of ``bnstats compute`` for 200 vs all images, S3 shards and Parquet (target: flat); Parquet
    both with 8 row groups (groups grow with the count) and with 100-row groups (Hugging Face's layout)

The moto server runs on the same cores as the workers: its CPU time is in
the S3 figures (a real endpoint's is not).

    python benchmarks/bench_remote.py                        # 2000 images, 3 repeats
    python benchmarks/bench_remote.py --count 500 --repeat 1
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compute import compile_bnstats, machine, peak_rss  # noqa: E402
from bench_inputs import arguments, build, warm  # noqa: E402

import bnstats  # noqa: E402
from bnstats.running.engine import count_selection  # noqa: E402
from bnstats.inputs.select import select  # noqa: E402
from bnstats.inputs.base import InputOptions  # noqa: E402

ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def write_parquet(files: list[str], path: str, row_groups: int = 8, per_group: int | None = None) -> None:
    """The images in the Hugging Face layout: ``row_groups`` groups, or groups of ``per_group`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.exists(path):
        return
    per_group = per_group or -(-len(files) // row_groups)
    row_groups = -(-len(files) // per_group)
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for g in range(row_groups):
            chunk = files[g * per_group : (g + 1) * per_group]
            images = [{"bytes": Path(f).read_bytes(), "path": os.path.basename(f)} for f in chunk]
            writer.write_table(pa.table({"image": images, "label": [0] * len(chunk)}, schema=schema))


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto server did not start")


def upload(fs, kinds: dict, parquet: str, files: list[str], prefix: str) -> dict[str, list[str]]:
    fs.mkdir(prefix.split("/")[0]) if not fs.exists(prefix.split("/")[0]) else None
    for f in files:
        fs.put_file(f, f"{prefix}/loose/{os.path.relpath(f, kinds['folder'][0])}")
    for shard in kinds["shards"]:
        fs.put_file(shard, f"{prefix}/shards/{os.path.basename(shard)}")
    fs.put_file(parquet, f"{prefix}/hf/train.parquet")
    return {"s3 loose": [f"s3://{prefix}/loose/"], "s3 shards": [f"s3://{prefix}/shards/"],
            "s3 parquet": [f"s3://{prefix}/hf/train.parquet"]}


def folder_files(folder: str, count: int) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)[:count]


def main() -> None:
    args = arguments(__doc__).parse_args()
    compile_bnstats()
    os.environ.update(ENV)
    import s3fs

    sizes = sorted({200, args.count}) if args.count > 200 else [args.count]
    local, remote, local_hf = {}, {}, {}
    proc, endpoint = start_moto()
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        for n in sizes:
            kinds = build(os.path.join(args.data, str(n)), n)
            files = folder_files(kinds["folder"][0], n)
            parquet = os.path.join(args.data, str(n), "train.parquet")
            write_parquet(files, parquet)
            hf = os.path.join(args.data, str(n), "train-rg100.parquet")
            write_parquet(files, hf, per_group=100)  # the row groups Hugging Face writes for image datasets
            local[n] = {"folder": kinds["folder"], "shards": kinds["shards"], "parquet": [parquet]}
            local_hf[n] = [hf]
            remote[n] = upload(fs, kinds, parquet, files, f"bench/{n}")
            for paths in local[n].values():
                warm(paths)
        options = InputOptions(storage_options=(("endpoint_url", endpoint),))
        every = {**local[args.count], **remote[args.count]}
        print(f"bnstats {bnstats.__version__} · {args.count} photo-like JPEGs ~400x350 · {machine()}")
        print("S3: moto server (own process) on 127.0.0.1\n")
        selections = {name: select(paths, options=options) for name, paths in every.items()}
        runs = {(name, w): [] for name in every for w in (1, 2)}
        shuffle = random.Random(0).shuffle
        for _ in range(args.repeat):
            order = list(runs)
            shuffle(order)  # no input always right after another (the page cache, the allocator, the clock)
            for name, workers in order:
                times = runs[name, workers]
                selection = selections[name]
                t0 = time.perf_counter()
                tally = count_selection(selection.keys, source=selection.source, workers=workers)
                times.append(time.perf_counter() - t0)
                assert tally.stats.images == args.count, (name, tally.stats.images, tally.skipped[:3])
        median = {key: statistics.median(times) for key, times in runs.items()}
        print(f"{'input':12s} {'-j1 img/s':>10s} {'-j2 img/s':>10s}")
        for name in every:
            print(f"{name:12s} {args.count / median[name, 1]:10.0f} {args.count / median[name, 2]:10.0f}")
        print("\nratios of medians, and the median of the ratios within each repeat (target)")
        for w in (1, 2):
            for what, base, target in (("parquet", "folder", "(>= 1.0)"), ("s3 shards", "shards", "(>= 0.8)"),
                                       ("s3 loose", "folder", ""), ("s3 parquet", "parquet", "")):
                paired = statistics.median(b / t for b, t in zip(runs[base, w], runs[what, w]))
                print(f"  {what} / {base} at -j{w}".ljust(38) + f"{median[base, w] / median[what, w]:6.2f}x "
                      f"{paired:6.2f}x   {target}")
        if len(sizes) > 1:
            print("\npeak RSS of `bnstats compute` (default workers), largest process, 200 images vs all:")
            cli = [sys.executable, "-m", "bnstats", "compute", "--quiet", "--storage-option", f"endpoint_url={endpoint}"]
            small = {**local[200], **remote[200], "parquet, 100-row groups": local_hf[200]}
            for name in ("folder", "parquet", "parquet, 100-row groups", "s3 shards", "s3 loose", "s3 parquet"):
                few, _ = peak_rss(cli + small[name])
                many, _ = peak_rss(cli + {**every, "parquet, 100-row groups": local_hf[args.count]}[name])
                print(f"  {name:24s} {few / 2**20:7.1f} MiB  {many / 2**20:7.1f} MiB   growth "
                      f"{(many - few) / 2**20:+6.1f} MiB (flat)")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
