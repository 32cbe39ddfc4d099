"""From pyarrow columns to a ``trainer.dataset.Dataset``: id coding, feature columns, the catalog join.

Every step is a pyarrow compute kernel or a numpy array operation over whole
columns; per-row Python never runs over the log. The log's id columns become
int32 row codes as soon as they are read (``pyarrow.compute.dictionary_encode``
on the ids, then ``index_in`` of the few distinct ids against the users/items
tables), so the strings are gone before the next column is touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.dataset import CATEGORICAL, MULTI, NUMERIC, TEXT, Csr, Dataset, Feature, Interactions, Table
from trainer.readers.tables import DataError, GrowingDictionary, files_sha256

# Title tokens: runs of lower-case letters and digits (the rest separates them).
TOKEN_SEPARATOR_PATTERN = r"[^a-z0-9]+"
# How many unknown ids an error message names.
SHOWN_IDS = 5


def _strings(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A (small) pyarrow column -> numpy str array; nulls -> ''."""
    values = pc.fill_null(values.cast(pa.string()), "")
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=str) if len(values) else np.array([], dtype=str)


def encode_ids(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """An id column (integers, strings or dictionary-encoded strings) -> (int32 codes [n], str distinct ids [k]).

    Codes index the distinct ids, which are sorted (numerically for integer
    ids), so the numbering does not depend on the order of the file.
    """
    if isinstance(values, pa.ChunkedArray) and pa.types.is_integer(values.type) and len(values):
        extremes = pc.min_max(values)
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        # A lookup table over the id range is several times faster than hashing (ids are dense in
        # practice); chunk by chunk, so no temporary array is as long as the log.
        if high - low < max(1 << 20, 4 * len(values)):
            present = np.zeros(high - low + 1, dtype=bool)
            for chunk in values.chunks:
                present[chunk.to_numpy() - low] = True
            distinct = np.flatnonzero(present)
            lookup = np.zeros(len(present), dtype=np.int32)
            lookup[distinct] = np.arange(len(distinct), dtype=np.int32)
            codes, start = np.empty(len(values), dtype=np.int32), 0
            for chunk in values.chunks:
                codes[start : start + len(chunk)] = lookup[chunk.to_numpy() - low]
                start += len(chunk)
            return codes, (distinct + low).astype(str)
    if isinstance(values, pa.ChunkedArray):
        if pa.types.is_dictionary(values.type):
            merged = GrowingDictionary()
            for chunk in values.chunks:
                merged.add_encoded(chunk.cast(pa.dictionary(pa.int32(), pa.string())))
            values = merged.column()
        else:
            values = pc.dictionary_encode(values.combine_chunks())
    elif not pa.types.is_dictionary(values.type):
        values = pc.dictionary_encode(values)
    codes = values.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    dictionary = values.dictionary
    if pa.types.is_integer(dictionary.type):
        order = np.argsort(dictionary.to_numpy(zero_copy_only=False), kind="stable")
    else:
        order = np.argsort(_strings(dictionary), kind="stable")
    # Only ids that occur (a dictionary may hold values of skipped rows), in sorted order.
    used = np.zeros(len(dictionary), dtype=bool)
    used[codes] = True
    order = order[used[order]]
    rank = np.full(len(dictionary), -1, dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return rank[codes], _strings(dictionary.take(pa.array(order)))


def rows_of(ids: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
    """int32 [len(ids)]: the row of each id in ``table_ids``, -1 where absent."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int32)
    found = pc.index_in(pa.array(ids, pa.string()), value_set=pa.array(table_ids, pa.string()))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int32)


# --------------------------------------------------------------------------- features


def _codes_in(values: pa.Array, vocab: np.ndarray) -> np.ndarray:
    """int32 1-based codes of ``values`` in ``vocab``; 0 where null or absent."""
    found = pc.index_in(values, value_set=pa.array(vocab, pa.string()))
    return (pc.fill_null(found, -1).to_numpy(zero_copy_only=False) + 1).astype(np.int32)


def _present(values: pa.Array) -> pa.Array:
    """Trimmed strings, null where missing or blank."""
    trimmed = pc.utf8_trim_whitespace(values.cast(pa.string()))
    return pc.if_else(pc.equal(trimmed, ""), None, trimmed)


def categorical_feature(name: str, values: pa.Array, vocab: Sequence[str] | None = None) -> Feature:
    """One value per row; vocab = the sorted distinct values unless given. Missing -> 0."""
    values = _present(values)
    if vocab is None:
        vocab = np.sort(_strings(pc.drop_null(pc.unique(values))))
    vocab = np.asarray(vocab, dtype=str)
    return Feature(name, CATEGORICAL, vocab, codes=_codes_in(values, vocab))


def _list_feature(
    name: str, kind: str, lists: pa.ListArray, vocab: Sequence[str] | None, ignore: Sequence[str]
) -> Feature:
    """A list column -> Csr of codes, dropping blank and ``ignore`` entries."""
    lists = pc.fill_null(lists, pa.scalar([], lists.type)) if lists.null_count else lists
    offsets = lists.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = offsets - offsets[0]
    flat = _present(lists.flatten())
    keep = pc.is_valid(flat)
    if ignore:
        ignored = pc.fill_null(pc.is_in(flat, value_set=pa.array(list(ignore), pa.string())), False)
        keep = pc.and_(keep, pc.invert(ignored))
    keep_np = keep.to_numpy(zero_copy_only=False)
    kept = flat.filter(keep)
    if vocab is None:
        vocab = np.sort(_strings(pc.unique(kept)))
    vocab = np.asarray(vocab, dtype=str)
    codes = _codes_in(kept, vocab)
    kept_before = np.concatenate([[0], np.cumsum(keep_np, dtype=np.int64)])
    splits = kept_before[offsets]
    if (codes == 0).any():
        raise ValueError(f"feature {name!r}: values outside the given vocabulary")
    return Feature(name, kind, vocab, lists=Csr(splits=splits, values=codes))


def multi_feature(
    name: str, values: pa.Array, separator: str, vocab: Sequence[str] | None = None, ignore: Sequence[str] = ()
) -> Feature:
    """Several values per row in one separated string ("Action|Comedy"); vocab sorted unless given."""
    values = pc.fill_null(values.cast(pa.string()), "")
    return _list_feature(name, MULTI, pc.split_pattern(values, separator), vocab, ignore)


def text_feature(name: str, values: pa.Array) -> Feature:
    """Lower-cased runs of letters and digits ("Toy Story 2" -> toy, story, 2); vocab sorted."""
    values = pc.utf8_lower(pc.fill_null(values.cast(pa.string()), ""))
    return _list_feature(name, TEXT, pc.split_pattern_regex(values, TOKEN_SEPARATOR_PATTERN), None, ())


def numeric_feature(name: str, values: pa.Array | np.ndarray) -> Feature:
    """float32, NaN where missing."""
    if not isinstance(values, np.ndarray):
        values = pc.fill_null(values.cast(pa.float32()), np.nan).to_numpy(zero_copy_only=False)
    return Feature(name, NUMERIC, np.array([], dtype=str), values=np.asarray(values, dtype=np.float32))


def flags_feature(name: str, flags: np.ndarray, vocab: Sequence[str]) -> Feature:
    """A 0/1 matrix [rows, len(vocab)] (e.g. u.item's genre flags) -> a multi feature in vocab order."""
    rows, columns = np.nonzero(flags)
    splits = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(flags)))]).astype(np.int64)
    codes = (columns + 1).astype(np.int32)
    return Feature(name, MULTI, np.asarray(vocab, dtype=str), lists=Csr(splits=splits, values=codes))


