"""Scale-out: merge, shards, checkpoint/resume, and Dask clusters.

Done when: workers 1 = workers 2 = 3 shards merged = an interrupted-and-
resumed run = a Dask LocalCluster run, bit for bit, on the same images;
mismatched merges and checkpoints are refused clearly.

The same ImageFolder-style dataset (three class folders, two unreadable
files so that ``skipped`` has to travel through every path) is used
throughout. ``test_every_way_of_running_gives_the_same_json_bytes`` is the
"bit for bit": every way of running gives the very bytes of the JSON of one
``-j 1`` run (statistics, counts, skipped list, settings, files digest and
the exact ``state``).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bnstats
from bnstats.running import engine
from bnstats.running.cluster import count_on_dask
from bnstats.running.checkpoint import Checkpoint
from bnstats.decoding.options import DecodeOptions
from bnstats.running.count import CountSpec, Counted, UnreadableImage, count_files, count_partition
from bnstats.statistics.tally import Tally
from bnstats.running.engine import chunk_size_for, count_selection
from bnstats.jsonio import ReportError
from bnstats.output.report import build_report
from bnstats.inputs.files import FileSource
from helpers import iter_image_paths
from bnstats.inputs.selection import shard
from helpers import cli, cli_json, interrupt_after, link_copies, reaped, stderr_lines, wait_until_counting
from reference import STAT_KEYS

CLASSES = {"cat": 34, "dog": 33, "fox": 33}
CORRUPT = ("cat/cat_0005_broken.jpg", "fox/fox_0020_broken.png")
GROUPINGS = {"plain": (), "grouped": ("--group-by", "class")}


# -- helpers ----------------------------------------------------------------------------------

def assert_one_line_error(result, *needles):
    """Exit 1, nothing on stdout, one line on stderr containing every needle."""
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.stdout}{result.stderr}"
    assert result.stdout == ""
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


def load(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def skipped_paths(report: dict) -> list[str]:
    return [s["path"] for s in report["skipped"]]


def chunks_of(files) -> list[list[str]]:
    """The chunks counting cuts ``files`` into."""
    return [p.keys for p in FileSource([]).partitions(files, chunk_size_for(len(files)))]


def write_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_classes(root: Path) -> Path:
    """~100 small colour images in cat/dog/fox, of several sizes, PNG and JPEG, plus 2 broken files."""
    rng = np.random.default_rng(7)
    for c, (name, count) in enumerate(CLASSES.items()):
        for i in range(count):
            h, w = 16 + (i % 5) * 4, 20 + (i % 3) * 6
            level = 40 + 60 * c + (i % 7) * 10
            pixels = np.clip(rng.normal(level, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            ext = ".png" if i % 2 else ".jpg"
            write_image(root / name / f"{name}_{i:04d}{ext}", pixels)
    (root / CORRUPT[0]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / CORRUPT[1]).write_text("not a png either\n")
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def compute_shards(root: Path, folder: Path, *args, count: int = 3, prefix: str = "part") -> list[Path]:
    """``bnstats compute ROOT --shard k/COUNT ARGS -o FOLDER/PREFIXk.json`` for every k."""
    parts = []
    for k in range(count):
        part = folder / f"{prefix}{k}.json"
        cli("compute", root, "--shard", f"{k}/{count}", "-q", *args, "-o", part, expect=0)
        parts.append(part)
    return parts


def interrupted_run(data: Path, ck: Path, out: Path, *args, chunks: int = 3):
    """``bnstats compute DATA -j 1 --checkpoint CK -o OUT ARGS``, Ctrl-C'd while chunk ``chunks`` is counted.

    Checks that it stopped with exit 130, saved the checkpoint part-way
    through the file list and wrote no output.
    """
    files = iter_image_paths([str(data)])
    assert len(chunks_of(files)) > chunks, "the run must be stopped before its last chunk"
    with pytest.MonkeyPatch.context() as m:
        interrupt_after(m, chunks)
        result = cli("compute", data, "-j", "1", "--checkpoint", ck, "-o", out, *args)
    assert result.exit_code == 130, result.stderr
    assert ck.exists() and not out.exists()
    assert ck.name in result.stderr
    assert 0 < load(ck)["files_done"] < len(files)
    return result


# -- data -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_classes(tmp_path_factory.mktemp("scaleout") / "data")


@pytest.fixture(scope="module")
def files(root) -> list[str]:
    return iter_image_paths([str(root)])


@pytest.fixture(scope="module")
def reference_json(root) -> dict[str, bytes]:
    """The reference: the JSON bytes of one local ``-j 1`` run, plain and grouped by class."""
    return {name: cli("compute", root, "-j", "1", "-q", *args, expect=0).stdout_bytes
            for name, args in GROUPINGS.items()}


@pytest.fixture(scope="module")
def full(reference_json) -> dict:
    return json.loads(reference_json["plain"])


@pytest.fixture(scope="module")
def shard_parts(root, tmp_path_factory) -> list[Path]:
    return compute_shards(root, tmp_path_factory.mktemp("parts"))


@pytest.fixture(scope="module")
def grouped_shard_parts(root, tmp_path_factory) -> list[Path]:
    return compute_shards(root, tmp_path_factory.mktemp("grouped_parts"), *GROUPINGS["grouped"])


def test_dataset_has_skips(full, files):
    assert full["images"] == sum(CLASSES.values())
    assert len(files) == sum(CLASSES.values()) + len(CORRUPT)
    assert sorted(skipped_paths(full)) == sorted(f for f in files if "broken" in f)
    assert len(full["skipped"]) == len(CORRUPT)


def test_dataset_spans_several_chunks_and_shards(files, shard_parts, grouped_shard_parts):
    """The premises of the invariance test, with the chunking ``compute`` really uses."""
    chunks = chunks_of(files)
    assert len(chunks) >= 4  # -j 2 and -j 3 really share the work; Ctrl-C after chunk 3 leaves some
    # each broken file is in its own chunk: both skipped lists travel through merges
    assert sum(any("broken" in f for f in chunk) for chunk in chunks) == len(CORRUPT)
    # a class split across two shards is merged too
    shard_groups = [set(load(p)["groups"]) for p in grouped_shard_parts]
    assert any(sum(name in g for g in shard_groups) > 1 for name in CLASSES), shard_groups


def test_shards_split_the_file_list(shard_parts, full, files):
    parts = [load(p) for p in shard_parts]
    assert sum(p["images"] + len(p["skipped"]) for p in parts) == len(files)
    assert sum(p["pixels"] for p in parts) == full["pixels"]
    # the two broken files fall in different shards
    assert [len(p["skipped"]) for p in parts].count(0) == 1


# -- the invariance: every way of running gives the same bytes --------------------------------------------

def workers(n: int):
    def run(ctx) -> bytes:
        return cli("compute", ctx.root, "-j", n, "-q", *ctx.args, expect=0).stdout_bytes
    return run


def merged(order, to_file: bool = False):
    """``bnstats merge`` of the three shards in ``order`` (to ``-o FILE`` or to stdout)."""
    def run(ctx) -> bytes:
        parts = [ctx.parts[k] for k in order]
        if not to_file:
            return cli("merge", *parts, expect=0).stdout_bytes
        out = ctx.tmp_path / "merged.json"
        assert cli("merge", *parts, "-o", out, expect=0).stdout == ""
        return out.read_bytes()
    return run


def merge_of_merges(first: tuple[int, int], then: int, left: bool = True):
    """((a+b)+c) or (c+(a+b)): a merged result merges again."""
    def run(ctx) -> bytes:
        pair = ctx.tmp_path / "pair.json"
        cli("merge", ctx.parts[first[0]], ctx.parts[first[1]], "-o", pair, expect=0)
        args = (pair, ctx.parts[then]) if left else (ctx.parts[then], pair)
        return cli("merge", *args, expect=0).stdout_bytes
    return run


def ctrl_c_resumed(ctx) -> bytes:
    """Ctrl-C'd with -j 1 after 3 chunks (checkpoint saved), resumed with -j 2."""
    ck, out = ctx.tmp_path / "ck.json", ctx.tmp_path / "out.json"
    interrupted_run(ctx.root, ck, out, *ctx.args)
    result = cli("compute", ctx.root, "-j", "2", "--checkpoint", ck, "-o", out, *ctx.args, expect=0)
    assert "resum" in result.stderr.lower()
    assert not ck.exists()
    return out.read_bytes()


