"""The towers' cold-start paths, trained after the known users' and items' paths.

Known users are queried by their history and known items by their id (phase 1,
trainer.train.fit). Two more TFRS phases then train the paths for what the
model does not know, each against the other tower frozen, each early-stopped on
users or items held out of its training (so its epochs are kept only when they
help, and the figures it logs are honest):

* **new users** (``fit_new_user_path``): the query tower's features path, on
  training examples whose history is dropped to empty, against the frozen
  candidate vectors (the catalog softmax, nothing masked: a new user has seen
  nothing), with L2 on its weights except the bias (which is the query of a
  user about whom nothing is known: the best popularity vector in the item
  space). It starts there (``popularity_query`` as the bias, a zero
  kernel), and that start competes with the trained epochs, so the path
  departs from popularity only where the held-out users say the features help.
  Validation: held-out users ranked from their features alone. Then
  ``new_user_weight``, the weight of the features path beside a new user's
  named movies, is chosen on the same held-out users, each naming their
  ``NAMED_MOVIES`` earliest movies;
* **new items** (``fit_new_item_path``): the candidate tower's metadata path,
  on the training examples with the item id dropped (every candidate, the
  positives and the catalog's, is embedded from its features) against the
  frozen queries of known users. Validation: held-out items, each user's pair
  ranked among the held-out items. Then ``metadata_scale`` is chosen so that
  the held-out items, mixed into the catalog by their metadata vectors, take
  about their share of the interactions in the known users' top-k slots
  (uncalibrated, the fitted vectors shrink towards the mean and new items
  never reach a top 10).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import evaluate as ev
from trainer.config import ModelConfig
from trainer.dataset import CATEGORICAL, MULTI, TEXT, Csr
from trainer.features import rows_present, seen_csr
from trainer.model import HISTORY, HISTORY_MEAN, ITEM, KNOWN_USER, TwoTowerModel
from trainer.pipeline import TrainingLog, make_dataset, pooled_histories, training_log

HELD_OUT_SHARE = 0.1  # of the training users / items, held out to validate each phase
MAX_HELD_OUT = 2000  # ... at most this many
# Training examples per phase (a seeded sample of a larger log): the paths have few weights (the
# features' tables and a projection), so a large log's phases cost a bounded share of its run.
MAX_EXAMPLES = 250_000
# The L2 grid and the sparse-feature variants are all trained while examples x runs stay within
# this; beyond, one run (the middle L2, every feature).
GRID_EXAMPLES = 400_000
STEPS_PER_EXECUTION = 8  # training steps per call into the graph (amortises Keras's per-step overhead)
# L2 per example on the path's embeddings and kernel (not its bias), chosen on the held-out
# users / items among these while the examples times the runs stay within GRID_EXAMPLES; else the middle one.
NEW_USER_L2_GRID = (1e-2, 1e-1)
NEW_ITEM_L2_GRID = (1e-4, 1e-3)
# Features with few examples per value (text, and categorical ones with more values than this)
# overfit a path easily (ml-100k: title words cost new movies, zip prefixes new users); each path
# is also trained without them, and the held-out users / items choose.
SPARSE_VALUES = 100
# Adam's learning rate per path. The features path starts at its optimum for a user about whom
# nothing is known (the popularity query) and moves away only as far as the features earn: at
# 0.01 its steps knocked it off that start (held-out users below popularity after one epoch).
NEW_USER_LEARNING_RATE = 0.001
NEW_ITEM_LEARNING_RATE = 0.01
EPOCHS = 20
# An epoch (one validation) is at least this many steps: a small log's few steps per pass would
# otherwise stop the path by patience before it has moved at NEW_USER_LEARNING_RATE.
MIN_EPOCH_STEPS = 64
PATIENCE = 2
NAMED_MOVIES = 5  # a held-out user names this many earliest movies when new_user_weight is chosen
# new_user_weight candidates, in units of (spread of history scores / spread of feature scores)
NEW_USER_WEIGHT_GRID = (0.0, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
SHARE_TOP_K = 10  # metadata_scale matches new items' share of these top-k slots ...
SCALE_USERS = 2000  # ... over at most this many known users
VALIDATION_METRIC = "val_cold_score"
# Held-out (user, item) pairs scored per evaluation (a seeded sample when there are more): each
# pair is ranked against the whole catalog, so on a large log the evaluations would cost more
# than the phase; 20,000 pairs put HR@10's standard error under 0.4 points.
MAX_PAIRS = 20_000
SCALE_SCORES = 2 * 10**8  # metadata_scale: at most this many user x item scores (fewer users on a large catalog)


def score_spread(queries: np.ndarray, items: np.ndarray) -> float:
    """The standard deviation of every score ``queries @ items.T``, from the two Gram matrices
    (exact, in [dim, dim] memory: the scores of 2,000 users over a million items are 8 GB)."""
    q, c = queries.astype(np.float64), items.astype(np.float64)
    mean = float(q.mean(axis=0) @ c.mean(axis=0))
    second = float(np.sum((q.T @ q) * (c.T @ c))) / (len(q) * len(c))
    return float(np.sqrt(max(second - mean**2, 0.0)))


def popularity_query(item_vectors: np.ndarray, counts: np.ndarray, steps: int = 50) -> np.ndarray:
    """The query q that best explains the interactions without knowing the user: the maximum
    of the catalog softmax's log-likelihood sum_i counts_i log softmax(V q)_i (concave in q),
    by damped Newton steps in [dim] x [dim]. It ranks the items by popularity as far as the
    item space can express it (exactly, when one of its dimensions is log-popularity)."""
    v = item_vectors.astype(np.float64)
    p = counts.astype(np.float64) / max(float(counts.sum()), 1.0)
    target = v.T @ p
    q = np.zeros(v.shape[1])

    def objective(query: np.ndarray) -> tuple[float, np.ndarray]:
        logits = v @ query
        top = logits.max()
        weights = np.exp(logits - top)
        total = weights.sum()
        return float(target @ query - top - np.log(total)), weights / total

    value, softmax = objective(q)
    for _ in range(steps):
        mean = v.T @ softmax
        gradient = target - mean
        hessian = (v * softmax[:, None]).T @ v - np.outer(mean, mean) + 1e-9 * np.eye(len(q))
        direction = np.linalg.solve(hessian, gradient)
        step = 1.0
        while step > 1e-6:
            candidate_value, candidate_softmax = objective(q + step * direction)
            if candidate_value >= value:
                break
            step /= 2
        else:
            break
        q, improvement = q + step * direction, candidate_value - value
        value, softmax = candidate_value, candidate_softmax
        if improvement < 1e-10:
            break
    return q.astype(np.float32)


def _score(hr: np.ndarray, k_small: int, k_large: int) -> float:
    """The early-stopping criterion of trainer.train: HR@small + HR@large / 4."""
    return float(hr[k_small - 1] + hr[k_large - 1] / 4)


class _KeepBest(keras.callbacks.Callback):
    """Scores ``layers`` before training and after each epoch with ``score`` (-> (value,
    text)); keeps the best epoch's weights and restores them at the end. Without
    ``keep_start`` the start is logged only (a random start) and a tie keeps the earlier
    epoch; with it the start competes and a tie keeps the later epoch (a start at the
    popularity query gives way to the features wherever the held-out users cannot tell
    the two apart: small validation sets tie often)."""

    def __init__(self, layers: list, score, log, keep_start: bool = False):
        super().__init__()
        self._layers, self._score, self._log = layers, score, log
        self._keep_start, self._first = keep_start, 0 if keep_start else 1
        self.scores: list[float] = []
        self._best: list | None = None

    def _evaluate(self, epoch: int, logs: dict | None) -> None:
        value, text = self._score()
        self._log(f"  epoch {epoch}: {text}")
        best = max(self.scores[self._first:], default=None)
        if best is None or value > best or (self._keep_start and value == best):
            self._best = [layer.get_weights() for layer in self._layers]
        self.scores.append(value)
        if logs is not None:
            logs[VALIDATION_METRIC] = value

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._evaluate(0, None)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._evaluate(epoch + 1, logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        for layer, weights in zip(self._layers, self._best):
            layer.set_weights(weights)

    @property
    def best_epoch(self) -> int:
        first = self._first if len(self.scores) > self._first else 0
        scores = np.asarray(self.scores[first:])
        best = np.flatnonzero(scores == scores.max())
        return first + int(best[-1] if self._keep_start else best[0])

    @property
    def best_score(self) -> float:
        return self.scores[self.best_epoch]


def _towers_layers(towers) -> list:
    return [*towers.query.layers, *towers.candidate.layers]


def _run_phase(towers, trainable: list, log_data: TrainingLog, transform, catalog: dict | None, config: ModelConfig,
               l2: float, learning_rate: float, batch_size: int, history_length: int, history_dropout: float,
               seed: int, keep: _KeepBest, strategy, verbose: int) -> int:
    """Trains only the ``trainable`` layers of the towers with the softmax of ``config``
    on ``log_data`` (each batch passed through ``transform``); returns the epochs run."""
    for layer in _towers_layers(towers):
        layer.trainable = any(layer is t for t in trainable)
    shards = strategy.num_replicas_in_sync if strategy is not None else 1

    def build() -> TwoTowerModel:
        model = TwoTowerModel(towers.query, towers.candidate, config, catalog, penalised=tuple(trainable), l2=l2)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), steps_per_execution=STEPS_PER_EXECUTION)
        return model

    def dataset_for(context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        index = context.input_pipeline_id if context is not None else 0
        batch = context.get_per_replica_batch_size(batch_size) if context is not None else batch_size
        return make_dataset(log_data, batch, history_length, history_dropout, seed, passes, with_seen=False,
                            shard=index, shards=shards)[0].map(transform)

    per_replica = batch_size // shards if shards > 1 else batch_size
    steps = -(-(len(log_data) // shards) // per_replica)  # per pass over the examples
    epoch_steps = max(steps, MIN_EPOCH_STEPS)
    passes = -(-EPOCHS * epoch_steps // steps)

    try:
        if strategy is None:
            model, data = build(), dataset_for()
        else:
            with strategy.scope():
                model = build()
            data = strategy.distribute_datasets_from_function(dataset_for)
        stop = keras.callbacks.EarlyStopping(monitor=VALIDATION_METRIC, mode="max", patience=PATIENCE)
        history = model.fit(data, epochs=EPOCHS, steps_per_epoch=epoch_steps, callbacks=[keep, stop], verbose=verbose)
    finally:
        for layer in _towers_layers(towers):
            layer.trainable = True
    return len(history.history["loss"])


@dataclasses.dataclass(frozen=True)
class _Trained:
    l2: float
    epochs_run: int
    best_epoch: int
    scores: dict  # run name -> best held-out score
    left_out: list  # features the path does not use


def _sparse(spec) -> bool:
    return spec.kind == TEXT or (spec.kind in (CATEGORICAL, MULTI) and len(spec.vocab) > SPARSE_VALUES)


def _train_path(towers, layers: list, mask: tf.Variable, specs: tuple, grid: tuple, learning_rate: float, score,
                log_data: TrainingLog, transform, catalog, config, batch_size: int, history_length: int,
                history_dropout: float, seed: int, strategy, verbose: int, log, keep_start: bool = False) -> _Trained:
    """Trains ``layers`` once per L2 of ``grid`` and feature set (all features; without the
    sparse ones, if any), each from the same start and early-stopped on ``score``; keeps the
    best run's best epoch and sets ``mask`` to its features. On a large log (examples x runs
    above GRID_EXAMPLES) only the middle L2 with all features."""
    sparse = tuple(s.name for s in specs if _sparse(s))
    feature_sets = [()] + ([sparse] if sparse else [])
    runs = [(l2, left_out) for left_out in feature_sets for l2 in grid]
    if len(log_data) * len(runs) > GRID_EXAMPLES:
        runs = [(grid[len(grid) // 2], ())]
    start = [layer.get_weights() for layer in layers]
    best, scores = None, {}
    for l2, left_out in runs:
        for layer, weights in zip(layers, start):
            layer.set_weights(weights)
        mask.assign([0.0 if s.name in left_out else 1.0 for s in specs])
        name = f"L2 {l2:g}" + (f", without {', '.join(left_out)}" if left_out else "")
        log(f" {name}:")
        keep = _KeepBest(layers, score, log, keep_start)
        epochs = _run_phase(towers, layers, log_data, transform, catalog, config, l2, learning_rate, batch_size,
                            history_length, history_dropout, seed, keep, strategy, verbose)
        scores[name] = keep.best_score
        if best is None or keep.best_score > scores[best[2]]:
            best = (_Trained(l2, epochs, keep.best_epoch, {}, list(left_out)), [layer.get_weights() for layer in layers],
                    name)
    for layer, weights in zip(layers, best[1]):
        layer.set_weights(weights)
    mask.assign([0.0 if s.name in best[0].left_out else 1.0 for s in specs])
    log(f" kept {best[2]}, epoch {best[0].best_epoch}")
    return dataclasses.replace(best[0], scores=scores)


def _sample_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    if len(rows) <= MAX_EXAMPLES:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=MAX_EXAMPLES, replace=False))


def _held_out(candidates: np.ndarray, seed: int) -> np.ndarray:
    """A seeded HELD_OUT_SHARE of ``candidates`` (at most MAX_HELD_OUT, at least 1), sorted."""
    count = int(min(MAX_HELD_OUT, max(1, round(HELD_OUT_SHARE * len(candidates)))))
    return np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False))


def _sample_pairs(pair_users: np.ndarray, pair_items: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_PAIRS of the pairs (a seeded sample, in their order)."""
    if len(pair_users) <= MAX_PAIRS:
        return pair_users, pair_items
    keep = np.sort(np.random.default_rng(seed).choice(len(pair_users), size=MAX_PAIRS, replace=False))
    return pair_users[keep], pair_items[keep]


