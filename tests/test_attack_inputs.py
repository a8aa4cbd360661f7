"""Hostile and odd inputs found after the "trust at the edges" work: each loses no data silently,
invents no number and kills no run over one bad file."""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import cli, cli_json

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npy_header(descr: str, shape: tuple, version: int = 1, length: int | None = None) -> bytes:
    """A hand-written ``.npy`` header (numpy writes no lying one)."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    text = text.ljust(117) + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", length or len(text)) + text


# -- arrays: one damaged array file is a skip entry, the others count -----------------------------------------


DAMAGED_HEADERS = {
    "negative rows": _npy_header("|u1", (-10, 4, 4, 3)) + bytes(480),
    "negative side": _npy_header("|u1", (3, -4, 4, 3)) + bytes(480),
    "header longer than the file": b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{",
    "no header at all": b"\x93NUMPY",
    "not an npy": b"hello world, not an array",
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_HEADERS))
def test_a_damaged_npy_among_good_ones_is_a_skip_entry(tmp_path, damage):
    good = np.arange(10 * 4 * 4 * 3, dtype=np.uint8).reshape(10, 4, 4, 3)
    np.save(tmp_path / "a.npy", good)
    (tmp_path / "b.npy").write_bytes(DAMAGED_HEADERS[damage])
    out = cli_json("compute", tmp_path, "-q", "-j", "1")
    assert out["images"] == 10
    assert out["raw"]["mean"] == pytest.approx(good.reshape(-1, 3).astype(np.float64).mean(axis=0).tolist())
    assert [entry["path"] for entry in out["skipped"]] == [str(tmp_path / "b.npy")]
    strict = cli("compute", tmp_path, "-q", "-j", "1", "--strict", expect=1)
    assert "b.npy" in strict.stderr and len(strict.stderr.strip().splitlines()) == 1


def test_a_negative_shape_alone_is_no_silent_empty_run(tmp_path):
    (tmp_path / "neg.npy").write_bytes(DAMAGED_HEADERS["negative rows"])
    result = cli("compute", tmp_path / "neg.npy", "-q", expect=1)
    assert "negative" in result.stderr


@SETTINGS
@given(rows=st.integers(1, 6), side=st.integers(-3, -1), where=st.integers(0, 2))
def test_any_negative_dimension_is_named_never_an_empty_count(tmp_path_factory, rows, side, where):
    folder = tmp_path_factory.mktemp("neg")
    shape = [rows, 2, 2]
    shape[where] = side
    (folder / "x.npy").write_bytes(_npy_header("|u1", tuple(shape)) + bytes(64))
    np.save(folder / "y.npy", np.ones((2, 2, 2), np.uint8))
    out = cli_json("compute", folder, "-q", "-j", "1")
    assert out["images"] == 2
    assert [entry["path"] for entry in out["skipped"]] == [str(folder / "x.npy")]


# -- .npz: a member name stored twice is counted once, and the earlier copy named --------------------------


def _npz_with_copies(path, copies: list[np.ndarray], others: dict | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        with zipfile.ZipFile(path, "w") as z:
            for array in copies:
                z.writestr("x.npy", _npy_bytes(array))
            for name, array in (others or {}).items():
                z.writestr(name + ".npy", _npy_bytes(array))


def test_an_npz_member_stored_twice_is_not_counted_twice(tmp_path):
    # numpy.load reads the last copy; the listing took the name twice and counted the last copy twice
    first, last = np.zeros((10, 4, 4, 3), np.uint8), np.full((10, 4, 4, 3), 255, np.uint8)
    _npz_with_copies(tmp_path / "d.npz", [first, last])
    out = cli_json("compute", tmp_path / "d.npz", "-q", "-j", "1")
    assert out["images"] == 10
    assert out["raw"]["mean"] == [255.0, 255.0, 255.0]
    assert [entry["path"] for entry in out["skipped"]] == [f"{tmp_path / 'd.npz'}:x"]
    assert "2 times" in out["skipped"][0]["error"]


@SETTINGS
@given(copies=st.integers(1, 4), rows=st.lists(st.integers(1, 5), min_size=4, max_size=4),
       other=st.booleans())
def test_npz_counts_each_name_once_as_numpy_load_reads_it(tmp_path_factory, copies, rows, other):
    folder = tmp_path_factory.mktemp("npz")
    arrays = [np.full((rows[i], 2, 2, 3), 10 * i + 1, np.uint8) for i in range(copies)]
    others = {"z": np.full((3, 2, 2, 3), 7, np.uint8)} if other else None
    _npz_with_copies(folder / "d.npz", arrays, others)
    with np.load(folder / "d.npz") as loaded:
        expected = np.concatenate([loaded[name] for name in sorted(set(loaded.files))])
    out = cli_json("compute", folder / "d.npz", "-q", "-j", "1")
    assert out["images"] == len(expected)
    assert out["raw"]["mean"] == pytest.approx(expected.reshape(-1, 3).astype(np.float64).mean(axis=0).tolist())
    named = [entry["path"] for entry in out["skipped"]]
    assert named == ([f"{folder / 'd.npz'}:x"] if copies > 1 else [])


# -- tar and zip: a member name stored twice -----------------------------------------------------------------


def _png_bytes(value: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


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


# -- TIFF: a chain of pages that breaks (a loop, a directory outside the file) ----------------------------


def _stack_with_broken_chain(path, pages: int, after: int, how: str) -> np.ndarray:
    """A ``pages``-page 8-bit stack whose directory ``after`` links to an earlier one (``loop``) or past the
    file's end (``outside``); the stack as written is returned."""
    tifffile = pytest.importorskip("tifffile")
    stack = np.stack([np.full((4, 4), 10 * (i + 1), np.uint8) for i in range(pages)])
    with tifffile.TiffWriter(path) as writer:
        for page in stack:
            writer.write(page, contiguous=False)
    with tifffile.TiffFile(path) as tif:
        offsets = [tif.pages[i].offset for i in range(len(tif.pages))]
    assert len(offsets) == pages
    data = bytearray(path.read_bytes())
    (count,) = struct.unpack_from("<H", data, offsets[after])
    link = offsets[after] + 2 + 12 * count
    struct.pack_into("<I", data, link, offsets[0] if how == "loop" else len(data) + 10**6)
    path.write_bytes(bytes(data))
    return stack


