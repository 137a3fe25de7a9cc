"""Pruning with TFMOT: schedules (including Narang et al.'s threshold schedule),
layer selection, pitfall checks, stripping and the achieved sparsity per layer."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from absl import logging

from core.errors import UserError
from core.keras_env import keras, tf
from pipelines.config import PruningConfig

import tensorflow_model_optimization as tfmot  # noqa: E402  (after core.keras_env)
from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (  # noqa: E402
    PruneRegistry)
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (  # noqa: E402
    PruneLowMagnitude)

sparsity = tfmot.sparsity.keras

# Weights whose zeros we count: the ones TFMOT prunes in the layers we wrap.
PRUNED_WEIGHT_SUFFIXES = ("depthwise_kernel", "recurrent_kernel", "kernel", "embeddings")


@dataclass(frozen=True)
class PhaseSteps:
    """begin/ramp/end steps of one pruning phase, resolved from the config."""

    begin: int
    ramp: int
    end: int
    frequency: int


def resolve_steps(config: PruningConfig, total_steps: int, warn: bool = True) -> PhaseSteps:
    """Fill in defaults and warn (if `warn`) about settings under which nothing gets
    pruned."""
    end = config.end_step if config.end_step is not None else max(1, int(total_steps * 0.5))
    begin = config.begin_step
    ramp = config.ramp_step if config.ramp_step is not None else begin + int((end - begin) * 0.4)
    if not begin <= ramp <= end:
        raise UserError(f"pruning steps must satisfy begin_step <= ramp_step <= end_step; got "
                        f"{begin}, {ramp}, {end} (end_step defaults to half of the phase's "
                        f"{total_steps} steps).")
    if warn:
        _warn_of_pitfalls(config, total_steps, begin, end)
    return PhaseSteps(begin, ramp, end, config.frequency)


def _warn_of_pitfalls(config: PruningConfig, total_steps: int, begin: int, end: int) -> None:
    if config.frequency > total_steps:
        logging.warning(
            "pruning.frequency=%d is larger than the %d optimizer steps of the pruning phase, "
            "so the masks are never updated and nothing is pruned. Set pruning.frequency to at "
            "most %d (e.g. %d) or raise pruning.epochs.",
            config.frequency, total_steps, total_steps, max(1, total_steps // 10))
    elif begin >= total_steps:
        logging.warning(
            "pruning.begin_step=%d is at or after the last of %d steps: nothing is pruned. Set "
            "pruning.begin_step below %d.", begin, total_steps, total_steps)
    elif end > total_steps and config.schedule != "m_by_n":
        logging.warning(
            "pruning.end_step=%d is after the last of %d steps, so target_sparsity %.2f is not "
            "reached. Set pruning.end_step to at most %d or raise pruning.epochs.",
            end, total_steps, config.target_sparsity, total_steps)


class NarangThreshold:
    """The gradual threshold schedule of Narang et al. (2017), per weight tensor.

    The threshold rises linearly with slope theta from start to ramp, then with
    slope phi = 1.5 * theta until end; weights whose magnitude falls below it are
    masked for good. theta comes from q, the chosen percentile of the weight
    magnitudes when pruning starts (their equation 1), so that the threshold ends
    at q and the final sparsity is near that percentile.
    """

    def __init__(self, steps: PhaseSteps, q: float):
        self.steps = steps
        span = 2 * (steps.ramp - steps.begin) + 3 * (steps.end - steps.ramp)
        self.theta = 2.0 * q * steps.frequency / max(span, 1)
        self.phi = 1.5 * self.theta

    def __call__(self, step: int) -> float:
        s = self.steps
        step = min(step, s.end - 1)
        if step < s.begin:
            return 0.0
        if step < s.ramp:
            return self.theta * (step - s.begin + 1) / s.frequency
        return (self.theta * (s.ramp - s.begin + 1) + self.phi * (step - s.ramp + 1)) / s.frequency


class MasksSetByCallback(sparsity.PruningSchedule):
    """A TFMOT schedule that never updates masks itself: NarangPruning does.

    TFMOT's wrappers choose masks by a target sparsity; Narang's schedule is a
    threshold, so the wrapper only applies the masks this project's callback sets.
    """

    def __call__(self, step):
        return tf.constant(False), tf.constant(0.0, tf.float32)

    def get_config(self):
        return {"class_name": type(self).__name__, "config": {}}


class NarangPruning(keras.callbacks.Callback):
    """Applies Narang et al.'s rising threshold to every pruned weight of the model."""

    def __init__(self, steps: PhaseSteps, percentile: float):
        super().__init__()
        self.steps = steps
        self.percentile = percentile
        self.schedules: dict[str, NarangThreshold] = {}

    def on_train_begin(self, logs=None):
        self.wrappers = [layer for layer in self.model.layers
                         if isinstance(layer, PruneLowMagnitude)]
        # TFMOT's UpdatePruningStep runs first and starts the step at 0; each
        # training batch then advances every wrapper's step by one.
        self.step = int(self.wrappers[0].pruning_step.numpy()) if self.wrappers else 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        s = self.steps
        if self.step < s.begin or self.step >= s.end or (self.step - s.begin) % s.frequency:
            return
        for layer in self.wrappers:
            for weight, mask, threshold in layer.pruning_vars:
                magnitude = np.abs(weight.numpy())
                schedule = self.schedules.get(weight.name)
                if schedule is None:
                    q = float(np.quantile(magnitude, self.percentile))
                    schedule = self.schedules[weight.name] = NarangThreshold(s, q)
                epsilon = schedule(self.step)
                new_mask = mask.numpy() * (magnitude >= epsilon)
                mask.assign(new_mask.astype(mask.dtype.as_numpy_dtype))
                threshold.assign(epsilon)
                weight.assign(weight.numpy() * new_mask)


