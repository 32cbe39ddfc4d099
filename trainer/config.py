"""Training and model hyper-parameters. No TensorFlow import, so the CLI can
parse flags and validate data before paying for it."""

from __future__ import annotations

import dataclasses

AUTO = "auto"
NEGATIVES = ("catalog", "in_batch")
INITS = ("ease", "random")
OPTIMIZERS = ("adamw", "lazy_adam")  # see trainer.optimizers
# Up to this many items the softmax runs over the whole catalog (a [batch, items] logit
# matrix per step); beyond, over the batch's positives with the logQ correction.
CATALOG_SOFTMAX_MAX_ITEMS = 20_000
# The EASE warm start holds about four dense items x items float64 matrices (the Gram, its
# inverse, B and its SVD); it is used only while they fit this budget (~11,000 items).
EASE_MEMORY_BUDGET_BYTES = 4 * 2**30
LEARNING_RATES = {"ease": 0.0001, "random": 0.005}  # the defaults for each start, tuned on ml-100k


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The defaults, per kind of negatives, of the settings that set a training step's cost."""

    batch_size: int
    history_length: int  # history items sampled per training example (all of them when fewer)
    in_batch_negatives: int  # in_batch only: negatives per batch (the batch's first positives)
    optimizer: str  # one of OPTIMIZERS
    steps_per_execution: int  # training steps per call into the TensorFlow graph


# The catalog softmax (small catalogs) was tuned on ml-100k. The in-batch softmax is for large
# logs and catalogs, where the step's cost is the budget (README, "Training at scale"): a larger batch
# gives fewer steps; 32 history items and 256 shared negatives cost half and a quarter of 64 and
# 1,024; lazy Adam updates only the embedding rows a batch uses; 16 steps per call amortise
# Keras's per-step overhead.
STEP_SETTINGS = {
    "catalog": StepSettings(batch_size=1024, history_length=64, in_batch_negatives=1024, optimizer="adamw",
                            steps_per_execution=1),
    "in_batch": StepSettings(batch_size=8192, history_length=32, in_batch_negatives=256, optimizer="lazy_adam",
                             steps_per_execution=16),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and loss settings (see trainer.model)."""

    embedding_dim: int = 32  # output of both towers; their dot product is the score
    item_id_dim: int = 32  # item-id embedding
    history_dim: int = 32  # pooled history embedding
    feature_dim: int = 8  # each side feature's embedding
    history_length: int | None = None  # None: STEP_SETTINGS[negatives]
    history_dropout: float = 0.5  # share of the sampled history dropped per training example
    negatives: str = AUTO  # "catalog", "in_batch", or chosen by catalog size (CATALOG_SOFTMAX_MAX_ITEMS)
    mask_seen: bool = True  # catalog softmax: take the user's other training items out of it
    in_batch_negatives: int | None = None  # in_batch only; None: STEP_SETTINGS[negatives]
    logq_weight: float = 1.0  # in_batch only: exponent on the sampling probability (1 = full logQ correction)
    init: str = AUTO  # "ease", "random", or chosen by catalog size (EASE_MEMORY_BUDGET_BYTES)
    ease_lambda: float = 100.0  # EASE's L2 weight λ for the warm start
    ease_tau: float = 40.0  # > 0: EASE on the temporal co-occurrence Gram (trainer.warm_start.temporal_gram); 0 = XᵀX
    init_balance: float = 0.5  # share of the singular values on the history side (0.5 = sqrt on each side)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Split and optimisation settings; see ``python -m trainer train --help``."""

    test_fraction: float = 0.2
    validation_fraction: float = 0.05
    seed: int = 42
    epochs: int = 30
    patience: int = 3
    batch_size: int | None = None  # None: STEP_SETTINGS[negatives]
    optimizer: str | None = None  # one of OPTIMIZERS; None: STEP_SETTINGS[negatives]
    steps_per_execution: int | None = None  # None: STEP_SETTINGS[negatives]
    learning_rate: float | None = None  # None: LEARNING_RATES[init]
    weight_decay: float = 0.0
    refit: bool = True  # init "ease" and no epoch beats it: fit the warm start again on all training ratings
    validation_users: int = 5000  # early stopping scores at most this many validation users
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


def step_settings(config: "TrainConfig", negatives: str) -> tuple["TrainConfig", StepSettings]:
    """``config`` with its model's negatives set and every step setting it leaves None filled
    from STEP_SETTINGS[negatives]; and the settings as resolved."""
    default = STEP_SETTINGS[negatives]
    model = config.model
    chosen = StepSettings(
        batch_size=config.batch_size or default.batch_size,
        history_length=model.history_length or default.history_length,
        in_batch_negatives=model.in_batch_negatives or default.in_batch_negatives,
        optimizer=config.optimizer or default.optimizer,
        steps_per_execution=config.steps_per_execution or default.steps_per_execution,
    )
    model = dataclasses.replace(model, negatives=negatives, history_length=chosen.history_length,
                                in_batch_negatives=chosen.in_batch_negatives)
    return dataclasses.replace(config, model=model, batch_size=chosen.batch_size, optimizer=chosen.optimizer,
                               steps_per_execution=chosen.steps_per_execution), chosen


def choose_negatives(requested: str, item_count: int) -> str:
    """``requested`` unless "auto": the exact catalog softmax while the catalog is small."""
    if requested != AUTO:
        return requested
    return "catalog" if item_count <= CATALOG_SOFTMAX_MAX_ITEMS else "in_batch"


def ease_fits(item_count: int) -> bool:
    return 4 * 8 * item_count**2 <= EASE_MEMORY_BUDGET_BYTES


def choose_init(requested: str, item_count: int) -> str:
    """``requested`` unless "auto": the EASE warm start while its dense items x items matrices fit."""
    if requested != AUTO:
        return requested
    return "ease" if ease_fits(item_count) else "random"
