"""MovieLens 100k in the GroupLens layout: locate, download once, parse, split.

Files read (all from one data directory, except that the ratings may come from
any file in the ``u.data`` format)::

    u.data   user<TAB>item<TAB>rating<TAB>timestamp          one rating per line
    u.item   id|title|release date|video date|url|19 flags   latin-1
    u.user   id|age|gender|occupation|zip
    u.genre  name|bit                                        the flags' order

Every parse error is a ``DataError`` naming the file and the 1-based line, so
the CLI can print one actionable line instead of a traceback. Nothing here
imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from trainer.config import TrainConfig

# Locating and downloading moved to trainer.readers (shared by every layout); re-exported for old callers.
from trainer.readers.download import (  # noqa: F401
    ML100K_FOLDER,
    ML100K_MD5,
    ML100K_URL,
    REQUIRED_FILES,
    default_cache_dir,
    fetch_ml100k,
    resolve_data_dir,
)
from trainer.readers.tables import DataError  # noqa: F401

_DATE_YEAR_RE = re.compile(r"(\d{4})\s*$")  # "01-Jan-1995"
_TITLE_YEAR_RE = re.compile(r"\s*\((\d{4})\)\s*$")  # "Toy Story (1995)"


@dataclasses.dataclass(frozen=True)
class Ratings:
    """Interactions, one row per rating line, in file order.

    users, items: str [n] (MovieLens ids as written, e.g. "196", "242");
    ratings: int16 [n]; timestamps: int64 [n].
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def take(self, rows: np.ndarray) -> Ratings:
        """The ratings at the given row numbers (int array), in that order."""
        return Ratings(self.users[rows], self.items[rows], self.ratings[rows], self.timestamps[rows])


@dataclasses.dataclass(frozen=True)
class Items:
    """The movie catalog, in u.item order.

    ids, titles: str [n]; genres: uint32 [n] bitmask (bit g <=> genre g of
    u.genre); years: int32 [n] release year, 0 when unknown.
    """

    ids: np.ndarray
    titles: np.ndarray
    genres: np.ndarray
    years: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class Users:
    """User demographics, in u.user order.

    ids, genders, occupations, zips: str [n]; ages: int32 [n].
    """

    ids: np.ndarray
    ages: np.ndarray
    genders: np.ndarray
    occupations: np.ndarray
    zips: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class MovieLens:
    """One dataset: ratings plus the catalog and users they refer to."""

    ratings: Ratings
    items: Items
    users: Users
    genres: tuple[str, ...]
    files: Mapping[str, Path]  # role ("ratings", "items", "users", "genres") -> path
    sha256: str  # over the ratings, item and user files, see ``data_sha256``


# --------------------------------------------------------------------------- parsing


def _read_lines(path: Path, encoding: str) -> list[str]:
    try:
        return path.read_text(encoding=encoding).splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc


