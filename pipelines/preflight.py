"""What the training phases and the lowering can handle, asked of the untrained model
before anything trains: a setting that cannot work fails in seconds, naming the layer
and the option, instead of after minutes of training.

Each pending phase wraps the model as it will (TFMOT pruning, QAT, prune-preserving
QAT) and calls the wrapped model once on two training examples; the SparseGRU
lowering checks the GRU layers. Wrapping works on copies: the model is untouched.
"""
from __future__ import annotations

from core.keras_env import keras, tf
from pipelines import optimize, pruning
from pipelines.config import ModelConfig
from pipelines.data import Dataset
from tflite.ops.sparse_gru_lowering import check_lowerable

PROBE_EXAMPLES = 2


def check_phases(model: keras.Model, data: Dataset, config: ModelConfig,
                 phases: set[str]) -> None:
    """Raise the UserError a pending phase in `phases` ("pruned", "qat", "pqat") or the
    configured lowering would raise later."""
    probe = tf.constant(data.x_train[:PROBE_EXAMPLES])
    if "pruned" in phases or "pqat" in phases:
        steps = optimize.pruning_steps(config, data, warn=False)
        wrapped, _, _ = pruning.wrap_for_pruning(model, config.pruning, steps)
        wrapped(probe, training=False)  # training calls need TFMOT's step callback
    if "qat" in phases:
        optimize.qat_model(model, config)(probe, training=True)
    if "pqat" in phases:
        # The stripped pruned model has the float model's architecture.
        optimize.pqat_model(model, config)(probe, training=True)
    if config.gru_lowering == "sparse_gru":
        check_lowerable(model)
