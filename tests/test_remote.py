"""URLs through fsspec: a real S3 API (moto's server) and a real HTTP server, both on 127.0.0.1 only."""

from __future__ import annotations

import functools
import http.server
import io
import json
import sys
import tarfile
import threading
import time

import pytest

from helpers import Scripted, cli, cli_json, free_port, local_s3, static_files, stderr_lines

pytestmark = pytest.mark.slow  # a local S3 server and HTTP servers: the slow tier (CI runs it)
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

STAT_FIELDS = ("mean", "std", "var", "min", "max", "pixels", "images", "channels")
NO_RETRIES = ("--storage-option", 'config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2}')


def tar_shards(files, root, count: int) -> list[bytes]:
    """The files as ``count`` uncompressed tar shards, members named as below ``root``."""
    shards = []
    for k in range(count):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in files[k::count]:
                tar.add(path, arcname=path.relative_to(root).as_posix())
        shards.append(buffer.getvalue())
    return shards


@pytest.fixture(scope="session")
def s3(sample_data, sample_files):
    """moto's S3 server on 127.0.0.1 with bucket ``photos``: loose images, tar shards, a Parquet file.

    Yields ``(endpoint, fs, options)``: options are the CLI's ``--storage-option`` arguments.
    """
    with local_s3() as (endpoint, fs):
        fs.makedirs("photos", exist_ok=True)  # moto keeps its buckets per process: a second server sees them
        for path in sample_files:
            fs.pipe(f"photos/loose/{path.relative_to(sample_data).as_posix()}", path.read_bytes())
        fs.pipe("photos/loose/.hidden/x.jpg", b"not counted")
        fs.pipe("photos/loose/README.txt", b"not an image")
        for k, data in enumerate(tar_shards(sample_files, sample_data, 2)):
            fs.pipe(f"photos/shards/part-{k}.tar", data)
        table = pa.table({"image": [{"bytes": p.read_bytes(), "path": p.name} for p in sample_files],
                          "label": [p.relative_to(sample_data).parts[0] for p in sample_files]})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=10)
        fs.pipe("photos/hf/train.parquet", buffer.getvalue())
        yield endpoint, fs, ("--storage-option", f"endpoint_url={endpoint}")


