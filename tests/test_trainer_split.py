"""trainer.split: the seeded split that ``train`` fits on and ``tune`` cross-validates on. No TensorFlow."""

from __future__ import annotations

import numpy as np

from trainer.config import TrainConfig
from trainer.split import split_interactions, split_rows


def test_split_rows_is_seeded_and_disjoint() -> None:
    kept, held = split_rows(1000, 0.2, seed=42)
    assert len(kept) == 800 and len(held) == 200
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(1000))
    again_kept, again_held = split_rows(1000, 0.2, seed=42)
    assert (kept == again_kept).all() and (held == again_held).all()
    assert not (split_rows(1000, 0.2, seed=7)[1] == held).all()
    assert len(split_rows(10, 0.0, seed=1)[1]) == 0


def test_split_interactions_holds_out_test_then_validation() -> None:
    split = split_interactions(1000, TrainConfig(test_fraction=0.2, validation_fraction=0.05, seed=3))
    assert (len(split.train), len(split.fit), len(split.validation), len(split.test)) == (800, 760, 40, 200)
    assert sorted(np.concatenate([split.train, split.test]).tolist()) == list(range(1000))
    assert sorted(np.concatenate([split.fit, split.validation]).tolist()) == sorted(split.train.tolist())
    # The test rows depend on the seed alone, not on the validation fraction.
    train, test = split_rows(1000, 0.2, seed=3)
    assert (split.train == train).all() and (split.test == test).all()
    other = split_interactions(1000, TrainConfig(test_fraction=0.2, validation_fraction=0.3, seed=3))
    assert (other.train == split.train).all() and len(other.validation) == 240
    nothing_held = split_interactions(10, TrainConfig(test_fraction=0.0, validation_fraction=0.0))
    assert len(nothing_held.test) == len(nothing_held.validation) == 0 and len(nothing_held.fit) == 10
