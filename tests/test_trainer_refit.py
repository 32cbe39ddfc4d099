"""trainer.train.fit: when no trained epoch beats the EASE warm start on the
validation slice, the warm start that ships is fitted again on every training
interaction (fit + validation), unless ``refit`` is off.

A learning rate far too large makes the one trained epoch lose to the warm start,
so the run keeps epoch 0; the towers' tables are then compared with
``ease_warm_start`` on the full training part and on the fit part alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _tables(small_movielens_dir: Path, refit: bool):
    import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TFRS is imported)

    from trainer.config import ModelConfig, TrainConfig
    from trainer.features import seen_csr
    from trainer.readers import read_folder
    from trainer.split import split_interactions
    from trainer.train import fit
    from trainer.warm_start import ease_warm_start

    ds = read_folder(small_movielens_dir)
    model = ModelConfig(embedding_dim=8, history_dim=8, item_id_dim=8, ease_lambda=20.0, ease_tau=10.0, init="ease")
    config = TrainConfig(
        validation_fraction=0.2, epochs=1, patience=1, batch_size=256, learning_rate=50.0, refit=refit, model=model
    )
    split = split_interactions(len(ds.interactions), config)
    fitted = fit(ds, split, config, verbose=0)

    def expected(rows):
        inter = ds.interactions
        users, items = inter.users[rows].astype(np.int64), inter.items[rows].astype(np.int64)
        start = ease_warm_start(
            seen_csr(users, items, len(ds.users)), len(ds.items), users, items,
            lam=model.ease_lambda, rank=model.embedding_dim, seed=config.seed, tau=model.ease_tau, popularity_column=True,
            pair_timestamps=inter.timestamps[rows],
        )  # fmt: skip
        return start.history, start.items

    towers = fitted.towers
    shipped = (towers.query.history_embedding.get_weights()[0], towers.candidate.item_embedding.get_weights()[0])
    return fitted, shipped, expected(split.train), expected(split.fit)


def test_kept_warm_start_is_refitted_on_all_training_ratings(small_movielens_dir: Path) -> None:
    fitted, shipped, on_train, on_fit = _tables(small_movielens_dir, refit=True)
    assert fitted.best_epoch == 0, "the lr-50 epoch was meant to lose to the warm start"
    assert fitted.refit
    for got, want, other in zip(shipped, on_train, on_fit):
        assert np.allclose(got, want, atol=1e-6)
        assert not np.allclose(got, other, atol=1e-3)  # the validation ratings do change it


def test_no_refit_keeps_the_fit_part_warm_start(small_movielens_dir: Path) -> None:
    fitted, shipped, on_train, on_fit = _tables(small_movielens_dir, refit=False)
    assert fitted.best_epoch == 0 and not fitted.refit
    for got, want in zip(shipped, on_fit):
        assert np.allclose(got, want, atol=1e-6)


def test_refit_flag() -> None:
    from trainer import cli
    from trainer.config import TrainConfig

    parser = cli.build_parser()
    assert parser.parse_args(["train"]).refit is TrainConfig().refit is True
    assert parser.parse_args(["train", "--no-refit"]).refit is False