def with_missing_rows(table: Table, new_ids: np.ndarray) -> Table:
    """``table`` plus rows for ``new_ids`` whose every feature is missing."""
    if len(new_ids) == 0:
        return table
    extra = len(new_ids)
    features = []
    for f in table.features:
        if f.kind == CATEGORICAL:
            f = dataclasses.replace(f, codes=np.concatenate([f.codes, np.zeros(extra, np.int32)]))
        elif f.kind == NUMERIC:
            f = dataclasses.replace(f, values=np.concatenate([f.values, np.full(extra, np.nan, np.float32)]))
        else:
            splits = np.concatenate([f.lists.splits, np.full(extra, f.lists.splits[-1], np.int64)])
            f = dataclasses.replace(f, lists=Csr(splits=splits, values=f.lists.values))
        features.append(f)
    return Table(ids=np.concatenate([table.ids, np.asarray(new_ids, dtype=str)]), features=tuple(features))


# --------------------------------------------------------------------------- the data set


@dataclasses.dataclass
class Log:
    """The interactions as read: id columns (any type) and optional time and weight columns.

    Not frozen: build_dataset drops each id column once it is coded, so that the
    strings or raw ids do not stay alive beside the codes.
    """

    path: Path
    users: pa.ChunkedArray | None
    items: pa.ChunkedArray | None
    timestamps: np.ndarray | None = None  # int64 seconds
    weights: np.ndarray | None = None  # float32