@pytest.fixture(scope="session")
def http_root(sample_data, sample_files, tmp_path_factory):
    """A local ``http.server`` on 127.0.0.1 serving a folder with two tar shards; yields its base URL.

    It answers no range requests: the shards are read front to back.
    """
    folder = tmp_path_factory.mktemp("http")
    for k, data in enumerate(tar_shards(sample_files, sample_data, 2)):
        (folder / f"part-{k}.tar").write_bytes(data)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that closes early (fsspec reads a block) is no error here

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class RangeServer(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that answers ``Range: bytes=A-B`` (206) and logs every GET.

    ``fail`` maps ``(file name, "list" | "read")`` to how many of those GETs answer 503 first (``-1``:
    all of them); a GET from byte 0 is the listing's, any other range a read of members.
    """

    def __init__(self, folder):
        self.folder, self.gets, self.fail = folder, [], {}
        super().__init__(("127.0.0.1", 0), RangeHandler)

    def handle_error(self, request, client_address):
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.respond(head=True)

    def do_GET(self):
        self.respond(head=False)

    def respond(self, head):
        path = self.server.folder / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        if not head:
            self.server.gets.append((path.name, self.headers.get("Range")))
            kind = "list" if (self.headers.get("Range") or "bytes=0-").startswith("bytes=0-") else "read"
            left = self.server.fail.get((path.name, kind), 0)
            if left:
                self.server.fail[path.name, kind] = left - 1 if left > 0 else -1
                self.send_error(503)
                return
        data = path.read_bytes()
        status, body = 200, data
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[6:].partition("-")
            start, end = int(first), (int(last) + 1 if last else len(data))
            status, body = 206, data[start:end]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.end_headers()
        if not head:
            self.wfile.write(body)


@pytest.fixture
def range_server(sample_data, sample_files, tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    for k, data in enumerate(tar_shards(sample_files, sample_data, 2)):
        (folder / f"part-{k}.tar").write_bytes(data)
    server = RangeServer(folder)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def folder_result(sample_data):
    return cli_json("compute", sample_data, "-q", "--group-by", "class")


def same_stats(a, b):
    for field in STAT_FIELDS:
        if field in a or field in b:
            assert a[field] == b[field], field


def test_loose_objects_under_a_prefix(s3, folder_result):
    result = cli_json("compute", "s3://photos/loose/", "-q", *s3[2])
    same_stats(result, folder_result)
    assert result["skipped"] == []


def test_loose_objects_keys_are_urls_listed_like_a_folder(s3):
    from bnstats.inputs.select import select
    from bnstats.inputs.base import InputOptions

    selection = select(["s3://photos/loose"], options=InputOptions(storage_options=(("endpoint_url", s3[0]),)))
    assert len(selection.keys) == 36 and selection.keys == sorted(selection.keys)
    assert selection.keys[0].startswith("s3://photos/loose/cat/")
    assert not any(".hidden" in k for k in selection.keys)
    assert "ignored 1 file that is not an image by extension (.txt 1)" in selection.notes


def test_tar_shards_on_s3(s3, folder_result):
    same_stats(cli_json("compute", "s3://photos/shards/part-{0..1}.tar", "-q", *s3[2]), folder_result)
    same_stats(cli_json("compute", "s3://photos/shards/", "-q", *s3[2]), folder_result)  # found under a prefix


def test_parquet_on_s3_with_group_by(s3, folder_result):
    result = cli_json("compute", "s3://photos/hf/train.parquet", "-q", "--group-by", "label", *s3[2])
    same_stats(result, folder_result)
    for name, group in folder_result["groups"].items():
        same_stats(result["groups"][name], group)


def test_tar_shards_over_http(http_root, folder_result, tmp_path):
    same_stats(cli_json("compute", f"{http_root}/part-{{0..1}}.tar", "-q"), folder_result)
    listed = tmp_path / "list.txt"
    listed.write_text(f"# shards\n{http_root}/part-0.tar\n{http_root}/part-1.tar\n")
    same_stats(cli_json("compute", "--files-from", listed, "-q"), folder_result)


def test_tar_shards_over_http_with_range_requests(range_server, folder_result, sample_files):
    """A server with range requests: each task fetches its members as a few byte ranges, not one per member."""
    same_stats(cli_json("compute", f"{range_server.url}/part-{{0..1}}.tar", "-q", "-j", "1"), folder_result)
    ranged = [r for _, r in range_server.gets if r is not None]
    assert ranged and len(ranged) < len(sample_files) / 4, range_server.gets
    assert all(r.startswith("bytes=") for r in ranged)


def test_byte_ranges_start_small_then_take_the_largest_size_allowed():
    """A task's first range is small (decoding starts soon); the next ones are as large as allowed (each request
    costs the store CPU); small gaps are read over, larger ones and oversized members cut a range."""
    from bnstats import limits
    from bnstats.inputs.tar import FIRST_SPAN_BYTES, SPAN_BYTES, SPAN_GAP, _spans

    MAX_MEMBER_BYTES = limits.current().file_bytes

    size = 2**16
    members, offset = [], 512
    for i in range(400):  # 26 MB of 64 KiB members, 512-byte headers between them
        members.append((f"m{i}", offset, size))
        offset += size + 512
    spans = list(_spans(members))
    assert [m for span in spans for m in span] == members
    lengths = [span[-1][1] + span[-1][2] - span[0][1] for span in spans]
    assert FIRST_SPAN_BYTES - size - 512 < lengths[0] <= FIRST_SPAN_BYTES
    assert all(SPAN_BYTES - size - 512 < n <= SPAN_BYTES for n in lengths[1:-1]) and lengths[-1] <= SPAN_BYTES
    assert len(spans) == 1 + -(-(offset - lengths[0]) // SPAN_BYTES)
    gap = [("a", 0, 10), ("b", 10 + SPAN_GAP + 1, 10), ("c", 20 + SPAN_GAP + 1, MAX_MEMBER_BYTES + 1), ("d", 0, 1)]
    assert [[m[0] for m in span] for span in _spans(gap)] == [["a"], ["b"], ["c"], ["d"]]


def test_a_member_over_the_size_limit_is_skipped_alone(range_server, sample_files, monkeypatch):
    """Not fetched at all, and its neighbours in the same byte range are still counted."""
    from bnstats import limits

    sizes = sorted(p.stat().st_size for p in sample_files)
    monkeypatch.setenv("BNSTATS_MAX_FILE_BYTES", str(sizes[-1] - 1))  # the largest image only
    limits.install(limits.Limits.from_environ())
    try:
        result = cli_json("compute", f"{range_server.url}/part-{{0..1}}.tar", "-q", "-j", "1")
    finally:
        monkeypatch.delenv("BNSTATS_MAX_FILE_BYTES")
        limits.install(limits.Limits.from_environ())
    assert [s["error"] for s in result["skipped"]] == [f"member of {sizes[-1]:,} bytes is over the limit of "
                                                        f"{sizes[-1] - 1:,} (raise it with BNSTATS_MAX_FILE_BYTES)"]
    assert result["images"] == len(sample_files) - 1


@pytest.mark.slow
def test_transient_errors_are_retried_then_skipped(range_server, folder_result, sample_files):
    # the listing of part-0 and the first read of part-1 fail once: both tried again, everything counted
    range_server.fail = {("part-0.tar", "list"): 1, ("part-1.tar", "read"): 1}
    same_stats(cli_json("compute", f"{range_server.url}/part-{{0..1}}.tar", "-q", "-j", "1"), folder_result)
    assert range_server.fail == {("part-0.tar", "list"): 0, ("part-1.tar", "read"): 0}
    range_server.gets.clear()
    range_server.fail = {("part-1.tar", "read"): -1}  # listed, then fails on every read: its members skipped
    result = cli("compute", f"{range_server.url}/part-{{0..1}}.tar", "-j", "1", expect=None)
    assert "Traceback" not in result.stderr
    skipped = json.loads(result.stdout)["skipped"]
    members = len(sample_files[1::2])
    assert len(skipped) == members and all("part-1.tar:" in s["path"] and "503" in s["error"] for s in skipped)
    from bnstats.inputs import stores
    assert sum(name == "part-1.tar" for name, _ in range_server.gets) >= stores.ATTEMPTS  # tried, then given up


@pytest.mark.slow
def test_workers_and_shards_give_the_same_bytes(s3, tmp_path):
    args = ("s3://photos/loose/", "-q", *s3[2])
    one = cli("compute", *args, "-j", "1", expect=0).stdout_bytes
    assert cli("compute", *args, "-j", "2", expect=0).stdout_bytes == one
    parts = [tmp_path / "a.json", tmp_path / "b.json"]
    for k, part in enumerate(parts):
        cli("compute", *args, "--shard", f"{k}/2", "-o", part, expect=0)
    assert cli("merge", *parts, expect=0).stdout_bytes == one


@pytest.mark.slow
def test_resume_compare_and_export_over_s3_shards_and_parquet(s3, tmp_path, monkeypatch):
    """The contract's other commands on tar shards and a Parquet file in one S3 run, as on a folder."""
    from helpers import interrupt_after

    args = ("s3://photos/shards/", "s3://photos/hf/train.parquet", "-q", *s3[2])
    whole = cli("compute", *args, "-j", "1", expect=0).stdout
    assert json.loads(whole)["images"] == 2 * 36
    ck, out = tmp_path / "ck.json", tmp_path / "out.json"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        cli("compute", *args, "-j", "1", "--checkpoint", ck, "-o", out, expect=130)
    assert ck.exists() and not out.exists()
    cli("compute", *args, "-j", "2", "--checkpoint", ck, "-o", out, expect=0)
    assert out.read_text() == whole and not ck.exists()
    compared = cli("compare", *args, expect=0)
    assert "streaming and naive agree" in compared.stdout + compared.stderr
    exported = json.loads(cli("export", out, "--format", "hf", expect=0).stdout)
    assert exported["image_mean"] == json.loads(whole)["mean"]


