"""Reading tables (CSV, TSV, JSON lines, Parquet) in chunks, with errors that name the file, line and column."""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import glob
import gzip
import io
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import BehaviorLogError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
ROW = "_row"  # column holding where a record came from (see `Source.locate`)
# The longest CSV/TSV field read, in characters (16 MiB); a longer one is refused with its file, line and column. A
# field this long is almost always a broken file (e.g. an unclosed quote that swallowed the lines after it), and
# Python's csv module, which reads the header and finds line numbers, refuses fields over 128 KiB unless told.
MAX_FIELD_CHARS = 16 * 2**20
BOM = "\ufeff"
_CSV_LIMIT_LOCK = threading.Lock()


class FramePath(str):
    """A pandas DataFrame given where a log path goes: it reads as a table of events (format `frame`), and names
    itself `<DataFrame>` (or `<DataFrame i>` in a list) in reports and errors."""

    frame: pd.DataFrame

    def __new__(cls, frame: pd.DataFrame, name: str = "<DataFrame>"):
        path = super().__new__(cls, name)
        path.frame = frame
        return path


def resolve_paths(paths: str | os.PathLike | pd.DataFrame | Sequence[str | os.PathLike | pd.DataFrame]) -> list[str]:
    """A path, a directory, a glob pattern, a DataFrame (a `FramePath`), or a list of them -> the sorted list of
    files they name."""
    if isinstance(paths, (str, os.PathLike, pd.DataFrame)):
        paths = [paths]
    files = []
    frames = sum(isinstance(path, pd.DataFrame) for path in paths)
    for path in paths:
        if isinstance(path, pd.DataFrame):
            files.append(FramePath(path, "<DataFrame>" if frames == 1 else f"<DataFrame {len(files)}>"))
            continue
        path = os.fspath(path)
        if glob.has_magic(path):
            found = sorted(glob.glob(path, recursive=True))
            if not found:
                raise FileNotFoundError(f"no file matches the pattern {path!r}")
            files += found
        elif os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path) if _suffix(n) in FORMATS)
            if not found:
                raise FileNotFoundError(f"directory {path!r} holds no {'/'.join(sorted(set(FORMATS.values())))} file")
            files += found
        elif os.path.exists(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file: {path!r}")
    if not files:
        raise ValueError("no input file given")
    return files


def detect_format(path: str, format: str | None = None) -> str:
    """`csv`, `tsv`, `jsonl` or `parquet`, from `format` or the file name (a `.gz` suffix is looked through);
    `frame` for a `FramePath`."""
    if isinstance(path, FramePath):
        return "frame"
    if format is not None:
        if format not in set(FORMATS.values()):
            raise ValueError(f"format must be one of csv, tsv, jsonl, parquet; got {format!r}")
        return format
    suffix = _suffix(path)
    if suffix not in FORMATS:
        raise BehaviorLogError(
            f"cannot tell the format from the suffix {suffix!r}; pass format='csv' | 'tsv' | 'jsonl' | 'parquet'",
            path=path,
        )
    return FORMATS[suffix]


def _suffix(path: str) -> str:
    root, ext = os.path.splitext(path.lower())
    if ext == ".gz":
        ext = os.path.splitext(root)[1]
    return ext


@dataclass
class Source:
    """One input file; turns the `_row` of a record back into a line number for error messages."""

    path: str
    format: str
    encoding: str = "utf-8"
    header_lines: int = 0  # for format "lines": one record per line after this many header lines

    def locate(self, row: int) -> tuple[int, str]:
        """(number, unit) of the record whose `_row` is `row`: a 1-based line, or a 1-based Parquet row."""
        if self.format in ("parquet", "frame"):
            return int(row) + 1, "row"
        if self.format == "jsonl":
            return int(row) + 1, "line"  # for JSON lines `_row` already is the 0-based line
        if self.format == "lines":
            return int(row) + 1 + self.header_lines, "line"
        return _csv_line_of_record(self, int(row)), "line"

    def error(self, message: str, row: int | None = None, column: str | None = None) -> BehaviorLogError:
        line, unit = self.locate(row) if row is not None else (None, "line")
        return BehaviorLogError(message, path=self.path, line=line, column=column, unit=unit)


def open_binary(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def check_not_empty(source: Source) -> None:
    """An empty (or whitespace-only) file is refused: it is almost always a failed export, not an empty log."""
    with open_binary(source.path) as handle:
        head = handle.read(4096)
        while head and not head.strip():
            head = handle.read(4096)
    if not head.strip() and source.format != "parquet":
        raise BehaviorLogError("the file is empty", path=source.path)
    if source.format == "parquet" and os.path.getsize(source.path) == 0:
        raise BehaviorLogError("the file is empty", path=source.path)


def find_bad_bytes(source: Source, sep: str | None = None, header: list[str] | None = None) -> BehaviorLogError:
    """The error for the first line that is not valid in `source.encoding` (slow; only called after a failure)."""
    with open_binary(source.path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode(source.encoding)
            except UnicodeDecodeError as err:
                column = None
                if sep is not None and header is not None:
                    field = raw[: err.start].count(sep.encode())
                    column = header[field] if field < len(header) else None
                return BehaviorLogError(
                    f"bytes {raw[err.start : err.end]!r} at byte {err.start + 1} of the line are not valid "
                    f"{source.encoding}; pass encoding='latin-1' (or the file's real encoding) to read it",
                    path=source.path,
                    line=number,
                    column=column,
                )
    return BehaviorLogError(f"the file is not valid {source.encoding}", path=source.path)


def check_columns(source: Source, found: Sequence[str], required: Sequence[str], column_map: dict | None) -> None:
    """Refuse a table that lacks a required column, suggesting the closest names and `column_map`."""
    missing = [name for name in required if name not in found]
    if not missing:
        return
    found = [str(f) for f in found]
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, [f for f in found if len(f) < 200], n=1, cutoff=0.5)
        if close:
            hints.append(f"column_map={{{close[0]!r}: {name!r}}}")
    hint = (
        f"; did you mean {' / '.join(hints)}?" if hints else "; rename them with column_map={'<file column>': '<name>'}"
    )
    if source.format in ("csv", "tsv") and len(missing) == len(required) and any(map(_looks_like_data, found)):
        hint += (
            f"; the first line looks like data: the file needs a header line naming its columns ({', '.join(required)})"
        )
    shown = ", ".join(_show_name(f) for f in found[:20]) + (f" and {len(found) - 20} more" if len(found) > 20 else "")
    raise BehaviorLogError(
        f"missing column(s) {', '.join(map(repr, missing))}; the file has {shown} (column_map={column_map!r}){hint}",
        path=source.path,
    )


def _show_name(name: str) -> str:
    """A column name for a message: repr, long ones cut (a header-less file's first field can be a whole text)."""
    return repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name):,} characters)"


