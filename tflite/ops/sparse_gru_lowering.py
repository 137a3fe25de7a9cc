"""Lower every Keras GRU layer to one TFLite CUSTOM op `SparseGRU` (see SPARSE_GRU.md).

Mechanism (why: DESIGN.md, "Custom ops"): each GRU is replaced by a stand-in
layer made of two TF ops the TFLite converter has no builtin for, `Zeta` (on the
GRU's input) and `Polygamma` (producing a tensor of the GRU's output shape), each
carrying a per-layer marker constant. With `allow_custom_ops` the converter keeps
them as CUSTOM ops and converts the rest of the model to builtins as usual. The
flatbuffer is then rewritten: the `Polygamma` op becomes `SparseGRU` reading the
`Zeta` op's input and the layer's weights (new constant tensors in the contract's
format, flexbuffer options), the stand-in's other ops become dead and are removed
with unused tensors, buffers and operator codes, and constant buffers are
64-byte aligned, because LiteRT hands custom ops only aligned constants.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

from core.errors import UserError
from core.keras_env import keras, tf
from tflite.convert import converter_error_line, fixed_batch_spec
from tflite.flatbuffer_rewrite import (add_constant, add_custom_code, align_constant_buffers,
                                      compact, drop_dead_ops, operator_name, pack_model)

CUSTOM_CODE = "SparseGRU"
FORMAT_VERSION = 1
PRECISIONS = ("float32", "int8")
# What the rest of the model (everything but the GRUs) is converted with.
REST_QUANTIZATIONS = ("none", "dynamic_range")
# CSR costs a 2-byte column index per stored value (float32: 6 bytes instead of 4,
# int8: 3 instead of 1) plus an indirect load per multiply-add. Measured with
# `edgepipe bench-ops` (hidden 1024, 50 steps): at half density CSR took 62 ms
# against 40 ms for dense rows, at 20% density 18 ms; the two cross near 30%.
CSR_MAX_DENSITY = 0.3
_MAX_UINT16_COLUMNS = 1 << 16
# Stand-in markers: distinctive constants, one per GRU layer, so that the rewrite
# pairs ops with layers by value rather than by op order or tensor names.
_MARKER_BASE = 7001.0


@dataclass(frozen=True)
class LoweredGru:
    """What one GRU layer became: its options and its stored weight sizes."""

    layer: str
    units: int
    input_size: int
    reset_after: bool
    return_sequences: bool
    precision: str
    format: str
    nnz_w: int  # non-zeros of W [3U, F]
    nnz_r: int  # non-zeros of R [3U, U]
    weight_bytes: int  # bytes of every constant input the op reads (weights, indices, scales, bias)

    @property
    def density(self) -> float:
        return (self.nnz_w + self.nnz_r) / (3 * self.units * (self.input_size + self.units))


@dataclass(frozen=True)
class SparseGruConversion:
    flatbuffer: bytes
    layers: list[LoweredGru]


def convert_with_sparse_gru(model: keras.Model, precision: str = "float32",
                            quantization_of_rest: str = "none", batch_size: int = 1) -> bytes:
    """The .tflite bytes of `model` with every GRU layer as one SparseGRU op."""
    return lower_sparse_gru(model, precision, quantization_of_rest, batch_size).flatbuffer


def lower_sparse_gru(model: keras.Model, precision: str = "float32",
                     quantization_of_rest: str = "none", batch_size: int = 1) -> SparseGruConversion:
    """Convert `model` with its GRU layers lowered to SparseGRU; also report per-layer sizes.

    `precision` is the GRU weights' storage (float32, or int8 with per-row scales;
    activations stay float). `quantization_of_rest` converts the other layers
    ("none" or "dynamic_range").
    """
    if precision not in PRECISIONS:
        raise UserError(f"SparseGRU precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if quantization_of_rest not in REST_QUANTIZATIONS:
        raise UserError(
            f"quantization_of_rest {quantization_of_rest!r} cannot be combined with SparseGRU: use "
            f"one of {', '.join(REST_QUANTIZATIONS)} (full-int8 activations are not supported by "
            "the op; use gru_lowering: builtin for int8 variants)")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    grus = _gru_layers(model)
    markers = {layer.name: _MARKER_BASE + i for i, layer in enumerate(grus)}
    stand_in_model = keras.models.clone_model(
        model, clone_function=lambda layer: (
            _GruStandIn(layer.cell.units, layer.return_sequences, markers[layer.name],
                        name=layer.name) if layer.name in markers else layer))
    flatbuffer = _convert_stand_ins(stand_in_model, quantization_of_rest, batch_size)
    lowered, ops = [], {}
    for layer in grus:
        info, inputs = _encode_layer(layer, precision)
        lowered.append(info)
        ops[markers[layer.name]] = (info, inputs)
    return SparseGruConversion(align_constant_buffers(_rewrite(flatbuffer, ops)), lowered)


def has_gru(model: keras.Model) -> bool:
    """Whether the model holds any GRU layer (lowerable or not)."""
    return any(isinstance(m, keras.layers.GRU) for m in model.submodules)


def lowering_problem(model: keras.Model) -> str | None:
    """Why SparseGRU cannot compute the model's GRU layers, or None."""
    try:
        _gru_layers(model)
    except UserError as exc:
        return str(exc)
    return None