@pytest.mark.slow
def test_dask_over_s3_equals_a_local_run(s3):
    distributed = pytest.importorskip("distributed")
    args = ("s3://photos/shards/", "-q", *s3[2])
    local = cli("compute", *args, "-j", "1", expect=0).stdout
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        assert cli("compute", *args, "--scheduler", c.scheduler_address, expect=0).stdout == local


def test_resume_refuses_a_changed_object(s3):
    """The checkpoint fingerprint covers ETags: a rewritten object changes ``contents``, not ``digest``."""
    from bnstats.inputs.remote import RemoteSource
    from bnstats.inputs.base import InputOptions

    endpoint, fs, _ = s3
    fs.pipe("photos/versions/a.jpg", b"one")
    source = RemoteSource(["s3://photos/versions/"], InputOptions(storage_options=(("endpoint_url", endpoint),)))
    keys = source.list_items()
    before = source.fingerprint(keys)
    fs.pipe("photos/versions/a.jpg", b"two")
    assert source.list_items() == keys  # as a resumed run lists again
    after = source.fingerprint(keys)
    assert before["digest"] == after["digest"] and before["contents"] != after["contents"]


def test_missing_bucket(s3):
    result = cli("compute", "s3://no-such-bucket/x/", *s3[2], expect=1)
    assert len(stderr_lines(result)) == 1
    assert "s3://no-such-bucket/x/" in result.stderr and "bucket does not exist" in result.stderr


