"""Archives at their edges: damaged and cut tars, odd member names and types, ``--ext`` in shards, classes
inside archives, decompression bombs, and the same images in every container giving the same numbers."""

from __future__ import annotations

import bz2
import dataclasses
import functools
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bnstats import limits
from bnstats.inputs.base import ItemError
from helpers import SETTINGS, _png_bytes, cli, cli_json, local_s3, static_files

STATS = ("mean", "std", "var", "min", "max", "pixels", "images", "channels")
FAST = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


def same_stats(a: dict, b: dict) -> None:
    """The same numbers, to the last bit, and the same exact state."""
    for key in STATS:
        assert a[key] == b[key], key
    assert a["raw"] == b["raw"]
    assert a["state"] == b["state"]


def png_bytes(seed: int, h: int = 5, w: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def pack_tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def damage_header(data: bytes, name: str) -> tuple[bytes, int]:
    """``data`` (a plain tar) with the header checksum of member ``name`` overwritten; and where it was."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offset = tar.getmember(name).offset
    broken = bytearray(data)
    broken[offset + 148 : offset + 156] = b"0777777\0"  # more than any header's sum of bytes: never valid
    return bytes(broken), offset


COMPRESS = {".tar": lambda d: d, ".tar.gz": gzip.compress, ".tar.bz2": bz2.compress, ".tar.xz": lzma.compress}


def write_folder(folder: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def bounds(monkeypatch):
    """Set bounds for one test (``bounds(ratio=10, ratio_floor=2**20)``); the process's own come back after."""
    def install(**values):
        limits.install(dataclasses.replace(limits.Limits.from_environ(), **values))
    yield install
    limits.install(limits.Limits.from_environ())


# -- 1. a damaged header mid-archive: the members after it still count, and the damage is listed --------------


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_a_damaged_header_mid_archive_skips_that_member_only(tmp_path, suffix):
    members = {f"{i}.png": png_bytes(i) for i in range(6)}
    broken, offset = damage_header(pack_tar(members), "2.png")
    archive = tmp_path / f"shard{suffix}"
    archive.write_bytes(COMPRESS[suffix](broken))
    result = cli_json("compute", archive, "-q")
    del members["2.png"]
    same_stats(result, cli_json("compute", write_folder(tmp_path / "folder", members), "-q"))
    assert [s["path"] for s in result["skipped"]] == [f"{archive}:@offset {offset}"]
    assert "damaged tar header at byte" in result["skipped"][0]["error"]
    strict = cli("compute", archive, "-q", "--strict", expect=1)
    assert len(strict.stderr.strip().splitlines()) == 1 and f"@offset {offset}" in strict.stderr


def test_a_damaged_header_in_a_shard_read_through_fsspec(tmp_path):
    """The remote listing and the byte-range reads step over the damage too (fsspec's memory store)."""
    fsspec = pytest.importorskip("fsspec")
    members = {f"{i:03d}.png": png_bytes(i) for i in range(12)}
    broken, offset = damage_header(pack_tar(members), "005.png")
    fs = fsspec.filesystem("memory")
    fs.pipe("/edges/shard.tar", broken)
    try:
        result = cli_json("compute", "memory://edges/shard.tar", "-q", "-j", "1")
    finally:
        fs.rm("/edges/shard.tar")
    del members["005.png"]
    same_stats(result, cli_json("compute", write_folder(tmp_path / "folder", members), "-q"))
    assert [s["path"].rsplit(":", 1)[-1] for s in result["skipped"]] == [f"@offset {offset}"]


def test_a_damaged_header_in_a_shard_streamed_over_http(tmp_path):
    """Over HTTP a shard is listed front to back (a stream): the damage is stepped over there too."""
    pytest.importorskip("aiohttp")
    members = {f"{i:03d}.png": png_bytes(i) for i in range(8)}
    broken, offset = damage_header(pack_tar(members), "003.png")
    served = tmp_path / "served"
    served.mkdir()
    (served / "shard.tar").write_bytes(broken)

    with static_files(served) as url:
        result = cli_json("compute", f"{url}/shard.tar", "-q", "-j", "1")
    del members["003.png"]
    same_stats(result, cli_json("compute", write_folder(tmp_path / "folder", members), "-q"))
    assert [s["path"].rsplit(":", 1)[-1] for s in result["skipped"]] == [f"@offset {offset}"]


@pytest.mark.slow
@given(sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=2, max_size=6),
       pick=st.integers(0, 5), suffix=st.sampled_from([".tar", ".tar.gz"]), seed=st.integers(0, 99))
@FAST
def test_property_a_damaged_header_costs_exactly_that_member(tmp_path_factory, sizes, pick, suffix, seed):
    tmp_path = tmp_path_factory.mktemp("damaged")
    members = {f"m{i:02d}.png": png_bytes(seed + i, h, w) for i, (h, w) in enumerate(sizes)}
    lost = sorted(members)[pick % len(members)]
    broken, offset = damage_header(pack_tar(members), lost)
    archive = tmp_path / f"shard{suffix}"
    archive.write_bytes(COMPRESS[suffix](broken))
    result = cli_json("compute", archive, "-q")
    del members[lost]
    if members:
        same_stats(result, cli_json("compute", write_folder(tmp_path / "folder", members), "-q"))
    assert [s["path"] for s in result["skipped"]] == [f"{archive}:@offset {offset}"]


