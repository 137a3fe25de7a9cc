"""Knowledge distillation for the fine-tuning phases: the float model teaches the
student (a pruned, quantization-aware or channel-pruned copy) while it trains.

Two signals, added to the student's usual loss on the true labels:

- soft targets (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
  Network", 2015): with temperature T and weight alpha,
  ``loss = (1 - alpha) * CE(y, p_s) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``;
- attention transfer (Zagoruyko and Komodakis, "Paying More Attention to Attention",
  ICLR 2017): for each pair of layers (student layer -> teacher layer) with outputs of
  the same spatial size, ``beta / (2 H W) * || Q_s / ||Q_s|| - Q_t / ||Q_t|| ||_2``
  where ``Q = sum_c |A_c|^2`` is the activation's H x W attention map, averaged over
  the batch and summed over the pairs (beta over the map's elements, as the paper
  sets it).

`Distiller` is a `keras.Model` that wraps both models and trains the student alone;
`fit_distilled` trains it the way `pipelines.train.fit` trains every phase (it is
that function, called on the Distiller). Afterwards `distiller.student` is the plain
(possibly TFMOT-wrapped) student, the model to strip and save.
"""
from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
from absl import logging

from core.errors import UserError
from core.keras_env import keras, tf
from pipelines import train
from pipelines.data import Dataset

# Probabilities are clipped to [PROBABILITY_EPSILON, 1] before taking logs, the same
# epsilon Keras' cross-entropy on probabilities clips with.
PROBABILITY_EPSILON = 1e-7

# Prefixes TFMOT gives the layers it wraps: prune_low_magnitude and quantize_apply.
_WRAPPER_PREFIXES = ("prune_low_magnitude_", "quant_")


@dataclass(frozen=True)
class DistillationSettings:
    """How the teacher teaches.

    temperature: the softmax temperature T of the soft targets (> 0; 1 is the plain
        softmax, higher values soften both distributions and show the teacher's
        ranking of the wrong classes).
    alpha: weight of the soft-target term, 0..1; the true labels get 1 - alpha
        (0 is plain fine-tuning on the labels, 1 learns from the teacher alone).
    attention_layers: student layer name -> teacher layer name, pairs whose outputs
        have the same spatial size (the channel counts may differ); empty for no
        attention transfer. See `resolve_layer` for TFMOT-wrapped names.
    beta: weight of each attention-transfer term (>= 0); the paper uses 1e3.
    """

    temperature: float = 4.0
    alpha: float = 0.9
    attention_layers: Mapping[str, str] = field(default_factory=dict, hash=False)
    beta: float = 1e3

    def __post_init__(self):
        temperature = _number("temperature", self.temperature)
        alpha = _number("alpha", self.alpha)
        beta = _number("beta", self.beta)
        if temperature <= 0:
            raise UserError(f"distillation: temperature must be > 0 (the softmax temperature of "
                            f"the soft targets; 4 is the default), got {self.temperature!r}.")
        if not 0 <= alpha <= 1:
            raise UserError(f"distillation: alpha must be between 0 and 1 (the weight of the "
                            f"teacher's soft targets; the labels get 1 - alpha), got "
                            f"{self.alpha!r}.")
        if beta < 0:
            raise UserError(f"distillation: beta must be >= 0 (the weight of attention "
                            f"transfer; the paper uses 1e3, 0 turns it off), got {self.beta!r}.")
        if not isinstance(self.attention_layers, Mapping):
            raise UserError(f"distillation: attention_layers must map student layer names to "
                            f"teacher layer names, got {type(self.attention_layers).__name__}.")
        for student, teacher in self.attention_layers.items():
            if not (isinstance(student, str) and isinstance(teacher, str) and student
                    and teacher):
                raise UserError(f"distillation: attention_layers entry {student!r}: {teacher!r} "
                                "must map a student layer name to a teacher layer name (two "
                                "non-empty strings).")
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "attention_layers",
                           MappingProxyType(dict(self.attention_layers)))


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UserError(f"distillation: {name} must be a finite number, got {value!r}.")
    return float(value)


