"""The two-tower retrieval model (TensorFlow Recommenders), built from the data's schema.

Query tower:     {user features..., "history"} -> tf.float32 [batch, embedding_dim]
Candidate tower: {"item", item features...}    -> tf.float32 [batch, embedding_dim]
Score:           dot product of the two.

Each tower has two linear paths. The query tower: the mean embedding of the
user's history (item rows), plus, for a user the model does not know, a
projection of the user features' encodings (one ``FeatureEncoder`` per declared
feature, trainer.features.FeatureSpec). The candidate tower: the item-id
embedding for an item it knows, a projection of the item features' encodings
for one it does not. Neither tower holds data: the
inputs (feature codes, the history rows) come from the input pipeline in
training (trainer.pipeline) and from the request or a precomputed table in
serving (trainer.export).

The loss is TFRS's softmax (``tfrs.tasks.Retrieval``) in one of two modes
(``ModelConfig.negatives``, chosen by catalog size in trainer.train):

* ``"catalog"``: every query is scored against the whole catalog (a
  [batch, catalog] logit matrix, affordable up to a few ten thousand items), so
  the softmax is exact; with ``mask_seen`` the user's other training items are
  left out of it (the task the seen-excluded protocol and serving pose);
* ``"in_batch"``: the batch's other positives are the negatives (at most
  ``in_batch_negatives`` of them, shared by every query), the logits corrected
  by the log of each candidate's sampling probability (Yi et al., RecSys 2019;
  in-batch negatives are drawn in proportion to popularity) and accidental hits
  (the query's own item among the negatives) removed. Cost grows with batch x
  negatives, not with the catalog.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from trainer.config import NEGATIVES, ModelConfig
from trainer.dataset import CATEGORICAL, MULTI, NUMERIC, TEXT
from trainer.features import FeatureSpec

HISTORY = "history"  # int32 [batch, L]: item rows + 1, 0 = no item
HISTORY_MEAN = "history_mean"  # float32 [batch, history_dim]: the pooled history, precomputed
ITEM = "item"  # int32 [batch]: item row + 1, 0 = unknown item
KNOWN_USER = "known_user"  # float32 [batch]: 1 = a user the model was trained on (history path only)


def _embedding(rows: int, dim: int, name: str) -> keras.layers.Embedding:
    return keras.layers.Embedding(rows, dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05), name=name)


def masked_mean(vectors: tf.Tensor, codes: tf.Tensor) -> tf.Tensor:
    """Mean over the list axis of the vectors whose code is not 0:
    float32 [batch, width, dim], int [batch, width] -> float32 [batch, dim] (zeros for empty lists)."""
    present = tf.cast(codes > 0, vectors.dtype)
    total = tf.reduce_sum(vectors * present[..., None], axis=1)
    return total / tf.maximum(tf.reduce_sum(present, axis=1, keepdims=True), 1.0)


def pooled_embedding(table: keras.layers.Embedding, codes: tf.Tensor) -> tf.Tensor:
    """``masked_mean(table(codes), codes)`` with one lookup per distinct code: int [batch,
    width] -> float32 [batch, dim]. The same value, but the table's gradient has a row per
    distinct code instead of one per entry (on the ML-25M-shaped log, a batch's 8,192 x 32
    history slots hold an order of magnitude fewer distinct items), which is what the
    optimizer then updates."""
    distinct, index = tf.unique(tf.reshape(codes, [-1]))
    vectors = tf.gather(table(distinct), tf.reshape(index, tf.shape(codes)))
    return masked_mean(vectors, codes)


class FeatureEncoder(keras.layers.Layer):
    """One declared feature -> float32 [batch, output_width].

    categorical: int32 [batch] -> its embedding;
    multi / text: int32 [batch, width] -> mean embedding of the non-zero codes;
    numeric: float32 [batch] (NaN = missing) -> [standardised value, bucket embedding].
    """

    def __init__(self, spec: FeatureSpec, dim: int):
        super().__init__(name=f"feature_{spec.name}")
        self.spec = spec
        self.embedding = _embedding(spec.rows, dim, "embedding")
        self.output_width = dim + (1 if spec.kind == NUMERIC else 0)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        kind = self.spec.kind
        if kind == CATEGORICAL:
            return self.embedding(values)
        if kind in (MULTI, TEXT):
            return masked_mean(self.embedding(values), values)
        known = tf.math.is_finite(values)
        bucket = tf.raw_ops.Bucketize(input=tf.where(known, values, 0.0), boundaries=list(self.spec.boundaries)) + 1
        bucket = tf.where(known, bucket, 0)
        standardised = tf.where(known, (values - self.spec.mean) / self.spec.std, 0.0)
        return tf.concat([standardised[:, None], self.embedding(bucket)], axis=1)


def _identity(projection: keras.layers.Dense, name: str) -> None:
    """Sets a built square Dense layer to the identity (and its bias, if any, to zero)."""
    rows, columns = projection.kernel.shape
    if rows != columns:
        raise ValueError(f"warm start needs {name} == embedding_dim, got {rows} and {columns}")
    projection.set_weights([np.eye(rows, dtype=np.float32)] + [np.zeros(columns, np.float32)] * projection.use_bias)


def dummy_inputs(specs: tuple[FeatureSpec, ...], batch: int = 1) -> dict[str, tf.Tensor]:
    """Inputs of ``batch`` rows about which nothing is known (to build a tower)."""
    return {
        s.name: tf.fill([batch], np.nan) if s.kind == NUMERIC
        else tf.zeros([batch, s.width] if s.kind in (MULTI, TEXT) else [batch], tf.int32)
        for s in specs
    }


class QueryTower(keras.Model):
    """{user feature name: codes / values [batch, ...], "history": int32 [batch, L],
    "known_user": float32 [batch] (optional)} -> float32 [batch, embedding_dim].

    Two linear paths, added:

    * the history path: a projection (no bias) of the mean embedding of the
      history items (rows + 1; 0 pads). ``"history_mean"`` (float32 [batch,
      history_dim], from ``pooled``) may replace ``"history"``, which is how every
      known user's vector is computed over their full history at export;
    * the features path: a projection (with a bias, the query of a user about
      whom nothing is known) of the user features' encodings, times the constant
      ``new_user_weight`` when the user has a history (1 without: it is then the
      whole query), and times 0 for a user whose ``known_user`` is 1.

    A user the model was trained on (``known_user`` 1) is queried by their
    history alone: demographics only cost such users quality (the history the
    model was trained on says more). A user it does not know (``known_user``
    absent or 0: every request through ``embed_features``) gets the features
    path, plus the history path when they name movies.
    """

    def __init__(self, specs: tuple[FeatureSpec, ...], item_count: int, config: ModelConfig):
        super().__init__(name="query_tower")
        self.specs = specs
        self.encoders = [FeatureEncoder(s, config.feature_dim) for s in specs]
        self.history_embedding = _embedding(item_count + 1, config.history_dim, "history")
        self.history_projection = keras.layers.Dense(config.embedding_dim, use_bias=False, name="history_projection")
        self.feature_projection = keras.layers.Dense(config.embedding_dim, name="feature_projection")
        self.new_user_weight = tf.Variable(1.0, trainable=False, name="new_user_weight")
        # 1 per feature the features path uses, 0 for one it leaves out (chosen in training, trainer.cold_start).
        self.feature_mask = tf.Variable(tf.ones([len(specs)]), trainable=False, name="feature_mask")

    @property
    def feature_layers(self) -> list[keras.layers.Layer]:
        """The layers of the features path (trained in their own phase, see trainer.train)."""
        return [*self.encoders, self.feature_projection]

    def features_part(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """The features path before the gate and ``new_user_weight``: float32 [batch, embedding_dim]."""
        parts = [self.feature_mask[i] * encoder(inputs[encoder.spec.name]) for i, encoder in enumerate(self.encoders)]
        if not parts:  # no user features: the bias alone (a zero column: oneDNN fails on a 0-wide matmul)
            batch = tf.shape(inputs[HISTORY_MEAN] if HISTORY_MEAN in inputs else inputs[HISTORY])[0]
            parts = [tf.zeros([batch, 1])]
        return self.feature_projection(tf.concat(parts, axis=1))

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        if HISTORY_MEAN in inputs:
            pooled = inputs[HISTORY_MEAN]
            has_history = tf.reduce_any(pooled != 0, axis=1)
        else:
            history = inputs[HISTORY]
            pooled = pooled_embedding(self.history_embedding, history)
            has_history = tf.reduce_any(history > 0, axis=1)
        query = self.history_projection(pooled)
        new = 1.0 - tf.cast(inputs[KNOWN_USER], query.dtype) if KNOWN_USER in inputs else tf.ones_like(query[:, 0])
        # Without a history the features path is the whole query, and its weight does not change the ranking.
        weight = tf.where(has_history, self.new_user_weight, 1.0)
        return query + (new * weight)[:, None] * self.features_part(inputs)

    def build_with_dummy(self) -> None:
        self({**dummy_inputs(self.specs), HISTORY: tf.zeros([1, 1], tf.int32)})

    def warm_start(self, history_table: np.ndarray) -> None:
        """Sets the history embedding to ``history_table`` (float [items + 1,
        history_dim]) and the history projection to the identity: a known
        user's query is then the mean of their history rows. Needs
        ``history_dim == embedding_dim``. The features path is left as it is."""
        self.build_with_dummy()
        _identity(self.history_projection, "history_dim")
        self.history_embedding.set_weights([history_table.astype(np.float32)])


class CandidateTower(keras.Model):
    """{"item": int32 [batch] (row + 1, 0 = unknown), item feature name: ...}
    -> float32 [batch, embedding_dim].

    Two linear paths, one per item:

    * an item the model knows (``item`` > 0): a projection of its item-id embedding;
    * an item it does not know (``item`` 0, e.g. a new movie added after
      training): a projection (with a bias) of the item features' encodings,
      times the constant ``metadata_scale`` (calibrated so that such items take
      about their share of top-k slots, see trainer.train).
    """

    def __init__(self, specs: tuple[FeatureSpec, ...], item_count: int, config: ModelConfig):
        super().__init__(name="candidate_tower")
        self.specs = specs
        self.item_embedding = _embedding(item_count + 1, config.item_id_dim, "item_id")
        self.id_projection = keras.layers.Dense(config.embedding_dim, name="id_projection")
        self.encoders = [FeatureEncoder(s, config.feature_dim) for s in specs]
        self.metadata_projection = keras.layers.Dense(config.embedding_dim, name="metadata_projection")
        self.metadata_scale = tf.Variable(1.0, trainable=False, name="metadata_scale")
        # 1 per feature the metadata path uses, 0 for one it leaves out (chosen in training, trainer.cold_start).
        self.feature_mask = tf.Variable(tf.ones([len(specs)]), trainable=False, name="feature_mask")

    @property
    def metadata_layers(self) -> list[keras.layers.Layer]:
        """The layers of the metadata path (trained in their own phase, see trainer.train)."""
        return [*self.encoders, self.metadata_projection]

    def metadata_part(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """The metadata path with its scale: float32 [batch, embedding_dim]."""
        parts = [self.feature_mask[i] * encoder(inputs[encoder.spec.name]) for i, encoder in enumerate(self.encoders)]
        if not parts:  # no item features: the bias alone (a zero column, as in QueryTower)
            parts = [tf.zeros([tf.shape(inputs[ITEM])[0], 1])]
        return self.metadata_scale * self.metadata_projection(tf.concat(parts, axis=1))

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        item = inputs[ITEM]
        by_id = self.id_projection(self.item_embedding(item))
        return tf.where((item > 0)[:, None], by_id, self.metadata_part(inputs))

    def build_with_dummy(self) -> None:
        self({**dummy_inputs(self.specs), ITEM: tf.zeros([1], tf.int32)})

    def warm_start(self, item_table: np.ndarray) -> None:
        """Sets the item-id embedding to ``item_table`` (float [items + 1,
        item_id_dim]) and its projection to the identity. Needs
        ``item_id_dim == embedding_dim``. The metadata path is left as it is."""
        self.build_with_dummy()
        _identity(self.id_projection, "item_id_dim")
        self.item_embedding.set_weights([item_table.astype(np.float32)])


class TwoTowerModel(tfrs.Model):
    """Trains both towers on batches of positive (user, item) pairs (trainer.pipeline):

    ``query``: the query tower's inputs; ``candidate``: the candidate tower's
    inputs for the positive item; ``item``: int32 [batch] its row;
    ``item_probability``: float32 [batch] its share of the training
    interactions (in_batch's logQ correction); ``seen``: bool [batch, catalog]
    the user's training items (catalog mode with ``mask_seen`` only).

    ``catalog`` (catalog mode only): the candidate tower's inputs for every item.

    ``l2`` (per example) penalises the squared weights of ``penalised`` layers'
    kernels and embeddings (not their biases), for the cold-start phases.
    """

    def __init__(self, query_tower: QueryTower, candidate_tower: CandidateTower, config: ModelConfig,
                 catalog: dict[str, np.ndarray] | None = None, penalised: tuple = (), l2: float = 0.0):
        super().__init__()
        if config.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {config.negatives!r}")
        if config.negatives == "catalog" and catalog is None:
            raise ValueError("catalog negatives need the catalog's candidate inputs")
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self._config = config
        self._catalog = None if catalog is None else {name: tf.constant(v) for name, v in catalog.items()}
        self.task = tfrs.tasks.Retrieval()
        self._penalised, self._l2 = penalised, l2

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        queries = self.query_tower(features["query"])
        positives = self.candidate_tower(features["candidate"])
        if self._config.negatives == "catalog":
            loss = self._catalog_loss(queries, positives, features)
        else:
            loss = self._in_batch_loss(queries, positives, features)
        if self._l2 > 0:
            weights = [w for layer in self._penalised for w in layer.trainable_weights if "bias" not in w.name]
            # The softmax losses are sums over the batch, so the penalty is per example times the batch.
            loss += self._l2 * tf.cast(tf.shape(queries)[0], loss.dtype) * tf.add_n([tf.reduce_sum(w**2) for w in weights])
        return loss

    def _in_batch_loss(self, queries: tf.Tensor, positives: tf.Tensor, features: dict) -> tf.Tensor:
        """Softmax of each query's positive against the batch's first ``in_batch_negatives``
        positives (a popularity-proportional sample of items, the batch being a random
        draw of interactions): logits [b, 1 + n], every column corrected by
        -logq_weight * log(sampling probability), negatives that are the query's own
        item (accidental hits) masked. Summed over the batch, like TFRS's Retrieval task,
        whose in-batch softmax this is with the negatives capped (its cost grows with
        b x n instead of b²)."""
        count = tf.minimum(tf.shape(positives)[0], self._config.in_batch_negatives)
        negatives, negative_items = positives[:count], features["item"][:count]
        log_q = self._config.logq_weight * tf.math.log(tf.maximum(features["item_probability"], 1e-12))
        positive_logits = tf.reduce_sum(queries * positives, axis=1, keepdims=True) - log_q[:, None]
        negative_logits = tf.matmul(queries, negatives, transpose_b=True) - log_q[None, :count]
        hits = tf.equal(features["item"][:, None], negative_items[None, :])
        negative_logits = tf.where(hits, tf.constant(-1e9, negative_logits.dtype), negative_logits)
        logits = tf.concat([positive_logits, negative_logits], axis=1)
        labels = tf.zeros(tf.shape(logits)[:1], tf.int32)
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    def _catalog_loss(self, queries: tf.Tensor, positives: tf.Tensor, features: dict) -> tf.Tensor:
        """Full softmax: queries [b, d] against [positives [b, d]; catalog [n, d]].

        TFRS puts query i's label on candidate column i, so the positives come
        first; of those columns each query keeps only its own. Of the catalog
        columns it keeps every item except the target's copy and (with
        ``mask_seen``) the user's other training items.
        """
        batch = tf.shape(queries)[0]
        catalog = self.candidate_tower(self._catalog)
        excluded = tf.one_hot(features["item"], tf.shape(catalog)[0], on_value=True, off_value=False)
        if self._config.mask_seen:
            excluded = tf.logical_or(excluded, features["seen"])
        score_mask = tf.concat([tf.eye(batch, dtype=tf.bool), tf.logical_not(excluded)], axis=1)
        return self.task(
            queries,
            tf.concat([positives, catalog], axis=0),
            compute_metrics=False,
            compute_batch_metrics=False,
            score_mask=score_mask,
        )
