"""Object storage and other fsspec URLs as inputs: ``s3://``, ``gs://``, ``az://``, ``https://``, ``file://``.

Any path with a ``scheme://`` prefix is a URL, read through fsspec
(``pip install "bnstats[remote]"``; gcsfs/adlfs for ``gs://``/``az://`` are
the user's choice). Options for the filesystem (``--storage-option
endpoint_url=...``, ``anon=true``) travel in
:class:`~bnstats.inputs.base.InputOptions`, so every worker and Dask task opens
the objects itself with the same credentials rules (environment, config
files): sources keep only URL strings and options, and the filesystem is
created lazily once per process.

:class:`RemoteSource` takes loose objects: a prefix is listed recursively
with the rules of a folder (image extensions or ``--ext``, hidden parts
ignored, sorted), objects that other kinds claim (tar, zip, parquet) go to
those kinds, which open them with :func:`open_input`, and so do prefixes
that a kind claims as a folder (a ``.zarr`` store: one input). Keys are the URLs.
An object is read whole in one request; a few are fetched ahead by a small
thread pool so that the latency of the store overlaps decoding.

What the store does wrong is said in one line: an endpoint where nothing
listens fails the run at once (``connection refused: URL``, checked with
one TCP connection per endpoint and process, not after minutes of
retries); an answer is named by its status (``access denied (HTTP 403)``,
``server error (HTTP 500)``; 5xx are tried again, 4xx not), never as a
missing object; a read that gets no byte for :data:`READ_TIMEOUT` seconds
(HTTP; ``--storage-option read_timeout=SECONDS`` for any store) fails. An
object is read no further than ``limits.current().file_bytes`` bytes,
counted as they arrive (a server's length is not trusted). The connection to the stores (filesystems,
timeouts, retries, error messages) is :mod:`bnstats.inputs.stores`, shared with archives and Parquet.
"""

from __future__ import annotations

import posixpath
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import limits, registry
from .base import ItemError, Source, SourceError, is_url, register_url_version
from .digests import files_digest
from .files import FileSource
from .stores import describe_remote_error, filesystem, info_version, is_http, missing, object_version, retried

PREFETCH = 8  # objects fetched ahead per worker
FETCH_THREADS = 4


def _without_scheme(url: str) -> str:
    """``bucket/key`` of ``s3://bucket/key`` (``s3a://`` and ``S3://`` name the same object)."""
    return url.split("://", 1)[-1]


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/") if part)


def _store_of(base: str, relative: str, other_kinds, claimed: dict) -> str | None:
    """The URL of the store an object under ``base`` belongs to (a prefix that ``other_kinds`` claims when asked
    with a trailing ``/``, as a folder walk asks: ``data.zarr/``), or None. ``claimed`` keeps the answers: a
    store's prefix is asked about once, not once per chunk."""
    if other_kinds is None:
        return None
    parts = relative.split("/")
    for i, part in enumerate(parts[:-1]):
        if not _hidden(part) and "." in part:  # store prefixes are named with a suffix (.zarr)
            prefix = f"{base}/{'/'.join(parts[: i + 1])}"
            if prefix not in claimed:
                claimed[prefix] = other_kinds(prefix + "/")
            if claimed[prefix]:
                return prefix
    return None