# ---------------------------------------------------------------------------------------
# The losses, per sample. The models end in softmax, so they hand us probabilities p,
# not logits: log(p) are logits of the same distribution (softmax(log p) = p, since
# softmax is invariant to adding a constant per sample), so softmax(log(p) / T) is the
# tempered distribution softmax(z / T) of the logits z the model had before its softmax.


def tempered_log_probabilities(probabilities, temperature: float) -> tf.Tensor:
    """log softmax(log(p) / T): the log of the distribution at temperature T.

    `probabilities` are a softmax output; log(p) (clipped at PROBABILITY_EPSILON to
    avoid log(0)) recovers logits up to a per-sample constant, which softmax ignores.
    """
    p = tf.cast(probabilities, tf.float32)
    logits = tf.math.log(tf.clip_by_value(p, PROBABILITY_EPSILON, 1.0))
    return tf.nn.log_softmax(logits / temperature, axis=-1)


def soft_target_loss(teacher_probabilities, student_probabilities,
                     temperature: float) -> tf.Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) per sample, shape [batch].

    The T^2 factor keeps the soft targets' gradients on the scale of the hard ones
    when T changes (Hinton et al., section 2).
    """
    log_t = tempered_log_probabilities(teacher_probabilities, temperature)
    log_s = tempered_log_probabilities(student_probabilities, temperature)
    kl = tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1)
    return temperature ** 2 * kl


def attention_map(activation) -> tf.Tensor:
    """The l2-normalised attention map of a channels-last activation [batch, ..., C].

    Q = sum over channels of |A_c|^2, flattened to [batch, H*W] (every axis between
    batch and channels is spatial), divided by its l2 norm per sample (an all-zero
    map stays zero).
    """
    a = tf.cast(activation, tf.float32)
    q = tf.reduce_sum(tf.square(a), axis=-1)
    q = tf.reshape(q, [tf.shape(q)[0], -1])
    return tf.math.l2_normalize(q, axis=-1, epsilon=1e-12)


def attention_loss(student_activation, teacher_activation, beta: float) -> tf.Tensor:
    """beta / (2 H W) * ||Q_s / ||Q_s|| - Q_t / ||Q_t|| ||_2 per sample, shape [batch].

    As in the paper, beta is divided by the number of elements of the attention map
    (its footnote: 10^3 divided by them and by the batch size, whose division is the
    mean over the batch), so the term stays near 0.1 whatever the resolution and
    does not drown the soft targets. The channel counts may differ, the spatial
    sizes must not. The norm's gradient is taken as 0 where the maps are equal (a
    student that starts as a copy of its teacher), where d||x||/dx = x / ||x||
    would be 0 / 0.
    """
    difference = attention_map(student_activation) - attention_map(teacher_activation)
    squared = tf.reduce_sum(tf.square(difference), axis=-1)
    positive = squared > 0
    norm = tf.where(positive, tf.sqrt(tf.where(positive, squared, tf.ones_like(squared))),
                    tf.zeros_like(squared))
    elements = tf.cast(tf.shape(difference)[-1], tf.float32)
    return beta / 2 * norm / elements


def distillation_losses(labels, student_probabilities, teacher_probabilities,
                        settings: DistillationSettings, student_activations: Sequence = (),
                        teacher_activations: Sequence = ()) -> dict[str, tf.Tensor]:
    """The per-sample losses ([batch] each) the Distiller trains on.

    ce_loss: CE(y, p_s), the cross-entropy on the true labels (as `pipelines.train`'s
        phases train); kd_loss: `soft_target_loss`; at_loss: the sum of
        `attention_loss` over the pairs of activations (zeros without pairs);
    loss: (1 - alpha) * ce_loss + alpha * kd_loss + at_loss.
    """
    student_probabilities = tf.cast(student_probabilities, tf.float32)
    ce = keras.losses.sparse_categorical_crossentropy(labels, student_probabilities)
    kd = soft_target_loss(teacher_probabilities, student_probabilities, settings.temperature)
    at = tf.zeros_like(ce)
    for student_activation, teacher_activation in zip(student_activations, teacher_activations,
                                                      strict=True):
        at += attention_loss(student_activation, teacher_activation, settings.beta)
    alpha = settings.alpha
    return {"loss": (1 - alpha) * ce + alpha * kd + at, "ce_loss": ce, "kd_loss": kd,
            "at_loss": at}


# ---------------------------------------------------------------------------------------
# Layers of the attention pairs.


def _wrapper_chain(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layer and the layers TFMOT wrappers (PruneLowMagnitude, QuantizeWrapper, any
    keras Wrapper) hold inside it, outermost first."""
    chain = [layer]
    while isinstance(getattr(chain[-1], "layer", None), keras.layers.Layer):
        chain.append(chain[-1].layer)
    return chain


