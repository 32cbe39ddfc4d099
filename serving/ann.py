"""ScaNN, shared by the index service and the bundle builder, without TensorFlow.

``scann``'s package ``__init__`` imports TensorFlow whenever it is importable
(for its TF ops), which costs a process seconds and hundreds of MB for
nothing, so only its pybind API is imported, with TensorFlow blocked for the
duration of the import.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def _import_scann_pybind():
    blocked = "tensorflow" not in sys.modules
    if blocked:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # makes `import tensorflow` fail fast
    try:
        from scann.scann_ops.py import scann_ops_pybind
    finally:
        if blocked and sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]
    return scann_ops_pybind


scann_ops_pybind = _import_scann_pybind()

# Below this many items, exact brute-force scoring is as fast as any tree.
EXACT_BELOW = 20_000


def scann_config(n: int) -> dict[str, Any]:
    """ScaNN parameters by catalog size: exact for small, partitioned + AH for large.

    The shape follows ScaNN's own guidance: about sqrt(n) leaves, a few percent
    of them searched, anisotropic hashing with 2 dims per block, and an exact
    re-scoring of the best few hundred candidates.
    """
    if n < EXACT_BELOW:
        return {"mode": "brute_force"}
    leaves = int(min(4000, max(100, round(2 * np.sqrt(n)))))
    return {
        "mode": "tree_ah",
        "num_leaves": leaves,
        "num_leaves_to_search": max(10, leaves // 20),
        "training_sample_size": int(min(n, 250_000)),
        "dims_per_block": 2,
        "anisotropic_quantization_threshold": 0.2,
        "reorder": 250,
    }


def build_searcher(embeddings: np.ndarray, config: dict[str, Any]):
    builder = scann_ops_pybind.builder(embeddings, 10, "dot_product")
    if config["mode"] == "brute_force":
        return builder.score_brute_force().build()
    return (
        builder.tree(
            num_leaves=config["num_leaves"],
            num_leaves_to_search=config["num_leaves_to_search"],
            training_sample_size=config["training_sample_size"],
        )
        .score_ah(config["dims_per_block"], anisotropic_quantization_threshold=config["anisotropic_quantization_threshold"])
        .reorder(config["reorder"])
        .build()
    )
