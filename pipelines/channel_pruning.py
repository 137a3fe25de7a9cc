"""Iterative channel pruning: rank feature maps while fine-tuning, cut the weakest, repeat.

Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient
Inference" (ICLR 2017): train with the usual loss; every `prune_every` optimizer
updates, score every channel of the selected groups (`pipelines.channel_surgery`),
remove the `channels_per_step` lowest-scored ones with `channel_surgery.shrink`, and
continue on the smaller model until the mult-adds or the channel count reach their
target; then fine-tune. Choices the paper leaves open, made here:

- Taylor map: the map a group's consumers read (after BN, activation, pooling and,
  for MobileNet's pointwise groups, the next depthwise conv with its BN and ReLU),
  because removing the channel is exactly zeroing that map (the surgery's
  invariant); zeroing the map before the depthwise conv would keep its bias and BN
  shift. A channel is scored per map as |mean over batch and positions of a * dL/da|
  (one value per mini-batch), averaged over the mini-batches since the last removal.
  A group whose consumers read several maps (a residual stream read by a block
  after one Add and by the head after the next) sums its per-map scores; the
  earlier map's gradient also carries the later map's path, so for such streams the
  sum is a ranking heuristic rather than the exact first-order change. Where global
  average pooling precedes the consumer (conv, GAP, Dense), the map after it scores
  the map before it divided by the positions, which the l2 normalisation removes.
- Normalisation: Taylor and l1 scores are divided by their group's l2 norm (left
  as they are if all zero); random scores are drawn uniformly in [0, 1).
- FLOPs regularisation applies to every criterion: score - lambda * saving /
  max saving, where a group's saving is the mult-adds (models.summary) that
  removing one of its channels saves in its producers, followers and consumers, and
  the maximum is over the selected groups, so that the term has the scale of the
  normalised scores whatever the model's size (the paper's lambda = 1e-3 then
  breaks near-ties towards expensive groups). Savings are recomputed after every
  surgery.
- Every group keeps at least `MIN_CHANNELS` (1) channel.
- Each surgery builds a new model: it is compiled again (`train.compile_model`), so
  the Adam state starts afresh, and the Taylor averages start again.
- The removal that crosses the target is applied whole, so the result can lie
  somewhat below the target.

The input model is not changed: pruning trains a copy.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from absl import logging

from core.errors import UserError
from core.keras_env import keras, tf
from models.summary import summarize
from pipelines.channel_surgery import ChannelGroup, channel_groups, shrink
from pipelines.data import Dataset
from pipelines.distillation import (DistillationSettings, attention_pair_layers,
                                    distillation_losses, fit_distilled, output_in)
from pipelines.train import compile_model, fit, set_seed

CRITERIA = ("taylor", "l1", "random")
MIN_CHANNELS = 1


@dataclass(frozen=True)
class ChannelPruningSettings:
    """What to rank channels by, how fast to remove them and where to stop.

    Exactly one of `target_mult_adds` (a fraction of the starting model's
    mult-adds) and `target_channels` (a fraction of the selected groups' channels)
    is set; `layers` are regular expressions matched in full against a group's
    name or any of its producers (empty: every group).
    """

    criterion: Literal["taylor", "l1", "random"] = "taylor"
    flops_regularization: float = 1e-3
    target_mult_adds: float | None = 0.5
    target_channels: float | None = None
    prune_every: int = 10
    channels_per_step: int = 16  # each removal retraces the model: one map would take hours
    finetune_epochs: int = 1
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for problem in (_criterion_problem(self), _regularization_problem(self),
                        _target_problem(self),
                        _count_problem("prune_every", self.prune_every, 1),
                        _count_problem("channels_per_step", self.channels_per_step, 1),
                        _count_problem("finetune_epochs", self.finetune_epochs, 0),
                        _layers_problem(self.layers)):
            if problem:
                raise UserError(f"channel pruning: {problem}")

    @property
    def target(self) -> tuple[str, float]:
        """("mult_adds" or "channels", the fraction to reach)."""
        if self.target_mult_adds is not None:
            return "mult_adds", self.target_mult_adds
        return "channels", self.target_channels


def _criterion_problem(settings: ChannelPruningSettings) -> str | None:
    if settings.criterion not in CRITERIA:
        return f"criterion {settings.criterion!r} is not one of {', '.join(CRITERIA)}."
    return None


def _regularization_problem(settings: ChannelPruningSettings) -> str | None:
    value = settings.flops_regularization
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        return (f"flops_regularization {value!r} must be a finite number >= 0 (0 turns it off; "
                "the paper uses 1e-3).")
    return None


def _target_problem(settings: ChannelPruningSettings) -> str | None:
    targets = {"target_mult_adds": settings.target_mult_adds,
               "target_channels": settings.target_channels}
    given = {name: value for name, value in targets.items() if value is not None}
    if len(given) != 1:
        return (f"set exactly one of target_mult_adds and target_channels (got {given or 'none'}); "
                "set the other to None.")
    (name, value), = given.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        return f"{name} {value!r} must be a fraction strictly between 0 and 1."
    return None


def _count_problem(name: str, value: object, least: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        return f"{name} {value!r} must be an integer >= {least}."
    return None


def _layers_problem(layers: object) -> str | None:
    if not isinstance(layers, tuple) or not all(isinstance(p, str) for p in layers):
        return (f"layers {layers!r} must be a tuple of regular expressions, e.g. "
                "('conv_pw_.*',).")
    for pattern in layers:
        try:
            re.compile(pattern)
        except re.error as error:
            return f"layers pattern {pattern!r} is not a regular expression ({error})."
    return None


def select_groups(model: keras.Model, patterns: Sequence[str]
                  ) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The prunable groups the patterns select, and the matched unprunable ones with reasons."""
    groups = channel_groups(model)
    matched = [group for group in groups if _matches(group, patterns)]
    if patterns and not matched:
        raise UserError(f"channel pruning: layers {list(patterns)} match no channel group of model "
                        f"'{model.name}'; its groups are {', '.join(g.name for g in groups)}.")
    return ([group for group in matched if group.prunable],
            {group.name: group.reason for group in matched if not group.prunable})


def _matches(group: ChannelGroup, patterns: Sequence[str]) -> bool:
    names = (group.name, *group.producers)
    return not patterns or any(re.fullmatch(p, name) for p in patterns for name in names)


@dataclass(frozen=True)
class Teacher:
    """The model that teaches the pruned one while it is pruned and fine-tuned (the
    float model, as for every phase), with pipelines.distillation's settings; its
    attention pairs name layers of the pruned model, whose names surgery keeps."""

    model: keras.Model
    settings: DistillationSettings


class PruningTrainer:
    """The pruning phase's optimizer updates on one model, with the Taylor terms of `groups`.

    Gradients with respect to the maps come from a second functional model on the
    same layers whose extra outputs are the maps the groups' consumers read, so the
    pruned model's architecture never changes. Made anew after every surgery: it
    compiles the model (a fresh optimizer) and traces its step for the new shapes.
    """

    def __init__(self, model: keras.Model, groups: Sequence[ChannelGroup],
                 learning_rate: float, teacher: Teacher | None = None) -> None:
        compile_model(model, learning_rate)
        maps = {group.name: _read_maps(model, group) for group in groups}
        tapped = list(dict.fromkeys(name for names in maps.values() for name in names))
        self._taps = {group: [tapped.index(name) for name in names]
                      for group, names in maps.items()}
        self._sums = {group.name: np.zeros(group.size) for group in groups}
        self.updates = 0
        pairs = _attention_pairs(model, teacher)
        outputs = [model.output, *(model.get_layer(name).output for name in tapped),
                   *(student for student, _ in pairs)]
        teaching = None if teacher is None else _Teaching(
            keras.Model(teacher.model.inputs,
                        [teacher.model.output, *(taught for _, taught in pairs)]),
            teacher.settings, len(pairs))
        self._step = _compiled_step(keras.Model(model.inputs, outputs), model, teaching)

    def step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """One update on a batch; returns its loss and accuracy."""
        loss, accuracy, terms = self._step(x, y.astype(np.int32))
        terms = [term.numpy() for term in terms]
        for group, indices in self._taps.items():
            self._sums[group] += sum(terms[i] for i in indices)
        self.updates += 1
        return float(loss), float(accuracy)

    def taylor(self) -> dict[str, np.ndarray]:
        """Each group's raw Taylor scores, averaged over the updates so far."""
        if not self.updates:
            raise ValueError("PruningTrainer.taylor: no update has been made yet")
        return {group: sums / self.updates for group, sums in self._sums.items()}


def _read_maps(model: keras.Model, group: ChannelGroup) -> list[str]:
    """The layers whose outputs the group's consumers read (not shared: the surgery checks)."""
    readers = [model.get_layer(name).inbound_nodes[0].inbound_layers for name in group.consumers]
    return list(dict.fromkeys(layer.name for layer in readers))


@dataclass(frozen=True)
class _Teaching:
    """The teacher as the step runs it: its probabilities and its attention layers'
    maps in one call, the settings, and how many attention pairs end `tapped`."""

    features: keras.Model
    settings: DistillationSettings
    pairs: int


def _attention_pairs(model: keras.Model, teacher: Teacher | None) -> list[tuple]:
    """(student output, teacher output) of each attention pair, checked as the Distiller
    checks them."""
    if teacher is None:
        return []
    return [(output_in(model, student, "student"), output_in(teacher.model, taught, "teacher"))
            for student, taught in attention_pair_layers(model, teacher.model, teacher.settings)]


def _compiled_step(tapped: keras.Model, model: keras.Model,
                   teaching: _Teaching | None = None) -> Callable:
    """A tf.function: the update of `model` by its compiled loss and optimizer (or by
    the distillation loss, with a teacher), returning loss, accuracy and
    |mean(a * dL/da)| per channel of each map `tapped` adds (before the attention maps)."""
    signature = (tf.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype),
                 tf.TensorSpec((None,), tf.int32))
    loss_function, optimizer = model.loss, model.optimizer
    optimizer.build(model.trainable_variables)  # slots made in the first call trace it twice
    attention = teaching.pairs if teaching else 0

    # No autograph: the step's branches and loops are Python's, and autograph would
    # re-read this module's source at every retrace (one per surgery).
    @tf.function(input_signature=signature, autograph=False)
    def step(x, y):
        if teaching:
            taught, *taught_maps = (tf.stop_gradient(t) for t in
                                    tf.nest.flatten(teaching.features(x, training=False)))
        with tf.GradientTape() as tape:
            probabilities, *rest = tf.nest.flatten(tapped(x, training=True))
            maps, attended = rest[:len(rest) - attention], rest[len(rest) - attention:]
            if teaching:
                loss = tf.reduce_mean(distillation_losses(
                    y, probabilities, taught, teaching.settings, attended, taught_maps)["loss"])
            else:
                loss = loss_function(y, probabilities)
            loss += sum(tapped.losses)
        weight_gradients, map_gradients = tape.gradient(loss, (tapped.trainable_variables, maps))
        optimizer.apply_gradients(zip(weight_gradients, tapped.trainable_variables))
        terms = [tf.abs(tf.reduce_mean(a * g, axis=list(range(a.shape.rank - 1))))
                 for a, g in zip(maps, map_gradients)]
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return loss, tf.reduce_mean(tf.cast(predicted == y, tf.float32)), terms

    return step