def dask(ctx) -> bytes:
    out = ctx.tmp_path / "dask.json"
    result = cli("compute", ctx.root, "--scheduler", ctx.cluster().scheduler_address, "-q", *ctx.args, "-o", out,
                 expect=0)
    assert result.stdout == ""
    return out.read_bytes()


def dask_shards_merged(ctx) -> bytes:
    address = ctx.cluster().scheduler_address
    parts = compute_shards(ctx.root, ctx.tmp_path, "--scheduler", address, *ctx.args, prefix="dask")
    return cli("merge", *parts, expect=0).stdout_bytes


WAYS = {
    "workers-2": workers(2),
    "workers-3": workers(3),
    "shards-merged-to-file": merged((0, 1, 2), to_file=True),
    "shards-merged-2-0-1": merged((2, 0, 1)),
    "shards-merged-1-2-0": merged((1, 2, 0)),
    "shards-merged-2-1-0": merged((2, 1, 0)),
    "merge-of-merges-left": merge_of_merges((0, 1), 2),
    "merge-of-merges-right": merge_of_merges((1, 2), 0, left=False),
    "ctrl-c-resumed": ctrl_c_resumed,
    "dask": dask,
    "dask-shards-merged": dask_shards_merged,
}


class Context:
    """What a way of running needs; the Dask cluster only when asked for."""

    def __init__(self, request, root, args, parts, tmp_path):
        self.root, self.args, self.parts, self.tmp_path = root, args, parts, tmp_path
        self.cluster = lambda: request.getfixturevalue("cluster")


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("way", [pytest.param(way, marks=pytest.mark.slow) if way.startswith("dask") else way
                                 for way in WAYS])  # a Dask cluster: the slow tier (CI runs it)