def test_unreachable_endpoint():
    result = cli("compute", "s3://photos/loose/", "--storage-option", f"endpoint_url=http://127.0.0.1:{free_port()}",
                 *NO_RETRIES, expect=1)
    assert len(stderr_lines(result)) == 1 and "connection refused: http://127.0.0.1:" in result.stderr


def test_access_denied(s3, monkeypatch):
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks credentials now
    result = cli("compute", "s3://photos/loose/", *s3[2], "--storage-option", "key=wrong",
                 "--storage-option", "secret=wrong", expect=1)
    assert len(stderr_lines(result)) == 1 and "access denied (HTTP 403)" in result.stderr


def delete_after_listing(monkeypatch, kind, fs, path: str) -> None:
    """Make ``kind``'s listing delete the object ``path`` as soon as it has listed it."""
    listed = kind.list_items

    def list_then_delete(self):
        keys = listed(self)
        fs.rm(path)
        return keys

    monkeypatch.setattr(kind, "list_items", list_then_delete)


def test_object_deleted_after_listing_is_skipped(s3, monkeypatch):
    from bnstats.inputs.remote import RemoteSource

    endpoint, fs, options = s3
    fs.pipe("photos/gone/a.jpg", fs.cat_file("photos/loose/cat/" + fs.ls("photos/loose/cat")[0].split("/")[-1]))
    fs.pipe("photos/gone/b.jpg", fs.cat_file("photos/gone/a.jpg"))
    delete_after_listing(monkeypatch, RemoteSource, fs, "photos/gone/b.jpg")
    result = cli_json("compute", "s3://photos/gone/", "-q", *options)
    assert result["images"] == 1
    assert result["skipped"] == [{"path": "s3://photos/gone/b.jpg", "error": "object not found (deleted after listing?)"}]


def test_tar_shard_deleted_after_listing_skips_its_members(s3, monkeypatch):
    from bnstats.inputs.tar import TarSource

    endpoint, fs, options = s3
    fs.pipe("photos/gone-tar/part-0.tar", fs.cat_file("photos/shards/part-0.tar"))
    delete_after_listing(monkeypatch, TarSource, fs, "photos/gone-tar/part-0.tar")
    result = cli("compute", "s3://photos/gone-tar/part-0.tar", "-q", *options, expect=1)  # nothing readable
    report = json.loads(result.stdout) if result.stdout else None
    assert report is None or report["images"] == 0
    assert len(stderr_lines(result)) == 1


