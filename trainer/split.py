"""The trainer's seeded split of a Dataset's interactions into fit, validation and test rows.

``train`` fits and evaluates on it and ``tune`` cross-validates on its training
part, so both see the same rows. Numpy only: ``tune`` must not import TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from trainer.config import TrainConfig


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of row numbers 0..n-1 -> (kept, held_out), both int64.

    ``held_out`` has round(n * fraction) rows; both keep the shuffled order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(n * fraction))
    return order[: n - held], order[n - held :]


@dataclasses.dataclass(frozen=True)
class Split:
    """Row numbers of the Dataset's interactions: fit + validation = train; test held out."""

    train: np.ndarray
    fit: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_interactions(count: int, config: TrainConfig) -> Split:
    """The seeded train/test split, then a validation slice of the training part."""
    train, test = split_rows(count, config.test_fraction, config.seed)
    fit, validation = split_rows(len(train), config.validation_fraction, config.seed + 1)
    return Split(train=train, fit=train[fit], validation=train[validation], test=test)
