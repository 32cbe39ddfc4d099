"""Reading delimited and Parquet files into typed pyarrow tables, with bad rows located.

Every reader of ``trainer.readers`` reads its files through ``read_delimited``
or ``read_parquet``: pyarrow parses the bytes (quoting, encodings, threads),
never a Python loop over lines.

The fast path reads with the final column types on all cores (a log with
string ids batch by batch, each batch's ids coded into int32 at once, so that
the strings of the whole log never coexist). Only when it meets a problem (a
row with the wrong number of fields, a value that does not convert, a required
value missing) is the file read again, single-threaded and as strings, to find
every bad row with its line number: pyarrow numbers rows by physical line only
when empty lines are kept and parsing is serial. Each bad row is then either an
error naming ``file:line`` and the reason, or, within ``--max-bad-rows``,
skipped and counted.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq


class DataError(Exception):
    """Input data is missing or malformed. The message names the file (and line) and what to do."""


# Column kinds a reader asks for, with the pyarrow type the fast path parses them as.
INT32, INT64, FLOAT32, STRING, ID, EMPTY, TIME = "int32", "int64", "float32", "string", "id", "empty", "time"
_FAST_TYPES = {
    INT32: pa.int32(),
    INT64: pa.int64(),
    FLOAT32: pa.float32(),
    STRING: pa.string(),
    # Parsed as text, then coded batch by batch (GrowingDictionary): a 25M-row log
    # of string ids costs 4 bytes a row per id column, not the strings' length.
    ID: pa.string(),
    # The empty fields between the two ':' of a '::' separator: a null column accepts nothing else.
    EMPTY: pa.null(),
}
_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_ISO_TIME_RE = r"^\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?\s*$"
# How many bad rows an error message lists by line (all are counted).
SHOWN_BAD_ROWS = 5


@dataclasses.dataclass(frozen=True)
class Column:
    """One column a reader wants: its kind (above) and whether a row without a value is malformed."""

    kind: str
    required: bool = True
    # For EMPTY columns: what a value there means, e.g. "a single ':' where '::' separates fields".
    problem: str = ""


@dataclasses.dataclass(frozen=True)
class BadRow:
    path: Path
    line: int  # 1-based physical line (a record number in files read with newlines_in_values)
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclasses.dataclass
class BadRowBudget:
    """``--max-bad-rows``: how many malformed rows the whole data set may skip."""

    limit: int = 0
    skipped: list[BadRow] = dataclasses.field(default_factory=list)  # the first SHOWN_BAD_ROWS of them
    count: int = 0

    def spend(self, path: Path, rows: Sequence[BadRow], total: int) -> None:
        """Accounts for ``total`` bad rows of ``path`` (``rows``: the first of them, in line order).

        Raises DataError naming the first one when the budget is exceeded.
        """
        if total == 0:
            return
        if self.count + total > self.limit:
            more = f" ({total - 1} more malformed rows in this file)" if total > 1 else ""
            raise DataError(
                f"{rows[0]}{more}; fix the file, or pass --max-bad-rows {self.count + total} (or more) to skip "
                f"{'them' if total > 1 else 'it'}" + (f" (now {self.limit})" if self.limit else "")
            )
        self.count += total
        self.skipped.extend(rows[: max(0, SHOWN_BAD_ROWS - len(self.skipped))])


@dataclasses.dataclass(frozen=True)
class Delimited:
    """How a delimited text file is laid out."""

    delimiter: str = ","
    header: bool = True  # else ``names`` names the columns in order
    names: tuple[str, ...] = ()
    encoding: str = "utf8"
    quoting: bool = True
    # Quoted values may hold line breaks (item descriptions); line numbers then count records.
    newlines_in_values: bool = False
    # MovieLens 1M/10M separate fields by '::', read as ':' with an EMPTY column between fields.
    double_colon: bool = False

    def wrong_width(self, expected: int, actual: int) -> str:
        if self.double_colon:
            fields = (expected + 1) // 2
            return f"expected {fields} fields separated by '::' ({expected - 1} ':'), found {actual - 1} ':'"
        return f"expected {expected} fields, got {actual}"


def header_names(path: Path, layout: Delimited) -> list[str]:
    """The column names of a file with a header line (its first line; .gz files are decompressed).

    Read here rather than with pyarrow's streaming reader, which would start reading the whole
    file ahead in the background.
    """
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            first = stream.read(1 << 20).split(b"\n", 1)[0]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc
    try:
        text = first.decode(layout.encoding).rstrip("\r\n").removeprefix("\ufeff")  # spreadsheets' UTF-8 BOM
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: the header line is not {layout.encoding} text ({exc})") from exc
    if layout.quoting:
        return next(csv.reader([text], delimiter=layout.delimiter), [])
    return text.split(layout.delimiter) if text else []


def read_delimited(path: Path, layout: Delimited, columns: Mapping[str, Column], budget: BadRowBudget) -> pa.Table:
    """The named ``columns`` of a delimited file as a typed table, bad rows removed or raised.

    Types: INT32/INT64/FLOAT32 numbers, STRING strings, ID dictionary<int32, string>,
    TIME int64 seconds (from integers or ISO 8601 text), EMPTY dropped after the check.
    Missing values of optional columns are nulls.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    names = list(layout.names) if not layout.header else header_names(path, layout)
    missing = [name for name in columns if name not in names]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(repr(m) for m in missing)} (the file has: {', '.join(names)}); "
            f"expected columns {', '.join(columns)}"
        )
    streaming = any(column.kind == ID for column in columns.values())
    table = (_read_streaming if streaming else _read_fast)(path, layout, columns)
    if table is None:
        table = _read_checked(path, layout, columns, budget)
    return table.drop_columns([name for name, column in columns.items() if column.kind == EMPTY])


