"""Zarr stores (v2 and v3) as arrays of images: written by zarr itself, counted exactly against numpy float64 of
zarr's own reading, in chunk-aligned tasks; a store in a folder walk, damaged and hostile stores, a URL store."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import assert_same_for_workers_and_shards, cli, cli_json, interrupt_after, one_line_error

zarr = pytest.importorskip("zarr")


def write_store(path, data, chunks, zarr_format, name=None, **kw):
    """``data`` written by zarr into a new store at ``path`` (as its one array, or array ``name`` of a group)."""
    if name is None:
        array = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                                  zarr_format=zarr_format, **kw)
    else:
        group = zarr.open_group(str(path), mode="a", zarr_format=zarr_format)
        array = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, **kw)
    array[:] = data
    return path


def as_read_by_zarr(path, name=None) -> np.ndarray:
    node = zarr.open(store=str(path), mode="r")
    return (node if name is None else node[name])[:]


def assert_matches_numpy(report, pixels: np.ndarray, exact_median: bool):
    pixels = pixels.astype(np.float64)
    np.testing.assert_allclose(report["raw"]["mean"], pixels.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(report["raw"]["std"], pixels.std(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(report["raw"]["min"], pixels.min(axis=0))
    np.testing.assert_array_equal(report["raw"]["max"], pixels.max(axis=0))
    if exact_median:
        np.testing.assert_array_equal(report["raw"]["median"], np.median(pixels, axis=0))


@pytest.fixture(scope="module", params=[2, 3], ids=["v2", "v3"])
def rgb(request, tmp_path_factory):
    """A store that is one uint8 (N, H, W, 3) array in chunks of 32 rows, of each Zarr format."""
    data = np.random.default_rng(request.param).integers(0, 256, (300, 8, 6, 3), dtype=np.uint8)
    path = write_store(tmp_path_factory.mktemp("zarr") / "rgb.zarr", data, (32, 8, 6, 3), request.param)
    return path, request.param


def test_a_uint8_store_equals_numpy_of_zarrs_reading_exactly(rgb):
    path, _ = rgb
    report = cli_json("compute", path, "-j", "1")
    pixels = as_read_by_zarr(path).reshape(-1, 3)
    assert report["images"] == 300 and report["channels"] == ["R", "G", "B"] and report["max_value"] == 255
    assert report["state"]["kind"] == "histogram" and report["skipped"] == []
    assert_matches_numpy(report, pixels, exact_median=True)
    assert cli_json("compute", f"{path}/", "-j", "1")["mean"] == report["mean"]  # a trailing / is the same store


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_uint16_channels_first_with_channel_axis(tmp_path, zarr_format):
    data = np.random.default_rng(9).integers(0, 65536, (40, 2, 5, 4), dtype=np.uint16)  # (N, C, H, W)
    path = write_store(tmp_path / "nchw.zarr", data, (16, 2, 5, 4), zarr_format)
    report = cli_json("compute", path, "--channel-axis", "1", "-j", "1")
    assert report["images"] == 40 and len(report["channels"]) == 2 and report["max_value"] == 65535
    assert_matches_numpy(report, as_read_by_zarr(path).transpose(0, 2, 3, 1).reshape(-1, 2), exact_median=True)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_float32_in_its_own_units(tmp_path, zarr_format):
    data = (np.random.default_rng(4).standard_normal((50, 4, 4)) * 1000 + 1e4).astype(np.float32)
    path = write_store(tmp_path / "f.zarr", data, (7, 4, 4), zarr_format)
    report = cli_json("compute", path, "-j", "1")
    assert report["images"] == 50 and report["max_value"] == 1
    assert_matches_numpy(report, as_read_by_zarr(path).reshape(-1, 1), exact_median=False)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """A v3 store: images/train and images/val (uint8, chunked), and names beside them."""
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("group") / "set.zarr"
    train, val = (rng.integers(0, 256, (n, 4, 4), dtype=np.uint8) for n in (30, 12))
    write_store(path, train, (8, 4, 4), 3, name="images/train")
    write_store(path, val, (5, 4, 4), 3, name="images/val")
    zarr.open_group(str(path), mode="a").create_array("names", shape=(3,), dtype=str)
    return path, train, val


def test_a_key_counts_one_array_of_a_group(group):
    path, train, _ = group
    report = cli_json("compute", path, "--key", "images/train", "-j", "1")
    assert report["images"] == 30
    assert_matches_numpy(report, train.reshape(-1, 1), exact_median=True)
    assert cli_json("compute", path, "--key", "/images/train", "-j", "1")["mean"] == report["mean"]  # "/" optional


def test_a_key_the_store_lacks_names_the_arrays_it_has(group):
    path, _, _ = group
    line = one_line_error(cli("compute", path, "--key", "nope"), 1)
    assert "images/train" in line and "images/val" in line and "names" in line


def test_arrays_of_different_shapes_need_a_key(tmp_path):
    path = tmp_path / "labelled.zarr"
    write_store(path, np.zeros((6, 4, 4), np.uint8), (3, 4, 4), 3, name="images")
    write_store(path, np.arange(6, dtype=np.uint8), (6,), 3, name="labels")  # counted with them: pixels
    line = one_line_error(cli("compute", path, "-j", "1"), 1)
    assert "--key images" in line and "labels (6,)" in line
    assert cli_json("compute", path, "--key", "images", "-j", "1")["images"] == 6


def test_without_a_key_every_numeric_array_counts_and_strings_are_passed_over(tmp_path):
    path = tmp_path / "two.zarr"
    a, b = np.full((3, 2, 2), 10, np.uint8), np.full((5, 2, 2), 20, np.uint8)
    write_store(path, a, (2, 2, 2), 2, name="a")
    write_store(path, b, (2, 2, 2), 2, name="sub/b")
    zarr.open_group(str(path), mode="a").create_array("names", shape=(3,), dtype=str)
    report = cli_json("compute", path, "-j", "1")
    assert report["images"] == 8 and report["raw"]["mean"] == [(3 * 10 + 5 * 20) / 8]


def test_keys_name_the_store_the_array_and_the_row(group):
    from bnstats.inputs.select import select

    path, _, _ = group
    keys = select([str(path)], options=_options(key="images/val")).keys
    assert list(keys) == [f"{path}:images/val:{row:02d}" for row in range(12)]


def _options(**kw):
    from bnstats.inputs.base import InputOptions

    return InputOptions(**kw)


def test_tasks_hold_whole_chunks_and_no_chunk_is_read_by_two(group, monkeypatch):
    from bnstats.inputs import arrays
    from bnstats.inputs.select import select

    monkeypatch.setattr(arrays, "BATCH_BYTES", 50)  # rows of 16 bytes: 3 per task, rounded up to the chunks
    path, _, _ = group
    selection = select([str(path)])
    starts = {}
    for partition in selection.source.partitions(selection.keys, 1):
        prefix, first = partition.keys[0].rsplit(":", 1)
        starts.setdefault(prefix, []).append((int(first), len(partition)))
    assert starts[f"{path}:images/train"] == [(0, 8), (8, 8), (16, 8), (24, 6)]
    assert starts[f"{path}:images/val"] == [(0, 5), (5, 5), (10, 2)]
    sent = pickle.dumps(selection.source.partitions(selection.keys, 1)[0])  # what a worker gets: path and options
    assert len(sent) < 2000 and b"zarr.core" not in sent and b"LocalStore" not in sent


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 60), chunk=st.integers(1, 17), task_bytes=st.integers(1, 400),
       zarr_format=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
def test_any_chunking_and_task_size_counts_every_row_once_exactly(rows, chunk, task_bytes, zarr_format, seed):
    """Whatever the chunk length, the task size and the reads' grouping: tasks start on chunk boundaries, tile
    the rows, and the statistics are numpy's of zarr's reading, bit for bit (the exact path)."""
    import tempfile

    from bnstats.inputs import arrays
    from bnstats.inputs.select import select
    from bnstats.running.engine import count_selection

    data = np.random.default_rng(seed).integers(0, 256, (rows, 3, 2), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as m:
        m.setattr(arrays, "BATCH_BYTES", task_bytes)  # tasks and the reads of a task: a few rows of 6 bytes
        path = write_store(f"{folder}/a.zarr", data, (chunk, 3, 2), zarr_format)
        selection = select([path])
        parts = selection.source.partitions(selection.keys, 1)
        firsts = [int(p.keys[0].rsplit(":", 1)[1]) for p in parts]
        assert all(first % chunk == 0 for first in firsts) and sum(map(len, parts)) == rows
        tally = count_selection(selection.keys, source=selection.source, workers=1)
    report = tally.stats.report()
    pixels = data.reshape(-1, 1).astype(np.float64)
    assert report["images"] == rows and not tally.skipped
    assert report["raw"]["mean"] == [pixels.sum() / pixels.size]
    assert report["raw"]["min"] == [pixels.min()] and report["raw"]["max"] == [pixels.max()]


def test_a_sharded_array_is_read_in_whole_shards(tmp_path, monkeypatch):
    from bnstats.inputs import arrays
    from bnstats.inputs.select import select

    monkeypatch.setattr(arrays, "BATCH_BYTES", 100)  # rows of 48 bytes: tasks of 2 rows, rounded up to a shard
    data = np.random.default_rng(3).integers(0, 256, (70, 4, 4, 3), dtype=np.uint8)
    path = write_store(tmp_path / "sharded.zarr", data, (4, 4, 4, 3), 3, shards=(16, 4, 4, 3))
    selection = select([str(path)])
    assert [len(p) for p in selection.source.partitions(selection.keys, 1)] == [16, 16, 16, 16, 6]
    report = cli_json("compute", path, "-j", "2")
    assert_matches_numpy(report, data.reshape(-1, 3), exact_median=True)


def test_workers_shards_and_merge_agree(rgb, tmp_path, monkeypatch):
    from bnstats.inputs import arrays

    monkeypatch.setattr(arrays, "BATCH_BYTES", 20_000)  # several tasks of whole chunks (144-byte rows)
    path, _ = rgb
    assert_same_for_workers_and_shards(path, tmp_path, shards=3)


def test_a_resumed_run_equals_an_uninterrupted_one(rgb, tmp_path, monkeypatch):
    from bnstats.inputs import arrays

    monkeypatch.setattr(arrays, "BATCH_BYTES", 10_000)  # tasks of 96 rows: 4 tasks
    path, _ = rgb
    whole = cli("compute", path, "-j", "1", expect=0).stdout
    checkpoint = tmp_path / "ck.json"
    with monkeypatch.context() as m:
        calls = interrupt_after(m, 2)
        cli("compute", path, "-q", "-j", "1", "--checkpoint", checkpoint, expect=130)
    assert len(calls) == 2 and checkpoint.exists()
    resumed = cli("compute", path, "-j", "2", "--checkpoint", checkpoint, expect=0).stdout
    assert resumed == whole  # the whole JSON, byte for byte (resumed on two workers)


def test_dask_counts_a_store_as_locally(rgb):
    distributed = pytest.importorskip("distributed")
    path, _ = rgb
    local = cli("compute", "-q", path, "-j", "1", expect=0).stdout
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        assert cli("compute", "-q", path, "--scheduler", c.scheduler_address, expect=0).stdout == local


@pytest.mark.slow
def test_dask_worker_processes_open_the_store_themselves(rgb):
    distributed = pytest.importorskip("distributed")
    path, _ = rgb
    local = cli("compute", "-q", path, "-j", "1", expect=0).stdout
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as c:
        assert cli("compute", "-q", path, "--scheduler", c.scheduler_address, expect=0).stdout == local


def test_a_folder_walk_counts_a_store_as_one_input_beside_the_images(rgb, tmp_path):
    path, _ = rgb
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copytree(path, folder / "rgb.zarr")
    photo = np.random.default_rng(2).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    Image.fromarray(photo).save(folder / "a.png")
    result = cli("compute", folder, "-j", "1", expect=0)
    report = json.loads(result.stdout)
    assert report["images"] == 301 and report["skipped"] == []
    assert "ignored" not in result.stderr  # its chunk files and metadata were not walked into
    pixels = np.concatenate([as_read_by_zarr(path).reshape(-1, 3), photo.reshape(-1, 3)])
    assert_matches_numpy(report, pixels, exact_median=True)


def test_a_folder_holding_zarr_metadata_is_a_store_whatever_its_name(rgb, tmp_path):
    path, _ = rgb
    shutil.copytree(path, tmp_path / "plain")
    assert cli_json("compute", tmp_path / "plain", "-j", "1")["images"] == 300


def test_a_file_named_like_a_store_is_a_skip_entry(tmp_path):
    (tmp_path / "zipped.zarr").write_bytes(b"PK\x03\x04")
    report = cli_json("compute", tmp_path / "zipped.zarr", _png(tmp_path), "-j", "1")
    assert [s["path"] for s in report["skipped"]] == [str(tmp_path / "zipped.zarr")]
    assert "not a store's folder" in report["skipped"][0]["error"]


def test_without_zarr_a_store_is_one_line_naming_the_extra(rgb, monkeypatch):
    path, _ = rgb
    monkeypatch.setitem(sys.modules, "zarr", None)
    assert "bnstats[zarr]" in one_line_error(cli("compute", path), 1)


def _copy(path, tmp_path, name="copy.zarr"):
    return shutil.copytree(path, tmp_path / name)


def _chunk_file(store, zarr_format, index):
    return store / (f"{index}.0.0.0" if zarr_format == 2 else f"c/{index}/0/0/0")


def test_a_missing_chunk_is_its_fill_value_as_zarr_reads_it(rgb, tmp_path):
    path, zarr_format = rgb
    store = _copy(path, tmp_path)
    _chunk_file(store, zarr_format, 2).unlink()
    read = as_read_by_zarr(store)
    assert (read[64:96] == 0).all()  # zarr itself: the chunk's rows are the fill value
    result = cli("compute", store, "-j", "1", expect=0)
    report = json.loads(result.stdout)
    assert report["images"] == 300 and report["skipped"] == []
    assert_matches_numpy(report, read.reshape(-1, 3), exact_median=True)
    [warning] = [line for line in result.stderr.splitlines() if "not in the store" in line]  # not silent
    assert f"{store}: 1 of 10 chunks are not in the store" in warning and "fill value 0" in warning
    assert "not in the store" not in cli("compute", path, "-j", "1", expect=0).stderr  # every chunk stored


def test_a_damaged_chunk_skips_its_own_rows_and_the_rest_counts(rgb, tmp_path):
    path, zarr_format = rgb
    store = _copy(path, tmp_path)
    _chunk_file(store, zarr_format, 2).write_bytes(b"not a compressed chunk" * 8)
    report = cli_json("compute", store, "-j", "1")
    assert [s["path"] for s in report["skipped"]] == [f"{store}:{row:03d}" for row in range(64, 96)]
    assert report["images"] == 268
    good = np.concatenate([as_read_by_zarr(path)[:64], as_read_by_zarr(path)[96:]])
    assert_matches_numpy(report, good.reshape(-1, 3), exact_median=True)
    assert one_line_error(cli("compute", store, "-j", "1", "--strict"), 1).count(f"{store}:064") == 1


def test_a_store_gone_after_the_listing_skips_its_rows_and_the_run_ends(rgb, tmp_path):
    from bnstats.inputs.select import select
    from bnstats.running.engine import count_selection

    path, _ = rgb
    store = _copy(path, tmp_path)
    selection = select([str(store)])
    shutil.rmtree(store)
    tally = count_selection(selection.keys, source=selection.source, workers=1)
    assert len(tally.skipped) == 300 and tally.skipped[0]["path"] == f"{store}:000"


def _metadata(store, zarr_format):
    return store / (".zarray" if zarr_format == 2 else "zarr.json")


def _set_chunks(meta, chunks):
    if "chunks" in meta:
        meta["chunks"] = chunks
    else:
        meta["chunk_grid"]["configuration"]["chunk_shape"] = chunks


DAMAGES = {
    "cut short": lambda text: text[: len(text) // 2],
    "not an object": lambda text: "[1, 2]",
    "empty object": lambda text: "{}",
    "chunks of no row": lambda text: _edit(text, lambda m: _set_chunks(m, [0, 8, 6, 3])),
    "negative shape": lambda text: _edit(text, lambda m: m.update(shape=[-300, 8, 6, 3])),
    "shape not a list": lambda text: _edit(text, lambda m: m.update(shape="x")),
    "unknown data type": lambda text: _edit(text, lambda m: m.update(
        {"dtype": "|O"} if "dtype" in m else {"data_type": "object"})),
    "five axes": lambda text: _edit(text, lambda m: (m.update(shape=[300, 8, 6, 3, 1]),
                                                     _set_chunks(m, [32, 8, 6, 3, 1]))),
}


def _edit(text, change):
    meta = json.loads(text)
    change(meta)
    return json.dumps(meta)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_metadata_is_a_skip_entry_naming_the_store(rgb, tmp_path, damage):
    path, zarr_format = rgb
    store = _copy(path, tmp_path, "bad.zarr")
    meta = _metadata(store, zarr_format)
    meta.write_text(DAMAGES[damage](meta.read_text()))
    photo = tmp_path / "a.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(photo)
    report = cli_json("compute", store, photo, "-j", "1")
    assert report["images"] == 1 and [s["path"] for s in report["skipped"]] == [str(store)]
    assert "\n" not in report["skipped"][0]["error"]
    assert one_line_error(cli("compute", store, "-j", "1"), 1).startswith("Error: no images found under")


def _hostile(store, zarr_format, shape, chunks):
    """A store whose metadata declares ``shape`` in ``chunks`` and that holds no chunk at all."""
    write_store(store, np.zeros((2, 2, 2), np.uint8), (1, 2, 2), zarr_format)
    meta = json.loads(_metadata(store, zarr_format).read_text())
    meta["shape"] = shape
    if zarr_format == 2:
        meta["chunks"] = chunks
    else:
        meta["chunk_grid"]["configuration"]["chunk_shape"] = chunks
    _metadata(store, zarr_format).write_text(json.dumps(meta))
    shutil.rmtree(store / "c", ignore_errors=True)
    for chunk in store.glob("[0-9]*"):
        chunk.unlink()
    return store


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(("chunks", "bound"), [
    ([1, 1000, 1000], "BNSTATS_MAX_RATIO"),  # 10**18 bytes of fill value in a store of a few hundred bytes
    ([10**6, 1000, 1000], "BNSTATS_MAX_FILE_BYTES"),  # one chunk of 10**12 bytes
])
def test_hostile_metadata_is_one_skip_entry_never_an_allocation(tmp_path, zarr_format, chunks, bound):
    store = _hostile(tmp_path / "hostile.zarr", zarr_format, [10**12, 1000, 1000], chunks)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "a.png")
    report = cli_json("compute", store, tmp_path / "a.png", "-j", "1")
    assert report["images"] == 1
    [entry] = report["skipped"]
    assert entry["path"] == str(store) and bound in entry["error"] and "\n" not in entry["error"]


def test_a_row_over_the_pixel_bound_is_refused_before_reading(tmp_path, monkeypatch):
    store = _hostile(tmp_path / "wide.zarr", 2, [2, 10**5, 10**5], [1, 100, 100])
    report = cli_json("compute", store, _png(tmp_path), "-j", "1")
    [entry] = report["skipped"]
    assert "BNSTATS_MAX_PIXELS" in entry["error"]


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _png(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "a.png")
    return tmp_path / "a.png"


def test_a_changed_store_is_refused_on_resume(rgb, tmp_path, monkeypatch):
    from bnstats.inputs import arrays

    monkeypatch.setattr(arrays, "BATCH_BYTES", 10_000)
    path, zarr_format = rgb
    store = _copy(path, tmp_path)
    checkpoint = tmp_path / "ck.json"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        cli("compute", store, "-q", "-j", "1", "--checkpoint", checkpoint, expect=130)
    chunk = _chunk_file(store, zarr_format, 0)
    chunk.write_bytes(chunk.read_bytes() + b"\0")  # a chunk rewritten since the checkpoint
    result = cli("compute", store, "-j", "1", "--checkpoint", checkpoint)
    assert result.exit_code != 0 and "changed" in result.stderr.lower()


@pytest.mark.slow
def test_a_store_on_s3_equals_the_local_one(rgb):
    from helpers import local_s3

    path, zarr_format = rgb
    with local_s3() as (endpoint, fs):
        fs.makedirs("zarrs", exist_ok=True)  # moto keeps its buckets per process: one store name per format
        fs.put(str(path), f"zarrs/rgb{zarr_format}.zarr", recursive=True)
        url = f"s3://zarrs/rgb{zarr_format}.zarr"
        result = cli("compute", url, "--storage-option", f"endpoint_url={endpoint}", "-j", "2", expect=0)
        remote = json.loads(result.stdout)
        assert "not in the store" not in result.stderr  # the objects are found as the store's chunks
        fs.rm(f"zarrs/rgb{zarr_format}.zarr/" + ("1.0.0.0" if zarr_format == 2 else "c/1/0/0/0"))
        assert "1 of 10 chunks are not in the store" in cli(
            "compute", url, "--storage-option", f"endpoint_url={endpoint}", "-j", "1", expect=0).stderr
        missing = one_line_error(cli("compute", "s3://zarrs/none.zarr", "--storage-option",
                                     f"endpoint_url={endpoint}"), 1)
        assert "cannot read s3://zarrs/none.zarr" in missing
        fs.put(str(path), f"zarrs/mixed{zarr_format}/rgb.zarr", recursive=True)
        fs.pipe(f"zarrs/mixed{zarr_format}/a.png", _png_bytes())
        result = cli("compute", f"s3://zarrs/mixed{zarr_format}/", "--storage-option", f"endpoint_url={endpoint}",
                     "-j", "1", expect=0)
        assert json.loads(result.stdout)["images"] == 301 and "ignored" not in result.stderr  # one store, one PNG
    local = cli_json("compute", path, "-j", "1")
    assert remote["images"] == 300 and remote["skipped"] == []
    for key in ("mean", "std", "min", "max", "median", "pixels"):
        assert remote[key] == local[key]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_store_over_http_equals_the_local_one(tmp_path, zarr_format):
    # the store's files were listed with the scheme cut off the URL (s3's rule: bucket/key), which fsspec's
    # HTTP cannot fetch: a traceback (NonHttpUrlClientError) for any http:// store
    from helpers import one_line_error, static_files

    data = np.random.default_rng(zarr_format).integers(0, 256, (12, 4, 3, 3), dtype=np.uint8)
    path = write_store(tmp_path / "rgb.zarr", data, (5, 4, 3, 3), zarr_format)
    local = cli_json("compute", path, "-j", "1")
    with static_files(path.parent) as url:
        remote = cli_json("compute", f"{url}/{path.name}", "-j", "2")
        gone = one_line_error(cli("compute", f"{url}/none.zarr", "-j", "1"), 1)
    for key in ("raw", "images", "pixels", "channels", "skipped"):
        assert remote[key] == local[key], key
    assert "none.zarr" in gone
