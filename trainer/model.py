"""The two-tower retrieval model (TensorFlow Recommenders).

Query tower:     user_id: tf.string [batch] -> tf.float32 [batch, embedding_dim]
Candidate tower: item_id: tf.string [batch] -> tf.float32 [batch, embedding_dim]
Score:           dot product of the two.

Each tower looks its id up with a StringLookup (unknown ids -> row 0) and
gathers that row's features from tables baked into the tower (see
trainer.features), so both towers are functions of the id alone and the
exported user tower needs nothing else.

The query tower pools the embeddings of the user's watch history. In training
the movie being predicted is removed from that pool (like EASE's zero
diagonal) and a share of the rest is dropped at random (like a denoising
autoencoder), so the tower learns to predict a movie from the *other* movies a
user watched instead of copying its input.

The loss is TFRS's softmax (``tfrs.tasks.Retrieval``) in one of two modes
(``ModelConfig.negatives``):

* ``"catalog"`` (default): every query is scored against the whole catalog
  (1,682 movies on ml-100k: a [batch, catalog] logit matrix, cheap at this
  size), so the softmax is exact and needs no sampling correction;
* ``"in_batch"``: the other positives of the batch are the negatives, with the
  logits corrected by the log of each candidate's sampling probability (in-batch
  negatives are drawn in proportion to popularity; uncorrected, the model learns
  to under-rank popular movies) and accidental hits removed.

With ``mask_seen`` the user's *other* training movies are taken out of the
softmax for that user: the target only has to outrank movies the user has not
watched. That is the task the seen-excluded protocol (and serving) poses, and
it stops the model spending capacity on ranking movies the user already saw.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from trainer.config import FINE_TUNES, NEGATIVES, ModelConfig
from trainer.features import Csr, ItemFeatures, UserFeatures


def _ragged_rows(table: Csr) -> tf.RaggedTensor:
    return tf.RaggedTensor.from_row_splits(tf.constant(table.values), tf.constant(table.splits))


def _mean_pooled(embedding: keras.layers.Embedding, rows: tf.RaggedTensor, weights: tf.RaggedTensor | None = None) -> tf.Tensor:
    """Mean of ``embedding`` over each ragged row: int [batch, None] -> float32 [batch, dim].

    With ``weights`` (float32, the same ragged shape) the weighted mean
    Σ w·e / Σ w. Empty rows give zeros.
    """
    vectors = embedding(rows.flat_values)
    if weights is None:
        count = tf.cast(tf.expand_dims(rows.row_lengths(), 1), tf.float32)
    else:
        vectors *= tf.expand_dims(weights.flat_values, 1)
        count = tf.expand_dims(tf.reduce_sum(weights, axis=1), 1)
    summed = tf.reduce_sum(tf.RaggedTensor.from_row_splits(vectors, rows.row_splits), axis=1)
    return summed / tf.maximum(count, 1e-6 if weights is not None else 1.0)


def _temporal_weights(positions: tf.RaggedTensor, is_target: tf.RaggedTensor, tau: float) -> tf.RaggedTensor:
    """exp(-|p - p_target| / tau) per history entry: float32, ragged like ``positions``.

    ``positions`` (float32 ragged [batch, None]): each history movie's place in
    the user's time-ordered ratings; ``is_target`` (bool, same shape) marks the
    training target. Rows without the target get weight 1 everywhere.
    """
    found = tf.reduce_any(is_target, axis=1)
    target = tf.where(found, tf.reduce_max(tf.ragged.boolean_mask(positions, is_target), axis=1), 0.0)
    row = positions.value_rowids()
    weight = tf.exp(-tf.abs(positions.flat_values - tf.gather(target, row)) / tau)
    return positions.with_flat_values(tf.where(tf.gather(found, row), weight, tf.ones_like(weight)))


def _row_mask(columns: tf.RaggedTensor, width: int) -> tf.Tensor:
    """Ragged int [batch, None] of column indices in [0, width) -> bool [batch, width],
    True where a row lists the column."""
    indices = tf.stack([columns.value_rowids(), tf.cast(columns.flat_values, tf.int64)], axis=1)
    hits = tf.scatter_nd(indices, tf.ones_like(columns.flat_values, tf.int32), tf.stack([columns.nrows(), tf.cast(width, tf.int64)]))
    return hits > 0


def _pass_through(projection: keras.layers.Dense, rows: slice, name: str) -> None:
    """Sets a built Dense layer to copy the input part ``rows`` to its output
    (identity there, zeros elsewhere, no bias). The part must be as wide as the output."""
    kernel = np.zeros(projection.kernel.shape, dtype=np.float32)
    part = kernel[rows]
    if part.shape[0] != kernel.shape[1]:
        raise ValueError(f"warm start needs {name} == embedding_dim, got {part.shape[0]} and {kernel.shape[1]}")
    kernel[rows] = np.eye(kernel.shape[1], dtype=np.float32)
    projection.set_weights([kernel, np.zeros(kernel.shape[1], dtype=np.float32)])


def _embedding(rows: int, dim: int, name: str) -> keras.layers.Embedding:
    return keras.layers.Embedding(
        rows, dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05), name=name
    )


class QueryTower(keras.Model):
    """user_id: tf.string [batch] -> tf.float32 [batch, embedding_dim].

    A linear projection of: the age bucket, gender, occupation and zip prefix
    embeddings, the mean embedding of the movies in the user's watch history,
    and (if ``user_id_dim`` > 0) a user-id embedding. ``held_out_item_ids``
    (tf.string [batch]) removes that movie from each user's history; pass the
    training targets.
    """

    def __init__(self, users: UserFeatures, item_ids: np.ndarray, config: ModelConfig):
        super().__init__(name="query_tower")
        self._history_dropout = config.history_dropout
        self._history_tau = config.history_tau
        self._positions: tf.RaggedTensor | None = None
        self.user_lookup = keras.layers.StringLookup(vocabulary=users.ids.tolist(), mask_token=None, name="user_lookup")
        self.item_lookup = keras.layers.StringLookup(vocabulary=item_ids.tolist(), mask_token=None, name="item_lookup")
        self._age = tf.constant(users.age_bucket)
        self._gender = tf.constant(users.gender)
        self._occupation = tf.constant(users.occupation)
        self._zip = tf.constant(users.zip_prefix)
        # Raw feature values -> the indices above, for the embed_features export.
        self.feature_vocab = users.vocab
        self.set_history(users.history)
        fdim = config.feature_dim
        self.user_embedding = (
            _embedding(len(users.ids) + 1, config.user_id_dim, "user_id") if config.user_id_dim else None
        )
        self.age_embedding = _embedding(users.age_bucket_size, fdim, "age")
        self.gender_embedding = _embedding(users.gender_size, fdim, "gender")
        self.occupation_embedding = _embedding(users.occupation_size, fdim, "occupation")
        self.zip_embedding = _embedding(users.zip_prefix_size, fdim, "zip_prefix")
        self.history_embedding = _embedding(len(item_ids) + 1, config.history_dim, "history")
        self.projection = keras.layers.Dense(config.embedding_dim, name="projection")

    def set_history(self, history: Csr) -> None:
        """Replaces the watch histories (Csr over users + 1 rows of 1-based item rows).

        Takes effect for functions traced afterwards (eager calls, a new export).
        """
        self._history = _ragged_rows(history)
        self._positions = None  # belonged to the previous table

    def set_history_positions(self, positions: Csr) -> None:
        """Training only: each history entry's position in its user's time-ordered
        ratings (float, the same Csr layout as the current history table). With
        ``history_tau`` > 0, a training pair's history is then pooled with weights
        exp(-|p - p_target| / history_tau) instead of uniformly. Serving and
        evaluation (``training`` false) always pool uniformly."""
        if not np.array_equal(positions.splits, self._history.row_splits.numpy()):
            raise ValueError("positions must have the history table's layout")
        self._positions = tf.RaggedTensor.from_row_splits(
            tf.constant(positions.values, dtype=tf.float32), tf.constant(positions.splits)
        )

    def warm_start(self, history_table: np.ndarray) -> None:
        """Sets the history embedding to ``history_table`` (float [items + 1,
        history_dim]) and the projection to pass it through unchanged, with the
        other inputs' weights and the bias at zero: the tower's output is then the
        mean of the history rows. Needs ``history_dim == embedding_dim``."""
        self(tf.constant(self.user_lookup.get_vocabulary()[:1]))  # builds the layers
        dim = self.history_embedding.output_dim
        _pass_through(self.projection, slice(-dim, None), "history_dim")  # the history is the last input part
        self.history_embedding.set_weights([history_table.astype(np.float32)])

    def side_variables(self) -> list[tuple[tf.Variable, np.ndarray | None]]:
        """The weights ``fine_tune="side"`` trains, each with None (all of it) or a
        float32 row mask of its shape (1 = trained): the feature embeddings (and
        the user-id embedding, if any), the projection bias and the projection
        rows that read them. The history embedding and the projection rows that
        read the pooled history (the last ``history_dim``) are left out."""
        embeddings = [self.age_embedding, self.gender_embedding, self.occupation_embedding, self.zip_embedding]
        if self.user_embedding is not None:
            embeddings.insert(0, self.user_embedding)
        mask = np.ones(self.projection.kernel.shape, dtype=np.float32)
        mask[-self.history_embedding.output_dim:] = 0.0
        return [(e.embeddings, None) for e in embeddings] + [(self.projection.kernel, mask), (self.projection.bias, None)]

    def seen_rows(self, user_ids: tf.Tensor) -> tf.RaggedTensor:
        """user_id: tf.string [batch] -> int ragged [batch, None]: the 1-based item
        rows of each user's watch history (the table the tower pools)."""
        return tf.gather(self._history, self.user_lookup(user_ids))

    def call(self, user_ids: tf.Tensor, held_out_item_ids: tf.Tensor | None = None, training=None) -> tf.Tensor:
        rows = self.user_lookup(user_ids)
        history = tf.gather(self._history, rows)
        weights = None
        if held_out_item_ids is not None:
            held_out = tf.cast(self.item_lookup(held_out_item_ids), history.dtype)
            is_target = tf.equal(history, tf.expand_dims(held_out, 1))
            if training and self._history_tau > 0 and self._positions is not None:
                weights = _temporal_weights(tf.gather(self._positions, rows), is_target, self._history_tau)
                weights = tf.ragged.boolean_mask(weights, tf.logical_not(is_target))
            history = tf.ragged.boolean_mask(history, tf.logical_not(is_target))
        if training and self._history_dropout > 0:
            keep = history.with_flat_values(tf.random.uniform(tf.shape(history.flat_values)) >= self._history_dropout)
            history = tf.ragged.boolean_mask(history, keep)
            weights = None if weights is None else tf.ragged.boolean_mask(weights, keep)
        return self.encode(
            tf.gather(self._age, rows), tf.gather(self._gender, rows), tf.gather(self._occupation, rows),
            tf.gather(self._zip, rows), history, weights, user_rows=rows,
        )

    def encode(self, age, gender, occupation, zip_prefix, history: tf.RaggedTensor,
               weights: tf.RaggedTensor | None = None, user_rows: tf.Tensor | None = None) -> tf.Tensor:
        """Feature indices (int [batch]; 0 = unknown) and history item rows (ragged,
        1-based) -> query vectors. ``call`` gathers them from the training tables;
        the exported ``embed_features`` signature takes them from a request
        (``user_rows`` None: the unknown-user row of the user-id embedding)."""
        parts = []
        if self.user_embedding is not None:
            parts.append(self.user_embedding(tf.zeros_like(age) if user_rows is None else user_rows))
        parts += [
            self.age_embedding(age),
            self.gender_embedding(gender),
            self.occupation_embedding(occupation),
            self.zip_embedding(zip_prefix),
            _mean_pooled(self.history_embedding, history, weights),
        ]
        return self.projection(tf.concat(parts, axis=1))