def test_every_way_of_running_gives_the_same_json_bytes(request, root, reference_json, shard_parts,
                                                        grouped_shard_parts, tmp_path, way, grouping):
    """-j 1 = -j 2 = -j 3 = shards merged in any order or grouping = Ctrl-C and resume = Dask, byte for byte."""
    parts = grouped_shard_parts if grouping == "grouped" else shard_parts
    ctx = Context(request, root, GROUPINGS[grouping], parts, tmp_path)
    assert WAYS[way](ctx) == reference_json[grouping]


def test_grouped_result_has_every_class(reference_json):
    grouped = json.loads(reference_json["grouped"])
    assert set(grouped["groups"]) == set(CLASSES)
    assert sum(g["images"] for g in grouped["groups"].values()) == grouped["images"]


# -- shards and merge --------------------------------------------------------------------------

def test_shard_of_only_unreadable_files_still_merges(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    write_image(root / "a.png", rng.integers(0, 256, (8, 8, 3), np.uint8))
    (root / "b.png").write_text("broken\n")
    write_image(root / "c.png", rng.integers(0, 256, (8, 8, 3), np.uint8))
    full = cli_json("compute", root, "-q")
    parts = []
    for k in range(3):
        part = tmp_path / f"p{k}.json"
        cli("compute", root, "--shard", f"{k}/3", "-q", "-o", part, expect=0)
        parts.append(part)
    assert cli_json("merge", *parts) == full


# -- merge refusals ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def depth_parts(tmp_path_factory) -> tuple[Path, Path]:
    """native results of 8-bit and of 16-bit gray images (same band name L)."""
    base = tmp_path_factory.mktemp("depth")
    rng = np.random.default_rng(3)
    write_image(base / "eight" / "a.png", rng.integers(0, 256, (10, 12), np.uint8))
    write_image(base / "sixteen" / "a.png", rng.integers(0, 65536, (10, 12), np.uint16))
    out = []
    for name in ("eight", "sixteen"):
        path = base / f"{name}.json"
        cli("compute", base / name, "--mode", "native", "-q", "-o", path, expect=0)
        out.append(path)
    return tuple(out)


def _refused_merge(*paths, tmp_path, needles=()):
    out = tmp_path / "merged.json"
    result = cli("merge", *paths, "-o", out)
    line = assert_one_line_error(result, *needles)
    assert not out.exists(), "a refused merge must not write its output"
    return line


def test_merge_refuses_different_mode(root, shard_parts, tmp_path):
    gray = tmp_path / "gray.json"
    cli("compute", root, "--shard", "1/3", "--mode", "gray", "-q", "-o", gray, expect=0)
    _refused_merge(shard_parts[0], gray, tmp_path=tmp_path, needles=["mode"])
    _refused_merge(gray, shard_parts[0], tmp_path=tmp_path, needles=["mode"])


def test_merge_refuses_different_resize(root, tmp_path):
    a, b = tmp_path / "r16.json", tmp_path / "r12.json"
    cli("compute", root, "--shard", "0/3", "--resize", "16", "-q", "-o", a, expect=0)
    cli("compute", root, "--shard", "1/3", "--resize", "12", "-q", "-o", b, expect=0)
    _refused_merge(a, b, tmp_path=tmp_path, needles=["resize"])


def test_merge_refuses_8bit_with_16bit(depth_parts, tmp_path):
    eight, sixteen = depth_parts
    assert load(eight)["max_value"] == 255 and load(sixteen)["max_value"] == 65535
    assert load(eight)["settings"] == load(sixteen)["settings"]  # only the data differ
    _refused_merge(eight, sixteen, tmp_path=tmp_path)
    _refused_merge(sixteen, eight, tmp_path=tmp_path)


def test_merge_refuses_different_bands(tmp_path):
    rng = np.random.default_rng(4)
    write_image(tmp_path / "rgb" / "a.png", rng.integers(0, 256, (6, 6, 3), np.uint8))
    write_image(tmp_path / "rgba" / "a.png", rng.integers(0, 256, (6, 6, 4), np.uint8))
    for name in ("rgb", "rgba"):
        cli("compute", tmp_path / name, "--mode", "native", "-q", "-o", tmp_path / f"{name}.json", expect=0)
    _refused_merge(tmp_path / "rgb.json", tmp_path / "rgba.json", tmp_path=tmp_path)


def test_merge_refuses_grouped_with_ungrouped(root, shard_parts, tmp_path):
    grouped = tmp_path / "grouped.json"
    cli("compute", root, "--shard", "1/3", "--group-by", "class", "-q", "-o", grouped, expect=0)
    _refused_merge(shard_parts[0], grouped, tmp_path=tmp_path, needles=["group"])
    _refused_merge(grouped, shard_parts[0], tmp_path=tmp_path, needles=["group"])


NOT_RESULTS = {
    "object": '{"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}\n',
    "list": "[1, 2, 3]\n",
    "string": '"stats"\n',
    "not-json": "mean = 0.5\n",
    "empty": "",
    "truncated": '{"mean": [0.5, 0.4',
    "null": "null\n",
    "number": "5\n",
}


@pytest.mark.parametrize("kind", [
    k for k in NOT_RESULTS
])
def test_merge_refuses_a_file_that_is_not_a_result(shard_parts, tmp_path, kind):
    bogus = tmp_path / f"{kind}.json"
    bogus.write_text(NOT_RESULTS[kind])
    line = _refused_merge(shard_parts[0], bogus, tmp_path=tmp_path)
    assert bogus.name in line
    _refused_merge(bogus, shard_parts[0], tmp_path=tmp_path)


def test_merge_refuses_compare_output(root, shard_parts, tmp_path):
    doc = cli("compare", root, "--limit", "8", "--json", "-q", expect=0).stdout
    bogus = tmp_path / "compare.json"
    bogus.write_text(doc)
    _refused_merge(shard_parts[0], bogus, tmp_path=tmp_path)


def test_merge_missing_file_is_usage_error(shard_parts, tmp_path):
    cli("merge", shard_parts[0], tmp_path / "nope.json", expect=2)


# -- checkpoint: in-process API -----------------------------------------------------------------

def _report(tally: Tally, options=DecodeOptions()) -> dict:
    return build_report(tally, options)


def test_checkpoint_api_resume_is_bit_for_bit(files, tmp_path):
    """Saved after two chunks, loaded, resumed with 1 or 2 workers: the uninterrupted tally."""
    save_at = 2 * chunk_size_for(len(files))
    assert save_at < len(files)
    assert any("broken" in f for f in files[:save_at])  # a skipped file is saved in the checkpoint
    ck = Checkpoint(str(tmp_path / "ck.json"), files, {"test": "api"})
    saved_at = []

    def on_chunk(tally, done):
        if done == save_at:
            ck.save(tally, done)
            saved_at.append(done)

    uninterrupted = count_selection(files, workers=1, on_chunk=on_chunk)
    assert saved_at == [save_at]
    loaded = ck.load()
    tally, done = loaded[0], loaded[1]
    assert done == save_at
    assert tally.stats.images + len(tally.skipped) == save_at
    assert any("broken" in s["path"] for s in tally.skipped)  # cat_0005_broken is among the first two chunks
    for workers in (1, 2):
        again = ck.load()
        resumed = count_selection(files, workers=workers, tally=again[0], start=again[1])
        assert _report(resumed) == _report(uninterrupted)
        assert resumed.skipped == uninterrupted.skipped


def test_checkpoint_api_refuses_other_file_list(files, tmp_path):
    path = str(tmp_path / "ck.json")
    ck = Checkpoint(path, files, {"mode": "rgb"})
    ck.save(count_selection(files[:16], workers=1), 16)
    with pytest.raises(ReportError):
        Checkpoint(path, files[:-1], {"mode": "rgb"}).load()
    with pytest.raises(ReportError):
        Checkpoint(path, files, {"mode": "gray"}).load()
    assert Checkpoint(path, files, {"mode": "rgb"}).load()[1] == 16


@pytest.fixture(scope="module")
def float_root(tmp_path_factory) -> Path:
    """40 single-band float32 TIFFs (Pillow mode F): the moments path, not histograms."""
    root = tmp_path_factory.mktemp("floats")
    rng = np.random.default_rng(11)
    for i in range(40):
        Image.fromarray(rng.normal(100 + i, 3 + i % 4, (20, 25)).astype(np.float32)).save(root / f"f{i:02d}.tif")
    return root


def test_float_data_workers_and_resume_are_bit_for_bit(float_root, tmp_path):
    """Float states are merged in the same sequence whatever the worker count or resume point."""
    options = DecodeOptions(mode="native")
    files = iter_image_paths([str(float_root)])
    one = count_selection(files, spec=CountSpec(options), workers=1)
    assert one.stats.kind != "histogram" and one.stats.max_value == 1
    assert _report(count_selection(files, spec=CountSpec(options), workers=2), options) == _report(one, options)
    ck = Checkpoint(str(tmp_path / "ck.json"), files, options.to_dict())
    count_selection(files, spec=CountSpec(options), workers=1, on_chunk=lambda t, d: ck.save(t, d) if d == 16 else None)
    loaded = ck.load()
    resumed = count_selection(files, spec=CountSpec(options), workers=2, tally=loaded[0], start=loaded[1])
    assert _report(resumed, options) == _report(one, options)


def test_float_data_shards_merge_to_within_rounding(float_root, tmp_path):
    """Different merge groupings of float moments agree to ~1e-15, not bit for bit (documented)."""
    full = cli_json("compute", float_root, "--mode", "native", "-q")
    parts = []
    for k in range(3):
        part = tmp_path / f"f{k}.json"
        cli("compute", float_root, "--mode", "native", "--shard", f"{k}/3", "-q", "-o", part, expect=0)
        parts.append(part)
    merged = cli_json("merge", *parts)
    assert merged["images"] == full["images"] and merged["pixels"] == full["pixels"]
    for key in STAT_KEYS:
        for a, b in zip(merged[key], full[key]):
            assert abs(a - b) <= 1e-12 * max(1.0, abs(b)), key


# -- checkpoint: CLI ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_checkpoint(root, tmp_path_factory) -> Path:
    """The checkpoint of a ``-j 1`` run on the dataset, Ctrl-C'd after 3 chunks."""
    folder = tmp_path_factory.mktemp("checkpoint")
    ck = folder / "saved.json"
    interrupted_run(root, ck, folder / "out.json")
    return ck


@pytest.fixture
def checkpointed(root, saved_checkpoint, tmp_path):
    """The dataset, this test's own copy of the saved checkpoint, and an output path."""
    ck = tmp_path / "ck.json"
    shutil.copyfile(saved_checkpoint, ck)
    return root, ck, tmp_path / "out.json"


def test_cli_checkpoint_refuses_different_mode(checkpointed):
    data, ck, out = checkpointed
    before = ck.read_bytes()
    result = cli("compute", data, "-j", "1", "--checkpoint", ck, "-o", out, "--mode", "gray")
    assert_one_line_error(result, str(ck), "mode")
    assert ck.read_bytes() == before, "a refused checkpoint must be left alone"
    assert not out.exists()


def test_cli_checkpoint_refuses_different_resize(checkpointed):
    data, ck, out = checkpointed
    result = cli("compute", data, "-j", "1", "--checkpoint", ck, "-o", out, "--resize", "8")
    assert_one_line_error(result, str(ck), "resize")


def test_cli_checkpoint_refuses_different_file_list(root, tmp_path):
    """One file added after the checkpoint was saved (on a copy of the dataset: the test changes it)."""
    data = copy_tree(root, tmp_path / "data")
    ck, out = tmp_path / "ck.json", tmp_path / "out.json"
    interrupted_run(data, ck, out)
    before = ck.read_bytes()
    write_image(data / "dog" / "dog_9999.png", np.zeros((8, 8, 3), np.uint8))
    result = cli("compute", data, "-j", "1", "--checkpoint", ck, "-o", out)
    assert_one_line_error(result, str(ck), "file")
    assert ck.read_bytes() == before
    assert not out.exists()

def test_cli_checkpoint_refuses_different_shard(checkpointed):
    data, ck, out = checkpointed
    result = cli("compute", data, "-j", "1", "--checkpoint", ck, "-o", out, "--shard", "0/2")
    assert_one_line_error(result, str(ck))


def _drop(key):
    def edit(doc):
        doc.pop(key)
        return json.dumps(doc)
    return edit


def _set(key, value):
    def edit(doc):
        doc[key] = value
        return json.dumps(doc)
    return edit


CORRUPT_CHECKPOINTS = {
    "truncated": lambda doc: json.dumps(doc)[:200],
    "empty": lambda doc: "",
    "garbage": lambda doc: "\x00\x01binary junk",
    "null": lambda doc: "null",
    "list": lambda doc: "[]",
    "a compute result": None,  # filled in by the test
    "no tally": _drop("tally"),
    "no files_done": _drop("files_done"),
    "bad tally": _set("tally", {"state": {"kind": "histogram"}}),
    "fingerprint null": _set("fingerprint", None),
}


@pytest.mark.parametrize("kind", list(CORRUPT_CHECKPOINTS))
def test_cli_checkpoint_refuses_corrupt_file(checkpointed, reference_json, kind):
    data, ck, out = checkpointed
    edit = CORRUPT_CHECKPOINTS[kind]
    if edit is None:
        ck.write_bytes(reference_json["plain"])  # the result of ``compute DATA -j 1 -q``
    else:
        ck.write_text(edit(load(ck)))
    result = cli("compute", data, "-j", "1", "--checkpoint", ck, "-o", out)
    assert_one_line_error(result, str(ck))
    assert not out.exists()


# -- checkpoint: a real Ctrl-C --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_root(big_jpegs, tmp_path_factory) -> Path:
    """400 big JPEGs (hard links to 4 distinct ones) plus a broken file: a few seconds on 2 cores."""
    root = link_copies(big_jpegs, tmp_path_factory.mktemp("slow") / "data", 400)
    (root / "img_0000_broken.jpg").write_text("not a jpeg\n")  # early: saved in the checkpoint's skipped list
    return root


@pytest.fixture(scope="module")
def slow_reference(slow_root) -> dict:
    """``bnstats compute SLOW_ROOT -j 1 -q``, each distinct file decoded once.

    The 400 files are links to 4 images: in front of the engine's unit of
    work, each chunk is counted as the merge of one-file tallies, and the
    tally of a file already seen (same inode) is reused. One-file tallies
    merge to the chunk's tally exactly (see
    ``test_count_files_chunks_merge_to_count_selection``), so this is the
    uninterrupted run's JSON without decoding the dataset a third time.
    """
    real = engine.count_partition
    seen = {}

    def count_each_file_once(source, keys, spec):
        part = Counted(Tally.for_spec(spec), [] if spec.per_image else None)
        for path in keys:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino, spec)
            if key not in seen:
                seen[key] = real(source, [path], spec)
            one = copy.deepcopy(seen[key])
            for skip in one.tally.skipped:
                skip["path"] = path
            part.tally.merge(one.tally)
            if part.images is not None:
                part.images += one.images
        return part

    with pytest.MonkeyPatch.context() as m:
        m.setattr(engine, "count_partition", count_each_file_once)
        report = cli_json("compute", slow_root, "-j", "1", "-q")
    assert len(seen) == 5  # the 4 images and the broken file: nothing else was decoded
    return report


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and fork")
def test_ctrl_c_saves_a_checkpoint_and_rerun_resumes_bit_for_bit(slow_root, slow_reference, tmp_path):
    """A real process, a real Ctrl-C to its process group: checkpoint saved; the same command resumes."""
    ck, out = tmp_path / "ck.json", tmp_path / "out.json"
    command = [sys.executable, "-m", "bnstats", "compute", str(slow_root), "-j", "2", "--checkpoint", str(ck),
               "-o", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=tmp_path)
    with reaped(proc):
        wait_until_counting(proc)
        time.sleep(0.8)
        assert proc.poll() is None, "bnstats finished before Ctrl-C: make slow_root bigger"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        stdout, stderr = proc.communicate(timeout=30)
    stderr = stderr.decode(errors="replace")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "ck.json" in stderr
    assert stdout == b""
    assert ck.exists() and not out.exists()
    total = len(iter_image_paths([str(slow_root)]))
    saved = load(ck)
    assert 0 < saved["files_done"] < total, saved["files_done"]

    # the same command again: resumes, finishes, cleans up
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert "resum" in rerun.stderr.lower()
    assert not ck.exists()
    resumed = load(out)
    assert resumed == slow_reference
    assert resumed["images"] == total - 1
    assert skipped_paths(resumed) == [str(slow_root / "img_0000_broken.jpg")]


