"""Bundles for tests, written with numpy only (no TensorFlow in the test process).

``write_item_bundle`` writes every array of the bundle format and a placeholder
user tower, which is enough for the index service. ``clone_version`` copies a
real (trained) bundle under a new version number, for roll-out tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from serving import ann, bundle

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]


def write_item_bundle(
    model_base: Path,
    n_items: int = 200,
    dim: int = 32,
    n_users: int = 20,
    seed: int = 0,
    embeddings: np.ndarray | None = None,
    with_searcher: bool = False,
    with_user_vectors: bool = True,
) -> Path:
    """A complete bundle with random (or the given) item embeddings and user vectors; optionally a
    serialized searcher, and without user vectors (as bundles written before they were shipped)."""
    rng = np.random.default_rng(seed)
    if embeddings is None:
        embeddings = rng.normal(size=(n_items, dim)).astype(np.float32)
    n_items, dim = embeddings.shape
    with bundle.BundleStaging(model_base) as staging:
        staging.save_array("item_embeddings", embeddings)
        staging.save_array("item_ids", np.array([str(i) for i in range(1, n_items + 1)]))
        staging.save_array("item_titles", np.array([f"Movie {i} ({1950 + i % 50})" for i in range(1, n_items + 1)]))
        staging.save_array("item_genres", (1 << rng.integers(0, len(GENRES), size=n_items)).astype(np.uint32))
        counts = rng.integers(1, 100, size=n_items).astype(np.float32)
        staging.save_array("item_popularity", counts / counts.sum())
        staging.save_array("user_ids", np.array([str(u) for u in range(1, n_users + 1)]))
        per_user = min(5, n_items)
        staging.save_array("seen_indptr", np.arange(0, per_user * n_users + 1, per_user, dtype=np.int64))
        seen = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
        staging.save_array("seen_items", seen.astype(np.int32))
        user_vectors = rng.normal(size=(n_users, dim)).astype(np.float32)
        if with_user_vectors:
            staging.save_array("user_embeddings", user_vectors)
        (staging.path / bundle.USER_TOWER).mkdir()
        (staging.path / bundle.USER_TOWER / "saved_model.pb").write_bytes(b"placeholder: index-only bundle")
        fields = {"embedding_dim": dim, "item_count": n_items, "user_count": n_users, "genres": GENRES, "metrics": {}}
        if with_searcher:
            fields["scann"] = ann.write_searcher(staging.path, embeddings)
        return staging.publish(fields)


def clone_version(source: Path, model_base: Path, version: int) -> Path:
    """Copies bundle ``source`` to ``model_base/<version>`` (via staging, so it appears atomically)."""
    staging = model_base / f".staging-clone-{version}"
    shutil.copytree(source, staging)
    manifest_path = staging / bundle.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = version
    manifest_path.write_text(json.dumps(manifest, indent=2))
    target = model_base / str(version)
    staging.rename(target)
    return target


def rewrite_manifest(bundle_dir: Path, **changes) -> None:
    path = bundle_dir / bundle.MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))