def _looks_like_data(name: str) -> bool:
    """A "column name" that is a number or a long text: the file probably has no header line."""
    if len(name) > 60:
        return True
    try:
        float(name)
    except ValueError:
        return False
    return True


def rename_columns(source: Source, columns: Sequence[str], column_map: dict | None) -> dict[str, str]:
    """file column -> canonical name, refusing two file columns that end up with the same name."""
    column_map = column_map or {}
    renamed = {str(c): str(column_map.get(str(c), c)) for c in columns}
    seen = {}
    for original, name in renamed.items():
        if name in seen:
            raise BehaviorLogError(
                f"columns {_show_name(seen[name])} and {_show_name(original)} both become {_show_name(name)}"
                f" (check column_map={column_map!r})",
                path=source.path,
            )
        seen[name] = original
    return renamed


def iter_chunks(
    source: Source,
    columns: Sequence[str] | None,
    column_map: dict | None,
    chunk_size: int | None = None,
    required: Sequence[str] | None = None,
) -> Iterator[pd.DataFrame]:
    """
    Yield the file as DataFrames of at most `chunk_size` records (all of it if None), holding the canonical
    `columns` (after `column_map`; every column if None) plus `_row`. `required` (default: `columns`) must exist.
    CSV/TSV values stay strings (`""` when empty); JSON and Parquet keep their types (None/NaN when absent).
    """
    if source.format != "frame":
        check_not_empty(source)
    readers = {"csv": _iter_csv, "tsv": _iter_csv, "jsonl": _iter_jsonl, "parquet": _iter_parquet, "frame": _iter_frame}
    reader = readers[source.format]
    required = list(required if required is not None else columns)
    yield from reader(source, None if columns is None else list(columns), required, column_map, chunk_size)


def _keep(name: str, columns: list[str] | None) -> bool:
    return columns is None or name in columns


def _iter_csv(source, columns, required, column_map, chunk_size):
    sep = "\t" if source.format == "tsv" else ","
    # TSV fields cannot hold a tab, so quotes are plain characters there (titles often contain them).
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    header = _read_header(source, sep, quoting)
    renamed = rename_columns(source, header, column_map)
    check_columns(source, list(renamed.values()), required, column_map)
    wanted = {orig: name for orig, name in renamed.items() if _keep(name, columns)}
    try:
        reader = pd.read_csv(
            source.path,
            sep=sep,
            quoting=quoting,
            dtype=str,
            keep_default_na=False,
            encoding=source.encoding,
            chunksize=chunk_size or 1_000_000,
            engine="c",
            on_bad_lines="error",
        )  # no usecols: with it pandas silently ignores extra fields, e.g. of an unquoted comma
        start = 0
        may_be_long = source.path.lower().endswith(".gz") or os.path.getsize(source.path) > MAX_FIELD_CHARS
        with reader:
            for chunk in reader:
                if may_be_long:
                    _check_field_lengths(source, chunk, start, renamed)
                chunk = chunk[list(wanted)].rename(columns=wanted)
                chunk[ROW] = range(start, start + len(chunk))
                start += len(chunk)
                yield chunk
    except UnicodeDecodeError:
        raise find_bad_bytes(source, sep, header) from None
    except pd.errors.ParserError as err:
        raise BehaviorLogError(f"malformed {source.format.upper()}: {err}", path=source.path) from None


