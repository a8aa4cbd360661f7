"""Constant memory at any size: keys are ranges or packed, never one string per item held for the run.

Array rows are :class:`~bnstats.inputs.keys.RowKeys` ranges; a folder walk
packs its sorted keys as it goes (:class:`~bnstats.inputs.keys.PackedKeys`);
partitions are made when asked for. The sequences must behave exactly like
the sorted lists they stand for (property tests), and listing, sharding and
partitioning a large input must not allocate per item (tracemalloc).
"""

from __future__ import annotations

import os
import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from bnstats.decoding.image import ArrayImage
from bnstats.inputs.base import Source
from bnstats.inputs.walk import walk
from bnstats.inputs import keys as keys_module
from bnstats.inputs.keys import KeyChain, PackedKeys, RowKeys, merge_sorted
from bnstats.inputs.select import select
from bnstats.inputs.selection import shard
from bnstats.running.count import count_partition
from bnstats.running.engine import count_selection
from helpers import cli_json

# -- the sequences are the lists they stand for ------------------------------------------------------------

_names = st.text(alphabet="ab./:0_-é", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(_names, unique=True, max_size=3000), st.data())
def test_packed_keys_slice_index_and_pickle_as_the_list(names, data):
    keys = sorted(names)
    packed = PackedKeys.of(keys)
    assert list(packed) == keys and len(packed) == len(keys)
    assert list(pickle.loads(pickle.dumps(packed))) == keys
    start = data.draw(st.integers(0, len(keys)))
    stop = data.draw(st.integers(start, len(keys) + 5))
    view = packed[start:stop]
    assert list(view) == keys[start:stop]
    inner = data.draw(st.integers(0, max(0, len(view))))
    assert list(view[inner:]) == keys[start:stop][inner:]
    if keys:
        i = data.draw(st.integers(-len(keys), len(keys) - 1))
        assert packed[i] == keys[i]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300), st.integers(0, 300)), max_size=4), st.data())
def test_row_ranges_and_chains_slice_as_the_list(spans, data):
    ranges = [RowKeys(f"f{i}.npy", 3, min(a, b), max(a, b)) for i, (_, a, b) in enumerate(spans)]
    chain = KeyChain(ranges)
    keys = [key for r in ranges for key in r]
    assert keys == sorted(keys) and list(chain) == keys and len(chain) == len(keys)
    start = data.draw(st.integers(0, len(keys)))
    stop = data.draw(st.integers(start, len(keys) + 3))
    assert list(chain[start:stop]) == keys[start:stop]
    assert list(chain[start:stop][1:]) == keys[start:stop][1:]
    assert len(pickle.dumps(chain[start:stop])) < 400  # a few numbers per range, whatever the rows
    if keys:
        i = data.draw(st.integers(-len(keys), len(keys) - 1))
        assert chain[i] == keys[i]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(_names, unique=True, max_size=40), max_size=4))
def test_merging_sorted_inputs_by_runs_is_the_sorted_union(inputs):
    sequences = [sorted(names) for names in inputs]
    runs = merge_sorted(sequences)
    merged = [key for _, run in runs for key in run]
    assert merged == sorted({key for seq in sequences for key in seq})
    # a key two inputs list belongs to the first that lists it
    for which, run in runs:
        for key in run:
            assert which == min(i for i, seq in enumerate(sequences) if key in seq)


# -- nothing per item is held ------------------------------------------------------------------------------

