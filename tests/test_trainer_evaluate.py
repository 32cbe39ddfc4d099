"""trainer.evaluate on hand-made cases whose hit rates are worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer import evaluate as ev
from trainer.features import Csr
from trainer.readers import DataError

# Four items by falling popularity; three held-out pairs:
#   user 0 -> item 2, user 1 -> item 0, user 1 -> item 3.
# User 0 trained on item 0, user 1 on item 1.
POPULARITY = np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32)
PAIR_USERS = np.array([0, 1, 1])
PAIR_ITEMS = np.array([2, 0, 3])
SEEN = Csr.from_lists([[0], [1]])


def test_popularity_hit_rates_by_hand() -> None:
    ones = np.ones((2, 1), dtype=np.float32)
    # All items ranked [0, 1, 2, 3] for both users: ranks 2, 0, 3.
    all_items = ev.hit_rates(ones, POPULARITY[:, None], PAIR_USERS, PAIR_ITEMS, None, max_k=5)
    np.testing.assert_allclose(all_items, [1 / 3, 1 / 3, 2 / 3, 1, 1])
    # Seen removed: user 0 ranks [1, 2, 3] -> item 2 at 1; user 1 ranks [0, 2, 3] -> 0 and 2.
    excluded = ev.hit_rates(ones, POPULARITY[:, None], PAIR_USERS, PAIR_ITEMS, SEEN, max_k=5)
    np.testing.assert_allclose(excluded, [1 / 3, 2 / 3, 1, 1, 1])


def test_model_hit_rates_use_the_dot_product() -> None:
    users = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    items = np.array([[0.1, 0.9], [0.2, 0.1], [0.9, 0.0], [0.0, 0.5]], dtype=np.float32)
    # User 0 scores [.1, .2, .9, 0] -> item 2 first. User 1 scores [.9, .1, 0, .5] -> item 0 first, item 3 second.
    hr = ev.hit_rates(users, items, PAIR_USERS, PAIR_ITEMS, None, max_k=3)
    np.testing.assert_allclose(hr, [2 / 3, 1, 1])


def test_ties_rank_the_earlier_row_first() -> None:
    positions = ev.rank_positions(np.array([[1.0, 2.0, 2.0, 1.0]]))
    assert positions.tolist() == [[2, 0, 1, 3]]
    excluded = ev.rank_positions(np.array([[1.0, 2.0, 2.0, 1.0]]), np.array([[False, True, False, False]]))
    assert excluded.tolist() == [[1, 3, 0, 2]]


def test_chunking_does_not_change_the_result() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    pair_users, pair_items = rng.integers(0, 50, 200), rng.integers(0, 30, 200)
    seen = Csr.from_lists([sorted(set(rng.integers(0, 30, 5).tolist())) for _ in range(50)])
    whole = ev.hit_rates(users, items, pair_users, pair_items, seen, max_k=30)
    chunked = ev.hit_rates(users, items, pair_users, pair_items, seen, max_k=30, chunk_scores=7 * 30)
    np.testing.assert_array_equal(whole, chunked)
    # The same as ranking every item of each user's row by sorting (rank_positions).
    counts = np.zeros(31)
    for u, i in zip(pair_users, pair_items):
        row_seen = seen.values[seen.splits[u] : seen.splits[u + 1]]
        excluded = np.zeros((1, 30), dtype=bool)
        excluded[0, row_seen] = True
        rank = 30 if i in row_seen else ev.rank_positions((users[u] @ items.T)[None, :], excluded)[0, i]
        counts[min(rank, 30)] += 1
    np.testing.assert_allclose(whole, np.cumsum(counts[:30]) / len(pair_users))
    assert whole[-1] == pytest.approx(1.0 - np.mean([i in seen.values[seen.splits[u] : seen.splits[u + 1]] for u, i in zip(pair_users, pair_items)]))


@pytest.mark.parametrize("chunk_scores", [ev.CHUNK_SCORES, 5 * 200])
def test_top_k_ranking_equals_sorting_every_item_with_ties(chunk_scores: int) -> None:
    """With max_k below the catalog size each pair is ranked within its user's top k;
    integer vectors make many ties, at the k-th score too, and the ranks still equal
    a full sort's (ties to the earlier row), seen items excluded or not."""
    rng = np.random.default_rng(1)
    users, items = rng.integers(-2, 3, size=(40, 3)).astype(np.float32), rng.integers(-2, 3, size=(200, 3)).astype(np.float32)
    pair_users, pair_items = rng.integers(0, 40, 600), rng.integers(0, 200, 600)
    seen = Csr.from_lists([sorted(set(rng.integers(0, 200, 30).tolist())) for _ in range(40)])
    for excluded_lists in (None, seen):
        got = ev.hit_rates(users, items, pair_users, pair_items, excluded_lists, max_k=10, chunk_scores=chunk_scores)
        counts = np.zeros(11)
        for u, i in zip(pair_users, pair_items):
            row_seen = [] if excluded_lists is None else seen.values[seen.splits[u] : seen.splits[u + 1]]
            excluded = np.zeros((1, 200), dtype=bool)
            excluded[0, row_seen] = True
            rank = 10 if i in row_seen else ev.rank_positions((users[u] @ items.T)[None, :], excluded)[0, i]
            counts[min(rank, 10)] += 1
        np.testing.assert_allclose(got, np.cumsum(counts[:10]) / len(pair_users))


