"""MovieLens 20M, 25M, 32M, latest and latest-small as GroupLens publishes them: CSV with a header.

Files::

    ratings.csv  userId,movieId,rating,timestamp
    movies.csv   movieId,title,genres   titles quoted where they hold commas;
                                        genres '|'-separated, "(no genres listed)" = none
    tags.csv, links.csv, genome-*.csv   (not read)

No users file: users have no features, only their history. Items: ``genres``,
``year`` (from the title's "(1995)"), ``title`` (text, without the year).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from trainer.dataset import Dataset, Table
from trainer.readers import movielens
from trainer.readers.assemble import Catalog, Log, build_dataset, log_columns, multi_feature, to_numpy
from trainer.readers.ml_dat import NO_GENRES
from trainer.readers.tables import (
    FLOAT32,
    INT32,
    INT64,
    STRING,
    BadRowBudget,
    Column,
    DataError,
    Delimited,
    read_delimited,
)

# The releases' own folder names, kept as the Dataset's layout when the folder has one of them.
RELEASE_FOLDER = re.compile(r"^ml-(20m|25m|32m|latest|latest-small)$")
LAYOUT = "ml-csv"


def read_ratings(path: Path, budget: BadRowBudget) -> Log:
    """ratings.csv; the rating is checked to be a number and not kept (every rating is one interaction)."""
    columns = {"userId": Column(INT32), "movieId": Column(INT32), "rating": Column(FLOAT32), "timestamp": Column(INT64)}
    table = read_delimited(path, Delimited(), columns, budget)
    users, items, stamps = log_columns(path, table, "userId", "movieId", "timestamp")
    del table  # frees the rating column before the timestamps are copied
    return Log(path, users, items, timestamps=to_numpy(stamps))


def read_movies(path: Path, budget: BadRowBudget) -> Catalog:
    columns = {
        "movieId": Column(STRING),
        "title": Column(STRING, required=False),
        "genres": Column(STRING, required=False),
    }
    table = read_delimited(path, Delimited(), columns, budget)
    if table.num_rows == 0:
        raise DataError(f"{path}: no movies")
    ids = np.asarray(table.column("movieId").to_pylist(), dtype=str)
    movielens.check_unique(path, ids, "movieId")
    titles = table.column("title").combine_chunks()
    features = (
        multi_feature(movielens.GENRES, table.column("genres").combine_chunks(), "|", ignore=(NO_GENRES,)),
        *movielens.title_features(titles),
    )
    title_strings = np.asarray([t.strip() if t else "" for t in titles.to_pylist()], dtype=str)
    return Catalog(path, Table(ids=ids, features=features), titles=title_strings)


def read(
    data_dir: Path,
    budget: BadRowBudget,
    *,
    interactions_file: Path | None = None,
    allow_unknown_items: bool = False,
    allow_unknown_users: bool = False,
) -> tuple[Dataset, dict[str, int]]:
    files = {"interactions": interactions_file or data_dir / "ratings.csv", "items": data_dir / "movies.csv"}
    items = read_movies(files["items"], budget)
    log = read_ratings(files["interactions"], budget)
    name = data_dir.resolve().name
    layout = name if RELEASE_FOLDER.match(name) else LAYOUT
    return build_dataset(
        layout, log, items, None, genre_feature=movielens.GENRES, files=files, bad_rows=budget.count,
        allow_unknown_items=allow_unknown_items, allow_unknown_users=allow_unknown_users,
    )  # fmt: skip