# -- Python API --------------------------------------------------------------------------------------

def test_count_files_chunks_merge_to_count_selection(files, root):
    whole = count_selection(files, workers=1)
    cuts = [0, 7, 8, 50, 51, len(files)]  # uneven chunks, one of a single file
    tally = Tally()
    for a, b in zip(cuts, cuts[1:]):
        part = bnstats.count_files(files[a:b])
        part = pickle.loads(pickle.dumps(part))  # what a Ray/Spark/Dask task would send back
        tally.merge(part)
    assert _report(tally) == _report(whole)
    assert tally.skipped == whole.skipped
    grouped = Tally(groups={})
    for a, b in zip(cuts, cuts[1:]):
        grouped.merge(count_partition(FileSource([str(root)]), files[a:b], CountSpec(group_by=True)).tally)
    reference = count_selection(files, source=FileSource([str(root)]), spec=CountSpec(group_by=True), workers=2)
    assert _report(grouped) == _report(reference)
    assert set(reference.groups) == set(CLASSES)


def test_one_name_each_and_bnstats_compute_is_the_one_call_api():
    """issue 23: counting a selection is count_selection (no shortcut arguments beside spec=); ``bnstats.compute``
    is the one-call API of issue 26 (bnstats.api), no alias of it; count_files keeps no grouping argument
    (count_partition does that)."""
    import inspect

    assert bnstats.count_selection is count_selection
    assert bnstats.compute.__module__ == "bnstats.api" and bnstats.compute is not count_selection
    assert {"options", "strict", "group_roots"}.isdisjoint(inspect.signature(count_selection).parameters)
    assert {"options", "strict", "group_roots"}.isdisjoint(inspect.signature(count_on_dask).parameters)
    assert "group_roots" not in inspect.signature(count_files).parameters
    assert not hasattr(engine, "chunked")


