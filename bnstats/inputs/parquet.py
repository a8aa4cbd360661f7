"""Parquet files with an image column (the Hugging Face Hub layout) as inputs.

``pip install "bnstats[parquet]"`` (pyarrow). A ``.parquet`` file, local or
a URL (``bnstats.inputs.remote``), holds one image per row in a column of encoded
images: a Hugging Face ``Image`` feature (a struct of ``bytes`` and
``path``) or a plain binary column. The column is found when it is the only
one that can hold images (a column the file's Hugging Face metadata marks as
``Image`` first), or named with ``--column NAME``; no candidate, or several,
is a one-line error naming them and the option.

Item keys are ``FILE:ROW``, the row zero-padded so that keys sort in row
order. Files are read one record batch of a row group at a time (constant
memory), and tasks are ranges of whole row groups, so one big file with
several row groups uses every core. ``--group-by COLUMN`` takes each row's
class from a label column (a ``ClassLabel``'s names from the Hugging Face
metadata when the file has them). A null or undecodable image cell is a
skipped item ``FILE:ROW``.

What a file decodes is bounded (:mod:`bnstats.limits`): a row group whose
image (or label) column chunk declares more uncompressed bytes than one
file may hold is skipped before it is read; the image column is read
dictionary-encoded, so a cell is materialised alone, after its size is
checked (a dictionary page of one 64 MiB value referenced by 64 rows is
not 4 GiB at once); a cell over ``file_bytes`` is a skipped row; and all
the cells a task materialises count against the file's inflation budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .. import limits
from .base import ContainerSource, ForkSafeLock, ItemError, Partition, SourceError, is_url

PARQUET_EXTRA = 'pip install "bnstats[parquet]"'
BATCH_ROWS = 64  # rows decoded from the column at once, at most
BATCH_BYTES = 64 * 2**20  # and about as many uncompressed bytes as this (by the row group's average row)
READ_AHEAD = 2**20  # bytes read ahead of what pyarrow asks a store for


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise SourceError(f"reading Parquet files needs pyarrow: {PARQUET_EXTRA}") from None
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
    pa = _pyarrow()
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

    pa = _pyarrow()
    try:
        with _open(pa, path, options) as f:
            meta = _parquet_file(pa, f, path).metadata  # a local file's footer is kept: forked workers reuse it
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


class ParquetSource(ContainerSource):
    """Rows of Parquet files with an image column (see the module docstring)."""

    @classmethod
    def claims(cls, path: str) -> bool:
        return path.lower().endswith((".parquet", ".parq"))

    def __init__(self, paths, options=None):
        super().__init__(paths, options)
        self.infos: dict[str, ParquetInfo] = {}
        self._labels: dict[str, str] = {}

    def list_items(self) -> list[str]:
        keys, errors = [], []
        for path in self.paths:
            try:
                info = inspect(path, self.options)
            except DamagedParquetError as exc:  # one damaged file is a skip entry; the others still count
                errors.append({"path": path, "error": str(exc).removeprefix(f"cannot read {path}: ")})
                continue
            self.infos[path] = info
            width = info.width()
            keys += [f"{path}:{row:0{width}d}" for row in range(info.rows)]
        self.listing_errors = errors
        return keys  # paths are sorted by the caller's merge; rows are in order within a file

    def _info(self, path: str) -> ParquetInfo:
        if path not in self.infos:
            self.infos[path] = inspect(path, self.options)
        return self.infos[path]

    def partitions(self, keys, size):
        """Tasks of whole row groups (as many as make about ``size`` rows), so a big file uses every core."""
        out = []
        for path, run in self.runs(keys):
            info = self._info(path)
            first = int(run[0][len(path) + 1 :])
            bounds, start = set(), 0
            for rows in info.row_groups:  # cut at row-group starts only
                bounds.add(start)
                start += rows
            chunk: list[str] = []
            row = first
            for key in run:
                if chunk and row in bounds and len(chunk) >= size:
                    out.append(self._part(info, chunk))
                    chunk = []
                chunk.append(key)
                row += 1
            if chunk:
                out.append(self._part(info, chunk))
        return out

    def _part(self, info: ParquetInfo, keys: list[str]) -> Partition:
        part = ParquetSource([info.path], self.options)
        part.infos = {info.path: info}
        return Partition(part, keys)

    def read(self, keys):
        pa = _pyarrow()
        bounds = limits.current()
        for path, run in self.runs(keys):
            info = self._info(path)
            rows = [int(k[len(path) + 1 :]) for k in run]
            lo, hi = rows[0], rows[-1] + 1
            wanted = dict(zip(rows, run))
            groups, start = [], 0
            for index, count in enumerate(info.row_groups):
                if start < hi and start + count > lo:
                    groups.append((index, start))
                start += count
            columns = [info.column] + ([info.label] if info.label and info.label != info.column else [])
            leaf = f"{info.column}.bytes" if info.struct else info.column
            try:
                # a local file: pyarrow's own reader, no Python file object in the way, and its footer
                # parsed once per process (600 row groups: ~0.8 ms a task, 4 us a row of MNIST)
                # from a store: a column chunk is one read, plus a small read-ahead (not a second copy of it)
                f = _open(pa, path, self.options, block_size=READ_AHEAD)
                reader = _parquet_file(pa, f, path, read_dictionary=[leaf])
                budget = limits.InflationBudget(_file_size(f), path, bounds)
            except Exception as exc:  # noqa: BLE001 - gone since listing: every row is skipped
                for key in run:
                    yield key, _fail(exc)
                continue
            with f:
                for index, start in groups:
                    row = start
                    try:
                        batch_rows = _batch_rows(reader.metadata.row_group(index), columns, bounds)
                    except limits.LimitError as exc:  # declared too large: not read at all
                        failed = _skip(f"row group {index}: {exc}")
                        for r in range(start, start + info.row_groups[index]):
                            if r in wanted:
                                yield wanted[r], failed
                        continue
                    batches = reader.iter_batches(batch_rows, row_groups=[index], columns=columns, use_threads=False)
                    while True:
                        try:
                            batch = next(batches, None)
                        except Exception as exc:  # noqa: BLE001 - a damaged page, a store's error: the rows left
                            failed = _fail(exc, f"row group {index} cannot be read: ")  # of the group are skipped
                            for r in range(row, start + info.row_groups[index]):
                                if r in wanted:
                                    yield wanted[r], failed
                            break
                        if batch is None:
                            break
                        cells = _Cells(pa, batch.column(0), info.struct)
                        labels = _labels(pa, batch.column(1) if len(columns) > 1 else batch.column(0)) \
                            if info.label else None
                        for i in range(len(cells)):
                            key = wanted.get(row + i)
                            if key is None:
                                continue
                            if labels is not None:
                                self._labels = {key: self._label_name(info, labels[i])}
                            # one cell's bytes at a time, when it is decoded: a batch's worth of them at once
                            # would be freed together, and the C heap handed back and faulted in again
                            yield key, _cell_loader(cells, i, budget, bounds)
                        row += len(cells)
                    pa.default_memory_pool().release_unused()  # else its allocator keeps every row group's pages

    @staticmethod
    def _label_name(info: ParquetInfo, value) -> str:
        if value is None:
            return ""
        if info.label_names is not None and isinstance(value, int) and 0 <= value < len(info.label_names):
            return info.label_names[value]
        return str(value)

    def class_of(self, key: str) -> str:
        """The row's value of the ``--group-by`` column (a ClassLabel's name), as a string."""
        return self._labels.get(key, "")

    def tells_classes(self) -> bool:  # classes come from a column named by --group-by COLUMN only
        return self.options.group_column is not None

    def __getstate__(self):  # a worker needs no labels of the parent's last read
        state = dict(self.__dict__)
        state["_labels"] = {}
        return state


# path -> (serialized footer, FileMetaData) of the last few local files read in this process: a task
# reads the footer's bytes (two small reads) and parses them only if they differ from the kept ones
_FOOTERS: dict = {}
_FOOTERS_KEPT = 16
_FOOTER_BYTES_KEPT = 4 * 2**20  # serialized; parsed, a footer takes ~7x that in memory
_FOOTERS_LOCK = ForkSafeLock()


def _open(pa, path: str, options, **url_options):
    """A local file as pyarrow's own file (no Python file object in the way), a URL through fsspec."""
    from .stores import open_input

    return open_input(path, options, **url_options) if is_url(path) else pa.OSFile(path)