@pytest.mark.parametrize("cut", ["mid-member", "mid-header", "at-a-member", "marker-only"])
def test_a_cut_tar_is_never_silent(tmp_path, cut):
    members = {f"{i}.png": png_bytes(i, 20, 20) for i in range(4)}
    data = pack_tar(members)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmember("3.png")
    end = last.offset_data + -(-last.size // 512) * 512
    at = {"mid-member": last.offset_data + 100, "mid-header": last.offset + 200, "at-a-member": last.offset,
          "marker-only": end + 512}[cut]
    archive = tmp_path / "cut.tar"
    archive.write_bytes(data[:at])
    report = json.loads(cli("compute", archive, "-q", expect=0).stdout)
    if cut == "marker-only":  # one zero block of two: every member is whole, nothing is missing
        assert report["images"] == 4 and report["skipped"] == []
        return
    assert report["images"] == 3
    assert report["skipped"], "a cut archive must be listed in skipped"
    assert all(s["path"].startswith(f"{archive}:") for s in report["skipped"])


def test_a_cut_tar_gz_is_never_silent(tmp_path):
    data = gzip.compress(pack_tar({f"{i}.png": png_bytes(i, 30, 30) for i in range(4)}))
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(data[: len(data) * 3 // 4])
    report = cli_json("compute", archive, "-q")
    assert report["images"] < 4 and report["skipped"]


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.bz2", ".tar.xz"])
def test_a_compressed_tar_of_several_streams_is_read_to_its_end(tmp_path, suffix):
    """pbzip2 and ``cat a.gz b.gz`` write several compressed streams: every member counts (tarfile's own
    stream reader stopped after the first, an error naming the archive)."""
    members = {f"{i}.png": png_bytes(i, 16, 16) for i in range(4)}
    data = pack_tar(members)
    cut = len(data) // 2 // 512 * 512
    archive = tmp_path / f"multi{suffix}"
    archive.write_bytes(COMPRESS[suffix](data[:cut]) + COMPRESS[suffix](data[cut:]))
    result = cli_json("compute", archive, "-q")
    same_stats(result, cli_json("compute", write_folder(tmp_path / "folder", members), "-q"))
    assert result["skipped"] == []


def test_bytes_after_the_end_of_archive_marker_are_ignored(tmp_path):
    """GNU tar ignores what follows the two zero blocks (e.g. a preallocated file's old bytes)."""
    members = {f"{i}.png": png_bytes(i) for i in range(3)}
    archive = tmp_path / "padded.tar"
    archive.write_bytes(pack_tar(members) + os.urandom(4096))
    report = cli_json("compute", archive, "-q")
    assert report["images"] == 3 and report["skipped"] == []


def test_concatenated_tars_count_every_member(tmp_path):
    """``cat a.tar b.tar``: zero blocks between the parts are stepped over (tar -i), not the end."""
    a, b = {"a.png": png_bytes(1)}, {"b.png": png_bytes(2)}
    archive = tmp_path / "both.tar"
    archive.write_bytes(pack_tar(a) + pack_tar(b))
    report = cli_json("compute", archive, "-q")
    assert report["images"] == 2 and report["skipped"] == []


def test_a_file_that_is_no_tar_is_one_entry(tmp_path):
    archive = tmp_path / "junk.tar"
    archive.write_bytes(os.urandom(5000))
    result = cli("compute", archive, "-q", expect=1)
    assert len(result.stderr.strip().splitlines()) == 1 and "junk.tar" in result.stderr


# -- 2. unusual member names and types ----------------------------------------------------------------------


def test_members_named_with_dotdot_or_absolute_count_under_their_stored_names(tmp_path):
    names = ["../../x.png", "/abs/x.png", "dir/../y.png", "./z.png"]
    archive = tmp_path / "odd.tar"
    archive.write_bytes(pack_tar({name: png_bytes(i) for i, name in enumerate(names)}))
    result = cli_json("compute", archive, "-q")
    assert result["images"] == 4 and result["skipped"] == []
    from bnstats.inputs.select import select
    assert sorted(select([str(archive)]).keys) == sorted(f"{archive}:{name}" for name in names)


def test_a_hard_linked_copy_counts_as_in_the_folder(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    os.link(folder / "0.png", folder / "2.png")  # GNU tar (and Python's) stores this as a hard link member
    archive = tmp_path / "linked.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="folder")
    with tarfile.open(archive) as tar:
        assert any(m.islnk() for m in tar.getmembers())
    for path in (archive, tmp_path / "linked.tar.gz"):
        if path.suffix == ".gz":
            path.write_bytes(gzip.compress(archive.read_bytes()))
        result = cli_json("compute", path, "-q")
        same_stats(result, cli_json("compute", folder, "-q"))
        assert result["images"] == 3


def test_symbolic_links_are_followed_inside_the_archive_and_named_when_they_lead_out(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = png_bytes(3)
        info = tarfile.TarInfo("a/real.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, target in [("b/inside.png", "../a/real.png"), ("b/outside.png", "../../etc/x.png"),
                             ("b/absolute.png", "/etc/x.png"), ("b/loop.png", "loop.png")]:
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
        fifo = tarfile.TarInfo("b/fifo.png")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
    archive = tmp_path / "links.tar"
    archive.write_bytes(buffer.getvalue())
    result = cli_json("compute", archive, "-q")
    assert result["images"] == 2  # a/real.png and the link to it
    skipped = {s["path"].rsplit(":", 1)[-1]: s["error"] for s in result["skipped"]}
    assert set(skipped) == {"b/outside.png", "b/absolute.png", "b/loop.png", "b/fifo.png"}
    assert "not a member of the archive" in skipped["b/outside.png"]
    assert "outside the archive" in skipped["b/absolute.png"]
    assert "FIFO" in skipped["b/fifo.png"]


@given(paths=st.lists(st.lists(st.sampled_from(["..", ".", "", "a", "b.c", "a b"]), max_size=4), min_size=1,
                      max_size=5, unique_by=lambda parts: "/".join(parts)),
       kind=st.sampled_from(["tar", "zip"]))
@FAST
def test_property_no_member_name_is_dropped_silently(tmp_path_factory, paths, kind):
    """Whatever a member's path (``..``, ``.``, empty parts, a leading ``/``), it is counted under its stored
    name or listed in skipped: images + skipped = members."""
    names = ["/".join([*parts, f"x{i}.png"]) for i, parts in enumerate(paths)]
    archive = tmp_path_factory.mktemp("names") / f"odd.{kind}"
    if kind == "tar":
        archive.write_bytes(pack_tar({name: png_bytes(i) for i, name in enumerate(names)}))
    else:
        with zipfile.ZipFile(archive, "w") as z:
            for i, name in enumerate(names):
                z.writestr(zipfile.ZipInfo(name), png_bytes(i))
    result = cli_json("compute", archive, "-q")
    assert result["images"] + len(result["skipped"]) == len(names)


# -- 3. --ext in shards: the whole WebDataset extension; in folders: the last suffix --------------------------


def test_ext_png_in_a_shard_leaves_out_seg_png_and_says_so(tmp_path):
    members = {"s0.seg.png": png_bytes(0), "s1.seg.png": png_bytes(1), "s2.png": png_bytes(2)}
    archive = tmp_path / "shard.tar"
    archive.write_bytes(pack_tar(members))
    with zipfile.ZipFile(tmp_path / "shard.zip", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    for path in (archive, tmp_path / "shard.zip"):
        assert cli_json("compute", path, "-q")["images"] == 3  # every image by default
        assert cli_json("compute", path, "-q", "--ext", "seg.png")["images"] == 2
        assert cli_json("compute", path, "-q", "--ext", "png,seg.png")["images"] == 3
        result = cli("compute", path, "--ext", "png", expect=0)
        assert json.loads(result.stdout)["images"] == 1
        assert "seg.png 2" in result.stderr and "--ext seg.png" in result.stderr  # never left out silently
    folder = write_folder(tmp_path / "folder", members)  # loose files keep the last-suffix rule
    assert cli_json("compute", folder, "-q", "--ext", "png")["images"] == 3
    assert cli_json("compute", folder, "-q", "--ext", "seg.png")["images"] == 2


@given(stem=st.text("abc_", min_size=1, max_size=4), middle=st.lists(st.sampled_from(["seg", "v2", "x"]), max_size=2),
       last=st.sampled_from(["png", "jpg", "PNG"]), folder=st.sampled_from(["", "d/", "d.e/"]))
@settings(max_examples=60, deadline=None)
def test_property_archive_ext_is_the_whole_extension(stem, middle, last, folder):
    from bnstats.inputs.tar import TarSource
    from bnstats.inputs.base import InputOptions

    name = folder + ".".join([stem, *middle, last])
    whole = ".".join([*middle, last]).lower()
    source = TarSource([], InputOptions(ext=(whole,)))
    assert source.wanted(name)
    if middle:
        assert not TarSource([], InputOptions(ext=(last,))).wanted(name)


# -- 4. --group-by class inside archives -------------------------------------------------------------------------


def test_classes_inside_tar_and_zip_are_their_top_level_folders(tmp_path):
    members = {f"{c}/{i}.png": png_bytes(i + 10 * k, 4 + k, 6) for k, c in enumerate(["cat", "dog"]) for i in range(3)}
    folder = write_folder(tmp_path / "folder", members)
    expected = cli_json("compute", folder, "-q", "--group-by", "class")
    assert sorted(expected["groups"]) == ["cat", "dog"]
    (tmp_path / "set.tar").write_bytes(pack_tar({f"./{name}": data for name, data in members.items()}))
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    for archive in (tmp_path / "set.tar", tmp_path / "set.zip"):
        result = cli_json("compute", archive, "-q", "--group-by", "class")
        assert sorted(result["groups"]) == ["cat", "dog"]
        for name in ("cat", "dog"):
            for key in ("mean", "std", "images", "pixels"):
                assert result["groups"][name][key] == expected["groups"][name][key]


def test_members_at_an_archive_root_are_the_archives_class(tmp_path):
    (tmp_path / "birds.tar.gz").write_bytes(gzip.compress(pack_tar({"a.png": png_bytes(1)})))
    result = cli_json("compute", tmp_path / "birds.tar.gz", "-q", "--group-by", "class")
    assert list(result["groups"]) == ["birds"]


@pytest.mark.parametrize("kind", ["npy", "parquet", "folder+npy"])
def test_group_by_class_is_refused_for_inputs_without_classes(tmp_path, kind):
    """Array rows (and Parquet without a label column named) have no classes: one line, not one class ""."""
    np.save(tmp_path / "x.npy", np.zeros((3, 4, 4, 3), np.uint8))
    if kind == "parquet":
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({"image": pa.array([png_bytes(1)], pa.binary())}), tmp_path / "x.parquet")
    folder = write_folder(tmp_path / "folder", {"cat/a.png": png_bytes(1)})
    args = {"npy": [tmp_path / "x.npy"], "parquet": [tmp_path / "x.parquet"],
            "folder+npy": [folder, tmp_path / "x.npy"]}[kind]
    result = cli("compute", *args, "-q", "--group-by", "class", expect=2)
    assert "--group-by class" in result.stderr and ("x.npy" in result.stderr or "x.parquet" in result.stderr)


# -- 5. archive bombs -------------------------------------------------------------------------------------------


_BZ2_BLOCK_MAGIC, _BZ2_END_MAGIC = format(0x314159265359, "048b"), format(0x177245385090, "048b")


@functools.lru_cache(maxsize=None)
def _bz2_block(data: bytes) -> tuple[str, int]:
    """The bits of ``data``'s one bzip2 block (at most 900 kB, or 32 MiB of zeros) and its CRC."""
    bits = "".join(format(byte, "08b") for byte in bz2.compress(data, 9))
    assert bits.count(_BZ2_BLOCK_MAGIC) == 1, "more than one block"
    end = bits.rfind(_BZ2_END_MAGIC)
    return bits[32:end], int(bits[end + 48 : end + 80], 2)


def bz2_stream(parts: list[tuple[bytes, int]]) -> bytes:
    """ONE bzip2 stream of each ``data`` repeated ``count`` times, put together block by block (blocks are
    independent, bit-aligned): 100 GiB of zeros is ~160 KiB, built in a second. A real bomb is one stream;
    concatenated streams are not (Python's tarfile stream reader stops after the first)."""
    bits, combined = ["".join(format(byte, "08b") for byte in b"BZh9")], 0
    for data, count in parts:
        body, crc = _bz2_block(data)
        bits.append(body * count)
        for _ in range(count):
            combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ crc
    bits += [_BZ2_END_MAGIC, format(combined, "032b")]
    out = "".join(bits)
    out += "0" * (-len(out) % 8)
    return int(out, 2).to_bytes(len(out) // 8, "big")


def bz2_zeros(total: int) -> bytes:
    """One bzip2 stream of ``total`` zero bytes (a multiple of 32 MiB, or less)."""
    block = min(total, 32 << 20)
    assert total % block == 0
    return bz2_stream([(bytes(block), total // block)])


def bomb_tar_bz2(claimed: int, real: int) -> bytes:
    """A .tar.bz2 (one stream): a real PNG, then a member that claims ``claimed`` bytes, ``real`` zeros
    stored of them."""
    head = pack_tar({"0.png": png_bytes(1)})
    with tarfile.open(fileobj=io.BytesIO(head)) as tar:
        first = tar.getmember("0.png")
    head = head[: first.offset_data + -(-first.size // 512) * 512]  # without the end-of-archive blocks
    info = tarfile.TarInfo("1.png")
    info.size = claimed
    block = min(real, 32 << 20)
    return bz2_stream([(head + info.tobuf(tarfile.GNU_FORMAT), 1), (bytes(block), real // block)])


def test_a_compressed_tar_inflating_past_its_budget_stops_with_one_entry(tmp_path, bounds):
    bounds(ratio=10, ratio_floor=1 << 20)
    archive = tmp_path / "bomb.tar.bz2"
    archive.write_bytes(bomb_tar_bz2(claimed=100 << 30, real=8 << 20))
    result = cli_json("compute", archive, "-q")
    assert result["images"] == 1  # the member before the bomb
    entries = {s["path"]: s["error"] for s in result["skipped"]}
    assert set(entries) == {str(archive), f"{archive}:1.png"}
    assert "BNSTATS_MAX_RATIO" in entries[str(archive)]
    assert "the rest of the archive was not read" in entries[str(archive)]
    assert "BNSTATS_MAX_FILE_BYTES" in entries[f"{archive}:1.png"]  # its header claims 100 GiB: never read


def zip_with_declared_size(member: bytes, declared: int, method=zipfile.ZIP_BZIP2, then: bytes = b"") -> bytes:
    """A zip whose first member ``a.png``'s local and central headers declare ``declared`` bytes (a lie);
    ``then``: a second member ``b.png``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as z:
        z.writestr("a.png", member)
        if then:
            z.writestr("b.png", then)
    data = bytearray(buffer.getvalue())
    data[22:26] = declared.to_bytes(4, "little")  # the local header's uncompressed size
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = declared.to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA])
def test_a_zip_member_is_never_inflated_past_its_declared_size(tmp_path, method):
    archive = tmp_path / "liar.zip"
    archive.write_bytes(zip_with_declared_size(bytes(16 << 20), 1000, method, then=png_bytes(1)))
    result = cli_json("compute", archive, "-q")
    assert result["images"] == 1
    assert result["skipped"] == [{"path": f"{archive}:a.png", "error": "member inflates past its declared size of "
                                  "1,000 bytes (damaged, or a decompression bomb): not counted"}]


@pytest.mark.slow
def test_many_zip_members_that_lie_about_their_size_cost_only_what_they_declare(tmp_path):
    """2000 bzip2 members of 8 MiB of zeros, each declaring 1000 bytes: each is inflated one byte past its
    declared size, not 8 MiB (or a chunk) each."""
    path = tmp_path / "liars.zip"
    path.write_bytes(_zip_bz2_bomb(8 << 20, 2000))
    started = time.monotonic()
    result = cli("compute", path, "-q", "-j", "1", expect=1)  # nothing readable: one line
    assert time.monotonic() - started < 6  # a 1 MiB chunk each took ~7 s on a quiet machine; this ~1 s
    assert len(result.stderr.strip().splitlines()) == 1


@given(data=st.one_of(st.binary(max_size=3000), st.integers(0, 1 << 16).map(bytes)),
       method=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]),
       lie=st.integers(-50, 50))
@settings(max_examples=80, deadline=None)
def test_property_a_zip_member_is_its_bytes_or_refused_never_more(data, method, lie):
    """Honest sizes give the bytes back; a member that declares fewer or more bytes than it holds is refused,
    and nothing is ever inflated more than one byte past what was declared."""
    from bnstats.inputs import zip as archives

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as z:
        z.writestr("m", data)
    with zipfile.ZipFile(buffer) as z:
        info = z.getinfo("m")
        raw = archives._raw_member(z, info)
    declared = max(0, len(data) + lie)
    inflated = []
    real = archives._inflated_chunks

    def watched(inflater, raw, declared):
        out, done = real(inflater, raw, declared)
        inflated.append(sum(map(len, out)))
        return out, done

    try:
        archives._inflated_chunks = watched
        try:
            got = archives._inflate(method, raw, declared)
        except (zipfile.BadZipFile, ItemError):
            assert declared != len(data)
        else:
            assert declared == len(data) and got == data
    finally:
        archives._inflated_chunks = real
    assert all(n <= declared + 1 for n in inflated)


def test_zip_members_compressed_every_way_are_read(tmp_path):
    members = {f"{i}.png": png_bytes(i, 9, 11) for i in range(4)}
    folder = cli_json("compute", write_folder(tmp_path / "folder", members), "-q")
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        path = tmp_path / f"m{method}.zip"
        with zipfile.ZipFile(path, "w", method) as z:
            for name, data in members.items():
                z.writestr(name, data)
        same_stats(cli_json("compute", path, "-q"), folder)


def test_a_zip_member_with_a_bad_crc_is_skipped(tmp_path):
    members = {"a.png": png_bytes(1), "b.png": png_bytes(2)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    data = bytearray(buffer.getvalue())
    at = data.index(members["b.png"]) + 60  # a byte inside b.png's pixel data
    data[at] ^= 0xFF
    (tmp_path / "crc.zip").write_bytes(bytes(data))
    result = cli_json("compute", tmp_path / "crc.zip", "-q")
    assert result["images"] == 1
    assert [s["path"] for s in result["skipped"]] == [f"{tmp_path / 'crc.zip'}:b.png"]


def test_a_zip_of_many_members_of_zeros_is_refused_before_inflating(tmp_path, bounds):
    bounds(ratio=10, ratio_floor=1 << 20)
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(40):
            z.writestr(f"{i}.png", bytes(256 << 10))
    started = time.monotonic()
    result = cli("compute", path, "-q", expect=1)
    assert time.monotonic() - started < 5
    assert len(result.stderr.strip().splitlines()) == 1
    assert "BNSTATS_MAX_RATIO" in result.stderr and "many.zip" in result.stderr


def test_a_member_over_the_file_bound_is_skipped_unread(tmp_path, bounds):
    members = {"small.png": png_bytes(1), "large.png": png_bytes(2, 40, 40)}
    bounds(file_bytes=len(members["large.png"]) - 1)
    (tmp_path / "s.tar").write_bytes(pack_tar(members))
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    for archive in (tmp_path / "s.tar", tmp_path / "s.zip"):
        result = cli_json("compute", archive, "-q")
        assert result["images"] == 1
        [entry] = result["skipped"]
        assert entry["path"].endswith(":large.png") and "BNSTATS_MAX_FILE_BYTES" in entry["error"]


BOMB_RUN = """
import resource, subprocess, sys, time
started = time.monotonic()
proc = subprocess.run([sys.executable, "-m", "bnstats", "compute", "-q", "-j", "1", sys.argv[1]],
                      capture_output=True, text=True, timeout=60)
elapsed = time.monotonic() - started
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(proc.returncode, elapsed, rss)
print(proc.stdout, proc.stderr, file=sys.stderr)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tar.bz2", "zip", "many"])
def test_realistic_bombs_end_quickly_with_bounded_memory(tmp_path, kind):
    """Default bounds, a real process: a .tar.bz2 whose member claims (and holds) 100 GiB of zeros, a zip
    member that declares 1000 bytes and inflates to 8 GiB, a zip of 2000 members of 64 MiB of zeros; each
    exits within 10 s and 300 MiB."""
    if kind == "tar.bz2":  # ~160 KiB
        path = tmp_path / "bomb.tar.bz2"
        path.write_bytes(bomb_tar_bz2(claimed=100 << 30, real=100 << 30))
    elif kind == "zip":  # ~13 KiB inflating to 8 GiB: zipfile inflated each 4 KiB read whole (~3 GiB)
        path = tmp_path / "bomb.zip"
        path.write_bytes(_zip_bz2_bomb(8 << 30))
    else:  # 2000 members of 64 MiB of zeros, honestly declared, in ~250 KiB
        path = tmp_path / "many.zip"
        path.write_bytes(_zip_bz2_bomb(64 << 20, 2000, 64 << 20, zlib.crc32(bytes(64 << 20))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                          os.environ.get("PYTHONPATH", "")])}
    env = {k: v for k, v in env.items() if not k.startswith("BNSTATS_MAX_")}
    out = subprocess.run([sys.executable, "-c", BOMB_RUN, str(path)], capture_output=True, text=True, env=env,
                         timeout=90)
    code, elapsed, rss = out.stdout.split()
    assert int(code) in (0, 1) and "Traceback" not in out.stderr, out.stderr
    assert float(elapsed) < 10, elapsed
    assert int(rss) < 300 << 20, rss


def _zip_bz2_bomb(inflated: int, members: int = 1, declared: int = 1000, crc: int = 0) -> bytes:
    """``members`` bzip2 members of ``inflated`` zero bytes each (one stream, shared), each declaring
    ``declared`` bytes: a zip written by hand, fast."""
    payload = bz2_zeros(inflated)
    locals_, centrals, at = [], [], 0
    for i in range(members):
        name = f"{i}.png".encode()
        sizes = crc.to_bytes(4, "little") + len(payload).to_bytes(4, "little") + declared.to_bytes(4, "little")
        local = b"PK\x03\x04" + _u16(46, 0, 12, 0, 0) + sizes + _u16(len(name), 0) + name
        centrals.append(b"PK\x01\x02" + _u16(46, 46, 0, 12, 0, 0) + sizes + _u16(len(name), 0, 0, 0, 0)
                        + (0).to_bytes(4, "little") + at.to_bytes(4, "little") + name)
        locals_.append(local + payload)
        at += len(local) + len(payload)
    central = b"".join(centrals)
    end = b"PK\x05\x06" + _u16(0, 0, members, members) + len(central).to_bytes(4, "little") \
        + at.to_bytes(4, "little") + _u16(0)
    return b"".join(locals_) + central + end


def _u16(*values: int) -> bytes:
    return b"".join(v.to_bytes(2, "little") for v in values)


# -- 6. the same images in every container give the same numbers ------------------------------------------------


IMAGE_SETS = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(0, 10**6)), min_size=1,
                      max_size=6)


def image_set(specs) -> dict[str, bytes]:
    """PNGs of the given sizes and seeds, a JPEG among them when there are several, under two class folders."""
    members = {}
    for i, (h, w, seed) in enumerate(specs):
        folder = "a" if i % 2 else "b"
        if i == 2:  # a JPEG: its decoded pixels are what every container decodes alike
            buffer = io.BytesIO()
            Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)).save(buffer, "JPEG")
            members[f"{folder}/{i:02d}.jpg"] = buffer.getvalue()
        else:
            members[f"{folder}/{i:02d}.png"] = png_bytes(seed, h, w)
    return members


def hf_parquet(path: Path, members: dict[str, bytes]) -> Path:
    """The Hugging Face ``Image`` layout (struct<bytes, path>) with its metadata."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images = [{"bytes": data, "path": name} for name, data in members.items()]
    table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    features = {"image": {"_type": "Image"}}
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}),
                   path, row_group_size=4)
    return path


def every_container(root: Path, members: dict[str, bytes]) -> dict[str, Path]:
    """The same members as a folder, a tar, a tar.gz, a zip and a Hugging Face Parquet file under ``root``."""
    plain = pack_tar(members)
    (root / "set.tar").write_bytes(plain)
    (root / "set.tar.gz").write_bytes(gzip.compress(plain))
    with zipfile.ZipFile(root / "set.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return {"folder": write_folder(root / "folder", members), "tar": root / "set.tar", "tar.gz": root / "set.tar.gz",
            "zip": root / "set.zip", "parquet": hf_parquet(root / "set.parquet", members)}


@pytest.mark.slow
@given(specs=IMAGE_SETS)
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_property_every_container_gives_the_folders_numbers(tmp_path_factory, specs):
    members = image_set(specs)
    paths = every_container(tmp_path_factory.mktemp("every"), members)
    folder = cli_json("compute", paths["folder"], "-q")
    for kind, path in paths.items():
        result = cli_json("compute", path, "-q")
        same_stats(result, folder)
        assert result["skipped"] == [], kind


@given(specs=IMAGE_SETS, pick=st.integers(0, 5))
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_property_one_damaged_image_is_exactly_one_skip_in_every_container(tmp_path_factory, specs, pick):
    members = image_set(specs)
    broken = sorted(members)[pick % len(members)]
    damaged = {**members, broken: members[broken][: len(members[broken]) // 2]}  # cut in half: undecodable
    paths = every_container(tmp_path_factory.mktemp("damaged"), damaged)
    rest = {name: data for name, data in members.items() if name != broken}
    expected = cli_json("compute", write_folder(tmp_path_factory.mktemp("rest"), rest), "-q") if rest else None
    for kind, path in paths.items():
        result = cli("compute", path, "-q", expect=0 if rest else 1)
        if not rest:
            continue  # nothing readable: one line of error, checked by the exit status
        result = json.loads(result.stdout)
        same_stats(result, expected)
        [skip] = result["skipped"]
        row = sorted(members).index(broken) if kind != "parquet" else list(members).index(broken)
        assert skip["path"].endswith(broken) or skip["path"].endswith(f":{row}"), (kind, skip)


@pytest.mark.parametrize("seed", [3])
def test_same_shape_arrays_in_npy_give_the_folders_numbers(tmp_path, seed):
    """(A fixed example here; the strategy below draws more.)"""
    _npy_matches_folder(tmp_path, 4, 5, 6, seed)


@given(n=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 10**6))
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_property_npy_rows_give_the_folders_numbers(tmp_path_factory, n, h, w, seed):
    _npy_matches_folder(tmp_path_factory.mktemp("npy"), n, h, w, seed)


def _npy_matches_folder(root: Path, n: int, h: int, w: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), np.uint8)
    folder = root / "folder"
    folder.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    np.save(root / "x.npy", pixels)
    same_stats(cli_json("compute", root / "x.npy", "-q"), cli_json("compute", folder, "-q"))


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 with an empty bucket ``edges``; yields ``(fs, options)``.

    Not test_remote's fixture: moto keeps one store per process, and a second copy of that fixture finds
    its bucket made already. This one makes a bucket of its own name.
    """
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    with local_s3() as (endpoint, fs):
        if not fs.exists("edges"):
            fs.mkdir("edges")
        yield fs, ("--storage-option", f"endpoint_url={endpoint}")


@pytest.mark.slow
@pytest.mark.parametrize("damaged", [False, True])
def test_an_s3_prefix_and_shards_give_the_folders_numbers(s3, tmp_path, damaged):
    """One fixed set (no hypothesis: the server is slow to ask): loose objects, a tar, a tar.gz and a zip in
    S3 equal the folder; with one image cut in half, the folder without it, and that one listed."""
    fs, options = s3
    members = image_set([(5, 7, 1), (9, 3, 2), (6, 6, 3), (4, 11, 4), (8, 8, 5)])
    broken = "a/01.png"
    stored = {**members, broken: members[broken][:40]} if damaged else members
    (tmp_path / "local").mkdir()
    local = every_container(tmp_path / "local", stored)
    prefix = f"edges/set-{int(damaged)}"
    for name, data in stored.items():
        fs.pipe(f"{prefix}/loose/{name}", data)
    for kind in ("tar", "tar.gz", "zip"):
        fs.pipe(f"{prefix}/set.{kind}", local[kind].read_bytes())
    expected_members = {n: d for n, d in members.items() if not (damaged and n == broken)}
    expected = cli_json("compute", write_folder(tmp_path / "expected", expected_members), "-q")
    for url in (f"s3://{prefix}/loose/", *(f"s3://{prefix}/set.{kind}" for kind in ("tar", "tar.gz", "zip"))):
        result = cli_json("compute", url, "-q", "-j", "1", *options)
        same_stats(result, expected)
        assert len(result["skipped"]) == damaged and all(s["path"].endswith(broken) for s in result["skipped"]), url


def _pack(path, members: list[tuple[str, bytes]]) -> None:
    """``members`` in this order (names may repeat) into a tar, tar.gz or zip by ``path``'s suffix."""
    name = str(path)
    if name.endswith(".zip"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
            with zipfile.ZipFile(path, "w") as z:
                for member, data in members:
                    z.writestr(member, data)
        return
    with tarfile.open(path, "w:gz" if name.endswith(".tar.gz") else "w") as tar:
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".zip"])
def test_a_name_stored_twice_counts_its_last_copy_and_names_the_rest(tmp_path, suffix):
    archive = tmp_path / f"a{suffix}"
    _pack(archive, [("x.png", _png_bytes(0)), ("y.png", _png_bytes(10)), ("x.png", _png_bytes(200))])
    out = cli_json("compute", archive, "-q", "-j", "1")
    assert out["images"] == 2
    assert out["raw"]["mean"] == [105.0, 105.0, 105.0]  # y and the last x: the first x is no part of it
    assert [entry["path"] for entry in out["skipped"]] == [f"{archive}:x.png"]
    assert "2 times" in out["skipped"][0]["error"]


@SETTINGS
@given(names=st.lists(st.sampled_from(["a.png", "b.png", "c/d.png"]), min_size=1, max_size=7),
       suffix=st.sampled_from([".tar", ".tar.gz", ".zip"]))
def test_every_stored_name_is_counted_once_or_named(tmp_path_factory, names, suffix):
    folder = tmp_path_factory.mktemp("dup")
    archive = folder / f"a{suffix}"
    _pack(archive, [(name, _png_bytes(i * 30)) for i, name in enumerate(names)])
    last = {name: i * 30 for i, name in enumerate(names)}  # what extracting the archive leaves
    out = cli_json("compute", archive, "-q", "-j", "1")
    assert out["images"] == len(last)
    assert out["raw"]["mean"][0] == pytest.approx(sum(last.values()) / len(last))
    repeated = sorted(name for name in last if names.count(name) > 1)
    assert [entry["path"] for entry in out["skipped"]] == [f"{archive}:{name}" for name in repeated]


def _ustar(values: list[int]) -> tuple[bytes, list[int]]:
    """A plain ustar archive of PNG members ``m0.png``..., and each member header's offset."""
    buffer = io.BytesIO()
    offsets = []
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, value in enumerate(values):
            data = _png_bytes(value)
            info = tarfile.TarInfo(f"m{i}.png")
            info.size = len(data)
            offsets.append(tar.offset)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), offsets


def _huge_record(kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink")
    info.type, info.size = kind, size
    return info.tobuf(tarfile.GNU_FORMAT)


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_a_header_record_claiming_gigabytes_is_stepped_over(tmp_path, kind, suffix):
    import gzip

    data, offsets = _ustar([0, 10, 20, 30])
    hostile = data[: offsets[2]] + _huge_record(kind, 10**11) + data[offsets[2] :]
    archive = tmp_path / f"a{suffix}"
    archive.write_bytes(gzip.compress(hostile) if suffix == ".tar.gz" else hostile)
    out = cli_json("compute", archive, "-q", "-j", "1")
    assert out["images"] == 4  # before: a MemoryError or every later member taken for the record
    assert out["raw"]["mean"][0] == 15.0
    assert [entry["path"] for entry in out["skipped"]] == [f"{archive}:@offset {offsets[2]}"]


@SETTINGS
@given(count=st.integers(1, 5), data=st.data(), kind=st.sampled_from([tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                                                                       tarfile.GNUTYPE_LONGLINK]),
       size=st.integers(2**21, 2**50))
def test_every_member_around_a_hostile_header_record_counts(tmp_path_factory, count, data, kind, size):
    values = [(40 * i + 5) % 256 for i in range(count)]
    tar, offsets = _ustar(values)
    at = data.draw(st.sampled_from(offsets))
    archive = tmp_path_factory.mktemp("tar") / "a.tar"
    archive.write_bytes(tar[:at] + _huge_record(kind, size) + tar[at:])
    out = cli_json("compute", archive, "-q", "-j", "1")
    assert out["images"] == count
    assert out["raw"]["mean"][0] == pytest.approx(sum(values) / count)
    assert [entry["path"] for entry in out["skipped"]] == [f"{archive}:@offset {at}"]


def test_a_zip_whose_comment_holds_an_end_record_is_named_not_empty(tmp_path):
    # zipfile takes the last end record it finds: one in the comment says "no member", and the zip's members
    # were left out without a word ("no images found" alone, or nothing at all beside other files)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        for i in range(3):
            z.writestr(f"m{i}.png", _png_bytes(50))
        z.comment = b"PK\x05\x06" + bytes(18)
    (tmp_path / "b.png").write_bytes(_png_bytes(10))
    out = cli_json("compute", tmp_path, "-q", "-j", "1")
    assert out["images"] == 1
    assert [entry["path"] for entry in out["skipped"]] == [str(tmp_path / "a.zip")]
    assert "end record" in out["skipped"][0]["error"]


def test_an_empty_zip_is_still_just_empty(tmp_path):
    zipfile.ZipFile(tmp_path / "e.zip", "w").close()
    result = cli("compute", tmp_path / "e.zip", "-q", expect=1)
    assert "no images found" in result.stderr and "end record" not in result.stderr


def test_a_zip_on_a_server_without_ranges_says_so_and_what_to_do(tmp_path):
    pytest.importorskip("aiohttp")
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "a.zip", "w") as z:
        z.writestr("m.png", _png_bytes(5))

    with static_files(served) as url:
        result = cli("compute", f"{url}/a.zip", "-q", "-j", "1", expect=1)
    assert "range requests, which a zip needs" in result.stderr
    assert "block_size" not in result.stderr  # fsspec's advice is for its API, not for this tool's user


@pytest.mark.parametrize("named", [["c0/a.png"], ["c0/a.png", "c1/b.png"], ["."]])
def test_group_by_class_refuses_files_named_in_no_class_folder(tmp_path, named, monkeypatch):
    for name, value in [("c0/a.png", 10), ("c1/b.png", 20)]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(_png_bytes(value))
    monkeypatch.chdir(tmp_path)
    if named == ["."]:  # the folder holding the class folders: classes as ImageFolder's
        out = cli_json("compute", ".", "-q", "-j", "1", "--group-by", "class")
        assert {k: v["images"] for k, v in out["groups"].items()} == {"c0": 1, "c1": 1}
        return
    result = cli("compute", *named, "-q", "-j", "1", "--group-by", "class", expect=2)  # was one class ""
    assert "no class folder" in result.stderr


def test_members_after_an_end_of_archive_marker_count_and_are_said(tmp_path):
    first, _ = _ustar([10, 20])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = _png_bytes(60)
        info = tarfile.TarInfo("second/m.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "joined.tar").write_bytes(first + buffer.getvalue())
    result = cli("compute", tmp_path / "joined.tar", "-j", "1", expect=0)
    out = cli_json("compute", tmp_path / "joined.tar", "-q", "-j", "1")
    assert out["images"] == 3 and out["skipped"] == []  # as tar --ignore-zeros; plain tar x gives 2
    assert "end-of-archive marker" in result.stderr and f"byte {len(first)}" in result.stderr
    single = cli("compute", tmp_path / "joined.tar", "-j", "1", "--ext", "png", expect=0)
    assert single.stderr.count("end-of-archive") == 1