def test_count_files_strict_names_the_file(files):
    from bnstats.running.count import UnreadableImage
    with pytest.raises(UnreadableImage) as info:
        count_files(files, strict=True)
    assert "broken" in info.value.path


# -- Dask -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster: 2 worker processes, scheduler in this process."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def client(cluster):
    """A fresh client per test."""
    import distributed
    client = distributed.Client(cluster.scheduler_address)
    try:
        yield client
    finally:
        client.close()


@pytest.mark.slow  # a Dask cluster: the slow tier (CI runs it)
def test_dask_api_with_a_client(client, files):
    local = count_selection(files, workers=1)
    for chunk_size in (64, 5):  # one level of reduce tasks, and a deeper tree
        progress = []
        tally = count_on_dask(files, scheduler=client, chunk_size=chunk_size,
                              on_chunk=lambda t, done: progress.append(done))
        assert _report(tally) == _report(local)
        assert tally.skipped == local.skipped
        assert progress and progress[-1] == len(files)


@pytest.mark.slow  # a Dask cluster: the slow tier (CI runs it)
def test_dask_float_data_agrees_within_rounding(client, float_root):
    options = DecodeOptions(mode="native")
    files = iter_image_paths([str(float_root)])
    local = count_selection(files, spec=CountSpec(options), workers=1).stats.result()
    remote = count_on_dask(files, spec=CountSpec(options), scheduler=client, chunk_size=7).stats.result()
    for key in STAT_KEYS:
        for a, b in zip(remote[key], local[key]):
            assert abs(a - b) <= 1e-12 * max(1.0, abs(b)), key