@pytest.mark.parametrize("how", ["loop", "outside"])
def test_a_broken_page_chain_counts_the_pages_before_it_and_names_the_break(tmp_path, how):
    stack = _stack_with_broken_chain(tmp_path / "s.tif", 7, 1, how)
    out = cli_json("compute", tmp_path / "s.tif", "-q", "-j", "1", "--mode", "native")
    assert out["images"] == 2
    assert out["raw"]["mean"] == [float(stack[:2].mean())]
    assert [entry["path"] for entry in out["skipped"]] == [f"{tmp_path / 's.tif'}:2"]
    assert "damaged TIFF" in out["skipped"][0]["error"]


def test_a_one_page_member_with_a_broken_chain_is_no_first_page_alone(tmp_path):
    stack = _stack_with_broken_chain(tmp_path / "s.tif", 3, 0, "outside")
    assert len(stack) == 3
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        tar.add(tmp_path / "s.tif", "s.tif")
        tar.add(tmp_path / "s.tif", "t.tif")
    result = cli("compute", tmp_path / "a.tar", "-q", "-j", "1", "--mode", "native", expect=1)
    assert "damaged TIFF" in result.stderr


@SETTINGS
@given(pages=st.integers(2, 6), data=st.data(), how=st.sampled_from(["loop", "outside"]))
def test_every_page_before_a_break_counts_and_the_break_is_one_entry(tmp_path_factory, pages, data, how):
    after = data.draw(st.integers(0, pages - 1))
    folder = tmp_path_factory.mktemp("tif")
    stack = _stack_with_broken_chain(folder / "s.tif", pages, after, how)
    out = cli_json("compute", folder, "-q", "-j", "1", "--mode", "native")
    # the directory `after` still counts: only its link is damaged
    assert out["images"] == after + 1
    assert out["raw"]["mean"] == [pytest.approx(float(stack[: after + 1].mean()))]
    assert [entry["path"] for entry in out["skipped"]] == [f"{folder / 's.tif'}:{after + 1}"]


