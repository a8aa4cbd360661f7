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
file may hold, or than the inflation ratio allows of the file's size, is
skipped before it is read; the image column is read
dictionary-encoded, so a cell is materialised alone, after its size is
checked (a dictionary page of one 64 MiB value referenced by 64 rows is
not 4 GiB at once); a cell over ``file_bytes`` is a skipped row; and all
the cells a task materialises count against the file's inflation budget.
"""

from __future__ import annotations

import bisect

from collections.abc import Sequence

from .. import limits
from .base import ItemError, Partition
from .containers import ContainerSource
from .keys import RowKeys, sorted_ranges
from .parquetfiles import (DamagedParquetError, ParquetInfo, file_size, inspect, load_pyarrow, open_parquet,
                           parquet_file)

READ_AHEAD = 2**20  # bytes read ahead of what pyarrow asks a store for
BATCH_ROWS = 64  # rows decoded from the column at once, at most
BATCH_BYTES = 64 * 2**20  # and about as many uncompressed bytes as this (by the row group's average row)


class ParquetSource(ContainerSource):
    """Rows of Parquet files with an image column (see the module docstring)."""

    options_read = frozenset({"column", "group_column", "storage_options"})

    @classmethod
    def claims(cls, path: str) -> bool:
        return path.lower().endswith((".parquet", ".parq"))

    def __init__(self, paths, options=None):
        super().__init__(paths, options)
        self.infos: dict[str, ParquetInfo] = {}
        self._labels: dict[str, str] = {}

    def list_items(self) -> Sequence[str]:
        keys, errors = [], []
        for path, info in self.inspected(inspect, DamagedParquetError, errors):
            self.infos[path] = info
            keys.append(RowKeys(path, info.width(), 0, info.rows))
        self.listing_errors = errors
        return sorted_ranges(keys)

    def _info(self, path: str) -> ParquetInfo:
        if path not in self.infos:
            self.infos[path] = inspect(path, self.options)
        return self.infos[path]

    def partitions(self, keys, size):
        """Tasks of whole row groups (as many as make about ``size`` rows), so a big file uses every core."""
        out = []
        for path, run in self.runs(keys):  # consecutive rows of one file
            info = self._info(path)
            first = int(run[0][len(path) + 1 :])
            cut, start = first, 0
            for rows in info.row_groups:  # cut at row-group starts only, once a task holds `size` rows
                if first < start < first + len(run) and start - cut >= size:
                    out.append(self._part(info, run[cut - first : start - first]))
                    cut = start
                start += rows
            out.append(self._part(info, run[cut - first :]))
        return out

    def _part(self, info: ParquetInfo, keys: Sequence[str]) -> Partition:
        part = ParquetSource([info.path], self.options)
        part.infos = {info.path: info}
        return Partition(part, keys)

    def read(self, keys):
        pa = load_pyarrow()
        bounds = limits.current()
        for path, run in self.runs(keys):
            info = self._info(path)
            rows = [int(k[len(path) + 1 :]) for k in run]
            wanted = dict(zip(rows, run))
            groups = _groups_holding(info.row_groups, sorted(wanted))
            columns = [info.column] + ([info.label] if info.label and info.label != info.column else [])
            leaf = f"{info.column}.bytes" if info.struct else info.column
            try:
                # a local file: pyarrow's own reader, no Python file object in the way, and its footer
                # parsed once per process (600 row groups: ~0.8 ms a task, 4 us a row of MNIST)
                # from a store: a column chunk is one read, plus a small read-ahead (not a second copy of it)
                f = open_parquet(pa, path, self.options, block_size=READ_AHEAD)
                reader = parquet_file(pa, f, path, read_dictionary=[leaf])
                budget = limits.InflationBudget(file_size(f), path, bounds)
            except Exception as exc:  # noqa: BLE001 - gone since listing: every row is skipped
                for key in run:
                    yield (key,), _fail(exc)
                continue
            with f:
                for index, start in groups:
                    row = start
                    try:
                        batch_rows = _batch_rows(reader.metadata.row_group(index), columns, bounds, budget.allowed)
                    except limits.LimitError as exc:  # declared too large: not read at all
                        failed = _skip(f"row group {index}: {exc}")
                        for r in range(start, start + info.row_groups[index]):
                            if r in wanted:
                                yield (wanted[r],), failed
                        continue
                    batches = reader.iter_batches(batch_rows, row_groups=[index], columns=columns, use_threads=False)
                    while True:
                        try:
                            batch = next(batches, None)
                        except Exception as exc:  # noqa: BLE001 - a damaged page, a store's error: the rows left
                            failed = _fail(exc, f"row group {index} cannot be read: ")  # of the group are skipped
                            for r in range(row, start + info.row_groups[index]):
                                if r in wanted:
                                    yield (wanted[r],), failed
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
                            yield (key,), _cell_loader(cells, i, budget, bounds)
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


def _groups_holding(row_groups: Sequence[int], rows: list[int]) -> list[tuple[int, int]]:
    """``(index, first row)`` of each row group holding one of the sorted ``rows``: a sample's keys come in
    random order, and its first and last key drawn do not bound the rows between them."""
    groups, start = [], 0
    for index, count in enumerate(row_groups):
        at = bisect.bisect_left(rows, start)
        if at < len(rows) and rows[at] < start + count:
            groups.append((index, start))
        start += count
    return groups


def _batch_rows(group, columns: list[str], bounds: limits.Limits, allowed: int | None = None) -> int:
    """Rows per batch for a row group, refusing one whose columns declare more than one file's bytes, or more
    than ``allowed`` (the file's inflation budget: a 24 KB file's one zstd page of 600 MB took 1.9 GB before
    the cell was refused).

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
    if allowed is not None and size > allowed:
        raise limits.LimitError(f"its columns decode to {size:,} bytes, more than {bounds.ratio}× the file's size "
                                f"(a decompression bomb? raise it with {bounds.variable('ratio')})")
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