class RemoteSource(Source):
    """Loose objects named by URL, and prefixes listed recursively (see the module docstring)."""

    options_read = frozenset({"ext", "storage_options"})

    @classmethod
    def claims(cls, path: str) -> bool:
        # a URL that no other kind (archives, parquet) claims by its name
        return is_url(path) and not any(kind.claims(path) for kind in registry.load("sources").values()
                                        if kind not in (cls, FileSource))

    #: kinds that may claim objects found under prefixes (set by the caller that knows them)
    other_kinds: Callable[[str], bool] | None = None

    def list_items(self) -> list[str]:
        found, others, errors, ignored, prefixes = set(), [], [], Counter(), []
        self._versions = versions = {}  # url -> ETag and size from the listing: no request per object later
        extensions = self.options.extensions()
        for url in self.paths:
            try:
                fs = filesystem(url, self.options)
                listing = self._find(fs, url)
            except SourceError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store's errors: one line, listed
                errors.append({"path": url, "error": describe_remote_error(exc)})
                continue
            if listing is None:  # one object named directly: taken whatever its name
                found.add(url)
                continue
            prefixes.append(url)
            versions.update((name, info_version(info)) for name, info in listing)
            base, claimed = url.rstrip("/"), {}
            for name, info in listing:
                relative = name[len(base):].lstrip("/") if name.startswith(base) else posixpath.basename(name)
                store = _store_of(base, relative, self.other_kinds, claimed)
                if store is not None:  # an object of a store (a Zarr store's chunk): the store is one input
                    others.append(store)
                    continue
                if info.get("type") == "directory" or _hidden(relative):
                    continue
                basename = posixpath.basename(name)
                if basename.lower().endswith(extensions):
                    found.add(name)
                elif self.other_kinds is not None and self.other_kinds(basename):
                    others.append(name)
                else:
                    ignored[posixpath.splitext(basename)[1].lower()] += 1
        self.listing_errors = sorted(errors, key=lambda e: e["path"])
        self.ignored, self.found = dict(ignored), sorted(set(others))
        self._prefixes = sorted(prefixes, key=len, reverse=True)  # deepest first: what classes are taken under
        return sorted(found)

    @staticmethod
    def _find(fs, url: str):
        """``[(url, info)]`` of every object under a prefix, or None when ``url`` is one object."""
        stripped = url.rstrip("/")
        fs.invalidate_cache(stripped)  # a listing is fresh: a resumed run must see changed objects
        if not url.endswith("/"):
            try:
                info = fs.info(url)
            except FileNotFoundError as exc:
                if not missing(exc):  # a 403, a 500: say so, not "no such object"
                    raise
                info = None
            if info is not None and info.get("type") != "directory":
                return None
        entries = fs.find(stripped, detail=True)
        if not entries:
            if not fs.exists(stripped):
                raise FileNotFoundError(f"no such object or prefix: {url}")
            return []
        return [(name if is_url(name) else fs.unstrip_protocol(name), info) for name, info in sorted(entries.items())]

    def read(self, keys):
        """Objects fetched whole, a few ahead on a small thread pool, yielded in order."""
        if not keys:
            return
        fs = filesystem(keys[0], self.options)
        pool = ThreadPoolExecutor(FETCH_THREADS)
        try:
            pending: deque = deque()
            todo = iter(keys)
            for key in todo:
                pending.append((key, pool.submit(_fetch, fs, key)))
                if len(pending) >= PREFETCH:
                    break
            while pending:
                key, future = pending.popleft()
                for more in todo:  # keep the window full while this one is decoded
                    pending.append((more, pool.submit(_fetch, fs, more)))
                    break
                yield (key,), future.result
        finally:
            # not waiting for fetches under way: a stop signal must not wait on a server that stopped sending
            pool.shutdown(wait=False, cancel_futures=True)

    def class_of(self, key: str) -> str:
        """ImageFolder's class of an object: its top-level folder under the prefix named, or the prefix's own
        name for objects directly in it (as a local folder's); ``""`` for an object named directly."""
        where = _without_scheme(key)
        prefixes = self.__dict__.get("_prefixes")
        for path in prefixes if prefixes is not None else sorted(self.paths, key=len, reverse=True):  # deepest
            base = _without_scheme(path).rstrip("/")
            if where == base:
                return ""
            if base and where.startswith(base + "/"):
                parts = where[len(base) + 1 :].split("/")
                return parts[0] if len(parts) > 1 else posixpath.basename(base)
        return ""

    def fingerprint(self, keys):
        names = list(keys)
        known = getattr(self, "_versions", {})
        versions = [f"{key}\0{known.get(key) or object_version(key, self.options)}" for key in keys]
        return {**files_digest(names), "contents": files_digest(versions)["digest"]}

    def __getstate__(self):
        # a worker needs the prefixes named (for classes) and the options: not every URL of a long --files-from
        # list (sent with every task), nor the listing's versions
        state = dict(self.__dict__)
        state.pop("_versions", None)
        state.pop("found", None)
        if "_prefixes" in state:
            state["paths"] = list(state["_prefixes"])
        return state


def _fetch(fs, url: str) -> bytes:
    """One object in one request; a missing or refused object raises (the item is skipped)."""
    limit = limits.current().file_bytes
    try:
        data = retried(lambda: _read_bounded(fs, url, limit), permanent=(limits.LimitError,))
    except SourceError:
        raise
    except limits.LimitError as exc:
        raise ItemError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the store's answer, on one line: the object is skipped
        if missing(exc):
            raise ItemError("object not found (deleted after listing?)") from None
        raise ItemError(describe_remote_error(exc)) from None
    return data


def _over(limit: int, declared: int | None = None) -> limits.LimitError:
    bound = limits.current()
    size = f"of {declared:,} bytes" if declared is not None else f"of more than {limit:,} bytes"
    return limits.LimitError(f"object {size} is over the limit of {limit:,} (raise it with "
                             f"{bound.variable('file_bytes')})")


def _read_bounded(fs, url: str, limit: int) -> bytes:
    """The object's bytes in one request, never more than ``limit`` of them held: past it LimitError.

    Over HTTP the body is counted as it arrives (a server may send no length, or a wrong one, or no end);
    elsewhere the request asks for the first ``limit + 1`` bytes only (a byte range, which object stores honour).
    """
    if is_http(url):
        from fsspec.asyn import sync

        return sync(fs.loop, _http_bounded, fs, url, limit)
    data = fs.cat_file(url, start=0, end=limit + 1)
    if len(data) > limit:
        raise _over(limit)
    return data


async def _http_bounded(fs, url: str, limit: int) -> bytes:
    """One GET on fsspec's HTTP session, its body gathered until it ends or passes ``limit``."""
    session = await fs.set_session()
    encode = getattr(fs, "encode_url", lambda u: u)  # fsspec before 2023.12 sent URLs as given
    async with session.get(encode(url), **fs.kwargs) as response:
        fs._raise_not_found_for_status(response, url)
        declared = response.content_length
        if declared is not None and declared > limit:
            raise _over(limit, declared)
        body, size = [], 0
        async for chunk in response.content.iter_chunked(2**20):
            size += len(chunk)
            if size > limit:
                raise _over(limit)
            body.append(chunk)
    return b"".join(body)


register_url_version(object_version)