def _log_of(users, items, stamps, rows: np.ndarray, towers, user_count: int, item_count: int) -> TrainingLog:
    return training_log(users[rows], items[rows], stamps[rows], user_count, item_count, towers.user_columns,
                        towers.item_columns)


def _csr_of(users: np.ndarray, items: np.ndarray, rows: np.ndarray) -> Csr:
    """Each of ``rows``' (user rows) distinct items among the pairs (users, items): a Csr over ``rows``."""
    local = np.searchsorted(rows, users)
    inside = (local < len(rows)) & (rows[np.minimum(local, len(rows) - 1)] == users)
    return seen_csr(local[inside], items[inside], len(rows))


@dataclasses.dataclass(frozen=True)
class NewUserPath:
    trained: dict  # the L2 and features kept, its epochs run and best epoch, the held-out score of every run
    held_out_users: int
    features_only: dict  # HR@10 / HR@100 of the features path and of popularity on the held-out users
    new_user_weight: float
    named_movies: dict  # HR@10 / HR@100 of history + weight x features and of popularity, NAMED_MOVIES named


def fit_new_user_path(towers, users: np.ndarray, items: np.ndarray, stamps: np.ndarray, user_count: int,
                      item_count: int, batch_size: int, seed: int, strategy=None, verbose: int = 0,
                      log=print, history_without=None) -> NewUserPath:
    """Trains the query tower's features path (see the module doc) on the training
    interactions (user rows, item rows, timestamps); returns what it chose and scored.

    ``history_without(held user rows) -> (history table [items + 1, d], item vectors [items,
    d])``, where the history path has a closed form: the history path fitted without the
    held-out users, which then score their named movies with it when ``new_user_weight``
    is chosen (else with the shipped history path, which was trained on them, so the held-out
    users' history looks better than a new user's would)."""
    held = _held_out(rows_present(users, user_count), seed + 1000)
    trained_rows = _sample_rows(np.flatnonzero(~np.isin(users, held)), seed)
    log_data = _log_of(users, items, stamps, trained_rows, towers, user_count, item_count)
    held_rows = np.flatnonzero(np.isin(users, held))
    held_seen = _csr_of(users[held_rows], items[held_rows], held)
    pair_users = np.repeat(np.arange(len(held)), held_seen.lengths())
    pair_items = held_seen.values.astype(np.int64)
    pair_users, pair_items = _sample_pairs(pair_users, pair_items, seed + 1001)
    popularity = np.bincount(items[trained_rows], minlength=item_count).astype(np.float32)
    features = {name: column[held] for name, column in towers.user_columns.items()}
    dim = towers.query.history_embedding.output_dim
    item_vectors = towers.item_vectors()  # the candidate tower is frozen throughout this phase

    def features_only() -> np.ndarray:
        return towers.query({**features, HISTORY_MEAN: np.zeros((len(held), dim), np.float32)}).numpy()

    def score() -> tuple[float, str]:
        hr = ev.hit_rates(features_only(), item_vectors, pair_users, pair_items, None)
        return _score(hr, 10, 100), f"held-out users from features: HR@10 {hr[9]:.4f}  HR@100 {hr[99]:.4f}"

    pop_hr = ev.hit_rates(np.ones((len(held), 1), np.float32), popularity[:, None], pair_users, pair_items, None)
    log(f"new-user path: features only, {len(log_data):,} examples; {len(held):,} held-out users, popularity "
        f"HR@10 {pop_hr[9]:.4f}  HR@100 {pop_hr[99]:.4f}")
    towers.query.new_user_weight.assign(1.0)
    catalog = None
    if towers.config.negatives == "catalog":
        catalog = {**towers.item_columns, ITEM: np.arange(1, item_count + 1, dtype=np.int32)}

    def without_history(batch: dict) -> dict:
        return batch  # the history is sampled empty (dropout 1) and known_user absent: a new user

    # The path starts as the popularity query (zero kernel, the bias at popularity_query), which
    # training departs from only where the held-out users say the features help.
    start = popularity_query(item_vectors, popularity)
    kernel = towers.query.feature_projection.kernel
    towers.query.feature_projection.set_weights([np.zeros(kernel.shape, np.float32), start])
    config = dataclasses.replace(towers.config, mask_seen=False)
    trained = _train_path(towers, towers.query.feature_layers, towers.query.feature_mask, towers.user_specs,
                          NEW_USER_L2_GRID, NEW_USER_LEARNING_RATE, score, log_data, without_history,
                          catalog, config, batch_size, 1, 1.0, seed, strategy, verbose, log, keep_start=True)
    hr = ev.hit_rates(features_only(), item_vectors, pair_users, pair_items, None)
    weight, named = _choose_new_user_weight(towers, item_vectors, users, items, stamps, held, features, popularity,
                                            log, None if history_without is None else history_without(held))
    return NewUserPath(
        trained=dataclasses.asdict(trained), held_out_users=len(held),
        features_only={"model": {"hr@10": float(hr[9]), "hr@100": float(hr[99])},
                       "popularity": {"hr@10": float(pop_hr[9]), "hr@100": float(pop_hr[99])}},
        new_user_weight=weight, named_movies=named,
    )


