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

Item tower (``item_tower/``):

* ``serving_default``: ``item_id``: tf.string [batch] -> {"embedding":
  tf.float32 [batch, dim]}: the candidate tower's vector of each catalog item
  (those of item_embeddings.npy) and, for an id outside the catalog, its
  vector of an item about which nothing is known.
* ``embed_items``: an item's id and raw features -> {"embedding": tf.float32
  [batch, dim]}. A catalog id gets its catalog vector (as ``serving_default``);
  any other id gets the candidate tower applied to its features with the item
  id unknown (the metadata path: how ``python -m trainer add-items`` embeds new
  items without retraining). Inputs, besides ``item_id: tf.string [batch]``,
  one per item feature of the data's schema (``item_feature_inputs``):

      categorical: tf.string [batch]        "" = not given
      multi:       tf.string [batch, n]     one value per cell, padded with ""
      text:        tf.string [batch]        raw text, split into lower-cased
                                            runs of letters and digits as the readers do
      numeric:     tf.float32 [batch]       NaN = not given

  Values are compared after stripping spaces and ignoring case; values the
  model did not see in training count as unknown. The manifest's
  ``item_tower`` entry lists the inputs (``bundle.ITEM_TOWER_INPUTS``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from serving import bundle
from trainer.dataset import CATEGORICAL, MULTI, NUMERIC, TEXT
from trainer.features import FeatureSpec
from trainer.model import HISTORY, ITEM
from trainer.readers.assemble import TOKEN_SEPARATOR_PATTERN  # text features split as the readers split them

SIGNATURE = bundle.USER_TOWER_SIGNATURE
FEATURES_SIGNATURE = bundle.FEATURES_SIGNATURE
INPUT = "user_id"
ITEM_INPUT = "item_id"
OUTPUT = "embedding"
ITEM_TOWER = bundle.ITEM_TOWER
ITEMS_SIGNATURE = bundle.ITEMS_SIGNATURE
# What a SavedModel accepts as a signature input name.
_INPUT_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")
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


def item_feature_inputs(specs: tuple[FeatureSpec, ...]) -> dict[str, dict]:
    """The ``embed_items`` inputs for the item features ``specs``: signature input
    name -> {"feature", "kind", "dtype", "shape"} (what the manifest records). The
    input is named as the feature, with characters a SavedModel input name cannot
    hold replaced by "_" (and a suffix if that collides)."""
    inputs: dict[str, dict] = {}
    for spec in specs:
        name = re.sub(r"[^A-Za-z0-9_.\-/]", "_", spec.name)
        name = name if _INPUT_NAME.match(name) else f"f_{name}"
        base, suffix = name, 2
        while name in inputs or name == ITEM_INPUT:
            name, suffix = f"{base}_{suffix}", suffix + 1
        inputs[name] = {
            "feature": spec.name,
            "kind": spec.kind,
            "dtype": "float32" if spec.kind == NUMERIC else "string",
            "shape": "[batch, n]" if spec.kind == MULTI else "[batch]",
        }
    return inputs


def _hashed(codes: tf.Tensor, rows: int) -> tf.Tensor:
    """trainer.features._hashed: codes past the embedding size share rows 1..rows-1."""
    return tf.where(codes >= rows, (codes - 1) % (rows - 1) + 1, codes) if rows > 1 else tf.zeros_like(codes)


def _first_codes(codes: tf.Tensor, width: int) -> tf.Tensor:
    """int [batch, n] codes with 0 for blank or unknown -> int [batch, width]: each
    row's first ``width`` known codes, then 0s (trainer.features.padded_lists)."""
    order = tf.argsort(tf.cast(tf.equal(codes, 0), tf.int32), axis=1, stable=True)
    codes = tf.gather(codes, order, batch_dims=1)[:, :width]
    codes = tf.pad(codes, [[0, 0], [0, tf.maximum(width - tf.shape(codes)[1], 0)]])
    return tf.ensure_shape(codes, [None, width])


class ItemMetadataModule(tf.Module):
    """The candidate tower applied to raw item features with the item id unknown:
    ``embed({input name: tensor})`` -> tf.float32 [batch, dim] (inputs as in the module doc)."""

    def __init__(self, tower: tf.Module, specs: tuple[FeatureSpec, ...]):
        super().__init__(name="item_metadata_tower")
        self.tower = tower
        self.specs = specs
        self.lookups = {spec.name: FeatureTowerModule._table([v.strip().lower() for v in spec.vocab])
                        for spec in specs if spec.kind != NUMERIC and spec.vocab}
        signature = {ITEM_INPUT: tf.TensorSpec([None], tf.string, name=ITEM_INPUT)}  # gives the batch size
        signature.update({name: tf.TensorSpec([None, None] if entry["kind"] == MULTI else [None],
                                              tf.float32 if entry["kind"] == NUMERIC else tf.string, name=name)
                          for name, entry in item_feature_inputs(specs).items()})
        self.embed = tf.function(self._embed, input_signature=[signature])

    def _codes(self, spec: FeatureSpec, values: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
        if spec.name not in self.lookups:  # a feature without values in training: always unknown
            return tf.zeros([batch, spec.width] if spec.kind in (MULTI, TEXT) else [batch], tf.int32)
        table = self.lookups[spec.name]
        if spec.kind == TEXT:
            words = tf.strings.regex_replace(tf.strings.lower(values, encoding="utf-8"), TOKEN_SEPARATOR_PATTERN, " ")
            values = tf.strings.split(tf.strings.strip(words)).to_tensor(default_value="")
        codes = _hashed(table.lookup(_normalised(values)), spec.rows)  # "" and unknown values -> 0
        if spec.kind in (MULTI, TEXT):
            codes = _first_codes(codes, spec.width)
        return tf.cast(codes, tf.int32)

    def _embed(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        batch = tf.shape(features[ITEM_INPUT])[0]
        inputs = {}
        for (name, _), spec in zip(item_feature_inputs(self.specs).items(), self.specs):
            values = features[name]
            inputs[spec.name] = values if spec.kind == NUMERIC else self._codes(spec, values, batch)
        return tf.cast(self.tower({**inputs, ITEM: tf.zeros([batch], tf.int32)}), tf.float32)


class ItemTowerModule(VectorLookup):
    """The item tower SavedModel: the catalog lookup (``serve``) and ``embed_items``
    (the lookup for catalog ids, ``metadata`` for the others).

    ``metadata`` is an ItemMetadataModule, or the one restored from an earlier
    version's item tower (``restored_metadata``): add-items re-saves it with a
    larger catalog and no tower rebuilt.
    """

    def __init__(self, item_ids: np.ndarray, vectors: np.ndarray, unknown: np.ndarray, metadata: tf.Module,
                 signature: dict[str, tf.TensorSpec]):
        super().__init__(item_ids, vectors, unknown, ITEM_INPUT)
        self.metadata = metadata
        self._input_names = list(signature)  # item_id first
        self.embed_items = tf.function(self._embed_items, input_signature=list(signature.values()))

    def _embed_items(self, *inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        named = dict(zip(self._input_names, inputs))
        rows = self.rows.lookup(named[ITEM_INPUT])
        from_metadata = self.metadata.embed(named)
        return {OUTPUT: tf.where((rows > 0)[:, None], tf.gather(self.table, rows), from_metadata)}

    def save(self, path: Path) -> None:
        _save(self, path, {SIGNATURE: self.serve, ITEMS_SIGNATURE: self.embed_items})


def save_item_tower(path: Path, item_ids: np.ndarray, vectors: np.ndarray, unknown: np.ndarray,
                    tower: tf.Module | None = None, specs: tuple[FeatureSpec, ...] = ()) -> None:
    """Saves the item tower (see the module doc): the lookup of ``vectors`` (float32
    [items, dim], rows of ``item_ids``) with ``unknown`` for other ids, and, when the
    candidate ``tower`` (with its item feature ``specs``) is given, ``embed_items``."""
    if tower is None:
        module = VectorLookup(item_ids, vectors, unknown, ITEM_INPUT)
        _save(module, path, {SIGNATURE: module.serve})
        return
    metadata = ItemMetadataModule(tower, specs)
    ItemTowerModule(item_ids, vectors, unknown, metadata, metadata.embed.input_signature[0]).save(path)


def load_item_tower(path: Path):
    """The item tower SavedModel at ``path`` (an object with ``signatures``)."""
    return tf.saved_model.load(str(path))


def resave_item_tower(loaded, path: Path, item_ids: np.ndarray, vectors: np.ndarray) -> None:
    """Saves, at ``path``, the ``loaded`` item tower (load_item_tower) with the catalog
    ``item_ids`` / ``vectors`` instead of its own: the same metadata path and
    unknown-item vector, so earlier catalog items keep their vectors."""
    if ITEMS_SIGNATURE not in loaded.signatures:
        raise bundle.BundleError(f"the item tower has no {ITEMS_SIGNATURE!r} signature (trained before it existed); "
                                 "retrain to add items")
    unknown = loaded.table.numpy()[0]
    inputs = loaded.signatures[ITEMS_SIGNATURE].structured_input_signature[1]
    signature = {ITEM_INPUT: inputs[ITEM_INPUT], **{name: spec for name, spec in inputs.items() if name != ITEM_INPUT}}
    ItemTowerModule(item_ids, vectors, unknown, loaded.metadata, signature).save(path)


def embed_items(loaded, item_ids: np.ndarray, features: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Runs ``embed_items`` of a loaded item tower: ids str [n] and raw feature arrays
    (one per signature input, as in the module doc) -> float32 [n, dim]."""
    signature = loaded.signatures[ITEMS_SIGNATURE]
    parts = []
    for start in range(0, len(item_ids), batch_size):
        block = slice(start, start + batch_size)
        inputs = {name: tf.constant(values[block]) for name, values in features.items()}
        parts.append(signature(**{ITEM_INPUT: tf.constant(item_ids[block].astype(str))}, **inputs)[OUTPUT].numpy())
    return np.concatenate(parts).astype(np.float32, copy=False)


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
