"""Training and model hyper-parameters. No TensorFlow import, so the CLI can
parse flags and validate data before paying for it."""

from __future__ import annotations

import dataclasses

NEGATIVES = ("catalog", "in_batch")
INITS = ("ease", "random")
FINE_TUNES = ("all", "side")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and loss settings (see trainer.model)."""

    embedding_dim: int = 32  # output of both towers; their dot product is the score
    user_id_dim: int = 0  # user-id embedding; 0 = none (it memorises the training movies)
    item_id_dim: int = 32  # movie-id embedding
    history_dim: int = 32  # pooled watch-history embedding
    feature_dim: int = 8  # each categorical side feature
    history_dropout: float = 0.5  # share of history movies dropped per training example
    history_tau: float = 0.0  # > 0: in training, pool the history with weights exp(-|p - p_target| / tau) (time positions)
    negatives: str = "catalog"  # softmax over the whole catalog, or over the batch's positives
    mask_seen: bool = True  # take the user's other training movies out of the softmax
    logq_weight: float = 1.0  # in_batch only: exponent on the sampling probability (1 = full logQ correction)
    init: str = "ease"  # or "random": start from rank-embedding_dim EASE (trainer.warm_start); see EXPERIMENTS.md
    ease_lambda: float = 100.0  # EASE's L2 weight λ for the warm start
    ease_tau: float = 40.0  # > 0: EASE on the temporal co-occurrence Gram (trainer.warm_start.temporal_gram); 0 = XᵀX
    init_balance: float = 0.5  # share of the singular values on the history side (0.5 = sqrt on each side)
    fine_tune: str = "all"  # "side": train only the side-feature weights, the history / movie-id parts stay frozen
    side_l2: float = 0.0  # fine_tune "side": L2 weight on the trained side-feature weights (added to the loss)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Split and optimisation settings; see ``python -m trainer train --help``."""

    test_fraction: float = 0.2
    validation_fraction: float = 0.05
    seed: int = 42
    epochs: int = 30
    patience: int = 3
    batch_size: int = 1024
    learning_rate: float = 0.0001  # for the EASE warm start; --init random was tuned at 0.005
    weight_decay: float = 0.0
    refit: bool = True  # init "ease" and no epoch beats it: fit the warm start again on all training ratings
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
