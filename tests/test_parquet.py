"""Parquet files with an image column (Hugging Face layout, plain binary) as inputs."""

from __future__ import annotations

import io
import json
import struct
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import SETTINGS, _png_bytes, cli, cli_json, stderr_lines

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

STAT_FIELDS = ("mean", "std", "var", "min", "max", "pixels", "images", "channels")
CLASSES = ["cat", "coffee", "space"]


def hf_table(files, root, null_rows=(), bad_rows=()):
    """The Hugging Face ``Image`` layout: struct<bytes, path> and a ClassLabel ``label``, with HF metadata."""
    images, labels = [], []
    for i, path in enumerate(files):
        data = path.read_bytes()
        if i in bad_rows:
            data = b"not an image"
        images.append(None if i in null_rows else {"bytes": data, "path": path.name})
        labels.append(CLASSES.index(path.relative_to(root).parts[0]))
    table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "label": pa.array(labels, pa.int64())})
    features = {"image": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}
    return table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})


@pytest.fixture(scope="module")
def hf_parquet(sample_data, sample_files, tmp_path_factory):
    """The 36 sample images in HF layout, 4 row groups of at most 10 rows."""
    path = tmp_path_factory.mktemp("pq") / "train-00000-of-00001.parquet"
    pq.write_table(hf_table(sample_files, sample_data), path, row_group_size=10)
    return path


@pytest.fixture(scope="module")
def folder_result(sample_data):
    return cli_json("compute", sample_data, "-q", "--group-by", "class")


def same_stats(a, b):
    for field in STAT_FIELDS:
        if field in a or field in b:  # a class's entry has no "channels"
            assert a[field] == b[field], field


def test_hf_layout_with_row_groups_gives_the_folder_stats(hf_parquet, folder_result):
    assert pq.ParquetFile(hf_parquet).metadata.num_row_groups == 4
    result = cli_json("compute", hf_parquet, "-q")
    same_stats(result, folder_result)
    assert result["skipped"] == []


@pytest.mark.parametrize("draw", [["--sample", "36"], ["--sample", "5"], ["--until-ci", "1e-9"], ["--sample", "36", "-j", "2"]])
def test_a_sample_of_a_parquet_file_reads_every_row_drawn(hf_parquet, folder_result, draw):
    # a sample's keys come in random order: a task read only the row groups between its first and last key
    # drawn, and the rows outside were never counted nor skipped (--sample 36 counted 20 images, exit 0;
    # --sample 5 ended 'none of the 5 images could be read')
    result = cli_json("compute", hf_parquet, "-q", "--group-by", "label", *draw)
    assert result["images"] == int(draw[1]) if draw[0] == "--sample" else 36
    if result["images"] == 36:
        same_stats(result, folder_result)
        for name, group in folder_result["groups"].items():
            same_stats(result["groups"][name], group)
    assert result["skipped"] == [] and sum(g["images"] for g in result["groups"].values()) == result["images"]


def test_plain_binary_column(sample_files, folder_result, tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"jpg": [p.read_bytes() for p in sample_files], "name": [p.name for p in sample_files]}),
                   path, row_group_size=7)
    same_stats(cli_json("compute", path, "-q"), folder_result)


def test_group_by_label_column_gives_the_class_folders_groups(hf_parquet, folder_result):
    result = cli_json("compute", hf_parquet, "-q", "--group-by", "label")
    assert set(result["groups"]) == set(CLASSES)  # ClassLabel names from the HF metadata
    for name in CLASSES:
        same_stats(result["groups"][name], folder_result["groups"][name])


def test_group_by_a_column_needs_parquet(sample_data):
    result = cli("compute", sample_data, "--group-by", "label", expect=2)
    assert "--group-by class" in result.stderr and len(stderr_lines(result)) == 1


def test_group_by_a_missing_column(hf_parquet):
    result = cli("compute", hf_parquet, "--group-by", "nope", expect=1)
    assert "nope" in result.stderr and "label" in result.stderr and len(stderr_lines(result)) == 1


def test_workers_and_shards_give_the_same_bytes(hf_parquet, tmp_path):
    """Partitions follow row groups: -j1, -j2 and merged shards give one JSON byte for byte."""
    from bnstats.inputs.select import select

    selection = select([str(hf_parquet)])
    partitions = selection.source.partitions(selection.keys, 16)
    assert [len(p) for p in partitions] == [20, 16]  # cut at row-group starts (0, 10, 20, 30) only
    one = cli("compute", hf_parquet, "-q", "-j", "1", "--group-by", "label", expect=0).stdout_bytes
    two = cli("compute", hf_parquet, "-q", "-j", "2", "--group-by", "label", expect=0).stdout_bytes
    assert one == two
    parts = []
    for k in range(3):
        parts.append(tmp_path / f"part{k}.json")
        cli("compute", hf_parquet, "-q", "--shard", f"{k}/3", "--group-by", "label", "-o", parts[-1], expect=0)
    assert cli("merge", *parts, expect=0).stdout_bytes == one


