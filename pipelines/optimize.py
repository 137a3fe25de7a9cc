"""The training phases: float training, pruning fine-tune, QAT, prune-preserving QAT
and channel pruning.

Each phase starts from the previous phase's Keras model and returns a new one,
plus what it measured (history, sparsity per layer, channels). With
`distillation.enabled`, every phase after float training is taught by the float
model (`teacher`).
"""
from __future__ import annotations

import re
from pathlib import Path

from core.errors import UserError
from core.keras_env import keras, tf
from pipelines import pruning
from pipelines.channel_pruning import ChannelPruningSettings, Teacher, prune_channels
from pipelines.config import ModelConfig
from pipelines.data import Dataset
from pipelines.distillation import DistillationSettings, attention_layers, fit_distilled
from pipelines.train import fit, steps_per_epoch

import tensorflow_model_optimization as tfmot  # noqa: E402  (after core.keras_env)


def train_float(model: keras.Model, data: Dataset, config: ModelConfig, log_dir: Path) -> dict:
    return fit(model, data, epochs=config.train.epochs, batch_size=config.train.batch_size,
               learning_rate=config.train.learning_rate, log_dir=log_dir)


def pruning_total_steps(config: ModelConfig, data: Dataset) -> int:
    """Optimizer steps of the pruning phase."""
    return config.pruning.epochs * steps_per_epoch(data, config.train.batch_size)


def pruning_steps(config: ModelConfig, data: Dataset, warn: bool = True) -> pruning.PhaseSteps:
    """The pruning phase's steps; the pitfall warnings are given once (`warn`)."""
    return pruning.resolve_steps(config.pruning, pruning_total_steps(config, data), warn=warn)


def distillation_settings(config: ModelConfig, teacher: keras.Model) -> DistillationSettings:
    """The config's distillation, its attention pairs chosen on the teacher."""
    d = config.distillation
    at = d.attention_transfer
    return DistillationSettings(temperature=d.temperature, alpha=d.alpha, beta=at.beta,
                                attention_layers=attention_layers(teacher, at.layers)
                                if at.enabled else {})


def _fit_phase(model: keras.Model, data: Dataset, config: ModelConfig, teacher: keras.Model | None,
               *, epochs: int, learning_rate: float, log_dir: Path, callbacks: list = ()
               ) -> dict[str, list[float]]:
    """`train.fit`, or with a `teacher` (given when distillation is on), the same
    training taught by it."""
    common = dict(epochs=epochs, batch_size=config.train.batch_size,
                  learning_rate=learning_rate, log_dir=log_dir, callbacks=list(callbacks))
    if teacher is None:
        return fit(model, data, **common)
    return fit_distilled(model, teacher, data, distillation_settings(config, teacher), **common)


def prune(model: keras.Model, data: Dataset, config: ModelConfig, log_dir: Path,
          teacher: keras.Model | None = None) -> tuple[keras.Model, dict]:
    """Fine-tune `model` under the pruning schedule; return the stripped model and
    the sparsity achieved per pruned weight."""
    p = config.pruning
    total_steps = pruning_total_steps(config, data)
    steps = pruning_steps(config, data)
    wrapped, callbacks, layer_names = pruning.wrap_for_pruning(model, p, steps)
    callbacks.append(tfmot.sparsity.keras.PruningSummaries(log_dir=str(log_dir)))
    history = _fit_phase(wrapped, data, config, teacher, epochs=p.epochs,
                         learning_rate=p.learning_rate, log_dir=log_dir, callbacks=callbacks)
    stripped = pruning.strip(wrapped)
    layers = pruning.layer_sparsity(stripped, layer_names)
    return stripped, {"history": history, "schedule": p.schedule, "total_steps": total_steps,
                      "steps": vars(steps), "layers": layers,
                      "sparsity": pruning.overall_sparsity(layers)}


def _unsupported_layer(message: str) -> str:
    match = re.search(r"Layer (\S+?):", message)
    return match.group(1) if match else "a layer"


