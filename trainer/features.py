"""Per-user and per-movie model inputs as row-aligned numpy tables.

Both towers take only an id string. Each tower maps the id to a row with a
StringLookup over ``ids`` (row 0 = unknown id, row r + 1 = ``ids[r]``) and
gathers its features from these tables, which are baked into the model. So the
exported user tower needs nothing but user ids, and an unknown id gets the
row-0 features ("unknown" everywhere, empty history) instead of an error.

Categorical features are int32 indices with 0 = unknown; variable-length
features (watch history, title tokens) are CSR pairs ``(splits, values)`` with
int64 splits of length rows + 1 and int32 values.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np

from trainer.data import Items, Ratings, Users, title_without_year

# Age groups used by the MovieLens 1M release: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+.
AGE_BOUNDARIES = (18, 25, 35, 45, 50, 56)
# Release years in five-year buckets from 1920; earlier years share the first bucket.
YEAR_ORIGIN, YEAR_BUCKET_WIDTH, YEAR_BUCKETS = 1920, 5, 17
ZIP_PREFIX_LENGTH = 2
MIN_TITLE_TOKEN_COUNT = 2
_TOKEN_RE = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class Csr:
    """Variable-length int lists: row r is values[splits[r]:splits[r + 1]]."""

    splits: np.ndarray  # int64 [rows + 1]
    values: np.ndarray  # int32 [nnz]

    @classmethod
    def from_lists(cls, lists: list[list[int]]) -> Csr:
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.fromiter((v for x in lists for v in x), dtype=np.int32, count=int(splits[-1]))
        return cls(splits=splits, values=values)


@dataclasses.dataclass(frozen=True)
class UserVocab:
    """The categorical features' values: index i + 1 of a feature is ``values[i]`` (0 = unknown).

    Kept so that a new user's raw features (``normalize_*``) map to the same
    indices as in training (the exported ``embed_features`` signature).
    """

    genders: np.ndarray  # str, as normalised by normalize_gender
    occupations: np.ndarray  # str, normalize_occupation
    zip_prefixes: np.ndarray  # str, normalize_zip


def normalize_gender(values: np.ndarray) -> np.ndarray:
    return np.char.upper(np.char.strip(values.astype(str)))


def normalize_occupation(values: np.ndarray) -> np.ndarray:
    return np.char.lower(np.char.strip(values.astype(str)))


def normalize_zip(values: np.ndarray) -> np.ndarray:
    """Zip code -> its first ZIP_PREFIX_LENGTH characters, upper case, space-padded."""
    padded = np.char.ljust(np.char.strip(values.astype(str)), ZIP_PREFIX_LENGTH)
    return np.char.upper(padded.astype(f"U{ZIP_PREFIX_LENGTH}"))


def age_bucket(ages: np.ndarray) -> np.ndarray:
    """Ages in years -> 1-based AGE_BOUNDARIES buckets; ages <= 0 (not given) -> 0."""
    ages = np.asarray(ages)
    return np.where(ages > 0, np.searchsorted(AGE_BOUNDARIES, ages, side="right") + 1, 0).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class UserFeatures:
    """Query-tower inputs for the users the model knows; tables have len(ids) + 1 rows.

    ids: str [u]; age_bucket, gender, occupation, zip_prefix: int32 [u + 1];
    history: Csr over u + 1 rows of item-table rows (1-based, see ItemFeatures).
    ``*_size`` fields are the vocabulary sizes including the unknown index 0.
    """

    ids: np.ndarray
    age_bucket: np.ndarray
    gender: np.ndarray
    occupation: np.ndarray
    zip_prefix: np.ndarray
    history: Csr
    gender_size: int
    occupation_size: int
    zip_prefix_size: int
    vocab: UserVocab | None = None

    age_bucket_size = len(AGE_BOUNDARIES) + 2


@dataclasses.dataclass(frozen=True)
class ItemFeatures:
    """Candidate-tower inputs for the catalog; tables have len(ids) + 1 rows.

    ids: str [i]; genres: float32 [i + 1, genre_count] multi-hot;
    year_bucket: int32 [i + 1]; title_tokens: Csr over i + 1 rows of token
    indices (1-based; rare tokens dropped). ``token_count`` includes index 0.
    """

    ids: np.ndarray
    genres: np.ndarray
    year_bucket: np.ndarray
    title_tokens: Csr
    token_count: int

    year_bucket_size = YEAR_BUCKETS + 1


def _categorical(values: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """str [n] -> (int32 [n] indices 1..k in sorted value order, k + 1, the k values)."""
    vocab, index = np.unique(values, return_inverse=True)
    return (index + 1).astype(np.int32), len(vocab) + 1, vocab


def _with_unknown_row(values: np.ndarray) -> np.ndarray:
    """Prepends the row-0 (unknown) entry, all zeros."""
    return np.concatenate([np.zeros((1, *values.shape[1:]), dtype=values.dtype), values])


def build_item_features(items: Items, genre_count: int) -> ItemFeatures:
    """Catalog -> ItemFeatures (one row per movie, in catalog order, after row 0)."""
    bits = np.arange(genre_count, dtype=np.uint32)
    genres = ((items.genres[:, None] >> bits[None, :]) & 1).astype(np.float32)
    known = items.years > 0
    bucket = np.clip((items.years - YEAR_ORIGIN) // YEAR_BUCKET_WIDTH, 0, YEAR_BUCKETS - 1) + 1
    year_bucket = np.where(known, bucket, 0).astype(np.int32)

    tokenized = [_TOKEN_RE.findall(title_without_year(t).lower()) for t in items.titles.tolist()]
    counts = Counter(tok for toks in tokenized for tok in set(toks))
    vocab = sorted(tok for tok, c in counts.items() if c >= MIN_TITLE_TOKEN_COUNT)
    index_of = {tok: i + 1 for i, tok in enumerate(vocab)}
    token_rows = [[]] + [[index_of[t] for t in toks if t in index_of] for toks in tokenized]
    return ItemFeatures(
        ids=items.ids,
        genres=_with_unknown_row(genres),
        year_bucket=_with_unknown_row(year_bucket),
        title_tokens=Csr.from_lists(token_rows),
        token_count=len(vocab) + 1,
    )


def build_user_features(users: Users, user_ids: np.ndarray, history: Csr) -> UserFeatures:
    """Demographics of ``user_ids`` (str [u], each in ``users``) plus their history.

    ``history`` must have u + 1 rows (row 0 empty), see ``history_csr``.
    """
    row_of = {uid: r for r, uid in enumerate(users.ids.tolist())}
    rows = np.array([row_of[u] for u in user_ids.tolist()], dtype=np.int64)
    ages = age_bucket(users.ages[rows])
    gender, gender_size, genders = _categorical(normalize_gender(users.genders[rows]))
    occupation, occupation_size, occupations = _categorical(normalize_occupation(users.occupations[rows]))
    zip_prefix, zip_prefix_size, zips = _categorical(normalize_zip(users.zips[rows]))
    if len(history.splits) != len(user_ids) + 2:
        raise ValueError(f"history has {len(history.splits) - 1} rows, expected {len(user_ids) + 1}")
    return UserFeatures(
        ids=user_ids,
        age_bucket=_with_unknown_row(ages),
        gender=_with_unknown_row(gender),
        occupation=_with_unknown_row(occupation),
        zip_prefix=_with_unknown_row(zip_prefix),
        history=history,
        gender_size=gender_size,
        occupation_size=occupation_size,
        zip_prefix_size=zip_prefix_size,
        vocab=UserVocab(genders=genders, occupations=occupations, zip_prefixes=zips),
    )


def interaction_csr(ratings: Ratings, user_ids: np.ndarray, item_ids: np.ndarray) -> Csr:
    """Each user's distinct rated items as item rows (0-based), users in ``user_ids`` order.

    Returns a Csr with len(user_ids) rows; items within a row are sorted.
    Ratings of users or items not in the given id arrays are ignored.
    """
    user_row = {u: r for r, u in enumerate(user_ids.tolist())}
    item_row = {i: r for r, i in enumerate(item_ids.tolist())}
    pairs = {
        (user_row[u], item_row[i])
        for u, i in zip(ratings.users.tolist(), ratings.items.tolist())
        if u in user_row and i in item_row
    }
    lists: list[list[int]] = [[] for _ in range(len(user_ids))]
    for u, i in pairs:
        lists[u].append(i)
    return Csr.from_lists([sorted(x) for x in lists])


def history_csr(seen: Csr) -> Csr:
    """A 0-based user x item-row Csr -> the tower's history table: a leading
    empty row for unknown users and 1-based item rows (0 is the unknown movie)."""
    return Csr(splits=np.concatenate([[0], seen.splits]).astype(np.int64), values=seen.values + 1)
