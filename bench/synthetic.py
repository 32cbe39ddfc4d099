"""A synthetic catalog for index benchmarks: numpy only, no TensorFlow.

Real item embeddings are neither uniform nor unit-norm: items bunch around
topics (genres, franchises), topics differ a lot in size, and popular items
get larger norms under a dot-product loss. This table has all three, which is
what makes maximum-inner-product search hard for a quantizing index.
"""

from __future__ import annotations

import numpy as np


def clustered_table(n: int, dim: int = 32, clusters: int = 2000, seed: int = 0) -> np.ndarray:
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
        noise = rng.normal(scale=0.6 / np.sqrt(dim), size=(len(rows), dim)).astype(np.float32)
        block = centers[rows] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block *= rng.lognormal(mean=0.0, sigma=0.15, size=(len(rows), 1)).astype(np.float32)
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
