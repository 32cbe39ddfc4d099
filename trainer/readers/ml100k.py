"""MovieLens 100k as GroupLens publishes it (``ml-100k.zip``).

Files::

    u.data   user<TAB>item<TAB>rating<TAB>timestamp          one rating per line
    u.item   id|title|release date|video date|url|19 flags   latin-1
    u.user   id|age|gender|occupation|zip
    u.genre  name|bit                                        the flags' order

Items: ``genres`` (multi, in u.genre order), ``year`` (numeric, from the
release date, else the title), ``title`` (text, without the year). Users:
``age``, ``gender``, ``occupation``, ``zip`` (2-character prefix).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from trainer.dataset import MAX_GENRES, Dataset, Table
from trainer.readers import movielens
from trainer.readers.assemble import Catalog, Log, build_dataset, flags_feature, log_columns, to_numpy
from trainer.readers.tables import INT32, INT64, STRING, BadRowBudget, Column, DataError, Delimited, read_delimited

LAYOUT = "ml-100k"
FILES = ("u.data", "u.item", "u.user", "u.genre")
_PIPES = Delimited(delimiter="|", header=False, encoding="latin1", quoting=False)


def read_genres(path: Path, budget: BadRowBudget) -> list[str]:
    """u.genre -> genre names ordered by bit number (0..n-1, each exactly once)."""
    table = read_delimited(
        path, dataclasses.replace(_PIPES, names=("name", "bit")),
        {"name": Column(STRING), "bit": Column(INT32)}, budget,
    )  # fmt: skip
    bits = table.column("bit").to_numpy()
    if not len(bits) or sorted(bits.tolist()) != list(range(len(bits))):
        raise DataError(f"{path}: genre bits must be 0..n-1 each once, got {sorted(bits.tolist())}")
    if len(bits) > MAX_GENRES:
        raise DataError(f"{path}: {len(bits)} genres; at most {MAX_GENRES} fit the uint32 genre mask")
    names = np.asarray(table.column("name").to_pylist(), dtype=object)
    return names[np.argsort(bits)].tolist()


def read_items(path: Path, genres: list[str], budget: BadRowBudget) -> Catalog:
    flags = tuple(f"genre{g}" for g in range(len(genres)))
    layout = dataclasses.replace(_PIPES, names=("id", "title", "released", "video_released", "url", *flags))
    columns = {
        "id": Column(STRING),
        "title": Column(STRING, required=False),
        "released": Column(STRING, required=False),
        "video_released": Column(STRING, required=False),
        "url": Column(STRING, required=False),
        **{flag: Column(INT32) for flag in flags},
    }
    table = read_delimited(path, layout, columns, budget)
    if table.num_rows == 0:
        raise DataError(f"{path}: no movies")
    flag_matrix = np.stack([table.column(f).to_numpy() for f in flags], axis=1)
    if not np.isin(flag_matrix, (0, 1)).all():
        row = int(np.flatnonzero(~np.isin(flag_matrix, (0, 1)).all(axis=1))[0])
        raise DataError(f"{path}: data row {row + 1}: genre flags must be 0 or 1, got {flag_matrix[row].tolist()}")
    ids = np.asarray(table.column("id").to_pylist(), dtype=str)
    movielens.check_unique(path, ids, "movie id")
    titles = pc.utf8_trim_whitespace(pc.fill_null(table.column("title"), "").combine_chunks())
    features = (
        flags_feature(movielens.GENRES, flag_matrix, genres),
        *movielens.title_features(titles, table.column("released").combine_chunks()),
    )
    return Catalog(path, Table(ids=ids, features=features), titles=np.asarray(titles.to_pylist(), dtype=str))


def read_users(path: Path, budget: BadRowBudget) -> Catalog:
    layout = dataclasses.replace(_PIPES, names=("id", "age", "gender", "occupation", "zip"))
    columns = {
        "id": Column(STRING),
        "age": Column(INT32),
        "gender": Column(STRING, required=False),
        "occupation": Column(STRING, required=False),
        "zip": Column(STRING, required=False),
    }
    table = read_delimited(path, layout, columns, budget)
    if table.num_rows == 0:
        raise DataError(f"{path}: no users")
    ids = np.asarray(table.column("id").to_pylist(), dtype=str)
    movielens.check_unique(path, ids, "user id")
    features = movielens.demographic_features(
        *(table.column(c).combine_chunks() for c in ("age", "gender", "occupation", "zip"))
    )
    return Catalog(path, Table(ids=ids, features=features))


def read_ratings(path: Path, budget: BadRowBudget) -> Log:
    """A u.data-format file: user, item, rating (integer, validated, not kept: every rating
    is one interaction of weight 1), timestamp."""
    layout = Delimited(delimiter="\t", header=False, names=("user", "item", "rating", "timestamp"), quoting=False)
    columns = {"user": Column(INT32), "item": Column(INT32), "rating": Column(INT32), "timestamp": Column(INT64)}
    table = read_delimited(path, layout, columns, budget)
    users, items, stamps = log_columns(path, table, "user", "item", "timestamp")
    del table  # frees the rating column before the timestamps are copied
    return Log(path, users, items, timestamps=to_numpy(stamps))


def read(
    data_dir: Path,
    budget: BadRowBudget,
    *,
    interactions_file: Path | None = None,
    allow_unknown_items: bool = False,
    allow_unknown_users: bool = False,
) -> tuple[Dataset, dict[str, int]]:
    files = {
        "interactions": interactions_file or data_dir / "u.data",
        "items": data_dir / "u.item",
        "users": data_dir / "u.user",
        "genres": data_dir / "u.genre",
    }
    genres = read_genres(files["genres"], budget)
    items = read_items(files["items"], genres, budget)
    users = read_users(files["users"], budget)
    log = read_ratings(files["interactions"], budget)
    return build_dataset(
        LAYOUT, log, items, users, genre_feature=movielens.GENRES, files=files, bad_rows=budget.count,
        allow_unknown_items=allow_unknown_items, allow_unknown_users=allow_unknown_users,
    )  # fmt: skip
