"""Warm start of the two towers from a closed-form item-item model (numpy only).

EASE (Steck, 2019) scores user u's movie j as ``x_u · B[:, j]``, where x_u is the
user's 0/1 watch vector and the item-item weights are

    G = XᵀX + λI,   P = G⁻¹,   B = I − P · diag(1 / diag(P))   (so diag(B) = 0).

A rank-r truncated SVD B ≈ U S Vᵀ turns that into a two-tower score:
``x_u · (U S^a) · (V S^(1-a))[j]``. The query tower mean-pools a history
embedding, which divides by the history length; per user that is a positive
scale, so the ranking of movies is unchanged. So with

* history-embedding row of movie h = c · (U S^a)[h],
* movie-id embedding row of movie j = c · (V S^(1-a))[j],
* both towers' output projections = identity on those parts, zero elsewhere,

the untrained towers rank exactly like rank-r EASE.

Temporal variant (``tau`` > 0): XᵀX is replaced by ``temporal_gram``, in
which two movies a user rated k positions apart (in time order) co-occur with
weight exp(-k / tau) instead of 1. Scores are still X·B with the plain 0/1
history, so serving needs no timestamps. ``a`` = 1/2 ("balanced")
splits the singular values evenly. The common factor c sets the softmax
temperature the fine-tuning starts at: EASE's raw scores are about 1e-3, which
would make the softmax nearly uniform, so c is chosen (on the fit data, by a
1-D search) to minimise the same masked catalog softmax loss the model is then
trained with.

Everything is computed from the *fit* interactions only, so the validation
slice stays unseen. Memory: the items x items matrices are dense (about four of
them at once, see trainer.config.ease_fits, which decides when this start is
used); the users x items matrix is never built (the Gram is summed user by
user, the scale is fitted on a sample of users' rows).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from trainer.features import Csr

# Candidate softmax scales c², searched on a log grid (then refined around the best).
_SCALE_GRID = np.logspace(0, 5, 21)


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """Initial embedding tables for the towers, float32 [items + 1, rank]; row 0
    (the unknown movie) is zero, row r + 1 is catalog row r."""

    history: np.ndarray  # the query tower's history embedding
    items: np.ndarray  # the candidate tower's movie-id embedding
    scale: float  # c², the factor applied to the EASE scores
    init_loss: float  # mean masked softmax loss at that scale, on the sampled fit pairs


def dense_interactions(seen: Csr, item_count: int) -> np.ndarray:
    """0-based user x item-row Csr -> float64 [users, item_count] 0/1 matrix."""
    x = np.zeros((len(seen.splits) - 1, item_count), dtype=np.float64)
    rows = np.repeat(np.arange(len(seen.splits) - 1), np.diff(seen.splits))
    x[rows, seen.values] = 1.0
    return x


def temporal_gram(
    user_rows: np.ndarray, item_rows: np.ndarray, timestamps: np.ndarray, item_count: int, tau: float
) -> np.ndarray:
    """Time-weighted co-occurrence: float64 [item_count, item_count].

    Each user's interactions (int rows ``user_rows``, ``item_rows``, one per
    interaction) are ordered by timestamp, ties by item row, giving positions
    p = 0..n-1; the user adds K[a, b] = exp(-|p_a - p_b| / tau) for every pair of
    their movies a, b (the diagonal gets 1 per user, as in XᵀX). K is a
    Laplacian-kernel Gram matrix, so it is positive semi-definite, and so is the
    sum. ``tau`` = inf gives XᵀX. A user who rated a movie twice counts it twice.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return blockwise_gram(user_rows, item_rows, timestamps, item_count, tau)