def test_without_fsspec_names_the_extra(monkeypatch):
    import bnstats.inputs.stores

    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.setattr(bnstats.inputs.stores, "_filesystems", {})
    result = cli("compute", "s3://photos/loose/", expect=1)
    assert len(stderr_lines(result)) == 1 and "bnstats[remote]" in result.stderr


def test_bad_storage_option_is_a_usage_error():
    result = cli("compute", "s3://photos/", "--storage-option", "novalue", expect=2)
    assert "KEY=VALUE" in result.stderr


def test_a_shard_not_in_name_order_is_named_once_as_slow(range_server, sample_files, sample_data):
    """Members are read in name order as byte ranges: a shard stored in another order takes a request per few
    members. The run says so once (a warning naming the shard and the fix) and counts everything."""
    from bnstats.inputs.select import select

    files = sorted(sample_files, key=lambda p: p.name, reverse=True)  # stored in reverse name order
    (range_server.folder / "reversed.tar").write_bytes(tar_shards(files, sample_data, 1)[0])
    result = cli("compute", f"{range_server.url}/reversed.tar", f"{range_server.url}/part-0.tar", "-j", "1",
                 expect=0)
    notes = [line for line in result.stderr.splitlines() if "not stored in name order" in line]
    assert len(notes) == 1 and "reversed.tar" in notes[0] and "tar --sort=name" in notes[0]
    assert json.loads(result.stdout)["images"] == len(sample_files) + len(sample_files[0::2])
    assert not any("name order" in note for note in select([f"{range_server.url}/part-0.tar"]).notes)


@pytest.mark.slow
def test_tar_shards_larger_than_a_block_over_http_without_range_requests(sample_files, sample_data, tmp_path,
                                                                       folder_result):
    """A server that answers no range requests serves a shard front to back, however large: read in blocks, a
    seekable file failed after its first 8 MiB, and the listing lost every member after it. Here 9 MB of
    non-image filler sits between the images."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, path in enumerate(sample_files):
            tar.add(path, arcname=path.relative_to(sample_data).as_posix())
            if i == 3:
                info = tarfile.TarInfo("filler.bin")
                info.size = 9 * 2**20
                tar.addfile(info, io.BytesIO(bytes(info.size)))
    (tmp_path / "big.tar").write_bytes(buffer.getvalue())

    with static_files(str(tmp_path)) as url:
        result = cli_json("compute", f"{url}/big.tar", "-q", "-j", "1")
    same_stats(result, folder_result)
    assert result["skipped"] == []


@pytest.mark.slow
def test_a_stream_cut_by_the_server_skips_the_members_left_in_one_line_each(sample_files, sample_data, tmp_path):
    """Over HTTP without range requests a shard is streamed; a server that cuts the body short (aiohttp's
    ClientPayloadError, not an OSError) ends the stream: the members left are skipped, each on one line, no
    traceback (if aiohttp raises it at the first read, nothing is counted: exit 1, "no image could be read")."""
    (tmp_path / "s.tar").write_bytes(tar_shards(sample_files, sample_data, 1)[0])
    gets = []

    class Cutting(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            gets.append(self.path)
            if len(gets) < 3:  # the listing, and the request for a byte range (answered whole)
                return super().do_GET()
            data = (tmp_path / "s.tar").read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # then the connection closes

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Cutting, directory=str(tmp_path)))
    server.handle_error = lambda *args: None
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        result = cli("compute", f"http://127.0.0.1:{server.server_address[1]}/s.tar", "-j", "1")
    finally:
        server.shutdown()
        server.server_close()
    warnings = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert result.exit_code in (0, 1) and 0 < len(warnings) <= len(sample_files)
    if result.exit_code == 0:  # what arrived before the cut is counted (how much depends on aiohttp's reads)
        report = json.loads(result.stdout)
        assert report["images"] + len(report["skipped"]) == len(sample_files) == report["images"] + len(warnings)
    else:
        assert len(warnings) == len(sample_files)
    assert all("ContentLengthError" in line for line in warnings), warnings[-2:]  # a range's or the stream's
    assert any("archive ended before this member" in line for line in warnings)  # the stream's, caught


def status(code: int):
    def respond(handler):
        handler.send_response(code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return respond


def test_group_by_class_under_a_prefix_is_the_top_level_folder(s3, folder_result):
    result = cli_json("compute", "s3://photos/loose/", "-q", "--group-by", "class", *s3[2])
    assert sorted(result["groups"]) == sorted(folder_result["groups"]) and "" not in result["groups"]
    for name, group in folder_result["groups"].items():
        same_stats(result["groups"][name], group)


def test_class_of_a_remote_object():
    from bnstats.inputs.remote import RemoteSource

    source = RemoteSource(["s3://b/data/", "s3://b/data/deeper", "s3://b/one.jpg"])
    assert source.class_of("s3://b/data/cat/x/y.jpg") == "cat"
    assert source.class_of("s3://b/data/top.jpg") == "data"  # directly in the prefix: the prefix's name
    assert source.class_of("s3://b/data/deeper/dog/z.jpg") == "dog"  # the deepest prefix named
    assert source.class_of("s3://b/one.jpg") == ""  # named directly: no class
    assert source.class_of("s3a://b/data/cat/x.jpg") == "cat"


@pytest.mark.parametrize("scheme", ["s3", "http"])
def test_nothing_listening_fails_at_once_in_one_line(scheme):
    """20 shards on an endpoint where nothing listens: one line naming it, exit 1, within seconds (every shard
    waited out botocore's, s3fs's and bnstats' retries in turn: minutes)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    args = (("s3://photos/train-{000..019}.tar", "--storage-option", f"endpoint_url={endpoint}") if scheme == "s3"
            else (f"{endpoint}/train-{{000..019}}.tar",))
    started = time.monotonic()
    result = cli("compute", *args, expect=1)
    assert time.monotonic() - started < 5
    assert stderr_lines(result) == [f"Error: connection refused: {endpoint} (is the endpoint right?)"]