def test_keys_are_file_and_zero_padded_row(hf_parquet):
    from bnstats.inputs.select import select

    keys = select([str(hf_parquet)]).keys
    assert keys[0] == f"{hf_parquet}:00" and keys[-1] == f"{hf_parquet}:35"


def test_null_and_undecodable_cells_are_skipped(sample_data, sample_files, tmp_path, folder_result):
    path = tmp_path / "holes.parquet"
    pq.write_table(hf_table(sample_files, sample_data, null_rows={3}, bad_rows={17}), path, row_group_size=10)
    result = cli_json("compute", path, "-q")
    assert [s["path"] for s in result["skipped"]] == [f"{path}:03", f"{path}:17"]
    assert "null" in result["skipped"][0]["error"]
    assert result["images"] == 34
    assert cli("compute", path, "-q", "--strict", expect=1).stderr.count("\n") == 1


def test_several_candidates_need_column(sample_files, tmp_path, folder_result):
    path = tmp_path / "two.parquet"
    data = [p.read_bytes() for p in sample_files]
    pq.write_table(pa.table({"a": data, "b": data}), path)
    result = cli("compute", path, expect=1)
    assert len(stderr_lines(result)) == 1
    assert "a, b" in result.stderr and "--column" in result.stderr and str(path) in result.stderr
    same_stats(cli_json("compute", path, "-q", "--column", "b"), folder_result)
    assert "'c'" in cli("compute", path, "--column", "c", expect=1).stderr


def test_no_image_column(tmp_path):
    path = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3], "name": ["a", "b", "c"]}), path)
    result = cli("compute", path, expect=1)
    assert len(stderr_lines(result)) == 1 and "--column" in result.stderr and "no image column" in result.stderr
    result = cli("compute", path, "--column", "x", expect=1)
    assert "not encoded images" in result.stderr


def test_corrupt_footer_is_one_line_naming_the_file(hf_parquet, tmp_path):
    path = tmp_path / "broken.parquet"
    data = hf_parquet.read_bytes()
    path.write_bytes(data[:-100] + b"\0" * 92 + data[-8:])  # the footer length points at garbage
    result = cli("compute", path, expect=1)
    assert len(stderr_lines(result)) == 1 and str(path) in result.stderr
    (tmp_path / "short.parquet").write_bytes(b"PAR1")
    result = cli("compute", tmp_path / "short.parquet", expect=1)
    assert len(stderr_lines(result)) == 1 and "short.parquet" in result.stderr


def test_found_in_a_folder(hf_parquet, tmp_path, folder_result):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(hf_parquet.read_bytes())
    same_stats(cli_json("compute", folder, "-q"), folder_result)


