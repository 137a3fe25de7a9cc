"""Channel surgery: cut pruned feature maps out of a tf_keras model.

Channel pruning (Molchanov et al., "Pruning CNNs for Resource Efficient
Inference") ranks whole feature maps and removes the weakest; the savings only
show once the layers are rebuilt smaller. This module finds which channels can be
removed together (`channel_groups`) and builds the smaller model (`shrink`).

A group is the output channels of one Conv2D or Dense (its producer), or of
several producers tied by Add (a residual stream). The walk follows the channels
forward through per-channel layers (its followers: BatchNormalization,
elementwise activations, DepthwiseConv2D with depth_multiplier 1, padding,
pooling, Dropout, Add) to the Conv2D and Dense layers that read them as their
input axis (its consumers). Removing a channel from a group is then exactly the
original model with that feature map zeroed where the consumers read it.
Costs before and after come from `models.summary.summarize`.
"""
from __future__ import annotations

import operator
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError
from core.keras_env import keras, tf

_ELEMENTWISE_ACTIVATIONS = frozenset(
    keras.activations.get(name)
    for name in ("linear", "relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid", "tanh",
                 "softplus", "softsign", "swish", "mish", "exponential")
)
_PASSTHROUGH = (
    keras.layers.ZeroPadding2D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Dropout,
    keras.layers.ReLU,
    keras.layers.Add,
)
_FOLLOWERS = (
    keras.layers.BatchNormalization,
    keras.layers.DepthwiseConv2D,
    keras.layers.Activation,
    *_PASSTHROUGH,
)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are ranked and removed together, and the layers that shrink with them.

    `producers` lose filters (units), `followers` lose per-channel weights or just
    pass the channels on, `consumers` lose the matching rows of their input axis.
    """

    name: str
    producers: tuple[str, ...]
    followers: tuple[str, ...]
    consumers: tuple[str, ...]
    size: int
    reason: str | None = None

    @property
    def prunable(self) -> bool:
        return self.reason is None


@dataclass
class _Walk:
    """What one producer's channels reach; merged with others where an Add ties them."""

    producers: set[str]
    followers: set[str] = field(default_factory=set)
    consumers: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Graph:
    """Who reads whom in a built model, by layer name."""

    layers: dict[str, keras.layers.Layer]
    readers: dict[str, list[keras.layers.Layer]]
    inputs: dict[str, list[str]]
    outputs: frozenset[str]


def channel_groups(model: keras.Model) -> list[ChannelGroup]:
    """The model's channel groups, each prunable or with its reason.

    Groups, and the layers within them, are in the order of `model.layers`; an
    Add-tied group is named by its producers in that order, joined by "+".
    """
    graph = _graph(model)
    walks = [_walk(graph, layer) for layer in model.layers if _is_producer(layer)]
    order = {name: i for i, name in enumerate(graph.layers)}
    return [_group(graph, walk, order) for walk in _tie(walks)]


def shrink(model: keras.Model, keep: Mapping[str, Sequence[int]]) -> keras.Model:
    """A new, smaller model keeping only `keep[group]` channels of each named group.

    Layer names, the input shape and every remaining weight stay as they were;
    groups not named keep all their channels (an empty `keep` gives a copy, which the
    prune loop trains so that the caller's model is left alone). The new model is
    not compiled.
    """
    groups = {group.name: group for group in channel_groups(model)}
    outputs: dict[str, np.ndarray] = {}
    inputs: dict[str, np.ndarray] = {}
    for name, indices in keep.items():
        group = _checked_group(groups, name)
        kept = _checked_indices(group, indices)
        outputs.update({layer: kept for layer in group.producers + group.followers})
        inputs.update({layer: kept for layer in group.consumers})
    widths = {name: len(kept) for name, kept in outputs.items()
              if _is_producer(model.get_layer(name))}
    smaller = keras.models.clone_model(model, clone_function=lambda layer: _rebuilt(layer, widths))
    for layer in model.layers:
        weights = _sliced(layer, outputs.get(layer.name), inputs.get(layer.name))
        _set_weights(smaller.get_layer(layer.name), weights)
    return smaller


def _graph(model: keras.Model) -> _Graph:
    if not model.built or not getattr(model, "_is_graph_network", False):
        raise UserError(
            f"channel surgery: model '{model.name}' must be a built functional or Sequential "
            "tf_keras model (give it a keras.Input); subclassed models have no layer graph."
        )
    layers = {layer.name: layer for layer in model.layers}
    readers: dict[str, list[keras.layers.Layer]] = defaultdict(list)
    inputs: dict[str, list[str]] = defaultdict(list)
    for layer in model.layers:
        for node in layer.inbound_nodes:
            for parent in tf.nest.flatten(node.inbound_layers):
                readers[parent.name].append(layer)
                inputs[layer.name].append(parent.name)
    return _Graph(layers, readers, inputs, frozenset(model.output_names))


