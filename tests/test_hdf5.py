"""HDF5 datasets as arrays of images: the .npy row rules, read through h5py in chunk-aligned partitions."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from helpers import assert_same_for_workers_and_shards, cli, cli_json, one_line_error

h5py = pytest.importorskip("h5py")


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    """A file with a chunked, compressed (N, H, W, 3) uint16 dataset in a group, labels and names beside it."""
    path = tmp_path_factory.mktemp("h5") / "train.h5"
    images = np.random.default_rng(5).integers(0, 65536, (301, 6, 5, 3), dtype=np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("data/images", data=images, chunks=(7, 6, 5, 3), compression="gzip")
        f.create_dataset("labels", data=np.arange(301) % 10)
        f.create_dataset("names", data=np.array([b"x"] * 301))
    return path, images


def test_a_dataset_equals_numpy_exactly(h5):
    path, images = h5
    report = cli_json("compute", path, "--key", "/data/images", "-j", "1")
    pixels = images.reshape(-1, 3).astype(np.float64)
    assert report["images"] == 301 and report["channels"] == ["R", "G", "B"] and report["max_value"] == 65535
    assert report["state"]["kind"] == "histogram"
    np.testing.assert_allclose(report["raw"]["mean"], pixels.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(report["raw"]["std"], pixels.std(axis=0), rtol=1e-13)
    np.testing.assert_array_equal(report["raw"]["median"], np.median(pixels, axis=0))
    assert cli_json("compute", path, "--key", "data/images", "-j", "1")["mean"] == report["mean"]  # "/" optional


def test_channels_first_with_channel_axis(tmp_path):
    images = np.random.default_rng(6).random((20, 2, 4, 4)).astype(np.float32)  # (N, C, H, W)
    path = tmp_path / "nchw.hdf5"
    with h5py.File(path, "w") as f:
        f["x"] = images
    report = cli_json("compute", path, "--channel-axis", "1", "-j", "1")
    pixels = images.transpose(0, 2, 3, 1).reshape(-1, 2).astype(np.float64)
    assert len(report["channels"]) == 2
    np.testing.assert_allclose(report["raw"]["mean"], pixels.mean(axis=0), rtol=1e-12)


def test_every_numeric_dataset_counts_when_no_key_is_given(tmp_path):
    rng = np.random.default_rng(8)
    a, b = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8), rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["train"], f["val/images"], f["val/names"] = a, b, np.array([b"n"] * 3)
    report = cli_json("compute", path, "-j", "1")
    assert report["images"] == 8
    np.testing.assert_allclose(report["raw"]["mean"], [np.concatenate([a.ravel(), b.ravel()]).mean()], rtol=1e-14)


def test_a_key_the_file_lacks_names_the_datasets_it_has(h5):
    path, _ = h5
    line = one_line_error(cli("compute", path, "--key", "/nope"), 1)
    assert "/data/images" in line and "/labels" in line


@pytest.mark.slow
def test_partitions_hold_whole_chunks_and_every_way_of_running_agrees(h5, tmp_path):
    from bnstats.inputs.select import select

    from bnstats.inputs.base import InputOptions

    path, _ = h5
    selection = select([str(path)], options=InputOptions(key="/data/images"))  # labels beside: --key
    for partition in selection.source.partitions(selection.keys, 16):
        first = int(partition.keys[0].rsplit(":", 1)[1])
        assert first % 7 == 0  # the dataset's chunks are 7 rows
    data = tmp_path / "one"
    data.mkdir()
    with h5py.File(path) as f, h5py.File(data / "train.h5", "w") as g:
        g.create_dataset("images", data=f["data/images"][:], chunks=(7, 6, 5, 3), compression="gzip")
    assert_same_for_workers_and_shards(data / "train.h5", tmp_path, shards=2)


def test_a_damaged_file_is_a_skip_entry_beside_the_others(h5, tmp_path):
    path, _ = h5
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    with h5py.File(tmp_path / "good.h5", "w") as f:
        f["images"] = np.zeros((4, 3, 3), np.uint8)
    report = cli_json("compute", tmp_path / "good.h5", tmp_path / "bad.h5", "-j", "1")
    assert report["images"] == 4 and [s["path"] for s in report["skipped"]] == [str(tmp_path / "bad.h5")]


def test_without_h5py_an_hdf5_input_is_one_line_naming_the_extra(h5, monkeypatch):
    path, _ = h5
    monkeypatch.setitem(sys.modules, "h5py", None)
    assert "bnstats[hdf5]" in one_line_error(cli("compute", path, "--key", "/data/images"), 1)


def test_labels_beside_images_need_a_key_not_counted_as_pixels(tmp_path):
    """A (N,) labels dataset beside (N, H, W) images was added to the pixels without a word."""
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.random.default_rng(0).integers(0, 256, (4, 5, 6), dtype=np.uint8)
        f["labels"] = np.arange(4, dtype=np.uint8)
    line = one_line_error(cli("compute", path, "-j", "1"), 1)
    assert "holds arrays of different shapes" in line and "--key /images" in line
    assert cli_json("compute", path, "--key", "/images", "-j", "1")["pixels"] == 4 * 5 * 6


def test_an_hdf5_file_at_a_url_is_refused_naming_hdf5():
    # the refusal named '.npy, .npz, IDX' for an .h5 URL: HDF5 files are local only too, Zarr stores are not
    line = one_line_error(cli("compute", "http://127.0.0.1:9/data/x.h5"), 1)
    assert "HDF5" in line and "local files only" in line and "x.h5" in line
