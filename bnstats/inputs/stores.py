"""The connection to object stores, for every kind that reads URLs: fsspec filesystems made once per process
from ``--storage-option`` (with read timeouts and one shared HTTP session), a quick check that an endpoint
listens, :func:`open_input` for archives and Parquet files, objects' versions for resume checks, reads tried
again when a failure may pass (:func:`retried`), and one-line descriptions of what the store did wrong
(:func:`describe_remote_error`)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable

from .base import InputOptions, ItemError, SourceError, is_url

REMOTE_EXTRA = 'pip install "bnstats[remote]"'
BLOCK_SIZE = 8 * 2**20  # archives and parquet files are read in blocks this large
ATTEMPTS = 3  # a read that fails for a passing reason is tried this many times,
RETRY_PAUSE = 0.25  # after pauses of this many seconds, doubling


_filesystems: dict = {}


def filesystem(url: str, options: InputOptions | None = None):
    """The fsspec filesystem for ``url`` with the storage options, made once per process.

    A one-line :class:`SourceError` when fsspec or the scheme's package is missing.
    """
    try:
        import fsspec
    except ImportError:
        raise SourceError(f"{url}: reading URLs needs fsspec: {REMOTE_EXTRA}") from None
    protocol = url.split("://", 1)[0].lower()
    storage = tuple(options.storage_options) if options is not None else ()
    cache_key = (os.getpid(), protocol, json.dumps(storage, sort_keys=True, default=str))
    fs = _filesystems.get(cache_key)
    if fs is None:
        kwargs = _with_timeouts(protocol, dict(storage))
        if protocol in ("s3", "s3a"):
            kwargs = _with_shared_session(kwargs)
        try:
            fs = fsspec.filesystem(protocol, **kwargs)
        except ImportError as exc:
            raise SourceError(f"{url}: the {protocol}:// scheme needs a package that is not installed "
                              f"({_first_line(exc)}); {REMOTE_EXTRA}") from None
        except ValueError as exc:  # an unknown protocol
            raise SourceError(f"{url}: {_first_line(exc)}") from None
        except TypeError as exc:  # a storage option this filesystem does not take
            raise SourceError(f"{url}: bad --storage-option: {_first_line(exc)}") from None
        _filesystems[cache_key] = fs
    _check_endpoint(_endpoint_of(url, dict(storage)))
    return fs


READ_TIMEOUT = 60  # seconds without a byte from the server before a read fails (--storage-option read_timeout=)
HTTP_CONNECT_TIMEOUT = 30  # seconds to connect to an HTTP server


def _with_timeouts(protocol: str, kwargs: dict) -> dict:
    """Storage options with a read timeout: ``read_timeout=SECONDS`` (bnstats' own option, for any store), or
    the store's own spelling (s3fs: ``config_kwargs={"read_timeout": S}``; aiohttp: ``client_kwargs={"timeout":
    {"sock_read": S}}``). HTTP has :data:`READ_TIMEOUT` between bytes (aiohttp's default is 5 minutes in all,
    and a server sending a byte now and then never ends a read); s3fs has its own (15 s)."""
    read_timeout = kwargs.pop("read_timeout", None)
    if read_timeout is not None and (isinstance(read_timeout, bool) or not isinstance(read_timeout, (int, float))
                                     or read_timeout <= 0):
        raise SourceError(f"bad --storage-option read_timeout={read_timeout!r}: a number of seconds above 0")
    if protocol in ("http", "https"):
        client = dict(kwargs.get("client_kwargs") or {})
        timeout = client.get("timeout")
        if isinstance(timeout, (dict, int, float)) or timeout is None or read_timeout is not None:
            import aiohttp

            # a number is aiohttp's old spelling of a total timeout
            given = timeout if isinstance(timeout, dict) else {"total": timeout} if timeout is not None else {}
            try:
                client["timeout"] = aiohttp.ClientTimeout(**{"total": None, "sock_connect": HTTP_CONNECT_TIMEOUT,
                                                            "sock_read": read_timeout or READ_TIMEOUT, **given})
            except TypeError as exc:
                raise SourceError(f"bad --storage-option client_kwargs timeout: {_first_line(exc)}") from None
        kwargs["client_kwargs"] = client
    elif read_timeout is not None and protocol in ("s3", "s3a"):
        kwargs["config_kwargs"] = {**(kwargs.get("config_kwargs") or {}), "read_timeout": read_timeout}
    return kwargs


CONNECT_CHECK_SECONDS = 3  # how long the first connection to an endpoint may take before the requests decide
_checked_endpoints: set = set()


def _endpoint_of(url: str, storage: dict) -> str | None:
    """``scheme://host:port`` that the requests for ``url`` go to, where bnstats can tell (HTTP URLs, and an S3
    ``endpoint_url`` given as an option or in the environment); None for a cloud's own endpoints."""
    from urllib.parse import urlsplit

    if is_http(url):
        endpoint = url
    elif url.split("://", 1)[0].lower() in ("s3", "s3a"):
        client = storage.get("client_kwargs")
        endpoint = (storage.get("endpoint_url") or (client.get("endpoint_url") if isinstance(client, dict) else None)
                    or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    else:
        return None
    try:
        parts = urlsplit(str(endpoint)) if endpoint else None
        port = parts.port if parts is not None else None
    except ValueError:  # a bad port: the request's own error says so
        return None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def _check_endpoint(endpoint: str | None) -> None:
    """Fail at once, in one line, when nothing listens at ``endpoint`` (once per process and endpoint).

    Every request to such an endpoint fails alike, but only after the retries of botocore, s3fs and
    :func:`retried` (for each shard in turn: minutes). A refused TCP connection is the answer; anything
    else (a slow network, a name that does not resolve, a proxy in between) is left to the requests.
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    if endpoint is None or (os.getpid(), endpoint) in _checked_endpoints:
        return
    _checked_endpoints.add((os.getpid(), endpoint))
    parts = urlsplit(endpoint)
    if parts.scheme in getproxies() and not proxy_bypass(parts.hostname):
        return  # the requests go to the proxy, not to the endpoint
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_CHECK_SECONDS):
            pass
    except ConnectionRefusedError:
        raise SourceError(refused_message(endpoint)) from None
    except OSError:
        pass


def refused_message(endpoint: str) -> str:
    """The one line for an endpoint where nothing listens."""
    return f"connection refused: {endpoint} (is the endpoint right?)"


_S3_LOADER = []


def _with_shared_session(kwargs: dict) -> dict:
    """s3fs options with a botocore session of this process that reuses the program's parsed service models.

    A new session parses ~10 MB of JSON when it makes its first client (~0.1 s
    of CPU in every worker of every run). The session's data loader holds
    only that parsed JSON, so each process gets a session of its own
    (credentials, locks and connections are not shared) around one loader,
    made by the process that listed the bucket and inherited by the workers
    forked from it. Options meant for s3fs's own session (``profile=...``, or
    a session given) keep s3fs's.
    """
    try:
        import inspect

        import aiobotocore.session
        import s3fs
    except ImportError:  # fsspec's own message names what is missing
        return kwargs
    named = inspect.signature(s3fs.S3FileSystem.__init__).parameters
    if "session" in kwargs or any(key not in named for key in kwargs):
        return kwargs
    session = aiobotocore.session.AioSession()
    if _S3_LOADER:
        session.register_component("data_loader", _S3_LOADER[0])
    else:
        _S3_LOADER.append(session.get_component("data_loader"))
    return {**kwargs, "session": session}


def is_http(path: str) -> bool:
    """An ``http://`` or ``https://`` URL: a server that may answer no range requests."""
    return path.lower().startswith(("http://", "https://"))