def _is_producer(layer: keras.layers.Layer) -> bool:
    """Conv2D (not transposed) and Dense: the layers whose output channels are filters."""
    conv = isinstance(layer, keras.layers.Conv2D) and not isinstance(
        layer, keras.layers.Conv2DTranspose)
    return conv or isinstance(layer, keras.layers.Dense)


def _walk(graph: _Graph, producer: keras.layers.Layer) -> _Walk:
    """Follow one producer's channels to their consumers, noting what blocks removal."""
    walk = _Walk({producer.name})
    pending = [producer.name]
    while pending:
        name = pending.pop()
        if name in graph.outputs:
            walk.reasons.append(f"'{name}' is a model output")
        for reader in graph.readers[name]:
            if (problem := _reader_problem(reader)) is not None:
                walk.reasons.append(problem)
            elif _is_producer(reader):
                walk.consumers.add(reader.name)
            elif reader.name not in walk.followers:
                walk.followers.add(reader.name)
                pending.append(reader.name)
    own = (_shared_problem(producer), _grouped_problem(producer, "producer"),
           _layout_problem(producer), _activation_problem(producer))
    walk.reasons += [problem for problem in own if problem]
    return walk


def _reader_problem(layer: keras.layers.Layer) -> str | None:
    """Why channels cannot pass into `layer`, or None if it is a follower or consumer."""
    if not (_is_producer(layer) or isinstance(layer, _FOLLOWERS)):
        return (f"the channels reach {type(layer).__name__} '{layer.name}', which channel "
                "surgery does not follow")
    return _shared_problem(layer) or _layout_problem(layer) or _kind_problem(layer)


def _kind_problem(layer: keras.layers.Layer) -> str | None:
    if _is_producer(layer):
        return _grouped_problem(layer, "consumer")
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        if layer.depth_multiplier != 1:
            return (f"depthwise '{layer.name}' has depth_multiplier={layer.depth_multiplier}, "
                    "which ties several output channels to each input channel")
        return _activation_problem(layer)
    if isinstance(layer, keras.layers.BatchNormalization):
        if list(layer.axis) != [len(layer.input_shape) - 1]:
            return (f"BatchNormalization '{layer.name}' normalizes axis {list(layer.axis)}, "
                    "not the channels")
    if isinstance(layer, keras.layers.Activation):
        return _activation_problem(layer)
    return None


def _shared_problem(layer: keras.layers.Layer) -> str | None:
    """A layer called more than once would shrink for every call at the same time."""
    calls = len(layer.inbound_nodes)
    return f"'{layer.name}' is shared (called {calls} times)" if calls > 1 else None


def _grouped_problem(layer: keras.layers.Layer, role: str) -> str | None:
    groups = getattr(layer, "groups", 1)
    if groups > 1:
        return f"{role} '{layer.name}' is a grouped convolution (groups={groups})"
    return None


def _layout_problem(layer: keras.layers.Layer) -> str | None:
    data_format = getattr(layer, "data_format", "channels_last")
    if data_format != "channels_last":
        return f"'{layer.name}' uses {data_format}; only channels_last is supported"
    return None


def _activation_problem(layer: keras.layers.Layer) -> str | None:
    """Softmax and custom activations may mix channels; the removal would change the rest."""
    activation = getattr(layer, "activation", None)
    if activation in _ELEMENTWISE_ACTIVATIONS:
        return None
    name = getattr(activation, "__name__", repr(activation))
    return f"'{layer.name}' has activation '{name}', which is not known to act per channel"


def _tie(walks: list[_Walk]) -> list[_Walk]:
    """Merge walks that share a follower: only an Add joins two producers' channels."""
    merged: list[_Walk] = []
    for walk in walks:
        tied = [other for other in merged if other.followers & walk.followers]
        for other in tied:
            merged.remove(other)
            walk.producers |= other.producers
            walk.followers |= other.followers
            walk.consumers |= other.consumers
            walk.reasons = other.reasons + walk.reasons
        merged.append(walk)
    return merged


