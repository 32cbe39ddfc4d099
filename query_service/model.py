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


def configure_tensorflow(threads: int) -> None:
    """One TF call per batch runs on ``threads`` cores; must run before the first op."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


@dataclasses.dataclass(frozen=True)
class UserTower:
    """Embeds user ids with one model version.

    ``embed(ids)`` takes n user ids and returns float32 [n, dim]; ids the model
    has not seen get its out-of-vocabulary vector (``users`` tells them apart).
    """

    version: int
    dim: int
    users: bundle.UserTable
    _signature: object
    _saved_model: object  # keeps the signature's variables alive

    def embed(self, user_ids: list[str]) -> np.ndarray:
        outputs = self._signature(user_id=tf.constant(user_ids, dtype=tf.string))
        return outputs["embedding"].numpy()


def load_user_tower(path: Path, manifest: bundle.Manifest) -> UserTower:
    """Loader for the ModelManager: verify, load, and check that the tower agrees with the items."""
    _, users = bundle.validate(path, manifest)
    saved = tf.saved_model.load(str(path / bundle.USER_TOWER))
    try:
        signature = saved.signatures["serving_default"]
    except KeyError as exc:
        raise bundle.BundleError(f"{path}/{bundle.USER_TOWER}: no 'serving_default' signature") from exc
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
    if not np.isfinite(out).all():
        raise bundle.BundleError(f"{path}/{bundle.USER_TOWER}: produces NaN/Inf embeddings")
    return UserTower(manifest.version, manifest.embedding_dim, users, signature, saved)
