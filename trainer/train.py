"""Training run: data -> split -> fit with early stopping -> evaluate -> publish a bundle.

The ratings are split once at random into train and test (``test_fraction``,
``seed``). A further random ``validation_fraction`` of the *training* ratings
is held back from fitting and used only for early stopping; the test split is
never looked at until the final evaluation. The published bundle's seen lists
and the user tower's watch histories hold all training ratings. When the
validation check keeps the EASE warm start itself (no trained epoch beats it),
the warm start is fitted again on all training ratings before export
(``TrainConfig.refit``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from serving import ann
from serving.bundle import EVALUATION, USER_TOWER, BundleStaging
from trainer import evaluate as ev
from trainer.data import MovieLens, Ratings, Split, split_ratings
from trainer.export import embed_users, load_user_tower, save_user_tower
from trainer.config import TrainConfig
from trainer.features import Csr, build_item_features, build_user_features, history_csr, interaction_csr
from trainer.model import CandidateTower, QueryTower, TwoTowerModel
from trainer.warm_start import ease_warm_start

EARLY_STOPPING_METRIC = "val_hr_score"


def item_shares(ratings: Ratings, item_ids: np.ndarray) -> np.ndarray:
    """Each catalog item's share of the interactions: float32 [len(item_ids)]."""
    row_of = {item: row for row, item in enumerate(item_ids.tolist())}
    counts = np.bincount([row_of[i] for i in ratings.items.tolist()], minlength=len(item_ids))
    return (counts / max(counts.sum(), 1)).astype(np.float32)