class CandidateTower(keras.Model):
    """item_id: tf.string [batch] -> tf.float32 [batch, embedding_dim].

    A linear projection of: the movie-id embedding, its genres (multi-hot
    through a linear layer), release-year bucket embedding and the mean
    embedding of its title tokens.
    """

    def __init__(self, items: ItemFeatures, config: ModelConfig):
        super().__init__(name="candidate_tower")
        self.item_lookup = keras.layers.StringLookup(vocabulary=items.ids.tolist(), mask_token=None, name="item_lookup")
        self._genres = tf.constant(items.genres)
        self._year = tf.constant(items.year_bucket)
        self._title = _ragged_rows(items.title_tokens)
        fdim = config.feature_dim
        self.item_embedding = _embedding(len(items.ids) + 1, config.item_id_dim, "item_id")
        self.genre_projection = keras.layers.Dense(fdim, use_bias=False, name="genres")
        self.year_embedding = _embedding(items.year_bucket_size, fdim, "year")
        self.title_embedding = _embedding(items.token_count, fdim * 2, "title_tokens")
        self.projection = keras.layers.Dense(config.embedding_dim, name="projection")

    def warm_start(self, item_table: np.ndarray) -> None:
        """Sets the movie-id embedding to ``item_table`` (float [items + 1,
        item_id_dim]) and the projection to pass it through unchanged, with the
        side features' weights and the bias at zero. Needs ``item_id_dim ==
        embedding_dim``."""
        self(tf.constant(self.item_lookup.get_vocabulary()[:1]))  # builds the layers
        dim = self.item_embedding.output_dim
        _pass_through(self.projection, slice(0, dim), "item_id_dim")  # the movie id is the first input part
        self.item_embedding.set_weights([item_table.astype(np.float32)])

    def side_variables(self) -> list[tuple[tf.Variable, np.ndarray | None]]:
        """As ``QueryTower.side_variables``: the genre, year and title weights, the
        projection bias and the projection rows after the first ``item_id_dim``
        (those read the movie-id embedding, which stays frozen)."""
        mask = np.ones(self.projection.kernel.shape, dtype=np.float32)
        mask[: self.item_embedding.output_dim] = 0.0
        return [
            (self.genre_projection.kernel, None),
            (self.year_embedding.embeddings, None),
            (self.title_embedding.embeddings, None),
            (self.projection.kernel, mask),
            (self.projection.bias, None),
        ]

    def call(self, item_ids: tf.Tensor) -> tf.Tensor:
        rows = self.item_lookup(item_ids)
        parts = [
            self.item_embedding(rows),
            self.genre_projection(tf.gather(self._genres, rows)),
            self.year_embedding(tf.gather(self._year, rows)),
            _mean_pooled(self.title_embedding, tf.gather(self._title, rows)),
        ]
        return self.projection(tf.concat(parts, axis=1))


