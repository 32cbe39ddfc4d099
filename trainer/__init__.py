"""Trains the two-tower model on MovieLens and publishes serving bundles.

TensorFlow Recommenders needs the Keras 2 API (tf_keras), which TensorFlow
only selects if TF_USE_LEGACY_KERAS is set before it is first imported, so it
is set here, before any trainer module can import TensorFlow.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