def test_a_refused_read_stops_the_run_without_more_retries(monkeypatch):
    """A server that goes away after the listing: the first refused read stops the run (no retry, one line)."""
    from bnstats.inputs import stores

    calls = []

    def refused():
        calls.append(1)
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")

    with pytest.raises(stores.SourceError, match="connection refused"):
        stores.retried(refused)
    assert calls == [1]


@pytest.mark.parametrize("name", ["a.jpg", "train-{0..1}.tar", "a.parquet", "a.zip"])
@pytest.mark.parametrize("code, words", [(403, "access denied (HTTP 403)"), (500, "server error (HTTP 500)")])
def test_http_statuses_are_named_not_missing(scripted, name, code, words, monkeypatch):
    from bnstats.inputs import stores

    monkeypatch.setattr(stores, "RETRY_PAUSE", 0.01)
    server = scripted(status(code))
    result = cli("compute", f"{server.url}/{name}", "--strict", expect=1)
    lines = stderr_lines(result)
    assert len(lines) == 1 and words in lines[0], lines
    assert "FileNotFoundError" not in lines[0] and "no such object" not in lines[0]


def test_a_server_error_is_tried_again_and_access_denied_is_not(scripted, monkeypatch):
    from bnstats.inputs import remote, stores

    monkeypatch.setattr(stores, "RETRY_PAUSE", 0.01)
    gets = {"500": 0, "403": 0}

    def respond(handler):
        code = handler.path.strip("/").split("/")[0]
        gets[code] += handler.command == "GET"
        status(int(code))(handler)

    server = scripted(respond)
    fs = stores.filesystem(server.url)
    for code, tries in (("500", stores.ATTEMPTS), ("403", 1)):
        with pytest.raises(stores.ItemError, match=f"HTTP {code}"):
            remote._fetch(fs, f"{server.url}/{code}/a.jpg")
        assert gets[code] == tries