def _parquet_file(pa, f, path: str, **read):
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


def _file_size(f) -> int:
    """The size of an open file (pyarrow's or fsspec's)."""
    size = f.size() if callable(getattr(f, "size", None)) else getattr(f, "size", None)
    return int(size or 0)


def _batch_rows(group, columns: list[str], bounds: limits.Limits) -> int:
    """Rows per batch for a row group, refusing one whose columns declare more than one file's bytes.

    The metadata's uncompressed sizes are what the pages decode to (a dictionary page counted once, however
    many rows refer to its values: those are bounded cell by cell); a batch is about :data:`BATCH_BYTES` of
    them by the group's average row, at most :data:`BATCH_ROWS` rows.
    """
    wanted = set(columns)
    size = sum(group.column(j).total_uncompressed_size for j in range(group.num_columns)
               if group.column(j).path_in_schema.split(".")[0] in wanted)
    if size > bounds.file_bytes:
        raise limits.LimitError(f"its columns decode to {size:,} bytes, over the limit of {bounds.file_bytes:,} "
                                f"(raise it with {bounds.variable('file_bytes')})")
    per_row = max(1, size // max(group.num_rows, 1))
    return max(1, min(BATCH_ROWS, BATCH_BYTES // per_row))


class _Cells:
    """The image cells of a batch, each one's size known before its bytes are materialised.

    The column is read dictionary-encoded: rows are indices into a dictionary of distinct values, so a
    value that many rows share is held once, and a row's bytes are copied out only when it is decoded.
    """

    def __init__(self, pa, column, struct: bool):
        import pyarrow.compute as pc

        self.valid = column.is_valid() if struct and column.null_count else None  # a null struct: no image
        values = column.field("bytes") if struct else column
        if pa.types.is_dictionary(values.type):
            self.indices, self.values = values.indices, values.dictionary
        else:  # a reader that gave it dense: the rows are the values
            self.indices, self.values = None, values
        self.lengths = pc.binary_length(self.values)
        self.count = len(values)

    def __len__(self) -> int:
        return self.count

    def _at(self, i: int) -> int | None:
        """The row's index into the values, None for a null cell."""
        if self.valid is not None and not self.valid[i].as_py():
            return None
        return self.indices[i].as_py() if self.indices is not None else (i if self.values[i].is_valid else None)

    def size(self, i: int) -> int | None:
        at = self._at(i)
        return None if at is None else self.lengths[at].as_py()

    def value(self, i: int) -> bytes:
        return self.values[self._at(i)].as_py()


def _cell_loader(cells: _Cells, i: int, budget: limits.InflationBudget, bounds: limits.Limits):
    """The loader of row ``i``'s image: its bytes, or the one-line reason it is skipped (null, too large, or past
    the file's inflation budget), the size checked before the bytes are copied out."""
    size = cells.size(i)
    if size is None:
        return _skip("no image in this row (a null cell)")
    try:
        bounds.check_file_bytes(size, "image cell")
        budget.spend(size)
    except limits.LimitError as exc:
        return _skip(str(exc))
    return lambda: cells.value(i)


def _skip(message: str):
    """The loader of a row skipped for ``message`` (shown alone in the skip list)."""
    def load():
        raise ItemError(message)
    return load


def _labels(pa, column) -> list:
    """A batch's ``--group-by`` values as Python values; as text where Python cannot hold them (a date32 past
    year 9999), and None where arrow cannot write them either."""
    try:
        return column.to_pylist()
    except (ValueError, OverflowError, ArithmeticError):
        try:
            return column.cast(pa.string()).to_pylist()
        except Exception:  # noqa: BLE001 - no label beats no image
            return [None] * len(column)


def _fail(exc: Exception, where: str = ""):
    """The loader of a row that cannot be read: ``where`` and the error, on one printable line."""
    from .stores import describe_remote_error

    text = " ".join(describe_remote_error(exc).split())
    message = where + "".join(c if c.isprintable() else "?" for c in text)

    def load():
        raise ItemError(message)
    return load


