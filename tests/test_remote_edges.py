"""Edges of remote inputs, Parquet, stop signals and workers: refused and stalled servers, HTTP statuses,
bounded bodies and cells, SIGTERM during a blocked read, classes under a prefix, orphaned workers.

Every server here listens on 127.0.0.1 only.
"""

from __future__ import annotations

import threading
import time

import pytest

from helpers import Scripted, cli, cli_json, free_port, stderr_lines
from test_remote import folder_result, s3, same_stats  # noqa: F401  (fixtures reused)

pytest.importorskip("s3fs")


# -- a tiny HTTP server whose answers the test chooses --------------------------------------------------------


def status(code: int):
    def respond(handler):
        handler.send_response(code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return respond


# -- 6: classes under a prefix --------------------------------------------------------------------------------


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


# -- 1: nothing listening at the endpoint ---------------------------------------------------------------------


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


# -- 3: what the server answered is named ---------------------------------------------------------------------


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


# -- 4: a stop signal ends a run that waits on a stalled server -----------------------------------------------


# -- 7: workers die with a killed bnstats ---------------------------------------------------------------------


# -- 2: a read timeout, and a body read no further than the limit ---------------------------------------------


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


# -- 5: what a Parquet file decodes is bounded ----------------------------------------------------------------