@pytest.mark.slow  # a Dask cluster: the slow tier (CI runs it)
def test_dask_strict_names_the_unreadable_file(cluster, root, tmp_path):
    out = tmp_path / "out.json"
    result = cli("compute", root, "--scheduler", cluster.scheduler_address, "--strict", "-q", "-o", out)
    line = assert_one_line_error(result)
    assert any(name.split("/")[1] in line for name in CORRUPT), line
    assert not out.exists()


@pytest.mark.slow  # a Dask cluster: the slow tier (CI runs it)
def test_dask_with_checkpoint_is_usage_error(cluster, root, tmp_path):
    result = cli("compute", root, "--scheduler", cluster.scheduler_address, "--checkpoint",
                 tmp_path / "ck.json", expect=2)
    assert result.stdout == ""
    assert not (tmp_path / "ck.json").exists()


def test_dask_bad_address_scheme_is_one_line_error(root):
    assert_one_line_error(cli("compute", root, "--scheduler", "nosuchproto://head:8786", "-q"), "nosuchproto")


@pytest.mark.slow
def test_dask_unreachable_scheduler_is_one_line_error(root):
    """Gives up after Dask's own connect timeout (the user's ``distributed.comm.timeouts.connect``)."""
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    t0 = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = cli("compute", root, "--scheduler", address, "-q")
    assert_one_line_error(result, address)
    assert time.monotonic() - t0 < 40


