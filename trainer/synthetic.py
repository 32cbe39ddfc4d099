"""A synthetic bundle of any size, for benchmarks and scale tests.

Real item embeddings are neither uniform nor unit-norm: items bunch around
topics (genres, franchises), topics differ a lot in size, and popular items
get larger norms under a dot-product loss. ``clustered_table`` has all three,
which is what makes maximum-inner-product search hard for a quantizing index:
Zipf-sized clusters around random directions, with log-normal norms of sigma
0.15 (measured on a trained MovieLens bundle; a sigma of 0.5 made the norms
far wider than any trained table's and ScaNN's recall an artefact of them).
``queries_like`` draws user-like queries from such a table.

Those two are numpy only: ``from trainer.synthetic import clustered_table,
queries_like`` costs no TensorFlow (the bench's index measurements use them).
TensorFlow and ScaNN are imported by ``write_synthetic_bundle`` only, which
publishes a bundle whose user tower is a lookup of fixed vectors (a fixed
out-of-vocabulary vector for unknown ids) and which carries its serialized
ScaNN searcher (manifest field "scann"), as a trained bundle does.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

# MovieLens 100k's u.genre, in bit order.
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

NORM_SIGMA = 0.15  # log-normal sigma of the item norms, as measured on a trained bundle
CLUSTER_SPREAD = 0.6  # norm of an item's offset from its cluster's (unit) direction, in expectation


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    items: int = 1_000_000
    users: int = 1000
    dim: int = 32
    clusters: int = 1000
    cluster_spread: float = CLUSTER_SPREAD
    norm_sigma: float = NORM_SIGMA
    # Training interactions per user: log-normal around MovieLens 100k's median
    # (65 ratings a user, from 20 to 737), clipped to 1..max_seen.
    median_seen: int = 65
    seen_sigma: float = 0.9
    max_seen: int = 1000
    seed: int = 0


def clustered_table(
    n: int,
    dim: int = 32,
    clusters: int = 2000,
    seed: int = 0,
    spread: float = CLUSTER_SPREAD,
    norm_sigma: float = NORM_SIGMA,
) -> np.ndarray:
    """float32 [n, dim]: Zipf-sized clusters around random directions, log-normal norms."""
    rng = np.random.default_rng(seed)
    clusters = max(1, min(clusters, n))
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    assignment = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    step = 1 << 18
    for start in range(0, n, step):
        rows = assignment[start : start + step]
        noise = rng.normal(scale=spread / np.sqrt(dim), size=(len(rows), dim)).astype(np.float32)
        block = centers[rows] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block *= rng.lognormal(mean=0.0, sigma=norm_sigma, size=(len(rows), 1)).astype(np.float32)
        out[start : start + step] = block
    return out


def queries_like(table: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """float32 [count, dim], unit norm: user-like queries that lean toward one item's topic.

    Each is one item's direction, a third of another's (a second interest) and
    some noise, as a user tower's output leans toward what the user watched.
    """
    rng = np.random.default_rng(seed)
    picks = table[rng.integers(0, len(table), size=(count, 2))]
    picks /= np.linalg.norm(picks, axis=2, keepdims=True)
    noise = rng.normal(scale=0.3 / np.sqrt(table.shape[1]), size=(count, table.shape[1]))
    q = picks[:, 0] + 0.33 * picks[:, 1] + noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def seen_lists(rng: np.random.Generator, config: SyntheticConfig, popularity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's training interactions as CSR (int64 indptr [users + 1], int32 item rows).

    Users watch in proportion to item popularity (a few hits in most lists, a
    long tail in few), and list lengths are log-normal, as in MovieLens 100k:
    what a realistic ``exclude_seen`` has to leave out. Drawn with replacement
    and de-duplicated, so a list may come out a little shorter than drawn.
    """
    counts = np.rint(rng.lognormal(np.log(config.median_seen), config.seen_sigma, size=config.users))
    counts = np.clip(counts, 1, min(config.max_seen, config.items)).astype(np.int64)
    cumulative = np.cumsum(popularity, dtype=np.float64)
    draws = np.searchsorted(cumulative, rng.random(int(counts.sum())) * cumulative[-1])
    draws = np.minimum(draws, config.items - 1)
    owner = np.repeat(np.arange(config.users, dtype=np.int64), counts)
    unique = np.unique(owner * config.items + draws)  # sorted by user, then item; duplicates gone
    indptr = np.searchsorted(unique // config.items, np.arange(config.users + 1)).astype(np.int64)
    return indptr, (unique % config.items).astype(np.int32)


def _decimal_ids(first: int, last: int) -> np.ndarray:
    """str ids first..last in the narrowest fixed width (not numpy's default <U21)."""
    return np.arange(first, last + 1).astype(f"U{len(str(last))}")


def _save_lookup_tower(path: Path, user_ids: np.ndarray, vectors: np.ndarray) -> None:
    """A SavedModel that maps user_id -> its row of ``vectors`` (row 0 for unknown ids, row r + 1 for user_ids[r])."""
    from trainer.export import save_user_tower

    save_user_tower(path, user_ids, vectors[1:], vectors[0])


def write_synthetic_bundle(model_base: Path, config: SyntheticConfig) -> Path:
    """Publishes one synthetic bundle (with its serialized ScaNN searcher) under ``model_base``; returns its folder."""
    from serving import ann
    from serving.bundle import EVALUATION, USER_TOWER, BundleStaging
    from trainer import evaluate as ev

    if config.items < 1 or config.users < 1 or config.dim < 1:
        raise ValueError("items, users and dim must be positive")
    started = time.monotonic()
    item_embeddings = clustered_table(
        config.items, config.dim, config.clusters, config.seed, config.cluster_spread, config.norm_sigma
    )
    user_vectors = queries_like(item_embeddings, config.users + 1, seed=config.seed + 1)  # row 0: unknown users
    rng = np.random.default_rng(config.seed + 2)

    item_ids = _decimal_ids(1, config.items)
    user_ids = _decimal_ids(1, config.users)
    # Zipf-like popularity, shuffled so it is unrelated to the id order.
    weights = rng.permutation(1.0 / np.arange(1, config.items + 1) ** 0.8)
    popularity = (weights / weights.sum()).astype(np.float32)
    genre_bits = rng.integers(0, len(GENRES), size=(config.items, 2))
    genres = ((1 << genre_bits[:, 0]) | (1 << genre_bits[:, 1])).astype(np.uint32)

    seen_indptr, seen_items = seen_lists(rng, config, popularity)

    with BundleStaging(model_base) as staging:
        _save_lookup_tower(staging.path / USER_TOWER, user_ids, user_vectors)
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
            "user_embeddings": user_vectors[1:].astype(np.float32),  # the lookup tower's rows of user_ids
        }.items():
            staging.save_array(name, array)
        scann = ann.write_searcher(staging.path, item_embeddings)
        return staging.publish(
            {
                "embedding_dim": config.dim,
                "item_count": config.items,
                "user_count": config.users,
                "genres": list(GENRES),
                "scann": scann,
                "metrics": {},
                "training": {
                    "synthetic": dataclasses.asdict(config),
                    "train_seconds": round(time.monotonic() - started, 1),
                },
            }
        )
