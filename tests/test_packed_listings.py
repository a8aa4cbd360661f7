"""What the packed listings (archives' member indexes, packed keys, sampled orders) must still do on hostile
inputs: every number a header can hold, archives whose paths begin with another's, ... — each a finding of
a review of the constant-memory listings, checked against what the full-list code did (or should have)."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from bnstats.inputs.archives import MemberIndex
from bnstats.inputs.digests import files_digest
from bnstats.inputs.keys import PackedKeys
from bnstats.inputs.select import select
from helpers import cli, cli_json


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (3, 4, 3), np.uint8)).save(out, "PNG")
    return out.getvalue()


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def _ustar_header(name: str, size_field: bytes) -> bytes:
    """A regular member's ustar header whose size field is ``size_field`` (12 bytes: octal, or base-256)."""
    header = bytearray(512)
    header[0 : len(name)] = name.encode()
    header[100:124] = b"0000644\0" + b"0000000\0" + b"0000000\0"
    header[124:136] = size_field
    header[136:148] = b"00000000000\0"
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _pack_tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# -- numbers a header holds that no 64-bit array does ------------------------------------------------------

def test_a_member_index_holds_numbers_past_64_bits_exactly():
    index = MemberIndex({"a.png": (512, 70), "b.png": (1536, 2**80), "c.png": (-1, 2**63)}, "qq")
    assert index["a.png"] == (512, 70)
    assert index["b.png"] == (1536, 2**80)
    assert index["c.png"] == (-1, 2**63)
    assert list(index) == ["a.png", "b.png", "c.png"] and "b.png" in index and len(index) == 3


def test_a_tar_member_declaring_more_than_2_to_the_63_bytes_is_a_skip_entry_not_a_traceback(tmp_path):
    """A base-256 size field holds up to 2**88: the listing's arrays must not overflow (OverflowError, exit 1);
    the member is skipped as too large, as before, and the member beside it counted."""
    good = _png(1)
    huge = bytes([0x80]) + (2**80).to_bytes(11, "big")
    data = (_ustar_header("a.png", b"%011o\0" % len(good)) + _pad(good)
            + _ustar_header("b.png", huge) + _pad(_png(2)) + b"\0" * 1024)
    (tmp_path / "huge.tar").write_bytes(data)
    report = cli_json("compute", tmp_path / "huge.tar", "-j1", "-q")
    assert report["images"] == 1
    skipped = {entry["path"]: entry["error"] for entry in report["skipped"]}
    assert "1,208,925,819,614,629,174,706,176 bytes" in skipped[f"{tmp_path / 'huge.tar'}:b.png"]


# -- archives whose paths begin with another archive's ----------------------------------------------------

def _mean(*images: bytes) -> list[float]:
    pixels = np.concatenate([np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64).reshape(-1, 3)
                             for data in images])
    return list(pixels.mean(axis=0) / 255)


def test_an_archive_named_like_a_member_path_of_another_is_read_as_itself(tmp_path):
    """``a.tar`` and ``a.tar:b.tar`` (a file name may hold ``:``): the key ``a.tar:b.tar:m.png`` is the second
    archive's member; it was taken for a member ``b.tar:m.png`` of ``a.tar`` (KeyError traceback, exit 1)."""
    members = {"a.tar": {"x.png": _png(1), "z.png": _png(2)}, "a.tar:b.tar": {"m.png": _png(3), "n.png": _png(4)}}
    for name, content in members.items():
        (tmp_path / name).write_bytes(_pack_tar(content))
    for workers in ("-j1", "-j2"):
        report = cli_json("compute", tmp_path / "a.tar", tmp_path / "a.tar:b.tar", workers, "-q")
        assert report["images"] == 4 and report["skipped"] == []
        assert np.allclose(report["mean"], _mean(*members["a.tar"].values(), *members["a.tar:b.tar"].values()))
    sample = cli_json("compute", tmp_path / "a.tar:b.tar", tmp_path / "a.tar", "--sample", "3", "-q")
    assert sample["images"] == 3 and sample["skipped"] == []


def test_two_archives_listing_one_key_stop_the_run_in_one_line(tmp_path):
    """``a.tar``'s member ``b.tar:m.png`` and ``a.tar:b.tar``'s member ``m.png`` are one key: one would be read
    twice and the other never; the run stops naming both."""
    (tmp_path / "a.tar").write_bytes(_pack_tar({"b.tar:m.png": _png(1), "x.png": _png(2)}))
    (tmp_path / "a.tar:b.tar").write_bytes(_pack_tar({"m.png": _png(3)}))
    result = cli("compute", tmp_path / "a.tar", tmp_path / "a.tar:b.tar", "-q", expect=1)
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "a.tar:b.tar:m.png" in line and "cannot be told apart" in line


def test_members_of_two_archives_whose_keys_interleave_are_each_read_from_their_own(tmp_path):
    """``c.tar``'s ``b.tar:a.png`` and ``b.tar:z.png`` sort around ``c.tar:b.tar``'s ``m.png``: the run of the
    second archive's keys ended after ``c.tar:b.tar:z.png`` (KeyError traceback, exit 1)."""
    members = {"c.tar": {"b.tar:a.png": _png(1), "b.tar:z.png": _png(2)}, "c.tar:b.tar": {"m.png": _png(3)}}
    for name, content in members.items():
        (tmp_path / name).write_bytes(_pack_tar(content))
    every = [data for content in members.values() for data in content.values()]
    for workers in ("-j1", "-j2"):
        report = cli_json("compute", tmp_path / "c.tar", tmp_path / "c.tar:b.tar", workers, "-q")
        assert report["images"] == 3 and report["skipped"] == []
        assert np.allclose(report["mean"], _mean(*every))


