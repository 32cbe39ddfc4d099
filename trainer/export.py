"""Writing the towers as SavedModels with the serving signatures.

User tower (``user_tower/``):

* ``serving_default``: ``user_id``: tf.string [batch] -> {"embedding":
  tf.float32 [batch, dim]}. A lookup: at export the query tower was run once
  for every user the model knows, over their features and full training
  history; an id it does not know gets the tower's vector of a user about whom
  nothing is known (no features, no history).
* ``embed_features``: a new user's raw features -> {"embedding": tf.float32
  [batch, dim]}, the query tower itself applied to the request:

      age: tf.int32 [batch]                 years; 0 = not given
      gender, occupation, zip_code: tf.string [batch]   "" = not given
      watched_item_ids: tf.string [batch, n]            padded with ""

  Each request field feeds the user feature of the same name (``zip_code``
  also feeds ``zip``); features the request has no field for, values the model
  did not see in training and item ids outside the catalog count as unknown.
  Categorical values are compared after stripping spaces and ignoring case.
  A known user described by their own features and training items gets their
  ``serving_default`` vector.

Item tower (``item_tower/``), ``serving_default``: ``item_id``: tf.string
[batch] -> {"embedding": tf.float32 [batch, dim]}: the candidate tower's vector
of each catalog item (those of item_embeddings.npy) and, for an id outside the
catalog, its vector of an item about which nothing is known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from serving import bundle
from trainer.dataset import CATEGORICAL, MULTI, NUMERIC, TEXT
from trainer.features import FeatureSpec
from trainer.model import HISTORY

SIGNATURE = bundle.USER_TOWER_SIGNATURE
FEATURES_SIGNATURE = bundle.FEATURES_SIGNATURE
INPUT = "user_id"
ITEM_INPUT = "item_id"
OUTPUT = "embedding"
ITEM_TOWER = "item_tower"
# Request field of recsys.v1.UserFeatures -> the user feature names it feeds.
REQUEST_FIELDS = {"age": ("age",), "gender": ("gender",), "occupation": ("occupation",), "zip_code": ("zip_code", "zip")}


class VectorLookup(tf.Module):
    """``ids``: tf.string [batch] -> their rows of a fixed table, ``fallback`` for other ids."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, fallback: np.ndarray, input_name: str):
        super().__init__(name="vector_lookup")
        keys = tf.constant(ids.astype(str), tf.string)
        init = tf.lookup.KeyValueTensorInitializer(keys, tf.range(1, len(ids) + 1, dtype=tf.int64))
        self.rows = tf.lookup.StaticHashTable(init, default_value=0)
        self.table = tf.Variable(np.concatenate([fallback[None, :], vectors]).astype(np.float32), trainable=False)
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None], tf.string, name=input_name)])

    def _serve(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT: tf.gather(self.table, self.rows.lookup(ids))}


def _normalised(values: tf.Tensor) -> tf.Tensor:
    return tf.strings.lower(tf.strings.strip(values))


class FeatureTowerModule(tf.Module):
    """The query tower applied to the raw features of a user it has not seen (see the module doc)."""

    def __init__(self, tower: tf.Module, specs: tuple[FeatureSpec, ...], item_ids: np.ndarray):
        super().__init__(name="user_feature_tower")
        self.tower = tower
        self.specs = specs
        self.lookups = {}
        for spec in specs:
            if spec.kind == CATEGORICAL and spec.vocab:
                self.lookups[spec.name] = self._table([v.strip().lower() for v in spec.vocab])
        self.items = self._table(item_ids.astype(str).tolist(), normalise=False)

    @staticmethod
    def _table(keys: list[str], normalise: bool = True) -> tf.lookup.StaticHashTable:
        # key i -> code i + 1; anything else -> 0 (unknown). A key that occurs
        # twice after normalising keeps its first code.
        codes = {}
        for code, key in enumerate(keys, start=1):
            codes.setdefault(key, code)
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(list(codes), tf.string), tf.constant(list(codes.values()), tf.int64))
        return tf.lookup.StaticHashTable(init, default_value=0)

    @staticmethod
    def _prefix_width(spec: FeatureSpec) -> int | None:
        """The length of every value of ``spec`` if they all have one (a zip prefix, say), else None."""
        widths = {len(v) for v in spec.vocab}
        return widths.pop() if len(widths) == 1 else None

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.int32, name="age"),
        tf.TensorSpec([None], tf.string, name="gender"),
        tf.TensorSpec([None], tf.string, name="occupation"),
        tf.TensorSpec([None], tf.string, name="zip_code"),
        tf.TensorSpec([None, None], tf.string, name="watched_item_ids"),
    ])
    def serve(self, age, gender, occupation, zip_code, watched_item_ids) -> dict[str, tf.Tensor]:
        request = {"age": age, "gender": gender, "occupation": occupation, "zip_code": zip_code}
        batch = tf.shape(age)[0]
        inputs = {}
        for spec in self.specs:
            field = next((f for f, names in REQUEST_FIELDS.items() if spec.name in names), None)
            if spec.kind == NUMERIC:
                given = tf.cast(request[field], tf.float32) if field == "age" else tf.fill([batch], np.nan)
                inputs[spec.name] = tf.where(given > 0, given, np.nan) if field == "age" else given
            elif spec.kind == CATEGORICAL and field not in (None, "age") and spec.name in self.lookups:
                value = _normalised(request[field])
                width = self._prefix_width(spec) if field == "zip_code" else None
                if width:  # a prefix feature (space-padded) compares the request's first characters
                    value = tf.strings.strip(tf.strings.substr(tf.strings.join([value, " " * width]), 0, width))
                inputs[spec.name] = tf.cast(self.lookups[spec.name].lookup(value), tf.int32)
            elif spec.kind in (MULTI, TEXT):
                inputs[spec.name] = tf.zeros([batch, spec.width], tf.int32)
            else:
                inputs[spec.name] = tf.zeros([batch], tf.int32)
        inputs[HISTORY] = tf.cast(self.items.lookup(watched_item_ids), tf.int32)  # "" and unknown ids -> 0 (none)
        return {OUTPUT: tf.cast(self.tower(inputs), tf.float32)}


def _save(module: tf.Module, path: Path, signatures: dict) -> None:
    # Saving a subclassed Keras model warns that it has no get_config(); the
    # signatures do not need one, so keep that noise out of the training log.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        tf.saved_model.save(module, str(path), signatures=signatures)
    finally:
        logger.setLevel(level)


def save_user_tower(path: Path, user_ids: np.ndarray, vectors: np.ndarray, unknown: np.ndarray,
                    tower: tf.Module | None = None, specs: tuple[FeatureSpec, ...] = (),
                    item_ids: np.ndarray | None = None) -> None:
    """Saves the user tower: the lookup of ``vectors`` (float32 [users, dim], rows of
    ``user_ids``) with ``unknown`` for other ids, plus ``embed_features`` when the
    query ``tower`` (with its feature ``specs`` and the catalog's ``item_ids``) is given."""
    module = VectorLookup(user_ids, vectors, unknown, INPUT)
    signatures = {SIGNATURE: module.serve}
    if tower is not None:
        module.features = FeatureTowerModule(tower, specs, item_ids)
        signatures[FEATURES_SIGNATURE] = module.features.serve
    _save(module, path, signatures)


def save_item_tower(path: Path, item_ids: np.ndarray, vectors: np.ndarray, unknown: np.ndarray) -> None:
    """Saves the item tower lookup (see the module doc)."""
    module = VectorLookup(item_ids, vectors, unknown, ITEM_INPUT)
    _save(module, path, {SIGNATURE: module.serve})


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