@pytest.mark.slow
def test_s3_server_errors_are_named(scripted, s3):
    """An S3 endpoint answering 500: the listing names the status (it was "no such object" or an OSError)."""
    from test_remote import NO_RETRIES

    server = scripted(status(500))
    result = cli("compute", "s3://photos/a.jpg", "--storage-option", f"endpoint_url={server.url}", *NO_RETRIES,
                 expect=1)
    assert len(stderr_lines(result)) == 1 and "server error (HTTP 500)" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def status_server():
    """A server answering every status it is asked for: ``/CODE/name``."""
    server = Scripted(lambda handler: status(int(handler.path.strip("/").split("/")[0]))(handler))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_every_error_status_is_named_and_only_404_is_missing(status_server):
    """The class of the bug: fsspec's HTTP raises FileNotFoundError for any failed request; whatever the status,
    the description names it, and only a 404 counts as a missing object."""
    from hypothesis import given, settings, strategies as st

    from bnstats.inputs import stores

    fs = stores.filesystem(status_server.url)

    @settings(max_examples=25, deadline=None)
    @given(st.one_of(st.just(404), st.integers(400, 599)))
    def check(code):
        url = f"{status_server.url}/{code}/x.tar"
        for request in (lambda: fs.info(url), lambda: fs.cat_file(url)):
            with pytest.raises(Exception) as caught:
                request()
            exc = caught.value
            assert stores.http_status(exc) in ((code, None) if code == 404 else (code,))  # fsspec: a bare 404
            assert stores.missing(exc) == (code == 404)
            if code != 404:
                assert f"(HTTP {code})" in stores.describe_remote_error(exc)
            assert stores._may_pass(exc) == (code >= 500 or code in (408, 429))

    check()


def test_a_server_sending_a_byte_now_and_then_times_out(scripted):
    """A byte every 0.3 s: within the default (60 s between bytes) it would go on for ever; with
    ``--storage-option read_timeout=0.1`` the object is skipped at once, the message saying what to raise."""
    release = threading.Event()

    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        if handler.command == "GET":
            while not release.wait(0.3):
                handler.wfile.write(b"x")
                handler.wfile.flush()

    server = scripted(trickle)
    try:
        started = time.monotonic()
        result = cli("compute", f"{server.url}/a.jpg", "--storage-option", "read_timeout=0.1", expect=1)
        assert time.monotonic() - started < 5
    finally:
        release.set()
    assert "read timeout" in result.stderr and "read_timeout=SECONDS" in result.stderr
    assert len(stderr_lines(result)) <= 2


def test_read_timeout_reaches_aiohttp_and_s3fs():
    from bnstats.inputs import stores

    http = stores._with_timeouts("https", {"read_timeout": 7})
    assert http["client_kwargs"]["timeout"].sock_read == 7 and http["client_kwargs"]["timeout"].total is None
    assert stores._with_timeouts("http", {})["client_kwargs"]["timeout"].sock_read == stores.READ_TIMEOUT
    given = stores._with_timeouts("http", {"client_kwargs": {"timeout": {"sock_read": 3}}})
    assert given["client_kwargs"]["timeout"].sock_read == 3
    total = stores._with_timeouts("http", {"client_kwargs": {"timeout": 100}})["client_kwargs"]["timeout"]
    assert total.total == 100 and total.sock_read == stores.READ_TIMEOUT
    assert stores._with_timeouts("s3", {"read_timeout": 2, "config_kwargs": {"retries": {"max_attempts": 1}}}) == {
        "config_kwargs": {"retries": {"max_attempts": 1}, "read_timeout": 2}}
    with pytest.raises(stores.SourceError, match="read_timeout"):
        stores._with_timeouts("s3", {"read_timeout": "soon"})