def schedule_and_callbacks(config: PruningConfig, steps: PhaseSteps):
    """The TFMOT schedule for the wrappers and any extra callback the schedule needs."""
    if config.schedule == "polynomial_decay":
        return sparsity.PolynomialDecay(config.initial_sparsity, config.target_sparsity,
                                        steps.begin, steps.end, frequency=steps.frequency), []
    if config.schedule == "constant":
        return sparsity.ConstantSparsity(config.target_sparsity, steps.begin, steps.end,
                                         frequency=steps.frequency), []
    if config.schedule == "narang":
        return MasksSetByCallback(), [NarangPruning(steps, config.target_sparsity)]
    # m_by_n: TFMOT sets the structured mask once, at step 1; the schedule is unused.
    return sparsity.ConstantSparsity(0.5, 0), []


def _selected(name: str, patterns: list[str]) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def _prunable(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, sparsity.PrunableLayer) or PruneRegistry.supports(layer)


def wrap_for_pruning(model: keras.Model, config: PruningConfig, steps: PhaseSteps
                     ) -> tuple[keras.Model, list[keras.callbacks.Callback], list[str]]:
    """Clone `model` with the selected layers wrapped by prune_low_magnitude.

    Returns the wrapped model, the callbacks training must use and the names of the
    wrapped layers. A selected layer TFMOT cannot prune is a UserError naming it.
    """
    schedule, callbacks = schedule_and_callbacks(config, steps)
    options = dict(pruning_schedule=schedule, block_size=tuple(config.block_size))
    if config.schedule == "m_by_n":
        options["sparsity_m_by_n"] = tuple(config.m_by_n)
    wrapped: list[str] = []

    def clone(layer):
        if not (_selected(layer.name, config.layers) and layer.weights):
            return layer
        if not _prunable(layer):
            raise UserError(
                f"layer {layer.name!r} ({type(layer).__name__}) matches pruning.layers but TFMOT "
                "cannot prune it; narrow pruning.layers (regular expressions over layer names) "
                "so it is not selected.")
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer
        if tuple(config.block_size) != (1, 1) and any(
                len(w.shape) != 2 for w in layer.weights if _is_pruned_weight(w)):
            raise UserError(f"layer {layer.name!r} ({type(layer).__name__}) has weights that are "
                            "not 2-D, and TFMOT block sparsity needs 2-D weights; set "
                            "pruning.block_size to [1, 1] or exclude the layer from "
                            "pruning.layers.")
        try:
            pruned = sparsity.prune_low_magnitude(layer, **options)
        except ValueError as e:
            option = "pruning.m_by_n" if config.schedule == "m_by_n" else "pruning.block_size"
            raise UserError(f"layer {layer.name!r} ({type(layer).__name__}) cannot be pruned with "
                            f"these settings ({e}); change {option} or exclude the layer from "
                            "pruning.layers.") from None
        wrapped.append(layer.name)
        return pruned

    # Wrap layers of a copy, so that training the pruned model leaves `model` intact.
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    pruned_model = keras.models.clone_model(copy, clone_function=clone)
    if not wrapped:
        raise UserError(f"pruning.layers {config.layers} selects no prunable layer of model "
                        f"{model.name!r}; its layers are "
                        f"{', '.join(layer.name for layer in model.layers if layer.weights)}.")
    return pruned_model, [sparsity.UpdatePruningStep(), *callbacks], wrapped


def strip(model: keras.Model) -> keras.Model:
    return sparsity.strip_pruning(model)


def _is_pruned_weight(weight) -> bool:
    return weight.name.split("/")[-1].split(":")[0].endswith(PRUNED_WEIGHT_SUFFIXES)


def _effective_weights(layer: keras.layers.Layer) -> list[tuple[str, np.ndarray]]:
    """The prunable weights as inference sees them.

    Prune-preserving QAT keeps the zeros through a sparsity mask in each weight
    quantizer while the float variable underneath keeps training, so a QAT wrapper's
    weights count as weight * mask.
    """
    masks = {id(weight): variables["sparsity_mask"]
             for weight, _, variables in getattr(layer, "_weight_vars", [])
             if isinstance(variables, dict) and "sparsity_mask" in variables}
    return [(w.name.split("/")[-1].split(":")[0],
             w.numpy() * (np.asarray(masks[id(w)]) if id(w) in masks else 1))
            for w in layer.weights if _is_pruned_weight(w)]


def layer_sparsity(model: keras.Model, layer_names: list[str] | None = None) -> list[dict]:
    """Fraction of exact zeros in each prunable weight (kernels, recurrent kernels)."""
    rows = []
    for layer in model.layers:
        if layer_names is not None and layer.name not in layer_names:
            continue
        for short, values in _effective_weights(layer):
            rows.append({"layer": layer.name, "weight": short, "shape": list(values.shape),
                         "size": int(values.size),
                         "sparsity": float(np.mean(values == 0)) if values.size else 0.0})
    return rows


def overall_sparsity(rows: list[dict]) -> float:
    total = sum(r["size"] for r in rows)
    return sum(r["sparsity"] * r["size"] for r in rows) / total if total else 0.0