@pytest.mark.slow  # a Dask cluster: the slow tier (CI runs it)
def test_dask_empty_shard_gives_the_same_empty_part_as_local(cluster, root, files):
    assert shard(files, 0, 200) == []  # more shards than files: this one is empty
    local = cli("compute", root, "--shard", "0/200", "-q")
    remote = cli("compute", root, "--shard", "0/200", "--scheduler", cluster.scheduler_address, "-q")
    assert remote.exit_code == local.exit_code == 0
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert json.loads(local.stdout)["images"] == 0


@pytest.mark.slow  # a Dask cluster: the slow tier (CI runs it)
@pytest.mark.slow
def test_dask_api_leaves_the_callers_other_work_alone(client, files):
    mine = client.submit(sum, [1, 2, 3], pure=False)  # the caller's own work on the same client
    assert mine.result(timeout=30) == 6
    count_on_dask(files, scheduler=client, chunk_size=5)  # 21 chunks: a two-level reduce tree
    time.sleep(1.0)
    assert mine.status == "finished"
    assert mine.result(timeout=10) == 6


@pytest.mark.slow  # a Dask cluster: the slow tier (CI runs it)
def test_dask_with_relative_paths_reads_the_callers_files(cluster, root, monkeypatch):
    # Dask workers have their own working directory: relative paths must be
    # resolved here, and reported as the user spelled them.
    monkeypatch.chdir(root.parent)
    local = cli_json("compute", root.name, "-q", "-j", "1")
    remote = cli_json("compute", root.name, "-q", "--scheduler", cluster.scheduler_address)
    assert remote == local
    assert remote["skipped"] and all(s["path"].startswith(root.name) for s in remote["skipped"])


