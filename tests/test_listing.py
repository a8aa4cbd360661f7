"""Counting while a folder is walked (``bnstats.inputs.listing``): the first partitions are counted before the
walk ends, and the report is the one a run of the finished list gives, byte for byte.

The engine's chunk sizes and the packed blocks are made small here, so that a folder of a few dozen files is
cut and counted as a tree of millions is.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from bnstats.inputs import walk as walking
from bnstats.inputs.keys import PackedKeys
from bnstats.inputs.listing import ListingInProgress
from bnstats.inputs.select import select
from bnstats.jsonio import to_json
from bnstats.running import engine
from bnstats.running.count import CountSpec
from bnstats.decoding.options import DecodeOptions
from bnstats.running.job import ComputeJob

from helpers import cli, interrupt_after, one_line_error, run_module


@pytest.fixture
def small_cuts(monkeypatch):
    """Blocks of 4 keys, partitions of 1..2 items: 64 files make the cut every longer list gets."""
    monkeypatch.setattr(PackedKeys, "BLOCK", 4)
    monkeypatch.setattr(engine, "CHUNK_SIZE", 1)
    monkeypatch.setattr(engine, "MAX_CHUNK_SIZE", 2)


def folder_of(tmp_path, count: int, dtype=np.uint8, name="data", classes=3) -> str:
    rng = np.random.default_rng(count)
    for i in range(count):
        sub = tmp_path / name / f"c{i % classes}"
        sub.mkdir(parents=True, exist_ok=True)
        if dtype == np.uint8:
            Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(sub / f"{i:04d}.png")
        else:  # 32-bit float TIFFs: float sums depend on the cut, so equal bytes prove the same cut
            Image.fromarray(rng.normal(size=(4, 5)).astype(np.float32)).save(sub / f"{i:04d}.tif")
    return str(tmp_path / name)


def listed_report(path: str, spec=CountSpec(), workers: int = 1) -> str:
    return to_json(ComputeJob(select([path]), spec, workers=workers).run())


def streamed_report(path: str, spec=CountSpec(), workers: int = 1, on_chunk=None) -> tuple[str, ComputeJob]:
    job = ComputeJob(ListingInProgress([path]), spec, workers=workers)
    assert job.listing is not None  # counted while listed
    return to_json(job.run(on_chunk=on_chunk)), job


def test_the_first_partitions_are_counted_before_the_walk_ends(tmp_path, small_cuts, monkeypatch):
    path = folder_of(tmp_path, 120)
    counted = threading.Event()
    held = []
    walk = walking._sorted_walk

    def slow_walk(*args):
        for n, item in enumerate(walk(*args)):
            if n == 100:  # hold the walk here until a partition has been counted
                held.append(counted.wait(20))
            yield item

    monkeypatch.setattr(walking, "_sorted_walk", slow_walk)
    streamed, _ = streamed_report(path, on_chunk=lambda tally, done: counted.set())
    assert held == [True]  # counted while the walk was held: not after it
    monkeypatch.setattr(walking, "_sorted_walk", walk)
    assert streamed == listed_report(path)


@pytest.mark.parametrize("count", [1, 5, 63, 64, 65, 130])
def test_the_report_is_the_finished_lists_byte_for_byte(tmp_path, small_cuts, count):
    path = folder_of(tmp_path, count)
    assert streamed_report(path)[0] == listed_report(path)


def test_float_data_is_cut_and_merged_as_the_finished_list(tmp_path, small_cuts):
    path = folder_of(tmp_path, 70, dtype=np.float32)
    spec = CountSpec(DecodeOptions(mode="native"))
    streamed = streamed_report(path, spec)[0]
    assert '"m2"' in streamed  # a float state: sums in float64, merged in partition order
    assert streamed == listed_report(path, spec)


@pytest.mark.slow
def test_worker_processes_count_while_the_walk_goes_on(tmp_path, small_cuts):
    path = folder_of(tmp_path, 90)
    assert streamed_report(path, workers=2)[0] == listed_report(path, workers=1)


@pytest.mark.parametrize("other", ["rows.npy", "more.tar"])
def test_a_folder_that_also_holds_arrays_or_archives_is_counted_as_listed(tmp_path, small_cuts, other):
    path = folder_of(tmp_path, 20)
    if other.endswith(".npy"):
        np.save(os.path.join(path, "c1", other), np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3))
    else:
        import tarfile

        with tarfile.open(os.path.join(path, other), "w") as tar:
            tar.add(os.path.join(path, "c0", "0000.png"), arcname="x/0000.png")
    streamed, job = streamed_report(path)
    assert streamed == listed_report(path)
    assert job.selection.keys is not None and len(job.selection.keys) > 20  # the other items were counted


def test_the_cli_counts_a_folder_while_walking_it_and_prints_the_same_json(tmp_path, small_cuts, monkeypatch):
    path = folder_of(tmp_path, 40)
    started = []
    monkeypatch.setattr(ListingInProgress, "walk", lambda self, walk=ListingInProgress.walk: started.append(1)
                        or walk(self))
    streamed = cli("compute", path, "-j", "1", expect=0).stdout
    assert started == [1]
    cli("compute", path, "-j", "1", "--group-by", "class", expect=0)  # listed first: classes are checked
    assert started == [1]
    listed = to_json(ComputeJob(select([path]), workers=1).run())
    assert streamed == listed


def test_what_cannot_be_counted_while_listed_is_listed_first(tmp_path):
    path = folder_of(tmp_path, 6)
    for kwargs in ({"checkpoint": str(tmp_path / "ck")}, {"chunk_size": 2}):
        job = ComputeJob(ListingInProgress([path]), **kwargs)
        assert job.listing is None and len(job.selection) == 6
    assert not ListingInProgress.possible([path, path])
    assert not ListingInProgress.possible([os.path.join(path, "c0", "0000.png")])
    assert not ListingInProgress.possible(["s3://bucket/data"])


def test_an_empty_folder_says_the_same_as_before(tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(cli("compute", tmp_path / "empty"), 1)
    assert "no images found under" in line


@pytest.mark.slow
def test_a_folder_that_cannot_be_read_is_a_skip_and_fatal_with_strict(tmp_path):
    path = folder_of(tmp_path, 5)
    locked = os.path.join(path, "c0", "locked")
    os.mkdir(locked)
    os.chmod(locked, 0)
    try:
        result = run_module("compute", path, "-j", "1", unprivileged=True)
        assert result.returncode == 0 and f"skipped {locked}" in result.stderr
        assert json.loads(result.stdout)["skipped"] == [{"path": locked, "error": "PermissionError: Permission denied"}]
        strict = run_module("compute", path, "-j", "2", "--strict", unprivileged=True)
        assert strict.returncode == 1 and strict.stdout == "", strict.stderr
        assert strict.stderr.splitlines() == [f"Error: cannot read {locked}: PermissionError: Permission denied"]
        listed = run_module("compute", path, "--strict", "--group-by", "class", unprivileged=True)  # listed first
        assert (listed.returncode, listed.stderr) == (1, strict.stderr)
    finally:
        os.chmod(locked, 0o755)


def test_ctrl_c_while_the_folder_is_walked_and_counted_exits_130(tmp_path, small_cuts, monkeypatch):
    path = folder_of(tmp_path, 40)
    interrupt_after(monkeypatch, 3)
    result = cli("compute", path, "-j", "1", "-q", expect=130)
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_folder_that_holds_other_kinds_stops_counting_when_the_walk_finds_one(tmp_path, small_cuts, monkeypatch):
    """The count while walking stops at the first array the walk finds (not after counting every image), and
    the count of the finished selection shows each skipped file once."""
    path = folder_of(tmp_path, 60)
    np.save(os.path.join(path, "c0", "0030.npy"), np.zeros((2, 4, 5, 3), np.uint8))  # found a third of the way
    (tmp_path / "data" / "c2" / "0059.png").write_bytes(b"not a png")
    counted = []
    real = engine.count_partition
    monkeypatch.setattr(engine, "count_partition", lambda *a, **k: counted.append(len(a[1])) or real(*a, **k))
    result = cli("compute", path, "-j", "1", expect=0)
    assert sum(counted) <= 62 + 16  # the finished selection (60 images, 2 rows), and little before it
    listed = ComputeJob(select([path]), workers=1).run()
    assert json.loads(result.stdout) == json.loads(to_json(listed))
    assert result.stderr.count("skipped") == 1
