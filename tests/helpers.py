"""Helpers shared by the tests: running the CLI, watching processes, building datasets."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from click.testing import CliRunner
import numpy as np
from hypothesis import HealthCheck, settings

from bnstats.cli.main import main


def cli(*args, expect: int | None = None, input=None, **invoke):
    """``bnstats ARGS`` in-process; never a traceback, never an uncaught exception.

    ``input`` is standard input (text or bytes); ``invoke`` goes to
    ``CliRunner.invoke`` (e.g. ``terminal_width``). This is the tests' one
    in-process CLI runner: a subprocess (``run_module``) only where a real
    process proves more (signals, exit codes, special files, a fresh interpreter).
    """
    argv = [str(a) if isinstance(a, (int, float)) else os.fspath(a) for a in args]
    result = CliRunner().invoke(main, argv, input=input, **invoke)
    assert "Traceback" not in result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r} (a real run prints a traceback)") from result.exception
    if expect is not None:
        assert result.exit_code == expect, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def cli_json(*args) -> dict:
    """Stdout of a successful ``bnstats ARGS``, parsed."""
    return json.loads(cli(*args, expect=0).stdout)


ROOT = Path(__file__).resolve().parent.parent
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def drop_file_capabilities():
    """preexec_fn: after exec this root process obeys file modes (no DAC override)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def module_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with this checkout first on PYTHONPATH: the child runs the tested code."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_module(*args, timeout: float = 60, unprivileged: bool = False, env: dict | None = None,
               **kw) -> subprocess.CompletedProcess:
    """``python -m bnstats ARGS`` as a real process; stdout and stderr captured as text unless given.

    For what only a real process shows: exit codes and signals, closed or
    broken pipes, special files, a fresh interpreter. ``unprivileged``: file
    modes apply to the child even when the tests run as root (CI does).
    """
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    if unprivileged and os.geteuid() == 0:
        kw["preexec_fn"] = drop_file_capabilities
    return subprocess.run([sys.executable, "-m", "bnstats", *map(os.fspath, args)], timeout=timeout,
                          env=module_env(env), **kw)


FRESH_RUNS = """
import json, sys
from click.testing import CliRunner
from bnstats.cli.main import main
outputs = []
for argv in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, argv)
    if result.exit_code != 0 or "Traceback" in result.stdout + result.stderr:
        sys.exit(f"bnstats {' '.join(argv)}: exit {result.exit_code} {result.exception!r}\\n{result.stderr}")
    outputs.append(result.stdout)
json.dump(outputs, sys.stdout)
"""