def test_merge_refuses_the_same_part_twice(shard_parts):
    result = cli("merge", shard_parts[0], shard_parts[1], shard_parts[0], expect=1)
    assert len(stderr_lines(result)) == 1
    assert "would count those twice" in result.stderr


def test_merged_files_digest_equals_the_full_runs(shard_parts, full, files):
    assert full["files"]["count"] == len(files)
    merged = cli_json("merge", *reversed(shard_parts))
    assert merged["files"] == full["files"]


def test_compute_job_from_python_saves_on_ctrl_c_and_resumes(files, full, tmp_path):
    from bnstats.running.engine import Interrupted
    from bnstats.running.job import ComputeJob

    ck = tmp_path / "job.ckpt"
    press_at = 2 * chunk_size_for(len(files))
    assert press_at < len(files)

    def press_ctrl_c(tally, done):
        if done >= press_at:
            os.kill(os.getpid(), signal.SIGINT)  # the engine defers it to the chunk boundary

    job = ComputeJob(files, workers=1, checkpoint=str(ck))
    with pytest.raises(Interrupted) as caught:
        job.run(on_chunk=press_ctrl_c)
    assert caught.value.saved_to == str(ck) and ck.exists()

    resumed = ComputeJob(files, workers=1, checkpoint=str(ck))
    assert resumed.start == caught.value.done > 0 and resumed.tally is not None
    report = resumed.run()
    resumed.done()
    assert not ck.exists()
    # a list of paths names no folder, so its files digest is of the paths as given, not relative to a root
    assert report["files"]["count"] == full["files"]["count"]
    assert {k: v for k, v in report.items() if k != "files"} == {k: v for k, v in full.items() if k != "files"}


# -- tasks of several partitions ----------------------------------------------------------------------


@pytest.fixture
def thumbnail_folder(tmp_path):
    """400 thumbnails (a partition of 16 takes well under a millisecond), the 301st unreadable."""
    rng = np.random.default_rng(11)
    for i in range(400):
        path = tmp_path / f"{i:04d}.png"
        if i == 300:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(path)
    return sorted(str(p) for p in tmp_path.iterdir())


def test_workers_get_several_partitions_per_task_and_the_result_is_the_same(thumbnail_folder, monkeypatch):
    sizes = []
    task_size = engine._task_size
    monkeypatch.setattr(engine, "_task_size", lambda *args: sizes.append(task_size(*args)) or sizes[-1])
    one = count_selection(thumbnail_folder, workers=1, chunk_size=16)
    two = count_selection(thumbnail_folder, workers=2, chunk_size=16)
    assert sizes[0] == 1 and max(sizes) > 1  # timed on the first tasks, then grouped
    assert sum(sizes) == 25  # every partition sent once
    assert pickle.dumps(one.stats.state) == pickle.dumps(two.stats.state) and one.skipped == two.skipped
    for workers in (1, 2):  # the last tasks stay small: an even share of what is left at most
        assert engine._task_size(1.0, 1000, 3, workers) == 1
    assert engine._task_size(1.0, 1000, 10**6, 2) == engine.MAX_TASK_PARTITIONS
    assert engine._task_size(1.0, 1, 10**6, 2) == 1  # a second per partition: one per task


def test_an_error_inside_a_task_comes_after_the_partitions_before_it(thumbnail_folder, monkeypatch):
    """--strict and an unreadable 301st file: every way of running merges the same 18 partitions first."""
    monkeypatch.setattr(engine, "TASK_SECONDS", 10.0)  # as many partitions per task as allowed
    merged = {}
    for workers in (1, 2):
        seen = merged[workers] = []
        with pytest.raises(UnreadableImage, match="0300.png"):
            count_selection(thumbnail_folder, spec=CountSpec(strict=True), workers=workers, chunk_size=16,
                    on_chunk=lambda tally, done: seen.append((done, tally.stats.images)))
    assert merged[1] == merged[2] and merged[1][-1] == (288, 288)
