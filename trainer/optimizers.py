"""Optimizers for the training loop (trainer.train), by the name the config uses.

``lazy_adam``: Adam whose update of an embedding table (a sparse gradient,
``tf.IndexedSlices``) touches only the rows in the batch: their moments decay
and the rows move; every other row, its moments included, is left as it is
until a batch uses it. Keras's Adam/AdamW decay both moment tables of every
row on every step (three passes over each items x dim table per step), which at
a million items costs more than the step itself. Dense gradients (the
projections) get Keras's Adam unchanged. This is the "lazy" Adam of
TensorFlow Addons / Keras 1 (Kingma & Ba's update, applied per row when the
row is used); it differs from dense Adam only for rows absent from a batch.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from trainer.config import OPTIMIZERS


class LazyAdam(keras.optimizers.Adam):
    """Adam with row-wise (lazy) updates for sparse gradients; see the module doc."""

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        rows = gradient.indices  # distinct: Keras sums duplicate rows before update_step
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * gradient.values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(gradient.values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


def make_optimizer(name: str, learning_rate: float, weight_decay: float) -> keras.optimizers.Optimizer:
    """``name`` (one of OPTIMIZERS) -> a Keras optimizer. Weight decay is decoupled (AdamW's)
    in both; with lazy_adam it still runs over every row, so leave it 0 on large catalogs."""
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    if name == "lazy_adam":
        return LazyAdam(learning_rate, weight_decay=weight_decay or None)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
