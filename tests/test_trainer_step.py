"""The training step's parts that set its cost: lazy Adam, the pooled history lookup, the step settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trainer.config import STEP_SETTINGS, ModelConfig, TrainConfig, step_settings


def test_step_settings_fill_what_the_config_leaves_open() -> None:
    config, step = step_settings(TrainConfig(), "in_batch")
    assert step == STEP_SETTINGS["in_batch"]
    assert (config.batch_size, config.optimizer, config.steps_per_execution) == (
        step.batch_size, step.optimizer, step.steps_per_execution)
    assert (config.model.negatives, config.model.history_length, config.model.in_batch_negatives) == (
        "in_batch", step.history_length, step.in_batch_negatives)
    given = TrainConfig(batch_size=64, optimizer="adamw", steps_per_execution=2,
                        model=ModelConfig(history_length=5, in_batch_negatives=7))
    config, step = step_settings(given, "in_batch")
    assert dataclasses.astuple(step) == (64, 5, 7, "adamw", 2)
    assert step_settings(TrainConfig(), "catalog")[1] == STEP_SETTINGS["catalog"]


def test_lazy_adam_moves_only_the_rows_a_batch_uses() -> None:
    import tensorflow as tf

    from trainer.optimizers import LazyAdam, make_optimizer

    table = tf.Variable(np.ones((6, 3), np.float32))
    dense = tf.Variable(np.ones((6, 3), np.float32))
    lazy, adam = LazyAdam(0.1), make_optimizer("adamw", 0.1, 0.0)
    for rows in ([1, 3], [3, 1, 3], [1, 3]):  # row 3 twice in one batch: its gradients add up
        for variable, optimizer in ((table, lazy), (dense, adam)):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(variable, rows) * np.arange(1, 4, dtype=np.float32))
            optimizer.apply_gradients([(tape.gradient(loss, variable), variable)])
    moved, still = [1, 3], [0, 2, 4, 5]
    assert np.allclose(table.numpy()[still], 1.0)  # untouched rows and ...
    assert np.allclose(lazy.variables[1].numpy()[still], 0.0)  # ... their moments
    assert not np.allclose(table.numpy()[moved], 1.0)
    # Rows used by every batch get exactly Adam's update (Keras's dense Adam here).
    assert np.allclose(table.numpy()[moved], dense.numpy()[moved], atol=1e-6)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("sgd", 0.1, 0.0)


def test_pooled_history_is_the_masked_mean_with_one_gradient_row_per_distinct_item() -> None:
    import tensorflow as tf

    from trainer.model import masked_mean, pooled_embedding

    rng = np.random.default_rng(0)
    codes = tf.constant(np.where(rng.random((64, 16)) < 0.3, 0, rng.integers(1, 40, (64, 16))).astype(np.int32))
    distinct = np.unique(codes.numpy())
    weights = tf.Variable(rng.normal(size=(40, 4)).astype(np.float32))

    def table(ids: tf.Tensor) -> tf.Tensor:  # an embedding lookup, as keras.layers.Embedding does
        return tf.gather(weights, ids)

    with tf.GradientTape(persistent=True) as tape:
        pooled = pooled_embedding(table, codes)
        plain = masked_mean(table(codes), codes)
        pooled_loss, plain_loss = tf.reduce_sum(pooled**2), tf.reduce_sum(plain**2)
    assert np.allclose(pooled.numpy(), plain.numpy(), atol=1e-6)
    gradient = tape.gradient(pooled_loss, weights)
    assert len(gradient.indices) == len(distinct)
    reference = tape.gradient(plain_loss, weights)
    assert np.allclose(tf.convert_to_tensor(gradient).numpy(), tf.convert_to_tensor(reference).numpy(), atol=1e-6)
