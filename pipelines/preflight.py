"""What the training phases and the lowering can handle, asked of the untrained model
before anything trains: a setting that cannot work fails in seconds, naming the layer
and the option, instead of after minutes of training.

Each pending phase wraps the model as it will (TFMOT pruning, QAT, prune-preserving
QAT) and calls the wrapped model once on two training examples; channel pruning
and attention transfer check that their layers exist and can serve; the SparseGRU
lowering checks the GRU layers. Wrapping works on copies: the model is untouched.
"""
from __future__ import annotations

from core.errors import UserError
from core.keras_env import keras, tf
from pipelines import optimize, pruning
from pipelines.channel_pruning import select_groups
from pipelines.config import ModelConfig
from pipelines.data import Dataset
from pipelines.distillation import attention_layers
from tflite.ops.sparse_gru_lowering import check_lowerable

PROBE_EXAMPLES = 2


def check_phases(model: keras.Model, data: Dataset, config: ModelConfig,
                 phases: set[str]) -> None:
    """Raise the UserError a pending phase in `phases` (run.TRAINING_PHASES), its
    distillation or the configured lowering would raise later."""
    probe = tf.constant(data.x_train[:PROBE_EXAMPLES])
    if config.distillation.enabled and config.distillation.attention_transfer.enabled \
            and phases - {"float"}:
        attention_layers(model, config.distillation.attention_transfer.layers)
    if "channel_pruned" in phases:
        _check_channel_groups(model, config)
    if phases & {"pruned", "pqat", "channel_pruned_sparse"}:
        # Channel pruning keeps layer names, so the float model answers for its result too.
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


def _check_channel_groups(model: keras.Model, config: ModelConfig) -> None:
    groups, unprunable = select_groups(model, config.channel_pruning.layers)
    if not groups:
        reasons = "; ".join(f"{name}: {why}" for name, why in unprunable.items())
        raise UserError(f"model {config.name!r}: channel_pruning.layers "
                        f"{config.channel_pruning.layers or '(all)'} select no channel group that "
                        f"can be shrunk ({reasons or 'the model has none'}); select groups of "
                        "Conv2D/Dense filters whose readers can lose input channels.")