# -- any character a name may hold ------------------------------------------------------------------------

def test_packed_keys_hold_names_with_nul_and_any_character():
    """A PAX header's path may hold a NUL: the packed blocks, joined by NUL, were split into one key too many
    (every later key of the block shifted: read in another's place, the last one lost)."""
    keys = sorted(["a.png", "b\0x.png", "c.png", "\x01.png", "\udc80.png", "\U0001f600.png", "\0"])
    packed = PackedKeys.of(keys)
    assert list(packed) == keys and len(packed) == len(keys)
    assert [packed.find(key) for key in keys] == list(range(len(keys)))
    assert list(pickle.loads(pickle.dumps(packed))) == keys


def test_a_pax_member_whose_name_holds_a_nul_is_listed_under_its_name(tmp_path):
    images = {"a.png": _png(1), "b\0x.png": _png(2), "c.png": _png(3)}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in images.items():
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(data), {"path": name}
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "nul.tar"
    archive.write_bytes(out.getvalue())
    assert list(select([str(archive)]).keys) == [f"{archive}:{name}" for name in sorted(images)]
    report = cli_json("compute", archive, "-j1", "-q")
    assert report["images"] == 3 and report["skipped"] == []
    assert report["files"]["digest"] == files_digest(f"nul.tar:{name}" for name in sorted(images))["digest"]


# -- a sample drawn from compressed tars ------------------------------------------------------------------

@pytest.mark.slow
def test_a_sample_of_a_compressed_tar_reads_its_stream_a_bounded_number_of_times(tmp_path, monkeypatch):
    """Every task that draws from a .tar.gz reads it from its start: tasks of 16 of a sample of 640 opened
    the stream 40 times (20,000 members: 107 s where one task took 4 s). The numbers stay those of the sample
    (--sample N >= the members: every member, as the full count gives)."""
    from bnstats.inputs import tar as tar_module
    from bnstats.running.engine import count_selection
    from bnstats.observers.sampling import draw

    images = {f"s{i:04d}.png": _png(i) for i in range(640)}
    (tmp_path / "x.tar.gz").write_bytes(gzip.compress(_pack_tar(images)))
    opened = []
    real_open = tar_module.open_tar
    monkeypatch.setattr(tar_module, "open_tar", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(64):
        (folder / f"{i:02d}.png").write_bytes(_png(1000 + i))
    for inputs, count in (([tmp_path / "x.tar.gz"], 640), ([tmp_path / "x.tar.gz", folder], 704)):
        for size in (None, count):  # --until-ci's order, and --sample N's
            drawn = draw(select([str(path) for path in inputs]), size, seed=3)
            opened.clear()
            tally = count_selection(drawn.keys, source=drawn.source, workers=1, chunk_size=16)
            # tasks of 1/8 of the stream's members drawn at least (9 of 80 here, with the folder's), each reading
            # it once: not once per run of its members between the folder's files
            assert tally.stats.images == count and len(opened) <= 9, len(opened)
    full = cli_json("compute", tmp_path / "x.tar.gz", "-q", "-j1")
    sample = cli_json("compute", tmp_path / "x.tar.gz", "-q", "-j2", "--sample", "640")
    assert sample["raw"]["mean"] == full["raw"]["mean"] and sample["images"] == 640


# -- many archives, keys in random order --------------------------------------------------------------------

class _CountingPaths(list):
    """A list of paths that counts how often it is walked through."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def test_the_archive_of_a_key_is_found_without_walking_every_archive_named(tmp_path):
    """A sample's keys switch archive nearly every key: each was looked up by trying every archive named in
    turn (2,000 shards, --sample 20000: 14 of 19 s; 10,000 shards of a million members: hours)."""
    shards = [tmp_path / f"train-{i:03d}.tar" for i in range(300)]
    for i, shard in enumerate(shards):
        shard.write_bytes(_pack_tar({f"k{i:03d}_{j}.png": b"" for j in range(2)}))
    selection = select([str(shard) for shard in shards])
    source, keys = selection.source, list(selection.keys)
    expected = {key: (key.rsplit(":", 1)[0], key.rsplit(":", 1)[1]) for key in keys}
    source.paths = _CountingPaths(source.paths)
    shuffled = [keys[(i * 7919) % len(keys)] for i in range(len(keys))]
    assert [source.split(key) for key in shuffled] == [expected[key] for key in shuffled]
    assert _CountingPaths.walks <= 1


@pytest.mark.slow
def test_a_long_task_of_a_sample_is_sent_its_keys_not_every_key_drawn_from():
    """Tasks of a sample over 1,024 keys (compressed tars drawn: tasks of 1/8 of their members) were a view of
    the random order, which pickles every key of the population with each task."""
    from bnstats.inputs.base import EvenPartitions, Source
    from bnstats.observers.sampling import sample_order

    keys = PackedKeys.of(f"data/train/class_{i // 1000:03d}/image_{i:07d}.png" for i in range(200_000))
    order = sample_order(keys, iter(keys), seed=1)
    partition = EvenPartitions(Source([]), order, 2_000, narrow=True)[3]
    assert list(partition.keys) == list(order[6_000:8_000])
    assert len(pickle.dumps(partition.keys)) < 2_000 * 60  # its 2,000 keys, not 200,000 packed