def _choose_new_user_weight(towers, item_vectors, users, items, stamps, held, features, popularity, log,
                            history_tables=None) -> tuple[float, dict]:
    """new_user_weight by HR@10 + HR@100/4 of the held-out users who name their NAMED_MOVIES
    earliest movies (excluded from the ranking; the rest are the targets). Sets it on the tower.
    Their named movies' scores come from ``history_tables`` (history table, item vectors: a
    history path that did not see them) when given, else from the towers' history path."""
    rows = np.flatnonzero(np.isin(users, held))
    rows = rows[np.lexsort((items[rows], stamps[rows], users[rows]))]
    local = np.searchsorted(held, users[rows])
    place = np.arange(len(rows)) - np.searchsorted(local, local)  # position in the user's time order
    named, rest = place < NAMED_MOVIES, place >= NAMED_MOVIES
    enough = np.bincount(local[rest], minlength=len(held)) > 0
    if not enough.any():
        log(f"new-user weight: no held-out user has more than {NAMED_MOVIES} interactions; kept at 1")
        return 1.0, {}
    keep_users = np.flatnonzero(enough)
    named_seen = _csr_of(local[named], items[rows][named], keep_users)
    target = rest & enough[local]
    pair_users = np.searchsorted(keep_users, local[target])
    pair_items = items[rows][target].astype(np.int64)
    pair_users, pair_items = _sample_pairs(pair_users, pair_items, 1002)
    if history_tables is None:
        table, history_items = towers.query.history_embedding.embeddings.numpy(), item_vectors
        history = towers.query.history_projection(pooled_histories(named_seen, np.arange(len(keep_users)), table)).numpy()
    else:
        table, history_items = history_tables
        history = pooled_histories(named_seen, np.arange(len(keep_users)), table)
    towers.query.new_user_weight.assign(1.0)
    dim = towers.query.history_embedding.output_dim
    chosen = {name: column[keep_users] for name, column in features.items()}
    from_features = towers.query({**chosen, HISTORY_MEAN: np.zeros((len(keep_users), dim), np.float32)}).numpy()
    ratio = score_spread(history, history_items) / max(score_spread(from_features, item_vectors), 1e-12)
    # history . c_history + w x features . c: one item space when the history path scores with the
    # towers' item vectors (the random start, hence every large catalog), else the two side by side
    # (twice the dimensions that each evaluation streams through).
    shared = history_items is item_vectors
    scored_items = item_vectors if shared else np.concatenate([history_items, item_vectors], axis=1)
    results = {}
    for factor in NEW_USER_WEIGHT_GRID:
        features_part = factor * ratio * from_features
        queries = history + features_part if shared else np.concatenate([history, features_part], axis=1)
        results[factor] = ev.hit_rates(queries, scored_items, pair_users, pair_items, named_seen)
    best = max(NEW_USER_WEIGHT_GRID, key=lambda f: (_score(results[f], 10, 100), -f))
    weight = best * ratio
    pop_hr = ev.hit_rates(np.ones((len(keep_users), 1), np.float32), popularity[:, None], pair_users, pair_items, named_seen)
    log(f"new-user weight {weight:.4g} ({best:g} x spread ratio {ratio:.3g}) on {len(keep_users):,} held-out users naming "
        f"{NAMED_MOVIES} movies: HR@10 {results[best][9]:.4f}  HR@100 {results[best][99]:.4f}; history alone "
        f"{results[0.0][9]:.4f} / {results[0.0][99]:.4f}; popularity {pop_hr[9]:.4f} / {pop_hr[99]:.4f}")
    log("  by weight (x spread ratio): " + "; ".join(
        f"{f:g} {results[f][9]:.4f} / {results[f][99]:.4f}" for f in NEW_USER_WEIGHT_GRID))
    towers.query.new_user_weight.assign(weight)
    return float(weight), {
        "model": {"hr@10": float(results[best][9]), "hr@100": float(results[best][99])},
        "history_only": {"hr@10": float(results[0.0][9]), "hr@100": float(results[0.0][99])},
        "popularity": {"hr@10": float(pop_hr[9]), "hr@100": float(pop_hr[99])},
        "users": len(keep_users),
    }


