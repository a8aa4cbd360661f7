"""Edges of remote inputs, Parquet, stop signals and workers: refused and stalled servers, HTTP statuses,
bounded bodies and cells, SIGTERM during a blocked read, classes under a prefix, orphaned workers.

Every server here listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import cli, cli_json, processes_mentioning, stderr_lines
from test_remote import folder_result, free_port, s3, same_stats  # noqa: F401  (fixtures reused)

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
        threading.Thread(target=server.serve_forever, daemon=True).start()
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
    from bnstats.remote import RemoteSource

    source = RemoteSource(["s3://b/data/", "s3://b/data/deeper", "s3://b/one.jpg"])
    assert source.class_of("s3://b/data/cat/x/y.jpg") == "cat"
    assert source.class_of("s3://b/data/top.jpg") == "data"  # directly in the prefix: the prefix's name
    assert source.class_of("s3://b/data/deeper/dog/z.jpg") == "dog"  # the deepest prefix named
    assert source.class_of("s3://b/one.jpg") == ""  # named directly: no class
    assert source.class_of("s3a://b/data/cat/x.jpg") == "cat"