# -- Parquet: one damaged file among good ones is a skip entry ----------------------------------------------


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


# -- tar: a pax or long-name header that claims gigabytes -------------------------------------------------


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


# -- zip: an end record that lists nothing while members come before it ----------------------------------


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


def test_an_npz_whose_comment_holds_an_end_record_is_a_skip_entry(tmp_path):
    np.save(tmp_path / "a.npy", np.full((2, 2, 2, 3), 9, np.uint8))
    with zipfile.ZipFile(tmp_path / "b.npz", "w") as z:
        z.writestr("x.npy", _npy_bytes(np.zeros((5, 2, 2, 3), np.uint8)))
        z.comment = b"PK\x05\x06" + bytes(18)
    out = cli_json("compute", tmp_path, "-q", "-j", "1")
    assert out["images"] == 2
    assert [entry["path"] for entry in out["skipped"]] == [str(tmp_path / "b.npz")]


# -- remote: a zip on a server without range requests ---------------------------------------------------


def test_a_zip_on_a_server_without_ranges_says_so_and_what_to_do(tmp_path):
    pytest.importorskip("aiohttp")
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "a.zip", "w") as z:
        z.writestr("m.png", _png_bytes(5))

    class Quiet(http.server.SimpleHTTPRequestHandler):  # answers no Range header: the whole file
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = cli("compute", f"http://127.0.0.1:{server.server_address[1]}/a.zip", "-q", "-j", "1", expect=1)
    finally:
        server.shutdown()
        server.server_close()
    assert "range requests, which a zip needs" in result.stderr
    assert "block_size" not in result.stderr  # fsspec's advice is for its API, not for this tool's user


# -- float arrays past float64, and 8-byte samples, through every command ----------------------------------


def _run(*args):
    """A real process (numpy's warnings print to the real stderr): (exit code, stdout, stderr)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "bnstats", *map(str, args)], capture_output=True, text=True,
                          timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("extra", [[], ["--covariance"]])
def test_values_past_float64_fail_in_one_line_without_a_raw_warning(tmp_path, extra):
    np.save(tmp_path / "huge.npy", np.full((2, 2, 2, 3), 1e308))
    code, out, err = _run("compute", tmp_path / "huge.npy", "-q", "-j", "1", *extra)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1, err  # was a RuntimeWarning (and LinAlgError's traceback)
    assert "not a finite number" in err


@pytest.mark.parametrize("dtype", ["float64", "int64", "uint64", "uint32"])
def test_compare_takes_arrays_of_8_byte_samples(tmp_path, dtype):
    np.save(tmp_path / "a.npy", (np.arange(3 * 2 * 2 * 3) % 7).reshape(3, 2, 2, 3).astype(dtype))
    result = cli("compare", tmp_path / "a.npy", "-q", expect=0)  # was KeyError: 8
    assert "agree" in result.stdout


# -- --group-by class on files named on their own ---------------------------------------------------------


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


UNCOUNTABLE = {
    "objects": lambda path: np.save(path, np.array([1, None], dtype=object), allow_pickle=True),
    "complex": lambda path: np.save(path, np.zeros((2, 2, 2), np.complex64)),
    "structured": lambda path: np.save(path, np.zeros(3, dtype=[("a", "u1"), ("b", "f4")])),
    "scalar": lambda path: np.save(path, np.array(5, np.uint8)),
    "five axes": lambda path: np.save(path, np.zeros((2, 2, 2, 2, 2), np.uint8)),
    "images of no pixel": lambda path: np.save(path, np.zeros((3, 0, 4, 3), np.uint8)),
}


@pytest.mark.parametrize("kind", sorted(UNCOUNTABLE))
def test_an_uncountable_array_among_good_ones_is_a_skip_entry(tmp_path, kind):
    np.save(tmp_path / "a.npy", np.full((2, 2, 2, 3), 7, np.uint8))
    UNCOUNTABLE[kind](tmp_path / "b.npy")
    out = cli_json("compute", tmp_path, "-q", "-j", "1")
    assert out["images"] == 2  # "images of no pixel" made it 5
    assert [entry["path"] for entry in out["skipped"]] == [str(tmp_path / "b.npy")]


# -- tar: archives joined with cat ------------------------------------------------------------------------


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