def test_without_pyarrow_names_the_extra(hf_parquet, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = cli("compute", hf_parquet, expect=1)
    assert "bnstats[parquet]" in result.stderr and len(stderr_lines(result)) == 1


def test_a_file_footer_is_parsed_once_per_process_and_again_when_the_file_changes(sample_data, sample_files,
                                                                                   tmp_path, monkeypatch):
    """Tasks reuse the footer the listing parsed (600 row groups: ~0.8 ms a task); a rewritten file is read anew."""
    from bnstats.running.engine import count_selection
    from bnstats.inputs.select import select

    path = tmp_path / "t.parquet"
    pq.write_table(hf_table(sample_files, sample_data), path, row_group_size=4)
    given = []
    original = pq.ParquetFile.__init__

    def spy(self, source, *args, metadata=None, **kwargs):
        given.append(metadata is not None)
        original(self, source, *args, metadata=metadata, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "__init__", spy)
    selection = select([str(path)])
    first = count_selection(selection.keys, source=selection.source, workers=1, chunk_size=4)
    assert given[0] is False and all(given[1:]) and len(given) > 3  # the listing parsed it; every task reused it
    half = sample_files[: len(sample_files) // 2]
    pq.write_table(hf_table(half, sample_data), tmp_path / "new.parquet", row_group_size=4)
    (tmp_path / "new.parquet").replace(path)  # another file under the same name
    del given[:]
    again = select([str(path)])
    second = count_selection(again.keys, source=again.source, workers=1, chunk_size=4)
    assert given[0] is False and len(again.keys) == len(half)
    assert second.stats.images == len(half) and first.stats.images == len(sample_files)


def test_a_file_rewritten_in_place_after_listing_is_read_as_it_now_is(sample_data, sample_files, folder_result,
                                                                       tmp_path):
    """Same path, inode and times, another layout: the kept footer no longer matches the file's bytes."""
    import os

    from bnstats.running.engine import count_selection
    from bnstats.inputs.select import select

    path = tmp_path / "t.parquet"
    pq.write_table(hf_table(sample_files, sample_data), path, row_group_size=4)
    selection = select([str(path)])  # the listing parses and keeps the footer
    stat = path.stat()
    other = tmp_path / "other.parquet"
    pq.write_table(hf_table(sample_files[::-1], sample_data), other, row_group_size=4, compression="none")
    with open(path, "r+b") as f:  # in place: the same inode
        f.truncate(0)
        f.write(other.read_bytes())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    for workers in (1, 2):
        tally = count_selection(selection.keys, source=selection.source, workers=workers, chunk_size=4)
        assert tally.skipped == [] and tally.stats.images == len(sample_files)
        assert tally.stats.result()["mean"] == pytest.approx(folder_result["mean"], rel=1e-12)


def test_kept_footers_are_shared_by_threads(sample_data, sample_files, tmp_path):
    """More files than are kept, read from 8 threads at once (Dask's threaded workers): no errors."""
    from concurrent.futures import ThreadPoolExecutor

    from bnstats.inputs import parquetfiles

    paths = []
    for i in range(24):
        paths.append(tmp_path / f"{i:02d}.parquet")
        pq.write_table(hf_table(sample_files[:4], sample_data), paths[-1])
    def read(path):
        with pa.OSFile(str(path)) as f:
            return parquetfiles.parquet_file(pa, f, str(path)).metadata.num_rows
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(read, paths * 20)) == {4}
    assert len(parquetfiles._FOOTERS) <= parquetfiles._FOOTERS_KEPT


def test_a_damaged_row_group_is_skipped_row_by_row(hf_parquet, tmp_path, sample_data):
    """Damage inside a row group (the footer intact, a page header garbled): its rows are skipped entries
    naming the group, on one printable line each, and the other groups are counted; the run goes on."""
    meta = pq.ParquetFile(hf_parquet).metadata
    column = meta.row_group(1).column(0)  # the image column of the second group (rows 10-19)
    at = column.data_page_offset + 2
    data = bytearray(hf_parquet.read_bytes())
    data[at : at + 40] = bytes(range(40))
    path = tmp_path / "damaged.parquet"
    path.write_bytes(bytes(data))
    result = cli("compute", path, "-j", "1", expect=0)
    report = json.loads(result.stdout)
    assert report["images"] == 26 and len(report["skipped"]) == 10
    assert [s["path"] for s in report["skipped"]] == [f"{path}:{row}" for row in range(10, 20)]
    assert all(s["error"].startswith("row group 1 cannot be read: ") and s["error"].isprintable()
               for s in report["skipped"])
    whole = cli_json("compute", hf_parquet, "-q")
    assert whole["images"] == 36 and "Traceback" not in result.stderr


def test_a_label_python_cannot_hold_is_grouped_by_its_text(sample_data, sample_files, tmp_path, folder_result):
    """A date32 label past year 9999 (arrow holds it, Python's date cannot): every image is counted, and the
    label becomes its text; before, the whole row group was skipped as unreadable."""
    table = hf_table(sample_files, sample_data)
    days = [2**31 - 1 if i % 2 else 0 for i in range(len(sample_files))]
    table = table.append_column("day", pa.array(days, pa.int32()).cast(pa.date32()))
    path = tmp_path / "dated.parquet"
    pq.write_table(table, path, row_group_size=10)
    result = cli_json("compute", path, "-q", "--group-by", "day")
    same_stats(result, folder_result)
    assert result["skipped"] == [] and len(result["groups"]) == 2 and "1970-01-01" in result["groups"]


def tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (2, 2), 7).save(buffer, "PNG")
    return buffer.getvalue()


def write_cells(path, cells, row_group_size=None, struct=True):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    column = (pa.array([None if c is None else {"bytes": c, "path": "x.png"} for c in cells],
                       pa.struct([("bytes", pa.binary()), ("path", pa.string())])) if struct
              else pa.array(cells, pa.binary()))
    pq.write_table(pa.table({"image": column}), path, compression="zstd", row_group_size=row_group_size,
                   dictionary_pagesize_limit=2**30)
    return path


