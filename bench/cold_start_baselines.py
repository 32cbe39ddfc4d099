"""The cold-start protocols' ranking and baselines (issue 17), numpy only.

Shared by ``bench/cold_start.py`` (the shipped model against these baselines)
and the research script ``docs/experiments/cold_start.py``. Rows and columns
are 0-based user and movie rows; ``x`` is a 0/1 users x movies matrix of
training interactions.
"""

from __future__ import annotations

import numpy as np

from trainer.warm_start import ease_weights

AGE_BOUNDARIES = (18, 25, 35, 45, 50, 56)  # the segment baseline's age buckets (MovieLens 1M's groups)
HELD_SHARE = 0.10  # share of users or movies a draw holds out entirely
NAMED = 5  # protocol 2: the earliest movies a new user names
SEGMENT_MIN_USERS = 20


def held_out(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A draw: (kept rows, held-out rows) of ``count``, 10% held out, both sorted."""
    held = np.sort(np.random.default_rng(seed).choice(count, int(round(count * HELD_SHARE)), replace=False))
    return np.setdiff1d(np.arange(count), held), held


def hit_ranks(scores: np.ndarray, pair_rows: np.ndarray, pair_cols: np.ndarray,
              excluded: np.ndarray | None = None, tie_seed: int | None = None) -> np.ndarray:
    """0-based rank of each pair's column in its row of ``scores``; excluded cells rank
    last and an excluded target is a miss (rank = columns). Ties: the earlier column
    ranks higher (as trainer.evaluate and the issue's yardsticks), or, with
    ``tie_seed``, the earlier in a seeded random order of the columns (so that a model
    giving many items one score gains nothing from the catalog's order, in which the
    older, more rated movies come first)."""
    if excluded is not None:
        scores = np.where(excluded, -np.inf, scores)
    target = scores[pair_rows, pair_cols]
    ranks = np.empty(len(pair_rows), dtype=np.int64)
    order = np.arange(scores.shape[1]) if tie_seed is None else np.random.default_rng(tie_seed).permutation(scores.shape[1])
    for start in range(0, len(pair_rows), 4096):
        block = slice(start, start + 4096)
        s, t = scores[pair_rows[block]], target[block, None]
        ranks[block] = (s > t).sum(1) + ((s == t) & (order[None, :] < order[pair_cols[block], None])).sum(1)
    if excluded is not None:
        ranks = np.where(excluded[pair_rows, pair_cols], scores.shape[1], ranks)
    return ranks


def hit_rates(scores: np.ndarray, test: np.ndarray, excluded: np.ndarray | None, ks=(10, 100),
              tie_seed: int | None = None) -> dict[str, float]:
    """HR@k over the (row, column) pairs where ``test`` is non-zero (ties as in hit_ranks)."""
    rows, columns = np.nonzero(test)
    ranks = hit_ranks(scores, rows, columns, excluded, tie_seed)
    return {f"hr@{k}": float(np.mean(ranks < k)) for k in ks}


def age_buckets(ages: np.ndarray) -> np.ndarray:
    return np.searchsorted(AGE_BOUNDARIES, ages, side="right")


def segment_popularity(gender: np.ndarray, age_bucket: np.ndarray, occupation: np.ndarray, x: np.ndarray,
                       train_users: np.ndarray, rows: np.ndarray, min_users: int = SEGMENT_MIN_USERS) -> np.ndarray:
    """Most popular within gender x age bucket x occupation (arrays over all users); a
    segment of fewer than ``min_users`` training users falls back to gender x age
    bucket, then gender, then all. -> counts [len(rows), movies]."""
    levels = [(gender, age_bucket, occupation), (gender, age_bucket), (gender,), ()]
    out = np.zeros((len(rows), x.shape[1]))
    for j, user in enumerate(rows):
        for keys in levels:
            members = np.ones(len(train_users), dtype=bool)
            for key in keys:
                members &= key[train_users] == key[user]
            if members.sum() >= min_users or not keys:
                out[j] = x[train_users[members]].sum(axis=0)
                break
    return out


def earliest(users: np.ndarray, items: np.ndarray, stamps: np.ndarray, item_count: int, user_rows: np.ndarray,
             count: int = NAMED) -> tuple[np.ndarray, np.ndarray]:
    """Per user of ``user_rows``: 0/1 [len, movies] of their ``count`` earliest movies
    (timestamp, ties by movie row) and of the rest."""
    named = np.zeros((len(user_rows), item_count))
    rest = np.zeros_like(named)
    for j, user in enumerate(user_rows):
        mine = np.flatnonzero(users == user)
        movies = items[mine][np.lexsort((items[mine], stamps[mine]))]
        named[j, movies[:count]] = 1.0
        rest[j, movies[count:]] = 1.0
    return named, rest


def ease_from_named(x_train: np.ndarray, named: np.ndarray, lam: float = 500.0) -> np.ndarray:
    """EASE (full rank, plain Gram of the training users) scored from the named movies."""
    return named @ ease_weights(x_train, lam)


def genre_profile_scores(x_known: np.ndarray, genres: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Cosine of the user's genre profile (sum of the genre vectors of their training
    movies) and the ``new`` movies' genres: [users, len(new)]."""
    profile = x_known @ genres
    profile = profile / np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    g = genres[new] / np.maximum(np.linalg.norm(genres[new], axis=1, keepdims=True), 1e-12)
    return profile @ g.T