def test_report_holds_both_protocols_for_model_and_popularity(tmp_path: Path) -> None:
    data = ev.EvaluationSet(pair_users=PAIR_USERS, pair_items=PAIR_ITEMS, seen=SEEN, popularity=POPULARITY)
    users = np.ones((2, 1), dtype=np.float32)
    report = ev.evaluate(users, POPULARITY[:, None] * 2, data)
    assert report["pairs"] == 3 and report["users"] == 2 and len(report["k"]) == ev.MAX_K
    assert report["popularity"]["seen_excluded"][:3] == pytest.approx([1 / 3, 2 / 3, 1])
    assert report["model"] == report["popularity"]  # same ranking, so same rates
    assert ev.headline(report)["popularity/all/hr@1"] == pytest.approx(1 / 3)
    table = ev.format_table(report)
    assert "popularity (seen_excluded)" in table and "0.3333" in table
    ev.write_report(report, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["pairs"] == 3
    assert (tmp_path / "out" / "hr_at_k.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluation_set_maps_ids_and_seen_lists() -> None:
    pairs = (np.array(["9", "5", "9"]), np.array(["b", "a", "c"]))
    data, users = ev.evaluation_set(pairs, np.array(["a", "b", "c"]), np.array(["5", "7"]), Csr.from_lists([[2], [0]]), POPULARITY[:3])
    assert users.tolist() == ["5", "9"]
    assert data.pair_users.tolist() == [1, 0, 1] and data.pair_items.tolist() == [1, 0, 2]
    assert data.seen.splits.tolist() == [0, 1, 1]  # "9" was not in training: nothing excluded
    assert data.seen.values.tolist() == [2]
    with pytest.raises(DataError, match="not in the catalog"):
        ev.evaluation_set((np.array(["5"]), np.array(["zz"])), np.array(["a"]), np.array(["5"]), Csr.from_lists([[]]), POPULARITY[:1])


def test_test_interactions_round_trip(tmp_path: Path) -> None:
    path = tmp_path / ev.TEST_INTERACTIONS
    pairs = (np.array(["1", "2"]), np.array(["50", "7"]))
    ev.write_test_interactions(path, pairs)
    assert path.read_text().splitlines() == ["user_id\titem_id", "1\t50", "2\t7"]
    users, items = ev.read_test_interactions(path)
    assert users.tolist() == ["1", "2"] and items.tolist() == ["50", "7"]
    ev.write_test_interactions(path, None)
    assert path.read_text() == "user_id\titem_id\n"
    path.write_text("user_id\titem_id\n1\t50\nbroken\n")
    with pytest.raises(DataError, match=r":3: expected"):
        ev.read_test_interactions(path)


def test_extra_baselines_get_their_own_rows_in_the_report_and_table():
    # Two users, three items; the "oracle" baseline scores each user's held-out item highest.
    data = ev.EvaluationSet(
        pair_users=np.array([0, 1]), pair_items=np.array([2, 0]),
        seen=Csr(splits=np.array([0, 1, 2]), values=np.array([0, 1], dtype=np.int32)),
        popularity=np.array([0.5, 0.3, 0.2]),
    )
    oracle_users = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    report = ev.evaluate(np.ones((2, 1), np.float32), np.ones((3, 1), np.float32), data,
                         {"oracle": (oracle_users, np.eye(3, dtype=np.float32))})
    assert report["oracle"]["all"][0] == 1.0 and report["oracle"]["seen_excluded"][0] == 1.0
    assert report["popularity"]["all"][0] == 0.5  # item 0 tops both lists; only user 1 held it out
    assert "oracle (seen_excluded)" in ev.format_table(report)
    assert "oracle/all/hr@1" in ev.headline(report)
