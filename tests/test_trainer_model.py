"""trainer.model and trainer.pipeline: the softmax the towers are trained with,
checked against numpy, and the streamed input checked against the in-memory log.

Builds the towers on the small generated dataset (no training).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

KEY = np.array([3, 0], dtype=np.int64)  # a stateless key for sample_history's draws


@pytest.fixture(scope="module")
def setup(small_movielens_dir: Path):
    import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TFRS is imported)
    import tf_keras as keras

    from trainer.config import ModelConfig
    from trainer.features import feature_columns, feature_specs
    from trainer.model import CandidateTower, QueryTower
    from trainer.pipeline import training_log
    from trainer.readers import read_folder

    keras.utils.set_random_seed(0)
    ds = read_folder(small_movielens_dir)
    user_specs, item_specs = feature_specs(ds.users), feature_specs(ds.items)
    user_columns, item_columns = feature_columns(ds.users, user_specs), feature_columns(ds.items, item_specs)
    inter = ds.interactions
    log = training_log(inter.users, inter.items, inter.timestamps, len(ds.users), len(ds.items), user_columns, item_columns)
    config = ModelConfig(history_dropout=0.0, negatives="catalog", init="random")
    query = QueryTower(user_specs, len(ds.items), config)
    candidate = CandidateTower(item_specs, len(ds.items), config)
    return ds, log, query, candidate, config


def _model(setup, **changes):
    from trainer.model import ITEM, TwoTowerModel

    ds, log, query, candidate, config = setup
    config = dataclasses.replace(config, **changes)
    catalog = {**log.item_columns, ITEM: np.arange(1, len(ds.items) + 1, dtype=np.int32)}
    return TwoTowerModel(query, candidate, config, catalog if config.negatives == "catalog" else None)


def _batch(setup, size: int = 16, length: int = 64) -> dict:
    from trainer.pipeline import make_dataset

    log = setup[1]
    dataset, _ = make_dataset(log, size, length, 0.0, seed=3, epochs=1, with_seen=True)
    return next(iter(dataset))


def _numpy_catalog_loss(setup, batch: dict, mask_seen: bool) -> float:
    """Sum over the batch of -log softmax(target) over the catalog, with the user's
    other training items left out when ``mask_seen``."""
    ds, log, query, candidate, _ = setup
    from trainer.model import ITEM

    queries = query(batch["query"]).numpy()
    catalog = candidate({**log.item_columns, ITEM: np.arange(1, len(ds.items) + 1, dtype=np.int32)}).numpy()
    logits = queries @ catalog.T
    total = 0.0
    for b, target in enumerate(batch["item"].numpy().tolist()):
        keep = ~batch["seen"].numpy()[b] if mask_seen else np.ones(len(ds.items), dtype=bool)
        keep[target] = True
        row = logits[b, keep]
        total += np.log(np.exp(row - row.max()).sum()) + row.max() - logits[b, target]
    return total


@pytest.mark.parametrize("mask_seen", [True, False])
def test_catalog_softmax_matches_numpy(setup, mask_seen: bool) -> None:
    batch = _batch(setup)
    loss = float(_model(setup, mask_seen=mask_seen).compute_loss(batch))
    assert loss == pytest.approx(_numpy_catalog_loss(setup, batch, mask_seen), rel=1e-4)


def test_masking_seen_items_lowers_the_loss(setup) -> None:
    batch = _batch(setup)
    assert float(_model(setup, mask_seen=True).compute_loss(batch)) < float(_model(setup, mask_seen=False).compute_loss(batch))


def test_in_batch_softmax_matches_numpy(setup) -> None:
    _, _, query, candidate, _ = setup
    batch = _batch(setup, size=32)
    negatives = 8
    loss = float(_model(setup, negatives="in_batch", in_batch_negatives=negatives).compute_loss(batch))
    q, c = query(batch["query"]).numpy(), candidate(batch["candidate"]).numpy()
    items, log_q = batch["item"].numpy(), np.log(batch["item_probability"].numpy())
    total = 0.0
    for b in range(len(q)):
        logits = [q[b] @ c[b] - log_q[b]] + [
            q[b] @ c[j] - log_q[j] for j in range(negatives) if items[j] != items[b]  # accidental hits left out
        ]
        logits = np.array(logits)
        total += np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[0]
    assert loss == pytest.approx(total, rel=1e-4)


def test_unknown_negatives_mode_is_refused(setup) -> None:
    with pytest.raises(ValueError, match="negatives"):
        _model(setup, negatives="sampled")


def test_sampled_histories_are_the_users_other_items(setup) -> None:
    """Every history row holds only the example user's other items, never the target
    (unless the user has it twice), and all of them when there are few enough."""
    import tensorflow as tf

    from trainer.pipeline import sample_history

    log = setup[1]
    rows = np.arange(len(log))
    users = log.example_users.astype(np.int64)
    for length in (4, 1000):
        history = sample_history(log.history, tf.constant(rows), tf.constant(users), length, 0.0, KEY).numpy()
        for e in rows[:300]:
            u = users[e]
            row = log.history.values[log.history.splits[u] : log.history.splits[u + 1]]
            others = Counter(np.delete(row, e - log.history.splits[u]).tolist())
            got = Counter((history[e][history[e] > 0] - 1).tolist())
            assert set(got) <= set(others)
            if len(row) - 1 <= length:
                assert got == others
            else:
                assert sum(got.values()) == length


def test_history_dropout_drops_that_share(setup) -> None:
    import tensorflow as tf

    from trainer.pipeline import sample_history

    log = setup[1]
    rows = tf.constant(np.arange(len(log)))
    users = tf.constant(log.example_users.astype(np.int64))
    kept = (sample_history(log.history, rows, users, 8, 0.5, KEY).numpy() > 0).sum()
    full = (sample_history(log.history, rows, users, 8, 0.0, KEY).numpy() > 0).sum()
    assert 0.45 < kept / full < 0.55


def test_streaming_gives_the_in_memory_examples(setup) -> None:
    """One epoch of the tf.data pipeline is exactly the log's interactions, each once,
    with the features and seen lists of the in-memory tables."""
    from trainer.pipeline import make_dataset

    ds, log, _, _, _ = setup
    inter = ds.interactions
    for shards in (1, 2):
        seen_pairs: Counter = Counter()
        for shard in range(shards):
            dataset, steps = make_dataset(log, 64, 8, 0.0, seed=1, epochs=1, with_seen=True, shard=shard, shards=shards)
            batches = list(dataset)
            assert len(batches) == steps
            for batch in batches:
                items = batch["item"].numpy()
                users = None
                for name, column in log.item_columns.items():
                    np.testing.assert_array_equal(batch["candidate"][name].numpy(), column[items])
                # Recover each example's user from its seen mask and check the user's features.
                seen = batch["seen"].numpy()
                users = np.array([_user_with_seen(log, row) for row in seen])
                for name, column in log.user_columns.items():
                    np.testing.assert_array_equal(batch["query"][name].numpy(), column[users])
                np.testing.assert_allclose(batch["item_probability"].numpy(), log.item_probability[items])
                seen_pairs.update(zip(users.tolist(), items.tolist()))
        expected = Counter(zip(inter.users.tolist(), inter.items.tolist()))
        if shards == 1:
            assert seen_pairs == expected
        else:  # two equal shards of len // 2 examples, disjoint
            assert sum(seen_pairs.values()) == 2 * (len(log) // 2) and not seen_pairs - expected


def _user_with_seen(log, mask: np.ndarray) -> int:
    items = np.flatnonzero(mask)
    for u in range(log.seen.rows):
        if np.array_equal(log.seen.values[log.seen.splits[u] : log.seen.splits[u + 1]], items):
            return u
    raise AssertionError("no user has that seen list")


def test_epochs_are_reshuffled_reproducibly(setup) -> None:
    from trainer.pipeline import make_dataset

    log = setup[1]

    def epochs(seed: int) -> list[np.ndarray]:
        dataset, steps = make_dataset(log, len(log), 2, 0.0, seed=seed, epochs=2, with_seen=False)
        return [batch["item"].numpy() for batch in dataset]

    first, second = epochs(5)
    assert sorted(first.tolist()) == sorted(second.tolist()) and not np.array_equal(first, second)
    assert all(np.array_equal(a, b) for a, b in zip(epochs(5), (first, second)))


def test_sampled_histories_are_repeatable(setup) -> None:
    """The history draws and the dropout are keyed by (seed, shard, epoch, batch): two runs
    give the same batches, whatever the parallel map schedules; another seed does not."""
    from trainer.pipeline import make_dataset

    log = setup[1]

    def histories(seed: int) -> list[np.ndarray]:
        dataset, _ = make_dataset(log, 32, 2, 0.5, seed=seed, epochs=2, with_seen=False)
        return [batch["query"]["history"].numpy() for batch in dataset]

    first = histories(5)
    assert len(first) > 2 and any(not np.array_equal(a, b) for a, b in zip(first, first[1:]))
    assert all(np.array_equal(a, b) for a, b in zip(histories(5), first))
    assert not all(np.array_equal(a, b) for a, b in zip(histories(6), first))


def test_pooled_histories_are_the_mean_of_the_seen_rows(setup) -> None:
    from trainer.pipeline import pooled_histories

    log = setup[1]
    table = np.random.default_rng(0).normal(size=(log.item_count + 1, 4)).astype(np.float32)
    rows = np.arange(log.seen.rows)
    pooled = pooled_histories(log.seen, rows, table, chunk_entries=50)  # several chunks
    for u in rows:
        items = log.seen.values[log.seen.splits[u] : log.seen.splits[u + 1]]
        expected = table[items + 1].mean(axis=0) if len(items) else np.zeros(4)
        np.testing.assert_allclose(pooled[u], expected, rtol=1e-5, atol=1e-6)