def _check_field_lengths(source: Source, chunk: pd.DataFrame, start: int, renamed: dict[str, str]) -> None:
    """Refuse a field longer than `MAX_FIELD_CHARS` (pandas' C parser has no limit of its own)."""
    for name in chunk.columns:
        lengths = chunk[name].str.len().fillna(0).to_numpy()
        if lengths.max(initial=0) > MAX_FIELD_CHARS:
            position = int((lengths > MAX_FIELD_CHARS).argmax())
            raise source.error(
                f"a field of {int(lengths[position]):,} characters is longer than the limit of {MAX_FIELD_CHARS:,}"
                " (16 MiB; an unclosed quote?)",
                row=start + position,
                column=renamed.get(str(name), str(name)),
            )


@contextlib.contextmanager
def _csv_field_limit():
    """Python's csv module reads fields up to `MAX_FIELD_CHARS` inside this block (the limit is process-wide: it
    is put back after)."""
    with _CSV_LIMIT_LOCK:
        previous = csv.field_size_limit(MAX_FIELD_CHARS)
        try:
            yield
        finally:
            csv.field_size_limit(previous)


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


def _read_header(source: Source, sep: str, quoting: int) -> list[str]:
    with open_binary(source.path) as handle:
        first = handle.readline()
    try:
        text = first.decode(source.encoding)
    except UnicodeDecodeError:
        raise find_bad_bytes(source) from None
    if _is_utf8(source.encoding):
        text = text.removeprefix(BOM)  # a byte order mark is not part of the first column's name
    try:
        with _csv_field_limit():
            return next(csv.reader([text.rstrip("\r\n")], delimiter=sep, quoting=quoting))
    except csv.Error as err:
        if "field larger than field limit" in str(err):
            message = (
                f"a field of the first line is longer than {MAX_FIELD_CHARS:,} characters (16 MiB); the first line "
                "must be a header naming the columns (e.g. user_id, timestamp, text)"
            )
        else:
            message = f"cannot read the header line: {err}"
        raise BehaviorLogError(message, path=source.path, line=1) from None


def _csv_line_of_record(source: Source, record: int) -> int:
    """1-based line where data record `record` (0-based, after the header) starts; quoted newlines counted, blank
    lines skipped (as pandas does)."""
    sep = "\t" if source.format == "tsv" else ","
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    with open_binary(source.path) as raw, _csv_field_limit():
        text = io.TextIOWrapper(raw, encoding=source.encoding, newline="")
        # Python 3.10's csv module refuses NUL bytes; they never delimit or quote, so a space counts the same.
        reader = csv.reader((line.replace("\x00", " ") for line in text), delimiter=sep, quoting=quoting)
        previous_end, index = 0, 0
        try:
            for row in reader:
                if row:  # pandas skips blank lines
                    if index == record + 1:
                        return previous_end + 1
                    index += 1
                previous_end = reader.line_num
        except csv.Error:
            return previous_end + 1  # a field over the limit: the record being read is the one refused for it
    return record + 2


def _iter_jsonl(source, columns, required, column_map, chunk_size):
    column_map = column_map or {}
    if columns is None:
        columns = _jsonl_keys(source, column_map)
    wanted = {orig: name for orig, name in column_map.items() if name in columns}
    wanted.update({name: name for name in columns if name not in column_map.values()})
    records, rows, seen_keys, yielded = [], [], set(), False
    with open_binary(source.path) as handle:
        for number, raw in enumerate(handle):
            try:
                line = raw.decode(source.encoding)
            except UnicodeDecodeError:
                raise find_bad_bytes(source) from None
            if number == 0 and _is_utf8(source.encoding):
                line = line.removeprefix(BOM)  # a byte order mark is not part of the first record
            if not line.strip():
                continue  # blank lines hold no record
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise BehaviorLogError(
                    f"invalid JSON: {err.msg} (character {err.colno})", path=source.path, line=number + 1
                ) from None
            if not isinstance(record, dict):
                raise BehaviorLogError(
                    f"expected a JSON object, got {type(record).__name__}", path=source.path, line=number + 1
                )
            seen_keys.update(record)
            records.append([record.get(orig) for orig in wanted])
            rows.append(number)
            if chunk_size and len(records) >= chunk_size:
                yield _jsonl_frame(source, records, rows, wanted, seen_keys, required, column_map)
                records, rows, yielded = [], [], True
    if records or not yielded:
        yield _jsonl_frame(source, records, rows, wanted, seen_keys, required, column_map)