def _unprefixed(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name, stripped = name[len(prefix):], True
    return name


def resolve_layer(model: keras.Model, name: str, role: str) -> keras.layers.Layer:
    """The top-level layer of `model` that a configured attention layer `name` means.

    In order: the layer called `name`; else the TFMOT wrapper holding a layer called
    `name` (so 'conv_pw_1' finds 'prune_low_magnitude_conv_pw_1' in a pruned student
    and 'quant_conv_pw_1' in a QAT one); else the layer whose innermost wrapped layer
    has `name` without its TFMOT prefixes ('prune_low_magnitude_conv_pw_1' finds
    'quant_conv_pw_1' or the plain 'conv_pw_1'). The wrapper's output, the wrapped
    layer's activation as the model computes it, is what attention transfer reads.
    `role` ('student' or 'teacher') names the model in the error if nothing matches.
    """
    layers = model.layers
    for layer in layers:
        if layer.name == name:
            return layer
    for layer in layers:
        if any(inner.name == name for inner in _wrapper_chain(layer)[1:]):
            return layer
    base = _unprefixed(name)
    for layer in layers:
        if _wrapper_chain(layer)[-1].name == base:
            return layer
    names = [layer.name for layer in layers if not isinstance(layer, keras.layers.InputLayer)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else (
        f"its layers are {', '.join(map(repr, names[:12]))}{', ...' if len(names) > 12 else ''}.")
    raise UserError(f"distillation attention_layers: the {role} model {model.name!r} has no layer "
                    f"{name!r}; name one of its top-level layers (a TFMOT-wrapped layer by its "
                    f"own or its wrapper's name) or remove the pair; {hint}")


def attention_layers(teacher: keras.Model, patterns: Sequence[str]) -> dict[str, str]:
    """Attention pairs {name: name} for a student whose layers keep the teacher's
    names (channel surgery and TFMOT wrappers do): the teacher's layers with 4-D
    outputs that match a pattern in full, or with no patterns the last such layer at
    each spatial size above 1 x 1 (the end of each of the paper's layer groups)."""
    mapped = [layer for layer in teacher.layers if _spatial_size(layer) is not None]
    if patterns:
        chosen = [layer.name for layer in mapped
                  if any(re.fullmatch(pattern, layer.name) for pattern in patterns)]
        if not chosen:
            raise UserError(f"distillation attention_transfer.layers {list(patterns)} match no "
                            f"layer of {teacher.name!r} with a 4-D output (height, width, "
                            f"channels); such layers are "
                            f"{', '.join(layer.name for layer in mapped[:12]) or 'none'}.")
        return {name: name for name in chosen}
    last_at_size = {_spatial_size(layer): layer.name for layer in mapped
                    if np.prod(_spatial_size(layer)) > 1}  # a 1 x 1 map is always [1]
    return {name: name for name in last_at_size.values()}


def _spatial_size(layer: keras.layers.Layer) -> tuple | None:
    """(height, width) of a layer's one 4-D output; None for inputs, other ranks and
    layers called more than once."""
    if isinstance(layer, keras.layers.InputLayer) or len(layer.inbound_nodes) != 1:
        return None
    outputs = tf.nest.flatten(layer.output)
    shape = outputs[0].shape if len(outputs) == 1 else None
    return tuple(shape[1:3]) if shape is not None and shape.rank == 4 else None


def output_in(model: keras.Model, layer: keras.layers.Layer, role: str):
    """The symbolic output `layer` has in `model`'s graph (a layer shared with another
    model, such as the layers a pruning clone leaves unwrapped, has one per model)."""
    nodes = [node for nodes in model._nodes_by_depth.values() for node in nodes
             if node.layer is layer]
    outputs = tf.nest.flatten(nodes[0].outputs) if len(nodes) == 1 else []
    if len(outputs) != 1:
        why = "is called more than once" if len(nodes) > 1 else "has no single output"
        raise UserError(f"distillation attention_layers: layer {layer.name!r} of the {role} "
                        f"model {model.name!r} {why} in that model, so its activation is "
                        "ambiguous; pair another layer.")
    return outputs[0]


def _check_graph_model(model: keras.Model, role: str) -> None:
    if not getattr(model, "_is_graph_network", False) or len(model.outputs) != 1:
        raise UserError(f"distillation: the {role} model {model.name!r} must be a functional or "
                        "Sequential tf_keras model with one output (its layers' activations are "
                        "read from its graph); rebuild it with keras.Model(inputs, outputs).")


def _shape(tensor) -> tuple:
    return tuple(tensor.shape.as_list())


def _feature_model(model: keras.Model, layers: Sequence[keras.layers.Layer], role: str
                   ) -> keras.Model:
    """A model over `model`'s own layers returning [probabilities, *activations]: one
    call per step, so wrapper state (the pruning step) advances once per step."""
    outputs = [model.outputs[0], *(output_in(model, layer, role) for layer in layers)]
    return keras.Model(model.inputs, outputs, name=f"{model.name}_distillation_features")


class _Untracked:
    """Holds objects out of Keras' attribute tracking (see `Distiller`)."""

    def __init__(self, **items):
        self.__dict__.update(items)


def _copy_of(teacher: keras.Model) -> keras.Model:
    try:
        copy = keras.models.clone_model(teacher)
        copy.set_weights(teacher.get_weights())
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"distillation: the student shares weights with its teacher "
                        f"{teacher.name!r} (a TFMOT wrapper of the teacher reuses its layers), so "
                        f"training it would train the teacher too, and the teacher cannot be "
                        f"copied ({e}); pass a separate copy of the teacher (clone_model and "
                        "set_weights).") from None
    return copy


class Distiller(keras.Model):
    """Trains `student` with `teacher` (the float model) as its teacher.

    Per batch the teacher runs once in inference mode (`training=False`, outputs and
    activations behind `tf.stop_gradient`), then the student runs once in training
    mode under a `tf.GradientTape` watching the student's trainable variables, which
    are the only ones the optimizer updates. `fit` reports `loss` (the distillation
    loss, see `distillation_losses`, plus the student's regularization losses),
    `accuracy` (the student's, on the true labels), `kd_loss` and `at_loss`; evaluation
    (so `val_loss` and `val_accuracy`) is the student's plain cross-entropy and accuracy
    on the true labels, comparable with any other phase's.

    Only the student is a tracked sub-model: the teacher is held outside Keras'
    tracking, so `distiller.layers`, `weights` and `trainable_variables` are the
    student's alone. TFMOT callbacks therefore work unchanged: `UpdatePruningStep`
    finds a pruning-wrapped student's layers through `distiller.layers` (it recurses
    into sub-models) and `fit(distiller, ..., callbacks=[UpdatePruningStep()])` prunes
    the student. If the student shares weights with the teacher (TFMOT's
    prune_low_magnitude applied to the float model itself reuses its layers;
    `pipelines.pruning.wrap_for_pruning` copies the model first), the teacher is
    replaced by a frozen copy made here, so it teaches as it was when the Distiller
    was made (the caller's teacher object then changes with the student, whose
    variables it shares).

    `compile` takes the optimizer; it also accepts the loss and metrics
    `pipelines.train.compile_model` passes (sparse cross-entropy on probabilities,
    ['accuracy']), which are what the Distiller computes anyway, so `train.fit` trains
    a Distiller like any model. Save `distiller.student` afterwards.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model,
                 settings: DistillationSettings = DistillationSettings(), **kwargs):
        super().__init__(name=kwargs.pop("name", f"{student.name}_distiller"), **kwargs)
        if student is teacher:
            raise UserError(f"distillation: the student and the teacher are the same model "
                            f"{student.name!r}; distil into a copy (clone_model and set_weights, "
                            "or the pruning/QAT wrapper of it).")
        self.settings = settings
        shared = {v.ref() for v in teacher.weights} & {v.ref() for v in student.weights}
        if shared:
            logging.info("distillation: student %r shares %d weights with teacher %r; the "
                         "teacher is a frozen copy of them", student.name, len(shared),
                         teacher.name)
            teacher = _copy_of(teacher)
        self._check_classes(student, teacher)
        pairs = attention_pair_layers(student, teacher, settings)
        if pairs:
            student_layers = [s for s, _ in pairs]
            teacher_layers = [t for _, t in pairs]
            features = _Untracked(
                student=_feature_model(student, student_layers, "student"),
                teacher=_feature_model(teacher, teacher_layers, "teacher"))
        else:
            features = _Untracked(student=student, teacher=teacher)
        self.student = student
        self._frozen = _Untracked(teacher=teacher, features=features)
        self.attention_pairs = tuple(
            (s.name, t.name) for s, t in zip(student_layers, teacher_layers)) if pairs else ()
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._kd_tracker = keras.metrics.Mean(name="kd_loss")
        self._at_tracker = keras.metrics.Mean(name="at_loss")

    @staticmethod
    def _check_classes(student: keras.Model, teacher: keras.Model) -> None:
        try:
            s, t = student.output_shape[-1], teacher.output_shape[-1]
        except (AttributeError, RuntimeError, TypeError):
            return  # a subclassed model not called yet: Keras reports a mismatch at the call
        if s is not None and t is not None and s != t:
            raise UserError(f"distillation: the student {student.name!r} predicts {s} classes "
                            f"and the teacher {teacher.name!r} {t}; distil between models of the "
                            "same task (the same number of classes).")

    @property
    def teacher(self) -> keras.Model:
        """The model the student learns from (a frozen copy if they shared weights)."""
        return self._frozen.teacher

    @property
    def metrics(self):
        return [self._loss_tracker, self._accuracy, self._kd_tracker, self._at_tracker]

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Keras' compile with the optimizer; `loss` and `metrics` may only be what the
        Distiller computes anyway (see the class docstring), never something else that
        would be silently ignored."""
        if loss is not None and not _is_sparse_ce_on_probabilities(loss):
            raise ValueError(f"Distiller computes its own loss (cross-entropy on the labels "
                             f"plus distillation terms); got loss={loss!r}.")
        if metrics is not None and list(metrics) not in ([], ["accuracy"]):
            raise ValueError(f"Distiller reports loss, accuracy, kd_loss and at_loss; got "
                             f"metrics={metrics!r}.")
        super().compile(optimizer=optimizer, **kwargs)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _teacher_forward(self, x):
        outputs = self._frozen.features.teacher(x, training=False)
        return _split(tf.nest.map_structure(tf.stop_gradient, outputs))

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_probabilities, teacher_activations = self._teacher_forward(x)
        variables = self.student.trainable_variables
        with tf.GradientTape() as tape:
            student_probabilities, student_activations = _split(
                self._frozen.features.student(x, training=True))
            losses = distillation_losses(y, student_probabilities, teacher_probabilities,
                                         self.settings, student_activations, teacher_activations)
            loss = _mean(losses["loss"], sample_weight)
            if self.student.losses:
                loss += tf.add_n(self.student.losses)
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self._loss_tracker.update_state(loss)
        self._accuracy.update_state(y, student_probabilities, sample_weight=sample_weight)
        self._kd_tracker.update_state(losses["kd_loss"], sample_weight=sample_weight)
        self._at_tracker.update_state(losses["at_loss"], sample_weight=sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        probabilities = self.student(x, training=False)
        ce = keras.losses.sparse_categorical_crossentropy(y, tf.cast(probabilities, tf.float32))
        self._loss_tracker.update_state(ce, sample_weight=sample_weight)
        self._accuracy.update_state(y, probabilities, sample_weight=sample_weight)
        return {"loss": self._loss_tracker.result(), "accuracy": self._accuracy.result()}


def attention_pair_layers(student: keras.Model, teacher: keras.Model,
                          settings: DistillationSettings) -> list[tuple]:
    """(student layer, teacher layer) of each configured attention pair, both models
    graph models with one output and each pair's maps of one spatial size; else one
    UserError naming the pair."""
    if not settings.attention_layers:
        return []
    _check_graph_model(student, "student")
    _check_graph_model(teacher, "teacher")
    pairs = []
    for s_name, t_name in settings.attention_layers.items():
        s_layer = resolve_layer(student, s_name, "student")
        t_layer = resolve_layer(teacher, t_name, "teacher")
        _check_pair(s_name, output_in(student, s_layer, "student"),
                    t_name, output_in(teacher, t_layer, "teacher"))
        pairs.append((s_layer, t_layer))
    return pairs


def _check_pair(student_name: str, student_output, teacher_name: str, teacher_output) -> None:
    s_shape, t_shape = _shape(student_output), _shape(teacher_output)
    for role, name, shape in (("student", student_name, s_shape),
                              ("teacher", teacher_name, t_shape)):
        if len(shape) < 3:
            raise UserError(f"distillation attention_layers: {role} layer {name!r} outputs "
                            f"{shape}, which has no spatial axes; attention transfer needs "
                            "channels-last feature maps [batch, H, W, C]; pair convolutional "
                            "layers instead.")
    if s_shape[1:-1] != t_shape[1:-1]:
        raise UserError(f"distillation attention_layers: student layer {student_name!r} outputs "
                        f"{s_shape} but teacher layer {teacher_name!r} outputs {t_shape}; "
                        "attention transfer compares maps of the same spatial size (H x W; the "
                        "channels may differ), so pair layers at the same resolution (the same "
                        "block) or remove the pair.")


def _split(outputs):
    """[probabilities, *activations] -> (probabilities, activations)."""
    if isinstance(outputs, (list, tuple)):
        return outputs[0], list(outputs[1:])
    return outputs, []


def _mean(values, sample_weight):
    if sample_weight is None:
        return tf.reduce_mean(values)
    weights = tf.cast(tf.reshape(sample_weight, tf.shape(values)), values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights), tf.reduce_sum(weights))


def _is_sparse_ce_on_probabilities(loss) -> bool:
    if isinstance(loss, str):
        return loss == "sparse_categorical_crossentropy"
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return not loss.get_config().get("from_logits", False)
    return loss is keras.losses.sparse_categorical_crossentropy


def student_model(distiller: Distiller) -> keras.Model:
    """The student, to strip and save (the Distiller itself is never saved)."""
    return distiller.student


def fit_distilled(student: keras.Model, teacher: keras.Model, data: Dataset,
                  settings: DistillationSettings, *, epochs: int, batch_size: int,
                  learning_rate: float, log_dir: Path, callbacks: Sequence = ()
                  ) -> dict[str, list[float]]:
    """Train `student` in place with `teacher` teaching; return the history.

    The same training as every phase's `pipelines.train.fit` (Adam with a cosine decay
    to zero over the phase, TerminateOnNaN, TensorBoard logs under `log_dir`, the
    divergence check on loss, val_loss, accuracy and val_accuracy), because it is that
    function, run on a `Distiller`. The history also has kd_loss and at_loss;
    `callbacks` (e.g. the pruning phase's UpdatePruningStep) see the student's layers.
    The teacher is never trained.
    """
    distiller = Distiller(student, teacher, settings)
    return train.fit(distiller, data, epochs=epochs, batch_size=batch_size,
                     learning_rate=learning_rate, log_dir=log_dir, callbacks=list(callbacks))