@pytest.fixture
def endless(scripted):
    """A server whose GET body has no length and no end (until the client goes); ``sent`` counts its bytes."""
    sent = [0]

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Connection", "close")  # no Content-Length: the body ends when the connection does
        handler.end_headers()
        if handler.command != "GET":
            return
        chunk = bytes(2**16)
        try:
            while sent[0] < 2**30:
                handler.wfile.write(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass
        handler.close_connection = True

    server = scripted(respond)
    server.sent = sent
    return server


def test_a_body_without_end_is_read_no_further_than_the_file_limit(endless, monkeypatch):
    from bnstats import limits

    monkeypatch.setattr(limits, "_current", limits.Limits(file_bytes=2**20))
    result = cli("compute", f"{endless.url}/a.jpg", f"{endless.url}/b.jpg", "--strict", expect=1)
    assert "over the limit of 1,048,576" in result.stderr and "BNSTATS_MAX_FILE_BYTES" in result.stderr
    assert len(stderr_lines(result)) == 1
    assert endless.sent[0] < 64 * 2**20  # what the socket buffers took, not a GiB


def body_of(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


@pytest.fixture(scope="module")
def sized_server():
    """``/SIZE/len`` answers SIZE bytes with a Content-Length, ``/SIZE/none`` without one (ended by closing)."""

    def respond(handler):
        size, mode = handler.path.strip("/").split("/")[:2]
        body = body_of(int(size))
        handler.send_response(200)
        if mode == "len":
            handler.send_header("Content-Length", str(len(body)))
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        if handler.command == "GET":
            try:
                handler.wfile.write(body)
            except OSError:
                pass

    server = Scripted(respond)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_an_object_is_read_whole_or_refused_for_its_size(sized_server):
    """The class: whatever the size, and whether the server says it or not, a read gives the whole body when it
    is within the bound and LimitError otherwise."""
    from hypothesis import given, settings, strategies as st

    from bnstats import limits
    from bnstats.inputs import remote, stores

    fs = stores.filesystem(sized_server.url)

    @settings(max_examples=30, deadline=None)
    @given(size=st.integers(0, 300_000), limit=st.integers(1, 300_000), mode=st.sampled_from(["len", "none"]))
    def check(size, limit, mode):
        url = f"{sized_server.url}/{size}/{mode}"
        if size <= limit:
            data = remote._read_bounded(fs, url, limit)
            assert data == body_of(size)
        else:
            with pytest.raises(limits.LimitError, match="over the limit"):
                remote._read_bounded(fs, url, limit)

    check()


def test_a_declared_length_over_the_limit_is_refused_before_reading(scripted, monkeypatch):
    from bnstats import limits

    monkeypatch.setattr(limits, "_current", limits.Limits(file_bytes=1000))

    def big(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(10**12))
        handler.end_headers()

    server = scripted(big)
    result = cli("compute", f"{server.url}/a.jpg", expect=1)
    assert "object of 1,000,000,000,000 bytes is over the limit of 1,000" in result.stderr


def test_an_s3_object_is_read_no_further_than_the_limit(s3, monkeypatch):
    """A byte range of limit + 1 bytes: the object is skipped without being fetched whole."""
    from bnstats import limits

    endpoint, fs, options = s3
    fs.pipe("photos/big/a.jpg", bytes(5000))
    monkeypatch.setattr(limits, "_current", limits.Limits(file_bytes=1000))
    result = cli("compute", "s3://photos/big/a.jpg", *options, expect=1)
    assert "over the limit of 1,000" in result.stderr and "BNSTATS_MAX_FILE_BYTES" in result.stderr


def test_a_task_of_urls_named_carries_the_prefixes_named_not_every_url(monkeypatch):
    """A --files-from list of 20,000 URLs was pickled into every task, and each item's class sorted it."""
    import pickle

    from bnstats.inputs import remote

    objects = [f"s3://bucket/objects/{i:05d}.png" for i in range(20_000)]
    monkeypatch.setattr(remote, "filesystem", lambda url, options: None)
    listed = {"s3://bucket/photos/": [("s3://bucket/photos/cat/1.png", {"type": "file", "size": 1})]}
    monkeypatch.setattr(remote.RemoteSource, "_find", staticmethod(lambda fs, url: listed.get(url)))
    source = remote.RemoteSource([*objects, "s3://bucket/photos/"])
    keys = source.list_items()
    assert len(keys) == 20_001
    shipped = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 2_000 and shipped.paths == ["s3://bucket/photos/"]
    assert shipped.class_of("s3://bucket/photos/cat/1.png") == source.class_of("s3://bucket/photos/cat/1.png") == "cat"
    assert shipped.class_of(objects[7]) == source.class_of(objects[7]) == ""