def open_input(path: str, options: InputOptions | None = None, block_size: int | None = None, stream: bool = False):
    """A binary file object for a local path or a URL: seekable, read in blocks of ``block_size`` [default
    :data:`BLOCK_SIZE`] (each block a range request), or with ``stream`` read front to back.

    ``stream`` is for readers that never seek (tar streams): over HTTP it is one plain GET, which a server
    without range requests also answers (a seekable file there fails after its first block).
    """
    if not is_url(path):
        return open(path, "rb")
    fs = filesystem(path, options)
    if stream and is_http(path):
        return fs.open(path, "rb", block_size=0)
    return fs.open(path, "rb", block_size=BLOCK_SIZE if block_size is None else block_size)


def object_version(path: str, options: InputOptions | None = None) -> str:
    """What tells an object's versions apart for a resume: its ETag (or checksum) and size, where given."""
    try:
        info = filesystem(path, options).info(path)
    except Exception as exc:  # noqa: BLE001 - gone or unreachable now: the read will say why
        return type(exc).__name__
    return info_version(info)


def info_version(info: dict) -> str:
    """ETag (or checksum) and size of an object's info; the modification time when there is no ETag."""
    etag = info.get("ETag") or info.get("etag") or info.get("checksum") or info.get("md5Hash") or ""
    mtime = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or ""
    return f"{info.get('size')} {str(etag).strip(chr(34))} {'' if etag else mtime}"


def describe_remote_error(exc: BaseException) -> str:
    """One line for an error of the store, without a traceback: what the server answered (``access denied
    (HTTP 403)``, ``server error (HTTP 500)``) or that it refused the connection, else the type and first line.

    fsspec's HTTP turns every failed request into ``FileNotFoundError(url)`` and s3fs turns botocore's
    errors into ``OSError``s: what happened is in the exception's causes, and said here.
    """
    if isinstance(exc, SourceError):
        return str(exc)
    if _timed_out(exc):
        return ("read timeout: the server sent nothing for too long (a slow or stalled server? allow more with "
                "--storage-option read_timeout=SECONDS)")
    refused = _refused(exc)
    if refused is not None:
        return refused_message(refused) if refused else "connection refused"
    code = http_status(exc)
    if code is not None and code != 404:
        detail = _store_message(exc)
        return f"{_STATUS_WORDS.get(code, _status_class(code))} (HTTP {code})" + (f": {detail}" if detail else "")
    if isinstance(exc, PermissionError):
        return f"PermissionError: access denied ({_first_line(exc)})"
    return f"{type(exc).__name__}: {_first_line(exc)}" if _first_line(exc) else type(exc).__name__