def cli_in_a_fresh_interpreter(*commands, timeout: float = 120, unprivileged: bool = False,
                               env: dict | None = None) -> list[str]:
    """The stdout of each of ``commands`` (argument lists), all run in-process in ONE fresh interpreter.

    For what is decided when bnstats is imported (``BNSTATS_PURE_PYTHON``) or by the process (file modes
    with ``unprivileged``), where only JSON bytes are checked: one interpreter start instead of one per
    command. Every command must exit 0.
    """
    argvs = [[str(a) if isinstance(a, (int, float)) else os.fspath(a) for a in command] for command in commands]
    done = subprocess.run([sys.executable, "-c", FRESH_RUNS, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=timeout, env=module_env(env),
                          preexec_fn=drop_file_capabilities if unprivileged and os.geteuid() == 0 else None)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def child_pids(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def processes_mentioning(text: str) -> list[int]:
    """Live processes (other than this one) whose command line contains ``text``; forked workers share it."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.pid != os.getpid() and any(text in part for part in cmdline):
            found.append(proc.pid)
    return found


def wait_until_counting(proc, timeout: float = 20) -> None:
    """Return once ``proc`` (``bnstats compute -j N``, N > 1) has its worker pool up."""
    deadline = time.monotonic() + timeout
    while not child_pids(proc.pid):
        assert proc.poll() is None, "bnstats finished before its workers started: make the dataset bigger"
        assert time.monotonic() < deadline, "no worker processes appeared"
        time.sleep(0.02)


@contextlib.contextmanager
def reaped(proc):
    """Inside the block ``proc`` may fail an assertion; its process group never outlives it."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def link_copies(sources: list[Path], folder: Path, count: int) -> Path:
    """``folder`` with ``count`` files ``img_NNNN.jpg``, hard links to ``sources`` in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = folder / f"img_{i:04d}.jpg"
        try:
            os.link(sources[i % len(sources)], target)
        except OSError:
            shutil.copyfile(sources[i % len(sources)], target)
    return folder


def interrupt_after(monkeypatch, partitions: int):
    """Press Ctrl-C (a real SIGINT to this process) while partition number ``partitions`` is counted.

    Wraps the engine's unit of work; with ``-j 1`` it runs in this (main)
    thread, inside the engine's deferred-interrupt handler.
    """
    from bnstats.running import engine

    real = engine.count_partition
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == partitions:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "count_partition", counting)
    return calls


def wait_until_reading(proc, folder, timeout: float = 60) -> None:
    """Return once ``proc`` or one of its workers has a file of ``folder`` open: it is counting."""
    import psutil

    deadline = time.monotonic() + timeout
    prefix = os.fspath(folder)
    while True:
        try:
            tree = psutil.Process(proc.pid)
            for process in [tree, *tree.children(recursive=True)]:
                for fd in os.listdir(f"/proc/{process.pid}/fd"):
                    if os.readlink(f"/proc/{process.pid}/fd/{fd}").startswith(prefix + os.sep):
                        return  # a file in the folder (the folder itself is open while it is listed)
        except (OSError, psutil.Error):  # a process or an fd went away while we looked
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "bnstats never opened an image"
        time.sleep(0.005)


def iter_image_paths(paths) -> list[str]:
    """All image files under ``paths``, sorted, without duplicates (a folder walk, as ``compute`` lists them);
    raises :class:`~bnstats.inputs.base.NoImagesError` if there are none."""
    from bnstats.inputs.base import NoImagesError
    from bnstats.inputs.walk import walk

    paths = list(paths)
    found = walk(paths).keys
    if not found:
        raise NoImagesError("no images found under " + ", ".join(map(str, paths)))
    return found


def one_line(result, expect: int = 1) -> str:
    """The single stderr line of a failed run (and nothing on stdout)."""
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr)
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def json_paths(value, at=(), items: int = 4):
    """Every path into a JSON value (objects, and the first ``items`` entries of a list), the value itself first."""
    yield at
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, (*at, k), items)
    elif isinstance(value, list):
        for i, v in enumerate(value[:items]):
            yield from json_paths(v, (*at, i), items)


class FakeTerminal:
    """A stream that says it is a terminal (descriptor 2) and keeps what is written.

    ``descriptor=None``: a terminal stand-in without a file descriptor (``fileno`` raises, as a StringIO's does).
    """

    def __init__(self, descriptor: int | None = 2):
        self.text = ""
        self.descriptor = descriptor

    def isatty(self):
        return True

    def fileno(self):
        if self.descriptor is None:
            raise io.UnsupportedOperation("fileno")
        return self.descriptor

    def write(self, text):
        self.text += text

    def flush(self):
        pass


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_s3():
    """moto's S3 server on 127.0.0.1, test credentials in the environment (s3fs then looks up no instance
    metadata: nothing leaves 127.0.0.1); yields ``(endpoint, fs)``, restores the environment after."""
    import s3fs
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        yield endpoint, s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


def tiff_bytes(width, height, samples=1, bits=8, tile=None, data=None, compression=8, photometric=None):
    """A little-endian one-page TIFF whose strips or tiles all point at one block (zlib of zeros, or
    ``data``): a header can claim any size in a few kilobytes."""
    import struct
    import zlib

    photometric = (2 if samples in (3, 4) else 1) if photometric is None else photometric
    width_tiles = -(-width // tile[0]) * -(-height // tile[1]) if tile else 1
    block = (tile[0] * tile[1] if tile else width * height) * samples * max(bits // 8, 1)
    payload = data if data is not None else zlib.compress(bytes(block)) if compression == 8 else bytes(16)
    out = bytearray(b"II*\0\0\0\0\0") + payload
    tags = [(256, 4, [width]), (257, 4, [height]), (258, 4 if bits > 65535 else 3, [bits] * samples),
            (259, 3, [compression]), (262, 3, [photometric]), (277, 3, [samples]), (284, 3, [1])]
    if tile:
        tags += [(322, 4, [tile[0]]), (323, 4, [tile[1]]), (324, 4, [8] * width_tiles),
                 (325, 4, [len(payload)] * width_tiles)]
    else:
        tags += [(273, 4, [8]), (278, 4, [height]), (279, 4, [len(payload)])]
    entries = []
    for code, kind, values in sorted(tags):
        packed = struct.pack("<" + {3: "H", 4: "I"}[kind] * len(values), *values)
        if len(packed) > 4:
            entries.append((code, kind, len(values), struct.pack("<I", len(out))))
            out += packed
        else:
            entries.append((code, kind, len(values), packed.ljust(4, b"\0")))
    struct.pack_into("<I", out, 4, len(out))
    out += struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *e[:3]) + e[3] for e in entries)
    return bytes(out + b"\0\0\0\0")


SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def stop_in(monkeypatch, module, name, signum=signal.SIGINT):
    """Make ``module.name`` raise the engine's stop (as a signal ``signum`` would) when it is called."""
    from bnstats.running import interrupts

    def stop(*args, **kwargs):
        raise interrupts.Stopped(signum)
    monkeypatch.setattr(module, name, stop)


def _png_bytes(value: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def run(*args, expect=0):
    return cli(*args, expect=expect)


def one_line_error(result, code: int) -> str:
    """The single stderr line of a run that failed with ``code``."""
    lines = stderr_lines(result)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert len(lines) == 1, lines
    return lines[0]


def with_damage(doc, path, how):
    """A deep copy of the JSON value ``doc`` with the value at ``path`` dropped (``"drop"``), negated
    (``"negate"``: a number negated, anything else made ``"x"``) or replaced by ``how``."""
    import copy

    doc = copy.deepcopy(doc)
    if not path:
        return doc if how == "drop" else how
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if how == "drop":
        del parent[key]
    elif how == "negate":
        value = parent[key]
        parent[key] = -value if isinstance(value, (int, float)) and not isinstance(value, bool) else "x"
    else:
        parent[key] = how
    return doc


def assert_same_for_workers_and_shards(data, tmp_path, shards: int = 2,
                                       keys=("mean", "std", "min", "max", "median", "pixels", "images", "files")):
    """``compute DATA`` prints the same bytes with -j1 and -j2, and its shards merge to the whole run's ``keys``."""
    one = cli("compute", data, "-j", "1", expect=0).stdout
    assert cli("compute", data, "-j", "2", expect=0).stdout == one
    parts = [tmp_path / f"shard{k}.json" for k in range(shards)]
    for k, part in enumerate(parts):
        cli("compute", data, "-j", "1", "--shard", f"{k}/{shards}", "-o", part, expect=0)
    merged, whole = json.loads(cli("merge", *parts, expect=0).stdout), json.loads(one)
    assert {k: merged[k] for k in keys} == {k: whole[k] for k in keys}


@contextlib.contextmanager
def registered(group: str, name: str, obj):
    """``obj`` registered in ``bnstats.registry`` under ``group``/``name`` for the block, unregistered after."""
    from bnstats import registry

    registry.register(group, name, obj)
    try:
        yield obj
    finally:
        registry.unregister(group, name)


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a folder's files (whole: no Range support), logging nothing."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def static_files(folder):
    """A plain HTTP server of ``folder``'s files on 127.0.0.1 for the block; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(folder)))
    server.handle_error = lambda *args: None  # a client that hangs up is no test failure
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def in_a_forked_child(check) -> bool:
    """``check()``'s truth in a child forked from this process (what a forked worker inherits), told back
    through a pipe; False if it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = False
            try:
                ok = bool(check())
            except BaseException:  # noqa: BLE001 - the parent sees False
                pass
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
