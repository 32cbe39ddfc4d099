"""trainer.warm_start: the EASE warm start, in numpy and mapped onto the towers.

The towers initialised from rank-32 EASE must score every (user, movie) pair
as the numpy factorisation does (times the chosen softmax scale), before any
training step. Data: a small random interaction matrix made here, and the
generated MovieLens-layout dataset of the conftest fixture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.features import Csr
from trainer.warm_start import dense_interactions, ease_warm_start, ease_weights, factorise, fit_scale, temporal_gram


def _random_seen(users: int, items: int, density: float, seed: int) -> Csr:
    rng = np.random.default_rng(seed)
    return Csr.from_lists([sorted(np.flatnonzero(rng.random(items) < density).tolist()) for _ in range(users)])


def test_ease_weights_solve_the_constrained_ridge_regression() -> None:
    x = dense_interactions(_random_seen(50, 20, 0.3, 0), 20)
    lam = 5.0
    b = ease_weights(x, lam)
    assert np.allclose(np.diag(b), 0.0)
    # Stationarity of ||X - XB||² + λ||B||² under diag(B) = 0: (XᵀX + λI) B - XᵀX is zero off the diagonal.
    residual = (x.T @ x + lam * np.eye(20)) @ b - x.T @ x
    off_diagonal = residual - np.diag(np.diag(residual))
    assert np.abs(off_diagonal).max() < 1e-8


def test_temporal_gram_by_hand() -> None:
    # user 0 rates movies 2, 0, 1 at times 5, 1, 3 -> time order 0, 1, 2 (positions 0, 1, 2);
    # user 1 rates movies 3 and 1 at the same time (tie: by movie row -> 1 at 0, 3 at 1), then 0.
    users = np.array([0, 0, 0, 1, 1, 1])
    items = np.array([2, 0, 1, 3, 1, 0])
    times = np.array([5, 1, 3, 7, 7, 9])
    tau = 2.0
    gram = temporal_gram(users, items, times, 5, tau)
    e = lambda k: np.exp(-k / tau)  # noqa: E731
    expected = np.zeros((5, 5))
    for order in ([0, 1, 2], [1, 3, 0]):  # each user's movies in time order
        for pa, a in enumerate(order):
            for pb, b in enumerate(order):
                expected[a, b] += e(abs(pa - pb))
    assert np.allclose(gram, expected)
    assert gram[0, 1] == pytest.approx(e(1) + e(2)) and gram[4].sum() == 0  # movie 4: never rated
    # A very long time constant gives plain co-occurrence XᵀX; the Gram is PSD.
    x = dense_interactions(Csr.from_lists([[0, 1, 2], [0, 1, 3]]), 5)
    assert np.allclose(temporal_gram(users, items, times, 5, 1e12), x.T @ x)
    assert np.linalg.eigvalsh(gram).min() > -1e-10


def test_temporal_gram_of_random_data_against_a_direct_sum() -> None:
    rng = np.random.default_rng(3)
    users, items, times = [], [], []
    for user in range(12):
        movies = rng.choice(15, size=rng.integers(1, 10), replace=False)
        users += [user] * len(movies)
        items += movies.tolist()
        times += rng.integers(0, 4, size=len(movies)).tolist()  # many ties
    users, items, times = np.array(users), np.array(items), np.array(times)
    tau = 3.0
    expected = np.zeros((15, 15))
    for user in range(12):
        mine = sorted(zip(times[users == user], items[users == user]))  # by time, then movie
        for pa, (_, a) in enumerate(mine):
            for pb, (_, b) in enumerate(mine):
                expected[a, b] += np.exp(-abs(pa - pb) / tau)
    shuffled = rng.permutation(len(users))  # input order must not matter
    gram = temporal_gram(users[shuffled], items[shuffled], times[shuffled], 15, tau)
    assert np.allclose(gram, expected)
    # EASE on it is the constrained ridge solution with the Gram in place of XᵀX.
    b = ease_weights(np.zeros((0, 15)), 2.0, gram)
    residual = (gram + 2.0 * np.eye(15)) @ b - gram
    assert np.allclose(np.diag(b), 0) and np.abs(residual - np.diag(np.diag(residual))).max() < 1e-8
    # And the warm start uses it when tau > 0.
    seen = Csr.from_lists([sorted(items[users == u].tolist()) for u in range(12)])
    start = ease_warm_start(seen, 15, users, items, lam=2.0, rank=15, tau=tau, pair_timestamps=times)
    assert np.allclose(start.history[1:] @ start.items[1:].T / start.scale, b, atol=1e-5)
    with pytest.raises(ValueError, match="pair_timestamps"):
        ease_warm_start(seen, 15, users, items, lam=2.0, rank=4, tau=tau)


@pytest.mark.parametrize("balance", [0.0, 0.5, 1.0])
def test_factorisation_is_the_truncated_svd(balance: float) -> None:
    b = ease_weights(dense_interactions(_random_seen(50, 20, 0.3, 1), 20), 5.0)
    query_side, item_side = factorise(b, 6, balance)
    u, s, vt = np.linalg.svd(b)
    assert np.allclose(query_side @ item_side.T, (u[:, :6] * s[:6]) @ vt[:6])
    wide_query, wide_item = factorise(b, 32, balance)  # more dimensions than movies: zero padding, exact
    assert wide_query.shape == (20, 32) and np.allclose(wide_query @ wide_item.T, b)


def test_scale_minimises_the_loss() -> None:
    seen = _random_seen(40, 30, 0.3, 2)
    x = dense_interactions(seen, 30)
    users = np.repeat(np.arange(40), np.diff(seen.splits))
    query_side, item_side = factorise(ease_weights(x, 10.0), 8)
    items = seen.values.astype(np.int64)
    scale, loss = fit_scale(x, users, items, query_side, item_side, mask_seen=True)
    assert scale > 1
    # The loss by hand: target out of the history, the user's other movies out of the softmax.
    history = x[users].copy()
    history[np.arange(len(users)), items] = 0
    logits = (history @ query_side / np.maximum(history.sum(1, keepdims=True), 1)) @ item_side.T
    masked = x[users].astype(bool)
    masked[np.arange(len(users)), items] = False

    def by_hand(c: float) -> float:
        z = np.where(masked, -np.inf, c * logits)
        return float(np.mean(np.log(np.exp(z).sum(1)) - c * logits[np.arange(len(users)), items]))

    assert loss == pytest.approx(by_hand(scale), rel=1e-6)
    assert by_hand(scale / 3) > loss and by_hand(scale * 3) > loss
    start = ease_warm_start(seen, 30, users, seen.values.astype(np.int64), lam=10.0, rank=8)
    assert start.scale == pytest.approx(scale) and start.init_loss == pytest.approx(loss)
    assert start.history.shape == (31, 8) and not start.history[0].any() and not start.items[0].any()


@pytest.mark.slow
def test_warm_started_towers_score_like_rank_32_ease(small_movielens_dir: Path) -> None:
    import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TFRS is imported)
    import tf_keras as keras

    from trainer.config import ModelConfig
    from trainer.features import feature_columns, feature_specs, seen_csr
    from trainer.model import ITEM, CandidateTower, QueryTower
    from trainer.pipeline import pooled_histories
    from trainer.readers import read_folder

    keras.utils.set_random_seed(0)
    ds = read_folder(small_movielens_dir)
    inter = ds.interactions
    seen = seen_csr(inter.users, inter.items, len(ds.users))
    config = ModelConfig(init="ease")
    user_specs, item_specs = feature_specs(ds.users), feature_specs(ds.items)
    query = QueryTower(user_specs, len(ds.items), config)
    candidate = CandidateTower(item_specs, len(ds.items), config)
    users = np.repeat(np.arange(seen.rows), np.diff(seen.splits))
    lam = 20.0
    start = ease_warm_start(seen, len(ds.items), users, seen.values.astype(np.int64), lam=lam, rank=32)
    query.warm_start(start.history)
    candidate.warm_start(start.items)
    user_rows = np.arange(seen.rows)[np.diff(seen.splits) > 0]
    inputs = {**feature_columns(ds.users, user_specs), "history_mean": pooled_histories(seen, np.arange(seen.rows), start.history),
              "known_user": np.ones(seen.rows, np.float32)}  # known users: the history path alone
    scores = query({k: v[user_rows] for k, v in inputs.items()}).numpy()
    items = {**feature_columns(ds.items, item_specs), ITEM: np.arange(1, len(ds.items) + 1, dtype=np.int32)}
    scores = scores @ candidate(items).numpy().T

    x = dense_interactions(seen, len(ds.items))[user_rows]
    query_side, item_side = factorise(ease_weights(x, lam), 32)
    expected = start.scale * (x @ query_side @ item_side.T) / x.sum(axis=1, keepdims=True)
    assert np.allclose(scores, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    # And the ranking equals rank-32 EASE's (the mean pooling only rescales each user's row).
    u, s, vt = np.linalg.svd(ease_weights(x, lam))
    ease32 = x @ (u[:, :32] * s[:32]) @ vt[:32]
    assert np.corrcoef(np.argsort(np.argsort(-scores, axis=1)).ravel(), np.argsort(np.argsort(-ease32, axis=1)).ravel())[0, 1] > 0.999