def _peak(function) -> tuple[object, int]:
    """``function()`` and the peak bytes Python allocated while it ran."""
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_array_rows_are_listed_sharded_and_partitioned_in_bounded_memory(tmp_path):
    path = tmp_path / "rows.npy"
    np.save(path, np.arange(300_000, dtype=np.uint64).astype(np.uint8))

    warm = tmp_path / "warm.npy"
    np.save(warm, np.zeros(10, np.uint8))

    def plan(path):
        selection = select([str(path)], shard_of=(1, 3))
        partitions = selection.source.partitions(selection.keys, 128)
        return selection, partitions, partitions[len(partitions) // 2]

    plan(warm)  # the modules a listing imports, imported before measuring
    (selection, partitions, middle), peak = _peak(lambda: plan(path))
    assert len(selection.keys) == 100_000 and selection.span == (100_000, 200_000)
    assert selection.keys[0] == f"{path}:100000" and selection.keys[-1] == f"{path}:199999"
    assert sum(len(p) for p in partitions) == 100_000  # tasks of a few MB of rows each
    assert peak < 256 * 1024, f"{peak:,} bytes: something holds a key per row"  # a list of the keys: ~30 MB
    assert len(pickle.dumps(middle.keys)) < 200


def test_a_folder_walk_holds_a_few_bytes_a_file(tmp_path):
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(image)

    def tree(root, folders: int):
        for f in range(folders):
            folder = root / f"class_{f:03d}"
            folder.mkdir(parents=True)
            for i in range(500):
                os.link(image, folder / f"image_{f:03d}_{i:05d}.png")
        return root

    small, large = tree(tmp_path / "small", 2), tree(tmp_path / "large", 24)
    (small_listing, small_peak) = _peak(lambda: walk([str(small)]))
    (large_listing, large_peak) = _peak(lambda: walk([str(large)]))
    assert len(small_listing.keys) == 1_000 and len(large_listing.keys) == 12_000
    assert list(large_listing.keys) == sorted(large_listing.keys)
    # 11,000 more files: a list of their paths would be ~1.5 MB; packed they are ~60 KB
    assert large_peak - small_peak < 300_000, (small_peak, large_peak)


def _shards(folder, count: int, members: int, suffix: str = ".tar"):
    """``count`` archives (hard links of one) of ``members`` tiny PNG members each, named as WebDataset's."""
    import io
    import tarfile
    import zipfile

    folder.mkdir()
    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 2, 3), 7, np.uint8)).save(buffer, format="PNG")
    data, first = buffer.getvalue(), folder / f"shard-000{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(first, "w") as z:
            for i in range(members):
                z.writestr(f"c{i % 3}/{i:06d}.png", data)
    else:
        with tarfile.open(first, "w") as tar:
            for i in range(members):
                info = tarfile.TarInfo(f"c{i % 3}/{i:06d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for k in range(1, count):
        os.link(first, folder / f"shard-{k:03d}{suffix}")
    return sorted(str(p) for p in folder.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_archive_members_are_held_in_a_few_bytes_each_after_listing(tmp_path, suffix):
    """Shards' members were a list of key strings and a dict of name -> (offset, size) per archive, kept for
    the run (~470 bytes a member: 10 shards of 20,000 members held 84 MB), and the partitions a list. Now the
    keys and each archive's index are packed (tens of bytes a member), partitions made when asked for."""
    shards = _shards(tmp_path / "shards", 12, 1_000, suffix)
    select(shards[:1])  # the modules a listing imports, imported before measuring

    def held(named):
        tracemalloc.start()
        try:
            selection = select(named, shard_of=(1, 2))
            partitions = selection.source.partitions(selection.keys, 128)
            keys_module._BLOCKS.clear()  # the few blocks last read, of any store, are kept: a bound of its own
            return selection, partitions, tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    few = held(shards[:2])[2]
    selection, partitions, many = held(shards)
    assert len(selection.keys) == 6_000 and selection.keys[0] == f"{shards[6]}:c0/000000.png"
    assert list(selection.keys[:2]) == sorted(selection.keys[:2]) and len(partitions) == 6 * 8
    middle = partitions[len(partitions) // 2]
    assert middle.keys[0] == f"{shards[9]}:c0/000000.png" and len(middle) == 128
    if suffix == ".tar":  # a task is sent its own members' offsets, not the archive's
        assert list(middle.source.index[shards[9]]) == [k.split(":", 1)[1] for k in middle.keys]
    # 10,000 members more: a key string and a dict entry each held ~4.7 MB; packed, ~0.3 MB
    assert (many - few) / 10_000 < 60, f"{(many - few) / 10_000:.0f} bytes held a member"
    assert cli_json("compute", *shards[:2], "-j", "1")["images"] == 2_000  # and they are read


def test_shards_of_a_packed_listing_are_views_not_copies(tmp_path):
    keys = PackedKeys.of(f"d/{i:07d}.png" for i in range(50_000))
    part = shard(keys, 1, 4)
    assert list(part[:3]) == ["d/0012500.png", "d/0012501.png", "d/0012502.png"] and len(part) == 12_500
    assert part.packed is keys  # the same packed store, not a copy of 12,500 strings
    whole = len(pickle.dumps(list(keys)))
    assert len(pickle.dumps(keys)) < whole / 4  # compressed: ~2 bytes a key here, not ~16


TRICKY = ["a", "a.png", "a0.png", "a-b.png", "a b.png", "a.png.png", "B.png", "é.png", "z.jpg", "a.tif0.png",
          "a~.png", "a!.png"]


@pytest.mark.parametrize("seed", range(6))
def test_the_walk_yields_keys_in_sorted_order_whatever_the_names(tmp_path, monkeypatch, seed):
    """A folder's entries sort as their keys do ("a/..." after "a.png", before "a0.png"): the walk gives
    Python's sorted order of the paths, as a list of every path sorted at the end would."""
    rng = np.random.default_rng(seed)

    def fill(folder, depth):
        folder.mkdir(exist_ok=True)
        for name in rng.choice(TRICKY, size=int(rng.integers(2, 9)), replace=False):
            if name in ("a", "B.png") and depth < 3:  # folders, one named like an image
                fill(folder / name, depth + 1)
            else:
                (folder / name).write_bytes(b"x")

    fill(tmp_path / "data", 0)
    monkeypatch.chdir(tmp_path)
    expected = sorted(os.path.join(dirpath, name) for dirpath, _, names in os.walk("data") for name in names)
    named = ["data/a.png"] if os.path.isfile("data/a.png") else []  # a file named directly and walked again
    for roots in (["data"], ["data", *named], [*named, "data"]):
        keys = list(walk(roots, extensions=(".png", ".jpg")).keys)
        assert keys == sorted(keys) == [k for k in expected if k.endswith((".png", ".jpg"))]


class TenMillion(Source):
    """10**7 synthetic items: a range of keys, item ``i`` a 2x2 gray image of value ``i % 256``."""

    COUNT = 10**7

    def list_items(self):
        return RowKeys("synthetic", 8, 0, self.COUNT)

    def read(self, keys):
        for key in keys:
            row = int(key.rsplit(":", 1)[1])
            yield (key,), lambda row=row: ArrayImage(np.full((2, 2), row % 256, np.uint8), ("L",))


class Stop(Exception):
    pass


def test_ten_million_items_are_listed_sharded_and_counted_in_bounded_memory():
    """Neither a source nor the engine holds anything per item: listing 10**7 items, taking a shard of them,
    cutting it in partitions and counting the first ones allocates a few kilobytes, not the ~1 GB a list of
    the keys would take."""
    source = TenMillion(["synthetic"])

    def plan_and_count():
        keys = shard(source.list_items(), 3, 7)  # items 4,285,714..5,714,284
        stops = []

        def stop_after_three(tally, done):
            if done >= 3 * 128:
                stops.append(tally)
                raise Stop
        try:
            count_selection(keys, source=source, workers=1, on_chunk=stop_after_three)
        except Stop:
            pass
        return keys, stops[0]

    plan_and_count()  # what the run imports and caches, before measuring
    (keys, tally), peak = _peak(plan_and_count)
    assert len(keys) == 1_428_571 and keys[0] == "synthetic:04285714"
    first = 4_285_714
    values = np.arange(first, first + 3 * 128) % 256
    assert tally.stats.images == 3 * 128
    assert tally.stats.result()["mean"][0] == pytest.approx(values.mean() / 255, abs=1e-15)
    assert peak < 512 * 1024, f"{peak:,} bytes: something holds an entry per item"  # measured: ~21 KB


@pytest.mark.slow
def test_counting_a_batch_of_array_rows_holds_no_key_per_row(tmp_path):
    """A batch of 262,144 rows of 16 bytes is counted with its keys as a range: a tuple of them took 26 MB."""
    path = tmp_path / "rows.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (300_000, 4, 4), dtype=np.uint8))
    selection = select([str(path)])
    partition = selection.source.partitions(selection.keys, 128)[0]
    assert len(partition) == 262_144
    count_partition(partition.source, partition.keys)  # imports, caches
    counted, peak = _peak(lambda: count_partition(partition.source, partition.keys))
    assert counted.tally.stats.images == 262_144
    assert peak < 2 * 2**20, f"{peak:,} bytes: a batch holds something per row"  # measured: ~10 KB


@pytest.mark.slow  # a second or more: the quick tier keeps under a minute on 2 cores
def test_a_task_of_a_long_files_from_list_carries_the_folders_named_not_every_path(tmp_path):
    """A FileSource of 20,000 files named (a --files-from list) pickled every path into every task: 2 s of
    pickling on 40,000 files, and quadratic. A task carries the folders named (for classes and masks) alone."""
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(image)
    folder = tmp_path / "many"
    folder.mkdir()
    names = [str(folder / f"{i:05d}.png") for i in range(20_000)]
    for name in names:
        os.link(image, name)
    selection = select(names)
    partition = selection.source.partitions(selection.keys, 128)[77]
    assert len(pickle.dumps((partition.source, partition.keys))) < 20_000  # was ~700 KB
    count_partition(partition.source, partition.keys)  # and the worker's copy still reads its files
    assert pickle.loads(pickle.dumps(partition.source)).class_of(partition.keys[0]) == selection.source.class_of(
        partition.keys[0])


def test_a_long_files_from_list_is_held_packed_and_named_as_before(tmp_path, monkeypatch):
    """A --files-from list's keys were a list of its strings and the files named a set of their normalised
    paths, for the whole run (~280 bytes a file held); now both are packed. Names, digests, classes and the
    count stay those of the per-key paths."""
    from bnstats.inputs.digests import files_digest

    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(image)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    names = [f"{'ab'[i % 2]}/{i:05d}.png" for i in range(3_000)]
    for name in names:
        os.link(image, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text("\n".join(["./" + names[0], *reversed(names)]) + "\n")
    selection = select(["./" + names[0], *reversed(names)])
    keys, source = selection.keys, selection.source
    # ./a/00000.png, named first, and a/00000.png are one file: counted once, under the spelling named first
    assert isinstance(keys, PackedKeys) and list(keys) == sorted(["./" + names[0], *names[1:]])
    assert list(source.portable_identities(keys)) == [source.portable_identity(k) for k in keys]
    assert source.portable_identity(keys[0]) == "00000.png"  # a file named on its own: its base name
    assert selection.listing == files_digest(n.rsplit("/", 1)[1] for n in sorted(names))
    assert cli_json("compute", "--files-from", "list.txt", "-j", "1", "--shard", "1/2")["images"] == 1_500


def _named_reference(paths: list[str], tree: dict[str, list[str]]) -> list[str]:
    """The keys of files named directly and of folders walked, by the rule of the dict the walk kept before:
    one key per file (its folder's real path and its name), the spelling named first; a file also in a
    folder walked takes the folder's key if the folder was named first; a folder named twice (or through a
    symlink) is walked once."""
    def real(path):
        folder, name = os.path.split(os.path.abspath(path))
        return os.path.join(os.path.realpath(folder), name)

    named = {}
    for index, path in enumerate(paths):
        if path not in tree:
            named.setdefault(real(path), (index, path))
    keys, dropped, walked = [], set(), set()
    for index, path in enumerate(paths):
        if path in tree and os.path.realpath(path) in walked:
            continue  # a folder named twice is walked once
        walked.add(os.path.realpath(path))
        for key in tree.get(path, ()):
            earlier = named.get(real(key))
            if earlier is not None:
                if earlier[0] < index:
                    continue
                dropped.add(real(key))
            keys.append(key)
    return sorted(set(keys) | {path for file, (_, path) in named.items() if file not in dropped})


_spellings = st.lists(st.tuples(st.sampled_from(["", "./", "d/../", "d/./../"]),
                                st.sampled_from(["a.png", "b.png", "d/c.png", "d/e.png", "d",
                                                 "l/c.png", "l/e.png", "l"])), max_size=12)


@settings(max_examples=60, deadline=None)
@given(named=_spellings, collide=st.booleans())
def test_files_named_directly_are_one_per_file_under_the_first_spelling(tmp_path_factory, named, collide):
    """The files named directly are held as hashes and positions (a --files-from list of a million), not a dict
    of their paths; it gives the dict's answer for every mix of spellings and folders, and where every hash
    is the same (collide), the paths tell the files apart."""
    from bnstats.inputs import walk as walking

    root = tmp_path_factory.mktemp("named")
    (root / "d").mkdir()
    for name in ("a.png", "b.png", "d/c.png", "d/e.png"):
        Image.fromarray(np.zeros((1, 1), np.uint8)).save(root / name)
    (root / "l").symlink_to("d")  # l/c.png is d/c.png: one file, however it is reached
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        if collide:
            patch.setattr(walking, "hash", lambda path: 7, raising=False)
        paths = [prefix + name for prefix, name in named]
        tree = {p: [os.path.join(p, n) for n in ("c.png", "e.png")] for p in paths if os.path.isdir(p)}
        assert list(walking.walk(paths).keys) == _named_reference(paths, tree)


@pytest.mark.slow
def test_a_long_files_from_list_is_listed_in_a_few_bytes_a_file(tmp_path, monkeypatch):
    """A --files-from list was read into a list, a dict of its absolute paths and a set of its normalised ones
    (~370 bytes a file at the peak: 300,000 files, 156 MiB); it is read packed, named files are hashes and
    positions, and the names sorted by runs (~35 bytes a file: 55 MiB)."""
    from bnstats.cli.options import Inputs

    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(image)
    (tmp_path / "f").mkdir()
    for i in range(24_000):
        os.link(image, tmp_path / "f" / f"{i:06d}.png")
    monkeypatch.chdir(tmp_path)
    for count in (4_000, 24_000):
        (tmp_path / f"list{count}.txt").write_text("".join(f"f/{i:06d}.png\n" for i in reversed(range(count))))
    Inputs(files_from="list4000.txt").select()  # the modules a listing imports, imported before measuring
    monkeypatch.setattr(keys_module, "SORT_RUN", 2_048)  # names sorted in memory at a time: a bound of its own

    def peak(count):
        return _peak(lambda: Inputs(files_from=f"list{count}.txt").select())

    (_, few_peak), (many, many_peak) = peak(4_000), peak(24_000)
    assert list(many.keys[:2]) == ["f/000000.png", "f/000001.png"] and len(many.keys) == 24_000
    assert (many_peak - few_peak) / 20_000 < 120, f"{(many_peak - few_peak) / 20_000:.0f} bytes a file"


def test_a_long_listing_is_digested_while_it_is_counted(tmp_path, monkeypatch):
    """The digest of 10 million array rows' names took ~11 s before the first row was counted (12.0 s to the
    first count); a long list's digest is computed on a thread and read when the result is written (0.26 s).
    The record, the JSON and a pickled selection are those of the digest computed at once."""
    from bnstats.inputs import digests

    np.save(tmp_path / "rows.npy", np.arange(3_000, dtype=np.uint16).reshape(-1, 1, 1) % 256)
    at_once = select([str(tmp_path / "rows.npy")])
    assert isinstance(at_once.listing, dict)
    monkeypatch.setattr(digests, "BACKGROUND_NAMES", 1_000)
    behind = select([str(tmp_path / "rows.npy")], shard_of=(1, 3))
    assert isinstance(behind.listing, digests.DigestInBackground) and behind.listing == at_once.listing
    assert pickle.loads(pickle.dumps(behind.listing)) == at_once.listing
    assert behind.coverage()["covers"][0]["list"] == at_once.listing
    whole = cli_json("compute", tmp_path / "rows.npy", "-j", "1")
    monkeypatch.setattr(digests, "BACKGROUND_NAMES", 10**9)
    assert cli_json("compute", tmp_path / "rows.npy", "-j", "1") == whole

    def broken():
        raise OSError("the digest failed")

    with pytest.raises(OSError, match="the digest failed"):
        digests.DigestInBackground(broken)["count"]
