"""The one place that selects Keras 2 (tf_keras) before TensorFlow is imported.

TFMOT does not support Keras 3, so every module that needs TensorFlow or Keras
imports them from here: `from core.keras_env import tf, keras`.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]

# TensorFlow's Python loggers report SavedModel and converter internals at INFO;
# our own progress goes through absl logging, so keep theirs to warnings.
import logging as _logging  # noqa: E402

_logging.getLogger("tensorflow").setLevel(_logging.WARNING)