def mult_adds_per_channel(model: keras.Model, groups: Sequence[ChannelGroup]) -> dict[str, float]:
    """The mult-adds that removing one channel of each group saves.

    Every layer a group touches costs in proportion to its channel count (a
    producer's filters, a depthwise conv's channels, a consumer's input channels).
    """
    cost = {row.name: row.mult_adds for row in summarize(model).rows}
    return {group.name: sum(cost[name] for name in (*group.producers, *group.followers,
                                                    *group.consumers)) / group.size
            for group in groups}


def channel_scores(model: keras.Model, groups: Sequence[ChannelGroup], criterion: str, *,
                   flops_regularization: float, taylor: Mapping[str, np.ndarray] | None = None,
                   rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Each group's score per channel (lowest goes first), with the FLOPs term subtracted.

    `taylor` (raw, as `PruningTrainer.taylor` gives it) is needed for "taylor",
    `rng` for "random".
    """
    savings = mult_adds_per_channel(model, groups)
    largest = max(savings.values(), default=1.0)
    return {group.name: _criterion(model, group, criterion, taylor, rng)
            - flops_regularization * savings[group.name] / largest for group in groups}


def _criterion(model: keras.Model, group: ChannelGroup, criterion: str,
               taylor: Mapping[str, np.ndarray] | None,
               rng: np.random.Generator | None) -> np.ndarray:
    if criterion == "taylor":
        return _l2_normalised(taylor[group.name])
    if criterion == "l1":
        return _l2_normalised(sum(_filter_l1(model.get_layer(name)) for name in group.producers))
    return rng.random(group.size)


def _filter_l1(producer: keras.layers.Layer) -> np.ndarray:
    """The l1 norm of each output channel's filter (the kernel's last axis)."""
    kernel = producer.kernel.numpy()
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def _l2_normalised(values: np.ndarray) -> np.ndarray:
    norm = float(np.sqrt(np.sum(np.square(values))))
    return values / norm if norm > 0 else values


def choose_removals(scores: Mapping[str, np.ndarray], count: int,
                    minimum: int = MIN_CHANNELS) -> dict[str, list[int]]:
    """The `count` lowest-scored channels across groups, leaving each group `minimum`.

    Ties go to the earlier group, then the lower index, so a choice is repeatable.
    """
    ranked = sorted((float(score), order, name, index)
                    for order, (name, values) in enumerate(scores.items())
                    for index, score in enumerate(values))
    removed: dict[str, list[int]] = {}
    for _, _, name, index in ranked:
        if sum(map(len, removed.values())) == count:
            break
        chosen = removed.setdefault(name, [])
        if len(scores[name]) - len(chosen) > minimum:
            chosen.append(index)
    return {name: sorted(indices) for name, indices in removed.items() if indices}


@dataclass
class _Pruning:
    """The model being pruned and what has happened to it so far."""

    model: keras.Model
    groups: list[ChannelGroup]
    start_mult_adds: int
    mult_adds: int = field(init=False)
    start_channels: int = field(init=False)
    alive: dict[str, np.ndarray] = field(init=False)  # original index of every remaining channel
    updates: int = 0
    steps: list[dict] = field(default_factory=list)
    batches: list[tuple[int, float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.mult_adds = self.start_mult_adds
        self.alive = {group.name: np.arange(group.size) for group in self.groups}
        self.start_channels = self.channels()

    def channels(self) -> int:
        return sum(len(indices) for indices in self.alive.values())

    def achieved(self) -> dict[str, float]:
        """Mult-adds and channels as fractions of the start (channels 1.0 if none selected)."""
        channels = self.channels() / self.start_channels if self.start_channels else 1.0
        return {"mult_adds": self.mult_adds / self.start_mult_adds, "channels": channels}

    def removable(self) -> bool:
        return any(len(indices) > MIN_CHANNELS for indices in self.alive.values())

    def record(self, epoch: int, loss: float, accuracy: float, size: int) -> None:
        if not math.isfinite(loss):
            raise UserError(f"channel pruning: the loss became {loss} at update "
                            f"{self.updates + 1}, so the model diverged; lower the learning rate "
                            "or check the data for extreme values.")
        self.updates += 1
        self.batches.append((epoch, loss, accuracy, size))

    def remove(self, removed: Mapping[str, Sequence[int]]) -> None:
        """Shrink the model by `removed` (current indices) and note the step."""
        keep = {name: np.setdiff1d(np.arange(len(self.alive[name])), indices)
                for name, indices in removed.items()}
        originals = {name: self.alive[name][indices].tolist() for name, indices in removed.items()}
        self.model = shrink(self.model, {name: kept.tolist() for name, kept in keep.items()})
        self.alive.update({name: self.alive[name][kept] for name, kept in keep.items()})
        self.groups = [group for group in channel_groups(self.model) if group.name in self.alive]
        self.mult_adds = summarize(self.model).total_mult_adds
        self.steps.append({"update": self.updates, "removed": originals,
                           "mult_adds": self.mult_adds, "channels": self.channels()})


def prune_channels(model: keras.Model, data: Dataset, settings: ChannelPruningSettings, *,
                   batch_size: int, learning_rate: float, log_dir: Path, seed: int,
                   teacher: Teacher | None = None) -> tuple[keras.Model, dict]:
    """Prune a copy of `model` to the settings' target, fine-tune it, and say what happened.
    With a `teacher`, both phases train on its distillation loss (and Taylor scores
    are taken on that loss).

    Returns the pruned, compiled model and a JSON-serialisable record: targets and
    what was achieved (`reached` false, with a note, when every selected group is
    down to its minimum first), params, mult-adds and channels before and after,
    each group's channels and removal steps, every step's removed channels (in the
    original numbering) and the loss and accuracy per epoch of both phases.
    TensorBoard logs go to `log_dir` (the pruning phase's under "channel_pruning").
    """
    if len(model.outputs) != 1:
        raise UserError(f"channel pruning: model '{model.name}' has {len(model.outputs)} outputs; "
                        "it needs one (the softmax the loss reads).")
    if not len(data.x_train):
        raise UserError(f"channel pruning: data set {data.description!r} has no training "
                        "examples to rank channels on.")
    set_seed(seed)
    groups, unprunable = select_groups(model, settings.layers)
    before = summarize(model)
    state = _Pruning(shrink(model, {}), groups, before.total_mult_adds)
    writer = tf.summary.create_file_writer(str(Path(log_dir) / "channel_pruning"))
    _prune(state, settings, _batches(data, batch_size, seed), np.random.default_rng([seed, 1]),
           learning_rate, writer, teacher)
    writer.close()
    finetune = _finetune(state.model, data, settings, batch_size, learning_rate, Path(log_dir),
                         teacher)
    after = summarize(state.model)
    kind, fraction = settings.target
    achieved = state.achieved()
    reached = achieved[kind] <= fraction
    return state.model, {
        "criterion": settings.criterion,
        "settings": {**dataclasses.asdict(settings), "layers": list(settings.layers)},
        "target": {kind: fraction},
        "reached": reached,
        "achieved": achieved,
        "note": None if reached else (
            f"no selected group can lose another channel (each keeps at least {MIN_CHANNELS}) "
            f"at {kind} {achieved[kind]:.3f} of the start, above the target {fraction}; select "
            "more groups (layers; matched groups that cannot be pruned are in 'unprunable') or "
            "set a higher target."),
        "params": {"before": before.total_params, "after": after.total_params},
        "mult_adds": {"before": before.total_mult_adds, "after": after.total_mult_adds},
        "channels": {"before": state.start_channels, "after": state.channels()},
        "removal_steps": len(state.steps),
        "groups": _group_records(groups, state),
        "unprunable": unprunable,
        "steps": state.steps,
        "history": {"pruning": _epoch_history(state.batches), "finetune": finetune},
    }


def _prune(state: _Pruning, settings: ChannelPruningSettings,
           batches: Iterator[tuple[int, np.ndarray, np.ndarray]], rng: np.random.Generator,
           learning_rate: float, writer: tf.summary.SummaryWriter,
           teacher: Teacher | None) -> None:
    """Train, score, remove, until the target is met or no group can lose a channel."""
    kind, fraction = settings.target
    taylor = settings.criterion == "taylor"
    while state.achieved()[kind] > fraction and state.removable():
        trainer = PruningTrainer(state.model, state.groups if taylor else (), learning_rate,
                                 teacher)
        for _ in range(settings.prune_every):
            epoch, x, y = next(batches)
            state.record(epoch, *trainer.step(x, y), len(y))
        scores = channel_scores(state.model, state.groups, settings.criterion,
                                flops_regularization=settings.flops_regularization,
                                taylor=trainer.taylor(), rng=rng)
        state.remove(choose_removals(scores, settings.channels_per_step))
        _log_step(writer, state)


def _batches(data: Dataset, batch_size: int, seed: int
             ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(epoch, x, y) mini-batches, a fresh seeded shuffle every epoch, without end."""
    rng = np.random.default_rng([seed, 0])
    epoch = 0
    while True:
        order = rng.permutation(len(data.x_train))
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            yield epoch, data.x_train[indices], data.y_train[indices]
        epoch += 1


def _log_step(writer: tf.summary.SummaryWriter, state: _Pruning) -> None:
    step = state.steps[-1]
    logging.info("channel pruning: step %d at update %d removed %s; %d channels, %d mult-adds",
                 len(state.steps), state.updates,
                 {name: len(indices) for name, indices in step["removed"].items()},
                 step["channels"], step["mult_adds"])
    with writer.as_default(step=state.updates):
        tf.summary.scalar("channels", step["channels"])
        tf.summary.scalar("mult_adds", step["mult_adds"])
        tf.summary.scalar("loss", state.batches[-1][1])


def _finetune(model: keras.Model, data: Dataset, settings: ChannelPruningSettings,
              batch_size: int, learning_rate: float, log_dir: Path,
              teacher: Teacher | None) -> dict[str, list[float]]:
    """The final fine-tuning with `train.fit` (or `fit_distilled`, with a teacher); the
    model comes back compiled for its own loss, and with no epochs is only compiled."""
    history = {}
    if settings.finetune_epochs and teacher is None:
        return fit(model, data, epochs=settings.finetune_epochs, batch_size=batch_size,
                   learning_rate=learning_rate, log_dir=log_dir)
    if settings.finetune_epochs:
        history = fit_distilled(model, teacher.model, data, teacher.settings,
                                epochs=settings.finetune_epochs, batch_size=batch_size,
                                learning_rate=learning_rate, log_dir=log_dir)
    compile_model(model, learning_rate)
    return history


def _group_records(groups: Sequence[ChannelGroup], state: _Pruning) -> dict[str, dict]:
    return {group.name: {
        "channels_before": group.size,
        "channels_after": len(state.alive[group.name]),
        "removal_steps": sum(group.name in step["removed"] for step in state.steps),
    } for group in groups}


def _epoch_history(batches: Sequence[tuple[int, float, float, int]]) -> dict[str, list[float]]:
    """Loss and accuracy per epoch of the pruning phase (the last one may be partial)."""
    rows = np.array(batches, dtype=np.float64).reshape(-1, 4)
    epochs = np.unique(rows[:, 0])
    means = [np.average(rows[rows[:, 0] == e, 1:3], axis=0, weights=rows[rows[:, 0] == e, 3])
             for e in epochs]
    return {"loss": [float(m[0]) for m in means], "accuracy": [float(m[1]) for m in means]}
