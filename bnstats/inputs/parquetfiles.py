"""The Parquet files themselves, for :mod:`bnstats.inputs.parquet`: pyarrow loaded on demand, a file's schema
inspected for its image and label columns (:func:`inspect`, Hugging Face metadata first), and files opened
with their parsed footers kept (a few, per process) so that tasks of one file do not parse it again."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .base import ForkSafeLock, SourceError, is_url, require


def load_pyarrow():
    """The pyarrow module (with ``pyarrow.parquet`` loaded); a one-line :class:`SourceError` naming the extra when
    it is not installed."""
    require("pyarrow.parquet", "Parquet files", "parquet")
    import pyarrow

    return pyarrow


@dataclass(frozen=True)
class ParquetInfo:
    """What a task needs of one file: its rows per row group, the image and label columns, label names."""

    path: str
    row_groups: tuple[int, ...]
    column: str
    struct: bool  # a Hugging Face Image struct (else plain binary)
    label: str | None = None
    label_names: tuple[str, ...] | None = None

    @property
    def rows(self) -> int:
        return sum(self.row_groups)

    def width(self) -> int:
        return len(str(max(self.rows - 1, 0)))


def _hf_features(schema) -> dict:
    """The Hugging Face features recorded in the file's metadata ({} when none)."""
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(meta)["info"]["features"] if meta else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def image_candidates(schema) -> tuple[list[str], dict[str, bool]]:
    """Columns that may hold encoded images: ``(names, {name: is_struct})``.

    Columns the Hugging Face metadata marks as ``Image`` come alone when there
    are any; otherwise every struct with a binary ``bytes`` field and every
    binary column.
    """
    pa = load_pyarrow()
    kinds = {}
    for f in schema:
        if pa.types.is_struct(f.type):
            names = [f.type.field(i).name for i in range(f.type.num_fields)]
            if "bytes" in names and _is_binary(pa, f.type.field("bytes").type):
                kinds[f.name] = True
        elif _is_binary(pa, f.type):
            kinds[f.name] = False
    features = _hf_features(schema)
    marked = [n for n in kinds if isinstance(features.get(n), dict) and features[n].get("_type") == "Image"]
    return (marked or list(kinds)), kinds


def _is_binary(pa, t) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


class DamagedParquetError(SourceError):
    """A file whose footer is no Parquet footer (cut short, damaged): a skip entry naming it, as a damaged
    image is, while the run's other files still count."""


def inspect(path: str, options) -> ParquetInfo:
    """Open one file's footer and choose its columns; a one-line :class:`SourceError` otherwise."""
    from .stores import describe_remote_error

    pa = load_pyarrow()
    try:
        with open_parquet(pa, path, options) as f:
            meta = parquet_file(pa, f, path).metadata  # a local file's footer is kept: forked workers reuse it
            schema = meta.schema.to_arrow_schema()
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt footer, a missing object: one line naming the file
        # a local file, or bytes that are no Parquet (pyarrow's thrift errors are bare OSErrors), is damaged
        # data: a skip entry; a store's error (refused, denied, 500) stays the run's one line
        damaged = isinstance(exc, pa.ArrowInvalid) or not is_url(path)
        raise (DamagedParquetError if damaged else SourceError)(
            f"cannot read {path}: {describe_remote_error(exc)}") from None
    candidates, kinds = image_candidates(schema)
    if options.column is not None:
        if options.column not in schema.names:
            raise SourceError(f"{path} has no column {options.column!r} (it has {', '.join(schema.names)})")
        if options.column not in kinds:
            raise SourceError(f"{path}: column {options.column!r} is {schema.field(options.column).type}, not "
                              "encoded images (a binary column or a struct<bytes, path>)")
        column = options.column
    elif len(candidates) == 1:
        column = candidates[0]
    elif not candidates:
        raise SourceError(f"{path} has no image column (a binary column or a struct<bytes, path>; it has "
                          f"{', '.join(schema.names)}); name one with --column")
    else:
        raise SourceError(f"{path} has several columns that may hold images ({', '.join(candidates)}): "
                          "choose one with --column")
    label, names = options.group_column, None
    if label is not None:
        if label not in schema.names:
            raise SourceError(f"{path} has no column {label!r} for --group-by (it has {', '.join(schema.names)})")
        feature = _hf_features(schema).get(label)
        if isinstance(feature, dict) and isinstance(feature.get("names"), list):
            names = tuple(str(n) for n in feature["names"])
    groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return ParquetInfo(path, groups, column, kinds[column], label, names)


_FOOTERS: dict = {}
_FOOTERS_KEPT = 16
_FOOTER_BYTES_KEPT = 4 * 2**20  # serialized; parsed, a footer takes ~7x that in memory
_FOOTERS_LOCK = ForkSafeLock()


def open_parquet(pa, path: str, options, **url_options):
    """A local file as pyarrow's own file (no Python file object in the way), a URL through fsspec."""
    from .stores import open_input

    return open_input(path, options, **url_options) if is_url(path) else pa.OSFile(path)


def parquet_file(pa, f, path: str, **read):
    """``pyarrow.parquet.ParquetFile`` over the open file ``f`` (``read``: its reading options); a local file's
    parsed footer is reused while its bytes, read from ``f`` itself, are those it was parsed from (a rewritten
    file is parsed anew)."""
    if is_url(path):
        return pa.parquet.ParquetFile(f, pre_buffer=False, **read)
    footer = _footer_bytes(f)
    with _FOOTERS_LOCK:
        kept = _FOOTERS.get(path)
    if footer is not None and kept is not None and kept[0] == footer:
        return pa.parquet.ParquetFile(f, pre_buffer=False, metadata=kept[1], **read)
    reader = pa.parquet.ParquetFile(f, pre_buffer=False, **read)
    if footer is not None and len(footer) <= _FOOTER_BYTES_KEPT:
        with _FOOTERS_LOCK:
            _FOOTERS.pop(path, None)
            while _FOOTERS and (len(_FOOTERS) >= _FOOTERS_KEPT or
                                sum(len(v[0]) for v in _FOOTERS.values()) + len(footer) > _FOOTER_BYTES_KEPT):
                _FOOTERS.pop(next(iter(_FOOTERS)))
            _FOOTERS[path] = (footer, reader.metadata)
    return reader


def _footer_bytes(f) -> bytes | None:
    """The serialized footer at the end of an open Parquet file (what its metadata is parsed from), or None."""
    size = f.size()
    if size < 12:
        return None
    f.seek(size - 8)
    tail = f.read(8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length > size - 12:
        return None
    f.seek(size - 8 - length)
    footer = f.read(length)
    f.seek(0)
    return footer if len(footer) == length else None


def file_size(f) -> int:
    """The size of an open file (pyarrow's or fsspec's)."""
    size = f.size() if callable(getattr(f, "size", None)) else getattr(f, "size", None)
    return int(size or 0)
