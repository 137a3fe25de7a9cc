"""Parameter and mult-add counts per layer, read from the Keras graph.

The report compares model variants by cost, so the counter must be explicit about
what it counts (the MobileNets paper's convention):

- Conv1D/2D/3D: k·C_in/groups·C_out per output position (kernel size × output
  positions); DepthwiseConv: k·C_in·depth_multiplier per output position;
  SeparableConv: the depthwise and pointwise parts, both at the output positions.
- Dense: in·out, times every leading position when applied to a sequence.
- SimpleRNN/GRU/LSTM: per time step, gates × (input·units + units·units), with 1,
  3 and 4 gates, times the number of steps.
- Zero: Embedding (a lookup), BatchNormalization (folded into the preceding
  convolution at conversion), and every layer without weights (activations,
  pooling, dropout, reshapes, merges). Elementwise work (biases, gate
  nonlinearities and products) is ignored everywhere.

A layer with weights but no rule above counts zero and is named in `notes`, as is
an unknown (None) dimension, which is counted as 1. Params are every weight,
including BatchNormalization's non-trainable moving statistics;
`total_trainable_params` leaves those out.
"""
import math
from dataclasses import dataclass

from core.errors import UserError
from core.keras_env import keras

_RECURRENT_GATES: tuple[tuple[type, int], ...] = (
    (keras.layers.GRU, 3),
    (keras.layers.LSTM, 4),
    (keras.layers.SimpleRNN, 1),
)
_TRANSPOSED_CONVS = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_SEPARABLE_CONVS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_DEPTHWISE_CONVS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_ZERO_COST_WITH_WEIGHTS = (keras.layers.Embedding, keras.layers.BatchNormalization)


@dataclass(frozen=True)
class LayerCost:
    """One layer's row: its output shape (without batch) and what it costs."""

    name: str
    type: str
    output_shape: tuple
    params: int
    trainable_params: int
    mult_adds: int


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer rows and totals for one model."""

    name: str
    rows: tuple[LayerCost, ...]
    total_params: int
    total_trainable_params: int
    total_mult_adds: int
    notes: tuple[str, ...]


def summarize(model: keras.Model) -> ModelSummary:
    """Count params and mult-adds of every layer of a built tf_keras model."""
    if not model.built:
        raise UserError(
            f"summarize: model '{model.name}' is not built; give it a keras.Input or "
            "call model.build(input_shape) first."
        )
    rows: list[LayerCost] = []
    notes: list[str] = []
    _collect(model, "", rows, notes)
    return ModelSummary(
        name=model.name,
        rows=tuple(rows),
        total_params=sum(r.params for r in rows),
        total_trainable_params=sum(r.trainable_params for r in rows),
        total_mult_adds=sum(r.mult_adds for r in rows),
        notes=tuple(notes),
    )


def format_summary(summary: ModelSummary) -> str:
    """Render the rows and totals as a fixed-width text table."""
    header = ("Layer", "Type", "Output shape", "Params", "Mult-adds", "MAdds (M)")
    table = [header] + [
        (
            r.name,
            r.type,
            str(r.output_shape),
            f"{r.params:,}",
            f"{r.mult_adds:,}",
            f"{r.mult_adds / 1e6:.2f}",
        )
        for r in summary.rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = {3, 4, 5}

    def line(row: tuple[str, ...]) -> str:
        cells = (
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        )
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    lines = [f"Model: {summary.name}", rule, line(header), rule]
    lines += [line(row) for row in table[1:]]
    lines += [
        rule,
        f"Total params: {summary.total_params:,} "
        f"(trainable {summary.total_trainable_params:,}, "
        f"non-trainable {summary.total_params - summary.total_trainable_params:,})",
        f"Total mult-adds: {summary.total_mult_adds:,} ({summary.total_mult_adds / 1e6:.1f} M)",
    ]
    lines += [f"Note: {note}" for note in summary.notes]
    return "\n".join(lines)


def _collect(model: keras.Model, prefix: str, rows: list[LayerCost], notes: list[str]) -> None:
    """Append a row per layer; nested models contribute their own layers instead."""
    for layer in model.layers:
        name = prefix + layer.name
        if isinstance(layer, keras.Model):
            _collect(layer, name + "/", rows, notes)
            continue
        calls = range(len(layer.inbound_nodes))
        mult_adds = sum(
            _mult_adds(
                layer, name, layer.get_input_shape_at(i), layer.get_output_shape_at(i), notes
            )
            for i in calls
        )
        rows.append(
            LayerCost(
                name=name,
                type=type(layer).__name__,
                output_shape=_drop_batch(layer.get_output_shape_at(0)) if calls else (),
                params=layer.count_params(),
                trainable_params=sum(math.prod(w.shape) for w in layer.trainable_weights),
                mult_adds=mult_adds,
            )
        )


def _mult_adds(layer, name: str, input_shape, output_shape, notes: list[str]) -> int:
    """Mult-adds of one call of `layer`, by the rules in the module docstring."""
    input_shape, output_shape = _first(input_shape), _first(output_shape)
    if isinstance(layer, _TRANSPOSED_CONVS):
        return _uncounted(layer, name, notes)
    if isinstance(layer, _SEPARABLE_CONVS):
        kernel = math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
        return kernel * _known(_spatial(layer, output_shape), name, output_shape, notes)
    if isinstance(layer, _DEPTHWISE_CONVS):
        kernel = math.prod(layer.depthwise_kernel.shape)
        return kernel * _known(_spatial(layer, output_shape), name, output_shape, notes)
    if isinstance(layer, _CONVS):
        kernel = math.prod(layer.kernel.shape)
        return kernel * _known(_spatial(layer, output_shape), name, output_shape, notes)
    if isinstance(layer, keras.layers.Dense):
        positions = _known(output_shape[1:-1], name, output_shape, notes)
        return math.prod(layer.kernel.shape) * positions
    for recurrent_type, gates in _RECURRENT_GATES:
        if isinstance(layer, recurrent_type):
            steps = _known(input_shape[1:2], name, input_shape, notes)
            features = _known(input_shape[2:], name, input_shape, notes)
            units = layer.units
            return steps * gates * (features * units + units * units)
    if layer.weights and not isinstance(layer, _ZERO_COST_WITH_WEIGHTS):
        return _uncounted(layer, name, notes)
    return 0


def _spatial(layer, output_shape: tuple) -> tuple:
    """The output positions of a convolution, for either data format."""
    if layer.data_format == "channels_first":
        return output_shape[2:]
    return output_shape[1:-1]


def _known(dims: tuple, name: str, shape: tuple, notes: list[str]) -> int:
    """Product of `dims`, counting unknown (None) ones as 1 and saying so."""
    if any(d is None for d in dims):
        notes.append(f"{name}: shape {shape} has unknown dimensions, counted as 1.")
    return math.prod(d for d in dims if d is not None)


def _uncounted(layer, name: str, notes: list[str]) -> int:
    notes.append(f"{name}: no mult-add rule for {type(layer).__name__}, counted as 0.")
    return 0


def _first(shape):
    """The first tensor's shape when a layer takes or returns several."""
    return shape[0] if isinstance(shape, list) else tuple(shape)


def _drop_batch(shape) -> tuple:
    return tuple(_first(shape)[1:])