def read_all(path):
    """``[(key, bytes or the skip message)]`` of every row, as a task reads them."""
    from bnstats.inputs.parquet import ParquetSource
    from bnstats.inputs.base import ItemError

    source = ParquetSource([str(path)])
    out = []
    for (key,), load in source.read(source.list_items()):
        try:
            out.append((key, load()))
        except ItemError as exc:
            out.append((key, str(exc)))
    return out


def test_dictionary_encoded_cells_are_bounded_before_they_are_materialised(tmp_path, monkeypatch):
    """64 rows of one 1 MiB value: a small file (one dictionary page) that decoded 64 MiB at once. Each cell is
    checked before its bytes are copied out: over the file bound it is skipped unread; and what the file
    inflates to in all is bounded by the ratio."""
    from bnstats import limits
    from bnstats.inputs import parquet

    cell = tiny_png() + bytes(2**20)
    path = write_cells(tmp_path / "bomb.parquet", [cell] * 64)
    assert path.stat().st_size < 64 * 1024
    copied = []
    real = parquet._Cells.value
    monkeypatch.setattr(parquet._Cells, "value", lambda self, i: copied.append(i) or real(self, i))

    monkeypatch.setattr(limits, "_current", limits.Limits(file_bytes=2**19))  # a cell is over it
    rows = read_all(path)  # the metadata says so: the row group is not read
    assert copied == [] and len(rows) == 64
    assert all(isinstance(m, str) and "row group 0: its columns decode to 1,048," in m for _, m in rows)
    with monkeypatch.context() as lying:  # a footer that understates the sizes: each cell is checked all the same
        lying.setattr(parquet, "_batch_rows", lambda group, columns, bounds, allowed=None: parquet.BATCH_ROWS)
        rows = read_all(path)
    assert copied == [] and len(rows) == 64
    assert all(isinstance(m, str) and "image cell of 1,048," in m and "BNSTATS_MAX_FILE_BYTES" in m for _, m in rows)

    monkeypatch.setattr(limits, "_current", limits.Limits(ratio=10, ratio_floor=8 * len(cell)))  # 8 cells in all
    result = cli("compute", path, "-q", "-j", "1")
    report = json.loads(result.stdout)
    assert report["images"] == 8 and len(report["skipped"]) == 56
    assert all(s["path"].startswith(f"{path}:") and "inflates to over" in s["error"] for s in report["skipped"])


def test_a_row_group_declaring_too_many_bytes_is_skipped_unread(tmp_path, monkeypatch):
    from bnstats import limits

    rng = np.random.default_rng(1)
    cells = [tiny_png() + rng.bytes(30_000) for _ in range(12)]
    path = write_cells(tmp_path / "groups.parquet", cells, row_group_size=4)  # 3 groups of ~120 KB
    monkeypatch.setattr(limits, "_current", limits.Limits(file_bytes=100_000))
    rows = read_all(path)
    assert len(rows) == 12
    assert all(isinstance(m, str) and m.startswith("row group ") and "decode to" in m and "BNSTATS_MAX_FILE_BYTES" in m
               for _, m in rows)
    monkeypatch.setattr(limits, "_current", limits.Limits(file_bytes=200_000))
    assert [m for _, m in read_all(path)] == cells


def test_batches_hold_about_batch_bytes():
    from bnstats import limits
    from bnstats.inputs import parquet

    class Column:
        def __init__(self, size):
            self.total_uncompressed_size, self.path_in_schema = size, "image.bytes"

    class Group:
        def __init__(self, rows, size):
            self.num_rows, self.num_columns, self._column = rows, 1, Column(size)

        def column(self, j):
            return self._column

    bounds = limits.Limits()
    assert parquet._batch_rows(Group(1000, 1000 * 300), ["image"], bounds) == parquet.BATCH_ROWS  # thumbnails
    assert parquet._batch_rows(Group(100, 100 * 8 * 2**20), ["image"], bounds) == parquet.BATCH_BYTES // (8 * 2**20)
    assert parquet._batch_rows(Group(10, 10 * 100 * 2**20), ["image"], bounds) == 1
    with pytest.raises(limits.LimitError):
        parquet._batch_rows(Group(10, 2 * bounds.file_bytes), ["image"], bounds)