def log_columns(path: Path, table: pa.Table, *names: str | None) -> list[pa.ChunkedArray | None]:
    """The named columns of a freshly read log (None for a None name); DataError if it has no rows.

    The caller then drops the table, so that the columns not taken (a rating, checked but not
    kept) are freed before the timestamps are copied out.
    """
    if table.num_rows == 0:
        raise DataError(f"{path}: no interactions")
    return [table.column(name) if name else None for name in names]


def to_numpy(column: pa.ChunkedArray | None) -> np.ndarray | None:
    """A log column without nulls as one contiguous numpy array (None stays None)."""
    _release_arrow_memory()  # the columns the caller just dropped, before this copy adds to the peak
    return None if column is None else column.to_numpy()


@dataclasses.dataclass(frozen=True)
class Catalog:
    """The items or users read from their own file."""

    path: Path
    table: Table
    titles: np.ndarray | None = None  # str, items only


def _join(
    codes: np.ndarray,
    distinct: np.ndarray,
    catalog: Catalog | None,
    *,
    role: str,
    log_path: Path,
    allow_unknown: bool,
    flag: str,
) -> tuple[np.ndarray, Table, int]:
    """Log codes -> rows of the table (the catalog's, extended by unknown ids when allowed).

    Returns (int32 rows [n], table, number of ids added without features).
    """
    if catalog is None:
        return codes, Table(ids=distinct), 0
    rows = rows_of(distinct, catalog.table.ids)
    unknown = np.flatnonzero(rows < 0)
    if len(unknown) and not allow_unknown:
        first_row = int(np.flatnonzero(np.isin(codes, unknown[:1]))[0]) + 1
        named = ", ".join(repr(x) for x in distinct[unknown[:SHOWN_IDS]].tolist())
        more = f" and {len(unknown) - SHOWN_IDS} more" if len(unknown) > SHOWN_IDS else ""
        raise DataError(
            f"{log_path}: {len(unknown)} {role} {'ids are' if len(unknown) > 1 else 'id is'} not in "
            f"{catalog.path}: {named}{more} "
            f"(the first in data row {first_row}); add them to {catalog.path.name}, or pass {flag} "
            f"to train them as {role}s without features"
        )
    table = catalog.table
    if len(unknown):
        rows[unknown] = len(table) + np.arange(len(unknown), dtype=np.int32)
        table = with_missing_rows(table, distinct[unknown])
    return rows[codes], table, len(unknown)


def _release_arrow_memory() -> None:
    """Returns freed pyarrow buffers to the system now (the allocator would keep them a while)."""
    pa.default_memory_pool().release_unused()


def build_dataset(
    layout: str,
    log: Log,
    items: Catalog | None,
    users: Catalog | None,
    *,
    genre_feature: str | None,
    files: Mapping[str, Path],
    bad_rows: int,
    allow_unknown_items: bool = False,
    allow_unknown_users: bool = False,
) -> tuple[Dataset, dict[str, int]]:
    """Joins the log to the catalog and the users; returns the Dataset and counts worth reporting.

    Without an items (users) file, the table is the log's distinct ids in order
    of first appearance, without features.
    """
    user_codes, user_ids = encode_ids(log.users)
    log.users = None
    _release_arrow_memory()
    user_rows, user_table, unknown_users = _join(
        user_codes, user_ids, users, role="user", log_path=log.path,
        allow_unknown=allow_unknown_users, flag="--allow-unknown-users",
    )  # fmt: skip
    del user_codes
    item_codes, item_ids = encode_ids(log.items)
    log.items = None
    _release_arrow_memory()
    item_rows, item_table, unknown_items = _join(
        item_codes, item_ids, items, role="item", log_path=log.path,
        allow_unknown=allow_unknown_items, flag="--allow-unknown-items",
    )  # fmt: skip
    del item_codes
    n = len(user_rows)
    interactions = Interactions(
        users=user_rows.astype(np.int32, copy=False),
        items=item_rows.astype(np.int32, copy=False),
        timestamps=log.timestamps if log.timestamps is not None else np.zeros(n, dtype=np.int64),
        weights=log.weights if log.weights is not None else np.ones(n, dtype=np.float32),
    )
    # object first: the ids' fixed-width str dtype would cut longer titles
    titles = item_table.ids.astype(object)
    if items is not None and items.titles is not None:
        titles[: len(items.titles)] = items.titles
        titles = np.where(titles == "", item_table.ids, titles)
    dataset = Dataset(
        layout=layout,
        interactions=interactions,
        users=user_table,
        items=item_table,
        item_titles=titles.astype(str),
        genre_feature=genre_feature,
        files=dict(files),
        sha256=files_sha256(list(files.values())),
        bad_rows=bad_rows,
    )
    return dataset, {"unknown_items": unknown_items, "unknown_users": unknown_users}
