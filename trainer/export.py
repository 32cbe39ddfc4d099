"""Writing the user tower as a SavedModel with the serving signatures.

Signature ``serving_default``: ``user_id``: tf.string [batch] ->
{"embedding": tf.float32 [batch, dim]}. Unknown ids map to the tower's
out-of-vocabulary row, so every id gets a vector.

Signature ``embed_features`` (trained query towers only): a new user's raw
features -> {"embedding": tf.float32 [batch, dim]}, computed like a known
user's vector but from the request instead of the training tables:

    age: tf.int32 [batch]                 years; 0 = not given
    gender, occupation, zip_code: tf.string [batch]   "" = not given
    watched_item_ids: tf.string [batch, n]            padded with ""

Values the model did not see in training count as unknown (index 0), as do
movie ids outside the catalog.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from serving import bundle

SIGNATURE = bundle.USER_TOWER_SIGNATURE
FEATURES_SIGNATURE = bundle.FEATURES_SIGNATURE
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


class FeatureTowerModule(tf.Module):
    """The query tower's layers applied to raw features of a user it has not seen."""

    def __init__(self, tower: tf.Module, vocab):
        from trainer.features import AGE_BOUNDARIES, ZIP_PREFIX_LENGTH

        super().__init__(name="user_feature_tower")
        self.tower = tower
        self._age_boundaries = [float(b) for b in AGE_BOUNDARIES]
        self._zip_length = ZIP_PREFIX_LENGTH

        def table(values) -> tf.lookup.StaticHashTable:
            # value i -> i + 1, anything else -> 0 (unknown), as in trainer.features._categorical.
            keys = tf.constant([str(v) for v in values], tf.string)
            init = tf.lookup.KeyValueTensorInitializer(keys, tf.range(1, len(values) + 1, dtype=tf.int64))
            return tf.lookup.StaticHashTable(init, default_value=0)

        self.genders = table(vocab.genders)
        self.occupations = table(vocab.occupations)
        self.zip_prefixes = table(vocab.zip_prefixes)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.int32, name="age"),
        tf.TensorSpec([None], tf.string, name="gender"),
        tf.TensorSpec([None], tf.string, name="occupation"),
        tf.TensorSpec([None], tf.string, name="zip_code"),
        tf.TensorSpec([None, None], tf.string, name="watched_item_ids"),
    ])
    def serve(self, age, gender, occupation, zip_code, watched_item_ids) -> dict[str, tf.Tensor]:
        t = self.tower
        # Same normalisation as trainer.features.normalize_* and age_bucket.
        buckets = tf.raw_ops.Bucketize(input=age, boundaries=self._age_boundaries) + 1
        age_rows = tf.where(age > 0, buckets, tf.zeros_like(buckets))
        gender_rows = self.genders.lookup(tf.strings.upper(tf.strings.strip(gender)))
        occupation_rows = self.occupations.lookup(tf.strings.lower(tf.strings.strip(occupation)))
        padded_zip = tf.strings.join([tf.strings.strip(zip_code), " " * self._zip_length])
        zip_rows = self.zip_prefixes.lookup(tf.strings.upper(tf.strings.substr(padded_zip, 0, self._zip_length)))
        item_rows = t.item_lookup(watched_item_ids)
        history = tf.ragged.boolean_mask(item_rows, item_rows > 0)  # padding and unknown movies dropped
        return {OUTPUT: tf.cast(t.encode(age_rows, gender_rows, occupation_rows, zip_rows, history), tf.float32)}


def save_user_tower(tower: tf.Module, path: Path) -> None:
    """Saves ``tower`` at ``path`` with the serving signature, plus ``embed_features``
    when the tower has user features (``feature_vocab``, trainer.features.UserVocab)."""
    vocab = getattr(tower, "feature_vocab", None)
    module = UserTowerModule(tower)
    signatures = {SIGNATURE: module.serve}
    if vocab is not None:
        module.features = FeatureTowerModule(tower, vocab)
        signatures[FEATURES_SIGNATURE] = module.features.serve
    # Saving a subclassed Keras model warns that it has no get_config(); the
    # signature does not need one, so keep that noise out of the training log.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        tf.saved_model.save(module, str(path), signatures=signatures)
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