def _group(graph: _Graph, walk: _Walk, order: dict[str, int]) -> ChannelGroup:
    """The public group of a merged walk, with Adds that also read foreign channels refused."""
    inside = walk.producers | walk.followers
    reasons = walk.reasons + [
        f"Add '{name}' also adds '{parent}', whose channels cannot shrink with it"
        for name in sorted(walk.followers, key=order.get)
        for parent in graph.inputs[name] if parent not in inside
    ]
    producers = tuple(sorted(walk.producers, key=order.get))
    first = graph.layers[producers[0]]
    return ChannelGroup(
        name="+".join(producers),
        producers=producers,
        followers=tuple(sorted(walk.followers, key=order.get)),
        consumers=tuple(sorted(walk.consumers, key=order.get)),
        size=first.filters if isinstance(first, keras.layers.Conv2D) else first.units,
        reason="; ".join(dict.fromkeys(reasons)) or None,
    )


def _checked_group(groups: dict[str, ChannelGroup], name: str) -> ChannelGroup:
    group = groups.get(name)
    if group is None:
        prunable = ", ".join(g.name for g in groups.values() if g.prunable) or "none"
        raise UserError(f"shrink: the model has no channel group '{name}'; prunable groups: "
                        f"{prunable}.")
    if not group.prunable:
        raise UserError(f"shrink: channel group '{name}' cannot be pruned ({group.reason}); "
                        "leave it out of keep.")
    return group


def _checked_indices(group: ChannelGroup, indices: Sequence[int]) -> np.ndarray:
    """The sorted channel indices to keep, refusing anything that is not a plain subset."""
    try:
        values = [operator.index(i) for i in indices]
    except TypeError:
        raise UserError(f"shrink: keep['{group.name}'] must be a sequence of integer channel "
                        f"indices, got {indices!r}.") from None
    if not values:
        raise UserError(f"shrink: keep['{group.name}'] is empty; keep at least one of its "
                        f"{group.size} channels, or leave the group out to keep them all.")
    outside = [i for i in values if not 0 <= i < group.size]
    if outside:
        raise UserError(f"shrink: keep['{group.name}'] has indices {outside} out of range; the "
                        f"group's channels are 0..{group.size - 1}.")
    repeated = sorted(i for i, count in Counter(values).items() if count > 1)
    if repeated:
        raise UserError(f"shrink: keep['{group.name}'] repeats indices {repeated}; name each "
                        "kept channel once.")
    return np.array(sorted(values))


def _rebuilt(layer: keras.layers.Layer, widths: dict[str, int]) -> keras.layers.Layer:
    """A fresh copy of `layer` from its config, with fewer filters or units if it produces."""
    try:
        config = layer.get_config()
        if layer.name in widths:
            width = "filters" if isinstance(layer, keras.layers.Conv2D) else "units"
            config[width] = widths[layer.name]
        return layer.__class__.from_config(config)
    except (NotImplementedError, TypeError, ValueError) as error:
        raise UserError(f"shrink: layer '{layer.name}' ({type(layer).__name__}) cannot be rebuilt "
                        f"from its config ({type(error).__name__}); give it a get_config() whose "
                        "result its from_config() accepts.") from None


def _sliced(layer: keras.layers.Layer, outputs: np.ndarray | None,
            inputs: np.ndarray | None) -> list[np.ndarray]:
    """`layer`'s weights with only the kept output and input channels."""
    weights = layer.get_weights()
    if outputs is None and inputs is None:
        return weights
    for index, (output_axis, input_axis) in enumerate(_channel_axes(layer)[:len(weights)]):
        if outputs is not None:
            weights[index] = np.take(weights[index], outputs, axis=output_axis)
        if inputs is not None and input_axis is not None:
            weights[index] = np.take(weights[index], inputs, axis=input_axis)
    return weights


def _channel_axes(layer: keras.layers.Layer) -> list[tuple[int, int | None]]:
    """(output-channel axis, input-channel axis) of each weight, in get_weights() order."""
    if _is_producer(layer):
        return [(-1, -2), (0, None)]  # kernel (..., in, out), bias (out,)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [(-2, None), (0, None)]  # depthwise kernel (h, w, channels, 1), bias
    return [(0, None)] * len(layer.weights)  # BatchNormalization: one vector per channel


def _set_weights(layer: keras.layers.Layer, weights: list[np.ndarray]) -> None:
    try:
        layer.set_weights(weights)
    except ValueError as error:
        raise UserError(f"shrink: layer '{layer.name}' ({type(layer).__name__}) cannot take its "
                        f"shrunk weights ({error}); channel surgery does not support this layer "
                        "kind.") from None