class TwoTowerModel(tfrs.Model):
    """Trains both towers on batches of positive (user, movie) pairs.

    Batch features: ``user_id``, ``item_id``: tf.string [batch];
    ``item_probability``: tf.float32 [batch], the movie's share of the
    training interactions (its chance of being an in-batch negative; used only
    with ``negatives="in_batch"``). ``evaluate()`` also reports FactorizedTopK:
    top-1/5/10/50/100 accuracy over the whole catalog (``item_ids``), seen
    movies not excluded.
    """

    def __init__(self, query_tower: QueryTower, candidate_tower: CandidateTower, item_ids: np.ndarray, config: ModelConfig):
        super().__init__()
        if config.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {config.negatives!r}")
        if config.fine_tune not in FINE_TUNES:
            raise ValueError(f"fine_tune must be one of {FINE_TUNES}, got {config.fine_tune!r}")
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self._config = config
        self._catalog_ids = tf.constant(item_ids)
        catalog = tf.data.Dataset.from_tensor_slices(item_ids).batch(1024)
        self.task = tfrs.tasks.Retrieval(
            metrics=tfrs.metrics.FactorizedTopK(candidates=catalog.map(lambda ids: (ids, candidate_tower(ids)))),
            remove_accidental_hits=config.negatives == "in_batch",
        )

    def _excluded(self, user_ids: tf.Tensor, item_ids: tf.Tensor) -> tf.Tensor:
        """bool [batch, catalog]: the catalog rows each pair's target must not compete
        with: its user's training movies (if ``mask_seen``) and the target itself
        (the positive is scored separately)."""
        width = tf.size(self._catalog_ids)
        target = tf.RaggedTensor.from_tensor(tf.expand_dims(self.query_tower.item_lookup(item_ids), 1))
        columns = [target]
        if self._config.mask_seen:
            columns.append(tf.cast(self.query_tower.seen_rows(user_ids), target.dtype))
        # Lookup rows are 1-based (0 = unknown id); unknown ids fall out of range and are dropped.
        rows = tf.concat(columns, axis=1) - 1
        rows = tf.ragged.boolean_mask(rows, (rows >= 0) & (rows < tf.cast(width, rows.dtype)))
        return _row_mask(rows, width)

    def train_step(self, inputs):
        """TFRS's step, minus the FactorizedTopK metrics: they are computed only in
        evaluation (``compute_metrics=not training``) and would read as zeros in the log.

        With ``fine_tune="side"`` only the towers' ``side_variables`` are
        updated, the projection kernels' gradients masked to their side-feature
        rows (needs an optimizer without weight decay, which would shrink the
        frozen rows too), with ``side_l2`` times their squared norm added to the loss."""
        if self._config.fine_tune == "all":
            logs = super().train_step(inputs)
        else:
            logs = self._side_train_step(inputs)
        return {name: value for name, value in logs.items() if not name.startswith("factorized_top_k")}

    def _side_train_step(self, inputs):
        parts = [
            (v, None if m is None else tf.constant(m))
            for v, m in self.query_tower.side_variables() + self.candidate_tower.side_variables()
        ]
        variables = [v for v, _ in parts]
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            regularization_loss = tf.constant(0.0)
            if self._config.side_l2 > 0:
                regularization_loss = self._config.side_l2 * tf.add_n(
                    [tf.reduce_sum(tf.square(v if m is None else v * m)) for v, m in parts]
                )
            total_loss = loss + regularization_loss
        gradients = tape.gradient(total_loss, variables)
        gradients = [g if m is None else g * m for g, (_, m) in zip(gradients, parts)]
        self.optimizer.apply_gradients(zip(gradients, variables))
        metrics = {metric.name: metric.result() for metric in self.metrics}
        metrics.update(loss=loss, regularization_loss=regularization_loss, total_loss=total_loss)
        return metrics

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        user_ids, item_ids = features["user_id"], features["item_id"]
        queries = self.query_tower(user_ids, held_out_item_ids=item_ids, training=training)
        positives = self.candidate_tower(item_ids)
        if self._config.negatives == "catalog":
            return self._catalog_loss(queries, positives, user_ids, item_ids, training)
        score_mask = None
        if self._config.mask_seen:
            # Candidate j is a negative for query i unless user i watched it in training.
            seen = tf.gather(self._excluded(user_ids, item_ids), self.query_tower.item_lookup(item_ids) - 1, axis=1)
            score_mask = tf.logical_or(tf.logical_not(seen), tf.eye(tf.shape(queries)[0], dtype=tf.bool))
        return self.task(
            queries,
            positives,
            candidate_sampling_probability=tf.pow(features["item_probability"], self._config.logq_weight),
            candidate_ids=item_ids,
            compute_metrics=not training,
            compute_batch_metrics=False,
            score_mask=score_mask,
        )

    def _catalog_loss(self, queries: tf.Tensor, positives: tf.Tensor, user_ids: tf.Tensor, item_ids: tf.Tensor, training: bool) -> tf.Tensor:
        """Full softmax: queries [b, d] against [positives [b, d]; catalog [n, d]].

        TFRS puts query i's label on candidate column i, so the positives come
        first; of those columns each query keeps only its own. Of the catalog
        columns it keeps every movie except the target's copy and (with
        ``mask_seen``) the user's other training movies.
        """
        batch = tf.shape(queries)[0]
        candidates = tf.concat([positives, self.candidate_tower(self._catalog_ids)], axis=0)
        score_mask = tf.concat(
            [tf.eye(batch, dtype=tf.bool), tf.logical_not(self._excluded(user_ids, item_ids))], axis=1
        )
        return self.task(
            queries,
            candidates,
            candidate_ids=item_ids,  # only read by the metrics, which see the first `batch` candidates
            compute_metrics=not training,
            compute_batch_metrics=False,
            score_mask=score_mask,
        )