def time_positions(ratings: Ratings, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """float32 [len(user_ids), len(item_ids)]: each rated movie's place (0, 1, ...) in
    its user's ratings ordered by timestamp, ties by catalog row; -1 where not rated."""
    row_of = {item: row for row, item in enumerate(item_ids.tolist())}
    items = np.fromiter((row_of[i] for i in ratings.items.tolist()), dtype=np.int64, count=len(ratings))
    users = np.searchsorted(user_ids, ratings.users)
    order = np.lexsort((items, ratings.timestamps, users))
    users, items = users[order], items[order]
    starts = np.searchsorted(users, users, side="left")  # first index of each entry's user
    positions = np.full((len(user_ids), len(item_ids)), -1.0, dtype=np.float32)
    positions[users, items] = np.arange(len(users)) - starts
    return positions


def history_positions(ratings: Ratings, user_ids: np.ndarray, item_ids: np.ndarray, history: Csr) -> Csr:
    """The time positions (``time_positions``) of the entries of ``history`` (the
    query tower's table: row 0 empty, row r + 1 = user r, 1-based item rows)."""
    positions = time_positions(ratings, user_ids, item_ids)
    users = np.repeat(np.arange(len(history.splits) - 1), np.diff(history.splits)) - 1
    return Csr(splits=history.splits, values=positions[users, history.values - 1])


def make_dataset(ratings: Ratings, item_ids: np.ndarray, probability: np.ndarray, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    """Batches of {"user_id", "item_id": tf.string [b], "item_probability": tf.float32 [b]}."""
    row_of = {item: row for row, item in enumerate(item_ids.tolist())}
    rows = np.fromiter((row_of[i] for i in ratings.items.tolist()), dtype=np.int64, count=len(ratings))
    dataset = tf.data.Dataset.from_tensor_slices(
        {"user_id": ratings.users, "item_id": ratings.items, "item_probability": probability[rows]}
    )
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(ratings), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class Embedder:
    """The towers' outputs as numpy: catalog and user vectors, float32 [n, dim]."""

    def __init__(self, query_tower: QueryTower, candidate_tower: CandidateTower, item_ids: np.ndarray):
        self.query_tower, self.candidate_tower, self.item_ids = query_tower, candidate_tower, item_ids

    def items(self) -> np.ndarray:
        return _batched(self.candidate_tower, self.item_ids)

    def users(self, user_ids: np.ndarray) -> np.ndarray:
        return _batched(self.query_tower, user_ids)


def _batched(tower: keras.Model, ids: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    return np.concatenate(
        [tower(tf.constant(ids[start : start + batch_size])).numpy() for start in range(0, len(ids), batch_size)]
    ).astype(np.float32, copy=False)


class ValidationHitRate(keras.callbacks.Callback):
    """Before training and after each epoch, HR@10 and HR@100 on the validation
    slice, both protocols.

    Adds ``val_hr@10``, ``val_hr@100`` (seen excluded), their combination
    EARLY_STOPPING_METRIC = HR@10 + HR@100 / 4, and ``val_hr_all@10``,
    ``val_hr_all@100`` (every movie ranked; logged, not stopped on) to the
    epoch logs, for EarlyStopping placed after this callback. The scores of the
    initial weights ("epoch 0", which matter for a warm start) are kept in
    ``initial`` and those weights in ``initial_weights``.
    """

    def __init__(self, embedder: Embedder, data: ev.EvaluationSet, user_ids: np.ndarray):
        super().__init__()
        self._embedder, self._data, self._user_ids = embedder, data, user_ids
        self.initial: dict[str, float] = {}
        self.initial_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.on_epoch_end(-1, self.initial)
        self.initial_weights = self.model.get_weights()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        users, items = self._embedder.users(self._user_ids), self._embedder.items()
        pairs = (self._data.pair_users, self._data.pair_items)
        hr = ev.hit_rates(users, items, *pairs, self._data.seen)
        hr_all = ev.hit_rates(users, items, *pairs, None)
        if logs is not None:
            logs.update(
                {
                    "val_hr@10": hr[9],
                    "val_hr@100": hr[99],
                    EARLY_STOPPING_METRIC: hr[9] + hr[99] / 4,
                    "val_hr_all@10": hr_all[9],
                    "val_hr_all@100": hr_all[99],
                }
            )
        print(
            f"epoch {epoch + 1}: validation HR@10 {hr[9]:.4f}  HR@100 {hr[99]:.4f} (seen excluded); "
            f"all ranked {hr_all[9]:.4f} / {hr_all[99]:.4f}",
            flush=True,
        )


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A fitted model and what the rest of the run needs from fitting."""

    model: TwoTowerModel
    embedder: Embedder
    history: dict[str, list[float]]  # Keras History.history
    best_epoch: int  # 1-based epoch whose weights were kept; 0 = the initial weights
    initial: dict[str, float]  # validation scores of the initial weights (empty without validation)
    refit: bool  # the kept warm start was fitted again on all training ratings (fit + validation)
    seconds: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    bundle: Path  # the published version folder
    report: dict | None  # HR@K report, None when nothing was held out
    factorized_metrics: dict[str, float]  # Keras FactorizedTopK on the test split


def fit(ml: MovieLens, split: Split, user_ids: np.ndarray, config: TrainConfig, verbose: int) -> Fitted:
    """Builds both towers and fits them on ``split.fit``, early-stopping on ``split.validation``."""
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    item_ids = ml.items.ids
    fit_seen = interaction_csr(split.fit, user_ids, item_ids)
    fit_history = history_csr(fit_seen)
    query_tower = QueryTower(build_user_features(ml.users, user_ids, fit_history), item_ids, config.model)
    if config.model.history_tau > 0:
        query_tower.set_history_positions(history_positions(split.fit, user_ids, item_ids, fit_history))
    candidate_tower = CandidateTower(build_item_features(ml.items, len(ml.genres)), config.model)
    model = TwoTowerModel(query_tower, candidate_tower, item_ids, config.model)
    if config.model.init == "ease":
        _ease_init(split.fit, fit_seen, user_ids, item_ids, query_tower, candidate_tower, config)
    if config.model.fine_tune == "side" and config.weight_decay > 0:
        raise ValueError("fine_tune 'side' needs weight_decay 0 (AdamW would shrink the frozen rows too); use side_l2")
    model.compile(optimizer=keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay))
    embedder = Embedder(query_tower, candidate_tower, item_ids)

    fit_share = item_shares(split.fit, item_ids)
    callbacks, validation = [], None
    if split.validation is not None:
        val_set, val_users = ev.evaluation_set(split.validation, item_ids, user_ids, fit_seen, fit_share)
        validation = ValidationHitRate(embedder, val_set, val_users)
        callbacks = [
            validation,
            keras.callbacks.EarlyStopping(
                monitor=EARLY_STOPPING_METRIC,
                mode="max",
                patience=config.patience,
                restore_best_weights=True,
                verbose=1,
            ),
        ]
    history = model.fit(
        make_dataset(split.fit, item_ids, fit_share, config.batch_size, shuffle_seed=config.seed),
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=verbose,
    ).history
    epochs_run = len(history["loss"])
    best_epoch, initial, refit = epochs_run, {}, False
    if validation is not None:
        initial = validation.initial
        # Index 0 is the initial weights; on a tie the earlier (fewer steps) wins.
        best_epoch = int(np.argmax([initial[EARLY_STOPPING_METRIC], *history[EARLY_STOPPING_METRIC]]))
        if best_epoch == 0:
            model.set_weights(validation.initial_weights)
            print("restoring the initial weights: no epoch beat them on validation", flush=True)
            if config.model.init == "ease" and config.refit:
                # The closed form has nothing left to select on the validation slice, so,
                # as after any model selection, it is fitted again on all the training data.
                train_seen = interaction_csr(split.train, user_ids, item_ids)
                _ease_init(split.train, train_seen, user_ids, item_ids, query_tower, candidate_tower, config)
                refit = True
    return Fitted(model, embedder, history, best_epoch, initial, refit, time.monotonic() - started)


def _ease_init(
    fit: Ratings,
    fit_seen: Csr,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    query_tower: QueryTower,
    candidate_tower: CandidateTower,
    config: TrainConfig,
) -> None:
    """Warm-starts both towers from rank-``embedding_dim`` EASE on the interactions ``fit``."""
    started = time.monotonic()
    row_of = {item: row for row, item in enumerate(item_ids.tolist())}
    pair_items = np.fromiter((row_of[i] for i in fit.items.tolist()), dtype=np.int64, count=len(fit))
    pair_users = np.searchsorted(user_ids, fit.users)
    m = config.model
    start = ease_warm_start(
        fit_seen,
        len(item_ids),
        pair_users,
        pair_items,
        lam=m.ease_lambda,
        rank=m.embedding_dim,
        balance=m.init_balance,
        mask_seen=m.mask_seen,
        seed=config.seed,
        tau=m.ease_tau,
        pair_timestamps=fit.timestamps,
    )
    query_tower.warm_start(start.history)
    candidate_tower.warm_start(start.items)
    print(
        f"warm start: rank-{m.embedding_dim} EASE (lambda {m.ease_lambda:g}, tau {m.ease_tau:g}) on {len(fit):,} ratings, "
        f"score scale {start.scale:.3g}, initial loss {start.init_loss:.4f}, {time.monotonic() - started:.1f} s",
        flush=True,
    )


def train(ml: MovieLens, config: TrainConfig, model_base: Path, verbose: int = 2) -> TrainResult:
    """Fits the model on ``ml``, evaluates it on the held-out split and publishes one
    bundle under ``model_base``."""
    split = split_ratings(ml.ratings, config)
    item_ids = ml.items.ids
    user_ids = np.unique(split.train.users)
    fitted = fit(ml, split, user_ids, config, verbose)

    # Serve (and test) with every training rating in the users' histories.
    train_seen = interaction_csr(split.train, user_ids, item_ids)
    fitted.embedder.query_tower.set_history(history_csr(train_seen))
    item_embeddings = fitted.embedder.items()
    popularity = item_shares(split.train, item_ids)

    with BundleStaging(model_base) as staging:
        save_user_tower(fitted.embedder.query_tower, staging.path / USER_TOWER)
        evaluation_dir = staging.path / EVALUATION
        evaluation_dir.mkdir()
        ev.write_test_interactions(evaluation_dir / ev.TEST_INTERACTIONS, split.test)
        report, factorized = None, {}
        if split.test is not None:
            results = fitted.model.evaluate(
                make_dataset(split.test, item_ids, popularity, config.batch_size, shuffle_seed=None),
                return_dict=True,
                verbose=verbose,
            )
            factorized = {
                f"top_{k}": float(results[f"factorized_top_k/top_{k}_categorical_accuracy"]) for k in (1, 5, 10, 50, 100)
            }
            print("test FactorizedTopK (all movies ranked): " + "  ".join(f"{k} {v:.4f}" for k, v in factorized.items()))
            test_set, test_users = ev.evaluation_set(split.test, item_ids, user_ids, train_seen, popularity)
            signature = load_user_tower(staging.path / USER_TOWER)  # score exactly what is served
            report = ev.evaluate(embed_users(signature, test_users), item_embeddings, test_set)
            ev.write_report(report, evaluation_dir)
            print(ev.format_table(report))
        else:
            print("test fraction is 0: trained on every rating, offline evaluation skipped")

        for name, array in {
            "item_embeddings": item_embeddings,
            "item_ids": item_ids,
            "item_titles": ml.items.titles,
            "item_genres": ml.items.genres,
            "item_popularity": popularity,
            "user_ids": user_ids,
            "seen_indptr": train_seen.splits,
            "seen_items": train_seen.values,
        }.items():
            staging.save_array(name, array)
        bundle = staging.publish(
            {
                "embedding_dim": int(item_embeddings.shape[1]),
                "item_count": len(item_ids),
                "user_count": len(user_ids),
                "genres": list(ml.genres),
                # ScaNN's parameters for this catalog (and, for a large one, the built searcher).
                "scann": ann.write_searcher(staging.path, item_embeddings),
                "metrics": _metrics(report, factorized, fitted),
                "training": _training_record(ml, split, config, fitted),
            }
        )
    return TrainResult(bundle=bundle, report=report, factorized_metrics=factorized)


def _metrics(report: dict | None, factorized: dict[str, float], fitted: Fitted) -> dict[str, float | None]:
    def at_best(key: str) -> float | None:
        if fitted.best_epoch == 0:
            return float(fitted.initial[key]) if key in fitted.initial else None
        values = fitted.history.get(key)
        return float(values[fitted.best_epoch - 1]) if values else None

    return {
        **(ev.headline(report) if report else {}),
        **{f"factorized_top_k/{k}": v for k, v in factorized.items()},
        "validation/seen_excluded/hr@10": at_best("val_hr@10"),
        "validation/seen_excluded/hr@100": at_best("val_hr@100"),
        "validation/all/hr@10": at_best("val_hr_all@10"),
        "validation/all/hr@100": at_best("val_hr_all@100"),
    }


def _training_record(ml: MovieLens, split: Split, config: TrainConfig, fitted: Fitted) -> dict:
    return {
        "data_sha256": ml.sha256,
        "data_files": {role: str(path) for role, path in ml.files.items()},
        "ratings": {
            "train": len(split.train),
            "fit": len(split.fit),
            "validation": len(split.validation) if split.validation else 0,
            "test": len(split.test) if split.test else 0,
        },
        "test_fraction": config.test_fraction,
        "validation_fraction": config.validation_fraction,
        "seed": config.seed,
        "epochs": config.epochs,
        "epochs_run": len(fitted.history["loss"]),
        "best_epoch": fitted.best_epoch,
        "refit": fitted.refit,
        "patience": config.patience,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "optimizer": "AdamW",
        "model": dataclasses.asdict(config.model),
        "train_seconds": round(fitted.seconds, 1),
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "tensorflow_recommenders": tfrs.__version__,
    }
