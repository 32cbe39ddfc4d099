"""Streaming training input: the log's int columns -> tf.data batches for TwoTowerModel.

The examples are the training interactions grouped by user (``TrainingLog``):
example e is entry e of ``history`` (a Csr of each user's training items), so
the user's *other* items are the rest of that row. Per batch, vectorised:

1. take a slice of a per-epoch seeded permutation of the examples (only this
   worker's shard of it under multi-worker training);
2. for each example sample up to ``history_length`` of the user's other items
   (all of them when there are fewer; the target is never among them) and drop
   a ``history_dropout`` share at random;
3. gather the user's and the item's feature columns, the item's sampling
   probability and, for the catalog softmax, the user's seen items as a
   [batch, catalog] mask.

Memory is the columns (a few bytes per interaction, users and items) plus a
few batches in flight; no Python object per row.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from trainer.dataset import Csr
from trainer.features import seen_csr, user_time_order
from trainer.model import HISTORY, ITEM


@dataclasses.dataclass(frozen=True)
class TrainingLog:
    """Training interactions grouped by user, plus what a batch gathers.

    history: Csr over users of item rows, one entry per interaction, each user's
    in time order; example_users: int32 [examples] the user of each entry;
    seen: Csr of each user's distinct items (sorted); user_columns /
    item_columns: feature columns (trainer.features.feature_columns), row-aligned
    with the users / items tables; item_probability: float32 [items].
    """

    history: Csr
    example_users: np.ndarray
    seen: Csr
    user_columns: dict[str, np.ndarray]
    item_columns: dict[str, np.ndarray]
    item_probability: np.ndarray

    def __len__(self) -> int:
        return len(self.example_users)

    @property
    def item_count(self) -> int:
        return len(self.item_probability)


def training_log(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, user_count: int, item_count: int,
                 user_columns: dict[str, np.ndarray], item_columns: dict[str, np.ndarray]) -> TrainingLog:
    """Interactions (int rows, int64 timestamps, one entry each) -> TrainingLog."""
    order = user_time_order(users, timestamps, items)
    users, items = users[order].astype(np.int32), items[order].astype(np.int32)
    splits = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=user_count))]).astype(np.int64)
    counts = np.bincount(items, minlength=item_count)
    return TrainingLog(
        history=Csr(splits=splits, values=items),
        example_users=users,
        seen=seen_csr(users, items, user_count),
        user_columns=user_columns,
        item_columns=item_columns,
        item_probability=(counts / max(counts.sum(), 1)).astype(np.float32),
    )


def epoch_rows(count: int, seed: int, epoch: tf.Tensor, shard: int, shards: int) -> tf.Tensor:
    """This shard's share of epoch ``epoch``'s seeded permutation of 0..count-1: int64 [count // shards].

    Every worker computes the same permutation and takes its own slice, so the
    shards are disjoint and all the same size (every worker runs the same
    number of steps, which collective training needs)."""
    keys = tf.random.stateless_uniform([count], seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    permutation = tf.argsort(keys, stable=True)
    per_shard = count // shards
    return tf.cast(permutation[shard :: shards][:per_shard], tf.int64)


def sample_history(history: Csr, rows: tf.Tensor, users: tf.Tensor, length: int, dropout: float,
                   seed: tf.Tensor) -> tf.Tensor:
    """Up to ``length`` of each example's user's other items: int32 [batch, length], item rows + 1, 0 pads.

    ``rows``: int64 [batch] entries of ``history`` (the examples), ``users``: their
    user rows. Users with at most ``length`` other items keep all of them (in
    time order); the others get ``length`` drawn uniformly with replacement. Then
    each kept item is dropped with probability ``dropout``. ``seed``: int64 [2], the
    stateless key of these draws (the same key, the same history).
    """
    draw_seed, dropout_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    splits = tf.constant(history.splits)
    values = tf.constant(history.values)
    start = tf.gather(splits, users)
    others = tf.gather(splits, users + 1) - start - 1  # the user's items minus the target
    local = rows - start  # the target's place in the row
    slot = tf.range(length, dtype=tf.int64)[None, :]
    uniform = tf.random.stateless_uniform(tf.shape(slot * others[:, None]), seed=draw_seed)
    drawn = tf.cast(uniform * tf.cast(others[:, None], tf.float32), tf.int64)
    place = tf.where(others[:, None] <= length, slot, tf.minimum(drawn, others[:, None] - 1))
    place += tf.cast(place >= local[:, None], tf.int64)  # skip the target
    keep = slot < tf.minimum(others, length)[:, None]
    if dropout > 0:
        keep &= tf.random.stateless_uniform(tf.shape(keep), seed=dropout_seed) >= dropout
    return tf.where(keep, tf.gather(values, tf.where(keep, start[:, None] + place, 0)) + 1, 0)


def seen_mask(seen: Csr, users: tf.Tensor, item_count: int) -> tf.Tensor:
    """bool [batch, item_count]: True where the user has the item in ``seen``."""
    ragged = tf.RaggedTensor.from_row_splits(tf.constant(seen.values), tf.constant(seen.splits))
    rows = tf.gather(ragged, users)
    indices = tf.stack([rows.value_rowids(), tf.cast(rows.flat_values, tf.int64)], axis=1)
    counts = tf.scatter_nd(indices, tf.ones_like(rows.flat_values), tf.stack([rows.nrows(), tf.cast(item_count, tf.int64)]))
    return counts > 0


def make_dataset(
    log: TrainingLog,
    batch_size: int,
    history_length: int,
    history_dropout: float,
    seed: int,
    epochs: int,
    with_seen: bool,
    shard: int = 0,
    shards: int = 1,
) -> tuple[tf.data.Dataset, int]:
    """(batches for ``epochs`` epochs, steps per epoch) of this shard.

    Each element is a TwoTowerModel batch (see there). The dataset runs through
    every epoch (pass ``steps_per_epoch`` to Keras): the permutation of epoch k
    is seeded by (seed, k), so every run and every worker visits the same
    examples in the same order; each batch's history sampling and dropout are
    keyed by (seed, shard, epoch, batch), so a run's batches are the same
    whatever the parallel ``map`` schedules first.
    """
    count = len(log)
    per_shard = count // shards
    if per_shard == 0:
        raise ValueError(f"{count} training interactions cannot be split over {shards} workers")
    steps = -(-per_shard // batch_size)
    example_users = tf.constant(log.example_users)
    items_of = tf.constant(log.history.values)
    user_columns = {name: tf.constant(v) for name, v in log.user_columns.items()}
    item_columns = {name: tf.constant(v) for name, v in log.item_columns.items()}
    probability = tf.constant(log.item_probability)

    base_key = tf.constant([seed, shard], tf.int64)

    def batches_of_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        rows = epoch_rows(count, seed, epoch, shard, shards)
        batches = tf.data.Dataset.from_tensor_slices(rows).batch(batch_size).enumerate()
        return batches.map(lambda index, batch: (epoch * steps + index, batch))

    def gather(step: tf.Tensor, rows: tf.Tensor) -> dict:
        key = tf.random.experimental.stateless_fold_in(base_key, step)
        users = tf.gather(example_users, rows)
        items = tf.gather(items_of, rows)
        query = {name: tf.gather(column, users) for name, column in user_columns.items()}
        query[HISTORY] = sample_history(log.history, rows, tf.cast(users, tf.int64), history_length, history_dropout,
                                        key)
        candidate = {name: tf.gather(column, items) for name, column in item_columns.items()}
        candidate[ITEM] = items + 1
        batch = {"query": query, "candidate": candidate, "item": items, "item_probability": tf.gather(probability, items)}
        if with_seen:
            batch["seen"] = seen_mask(log.seen, users, log.item_count)
        return batch

    dataset = (
        tf.data.Dataset.range(epochs)
        .flat_map(batches_of_epoch)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    options = tf.data.Options()
    # Sharding is done above (epoch_rows); tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # No autotuning model: the map's AUTOTUNE then means min(16, schedulable CPUs) parallel
    # batches. With the model on, destroying the iterator at the end of fit waited 20-24 s on
    # its thread (1M and 5M logs alike), for the same steps per second while training.
    options.autotune.enabled = False
    return dataset.with_options(options), steps


def pooled_histories(seen: Csr, user_rows: np.ndarray, table: np.ndarray, chunk_entries: int = 1 << 21) -> np.ndarray:
    """Mean of ``table`` rows (float [items + 1, d], row = item row + 1) over each user's
    ``seen`` items: float32 [len(user_rows), d], zeros for users with none.

    Chunked so that at most ``chunk_entries`` history entries are gathered at once."""
    out = np.zeros((len(user_rows), table.shape[1]), dtype=np.float32)
    lengths = seen.splits[user_rows + 1] - seen.splits[user_rows]
    start = 0
    while start < len(user_rows):
        stop = start + 1 + int(np.searchsorted(np.cumsum(lengths[start:]), chunk_entries))
        stop = min(stop, len(user_rows))
        block, block_lengths = user_rows[start:stop], lengths[start:stop]
        offsets = np.cumsum(block_lengths) - block_lengths  # each user's first entry in the chunk
        entries = np.repeat(seen.splits[block] - offsets, block_lengths) + np.arange(block_lengths.sum())
        vectors = table[seen.values[entries].astype(np.int64) + 1]
        some = block_lengths > 0
        if some.any():
            sums = np.add.reduceat(vectors, offsets[some], axis=0, dtype=np.float64)
            out[start:stop][some] = sums / block_lengths[some][:, None]
        start = stop
    return out
