"""The trainer's numpy shortcuts (sorts, distinct sets, score moments) give what the general computation gives."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.features import distinct, rows_present, seen_csr, user_time_order


def test_distinct_and_rows_present_are_np_unique() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 50, 1000)
    np.testing.assert_array_equal(distinct(values), np.unique(values))
    np.testing.assert_array_equal(rows_present(values, 60), np.unique(values))
    assert len(distinct(np.zeros(0, np.int64))) == 0 and len(rows_present(np.zeros(0, np.int64), 3)) == 0


@pytest.mark.parametrize("stamp_range", [1_000, 2**40])  # a packed key, and too wide for one (the lexsort)
def test_user_time_order_is_the_lexsort_ties_included(stamp_range: int) -> None:
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 30, 5000), rng.integers(0, 40, 5000)
    stamps = 1_600_000_000 + rng.integers(0, stamp_range, 5000)
    stamps[::3] = stamps[0]  # many equal times; equal (user, time, item) keys keep the input order
    np.testing.assert_array_equal(user_time_order(users, stamps, items), np.lexsort((items, stamps, users)))


def test_seen_csr_holds_each_users_distinct_items_sorted() -> None:
    rng = np.random.default_rng(2)
    users, items = rng.integers(0, 20, 400), rng.integers(0, 30, 400)
    seen = seen_csr(users, items, 25)
    for u in range(25):
        assert seen.values[seen.splits[u] : seen.splits[u + 1]].tolist() == sorted(set(items[users == u].tolist()))


def test_score_spread_is_the_std_of_every_score() -> None:
    import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TFRS is imported)
    from trainer.cold_start import score_spread

    rng = np.random.default_rng(3)
    queries, items = rng.normal(size=(50, 8)) + 0.3, rng.normal(size=(300, 8)) * 2 - 0.1
    assert score_spread(queries, items) == pytest.approx(float(np.std(queries @ items.T)), rel=1e-9)


def test_popularity_query_maximises_the_catalog_likelihood() -> None:
    """The start of the new-user path: at its q the softmax's expected item vector is the observed
    one (the gradient is zero), no step along any direction raises the log-likelihood, and when an
    item dimension is log-popularity the query is that dimension: it ranks the items by popularity."""
    import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TFRS is imported)
    from trainer.cold_start import popularity_query

    rng = np.random.default_rng(4)
    counts = rng.zipf(1.6, 400).clip(1, 5000).astype(np.float64)
    items = rng.normal(size=(400, 6)) * 0.3

    def log_likelihood(q: np.ndarray) -> float:
        logits = items @ q
        return float(counts @ logits - counts.sum() * (logits.max() + np.log(np.exp(logits - logits.max()).sum())))

    q = popularity_query(items.astype(np.float32), counts).astype(np.float64)
    softmax = np.exp(items @ q - (items @ q).max())
    softmax /= softmax.sum()
    np.testing.assert_allclose(items.T @ softmax, items.T @ counts / counts.sum(), atol=1e-5)
    for direction in rng.normal(size=(20, 6)):
        assert log_likelihood(q) >= log_likelihood(q + 0.05 * direction)

    # softmax(log counts) is the observed distribution itself: the query is 1 there, 0 elsewhere.
    with_popularity = np.concatenate([items, np.log(counts)[:, None]], axis=1)
    q = popularity_query(with_popularity.astype(np.float32), counts)
    np.testing.assert_allclose(q, np.eye(7)[6], atol=1e-3)