_STATUS_WORDS = {401: "access denied", 403: "access denied", 408: "request timeout", 429: "too many requests"}


def _status_class(code: int) -> str:
    return "server error" if code >= 500 else "refused by the server"


def _causes(exc: BaseException):
    """``exc`` and the exceptions behind it (causes, contexts, aiohttp's ``os_error``), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "os_error", None)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status a server answered with, found in ``exc`` or its causes (aiohttp's, botocore's), or None."""
    for cause in _causes(exc):
        status = getattr(cause, "status", None)  # aiohttp's ClientResponseError
        if isinstance(status, int) and status >= 400:
            return status
        response = getattr(cause, "response", None)  # botocore's ClientError
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int) and status >= 400:
                return status
    return None


def _store_message(exc: BaseException) -> str:
    """The store's own words for an error it answered (botocore's ``Error.Message``), or ``""``."""
    for cause in _causes(exc):
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            message = response.get("Error", {}).get("Message")
            if message:
                return " ".join(str(message).split())
    return ""


def _refused(exc: BaseException) -> str | None:
    """The endpoint (``""`` when unknown) when ``exc`` is, or comes from, a refused connection; else None."""
    causes = list(_causes(exc))
    if not any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return None
    for cause in causes:
        key = getattr(cause, "_conn_key", None) or getattr(cause, "conn_key", None)  # aiohttp's connection key
        host, port, ssl = (getattr(key, name, None) for name in ("host", "port", "is_ssl"))
        if host and port:
            return f"{'https' if ssl else 'http'}://{host}:{port}"
        url = getattr(cause, "kwargs", {}).get("endpoint_url") if isinstance(getattr(cause, "kwargs", None),
                                                                             dict) else None
        endpoint = _endpoint_of(url, {}) if url else None  # botocore's EndpointConnectionError
        if endpoint:
            return endpoint
    return ""


def _timed_out(exc: BaseException) -> bool:
    """A read or connection that timed out (asyncio's, aiohttp's, botocore's timeouts)."""
    return any(isinstance(cause, TimeoutError) or type(cause).__name__ in ("ServerTimeoutError", "ReadTimeoutError",
                                                                           "ConnectTimeoutError", "FSTimeoutError")
               for cause in _causes(exc))


def missing(exc: BaseException) -> bool:
    """A missing object indeed: FileNotFoundError that is no server's or network's other failure in disguise
    (fsspec's HTTP raises FileNotFoundError for a 403, a 500 or a refused connection too)."""
    code = http_status(exc)
    return isinstance(exc, FileNotFoundError) and code in (None, 404) and _refused(exc) is None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def retried(read: Callable[[], object], attempts: int = ATTEMPTS, permanent: tuple = ()):
    """``read()``, tried again after a short pause when the store fails for a reason that may pass.

    Errors of the network or the store (``OSError``s such as a reset
    connection or a timeout, and aiohttp's or botocore's, such as a 5xx
    answer) are tried ``attempts`` times in all; a missing object, refused
    access, anything else (a bad argument) and the ``permanent`` types (e.g.
    a damaged archive) fail at once. s3fs retries inside each attempt too;
    fsspec's HTTP does not.
    """
    for attempt in range(attempts):
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - the last attempt's error is the item's
            refused = _refused(exc)
            if refused is not None:  # nothing listens there: every other read fails alike, so the run stops
                raise SourceError(refused_message(refused) if refused else describe_remote_error(exc)) from None
            if attempt == attempts - 1 or isinstance(exc, permanent) or not _may_pass(exc):
                raise
            time.sleep(RETRY_PAUSE * 2**attempt)
    raise AssertionError("unreachable")


_NETWORK_PACKAGES = ("aiohttp", "botocore", "aiobotocore", "requests", "urllib3", "http")


def _may_pass(exc: BaseException) -> bool:
    """An error that another attempt may not meet: the network's or the store's, not a missing object,
    refused access, a bad argument or bad data."""
    if _timed_out(exc):  # the server had a whole read timeout to send a byte: another wait helps little
        return False
    code = http_status(exc)
    if code is not None:  # what the server answered decides: its errors (5xx), a timeout, a request rate
        return code >= 500 or code in (408, 429)
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ItemError,
                        SourceError)):
        return False
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in _NETWORK_PACKAGES
