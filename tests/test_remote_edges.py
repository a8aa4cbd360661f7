"""Edges of remote inputs, Parquet, stop signals and workers: refused and stalled servers, HTTP statuses,
bounded bodies and cells, SIGTERM during a blocked read, classes under a prefix, orphaned workers.

Every server here listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from helpers import cli, cli_json, processes_mentioning, stderr_lines
from helpers import free_port
from test_remote import folder_result, s3, same_stats  # noqa: F401  (fixtures reused)

pytest.importorskip("s3fs")


# -- a tiny HTTP server whose answers the test chooses --------------------------------------------------------


class Scripted(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 whose handler is ``respond(handler)``; ``url`` is its base URL."""

    daemon_threads = True

    def __init__(self, respond):
        self.respond = respond
        super().__init__(("127.0.0.1", 0), ScriptedHandler)

    def handle_error(self, request, client_address):
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.respond(self)

    do_HEAD = do_GET


@pytest.fixture
def scripted():
    """``start(respond)`` -> a running :class:`Scripted` server, shut down after the test."""
    servers = []

    def start(respond):
        server = Scripted(respond)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


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


@pytest.fixture
def stalled(scripted):
    """A server that answers HEAD with a size and then, to a GET, sends the headers and nothing more."""
    gets = threading.Event()
    release = threading.Event()

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.flush()
            gets.set()
            release.wait(30)  # the body never comes (until the test ends)

    server = scripted(respond)
    server.gets = gets
    yield server
    release.set()


def run_and_stop(args, server, signum, tmp_path, then=None):
    """``bnstats compute ARGS`` in a process, stopped by ``signum`` (and ``then`` a moment later) once it waits on
    the server: (seconds, exit code, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "bnstats", "compute", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert server.gets.wait(20), "bnstats never asked for an object"
        time.sleep(0.3)  # well inside the read
        started = time.monotonic()
        proc.send_signal(signum)
        if then is not None:
            time.sleep(0.1)
            proc.send_signal(then)
        out, err = proc.communicate(timeout=10)
        return time.monotonic() - started, proc.returncode, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("workers, signum", [(1, signal.SIGTERM), (2, signal.SIGTERM), (1, signal.SIGINT),
                                             (2, signal.SIGHUP)])
def test_a_stop_signal_ends_a_stalled_read_at_once(stalled, workers, signum, tmp_path):
    """The read waits inside fsspec's loop thread (or a worker does): no partition boundary comes. The run ends
    within a second or so, exit 128 + signal, the checkpoint saved, one line, no traceback."""
    urls = f"{stalled.url}/img-{{00..39}}.jpg"  # 40 objects: several partitions
    ck = tmp_path / "ck.json"
    took, code, out, err = run_and_stop([urls, "-j", str(workers), "--checkpoint", ck], stalled, signum, tmp_path)
    assert took < 2.5, err
    assert code == 128 + signum, err
    assert "Traceback" not in err and "Stopped" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    stop = "bnstats: interrupted" if signum == signal.SIGINT else f"bnstats: stopped by {signal.Signals(signum).name}"
    assert lines[-1] == stop and len(lines) <= 2, lines
    assert ck.exists() and "progress saved to" in err


@pytest.mark.slow
def test_a_second_signal_decides_the_exit_code_and_the_one_line(stalled, tmp_path):
    """SIGTERM, then Ctrl-C while the first waits: one line and its code (130), never a Stopped traceback."""
    took, code, out, err = run_and_stop([f"{stalled.url}/img-{{00..39}}.jpg", "-j", "1"], stalled, signal.SIGTERM,
                                        tmp_path, then=signal.SIGINT)
    assert took < 2.5 and code == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["bnstats: interrupted"]


@pytest.mark.slow
def test_stop_waiting_interrupts_a_blocked_wait_never_a_critical_block():
    """In process: the deferred block's watchdog interrupts a wait on a lock, and waits for a critical block."""
    from bnstats.running import interrupts

    def signal_soon():
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()

    started = time.monotonic()
    with pytest.raises(interrupts.StopWaiting):
        with interrupts.deferred(interrupt_waits=True):
            signal_soon()
            threading.Event().wait(10)  # a read that never returns
    assert time.monotonic() - started < interrupts.STOP_GRACE + 1

    finished = []
    with pytest.raises(interrupts.StopWaiting):
        with interrupts.deferred(interrupt_waits=True):
            signal_soon()
            with interrupts.critical():
                time.sleep(interrupts.STOP_GRACE + 0.3)  # a long merge: not interrupted
                finished.append(1)
            threading.Event().wait(10)
    assert finished == [1]


# -- 7: workers die with a killed bnstats ---------------------------------------------------------------------


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_and_wait_for_the_family(proc, tmp_path, texts):
    """SIGKILL ``proc``; assert every process it had started is gone within 2 s."""
    import psutil

    family = descendants(proc.pid)
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(family, timeout=2)
    try:
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline()[-6:] for p in alive]
        assert not any(processes_mentioning(text) for text in texts)
    finally:
        for p in alive:
            p.kill()


def start_bnstats(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "bnstats", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=cwd, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_compute(slow_data, tmp_path):
    """SIGKILL (the OOM killer's) to bnstats compute: its workers are gone within 2 s (PDEATHSIG)."""
    proc = start_bnstats("compute", slow_data, "-j", "2", "-q", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while len(descendants(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        time.sleep(0.2)
        kill_and_wait_for_the_family(proc, tmp_path, [str(slow_data)])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def stalls_on_second_read(scripted):
    """A server with small JPEGs that answers each one's first GET (compare's probe) and stalls on the next."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, "JPEG")
    body, seen, stalls, release = buffer.getvalue(), set(), threading.Event(), threading.Event()

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "GET":
            return
        if handler.path not in seen:
            seen.add(handler.path)
            handler.wfile.write(body)
            return
        handler.wfile.flush()
        stalls.set()
        release.wait(30)

    server = scripted(respond)
    server.gets = stalls
    yield server
    release.set()


@pytest.mark.slow
def test_no_process_outlives_a_killed_compare(stalls_on_second_read, tmp_path):
    """SIGKILL to bnstats compare while its streaming side waits on a server: the side, forked by
    multiprocessing's fork server (which lives as long as its children), lived on with its workers, the server
    and the resource tracker. The side now watches bnstats itself."""
    server = stalls_on_second_read
    proc = start_bnstats("compare", f"{server.url}/img-{{00..39}}.jpg", "-j", "2", cwd=tmp_path)
    try:
        assert server.gets.wait(30), proc.stderr.read() if proc.poll() is not None else "no read"
        time.sleep(0.3)
        kill_and_wait_for_the_family(proc, tmp_path, [str(tmp_path), server.url])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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