def blockwise_gram(
    user_rows: np.ndarray, item_rows: np.ndarray, timestamps: np.ndarray, item_count: int, tau: float
) -> np.ndarray:
    """``temporal_gram``; ``tau`` = inf gives the plain co-occurrence XᵀX of the distinct pairs."""
    if np.isinf(tau):
        pairs = np.unique(np.stack([user_rows, item_rows], axis=1), axis=0)
        user_rows, item_rows, timestamps = pairs[:, 0], pairs[:, 1], np.zeros(len(pairs), dtype=np.int64)
    order = np.lexsort((item_rows, timestamps, user_rows))
    users, items = user_rows[order], item_rows[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    gram = np.zeros((item_count, item_count), dtype=np.float64)
    for block in np.split(items, bounds):
        p = np.arange(len(block), dtype=np.float64)
        kernel = np.ones((len(block), len(block))) if np.isinf(tau) else np.exp(-np.abs(p[:, None] - p[None, :]) / tau)
        if len(np.unique(block)) == len(block):
            gram[np.ix_(block, block)] += kernel
        else:  # repeated movies: fancy-index += would keep only one of them
            np.add.at(gram, (block[:, None], block[None, :]), kernel)
    return gram


def ease_weights(x: np.ndarray, lam: float, gram: np.ndarray | None = None) -> np.ndarray:
    """EASE item-item weights: float64 [items, items] with a zero diagonal.

    ``gram`` replaces XᵀX (e.g. ``temporal_gram``); ``x`` is then unused."""
    if lam <= 0:
        raise ValueError(f"EASE lambda must be positive, got {lam}")
    gram = x.T @ x if gram is None else gram.astype(np.float64, copy=True)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def factorise(b: np.ndarray, rank: int, balance: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Truncated SVD B ≈ (U S^balance)(V S^(1-balance))ᵀ -> (query side, item side), each [items, rank]."""
    u, s, vt = np.linalg.svd(b)
    u, s, v = u[:, :rank], s[:rank], vt[:rank].T
    if len(s) < rank:  # fewer movies than dimensions: the extra dimensions stay zero
        pad = ((0, 0), (0, rank - len(s)))
        u, s, v = np.pad(u, pad), np.pad(s, (0, rank - len(s))), np.pad(v, pad)
    return u * s**balance, v * s ** (1.0 - balance)


def _masked_softmax_loss(logits: np.ndarray, targets: np.ndarray, masked: np.ndarray) -> float:
    """Mean over rows of -log softmax(target), leaving out the ``masked`` columns."""
    z = np.where(masked, -np.inf, logits)
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_norm - logits[np.arange(len(targets)), targets]))


def fit_scale(
    x: np.ndarray,
    pair_users: np.ndarray,
    pair_items: np.ndarray,
    query_side: np.ndarray,
    item_side: np.ndarray,
    mask_seen: bool,
) -> tuple[float, float]:
    """The factor c² on the mean-pooled scores that minimises the training loss.

    For each (user row, item row) pair the target is taken out of the history
    (as the query tower does in training) and, with ``mask_seen``, the user's
    other training movies out of the softmax. Returns (c², loss at c²).
    """
    n = np.arange(len(pair_users))
    history = x[pair_users].copy()
    history[n, pair_items] = 0.0
    pooled = history @ query_side / np.maximum(history.sum(axis=1, keepdims=True), 1.0)
    logits = pooled @ item_side.T
    masked = x[pair_users].astype(bool) if mask_seen else np.zeros(logits.shape, dtype=bool)
    masked[n, pair_items] = False

    def loss(scale: float) -> float:
        return _masked_softmax_loss(scale * logits, pair_items, masked)

    best = min(_SCALE_GRID, key=loss)
    fine = best * np.logspace(-0.25, 0.25, 11)
    best = min(fine, key=loss)
    return float(best), loss(best)


def ease_warm_start(
    seen: Csr,
    item_count: int,
    pair_users: np.ndarray,
    pair_items: np.ndarray,
    lam: float,
    rank: int,
    balance: float = 0.5,
    mask_seen: bool = True,
    sample: int = 4000,
    seed: int = 0,
    tau: float = 0.0,
    pair_timestamps: np.ndarray | None = None,
    popularity_column: bool = False,
) -> WarmStart:
    """Rank-``rank`` EASE tables for the towers, from the interactions ``seen``
    (0-based users x item rows) and the training pairs (int rows into the same
    users and items; a random ``sample`` of them sets the scale).

    ``tau`` > 0 fits EASE on ``temporal_gram`` of the pairs (which then need
    ``pair_timestamps``) instead of XᵀX; the scores still use the plain 0/1
    histories, so nothing about time is needed at serving.

    ``popularity_column``: the last of the ``rank`` columns is not an EASE
    factor but the item's centred log(count + 1) over the pairs on the item
    side and 0 on the history side, so known users' scores are rank-(rank - 1)
    EASE's while a query from features (trainer.model.QueryTower) can weigh
    popularity, which the EASE factors cannot express."""
    if tau > 0 and pair_timestamps is None:
        raise ValueError("a temporal warm start (tau > 0) needs pair_timestamps")
    stamps = pair_timestamps if pair_timestamps is not None else np.zeros(len(pair_users), dtype=np.int64)
    gram = blockwise_gram(pair_users, pair_items, stamps, item_count, tau if tau > 0 else np.inf)
    query_side, item_side = factorise(ease_weights(None, lam, gram), rank - popularity_column, balance)
    del gram
    if popularity_column:
        log_count = np.log1p(np.bincount(pair_items, minlength=item_count))
        query_side = np.concatenate([query_side, np.zeros((item_count, 1))], axis=1)
        item_side = np.concatenate([item_side, (log_count - log_count.mean())[:, None]], axis=1)
    if len(pair_users) > sample:
        pick = np.random.default_rng(seed).choice(len(pair_users), size=sample, replace=False)
        pair_users, pair_items = pair_users[pick], pair_items[pick]
    # Only the sampled users' rows of X, densely: [distinct sampled users, items].
    sampled_users, local_rows = np.unique(pair_users, return_inverse=True)
    x_rows = dense_interactions(Csr(splits=np.concatenate([[0], np.cumsum(seen.splits[sampled_users + 1] - seen.splits[sampled_users])]),
                                    values=np.concatenate([seen.values[seen.splits[u]:seen.splits[u + 1]] for u in sampled_users])),
                                item_count)
    scale, loss = fit_scale(x_rows, local_rows, pair_items, query_side, item_side, mask_seen)
    root = np.sqrt(scale)

    def table(side: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((1, rank)), root * side]).astype(np.float32)

    return WarmStart(history=table(query_side), items=table(item_side), scale=scale, init_loss=loss)
