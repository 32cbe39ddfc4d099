"""MovieLens 1M and 10M as GroupLens publishes them: '::'-separated ``.dat`` files.

Files::

    ratings.dat  UserID::MovieID::Rating::Timestamp               (10M: half-star ratings)
    movies.dat   MovieID::Title::Genres    genres '|'-separated   (1M: latin-1; titles may hold ':')
    users.dat    UserID::Gender::Age::Occupation::Zip-code        (1M only)
    tags.dat     (10M; not read)

pyarrow's CSV reader takes a one-character delimiter, so the '::' files are
read with ':' and every second column must be empty (a null-typed column
accepts nothing else). movies.dat cannot be read that way, its titles may
hold ':' ("Star Wars: Episode IV"), so it is split in Python: it is small
(thousands of lines) and each line splits at its first and last '::'.

Features as for MovieLens 100k: items ``genres``, ``year``, ``title``; users
(1M) ``age`` (the age group's lower bound: 1 = under 18, 18, 25, 35, 45, 50,
56), ``gender``, ``occupation`` (the release's 21 named occupations), ``zip``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa

from trainer.dataset import Dataset, Table
from trainer.readers import movielens
from trainer.readers.assemble import (
    Catalog,
    Log,
    build_dataset,
    categorical_feature,
    log_columns,
    multi_feature,
    to_numpy,
)
from trainer.readers.tables import (
    EMPTY,
    FLOAT32,
    INT32,
    INT64,
    STRING,
    BadRow,
    BadRowBudget,
    Column,
    DataError,
    Delimited,
    read_delimited,
)

# Occupation codes 0..20 of users.dat, named as in the 1M release's README.
OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "k-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
_COLONS = Delimited(delimiter=":", header=False, quoting=False, encoding="latin1", double_colon=True)
_SEPARATOR = Column(EMPTY, problem="a single ':' where '::' separates fields")


def _double_colon_columns(columns: dict[str, Column]) -> tuple[tuple[str, ...], dict[str, Column]]:
    """Column names and specs for a '::' file read with ':' (an EMPTY column after each field but the last)."""
    names, specs = [], {}
    for i, (name, column) in enumerate(columns.items()):
        if i:
            names.append(f"separator{i}")
            specs[f"separator{i}"] = _SEPARATOR
        names.append(name)
        specs[name] = column
    return tuple(names), specs


def read_double_colon(path: Path, columns: dict[str, Column], budget: BadRowBudget) -> pa.Table:
    names, specs = _double_colon_columns(columns)
    return read_delimited(path, dataclasses.replace(_COLONS, names=names), specs, budget)


def read_ratings(path: Path, budget: BadRowBudget) -> Log:
    """ratings.dat; the rating is checked to be a number and not kept (every rating is one interaction)."""
    columns = {"user": Column(INT32), "item": Column(INT32), "rating": Column(FLOAT32), "timestamp": Column(INT64)}
    table = read_double_colon(path, columns, budget)
    users, items, stamps = log_columns(path, table, "user", "item", "timestamp")
    del table  # frees the rating column before the timestamps are copied
    return Log(path, users, items, timestamps=to_numpy(stamps))


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # the 1M release's movies.dat


def read_movies(path: Path, budget: BadRowBudget) -> Catalog:
    """movies.dat: each line splits at its first and last '::'."""
    ids, titles, genres, bad = [], [], [], []
    for number, line in enumerate(_decode(path).splitlines(), start=1):
        if not line.strip():
            continue
        first, last = line.find("::"), line.rfind("::")
        movie_id = line[:first].strip()
        if first < 0 or first == last:
            bad.append(BadRow(path, number, "expected MovieID::Title::Genres"))
        elif not movie_id.isdigit():
            bad.append(BadRow(path, number, f"movie id {movie_id!r} is not a positive integer"))
        else:
            ids.append(movie_id)
            titles.append(line[first + 2 : last].strip())
            genres.append(line[last + 2 :])
    budget.spend(path, bad, len(bad))
    if not ids:
        raise DataError(f"{path}: no movies")
    ids_array = np.asarray(ids, dtype=str)
    movielens.check_unique(path, ids_array, "movie id")
    title_array = pa.array(titles, pa.string())
    features = (
        multi_feature(movielens.GENRES, pa.array(genres, pa.string()), "|", ignore=(NO_GENRES,)),
        *movielens.title_features(title_array),
    )
    return Catalog(path, Table(ids=ids_array, features=features), titles=np.asarray(titles, dtype=str))


def read_users(path: Path, budget: BadRowBudget) -> Catalog:
    """users.dat (1M): UserID::Gender::Age::Occupation::Zip-code."""
    table = read_double_colon(
        path,
        {
            "id": Column(STRING),
            "gender": Column(STRING, required=False),
            "age": Column(INT32, required=False),
            "occupation": Column(INT32, required=False),
            "zip": Column(STRING, required=False),
        },
        budget,
    )
    if table.num_rows == 0:
        raise DataError(f"{path}: no users")
    ids = np.asarray(table.column("id").to_pylist(), dtype=str)
    movielens.check_unique(path, ids, "user id")
    codes = table.column("occupation").to_numpy(zero_copy_only=False)
    known = ~np.isnan(codes) & (codes >= 0) & (codes < len(OCCUPATIONS))
    if (~np.isnan(codes) & ~known).any():
        row = int(np.flatnonzero(~np.isnan(codes) & ~known)[0])
        raise DataError(f"{path}: data row {row + 1}: occupation {int(codes[row])} is not one of the codes 0..20")
    names = np.where(known, np.asarray(OCCUPATIONS)[np.where(known, codes, 0).astype(int)], "")
    occupation = categorical_feature(movielens.OCCUPATION, pa.array(names), vocab=OCCUPATIONS)
    features = movielens.demographic_features(
        table.column("age").combine_chunks(), table.column("gender").combine_chunks(), occupation,
        table.column("zip").combine_chunks(),
    )  # fmt: skip
    return Catalog(path, Table(ids=ids, features=features))


def read(
    data_dir: Path,
    budget: BadRowBudget,
    *,
    layout: str,
    interactions_file: Path | None = None,
    allow_unknown_items: bool = False,
    allow_unknown_users: bool = False,
) -> tuple[Dataset, dict[str, int]]:
    files = {"interactions": interactions_file or data_dir / "ratings.dat", "items": data_dir / "movies.dat"}
    if (data_dir / "users.dat").is_file():
        files["users"] = data_dir / "users.dat"
    items = read_movies(files["items"], budget)
    users = read_users(files["users"], budget) if "users" in files else None
    log = read_ratings(files["interactions"], budget)
    return build_dataset(
        layout, log, items, users, genre_feature=movielens.GENRES, files=files, bad_rows=budget.count,
        allow_unknown_items=allow_unknown_items, allow_unknown_users=allow_unknown_users,
    )  # fmt: skip
