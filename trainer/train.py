"""Training run: Dataset -> split -> fit with early stopping -> evaluate -> publish a bundle.

The interactions are split once at random into train and test
(``test_fraction``, ``seed``). A further random ``validation_fraction`` of the
*training* interactions is held back from fitting and used only for early
stopping; the test split is never looked at until the final evaluation. The
published bundle's seen lists and the exported user vectors use all training
interactions.

What scales with the data, and how it is kept bounded:

* the negatives (``choose_negatives``): the exact catalog softmax while the
  catalog is small, in-batch with logQ correction beyond;
* the start (``choose_init``): the closed-form EASE warm start while its dense
  items x items matrices fit a memory budget, random weights beyond;
* the input: streamed from int columns (trainer.pipeline), histories sampled
  per batch;
* validation and test: scored on a sample of users, in chunks (never a users x
  items matrix).

When ``TF_CONFIG`` is set the same run trains under
``tf.distribute.MultiWorkerMirroredStrategy``: every worker reads the data and
trains on its shard of each epoch; only the chief publishes the bundle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from serving import ann
from serving.bundle import EVALUATION, USER_TOWER, BundleStaging
from trainer import cold_start
from trainer import evaluate as ev
from trainer.config import (
    LEARNING_RATES,
    ModelConfig,
    StepSettings,
    TrainConfig,
    choose_init,
    choose_negatives,
    step_settings,
)
from trainer.dataset import Csr, Dataset
from trainer.export import ITEM_TOWER, ITEMS_SIGNATURE, item_feature_inputs, save_item_tower, save_user_tower
from trainer.features import empty_columns, feature_columns, feature_specs, rows_present, seen_csr
from trainer.model import HISTORY_MEAN, ITEM, KNOWN_USER, CandidateTower, QueryTower, TwoTowerModel
from trainer.optimizers import make_optimizer
from trainer.pipeline import TrainingLog, make_dataset, pooled_histories, training_log
from trainer.split import Split, split_interactions
from trainer.warm_start import blockwise_gram, ease_warm_start, ease_weights

# The evaluation report's item-item yardstick: EASE (Steck 2019) with the λ the
# ml-100k table reports, on catalogs small enough for its dense items x items inverse.
EASE_BASELINE_LAMBDA = 500.0
EASE_BASELINE_MAX_ITEMS = 6_000

EARLY_STOPPING_METRIC = "val_hr_score"
TEST_USERS = 20_000  # the offline evaluation scores at most this many test users (a seeded sample)
# ... and at most this many user x item scores per pass (validation runs two passes per epoch).
SCORES_PER_EVALUATION = 250_000_000
EMBED_BATCH = 8192


@dataclasses.dataclass(frozen=True)
class Towers:
    """The towers' inputs per user / item row, and the towers."""

    config: ModelConfig
    user_specs: tuple
    item_specs: tuple
    user_columns: dict[str, np.ndarray]
    item_columns: dict[str, np.ndarray]
    query: QueryTower
    candidate: CandidateTower

    def item_vectors(self) -> np.ndarray:
        """The candidate tower over the catalog (by id): float32 [items, dim]."""
        count = self.candidate.item_embedding.input_dim - 1  # row 0 is the unknown item
        parts = []
        for start in range(0, count, EMBED_BATCH):
            rows = np.arange(start, min(start + EMBED_BATCH, count))
            inputs = {name: column[rows] for name, column in self.item_columns.items()}
            parts.append(self.candidate({**inputs, ITEM: (rows + 1).astype(np.int32)}).numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)

    def user_vectors(self, seen: Csr, rows: np.ndarray) -> np.ndarray:
        """The query tower for known user ``rows`` over every item in ``seen``: float32 [len(rows), dim]."""
        table = self.query.history_embedding.embeddings.numpy()
        parts = []
        for start in range(0, len(rows), EMBED_BATCH):
            block = rows[start : start + EMBED_BATCH]
            inputs = {name: column[block] for name, column in self.user_columns.items()}
            inputs[HISTORY_MEAN] = pooled_histories(seen, block, table)
            inputs[KNOWN_USER] = np.ones(len(block), np.float32)
            parts.append(self.query(inputs).numpy())
        if not parts:
            return np.zeros((0, self.query.projection.units), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def unknown_user(self) -> np.ndarray:
        """The query vector of a user with no known feature and no history: float32 [dim]."""
        inputs = empty_columns(self.user_specs)
        inputs[HISTORY_MEAN] = np.zeros((1, self.query.history_embedding.output_dim), np.float32)
        return self.query(inputs).numpy()[0]

    def unknown_item(self) -> np.ndarray:
        inputs = empty_columns(self.item_specs)
        return self.candidate({**inputs, ITEM: np.zeros(1, np.int32)}).numpy()[0]


class ValidationHitRate(keras.callbacks.Callback):
    """Before training and after each epoch, HR@10 and HR@100 on the validation
    pairs of a seeded sample of users, both protocols.

    Adds ``val_hr@10``, ``val_hr@100`` (seen excluded), their combination
    EARLY_STOPPING_METRIC = HR@10 + HR@100 / 4, and ``val_hr_all@10``,
    ``val_hr_all@100`` (every item ranked; logged, not stopped on) to the
    epoch logs, for EarlyStopping placed after this callback. The scores of the
    initial weights ("epoch 0", which matter for a warm start) are kept in
    ``initial`` and those weights in ``initial_weights``.
    """

    def __init__(self, towers: Towers, fit_seen: Csr, user_rows: np.ndarray, data: ev.EvaluationSet, log=print):
        super().__init__()
        self._towers, self._fit_seen, self._user_rows, self._data, self._log = towers, fit_seen, user_rows, data, log
        self.initial: dict[str, float] = {}
        self.initial_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.on_epoch_end(-1, self.initial)
        self.initial_weights = self.model.get_weights()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        users = self._towers.user_vectors(self._fit_seen, self._user_rows)
        items = self._towers.item_vectors()
        pairs = (self._data.pair_users, self._data.pair_items)
        hr = ev.hit_rates(users, items, *pairs, self._data.seen)
        hr_all = ev.hit_rates(users, items, *pairs, None)
        if logs is not None:
            logs.update({
                "val_hr@10": hr[9], "val_hr@100": hr[99], EARLY_STOPPING_METRIC: hr[9] + hr[99] / 4,
                "val_hr_all@10": hr_all[9], "val_hr_all@100": hr_all[99],
            })  # fmt: skip
        self._log(
            f"epoch {epoch + 1}: validation HR@10 {hr[9]:.4f}  HR@100 {hr[99]:.4f} (seen excluded); "
            f"all ranked {hr_all[9]:.4f} / {hr_all[99]:.4f} ({len(self._user_rows):,} users)"
        )


class ProgressLog(keras.callbacks.Callback):
    """Every ``every`` seconds of an epoch: steps done of ``steps`` and interactions/s so far
    (Keras' own verbose=2 prints once per epoch only, which is rare on a large log)."""

    def __init__(self, steps: int, batch_size: int, log, every: float = 30.0):
        super().__init__()
        self._steps, self._batch, self._log, self._every = steps, batch_size, log, every
        self._started = self._last = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = self._last = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            rate = (batch + 1) * self._batch / (now - self._started)
            self._log(f"  step {batch + 1:,}/{self._steps:,}: {rate:,.0f} interactions/s, loss {float(logs['loss']):.1f}")


def _users_to_score(limit: int, item_count: int) -> int:
    """At most ``limit`` users, and fewer for a catalog so large that they would cost
    more than SCORES_PER_EVALUATION scores (250 users at a million items)."""
    return max(100, min(limit, SCORES_PER_EVALUATION // max(item_count, 1)))


def _ease_baseline(
    train_users: np.ndarray, train_items: np.ndarray, test_set: ev.EvaluationSet, item_count: int, log
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"ease": (the test users' 0/1 training rows, EASE's B transposed)}: the item-item
    yardstick (λ EASE_BASELINE_LAMBDA, plain co-occurrence), scored as X_u · B; empty when the
    catalog is too large for a dense items x items matrix (EASE_BASELINE_MAX_ITEMS)."""
    if item_count > EASE_BASELINE_MAX_ITEMS:
        log(f"EASE baseline skipped: {item_count:,} items (more than {EASE_BASELINE_MAX_ITEMS:,})")
        return {}
    gram = blockwise_gram(train_users, train_items, np.zeros(len(train_users), dtype=np.int64), item_count, np.inf)
    weights = ease_weights(None, EASE_BASELINE_LAMBDA, gram).astype(np.float32)
    rows = np.zeros((test_set.seen.rows, item_count), dtype=np.float32)
    rows[np.repeat(np.arange(test_set.seen.rows), test_set.seen.lengths()), test_set.seen.values] = 1.0
    return {"ease": (rows, np.ascontiguousarray(weights.T))}


def held_out_set(
    pair_users: np.ndarray, pair_items: np.ndarray, seen: Csr, popularity: np.ndarray, max_users: int, seed: int
) -> tuple[ev.EvaluationSet, np.ndarray]:
    """Held-out pairs (user and item rows) of at most ``max_users`` users (a seeded sample)
    -> (EvaluationSet over those users, their user rows)."""
    users = np.unique(pair_users)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
        keep = np.isin(pair_users, users)
        pair_users, pair_items = pair_users[keep], pair_items[keep]
    local = np.searchsorted(users, pair_users)
    lengths = seen.splits[users + 1] - seen.splits[users]
    starts = np.repeat(seen.splits[users], lengths) + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    local_seen = Csr(splits=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values=seen.values[starts])
    data = ev.EvaluationSet(pair_users=local.astype(np.int64), pair_items=pair_items.astype(np.int64),
                            seen=local_seen, popularity=popularity)
    return data, users


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A fitted model and what the rest of the run needs from fitting."""

    towers: Towers
    history: dict[str, list[float]]  # Keras History.history
    best_epoch: int  # 1-based epoch whose weights were kept; 0 = the initial weights
    initial: dict[str, float]  # validation scores of the initial weights (empty without validation)
    refit: bool  # the kept warm start was fitted again on all training interactions (fit + validation)
    negatives: str
    init: str
    learning_rate: float
    batch_size: int
    step: StepSettings  # the step settings as resolved (trainer.config.step_settings)
    seconds: float
    interactions_trained: int  # examples passed through the model, over every epoch and worker
    new_users: cold_start.NewUserPath
    new_items: cold_start.NewItemPath
    phase_seconds: dict[str, float]  # "known_paths" (set-up, warm start, epochs), "new_user_path", "new_item_path"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    bundle: Path | None  # the published version folder (None on a worker that is not the chief)
    report: dict | None  # HR@K report, None when nothing was held out
    interactions_per_second: float


def _strategy() -> tf.distribute.Strategy | None:
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else None (one process)."""
    if not os.environ.get("TF_CONFIG"):
        return None
    return tf.distribute.MultiWorkerMirroredStrategy()


def _is_chief() -> bool:
    """True unless TF_CONFIG makes this process a worker other than the chief."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    return task.get("type", "worker") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster


def _interactions(ds: Dataset, rows: np.ndarray):
    inter = ds.interactions
    return inter.users[rows], inter.items[rows], inter.timestamps[rows]


def _ease_tables(ds: Dataset, rows: np.ndarray, seen: Csr, config: TrainConfig):
    """Rank-``embedding_dim`` EASE (+ log-popularity) tables from the interactions ``rows``."""
    users, items, stamps = _interactions(ds, rows)
    m = config.model
    return ease_warm_start(
        seen, len(ds.items), users.astype(np.int64), items.astype(np.int64), lam=m.ease_lambda, rank=m.embedding_dim,
        balance=m.init_balance, mask_seen=m.mask_seen, seed=config.seed, tau=m.ease_tau, pair_timestamps=stamps,
        popularity_column=True,
    )  # fmt: skip


def _ease_init(ds: Dataset, rows: np.ndarray, seen: Csr, towers: Towers, config: TrainConfig, log) -> None:
    """Warm-starts both towers from rank-``embedding_dim`` EASE on the interactions ``rows``."""
    started = time.monotonic()
    start = _ease_tables(ds, rows, seen, config)
    m = config.model
    towers.query.warm_start(start.history)
    towers.candidate.warm_start(start.items)
    log(
        f"warm start: rank-{m.embedding_dim - 1} EASE + log-popularity (lambda {m.ease_lambda:g}, tau {m.ease_tau:g}) on {len(rows):,} "
        f"interactions, score scale {start.scale:.3g}, initial loss {start.init_loss:.4f}, "
        f"{time.monotonic() - started:.1f} s"
    )


def fit(ds: Dataset, split: Split, config: TrainConfig, verbose: int, strategy=None, log=print) -> Fitted:
    """Builds both towers and fits them on ``split.fit``, early-stopping on ``split.validation``."""
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    item_count, user_count = len(ds.items), len(ds.users)
    negatives = choose_negatives(config.model.negatives, item_count)
    init = choose_init(config.model.init, item_count)
    learning_rate = config.learning_rate or LEARNING_RATES[init]
    config, step = step_settings(config, negatives)
    batch_size = step.batch_size
    model_config = dataclasses.replace(config.model, init=init)
    if init == "ease":  # the EASE factors are the history and item-id tables, passed through unchanged
        model_config = dataclasses.replace(model_config, history_dim=model_config.embedding_dim,
                                           item_id_dim=model_config.embedding_dim)
    log(f"{item_count:,} items: negatives {negatives}, init {init}, learning rate {learning_rate:g}, batch {batch_size}, "
        f"history {step.history_length}, optimizer {step.optimizer}, {step.steps_per_execution} step(s) per execution")

    user_specs, item_specs = feature_specs(ds.users), feature_specs(ds.items)
    user_columns, item_columns = feature_columns(ds.users, user_specs), feature_columns(ds.items, item_specs)
    fit_users, fit_items, fit_stamps = _interactions(ds, split.fit)
    fit_log: TrainingLog = training_log(fit_users, fit_items, fit_stamps, user_count, item_count, user_columns, item_columns)

    def build() -> tuple[Towers, TwoTowerModel]:
        query = QueryTower(user_specs, item_count, model_config)
        candidate = CandidateTower(item_specs, item_count, model_config)
        query.build_with_dummy()
        candidate.build_with_dummy()
        catalog = None
        if negatives == "catalog":
            catalog = {**item_columns, ITEM: np.arange(1, item_count + 1, dtype=np.int32)}
        model = TwoTowerModel(query, candidate, model_config, catalog)
        model.compile(optimizer=make_optimizer(step.optimizer, learning_rate, config.weight_decay),
                      steps_per_execution=step.steps_per_execution)
        return Towers(model_config, user_specs, item_specs, user_columns, item_columns, query, candidate), model

    if strategy is None:
        towers, model = build()
    else:
        with strategy.scope():
            towers, model = build()
    if init == "ease":
        _ease_init(ds, split.fit, fit_log.seen, towers, config, log)

    callbacks, validation = [], None
    if len(split.validation):
        val_users, val_items, _ = _interactions(ds, split.validation)
        val_set, val_rows = held_out_set(val_users, val_items, fit_log.seen, fit_log.item_probability,
                                         _users_to_score(config.validation_users, item_count), config.seed)
        validation = ValidationHitRate(towers, fit_log.seen, val_rows, val_set, log)
        callbacks = [
            validation,
            keras.callbacks.EarlyStopping(monitor=EARLY_STOPPING_METRIC, mode="max", patience=config.patience,
                                          restore_best_weights=True, verbose=1 if verbose else 0),
        ]
    shards = strategy.num_replicas_in_sync if strategy is not None else 1

    def as_known_users(batch: dict) -> dict:  # this phase trains the paths of the users and items the model knows
        return {**batch, "query": {**batch["query"], KNOWN_USER: tf.ones(tf.shape(batch["item"]), tf.float32)}}

    def dataset_for(context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        index = context.input_pipeline_id if context is not None else 0
        batch = context.get_per_replica_batch_size(batch_size) if context is not None else batch_size
        return make_dataset(fit_log, batch, model_config.history_length, model_config.history_dropout, config.seed,
                            config.epochs, with_seen=negatives == "catalog" and model_config.mask_seen,
                            shard=index, shards=shards)[0].map(as_known_users)

    per_replica_batch = batch_size // shards if shards > 1 else batch_size
    steps = -(-(len(fit_log) // shards) // per_replica_batch)
    data = dataset_for() if strategy is None else strategy.distribute_datasets_from_function(dataset_for)
    if verbose == 2:  # not a terminal: no progress bar, so a line every 30 s
        callbacks.insert(0, ProgressLog(steps, batch_size, log))
    fit_started = time.monotonic()
    history = model.fit(data, epochs=config.epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=verbose).history
    fit_seconds = time.monotonic() - fit_started
    epochs_run = len(history["loss"])
    trained = epochs_run * (len(fit_log) // shards) * shards
    log(f"trained {epochs_run} epoch(s) on {len(fit_log):,} interactions: {trained / fit_seconds:,.0f} interactions/s in fit")
    best_epoch, initial, refit = epochs_run, {}, False
    if validation is not None:
        initial = validation.initial
        # Index 0 is the initial weights; on a tie the earlier (fewer steps) wins.
        best_epoch = int(np.argmax([initial[EARLY_STOPPING_METRIC], *history[EARLY_STOPPING_METRIC]]))
        if best_epoch == 0:
            model.set_weights(validation.initial_weights)
            log("restoring the initial weights: no epoch beat them on validation")
            if init == "ease" and config.refit:
                # The closed form has nothing left to select on the validation slice, so,
                # as after any model selection, it is fitted again on all the training data.
                train_users, train_items, _ = _interactions(ds, split.train)
                _ease_init(ds, split.train, seen_csr(train_users, train_items, user_count), towers, config, log)
                refit = True
    # The cold-start paths, trained against the known paths as they ship (trainer.cold_start).
    known_done = time.monotonic()
    train_users, train_items, train_stamps = _interactions(ds, split.train)
    train_users, train_items = train_users.astype(np.int64), train_items.astype(np.int64)
    history_without = None
    if init == "ease":
        def history_without(held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # The closed form again without the users ``held`` out for the new-user weight, so that
            # their named movies are scored as a new user's are: from a history path that never saw
            # them (the tables of ``warm_start``: the history rows and the items' vectors).
            rows = split.train[~np.isin(train_users, held)]
            users, items, _ = _interactions(ds, rows)
            start = _ease_tables(ds, rows, seen_csr(users, items, user_count), config)
            return start.history, start.items[1:]

    new_users = cold_start.fit_new_user_path(towers, train_users, train_items, train_stamps, user_count, item_count,
                                             batch_size, config.seed, strategy, 0, log, history_without)
    users_done = time.monotonic()
    new_items = cold_start.fit_new_item_path(towers, train_users, train_items, train_stamps, user_count, item_count,
                                             batch_size, model_config.history_length, config.seed, strategy,
                                             0, log)
    done = time.monotonic()
    phases = {"known_paths": known_done - started, "new_user_path": users_done - known_done,
              "new_item_path": done - users_done}
    log("fitted in " + ", ".join(f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in phases.items()))
    return Fitted(towers, history, best_epoch, initial, refit, negatives, init, learning_rate, batch_size, step,
                  done - started, trained, new_users, new_items, phases)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train(ds: Dataset, config: TrainConfig, model_base: Path, verbose: int = 2, started: float | None = None) -> TrainResult:
    """Fits the model on ``ds``, evaluates it on the held-out split and publishes one
    bundle under ``model_base`` (on the chief only, under multi-worker training).
    ``started``: time.monotonic() when the run began (reading included), for the
    interactions/s figure."""
    started = time.monotonic() if started is None else started
    strategy = _strategy()
    chief = _is_chief()
    log = (lambda line: print(line, flush=True)) if chief else (lambda line: None)
    split = split_interactions(len(ds.interactions), config)
    fitted = fit(ds, split, config, verbose if chief else 0, strategy, log)
    towers = fitted.towers

    # Serve (and test) with every training interaction in the users' histories.
    train_users, train_items, _ = _interactions(ds, split.train)
    train_seen = seen_csr(train_users, train_items, len(ds.users))
    user_rows = rows_present(train_users, len(ds.users))
    user_rows = user_rows[np.argsort(ds.users.ids[user_rows], kind="stable")]  # the bundle's users, by id
    user_vectors = towers.user_vectors(train_seen, user_rows)
    item_vectors = towers.item_vectors()
    popularity = np.bincount(train_items, minlength=len(ds.items)).astype(np.float64)
    popularity = (popularity / max(popularity.sum(), 1)).astype(np.float32)
    log(f"embedded {len(user_rows):,} users and {len(item_vectors):,} items")

    report = None
    if len(split.test):
        test_users, test_items, _ = _interactions(ds, split.test)
        test_set, test_rows = held_out_set(test_users, test_items, train_seen, popularity,
                                           _users_to_score(TEST_USERS, len(ds.items)), config.seed)
        vectors = towers.user_vectors(train_seen, test_rows)  # what serving_default returns for them
        report = ev.evaluate(vectors, item_vectors, test_set, _ease_baseline(train_users, train_items, test_set,
                                                                           len(ds.items), log))
        log(ev.format_table(report))
    else:
        log("test fraction is 0: trained on every interaction, offline evaluation skipped")

    model_base = Path(model_base) if chief else Path(tempfile.mkdtemp(prefix="worker-bundle-"))
    with BundleStaging(model_base) as staging:
        save_user_tower(staging.path / USER_TOWER, ds.users.ids[user_rows], user_vectors, towers.unknown_user(),
                        _serving_copy(towers), towers.user_specs, ds.items.ids)
        save_item_tower(staging.path / ITEM_TOWER, ds.items.ids, item_vectors, towers.unknown_item(),
                        _serving_candidate_copy(towers), towers.item_specs)
        evaluation_dir = staging.path / EVALUATION
        evaluation_dir.mkdir()
        test_pairs = None
        if len(split.test):
            test_pairs = (ds.users.ids[ds.interactions.users[split.test]], ds.items.ids[ds.interactions.items[split.test]])
        ev.write_test_interactions(evaluation_dir / ev.TEST_INTERACTIONS, test_pairs)
        if report is not None:
            ev.write_report(report, evaluation_dir)
        local_seen = Csr(
            splits=np.concatenate([[0], np.cumsum(train_seen.splits[user_rows + 1] - train_seen.splits[user_rows])]).astype(np.int64),
            values=np.concatenate([train_seen.values[train_seen.splits[u] : train_seen.splits[u + 1]] for u in user_rows])
            if len(user_rows) else np.zeros(0, np.int32),
        )
        for name, array in {
            "item_embeddings": item_vectors,
            "item_ids": ds.items.ids.astype(str),
            "item_titles": ds.item_titles.astype(str),
            "item_genres": ds.genre_masks(),
            "item_popularity": popularity,
            "user_ids": ds.users.ids[user_rows].astype(str),
            "seen_indptr": local_seen.splits,
            "seen_items": local_seen.values,
            "user_embeddings": user_vectors.astype(np.float32),  # what serving_default returns for user_ids, for the index's lookup
        }.items():
            staging.save_array(name, array)
        seconds = time.monotonic() - started
        rate = len(split.fit) * max(len(fitted.history["loss"]), 1) / seconds
        bundle = staging.publish({
            "embedding_dim": int(item_vectors.shape[1]),
            "item_count": len(ds.items),
            "user_count": len(user_rows),
            "genres": list(ds.genres),
            "genre_feature": ds.genre_feature,
            # What add-items feeds the item tower's embed_items signature (trainer/export.py).
            ITEM_TOWER: {"signature": ITEMS_SIGNATURE, "inputs": {
                "item_id": {"dtype": "string", "shape": "[batch]"}, **item_feature_inputs(towers.item_specs)}},
            # ScaNN's parameters for this catalog (and, for a large one, the built searcher).
            "scann": ann.write_searcher(staging.path, item_vectors),
            "metrics": _metrics(report, fitted),
            "training": _training_record(ds, split, config, fitted, seconds, rate, strategy),
        })  # fmt: skip
    log(f"run: {seconds:.0f} s, {rate:,.0f} interactions/s over the whole run (reading and export included), "
        f"peak RSS {_peak_rss_bytes() / 2**30:.2f} GiB")
    if not chief:
        shutil.rmtree(model_base, ignore_errors=True)
        bundle = None
    return TrainResult(bundle=bundle, report=report, interactions_per_second=rate)


def _serving_copy(towers: Towers) -> QueryTower:
    """A plain (not distributed) copy of the trained query tower, for the embed_features export."""
    copy = QueryTower(towers.user_specs, towers.query.history_embedding.input_dim - 1, towers.config)
    copy.build_with_dummy()
    copy.set_weights(towers.query.get_weights())
    return copy


def _serving_candidate_copy(towers: Towers) -> CandidateTower:
    """A plain (not distributed) copy of the trained candidate tower, for the embed_items export."""
    copy = CandidateTower(towers.item_specs, towers.candidate.item_embedding.input_dim - 1, towers.config)
    copy.build_with_dummy()
    copy.set_weights(towers.candidate.get_weights())
    return copy


def _metrics(report: dict | None, fitted: Fitted) -> dict[str, float | None]:
    def at_best(key: str) -> float | None:
        if fitted.best_epoch == 0:
            return float(fitted.initial[key]) if key in fitted.initial else None
        values = fitted.history.get(key)
        return float(values[fitted.best_epoch - 1]) if values else None

    return {
        **(ev.headline(report) if report else {}),
        "validation/seen_excluded/hr@10": at_best("val_hr@10"),
        "validation/seen_excluded/hr@100": at_best("val_hr@100"),
        "validation/all/hr@10": at_best("val_hr_all@10"),
        "validation/all/hr@100": at_best("val_hr_all@100"),
    }


def _training_record(ds: Dataset, split: Split, config: TrainConfig, fitted: Fitted, seconds: float, rate: float,
                     strategy) -> dict:
    return {
        "data_layout": ds.layout,
        "data_sha256": ds.sha256,
        "data_files": {role: str(path) for role, path in ds.files.items()},
        "interactions": {"train": len(split.train), "fit": len(split.fit), "validation": len(split.validation),
                         "test": len(split.test)},
        "test_fraction": config.test_fraction,
        "validation_fraction": config.validation_fraction,
        "seed": config.seed,
        "epochs": config.epochs,
        "epochs_run": len(fitted.history["loss"]),
        "best_epoch": fitted.best_epoch,
        "refit": fitted.refit,
        "patience": config.patience,
        "batch_size": fitted.batch_size,
        "learning_rate": fitted.learning_rate,
        "weight_decay": config.weight_decay,
        "optimizer": fitted.step.optimizer,
        "steps_per_execution": fitted.step.steps_per_execution,
        "negatives": fitted.negatives,
        "init": fitted.init,
        "model": {**dataclasses.asdict(config.model), "negatives": fitted.negatives, "init": fitted.init,
                  "history_length": fitted.step.history_length, "in_batch_negatives": fitted.step.in_batch_negatives},
        "new_user_path": dataclasses.asdict(fitted.new_users),
        "new_item_path": dataclasses.asdict(fitted.new_items),
        "workers": strategy.num_replicas_in_sync if strategy is not None else 1,
        "train_seconds": round(fitted.seconds, 1),
        "phase_seconds": {name: round(seconds, 1) for name, seconds in fitted.phase_seconds.items()},
        "run_seconds": round(seconds, 1),
        "interactions_per_second": round(rate, 1),
        "peak_rss_bytes": _peak_rss_bytes(),
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "tensorflow_recommenders": tfrs.__version__,
    }