def check_lowerable(model: keras.Model) -> None:
    """Refuse a model whose GRU layers SparseGRU cannot compute; it needs only the
    architecture, so the pipeline asks before any training."""
    _gru_layers(model)


def _gru_layers(model: keras.Model) -> list:
    """The model's GRU layers, checked against what the op computes."""
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise UserError(
            f"SparseGRU lowering needs a functional or Sequential tf_keras model, got "
            f"{type(model).__name__}: rebuild it with keras.Input and layer calls")
    top_level = {id(layer) for layer in model.layers}
    grus = [m for m in model.submodules if isinstance(m, keras.layers.GRU)]
    if not grus:
        raise UserError(f"model {model.name!r} has no GRU layer to lower to SparseGRU; use "
                        "gru_lowering: builtin for it")
    for layer in model.submodules:
        if isinstance(layer, keras.layers.Masking) or getattr(layer, "mask_zero", False):
            raise UserError(
                f"model {model.name!r}: layer {layer.name!r} masks time steps, which SparseGRU "
                "does not support (it runs every step); remove the mask (mask_zero=False) or "
                "use gru_lowering: builtin")
    for layer in grus:
        where = f"GRU layer {layer.name!r} of model {model.name!r}"
        if id(layer) not in top_level:
            raise UserError(f"{where} is nested inside another layer (e.g. Bidirectional); only "
                            "top-level GRU layers lower to SparseGRU")
        wrong = {
            "activation": (keras.activations.serialize(layer.activation), "tanh"),
            "recurrent_activation": (keras.activations.serialize(layer.recurrent_activation),
                                     "sigmoid"),
            "go_backwards": (layer.go_backwards, False),
            "stateful": (layer.stateful, False),
            "return_state": (layer.return_state, False),
            "time_major": (layer.time_major, False),
        }
        for option, (value, expected) in wrong.items():
            if value != expected:
                raise UserError(f"{where} has {option}={value!r}; SparseGRU computes only "
                                f"{option}={expected!r}: change the layer or use gru_lowering: "
                                "builtin")
    return grus


class _GruStandIn(keras.layers.Layer):
    """Stands in for a GRU during conversion: two marked ops the converter keeps custom.

    `Zeta(x, marker)` marks the GRU's input; `Polygamma(marker, carrier)` has the GRU's
    output shape and becomes the SparseGRU op. Its values are never used.
    """

    def __init__(self, units: int, return_sequences: bool, marker: float, **kwargs):
        super().__init__(**kwargs)
        self.units, self.return_sequences, self.marker = units, return_sequences, marker

    def call(self, x):
        marker = tf.constant([self.marker], tf.float32)
        probe = tf.math.zeta(tf.cast(x, tf.float32), marker)
        if self.return_sequences:
            carrier = tf.tile(probe[:, :, :1], [1, 1, self.units])
        else:
            carrier = tf.tile(probe[:, -1, :1], [1, self.units])
        return tf.math.polygamma(marker, carrier)


def _convert_stand_ins(model: keras.Model, quantization_of_rest: str, batch_size: int) -> bytes:
    spec = fixed_batch_spec(model, batch_size)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = True  # only the stand-ins' Zeta and Polygamma are custom
    if quantization_of_rest == "dynamic_range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return bytes(converter.convert())
    except Exception as exc:  # the converter raises several unrelated types
        raise UserError(
            f"converting {model.name!r} with SparseGRU stand-ins failed: "
            f"{converter_error_line(exc)}. Check that every other layer converts to builtin "
            "TFLite ops") from None


# -- weights in the contract's format ------------------------------------------------

