"""A synthetic bundle of any size, for benchmarks and scale tests.

The item embeddings look like a trained table: a mixture of gaussian clusters
(items of a cluster are near each other) with uneven norms (lognormal scale,
as popular items get larger norms in a trained model). Users are drawn from
the same mixture; the user tower is a lookup of those vectors, with a fixed
out-of-vocabulary vector for unknown ids.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from serving.bundle import EVALUATION, USER_TOWER, BundleStaging
from trainer import evaluate as ev
from trainer.export import save_user_tower

# MovieLens 100k's u.genre, in bit order.
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    items: int = 1_000_000
    users: int = 1000
    dim: int = 32
    clusters: int = 1000
    cluster_spread: float = 0.35  # within-cluster std relative to the unit-variance centres
    norm_sigma: float = 0.5  # lognormal sigma of the per-vector scale
    max_seen: int = 50
    seed: int = 0


class LookupTower(tf.Module):
    """user_id: tf.string [batch] -> tf.float32 [batch, dim] from a fixed table.

    Row 0 of ``vectors`` is returned for ids not in ``user_ids``.
    """

    def __init__(self, user_ids: np.ndarray, vectors: np.ndarray):
        super().__init__(name="lookup_tower")
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(user_ids), tf.range(1, len(user_ids) + 1, dtype=tf.int64)
            ),
            default_value=0,
        )
        self.vectors = tf.Variable(vectors, trainable=False, name="vectors")

    def __call__(self, user_ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.vectors, self.table.lookup(user_ids))


def mixture(rng: np.random.Generator, centres: np.ndarray, n: int, config: SyntheticConfig) -> np.ndarray:
    """n vectors from the cluster mixture: float32 [n, dim]."""
    assignment = rng.integers(0, len(centres), size=n)
    vectors = centres[assignment] + config.cluster_spread * rng.standard_normal((n, config.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors *= rng.lognormal(0.0, config.norm_sigma, size=(n, 1)).astype(np.float32)
    return vectors


def write_synthetic_bundle(model_base: Path, config: SyntheticConfig) -> Path:
    """Publishes one synthetic bundle under ``model_base``; returns its folder."""
    if config.items < 1 or config.users < 1 or config.dim < 1:
        raise ValueError("items, users and dim must be positive")
    started = time.monotonic()
    rng = np.random.default_rng(config.seed)
    centres = rng.standard_normal((config.clusters, config.dim), dtype=np.float32)
    item_embeddings = mixture(rng, centres, config.items, config)
    user_vectors = mixture(rng, centres, config.users + 1, config)  # row 0: unknown users

    item_ids = np.arange(1, config.items + 1).astype(str)
    user_ids = np.arange(1, config.users + 1).astype(str)
    # Zipf-like popularity, shuffled so it is unrelated to the id order.
    weights = rng.permutation(1.0 / np.arange(1, config.items + 1) ** 0.8)
    popularity = (weights / weights.sum()).astype(np.float32)
    genre_bits = rng.integers(0, len(GENRES), size=(config.items, 2))
    genres = ((1 << genre_bits[:, 0]) | (1 << genre_bits[:, 1])).astype(np.uint32)

    seen_counts = rng.integers(1, min(config.max_seen, config.items) + 1, size=config.users)
    seen_lists = [np.sort(rng.choice(config.items, size=c, replace=False)) for c in seen_counts]
    seen_indptr = np.concatenate([[0], np.cumsum(seen_counts)]).astype(np.int64)
    seen_items = np.concatenate(seen_lists).astype(np.int32)

    with BundleStaging(model_base) as staging:
        save_user_tower(LookupTower(user_ids, user_vectors), staging.path / USER_TOWER)
        (staging.path / EVALUATION).mkdir()
        ev.write_test_interactions(staging.path / EVALUATION / ev.TEST_INTERACTIONS, None)
        for name, array in {
            "item_embeddings": item_embeddings,
            "item_ids": item_ids,
            "item_titles": np.char.add("Synthetic movie ", item_ids),
            "item_genres": genres,
            "item_popularity": popularity,
            "user_ids": user_ids,
            "seen_indptr": seen_indptr,
            "seen_items": seen_items,
        }.items():
            staging.save_array(name, array)
        return staging.publish(
            {
                "embedding_dim": config.dim,
                "item_count": config.items,
                "user_count": config.users,
                "genres": list(GENRES),
                "metrics": {},
                "training": {
                    "synthetic": dataclasses.asdict(config),
                    "train_seconds": round(time.monotonic() - started, 1),
                },
            }
        )