def _parse_options(layout: Delimited, handler=None, keep_empty_lines: bool = False) -> pa_csv.ParseOptions:
    return pa_csv.ParseOptions(
        delimiter=layout.delimiter,
        quote_char='"' if layout.quoting else False,
        newlines_in_values=layout.newlines_in_values,
        ignore_empty_lines=not keep_empty_lines,
        invalid_row_handler=handler,
    )


def _read_options(layout: Delimited, threads: bool) -> pa_csv.ReadOptions:
    return pa_csv.ReadOptions(
        use_threads=threads,
        encoding=layout.encoding,
        column_names=list(layout.names) if not layout.header else None,
        block_size=1 << 24,
    )


def _read_fast(path: Path, layout: Delimited, columns: Mapping[str, Column]) -> pa.Table | None:
    """The typed table, or None when the file has any problem (the checked read then finds it)."""
    invalid_rows = []

    def on_invalid_row(row) -> str:
        invalid_rows.append(row)
        return "error"

    types = {name: _FAST_TYPES[c.kind] for name, c in columns.items() if c.kind in _FAST_TYPES}
    try:
        table = pa_csv.read_csv(
            path,
            read_options=_read_options(layout, threads=True),
            parse_options=_parse_options(layout, on_invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types=types, include_columns=list(columns), strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    for name, column in columns.items():
        values = table.column(name)
        if column.kind == TIME:
            converted = _fast_time(values)
            if converted is None:
                return None
            table = table.set_column(table.schema.get_field_index(name), name, converted)
        elif column.required and column.kind != EMPTY and values.null_count:
            return None
    return table


class GrowingDictionary:
    """Codes string values chunk by chunk against one dictionary that grows as new values appear.

    Each chunk is dictionary-encoded on its own (or comes so, from Parquet) and only its
    distinct values are looked up in the dictionary so far, so memory holds the int32 codes
    and each distinct id once. Parquet repeats a row group's dictionary in every chunk of
    it: a chunk whose dictionary equals the previous one reuses its lookup.
    """

    def __init__(self) -> None:
        self.values = pa.array([], pa.string())
        self.codes: list[np.ndarray] = []
        self._last: tuple[pa.Array, np.ndarray] | None = None

    def add(self, values: pa.Array) -> None:
        self.add_encoded(values if pa.types.is_dictionary(values.type) else pc.dictionary_encode(values))

    def add_encoded(self, encoded: pa.DictionaryArray) -> None:
        local = encoded.dictionary
        if self._last is not None and self._last[0].equals(local):
            found = self._last[1]
        else:
            found = pc.fill_null(pc.index_in(local, value_set=self.values), -1).to_numpy(zero_copy_only=False)
            found = found.astype(np.int32)
            new = found < 0
            if new.any():
                found[new] = len(self.values) + np.arange(int(new.sum()), dtype=np.int32)
                self.values = pa.concat_arrays([self.values, local.filter(pa.array(new))])
            self._last = (local, found)
        indices = encoded.indices
        if indices.null_count:
            raise ValueError("null ids must be removed before coding")
        self.codes.append(found[indices.to_numpy(zero_copy_only=False)])

    def column(self) -> pa.DictionaryArray:
        codes = np.concatenate(self.codes) if self.codes else np.zeros(0, dtype=np.int32)
        self.codes = []
        return pa.DictionaryArray.from_arrays(pa.array(codes), self.values)


def _read_streaming(path: Path, layout: Delimited, columns: Mapping[str, Column]) -> pa.Table | None:
    """Like _read_fast, batch by batch, for logs with string ids: each batch's ids become int32
    codes before the next batch is parsed, so the strings of the whole log never coexist."""
    invalid_rows = []

    def on_invalid_row(row) -> str:
        invalid_rows.append(row)
        return "error"

    types = {name: _FAST_TYPES[c.kind] for name, c in columns.items() if c.kind in _FAST_TYPES}
    dictionaries = {name: GrowingDictionary() for name, c in columns.items() if c.kind == ID}
    chunks: dict[str, list[pa.Array]] = {name: [] for name in columns if name not in dictionaries}
    try:
        reader = pa_csv.open_csv(
            path,
            read_options=_read_options(layout, threads=True),
            parse_options=_parse_options(layout, on_invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types=types, include_columns=list(columns), strings_can_be_null=True
            ),
        )
        with reader:
            for batch in reader:
                for name, column in columns.items():
                    values = batch.column(name)
                    if column.kind == TIME:
                        values = _fast_time(values)
                        if values is None:
                            return None
                    elif column.required and column.kind != EMPTY and values.null_count:
                        return None
                    if name in dictionaries:
                        dictionaries[name].add(values)
                    else:
                        chunks[name].append(values)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    out = {}
    for name, column in columns.items():
        if name in dictionaries:
            out[name] = dictionaries[name].column()
        else:
            kind_type = pa.int64() if column.kind == TIME else _FAST_TYPES[column.kind]
            out[name] = pa.chunked_array(chunks.pop(name), kind_type)
    return pa.table(out)


def _fast_time(values: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """An inferred time column as int64 seconds, or None when it needs the checked read."""
    if values.null_count:
        return None
    if pa.types.is_integer(values.type):
        return values.cast(pa.int64())
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        return seconds(values)
    return None


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def seconds(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Timestamps (any unit, any zone: stored as UTC) or dates -> int64 seconds since 1970 (UTC)."""
    if pa.types.is_date(values.type):
        values = values.cast(pa.timestamp("s"))
    return pc.divide(values.cast(pa.int64()), _PER_SECOND[values.type.unit])


def _read_checked(path: Path, layout: Delimited, columns: Mapping[str, Column], budget: BadRowBudget) -> pa.Table:
    """The slow, exact read: every column as text, each bad row found with its line."""
    wrong_width: list[tuple[int, str]] = []

    def on_invalid_row(row) -> str:
        wrong_width.append((row.number, layout.wrong_width(row.expected_columns, row.actual_columns)))
        return "skip"

    try:
        table = pa_csv.read_csv(
            path,
            read_options=_read_options(layout, threads=False),
            parse_options=_parse_options(layout, on_invalid_row, keep_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in columns},
                include_columns=list(columns),
                strings_can_be_null=False,
            ),
        )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {layout.encoding} text ({exc})") from exc
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot be parsed ({exc})") from exc

    # With empty lines kept and serial parsing, every physical line is a row or an invalid row.
    first_line = 2 if layout.header else 1
    invalid_lines = np.array([number for number, _ in wrong_width], dtype=np.int64)
    lines = np.setdiff1d(np.arange(first_line, first_line + table.num_rows + len(invalid_lines)), invalid_lines)

    blank = np.ones(table.num_rows, dtype=bool)
    for name in columns:
        blank &= pc.equal(pc.utf8_trim_whitespace(table.column(name)), "").to_numpy(zero_copy_only=False)

    bad = np.zeros(table.num_rows, dtype=bool)
    reasons: dict[int, str] = {}  # row -> the first problem found in it (only for rows reported)
    converted = {}
    for name, column in columns.items():
        values = table.column(name)
        problem, result = _check_column(name, column, values)
        problem &= ~blank & ~bad
        for row in np.flatnonzero(problem)[:SHOWN_BAD_ROWS].tolist():
            reasons[row] = _reason(name, column, values[row].as_py())
        bad |= problem
        converted[name] = result
    found = [(int(lines[row]), reason) for row, reason in reasons.items()] + wrong_width
    found.sort()
    total = int(bad.sum()) + len(wrong_width)
    budget.spend(path, [BadRow(path, line, reason) for line, reason in found[:SHOWN_BAD_ROWS]], total)

    keep = ~bad & ~blank
    out = {}
    for name, column in columns.items():
        values = converted[name].filter(pa.array(keep))
        if column.kind == ID:
            values = pc.dictionary_encode(values)
        out[name] = values
    return pa.table(out)


def _check_column(name: str, column: Column, values: pa.ChunkedArray) -> tuple[np.ndarray, pa.ChunkedArray]:
    """(bool [n] rows whose value is malformed, the column converted with nulls where malformed or missing)."""
    text = values
    empty = pc.equal(pc.utf8_trim_whitespace(text), "")
    if column.kind == EMPTY:
        return ~empty.to_numpy(zero_copy_only=False), text
    if column.kind in (STRING, ID):
        empty_np = empty.to_numpy(zero_copy_only=False)
        malformed = empty_np if column.required else np.zeros(len(text), dtype=bool)
        return malformed, pc.if_else(empty, None, text)
    if column.kind == TIME:
        is_int = pc.match_substring_regex(text, _INT_RE)
        is_iso = pc.match_substring_regex(text, _ISO_TIME_RE)
        valid = pc.or_(is_int, is_iso)
    else:
        valid = pc.match_substring_regex(text, _INT_RE if column.kind in (INT32, INT64) else _FLOAT_RE)
    valid_np = valid.to_numpy(zero_copy_only=False)
    empty_np = empty.to_numpy(zero_copy_only=False)
    malformed = ~valid_np & ~(empty_np & (not column.required))
    usable = pa.array(valid_np)
    trimmed = pc.if_else(usable, pc.utf8_trim_whitespace(text), None)
    if column.kind == TIME:
        as_int = pc.if_else(is_int, trimmed, None).cast(pa.int64())
        iso = pc.if_else(is_iso, trimmed, None)
        zoned = pc.fill_null(pc.match_substring_regex(iso, r"(Z|[+-]\d{2}:?\d{2})$"), False)
        try:
            as_naive = seconds(pc.if_else(zoned, None, iso).cast(pa.timestamp("ns")))
            as_zoned = seconds(pc.if_else(zoned, iso, None).cast(pa.timestamp("ns", tz="UTC")))
        except pa.ArrowInvalid:  # shaped like a time but not one (2024-13-45): find which, one by one
            parsed = [_iso_seconds(v) for v in iso.to_pylist()]
            impossible = np.array([v is not None and p is None for v, p in zip(iso.to_pylist(), parsed)])
            return malformed | impossible, pc.coalesce(as_int, pa.array(parsed, pa.int64()))
        return malformed, pc.coalesce(as_int, as_naive, as_zoned)
    target = _FAST_TYPES[column.kind]
    if column.kind == INT32:
        wide = trimmed.cast(pa.int64())
        out_of_range = pc.fill_null(
            pc.or_(pc.less(wide, np.iinfo(np.int32).min), pc.greater(wide, np.iinfo(np.int32).max)), False
        ).to_numpy(zero_copy_only=False)
        malformed |= out_of_range
        return malformed, pc.if_else(pa.array(~out_of_range), wide, None).cast(target)
    return malformed, trimmed.cast(target)


def _iso_seconds(text: str | None) -> int | None:
    import datetime

    if text is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp())


def _reason(name: str, column: Column, value: str) -> str:
    if column.kind == EMPTY:
        return column.problem or f"unexpected value {value!r}"
    if not value.strip():
        return f"no {name}"
    what = {
        INT32: "an integer",
        INT64: "an integer",
        FLOAT32: "a number",
        TIME: "a time (integer seconds since 1970 or ISO 8601 like 2024-05-01T12:00:00)",
    }.get(column.kind, "valid")
    if column.kind == INT32 and re.match(_INT_RE, value):
        return f"{name} {value.strip()} does not fit a 32-bit integer"
    return f"{name} {value!r} is not {what}"


def read_parquet(path: Path, columns: Mapping[str, Column], budget: BadRowBudget) -> pa.Table:
    """Like read_delimited for a Parquet file; bad rows are named by 1-based row number.

    Parquet columns are typed already; a column of the wrong type is an error
    for the whole file, a missing required value a bad row.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    missing = [name for name in columns if name not in schema.names]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(repr(m) for m in missing)} (the file has: {', '.join(schema.names)}); "
            f"expected columns {', '.join(columns)}"
        )
    # Text ids are read dictionary-encoded (4 bytes a row), as the delimited reader codes them.
    text_ids = [name for name, c in columns.items() if c.kind == ID and _is_text(schema.field(name).type)]
    table = pq.read_table(path, columns=list(columns), read_dictionary=text_ids)
    bad = np.zeros(table.num_rows, dtype=bool)
    reasons: list[BadRow] = []
    out = {}
    for name, column in columns.items():
        values = _parquet_column(path, name, column, table.column(name))
        if column.required:
            absent_np = _absent(values) & ~bad
            for row in np.flatnonzero(absent_np)[:SHOWN_BAD_ROWS].tolist():
                reasons.append(BadRow(path, row + 1, f"no {name}"))
            bad |= absent_np
        out[name] = values
    del table
    reasons.sort(key=lambda r: r.line)
    budget.spend(path, reasons[:SHOWN_BAD_ROWS], int(bad.sum()))
    if not bad.any():
        return pa.table(out)
    keep = pa.array(~bad)
    return pa.table({name: values.filter(keep) for name, values in out.items()})


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _absent(values: pa.ChunkedArray) -> np.ndarray:
    """bool [n]: null, or blank text (looked up once per dictionary entry for dictionary columns)."""
    parts = []
    for chunk in values.chunks:
        missing = chunk.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_dictionary(chunk.type):
            blank = pc.equal(pc.utf8_trim_whitespace(chunk.dictionary), "").to_numpy(zero_copy_only=False)
            if blank.any():
                indices = pc.fill_null(chunk.indices, 0).to_numpy(zero_copy_only=False)
                missing |= blank[indices]
        elif _is_text(chunk.type):
            missing |= pc.fill_null(pc.equal(pc.utf8_trim_whitespace(chunk), ""), False).to_numpy(zero_copy_only=False)
        parts.append(missing)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _parquet_column(path: Path, name: str, column: Column, values: pa.ChunkedArray) -> pa.ChunkedArray:
    kind, t = column.kind, values.type
    if kind == ID:
        if pa.types.is_dictionary(t) and _is_text(t.value_type):
            return values.cast(pa.dictionary(pa.int32(), pa.string()))
        if pa.types.is_integer(t):
            return values  # coded by value (trainer.readers.assemble.encode_ids), written as decimal text
        if _is_text(t):
            return values.cast(pa.string())
        raise DataError(f"{path}: column {name!r} has type {t}; expected text or integers")
    if kind == STRING:
        if pa.types.is_dictionary(t):
            values = values.cast(t.value_type)
            t = values.type
        if not (_is_text(t) or pa.types.is_integer(t)):
            raise DataError(f"{path}: column {name!r} has type {t}; expected text or integers")
        return values.cast(pa.string())
    if kind == TIME:
        if pa.types.is_integer(t):
            return values.cast(pa.int64())
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            return seconds(values)
        raise DataError(f"{path}: column {name!r} has type {t}; expected integer seconds or a timestamp")
    if kind in (INT32, INT64, FLOAT32):
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise DataError(f"{path}: column {name!r} has type {t}; expected numbers")
        return values.cast(_FAST_TYPES[kind])
    raise DataError(f"{path}: column kind {kind} cannot be read from Parquet")


def files_sha256(paths: Sequence[Path]) -> str:
    """sha256 over the files' bytes, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()
