"""The user tower of one bundle, loaded from its SavedModel (TensorFlow lives here only)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from serving import bundle

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402  (after the log-level setting above)

_PROBE_ID = "__recsys_probe__"
PRECOMPUTE_BATCH = 4096


def configure_tensorflow(threads: int) -> None:
    """One TF call per batch runs on ``threads`` cores; must run before the first op."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


@dataclasses.dataclass(frozen=True)
class UserTower:
    """Embeds user ids with one model version.

    The tower is run once at load time over every user the model knows, so a
    known user's vector is a table lookup (microseconds, no TensorFlow call);
    ``embed`` runs the SavedModel for the rest (ids the model has not seen get
    its out-of-vocabulary vector).
    """

    version: int
    dim: int
    users: bundle.UserTable
    known_vectors: np.ndarray  # float32 [users, dim], row-aligned with users.ids
    _signature: object
    _saved_model: object  # keeps the signature's variables alive
    _features_signature: object = None  # "embed_features", in towers trained with user features
    _no_features: np.ndarray | None = None  # the vector of a user about whom nothing is known

    @property
    def embeds_features(self) -> bool:
        return self._features_signature is not None

    def embed(self, user_ids: list[str]) -> np.ndarray:
        """float32 [n, dim] straight from the SavedModel."""
        outputs = self._signature(user_id=tf.constant(user_ids, dtype=tf.string))
        return outputs["embedding"].numpy()

    def embed_features(self, features: list) -> tuple[np.ndarray, np.ndarray]:
        """recsys.v1.UserFeatures [n] -> (float32 [n, dim], bool [n] informative).

        A vector is not informative when it equals the vector of empty features:
        every value given was unknown to the model, or the model gives those
        features no weight (e.g. demographics in a tower warm-started from
        watch histories alone). Such users are better served by the fallback.
        """
        vectors = _run_features(self._features_signature, features)
        informative = ~np.all(np.isclose(vectors, self._no_features[None, :], rtol=1e-5, atol=1e-6), axis=1)
        return vectors, informative

    def lookup(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [n, dim] with rows of unknown users left zero, bool [n] known)."""
        rows = self.users.row_of.rows(user_ids)
        known = rows >= 0
        vectors = np.zeros((len(user_ids), self.dim), dtype=np.float32)
        vectors[known] = self.known_vectors[rows[known]]
        return vectors, known


def load_user_tower(path: Path, manifest: bundle.Manifest) -> UserTower:
    """Loader for the ModelManager: verify, load, and check that the tower agrees with the items."""
    _, users = bundle.validate(path, manifest)
    saved = tf.saved_model.load(str(path / bundle.USER_TOWER))
    try:
        signature = saved.signatures[bundle.USER_TOWER_SIGNATURE]
    except KeyError as exc:
        raise bundle.BundleError(f"{path}/{bundle.USER_TOWER}: no {bundle.USER_TOWER_SIGNATURE!r} signature") from exc
    probe = [users.ids[0] if len(users.ids) else _PROBE_ID, _PROBE_ID]
    try:
        out = signature(user_id=tf.constant(probe))["embedding"].numpy()
    except (KeyError, TypeError, ValueError, tf.errors.OpError) as exc:
        raise bundle.BundleError(
            f"{path}/{bundle.USER_TOWER}: signature must map user_id: string[n] to embedding: float32[n, dim] ({exc})"
        ) from exc
    if out.shape != (2, manifest.embedding_dim):
        raise bundle.BundleError(
            f"{path}/{bundle.USER_TOWER}: outputs shape {out.shape[1:]} per user, "
            f"but the item embeddings have dimension {manifest.embedding_dim}"
        )
    ids = users.ids.tolist()
    known_vectors = np.zeros((len(ids), manifest.embedding_dim), dtype=np.float32)
    for start in range(0, len(ids), PRECOMPUTE_BATCH):
        chunk = ids[start : start + PRECOMPUTE_BATCH]
        known_vectors[start : start + len(chunk)] = signature(user_id=tf.constant(chunk))["embedding"].numpy()
    if not np.isfinite(out).all() or not np.isfinite(known_vectors).all():
        raise bundle.BundleError(f"{path}/{bundle.USER_TOWER}: produces NaN/Inf embeddings")
    if users.vectors is not None and not np.allclose(users.vectors, known_vectors, rtol=1e-5, atol=1e-6):
        # The index answers known users from that array: both tiers must give a user the same vector.
        worst = int(np.abs(users.vectors - known_vectors).max(axis=1).argmax())
        raise bundle.BundleError(
            f"{path}/{bundle.USER_VECTORS}.npy: user {ids[worst]!r}'s vector differs from what {bundle.USER_TOWER}'s "
            f"{bundle.USER_TOWER_SIGNATURE} returns; the index would search with other vectors than this service: "
            "export the bundle again"
        )
    features_signature = saved.signatures.get(bundle.FEATURES_SIGNATURE)
    no_features = None
    if features_signature is not None:
        no_features = _probe_features(features_signature, path, manifest.embedding_dim)
    return UserTower(manifest.version, manifest.embedding_dim, users, known_vectors, signature, saved,
                     features_signature, no_features)


def _run_features(signature, features: list) -> np.ndarray:
    """Calls the embed_features signature on recsys.v1.UserFeatures messages."""
    width = max(1, max(len(f.watched_item_ids) for f in features))
    watched = [list(f.watched_item_ids) + [""] * (width - len(f.watched_item_ids)) for f in features]
    outputs = signature(
        age=tf.constant([f.age for f in features], dtype=tf.int32),
        gender=tf.constant([f.gender for f in features], dtype=tf.string),
        occupation=tf.constant([f.occupation for f in features], dtype=tf.string),
        zip_code=tf.constant([f.zip_code for f in features], dtype=tf.string),
        watched_item_ids=tf.constant(watched, dtype=tf.string),
    )
    return outputs["embedding"].numpy()


def _probe_features(signature, path: Path, dim: int) -> np.ndarray:
    """Checks the features signature; returns the vector of empty features."""
    from recsys.v1 import common_pb2

    features = [common_pb2.UserFeatures(), common_pb2.UserFeatures(age=30, gender="F", zip_code="94110",
                                                                    watched_item_ids=["1", "?"])]
    try:
        out = _run_features(signature, features)
    except (KeyError, TypeError, ValueError, tf.errors.OpError) as exc:
        raise bundle.BundleError(f"{path}/{bundle.USER_TOWER}: signature {bundle.FEATURES_SIGNATURE!r} fails ({exc})") from exc
    if out.shape != (2, dim) or not np.isfinite(out).all():
        raise bundle.BundleError(
            f"{path}/{bundle.USER_TOWER}: signature {bundle.FEATURES_SIGNATURE!r} gives {out.shape} or non-finite values"
        )
    return out[0]
