"""trainer.model: the softmax the towers are trained with, checked against numpy.

Builds the towers on the small generated dataset (no training) and recomputes
the loss of one batch by hand: the catalog softmax must leave out exactly each
user's other training movies, and nothing else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def towers(small_movielens_dir: Path):
    import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TFRS is imported)
    import tf_keras as keras

    from trainer.config import ModelConfig
    from trainer.data import load_movielens
    from trainer.features import build_item_features, build_user_features, history_csr, interaction_csr
    from trainer.model import CandidateTower, QueryTower

    keras.utils.set_random_seed(0)
    ml = load_movielens(small_movielens_dir)
    user_ids = np.unique(ml.ratings.users)
    seen = interaction_csr(ml.ratings, user_ids, ml.items.ids)
    config = ModelConfig(history_dropout=0.0)
    query = QueryTower(build_user_features(ml.users, user_ids, history_csr(seen)), ml.items.ids, config)
    candidate = CandidateTower(build_item_features(ml.items, len(ml.genres)), config)
    return ml, user_ids, seen, query, candidate, config


def _model(towers, **changes):
    from trainer.model import TwoTowerModel

    ml, _, _, query, candidate, config = towers
    return TwoTowerModel(query, candidate, ml.items.ids, dataclasses.replace(config, **changes))


def _batch(towers, size: int = 16) -> dict:
    ml = towers[0]
    rows = np.random.default_rng(1).choice(len(ml.ratings), size=size, replace=False)
    return {
        "user_id": ml.ratings.users[rows],
        "item_id": ml.ratings.items[rows],
        "item_probability": np.full(size, 1 / len(ml.items), dtype=np.float32),
    }


def _numpy_catalog_loss(towers, batch: dict, mask_seen: bool) -> float:
    """Sum over the batch of -log softmax(target) over the catalog, with the user's
    other training movies left out when ``mask_seen``."""
    ml, user_ids, seen, query, candidate, _ = towers
    queries = query(batch["user_id"], held_out_item_ids=batch["item_id"]).numpy()
    logits = queries @ candidate(ml.items.ids).numpy().T
    item_row = {item: row for row, item in enumerate(ml.items.ids.tolist())}
    total = 0.0
    for b, (user, item) in enumerate(zip(batch["user_id"].tolist(), batch["item_id"].tolist())):
        u = int(np.searchsorted(user_ids, user))
        target = item_row[item]
        keep = np.ones(len(ml.items), dtype=bool)
        if mask_seen:
            keep[seen.values[seen.splits[u] : seen.splits[u + 1]]] = False
        keep[target] = True
        row = logits[b, keep]
        total += np.log(np.exp(row - row.max()).sum()) + row.max() - logits[b, target]
    return total


@pytest.mark.parametrize("mask_seen", [True, False])
def test_catalog_softmax_matches_numpy(towers, mask_seen: bool) -> None:
    batch = _batch(towers)
    loss = float(_model(towers, negatives="catalog", mask_seen=mask_seen).compute_loss(batch))
    assert loss == pytest.approx(_numpy_catalog_loss(towers, batch, mask_seen), rel=1e-4)


def test_masking_seen_movies_lowers_the_loss(towers) -> None:
    batch = _batch(towers)
    masked = float(_model(towers, negatives="catalog", mask_seen=True).compute_loss(batch))
    unmasked = float(_model(towers, negatives="catalog", mask_seen=False).compute_loss(batch))
    assert masked < unmasked  # fewer competitors in every row


def test_in_batch_mode_still_trains(towers) -> None:
    batch = _batch(towers)
    for mask_seen in (True, False):
        loss = float(_model(towers, negatives="in_batch", mask_seen=mask_seen).compute_loss(batch))
        assert np.isfinite(loss) and loss > 0


def test_unknown_negatives_mode_is_refused(towers) -> None:
    with pytest.raises(ValueError, match="negatives"):
        _model(towers, negatives="sampled")


def test_row_mask() -> None:
    import tensorflow as tf

    from trainer.model import _row_mask

    columns = tf.ragged.constant([[0, 3], [], [1]], dtype=tf.int32)
    expected = [[True, False, False, True], [False] * 4, [False, True, False, False]]
    assert _row_mask(columns, 4).numpy().tolist() == expected


def test_time_positions_and_history_positions() -> None:
    from trainer.data import Ratings
    from trainer.features import history_csr, interaction_csr
    from trainer.train import history_positions, time_positions

    ratings = Ratings(
        users=np.array(["a", "a", "a", "b", "b"]),
        items=np.array(["3", "1", "2", "2", "1"]),
        ratings=np.ones(5, dtype=np.int16),
        timestamps=np.array([30, 10, 20, 5, 5]),  # b: a tie, broken by catalog row
    )
    user_ids, item_ids = np.array(["a", "b"]), np.array(["1", "2", "3", "4"])
    positions = time_positions(ratings, user_ids, item_ids)
    assert positions.tolist() == [[0, 1, 2, -1], [0, 1, -1, -1]]
    history = history_csr(interaction_csr(ratings, user_ids, item_ids))
    table = history_positions(ratings, user_ids, item_ids, history)
    assert table.splits.tolist() == history.splits.tolist()
    assert table.values.tolist() == [0, 1, 2, 0, 1]  # history rows hold movies 1, 2, 3 and 1, 2


def test_temporal_pooling_in_training_only(small_movielens_dir: Path) -> None:
    import tensorflow as tf

    from trainer.config import ModelConfig
    from trainer.data import load_movielens
    from trainer.features import Csr, build_user_features, history_csr, interaction_csr
    from trainer.model import QueryTower

    ml = load_movielens(small_movielens_dir)
    user_ids, item_ids = np.unique(ml.ratings.users), ml.items.ids
    history = history_csr(interaction_csr(ml.ratings, user_ids, item_ids))
    tau = 2.0
    tower = QueryTower(build_user_features(ml.users, user_ids, history), item_ids,
                       ModelConfig(history_dropout=0.0, history_tau=tau))
    table = np.random.default_rng(0).normal(size=(len(item_ids) + 1, 32)).astype(np.float32)
    tower.warm_start(table)  # the output is then the pooled history itself
    rng = np.random.default_rng(1)
    positions = Csr(splits=history.splits, values=rng.permutation(len(history.values)).astype(np.float32) % 7)
    tower.set_history_positions(positions)
    user, row = user_ids[0], 1  # history row 1 = user_ids[0]
    rows = history.values[history.splits[row] : history.splits[row + 1]]
    place = positions.values[history.splits[row] : history.splits[row + 1]]
    target = 1  # predict the user's second history movie
    item = item_ids[rows[target] - 1]
    weights = np.exp(-np.abs(place - place[target]) / tau)
    weights[target] = 0.0
    expected = (weights[:, None] * table[rows]).sum(0) / weights.sum()
    got = tower(tf.constant([user]), held_out_item_ids=tf.constant([item]), training=True).numpy()[0]
    assert np.allclose(got, expected, atol=1e-5)
    # Not training (validation, serving): the plain mean, also without the target.
    uniform = np.delete(table[rows], target, axis=0).mean(0)
    assert np.allclose(tower(tf.constant([user]), held_out_item_ids=tf.constant([item])).numpy()[0], uniform, atol=1e-5)
    assert np.allclose(tower(tf.constant([user])).numpy()[0], table[rows].mean(0), atol=1e-5)
    # A new history table drops the positions (they would no longer line up).
    tower.set_history(history)
    got = tower(tf.constant([user]), held_out_item_ids=tf.constant([item]), training=True).numpy()[0]
    assert np.allclose(got, uniform, atol=1e-5)
    with pytest.raises(ValueError, match="layout"):
        tower.set_history_positions(Csr(splits=history.splits[:-1], values=positions.values[:-1]))


@pytest.mark.parametrize("side_l2", [0.0, 0.1])
def test_side_fine_tuning_leaves_the_warm_started_parts_alone(small_movielens_dir: Path, side_l2: float) -> None:
    """--fine-tune side: after training steps the history / movie-id embeddings and
    the projection rows that read them are unchanged, while the side features moved."""
    import tensorflow as tf
    import tf_keras as keras

    from trainer.config import ModelConfig
    from trainer.data import load_movielens
    from trainer.features import build_item_features, build_user_features, history_csr, interaction_csr
    from trainer.model import CandidateTower, QueryTower, TwoTowerModel

    keras.utils.set_random_seed(0)
    ml = load_movielens(small_movielens_dir)
    user_ids, item_ids = np.unique(ml.ratings.users), ml.items.ids
    seen = interaction_csr(ml.ratings, user_ids, item_ids)
    config = ModelConfig(fine_tune="side", side_l2=side_l2)
    query = QueryTower(build_user_features(ml.users, user_ids, history_csr(seen)), item_ids, config)
    candidate = CandidateTower(build_item_features(ml.items, len(ml.genres)), config)
    rng = np.random.default_rng(0)
    query.warm_start(rng.normal(size=(len(item_ids) + 1, 32)).astype(np.float32))
    candidate.warm_start(rng.normal(size=(len(item_ids) + 1, 32)).astype(np.float32))
    model = TwoTowerModel(query, candidate, item_ids, config)
    model.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.0))
    before = {id(v): v.numpy().copy() for v in model.trainable_variables}
    dataset = tf.data.Dataset.from_tensor_slices(_batch((ml,), size=64)).batch(16)
    model.fit(dataset, epochs=2, verbose=0)

    def moved(variable) -> np.ndarray:
        return before[id(variable)] != variable.numpy()

    frozen_rows = [
        (query.history_embedding.embeddings, slice(None)),
        (query.projection.kernel, slice(-32, None)),
        (candidate.item_embedding.embeddings, slice(None)),
        (candidate.projection.kernel, slice(0, 32)),
    ]
    for variable, rows in frozen_rows:
        assert not moved(variable)[rows].any(), variable.name
    for variable in (query.age_embedding.embeddings, query.projection.bias, candidate.year_embedding.embeddings,
                     candidate.title_embedding.embeddings, candidate.genre_projection.kernel):
        assert moved(variable).any(), variable.name
    assert moved(query.projection.kernel)[:-32].any() and moved(candidate.projection.kernel)[32:].any()
    # encode still computes what call computes (the exported embed_features path).
    rows = query.user_lookup(tf.constant(user_ids[:3]))
    via_encode = query.encode(tf.gather(query._age, rows), tf.gather(query._gender, rows),
                              tf.gather(query._occupation, rows), tf.gather(query._zip, rows),
                              tf.gather(query._history, rows), user_rows=rows)
    assert np.allclose(via_encode.numpy(), query(tf.constant(user_ids[:3])).numpy(), atol=1e-6)


def test_unknown_fine_tune_mode_is_refused(towers) -> None:
    with pytest.raises(ValueError, match="fine_tune"):
        _model(towers, fine_tune="history")