@dataclasses.dataclass(frozen=True)
class NewItemPath:
    trained: dict  # the L2 and features kept, its epochs run and best epoch, the held-out score of every run
    held_out_items: int
    among_new_items: dict  # HR@10 / HR@50 of each held-out item's pairs ranked among the held-out items
    metadata_scale: float
    top_k_share: dict  # held-out items' share of the top-k slots (calibrated) and of the interactions


def fit_new_item_path(towers, users: np.ndarray, items: np.ndarray, stamps: np.ndarray, user_count: int,
                      item_count: int, batch_size: int, history_length: int, seed: int, strategy=None,
                      verbose: int = 0, log=print) -> NewItemPath:
    """Trains the candidate tower's metadata path and calibrates ``metadata_scale``
    (see the module doc) on the training interactions; returns what it chose and scored."""
    held = _held_out(rows_present(items, item_count), seed + 2000)
    is_held = np.zeros(item_count, dtype=bool)
    is_held[held] = True
    trained_rows = _sample_rows(np.flatnonzero(~is_held[items]), seed)
    log_data = _log_of(users, items, stamps, trained_rows, towers, user_count, item_count)
    # Known users as they would be if the held-out items were new: histories without them.
    user_rows = rows_present(users, user_count)
    seen = _csr_of(users[trained_rows], items[trained_rows], user_rows)
    table = towers.query.history_embedding.embeddings.numpy()
    queries = towers.query({**{n: c[user_rows] for n, c in towers.user_columns.items()},
                            HISTORY_MEAN: pooled_histories(seen, np.arange(len(user_rows)), table),
                            KNOWN_USER: np.ones(len(user_rows), np.float32)}).numpy()
    held_pairs = seen_csr(np.searchsorted(user_rows, users[is_held[items]]), items[is_held[items]], len(user_rows))
    pair_users = np.repeat(np.arange(len(user_rows)), held_pairs.lengths())
    pair_users, pair_items = _sample_pairs(pair_users, np.searchsorted(held, held_pairs.values), seed + 2001)
    held_inputs = {**{n: c[held] for n, c in towers.item_columns.items()}, ITEM: np.zeros(len(held), np.int32)}
    # HR@10 and HR@50 among the held-out items (the research protocol), smaller K for a few items.
    k_small, k_large = min(10, max(1, len(held) // 10)), min(50, max(1, len(held) // 2))

    def score() -> tuple[float, str]:
        hr = ev.hit_rates(queries, towers.candidate(held_inputs).numpy(), pair_users, pair_items, None, max_k=k_large)
        return _score(hr, k_small, k_large), \
            f"held-out items from metadata, among themselves: HR@{k_small} {hr[k_small - 1]:.4f}  HR@{k_large} {hr[-1]:.4f}"

    log(f"new-item path: metadata only, {len(log_data):,} examples; {len(held):,} held-out items "
        f"(random: HR@{k_small} {k_small / len(held):.4f}  HR@{k_large} {k_large / len(held):.4f})")
    towers.candidate.metadata_scale.assign(1.0)
    kept_items = np.flatnonzero(~is_held)
    sub_catalog = np.full(item_count, -1, np.int64)
    sub_catalog[kept_items] = np.arange(len(kept_items))
    catalog = None
    if towers.config.negatives == "catalog":
        catalog = {**{n: c[kept_items] for n, c in towers.item_columns.items()}, ITEM: np.zeros(len(kept_items), np.int32)}
    to_sub_catalog = tf.constant(sub_catalog)

    def metadata_only(batch: dict) -> dict:
        candidate = {**batch["candidate"], ITEM: tf.zeros_like(batch["candidate"][ITEM])}
        query = {**batch["query"], KNOWN_USER: tf.ones(tf.shape(batch["item"]), tf.float32)}
        item = tf.gather(to_sub_catalog, batch["item"]) if catalog is not None else batch["item"]
        return {**batch, "query": query, "candidate": candidate, "item": tf.cast(item, batch["item"].dtype)}

    config = dataclasses.replace(towers.config, mask_seen=False)
    trained = _train_path(towers, towers.candidate.metadata_layers, towers.candidate.feature_mask, towers.item_specs,
                          NEW_ITEM_L2_GRID, NEW_ITEM_LEARNING_RATE, score, log_data, metadata_only,
                          catalog, config, batch_size, history_length, 0.0, seed, strategy, verbose, log)
    hr = ev.hit_rates(queries, towers.candidate(held_inputs).numpy(), pair_users, pair_items, None, max_k=k_large)
    scale, share = _calibrate(towers, queries, seen, held, held_inputs, is_held, items, log)
    return NewItemPath(
        trained=dataclasses.asdict(trained), held_out_items=len(held),
        among_new_items={f"hr@{k_small}": float(hr[k_small - 1]), f"hr@{k_large}": float(hr[-1]),
                         f"random_hr@{k_small}": k_small / len(held), f"random_hr@{k_large}": k_large / len(held)},
        metadata_scale=scale, top_k_share=share,
    )


def _calibrate(towers, queries, seen: Csr, held, held_inputs, is_held, items, log) -> tuple[float, dict]:
    """metadata_scale: the held-out items take their metadata vectors times the scale, the
    rest their id vectors; the scale (log grid) whose share of the known users' top-k slots
    (their other items excluded) is closest to the held-out items' share of the interactions."""
    target = float(is_held[items].mean())
    item_vectors = towers.item_vectors()
    metadata = towers.candidate(held_inputs).numpy()
    count = min(SCALE_USERS, len(queries), max(1, SCALE_SCORES // len(item_vectors)))
    users = np.random.default_rng(0).permutation(len(queries))[:count]
    base = np.mean(np.linalg.norm(item_vectors[~is_held], axis=1)) / max(np.mean(np.linalg.norm(metadata, axis=1)), 1e-12)
    k = min(SHARE_TOP_K, len(item_vectors) - 1)
    # Per user, the top-k scores of the known items (their own items excluded) and of the held-out
    # items at scale 1: a positive scale keeps the held-out items' order, so the top-k slots at any
    # scale are the top k of those 2k scores.
    known_top = np.full((len(users), k), -np.inf, np.float32)
    held_top = np.full((len(users), k), -np.inf, np.float32)
    step = max(1, (1 << 23) // len(item_vectors))
    seen_lengths = seen.lengths()
    for start in range(0, len(users), step):
        block = users[start : start + step]
        scores = queries[block] @ item_vectors.T
        lengths = seen_lengths[block]
        scores[np.repeat(np.arange(len(block)), lengths),
               np.concatenate([seen.values[seen.splits[u]:seen.splits[u + 1]] for u in block])] = -np.inf
        scores[:, held] = -np.inf
        known = min(k, scores.shape[1])
        known_top[start : start + len(block), :known] = -np.sort(-scores, axis=1)[:, :known]
        held_scores = queries[block] @ metadata.T
        kept = min(k, held_scores.shape[1])
        held_top[start : start + len(block), :kept] = -np.sort(-held_scores, axis=1)[:, :kept]

    def share_at(scale: float) -> float:
        merged = np.concatenate([known_top, scale * held_top], axis=1)
        top = np.argsort(-merged, axis=1, kind="stable")[:, :k]  # on a tie the known item first
        return float((top >= k).mean())

    grid = base * np.logspace(-1.5, 1.5, 121)
    shares = [share_at(s) for s in grid]
    best = int(np.argmin([abs(s - target) for s in shares]))
    scale = float(grid[best])
    unscaled, at_norm = share_at(1.0), share_at(base)
    towers.candidate.metadata_scale.assign(scale)
    log(f"metadata scale {scale:.4g}: held-out items take {shares[best]:.3f} of the top-{SHARE_TOP_K} slots "
        f"(their share of interactions {target:.3f}; unscaled {unscaled:.3f}, at the known items' mean norm {at_norm:.3f})")
    return scale, {"calibrated": shares[best], "interactions": target, "unscaled": unscaled, "at_known_norm": at_norm,
                   "k": SHARE_TOP_K}