def test_every_cell_is_read_whole_or_skipped_for_its_bound(tmp_path_factory):
    """The class: whatever the rows, distinct values and bounds, a row's bytes come back exactly or it is skipped
    for the bound it broke (its own size, or the budget spent by the rows before it), and no cell over the file
    bound is ever copied out."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    from bnstats import limits
    from bnstats.inputs import parquet

    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path_factory.mktemp("cells")
    real = parquet._Cells.value

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(sizes=st.lists(st.sampled_from([0, 10, 3000, 20_000, 70_000]), min_size=1, max_size=12),
           repeat=st.integers(1, 4), nulls=st.sets(st.integers(0, 11)), struct=st.booleans(),
           file_bytes=st.sampled_from([5000, 50_000, 10**6]), floor=st.sampled_from([30_000, 200_000, 10**7]))
    def check(sizes, repeat, nulls, struct, file_bytes, floor):
        cells = [None if i in nulls else bytes([i % 7]) * size for i, size in enumerate(sizes) for _ in range(repeat)]
        path = write_cells(folder / "cells.parquet", cells, row_group_size=5, struct=struct)
        bound = limits.Limits(file_bytes=file_bytes, ratio=2, ratio_floor=floor)
        limits.install(bound)
        copied = []
        parquet._Cells.value = lambda self, i: copied.append(len(real(self, i))) or real(self, i)
        try:
            rows = read_all(path)
        finally:
            parquet._Cells.value = real
            limits.install(limits.Limits.from_environ())
        allowed, spent = max(2 * path.stat().st_size, floor), 0
        meta = pq.ParquetFile(path).metadata
        declared = [sum(meta.row_group(g).column(j).total_uncompressed_size
                        for j in range(meta.row_group(g).num_columns)) for g in range(meta.num_row_groups)]
        for row, ((key, got), cell) in enumerate(zip(rows, cells, strict=True)):
            if declared[row // 5] > min(file_bytes, allowed):  # the metadata says the group is too large: not read
                assert got.startswith(f"row group {row // 5}: ")
            elif cell is None:
                assert "null cell" in got
            elif len(cell) > file_bytes:
                assert "over the limit" in got
            else:
                spent += len(cell)
                assert got == cell if spent <= allowed else "inflates to over" in got
        assert all(n <= file_bytes for n in copied)

    check()


def _parquet_bytes(values: list[int]) -> bytes:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image": [_png_bytes(v) for v in values]}), buffer, row_group_size=2)
    return buffer.getvalue()


def _damage_parquet(data: bytes, how: str) -> bytes:
    footer = struct.unpack("<I", data[-8:-4])[0]
    if how == "cut":
        return data[: len(data) // 2]
    if how == "footer length":
        return data[:-8] + struct.pack("<I", 10**9) + data[-4:]
    if how == "thrift":
        start = len(data) - 8 - footer
        return data[: start + 5] + b"\xff" * 35 + data[start + 40 :]
    return b"PAR1" + bytes(100)  # "no footer"


@pytest.mark.parametrize("how", ["cut", "footer length", "thrift", "no footer"])
def test_a_damaged_parquet_among_good_ones_is_a_skip_entry(tmp_path, how):
    good = _parquet_bytes([0, 10, 20, 30])
    (tmp_path / "a.parquet").write_bytes(good)
    (tmp_path / "b.parquet").write_bytes(_damage_parquet(_parquet_bytes([200, 200]), how))
    out = cli_json("compute", tmp_path, "-q", "-j", "1")
    assert out["images"] == 4
    assert out["raw"]["mean"] == [15.0, 15.0, 15.0]
    assert [entry["path"] for entry in out["skipped"]] == [str(tmp_path / "b.parquet")]
    strict = cli("compute", tmp_path, "-q", "-j", "1", "--strict", expect=1)
    assert "b.parquet" in strict.stderr and len(strict.stderr.strip().splitlines()) == 1


@SETTINGS
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_damaged_parquet_files_leave_exactly_the_others(tmp_path_factory, sizes, data):
    folder = tmp_path_factory.mktemp("pq")
    damaged = data.draw(st.sets(st.integers(0, len(sizes) - 1), max_size=len(sizes) - 1))
    expected = []
    for i, rows in enumerate(sizes):
        values = [(i * 40 + r * 7) % 256 for r in range(rows)]
        blob = _parquet_bytes(values)
        if i in damaged:
            blob = _damage_parquet(blob, data.draw(st.sampled_from(["cut", "footer length", "thrift", "no footer"])))
        else:
            expected += values
        (folder / f"f{i}.parquet").write_bytes(blob)
    out = cli_json("compute", folder, "-q", "-j", "1")
    assert out["images"] == len(expected)
    assert out["raw"]["mean"][0] == pytest.approx(sum(expected) / len(expected))
    assert [entry["path"] for entry in out["skipped"]] == [str(folder / f"f{i}.parquet") for i in sorted(damaged)]