def _encode_layer(layer, precision: str) -> tuple[LoweredGru, list[tuple[str, np.ndarray] | None]]:
    """The op's 10 inputs after x (None = absent) and the layer's report row."""
    cell = layer.cell
    units = int(cell.units)
    kernel = np.asarray(cell.kernel.numpy(), np.float32)
    recurrent = np.asarray(cell.recurrent_kernel.numpy(), np.float32)
    input_size = kernel.shape[0]
    if cell.use_bias:
        bias = np.asarray(cell.bias.numpy(), np.float32)
    else:
        bias = np.zeros((2, 3 * units) if cell.reset_after else (3 * units,), np.float32)
    w, r = kernel.T.copy(), recurrent.T.copy()  # [3U, F], [3U, U]: one row per gate and unit
    nnz_w, nnz_r = int(np.count_nonzero(w)), int(np.count_nonzero(r))
    density = (nnz_w + nnz_r) / (w.size + r.size)
    fits_uint16 = max(input_size, units) <= _MAX_UINT16_COLUMNS
    fmt = "csr" if density < CSR_MAX_DENSITY and fits_uint16 else "dense"
    inputs = (_encode_matrix("w", w, fmt, precision) + _encode_matrix("r", r, fmt, precision)
              + [("bias", bias)])
    info = LoweredGru(
        layer=layer.name, units=units, input_size=input_size, reset_after=bool(cell.reset_after),
        return_sequences=bool(layer.return_sequences), precision=precision, format=fmt,
        nnz_w=nnz_w, nnz_r=nnz_r,
        weight_bytes=sum(array.nbytes for _, array in filter(None, inputs)))
    return info, inputs


def _encode_matrix(name: str, matrix: np.ndarray, fmt: str,
                   precision: str) -> list[tuple[str, np.ndarray] | None]:
    """values, col_indices, row_ptr, scales of one [rows, cols] matrix (None = absent)."""
    scales = None
    values = matrix
    if precision == "int8":
        peak = np.abs(matrix).max(axis=1)
        scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        values = np.clip(np.round(matrix / scales[:, None]), -127, 127).astype(np.int8)
    if fmt == "dense":
        return [(f"{name}_values", values), None, None,
                None if scales is None else (f"{name}_scales", scales)]
    rows, cols = np.nonzero(matrix)  # row-major: columns increase within each row
    row_ptr = np.zeros(matrix.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=row_ptr[1:])
    return [(f"{name}_values", values[rows, cols]),
            (f"{name}_col_indices", cols.astype(np.uint16)),
            (f"{name}_row_ptr", row_ptr),
            None if scales is None else (f"{name}_scales", scales)]


def custom_options(info: LoweredGru) -> bytes:
    """The op's flexbuffer map, exactly the contract's keys."""
    return bytes(flexbuffers.Dumps({
        "version": FORMAT_VERSION, "units": info.units, "input_size": info.input_size,
        "reset_after": info.reset_after, "return_sequences": info.return_sequences,
        "precision": info.precision, "format": info.format}))


# -- flatbuffer rewrite --------------------------------------------------------------

def _rewrite(data: bytes, ops: dict[float, tuple[LoweredGru, list]]) -> bytes:
    """Turn each stand-in into its SparseGRU op and drop what the stand-ins leave dead."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    names = [operator_name(code) for code in model.operatorCodes]
    producer = {t: i for i, op in enumerate(graph.operators) for t in op.outputs}
    sparse_code = add_custom_code(model, CUSTOM_CODE)
    found = set()
    for op in graph.operators:
        if names[op.opcodeIndex] != "Polygamma":
            continue
        marker = _constant_value(model, graph, op.inputs[0])
        info, arrays = ops[marker]
        x = _marked_input(model, graph, names, producer, op.inputs[1], marker)
        op.opcodeIndex = sparse_code
        # Absent inputs are left out, not -1: LiteRT 2.3.0 crashes (SIGSEGV in
        # LiteRtRunCompiledModel) running a custom op with a -1 input; the
        # kernel places the present ones by format and precision.
        op.inputs = [x] + [add_constant(model, graph, f"{info.layer}/{item[0]}", item[1])
                           for item in arrays if item]
        op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.NONE, None
        op.customOptions = list(custom_options(info))
        op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
        graph.tensors[op.outputs[0]].name = info.layer
        found.add(marker)
    missing = [info.layer for marker, (info, _) in ops.items() if marker not in found]
    if missing:
        raise UserError(f"the converter dropped the stand-in of GRU layer(s) {', '.join(missing)} "
                        "(is the layer's output unused?); cannot lower them to SparseGRU")
    drop_dead_ops(graph)
    compact(model)
    return pack_model(model)


def _constant_value(model, graph, tensor: int) -> float:
    buffer = model.buffers[graph.tensors[tensor].buffer]
    return float(np.frombuffer(bytes(bytearray(buffer.data)), np.float32)[0])


def _marked_input(model, graph, names, producer, start: int, marker: float) -> int:
    """The input of the Zeta op with `marker` upstream of tensor `start`."""
    pending, seen = [start], set()
    while pending:
        tensor = pending.pop()
        if tensor in seen or tensor not in producer:
            continue
        seen.add(tensor)
        op = graph.operators[producer[tensor]]
        if names[op.opcodeIndex] == "Zeta" and _constant_value(model, graph, op.inputs[1]) == marker:
            return int(op.inputs[0])
        pending += [int(t) for t in op.inputs if t >= 0]
    raise UserError("the converted SparseGRU stand-in lost its input marker; cannot lower the "
                    "GRU (please report this with the model)")