def read_genres(path: Path) -> tuple[str, ...]:
    """u.genre -> genre names ordered by bit number (0..n-1, each exactly once)."""
    by_bit: dict[int, str] = {}
    for lineno, line in enumerate(_read_lines(path, "latin-1"), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
            raise DataError(f"{path}:{lineno}: expected 'name|bit', got {line!r}")
        by_bit[int(parts[1])] = parts[0]
    if sorted(by_bit) != list(range(len(by_bit))) or not by_bit:
        raise DataError(f"{path}: genre bits must be 0..n-1 each once, got {sorted(by_bit)}")
    if len(by_bit) > 32:
        raise DataError(f"{path}: {len(by_bit)} genres; at most 32 fit the uint32 genre mask")
    return tuple(by_bit[b] for b in range(len(by_bit)))


def read_items(path: Path, genre_count: int) -> Items:
    """u.item (latin-1, '|'-separated, ``genre_count`` trailing 0/1 flags) -> Items."""
    ids, titles, masks, years = [], [], [], []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(path, "latin-1"), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 5 + genre_count:
            raise DataError(f"{path}:{lineno}: expected {5 + genre_count} '|'-separated fields, got {len(parts)}")
        item_id, title, released = parts[0].strip(), parts[1].strip(), parts[2].strip()
        flags = parts[5:]
        if not item_id.isdigit():
            raise DataError(f"{path}:{lineno}: movie id {item_id!r} is not a positive integer")
        if item_id in seen:
            raise DataError(f"{path}:{lineno}: movie id {item_id} already defined on line {seen[item_id]}")
        if any(f not in ("0", "1") for f in flags):
            raise DataError(f"{path}:{lineno}: genre flags must be 0 or 1, got {'|'.join(flags)!r}")
        seen[item_id] = lineno
        ids.append(item_id)
        titles.append(title)
        masks.append(sum(1 << g for g, f in enumerate(flags) if f == "1"))
        year = _DATE_YEAR_RE.search(released) or _TITLE_YEAR_RE.search(title)
        years.append(int(year.group(1)) if year else 0)
    if not ids:
        raise DataError(f"{path}: no movies")
    return Items(
        ids=np.array(ids, dtype=str),
        titles=np.array(titles, dtype=str),
        genres=np.array(masks, dtype=np.uint32),
        years=np.array(years, dtype=np.int32),
    )


def read_users(path: Path) -> Users:
    """u.user ('|'-separated id|age|gender|occupation|zip) -> Users."""
    rows: list[tuple[str, int, str, str, str]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(path, "latin-1"), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5:
            raise DataError(f"{path}:{lineno}: expected 5 '|'-separated fields (id|age|gender|occupation|zip), got {len(parts)}")
        user_id, age, gender, occupation, zip_code = parts
        if not user_id.isdigit():
            raise DataError(f"{path}:{lineno}: user id {user_id!r} is not a positive integer")
        if not age.isdigit():
            raise DataError(f"{path}:{lineno}: age {age!r} is not a non-negative integer")
        if user_id in seen:
            raise DataError(f"{path}:{lineno}: user id {user_id} already defined on line {seen[user_id]}")
        seen[user_id] = lineno
        rows.append((user_id, int(age), gender, occupation, zip_code))
    if not rows:
        raise DataError(f"{path}: no users")
    ids, ages, genders, occupations, zips = zip(*rows)
    return Users(
        ids=np.array(ids, dtype=str),
        ages=np.array(ages, dtype=np.int32),
        genders=np.array(genders, dtype=str),
        occupations=np.array(occupations, dtype=str),
        zips=np.array(zips, dtype=str),
    )


def read_ratings(path: Path, known_users: set[str], known_items: set[str]) -> Ratings:
    """A u.data-format file (whitespace-separated user item rating timestamp) -> Ratings.

    Every user and movie must be defined in u.user / u.item.
    """
    users, items, ratings, stamps = [], [], [], []
    for lineno, line in enumerate(_read_lines(path, "utf-8"), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise DataError(f"{path}:{lineno}: expected 4 fields 'user item rating timestamp', got {len(parts)}: {line!r}")
        user, item, rating, stamp = parts
        if user not in known_users:
            raise DataError(f"{path}:{lineno}: user {user!r} is not in u.user")
        if item not in known_items:
            raise DataError(f"{path}:{lineno}: movie {item!r} is not in u.item")
        try:
            ratings.append(int(rating))
            stamps.append(int(stamp))
        except ValueError:
            raise DataError(f"{path}:{lineno}: rating and timestamp must be integers, got {rating!r} {stamp!r}") from None
        users.append(user)
        items.append(item)
    if not users:
        raise DataError(f"{path}: no ratings")
    return Ratings(
        users=np.array(users, dtype=str),
        items=np.array(items, dtype=str),
        ratings=np.array(ratings, dtype=np.int16),
        timestamps=np.array(stamps, dtype=np.int64),
    )


def data_sha256(paths: list[Path]) -> str:
    """sha256 over the files' bytes, in the given order (ratings, items, users)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def load_movielens(data_dir: Path, ratings_file: Path | None = None) -> MovieLens:
    """Reads u.genre, u.item, u.user from ``data_dir`` and the ratings from
    ``ratings_file`` (default ``data_dir/u.data``)."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found; pass --data-dir or set ML100K_DIR")
    files = {
        "ratings": ratings_file or data_dir / "u.data",
        "items": data_dir / "u.item",
        "users": data_dir / "u.user",
        "genres": data_dir / "u.genre",
    }
    genres = read_genres(files["genres"])
    items = read_items(files["items"], len(genres))
    users = read_users(files["users"])
    ratings = read_ratings(files["ratings"], set(users.ids.tolist()), set(items.ids.tolist()))
    return MovieLens(
        ratings=ratings,
        items=items,
        users=users,
        genres=genres,
        files=files,
        sha256=data_sha256([files["ratings"], files["items"], files["users"]]),
    )


# --------------------------------------------------------------------------- splitting


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of row numbers 0..n-1 -> (kept, held_out), both int64.

    ``held_out`` has round(n * fraction) rows; both keep the shuffled order, like
    ``dataset.shuffle(seed=...)`` followed by take/skip.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(n * fraction))
    return order[: n - held], order[n - held :]


def title_without_year(title: str) -> str:
    """'Toy Story (1995)' -> 'Toy Story'."""
    return _TITLE_YEAR_RE.sub("", title)


@dataclasses.dataclass(frozen=True)
class Split:
    """Ratings split into fit / validation (both training data) and test."""

    train: Ratings
    fit: Ratings
    validation: Ratings | None
    test: Ratings | None


def split_ratings(ratings: Ratings, config: TrainConfig) -> Split:
    """The seeded train/test split, then a validation slice of the training part."""
    train_rows, test_rows = split_rows(len(ratings), config.test_fraction, config.seed)
    train = ratings.take(train_rows)
    fit_rows, val_rows = split_rows(len(train), config.validation_fraction, config.seed + 1)
    return Split(
        train=train,
        fit=train.take(fit_rows),
        validation=train.take(val_rows) if len(val_rows) else None,
        test=ratings.take(test_rows) if len(test_rows) else None,
    )