def _quantize(apply, model: keras.Model, config: ModelConfig, option: str) -> keras.Model:
    """`apply` (a TFMOT quantization) to `model`, or one UserError naming the layer and
    the option that asked for it."""
    where = f"model {config.name!r}: {option}"
    integer_inputs = [t for t in model.inputs if t.dtype.is_integer]
    if integer_inputs:
        first = next((layer.name for layer in model.layers[1:]
                      if any(t is integer_inputs[0] for t in tf.nest.flatten(layer.input))),
                     "its first layer")
        raise UserError(
            f"{where}: the model's input {integer_inputs[0].name!r} is "
            f"{integer_inputs[0].dtype.name} (ids into layer {first!r}), and TFMOT's QAT "
            "fake-quantizes every model input, which only takes floats. Remove the qat_* and "
            "pqat_* variants and the option for this model and use post-training quantization "
            "(dynamic_range, int8) instead.")
    try:
        return apply(model)
    except (RuntimeError, ValueError, TypeError) as e:
        layer = _unsupported_layer(str(e))
        raise UserError(
            f"{where}: TFMOT quantization-aware training cannot wrap {layer} "
            f"({str(e).splitlines()[0][:160]}). Remove the qat_* and pqat_* variants for this "
            "model and use post-training quantization (dynamic_range, int8) instead.") from None


def qat_model(model: keras.Model, config: ModelConfig) -> keras.Model:
    """The float model wrapped for quantization-aware training."""
    return _quantize(tfmot.quantization.keras.quantize_model, model, config, "qat.enabled")


def _prune_preserving(model: keras.Model) -> keras.Model:
    scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    return tfmot.quantization.keras.quantize_apply(annotated, scheme)


def pqat_model(pruned: keras.Model, config: ModelConfig) -> keras.Model:
    """The stripped pruned model wrapped for QAT that keeps its zeros."""
    return _quantize(_prune_preserving, pruned, config, "qat.prune_preserving")


def quantize_aware(model: keras.Model, data: Dataset, config: ModelConfig, log_dir: Path,
                   teacher: keras.Model | None = None) -> tuple[keras.Model, dict]:
    """QAT fine-tune of the float model."""
    qat = qat_model(model, config)
    history = _fit_phase(qat, data, config, teacher, epochs=config.qat.epochs,
                         learning_rate=config.qat.learning_rate, log_dir=log_dir)
    return qat, {"history": history}


def prune_preserving_qat(pruned: keras.Model, data: Dataset, config: ModelConfig,
                         log_dir: Path, pruned_layers: list[str],
                         teacher: keras.Model | None = None) -> tuple[keras.Model, dict]:
    """QAT of the stripped pruned model with TFMOT's prune-preserving scheme; the
    sparsity after QAT is measured, since it is the point of the exercise."""
    pqat = pqat_model(pruned, config)
    history = _fit_phase(pqat, data, config, teacher, epochs=config.qat.epochs,
                         learning_rate=config.qat.learning_rate, log_dir=log_dir)
    wrapped_names = pruned_layers + [f"quant_{name}" for name in pruned_layers]
    layers = pruning.layer_sparsity(pqat, wrapped_names)
    return pqat, {"history": history, "layers": layers,
                  "sparsity": pruning.overall_sparsity(layers)}


def channel_pruning_settings(config: ModelConfig) -> ChannelPruningSettings:
    c = config.channel_pruning
    return ChannelPruningSettings(
        criterion=c.criterion, flops_regularization=c.flops_regularization,
        target_mult_adds=c.target_mult_adds, target_channels=c.target_channels,
        prune_every=c.prune_every, channels_per_step=c.channels_per_step,
        finetune_epochs=c.finetune_epochs, layers=tuple(c.layers))


def channel_prune(model: keras.Model, data: Dataset, config: ModelConfig, log_dir: Path,
                  seed: int, teacher: keras.Model | None = None) -> tuple[keras.Model, dict]:
    """Molchanov et al.'s channel pruning of the float model to a smaller one."""
    taught = None if teacher is None else Teacher(teacher, distillation_settings(config, teacher))
    return prune_channels(model, data, channel_pruning_settings(config),
                          batch_size=config.train.batch_size,
                          learning_rate=config.channel_pruning.learning_rate, log_dir=log_dir,
                          seed=seed, teacher=taught)


def load_scope():
    """Custom objects needed to load saved QAT models."""
    return tfmot.quantization.keras.quantize_scope()
