"""The seams: a new input kind, a new statistic and a new observer are each one class.

Each test here defines its class, registers it, and runs the real command or
library path with no other edit; workers, shards + merge, checkpoints and
skip lists must work on it as they do on folders of images.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from helpers import cli, registered
from bnstats.running.count import CountSpec
from bnstats.decoding.image import ArrayImage
from bnstats.decoding.options import DecodeOptions
from bnstats.running.engine import count_selection
from bnstats.jsonio import to_json
from bnstats.observers.base import Observer
from bnstats.output.merge import merge_reports
from bnstats.output.reading import Report
from bnstats.output.report import build_report
from bnstats.output.state import tally_from_dict, tally_to_dict
from bnstats.inputs.select import select
from bnstats.inputs.base import Source
from bnstats.statistics.base import Statistic


# -- a fake input kind: a text file whose lines are tiny images --------------------------------


class RowsSource(Source):
    """``*.rows`` files: line i holds ``H W v1 v2 ...`` (uint8, RGB), item key ``FILE:i``."""

    @classmethod
    def claims(cls, path):
        return path.endswith(".rows")

    def list_items(self):
        return sorted(f"{path}:{row:04d}" for path in self.paths for row in range(_line_count(path)))

    def read(self, keys):
        for key in keys:
            path, row = key.rsplit(":", 1)
            yield (key,), lambda path=path, row=int(row): _parse(_line(path, row))


def _line_count(path: str) -> int:
    with open(path) as f:
        return sum(1 for _ in f)


def _line(path: str, row: int) -> str:
    with open(path) as f:
        return next(itertools.islice(f, row, None))


def _parse(line: str) -> ArrayImage:
    h, w, *values = (int(v) for v in line.split())
    return ArrayImage(np.array(values, np.uint8).reshape(h, w, 3), ("R", "G", "B"))


@pytest.fixture
def rows_kind():
    """RowsSource registered for one test (and unregistered after)."""
    with registered("sources", "rows", RowsSource) as kind:
        yield kind


def _rows_file(path, images: int, seed: int, broken: tuple[int, ...] = ()):
    """Write ``images`` random tiny RGB images as lines; return the arrays (None where broken)."""
    rng = np.random.default_rng(seed)
    arrays, lines = [], []
    for i in range(images):
        h, w = rng.integers(1, 6, 2)
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i in broken:
            lines.append("2 2 1 2 3")  # too few values: unreadable
            arrays.append(None)
        else:
            lines.append(" ".join(map(str, [h, w, *a.ravel()])))
            arrays.append(a)
    path.write_text("\n".join(lines) + "\n")
    return arrays


def _reference(arrays) -> dict:
    flat = np.concatenate([a.reshape(-1, 3) for a in arrays if a is not None]).astype(np.float64)
    return {"mean": (flat.mean(axis=0) / 255).tolist(), "std": (flat.std(axis=0) / 255).tolist(),
            "pixels": len(flat)}


def _cli(*args, expect=0):
    return cli(*args, expect=expect)


def test_new_input_kind_runs_end_to_end(rows_kind, tmp_path):
    arrays = _rows_file(tmp_path / "a.rows", 70, seed=1, broken=(5,))
    ref = _reference(arrays)
    one = json.loads(_cli("compute", tmp_path / "a.rows", "-q", "-j", "1").stdout)
    two = json.loads(_cli("compute", tmp_path / "a.rows", "-q", "-j", "2").stdout)
    assert one == two
    np.testing.assert_allclose(one["mean"], ref["mean"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(one["std"], ref["std"], rtol=0, atol=1e-12)
    assert one["pixels"] == ref["pixels"] and one["images"] == 69
    assert [s["path"] for s in one["skipped"]] == [f"{tmp_path / 'a.rows'}:0005"]


def test_new_input_kind_shards_merge_and_resume(rows_kind, tmp_path):
    _rows_file(tmp_path / "a.rows", 90, seed=2)
    whole = _cli("compute", tmp_path / "a.rows", "-q", "-j", "1").stdout
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"part{k}.json")
        _cli("compute", tmp_path / "a.rows", "-q", "--shard", f"{k}/3", "-o", parts[-1])
    merged = json.loads(_cli("merge", *reversed(parts)).stdout)
    assert {k: v for k, v in merged.items() if k != "files"} == {
        k: v for k, v in json.loads(whole).items() if k != "files"}
    assert merged["files"] == json.loads(whole)["files"]


def test_new_input_kind_mixes_with_a_folder(rows_kind, tmp_path):
    arrays = _rows_file(tmp_path / "a.rows", 20, seed=3)
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(10):
        a = rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{i}.png")
        arrays.append(a)
    report = json.loads(_cli("compute", tmp_path / "a.rows", folder, "-q", "-j", "2").stdout)
    ref = _reference(arrays)
    np.testing.assert_allclose(report["mean"], ref["mean"], rtol=0, atol=1e-12)
    assert report["images"] == 30 and report["pixels"] == ref["pixels"]


# -- a fake statistic: exact per-channel sums of the values --------------------------------------


class ChannelSums(Statistic):
    """Σx per channel, as exact integers (raw) and in unit scale."""

    name = "sums"

    def __init__(self):
        self.sums = None

    def add_image(self, image):
        counts = image.histogram()
        sums = (counts @ np.arange(counts.shape[1])).tolist()
        self.merge_sums(sums)

    def merge_sums(self, sums):
        self.sums = list(sums) if self.sums is None else [a + b for a, b in zip(self.sums, sums)]

    def merge(self, other):
        if other.sums is not None:
            self.merge_sums(other.sums)
        return self

    def report(self):
        return {"sums": [s / 255 for s in self.sums], "raw": {"sums": self.sums}}

    def to_dict(self):
        return vars(self)

    @classmethod
    def from_dict(cls, d):
        return _restore(cls, d)


def _restore(cls, d: dict):
    """An object of ``cls`` whose attributes are ``d`` (the fakes' JSON state)."""
    obj = cls()
    vars(obj).update(d)
    return obj


@pytest.fixture
def sums_statistic():
    """ChannelSums registered for one test (and unregistered after)."""
    with registered("statistics", ChannelSums.name, ChannelSums) as statistic:
        yield statistic


def test_new_statistic_is_one_class(sums_statistic, sample_data):
    selection = select([str(sample_data)])
    spec = CountSpec(DecodeOptions(), statistics=("sums",))
    tallies = [count_selection(selection.keys, source=selection.source, spec=spec, workers=w) for w in (1, 2)]
    reports = [build_report(t, spec.options, selection.keys) for t in tallies]
    assert to_json(reports[0]) == to_json(reports[1])
    want = [0, 0, 0]
    for path in selection.keys:
        a = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(np.int64)
        want = [w + int(s) for w, s in zip(want, a.sum(axis=0))]
    assert reports[0]["raw"]["sums"] == want
    assert reports[0]["sums"] == [w / 255 for w in want]
    # the exact state goes through JSON (reports, checkpoints) and merges
    back = tally_from_dict(json.loads(json.dumps(tally_to_dict(tallies[0]))))
    assert back.extra["sums"].sums == want
    halves = [select([str(sample_data)], (k, 2)) for k in range(2)]
    parts = [Report(json.loads(to_json(build_report(
        count_selection(h.keys, source=h.source, spec=spec, workers=1), spec.options, h.coverage()))), f"part{k}")
        for k, h in enumerate(halves)]
    merged = merge_reports(parts)
    assert merged["raw"]["sums"] == want and merged["mean"] == reports[0]["mean"]


# -- a fake observer: the order in which images arrive ---------------------------------------------


class PixelCounts(Observer):
    """The pixel count of every image, in the order the observer saw them."""

    name = "order"

    def __init__(self):
        self.seen = []

    def add(self, moments, max_value):
        self.seen.append(moments.n)

    def result(self):
        return {"pixels": self.seen}

    def settings(self):
        return {}

    def to_dict(self):
        return vars(self)

    @classmethod
    def from_dict(cls, d):
        return _restore(cls, d)


@pytest.fixture
def order_observer():
    """PixelCounts registered for one test (and unregistered after)."""
    with registered("observers", PixelCounts.name, PixelCounts) as observer:
        yield observer


def test_new_observer_sees_images_in_order_and_blocks_merge(order_observer, sample_data):
    selection = select([str(sample_data)])
    want = [Image.open(p).size[0] * Image.open(p).size[1] for p in selection.keys]
    for workers in (1, 2):
        observer = PixelCounts()
        tally = count_selection(selection.keys, source=selection.source, workers=workers, observers=[observer])
        assert observer.seen == want
    doc = build_report(tally, DecodeOptions(), selection.keys, [observer])
    assert doc["order"] == {"pixels": want}
    with pytest.raises(ValueError, match="order"):
        merge_reports([Report(json.loads(to_json(doc)), "with-observer")])