def _jsonl_keys(source: Source, column_map: dict) -> list[str]:
    """Every key of every record, renamed, in first-seen order (labels tables: small files)."""
    keys = {}
    with open_binary(source.path) as handle:
        for number, raw in enumerate(handle):
            if number == 0 and _is_utf8(source.encoding):
                raw = raw.removeprefix(BOM.encode())
            if raw.strip():
                try:
                    record = json.loads(raw.decode(source.encoding))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue  # reported with its line by the reading pass
                if isinstance(record, dict):
                    keys.update(dict.fromkeys(column_map.get(k, k) for k in record))
    return list(keys)


def _jsonl_frame(source, records, rows, wanted, seen_keys, required, column_map):
    if records:
        # A column no record has is a misnamed column, not missing values.
        renamed = {column_map.get(k, k) for k in seen_keys}
        check_columns(source, sorted(renamed), required, column_map)
    frame = pd.DataFrame(records, columns=list(wanted.values()), dtype=object)
    frame[ROW] = rows
    return frame


def _iter_parquet(source, columns, required, column_map, chunk_size):
    try:
        handle = pq.ParquetFile(source.path)
    except (pa.ArrowException, OSError) as err:
        raise BehaviorLogError(f"cannot read Parquet: {err}", path=source.path) from None
    renamed = rename_columns(source, handle.schema_arrow.names, column_map)
    check_columns(source, list(renamed.values()), required, column_map)
    wanted = {orig: name for orig, name in renamed.items() if _keep(name, columns)}
    for original, name in wanted.items():
        if name == "user_id":
            _check_id_type(source, handle.schema_arrow.field(original).type)
    start = 0
    try:
        for batch in handle.iter_batches(batch_size=chunk_size or 1_000_000, columns=list(wanted)):
            frame = _arrow_to_frame(batch).rename(columns=wanted)
            frame[ROW] = range(start, start + len(frame))
            start += len(frame)
            yield frame
    except pa.ArrowInvalid as err:
        raise BehaviorLogError(
            f"cannot read Parquet (invalid UTF-8 or corrupt data?): {err}", path=source.path
        ) from None
    if start == 0:
        yield pd.DataFrame({**{name: pd.Series([], dtype=object) for name in wanted.values()}, ROW: []})


def _iter_frame(source, columns, required, column_map, chunk_size):
    """A DataFrame's rows, as a Parquet file's would be read: values keep their types."""
    if not isinstance(source.path, FramePath):
        raise TypeError(f"format 'frame' reads a DataFrame, not {source.path!r}")
    frame = source.path.frame
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1).reset_index(drop=True)
    renamed = rename_columns(source, list(frame.columns), column_map)
    check_columns(source, list(renamed.values()), required, column_map)
    wanted = {orig: name for orig, name in renamed.items() if _keep(name, columns)}
    frame = frame[list(wanted)].rename(columns=wanted)
    if "user_id" in frame and frame["user_id"].dtype.kind in "fb":
        _check_id_type(source, pa.from_numpy_dtype(frame["user_id"].dtype))
    size = chunk_size or max(len(frame), 1)
    for start in range(0, max(len(frame), 1), size):
        chunk = frame.iloc[start : start + size].copy()
        chunk[ROW] = range(start, start + len(chunk))
        yield chunk


def _check_id_type(source: Source, kind: pa.DataType) -> None:
    """A Parquet user_id column must hold strings or integers: `1.0` or `True` is not an id."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if (
        pa.types.is_integer(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_null(kind)
    ):
        return
    if hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind):
        return
    hint = ""
    if pa.types.is_floating(kind):
        hint = (
            " (pandas stores an integer column with missing values as float: write it with "
            "df['user_id'].astype('Int64') or as strings)"
        )
    raise BehaviorLogError(
        f"user ids must be strings or integers; this column has type {kind}{hint}", path=source.path, column="user_id"
    )


def _arrow_to_frame(batch: pa.RecordBatch) -> pd.DataFrame:
    """Integer ids keep their digits (no float conversion when a column has nulls); lists stay Python lists."""
    data = {}
    for name, column in zip(batch.schema.names, batch.columns):
        if pa.types.is_integer(column.type) and column.null_count == 0:
            data[name] = column.to_numpy()
        elif pa.types.is_integer(column.type) or pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            data[name] = pd.Series(column.to_pylist(), dtype=object)
        else:
            data[name] = column.to_pandas()
    return pd.DataFrame(data)
