"""Items have one shape: every source's ``read`` yields ``(keys, load)`` with ``keys`` a tuple of strings (one key
per item, or the keys of consecutive array rows read as one batch), in key order."""

from __future__ import annotations

from collections.abc import Sequence

import io
import tarfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import cli_json
from bnstats.inputs.select import open_and_list


def png_bytes(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (value, value, value)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of images (with a two-page TIFF), an .npy, an .npz, a tar and a zip of images, and a Parquet file
    when pyarrow is installed."""
    root = tmp_path_factory.mktemp("items")
    (root / "folder" / "c").mkdir(parents=True)
    for i in range(3):
        (root / "folder" / "c" / f"{i}.png").write_bytes(png_bytes(i))
    pages = [Image.new("L", (4, 4), v) for v in (1, 2)]
    pages[0].save(root / "folder" / "c" / "pages.tif", save_all=True, append_images=pages[1:])
    rows = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    np.save(root / "rows.npy", rows)
    np.savez(root / "rows.npz", x=rows, y=rows[:2])
    with tarfile.open(root / "shard.tar", "w") as tar:
        for i in range(3):
            data = png_bytes(10 + i)
            info = tarfile.TarInfo(f"s/{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(root / "pack.zip", "w") as z:
        for i in range(3):
            z.writestr(f"z/{i}.png", png_bytes(20 + i))
    paths = {name: root / name for name in ("folder", "rows.npy", "rows.npz", "shard.tar", "pack.zip")}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return paths
    pq.write_table(pa.table({"image": [png_bytes(30 + i) for i in range(3)]}), root / "t.parquet")
    paths["t.parquet"] = root / "t.parquet"
    return paths


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_read_yields_sequences_of_keys_in_order(inputs, data):
    """For any mix of kinds and any run of their sorted keys, ``read`` yields sequences of str keys (a tuple, or a
    range of array rows: never a tuple of 262,144 strings) that together are exactly that run, in order (a key
    is never a bare str, which ``count.py`` would take for a batch of its characters)."""
    names = data.draw(st.lists(st.sampled_from(sorted(inputs)), min_size=1, unique=True))
    source, keys = open_and_list([str(inputs[name]) for name in names])
    start = data.draw(st.integers(0, len(keys) - 1))
    stop = data.draw(st.integers(start + 1, len(keys)))
    run = keys[start:stop]
    read = []
    for batch, load in source.read(run):
        assert isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch)
        assert all(type(key) is str for key in batch)
        assert callable(load)
        read.extend(batch)
    assert read == run


def test_single_row_batches_count_as_many_row_batches(inputs, monkeypatch):
    """A batch of one array row (a row larger than a batch's bytes) is one item like any other: per-image
    statistics (BatchNorm batches) are the same as with many rows per batch."""
    many = cli_json("compute", "-q", "--batch-size", "2", "--bn-momentum", "0.1", inputs["rows.npy"])
    monkeypatch.setattr("bnstats.inputs.arrays.BATCH_BYTES", 1)  # every batch one row
    one = cli_json("compute", "-q", "-j", "1", "--batch-size", "2", "--bn-momentum", "0.1", inputs["rows.npy"])
    assert one == many and one["images"] == 5


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_source_that_leaves_items_of_a_task_unread_stops_the_run(small_pngs, monkeypatch, workers):
    # a read that yields fewer items than it was given (Parquet's sampled read did) counted the rest as if
    # they did not exist: exit 0, fewer images, no skip entry. The count now checks every task's items.
    from bnstats.inputs.files import FileSource
    from helpers import cli

    real = FileSource.read

    def read_all_but_the_last(self, keys):
        yield from list(real(self, keys))[:-1]

    monkeypatch.setattr(FileSource, "read", read_all_but_the_last)
    result = cli("compute", small_pngs, "-j", workers, "-q", expect=1)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and " items read " in lines[0] and "bnstats bug" in lines[0], result.stderr
    assert result.stdout == ""
