"""Writing the user tower as a SavedModel with the serving signature.

Signature ``serving_default``: ``user_id``: tf.string [batch] ->
{"embedding": tf.float32 [batch, dim]}. Unknown ids map to the tower's
out-of-vocabulary row, so every id gets a vector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

SIGNATURE = "serving_default"
INPUT = "user_id"
OUTPUT = "embedding"


class UserTowerModule(tf.Module):
    """Wraps any callable ``tf.string [batch] -> tf.float32 [batch, dim]`` for export."""

    def __init__(self, tower: tf.Module):
        super().__init__(name="user_tower")
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT)])
    def serve(self, user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT: tf.cast(self.tower(user_id), tf.float32)}


def save_user_tower(tower: tf.Module, path: Path) -> None:
    """Saves ``tower`` at ``path`` with the serving signature."""
    module = UserTowerModule(tower)
    # Saving a subclassed Keras model warns that it has no get_config(); the
    # signature does not need one, so keep that noise out of the training log.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        tf.saved_model.save(module, str(path), signatures={SIGNATURE: module.serve})
    finally:
        logger.setLevel(level)


def load_user_tower(path: Path):
    """The serving signature of the SavedModel at ``path`` (a concrete function)."""
    return tf.saved_model.load(str(path)).signatures[SIGNATURE]


def embed_users(signature, user_ids: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Runs the serving signature: str [u] -> float32 [u, dim]."""
    if len(user_ids) == 0:
        raise ValueError("no user ids to embed")
    parts = [
        signature(**{INPUT: tf.constant(user_ids[start : start + batch_size])})[OUTPUT].numpy()
        for start in range(0, len(user_ids), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32, copy=False)
