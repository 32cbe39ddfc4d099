"""ScaNN, shared by the index service and the bundle builder, without TensorFlow.

``scann``'s package ``__init__`` imports TensorFlow whenever it is importable
(for its TF ops), which costs a process seconds and hundreds of MB for
nothing, so only its pybind API is imported, with TensorFlow blocked for the
duration of the import.

A bundle may carry the built searcher under ``<bundle>/scann/`` (written by
``write_searcher`` before ``BundleStaging.publish``, so its files are hashed
into the manifest), and the parameters it was built with in the manifest's
``"scann"`` field. An index replica that holds the whole catalog then loads
the searcher in about a second instead of re-training the partitioner and the
quantizer (tens of seconds at a million items).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from serving.bundle import BundleError


def _import_scann_pybind():
    blocked = "tensorflow" not in sys.modules
    if blocked:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # makes `import tensorflow` fail fast
    try:
        from scann.scann_ops import scann_assets_pb2
        from scann.scann_ops.py import scann_ops_pybind
    finally:
        if blocked and sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]
    return scann_ops_pybind, scann_assets_pb2


scann_ops_pybind, _scann_assets_pb2 = _import_scann_pybind()

# Below this many items, exact brute-force scoring is as fast as any tree.
EXACT_BELOW = 20_000
# The bundle folder that holds a serialized searcher, and ScaNN's index of its files.
SEARCHER_DIR = "scann"
_ASSETS = "scann_assets.pbtxt"


def scann_config(n: int) -> dict[str, Any]:
    """ScaNN parameters for a catalog of ``n`` items (dot product).

    - fewer than 20k items: exact brute force (as fast as any tree there);
    - otherwise a k-means tree with about 2 sqrt(n) leaves, searching 2% of
      them (at least 16), anisotropic hashing with 2 dims per 4-bit block, and
      an exact float32 re-scoring of the best ``reorder`` candidates.

    Tuned at 1M x 32 dims on a clustered table with uneven norms
    (``trainer/synthetic.py``; see bench/README.md for the sweep): 2000 leaves,
    40 searched, reorder 200 gives recall@10 ~0.97 against exact search at
    ~45 us a query on one core. Searching more leaves buys little recall for
    much time; 1000 leaves need 3-4% searched for the same recall, slower.
    The returned dict is what the bundle records in its manifest ("scann").
    """
    if n < EXACT_BELOW:
        return {"mode": "brute_force", "item_count": int(n)}
    leaves = int(min(4000, max(100, round(2 * np.sqrt(n)))))
    return {
        "mode": "tree_ah",
        "item_count": int(n),
        "num_leaves": leaves,
        "num_leaves_to_search": max(16, round(leaves * 0.02)),
        "training_sample_size": int(min(n, 250_000)),
        "dims_per_block": 2,
        "anisotropic_quantization_threshold": 0.2,
        # Candidates scored by AH that are re-scored exactly (float32): ScaNN's
        # pre-reorder count. The final count is the request's k.
        "reorder": 200,
    }


def build_searcher(embeddings: np.ndarray, config: dict[str, Any]):
    """A ScaNN searcher over float32 [n, dim] ``embeddings`` with ``config`` (see ``scann_config``)."""
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


def serialize(searcher, directory: str | os.PathLike[str]) -> None:
    """Writes ``searcher``'s files into ``directory`` (created), with paths relative to it.

    Relative paths matter: the bundle is written in a staging folder and then
    renamed, and may be copied to another machine.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    searcher.serialize(str(directory), relative_path=True)


def load_serialized(directory: str | os.PathLike[str]):
    """Loads a searcher written by ``serialize``.

    Unlike ``scann_ops_pybind.load_searcher`` this never unpickles (ScaNN would
    unpickle a ``scann_docids.pkl`` found beside the assets) and refuses asset
    paths that leave ``directory``. Raises BundleError with the reason.
    """
    from google.protobuf import text_format

    directory = Path(directory)
    assets_path = directory / _ASSETS
    try:
        text = assets_path.read_text()
        assets = text_format.Parse(text, _scann_assets_pb2.ScannAssets())
    except (OSError, text_format.ParseError) as exc:
        raise BundleError(f"{assets_path}: unreadable ScaNN asset list ({exc})") from exc
    real_dir = directory.resolve()
    for asset in assets.assets:
        rel = Path(asset.asset_path)
        if rel.is_absolute() or not (directory / rel).resolve().is_relative_to(real_dir):
            raise BundleError(f"{assets_path}: asset {asset.asset_path!r} is outside {directory}")
        if not (directory / rel).is_file():
            raise BundleError(f"{directory / rel}: listed in {_ASSETS} but missing")
    try:
        return scann_ops_pybind.ScannSearcher(scann_ops_pybind.scann_pybind.ScannNumpy(str(directory), text))
    except Exception as exc:  # pybind raises RuntimeError/ValueError with ScaNN's status text
        raise BundleError(f"{directory}: ScaNN could not load the searcher ({exc})") from exc


def write_searcher(staging_path: str | os.PathLike[str], embeddings: np.ndarray) -> dict[str, Any]:
    """Builds the searcher for ``embeddings`` and serializes it into ``<staging_path>/scann/``.

    For a bundle writer, before ``BundleStaging.publish`` (so the files are
    hashed into the manifest)::

        manifest_fields["scann"] = ann.write_searcher(staging.path, embeddings)

    ``embeddings`` is the bundle's float32 [n, dim] item_embeddings, row for row.
    Returns the parameters (``scann_config(n)`` plus ``"serialized"``) for the
    manifest's "scann" field. Below ``EXACT_BELOW`` items nothing is written
    (a brute-force searcher builds in milliseconds) and "serialized" is None.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    config = scann_config(len(embeddings))
    if config["mode"] == "brute_force":
        return {**config, "serialized": None}
    serialize(build_searcher(embeddings, config), Path(staging_path) / SEARCHER_DIR)
    return {**config, "serialized": SEARCHER_DIR}


def check_matches(searcher, embeddings: np.ndarray, samples: int = 8) -> None:
    """Raises BundleError unless ``searcher`` indexes exactly ``embeddings`` (row for row).

    Cheap: the size must agree, and for a few rows the searcher's (exactly
    re-scored) scores must equal the dot products recomputed from ``embeddings``,
    which fails if the searcher was built from other vectors or another row order.
    """
    n = len(embeddings)
    if searcher.size() != n:
        raise BundleError(f"serialized searcher holds {searcher.size()} items, the bundle {n}: rebuild the bundle")
    rows = np.random.default_rng(0).choice(n, size=min(samples, n), replace=False)
    queries = embeddings[rows]
    found, scores = searcher.search_batched(queries, final_num_neighbors=5)
    found = np.asarray(found, dtype=np.int64)
    expected = np.einsum("qd,qkd->qk", queries, embeddings[found])
    if not np.allclose(scores, expected, rtol=1e-3, atol=1e-3):
        raise BundleError("serialized searcher does not match item_embeddings.npy: rebuild the bundle")
