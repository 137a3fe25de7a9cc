"""Lower depthwise-separable blocks of a converted .tflite to `SparseSeparableConv` ops.

Works on the flatbuffer, not on Keras layers, so it applies to any tf_keras model:
the converter emits DEPTHWISE_CONV_2D then a 1x1 CONV_2D for MobileNet blocks,
SeparableConv2D layers and hand-built pairs alike, with BatchNorm already folded
into the weights and biases and the activations fused. Each such pair the op can
compute (SPARSE_SEPARABLE.md) becomes one CUSTOM op; every other depthwise
convolution stays builtin, and the returned records say why.

Pruned models converted with the converter's sparse encoding (a DENSIFY op feeding
the CONV_2D's weights) are decoded here: the stored TFLite sparse tensor (dense and
CSR dimensions in identity traversal order, no block map, which is what the
converter writes for float weights) is expanded back to the dense weights. Other
sparse encodings keep the block builtin, with the reason.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

from core.errors import UserError
from tflite.flatbuffer_rewrite import (add_constant, add_custom_code, align_constant_buffers,
                                       compact, drop_dead_ops, extract_ops, operator_name,
                                       pack_model)
from tflite.ops.sparse_separable_reference import output_size

CUSTOM_CODE = "SparseSeparableConv"
FORMAT_VERSION = 1
PRECISIONS = ("float32", "int8")
BLOCKS = (1, 4)
KERNEL_SIZES = (3, 5)
STRIDES = (1, 2)
# Above half density the kernel's CSR is slower than its dense path.
DENSE_ABOVE = 0.5
_MAX_IN_CHANNELS = 65535  # column indices are uint16
_ACTIVATIONS = {schema.ActivationFunctionType.NONE: "none",
                schema.ActivationFunctionType.RELU: "relu",
                schema.ActivationFunctionType.RELU6: "relu6"}
_PADDINGS = {schema.Padding.SAME: "same", schema.Padding.VALID: "valid"}
_NHWC_TO_CHW = (0, 3, 1, 2)


@dataclass
class _Graph:
    """The parsed model with the lookups every check needs."""

    model: schema.ModelT
    graph: schema.SubGraphT
    names: list[str]
    producer: dict[int, int]
    consumers: dict[int, list[int]]

    def op_name(self, op: schema.OperatorT) -> str:
        return self.names[op.opcodeIndex]

    def tensor(self, index: int) -> schema.TensorT:
        return self.graph.tensors[index]

    def constant(self, index: int) -> np.ndarray | None:
        """A float32 constant (decoded through DENSIFY if sparse-encoded, dequantized if
        symmetric int8 as dynamic-range conversion writes weights), else None."""
        tensor = self.tensor(index)
        if tensor.type == schema.TensorType.INT8 and index not in self.producer:
            return _dequantized(tensor, self.model.buffers[tensor.buffer].data)
        if tensor.type != schema.TensorType.FLOAT32:
            return None
        if index in self.producer:
            op = self.graph.operators[self.producer[index]]
            return _densify(self, op.inputs[0]) if self.op_name(op) == "DENSIFY" and op.inputs \
                else None
        data = self.model.buffers[tensor.buffer].data
        if data is None or not len(data) or tensor.sparsity is not None:
            return None
        return _float_array(tensor, bytes(bytearray(data)))


def lower_separable_blocks(flatbuffer: bytes, precision: str = "float32", block: int = 1,
                           dense_above: float = DENSE_ABOVE,
                           only: Mapping[int, int] | None = None) -> tuple[bytes, list[dict]]:
    """Replace each lowerable DEPTHWISE_CONV_2D + 1x1 CONV_2D pair with SparseSeparableConv.

    `precision` stores the pointwise weights as float32 or int8 (symmetric, one scale
    per output channel); `block` is the CSR block height (1, or 4 output channels);
    a pointwise matrix with more than `dense_above` of its stored values non-zero is
    stored dense. Sparse-encoded weights (DENSIFY ops) are decoded, so a pruned model
    converted with `sparse=True` lowers as its dense conversion does. `only` (depthwise
    op index -> block height) lowers just those pairs, each with its own block, and keeps
    every other pair builtin, recorded as "not chosen". Returns the new
    flatbuffer (the input unchanged when nothing lowers) and one record per depthwise op.
    """
    _check_arguments(precision, block, dense_above)
    parsed = _parse(flatbuffer)
    records, pairs = [], []
    for index, op in enumerate(parsed.graph.operators):
        if parsed.op_name(op) != "DEPTHWISE_CONV_2D":
            continue
        record, pair = _match(parsed, index)
        if pair is not None and only is not None and index not in only:
            record["reason"] = "not chosen"
        elif pair is not None:
            record.update(_encode(pair, precision, block if only is None else only[index],
                                  dense_above))
            pairs.append(pair)
        records.append(record)
    if not pairs:
        return flatbuffer, records
    return align_constant_buffers(_rewrite(parsed, pairs, records)), records


def block_model(flatbuffer: bytes, record: dict) -> bytes:
    """The builtin pair of one block record (with `pointwise_op`) as a model of its own."""
    parsed = _parse(flatbuffer)
    return extract_ops(parsed.model, [record["depthwise_op"], record["pointwise_op"]])


def _check_arguments(precision: str, block: int, dense_above: float) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"SparseSeparableConv precision {precision!r} is not one of "
                        f"{', '.join(PRECISIONS)}")
    if block not in BLOCKS:
        raise UserError(f"SparseSeparableConv block {block!r} is not 1 or 4")
    if not 0.0 <= dense_above <= 1.0:
        raise UserError(f"dense_above {dense_above!r} must be a density between 0 and 1")


# -- reading the model -----------------------------------------------------------------

def _parse(data: bytes) -> _Graph:
    """The model's first subgraph with producers and consumers, or a UserError."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < 8 \
            or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise UserError("SparseSeparableConv lowering needs the bytes of a .tflite flatbuffer "
                        "(file identifier TFL3); convert the model first")
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as exc:  # the generated reader raises assorted types on damaged bytes
        raise UserError(f"the .tflite flatbuffer is damaged and cannot be read ({exc})") from None
    if not model.subgraphs:
        raise UserError("the .tflite flatbuffer has no subgraph to lower")
    _inline_buffers(model, data)
    graph = model.subgraphs[0]
    graph.tensors = graph.tensors or []
    graph.operators = graph.operators or []
    _check_indices(model, graph)
    producer, consumers = {}, {}
    for i, op in enumerate(graph.operators):
        for t in op.outputs:
            producer[t] = i
        for t in op.inputs:
            consumers.setdefault(t, []).append(i)
    return _Graph(model, graph, [operator_name(c) for c in model.operatorCodes or []],
                  producer, consumers)


def _inline_buffers(model: schema.ModelT, data: bytes) -> None:
    """Move buffers stored behind the flatbuffer (offset/size) into it, so edits keep them."""
    for buffer in model.buffers or []:
        if buffer.offset > 1:
            if buffer.offset + buffer.size > len(data):
                raise UserError(f"a constant buffer of the .tflite runs past its end "
                                f"({buffer.offset} + {buffer.size} > {len(data)} bytes)")
            payload = data[buffer.offset:buffer.offset + buffer.size]
            buffer.data, buffer.offset, buffer.size = np.frombuffer(payload, np.uint8), 0, 0


def _check_indices(model: schema.ModelT, graph: schema.SubGraphT) -> None:
    """Refuse out-of-range operator code, tensor and buffer indices."""
    codes, tensors = len(model.operatorCodes or []), len(graph.tensors)
    for i, op in enumerate(graph.operators):
        op.inputs, op.outputs = _ints(op.inputs), _ints(op.outputs)
        if not 0 <= op.opcodeIndex < codes:
            raise UserError(f"op {i} of the .tflite uses operator code {op.opcodeIndex}, which "
                            "does not exist")
        if any(not -1 <= t < tensors for t in op.inputs + op.outputs):
            raise UserError(f"op {i} of the .tflite names a tensor index outside 0..{tensors - 1}")
    if any(not 0 <= t < tensors for t in _ints(graph.inputs) + _ints(graph.outputs)
           + [item.tensorIndex for sig in model.signatureDefs or [] if sig.subgraphIndex == 0
              for item in list(sig.inputs or []) + list(sig.outputs or [])]):
        raise UserError(f"the .tflite's inputs, outputs or signatures name a tensor index "
                        f"outside 0..{tensors - 1}")
    buffers = [t.buffer for g in model.subgraphs for t in g.tensors or []] \
        + [m.buffer for m in model.metadata or []]
    if any(not 0 <= b < len(model.buffers or []) for b in buffers):
        raise UserError("a tensor or metadata entry of the .tflite names a buffer that does not "
                        "exist")


def _ints(values) -> list[int]:
    """A schema vector field (None, list or numpy array) as a list of ints."""
    return [] if values is None else [int(v) for v in values]


def _float_array(tensor: schema.TensorT, payload: bytes) -> np.ndarray:
    """The float32 contents of a dense constant, checked against its shape."""
    shape = _ints(tensor.shape)
    if len(payload) != 4 * int(np.prod(shape, dtype=np.int64)):
        raise UserError(f"constant tensor {_name(tensor)!r} has shape {shape} but "
                        f"{len(payload)} bytes")
    return np.frombuffer(payload, np.float32).reshape(shape)


def _dequantized(tensor: schema.TensorT, data) -> np.ndarray | None:
    """The float values of a symmetric int8 constant (one scale, or one per slice along
    its quantized dimension), or None when it is not one."""
    q, shape = tensor.quantization, _ints(tensor.shape)
    if data is None or not len(data) or tensor.sparsity is not None or q is None \
            or q.scale is None or not shape:
        return None
    scales = np.asarray(q.scale, np.float32)
    zero_points = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.int64)
    axis = int(q.quantizedDimension)
    if np.any(zero_points != 0) or not 0 <= axis < len(shape) \
            or scales.size not in (1, shape[axis]) or not np.all(np.isfinite(scales)):
        return None
    payload = bytes(bytearray(data))
    if len(payload) != int(np.prod(shape, dtype=np.int64)):
        raise UserError(f"constant tensor {_name(tensor)!r} has shape {shape} but "
                        f"{len(payload)} bytes")
    values = np.frombuffer(payload, np.int8).reshape(shape).astype(np.float32)
    broadcast = [1] * len(shape)
    broadcast[axis] = scales.size
    return values * scales.reshape(broadcast)


def _densify(parsed: _Graph, index: int) -> np.ndarray | None:
    """The dense float32 array of a sparse-encoded constant, or None for encodings not read."""
    tensor = parsed.tensor(index)
    sparsity = tensor.sparsity
    data = parsed.model.buffers[tensor.buffer].data
    shape = _ints(tensor.shape)
    if tensor.type != schema.TensorType.FLOAT32 or sparsity is None or data is None \
            or _ints(sparsity.traversalOrder) != list(range(len(shape))) \
            or _ints(sparsity.blockMap) or len(sparsity.dimMetadata or []) != len(shape):
        return None
    values = np.frombuffer(bytes(bytearray(data)), np.float32)
    positions, flat, space = np.zeros(1, np.int64), np.zeros(1, np.int64), 1
    for size, dim in zip(shape, sparsity.dimMetadata):
        positions, coords, counts, space = _level(dim, positions, space, size, _name(tensor))
        flat = np.repeat(flat, counts) * size + coords
    if space != values.size:
        raise UserError(f"sparse constant {_name(tensor)!r} stores {values.size} values but its "
                        f"sparsity metadata addresses {space}")
    dense = np.zeros(int(np.prod(shape)), np.float32)
    dense[flat] = values[positions]
    return dense.reshape(shape)


def _level(dim: schema.DimensionMetadataT, positions: np.ndarray, space: int, size: int,
           name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One dimension of TFLite's sparse format: the children of every position.

    Returns the children's positions, their coordinates along this dimension, how many
    children each parent has, and the size of this level's position space.
    """
    if dim.format == schema.DimensionType.DENSE:
        if dim.denseSize != size:
            raise UserError(f"sparse constant {name!r}: dense dimension of size {dim.denseSize} "
                            f"in a dimension of {size}")
        children = (positions[:, None] * size + np.arange(size)).ravel()
        return children, np.tile(np.arange(size), positions.size), np.full(positions.size, size), \
            space * size
    segments = np.asarray(_ints(getattr(dim.arraySegments, "values", None)), np.int64)
    indices = np.asarray(_ints(getattr(dim.arrayIndices, "values", None)), np.int64)
    if segments.size != space + 1 or segments[0] != 0 or np.any(np.diff(segments) < 0) \
            or segments[-1] != indices.size or np.any((indices < 0) | (indices >= size)):
        raise UserError(f"sparse constant {name!r} has inconsistent CSR segments or indices")
    counts = segments[positions + 1] - segments[positions]
    starts = np.repeat(segments[positions] - np.cumsum(counts) + counts, counts)
    children = starts + np.arange(int(counts.sum()))
    return children, indices[children], counts, indices.size


def _name(tensor: schema.TensorT) -> str:
    name = tensor.name or b""
    return name.decode(errors="replace") if isinstance(name, bytes) else name


# -- which pairs lower -----------------------------------------------------------------

@dataclass
class _Pair:
    """One lowerable block: the two ops and everything the custom op needs."""

    depthwise: int
    pointwise: int
    dw_weights: np.ndarray  # [K, K, Cin]
    dw_bias: np.ndarray     # [Cin]
    pw_weights: np.ndarray  # [Cout, Cin]
    pw_bias: np.ndarray     # [Cout]
    options: dict


def _match(parsed: _Graph, index: int) -> tuple[dict, _Pair | None]:
    """The record of the depthwise op at `index`, and its pair when it lowers."""
    dw = parsed.graph.operators[index]
    record = {"layer": _layer_name(parsed, dw), "depthwise_op": index, "lowered": False,
              "depthwise": _output_name(parsed, dw)}
    problem = _depthwise_problem(parsed, dw)
    if problem is None:
        consumers = parsed.consumers.get(dw.outputs[0], [])
        pointwise = consumers[0] if len(consumers) == 1 else None
        problem = _consumer_problem(parsed, dw.outputs[0], pointwise)
    if problem is None:
        pw = parsed.graph.operators[pointwise]
        record.update(pointwise=_output_name(parsed, pw), pointwise_op=pointwise)
        problem = _pointwise_problem(parsed, pw)
    if problem is None:
        pair = _pair(parsed, index, pointwise)
        problem = _pair_problem(parsed, pair)
    if problem is not None:
        return {**record, "reason": problem}, None
    o = pair.options
    record.update(kernel_size=o["kernel_size"], stride=o["stride"], padding=o["padding"],
                  in_channels=o["in_channels"], out_channels=o["out_channels"],
                  input_shape=_ints(parsed.tensor(dw.inputs[0]).shape),
                  output_shape=_ints(parsed.tensor(pw.outputs[0]).shape))
    return record, pair


def _output_name(parsed: _Graph, op: schema.OperatorT) -> str:
    return _name(parsed.tensor(op.outputs[0])) if op.outputs else ""


def _layer_name(parsed: _Graph, dw: schema.OperatorT) -> str:
    """The Keras layer behind a depthwise op, from its weights' name (e.g. "net/conv_dw_1")."""
    if len(dw.inputs) < 2 or dw.inputs[1] < 0:
        return ""
    last = _name(parsed.tensor(dw.inputs[1])).split(";")[-1]
    return last.rsplit("/", 1)[0] if "/" in last else last


def _depthwise_problem(parsed: _Graph, op: schema.OperatorT) -> str | None:
    """Why this DEPTHWISE_CONV_2D is not one the op computes, or None."""
    o = op.builtinOptions
    if o is None or len(op.inputs) < 2 or len(op.outputs) != 1:
        return "depthwise op without options, weights or a single output"
    x, weights = parsed.tensor(op.inputs[0]), parsed.constant(op.inputs[1])
    if x.type != schema.TensorType.FLOAT32 or len(x.shape) != 4:
        return "input is not a float32 [B, H, W, C] tensor"
    if weights is None or weights.ndim != 4 or weights.shape[0] != 1:
        return "weights are not a float32 [1, K, K, C] constant"
    k, channels = weights.shape[1], int(x.shape[3])
    checks = [
        (weights.shape[3] == channels and o.depthMultiplier in (0, 1),
         f"depth multiplier {weights.shape[3] // max(channels, 1)} (only 1 lowers)"),
        (o.dilationHFactor == 1 and o.dilationWFactor == 1,
         f"dilation {o.dilationHFactor}x{o.dilationWFactor} (only 1 lowers)"),
        (weights.shape[1] == weights.shape[2] and k in KERNEL_SIZES,
         f"kernel {weights.shape[1]}x{weights.shape[2]} (only 3x3 and 5x5 lower)"),
        (o.strideH == o.strideW and o.strideH in STRIDES,
         f"stride {o.strideH}x{o.strideW} (only 1x1 and 2x2 lower)"),
        (o.padding in _PADDINGS, f"padding {o.padding} is not SAME or VALID"),
        (o.fusedActivationFunction in _ACTIVATIONS,
         f"fused activation {o.fusedActivationFunction} is not NONE, RELU or RELU6"),
        (channels <= _MAX_IN_CHANNELS, f"{channels} channels exceed {_MAX_IN_CHANNELS}"),
        (_bias(parsed, op, channels) is not None, "bias is not a float32 constant"),
    ]
    return next((f"depthwise {why}" for ok, why in checks if not ok), None)


def _consumer_problem(parsed: _Graph, out: int, pointwise: int | None) -> str | None:
    """Why the depthwise output does not feed exactly one CONV_2D, or None."""
    if out in _ints(parsed.graph.outputs):
        return "depthwise output is a model output"
    if pointwise is None:
        return f"depthwise output feeds {len(parsed.consumers.get(out, []))} ops, not one CONV_2D"
    op = parsed.graph.operators[pointwise]
    if parsed.op_name(op) != "CONV_2D" or op.inputs[0] != out:
        return f"depthwise output feeds {parsed.op_name(op)}, not a CONV_2D's input"
    return None


def _pointwise_problem(parsed: _Graph, op: schema.OperatorT) -> str | None:
    """Why this CONV_2D is not a 1x1 pointwise convolution the op computes, or None."""
    o = op.builtinOptions
    if o is None or len(op.inputs) < 2 or len(op.outputs) != 1:
        return "pointwise CONV_2D without options, weights or a single output"
    weights = parsed.constant(op.inputs[1])
    checks = [
        (weights is not None and weights.ndim == 4,
         "weights are not a float32 constant (quantized, float16 or an unread sparse encoding)"),
        (weights is not None and weights.shape[1:3] == (1, 1),
         f"kernel is {'x'.join(map(str, weights.shape[1:3])) if weights is not None else '?'}, "
         "not 1x1"),
        (o.strideH == o.strideW == 1, "stride is not 1"),
        (o.dilationHFactor == o.dilationWFactor == 1, "dilation is not 1"),
        (o.fusedActivationFunction in _ACTIVATIONS, "fused activation is not NONE, RELU or RELU6"),
        (parsed.tensor(op.outputs[0]).type == schema.TensorType.FLOAT32, "output is not float32"),
        (weights is not None and _bias(parsed, op, weights.shape[0]) is not None,
         "bias is not a float32 constant"),
    ]
    return next((f"pointwise CONV_2D {why}" for ok, why in checks if not ok), None)


def _bias(parsed: _Graph, op: schema.OperatorT, channels: int) -> np.ndarray | None:
    """The op's float32 bias [channels] (zeros when it has none), or None if unusable."""
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return np.zeros(channels, np.float32)
    bias = parsed.constant(op.inputs[2])
    return bias if bias is not None and bias.shape == (channels,) else None


def _pair_problem(parsed: _Graph, pair: _Pair) -> str | None:
    """What the kernel would refuse in an otherwise matching pair: non-finite values, or a
    declared output shape other than the contract's."""
    if not all(np.all(np.isfinite(a)) for a in (pair.dw_weights, pair.dw_bias, pair.pw_weights,
                                                 pair.pw_bias)):
        return "weights or biases hold NaN or infinity (the op refuses them)"
    o = pair.options
    x = parsed.tensor(parsed.graph.operators[pair.depthwise].inputs[0])
    batch, height, width, _ = _ints(x.shape)
    expected = [batch] + [output_size(size, o["kernel_size"], o["stride"], o["padding"])[0]
                          for size in (height, width)] + [o["out_channels"]]
    declared = _ints(parsed.tensor(parsed.graph.operators[pair.pointwise].outputs[0]).shape)
    if declared != expected or min(expected[1:3]) < 1:
        return f"output shape {declared} is not the contract's [B, Ho, Wo, Cout] = {expected}"
    return None


def _pair(parsed: _Graph, depthwise: int, pointwise: int) -> _Pair:
    dw, pw = parsed.graph.operators[depthwise], parsed.graph.operators[pointwise]
    dw_weights = parsed.constant(dw.inputs[1])[0]
    pw_weights = parsed.constant(pw.inputs[1])[:, 0, 0, :]
    cin, cout = dw_weights.shape[2], pw_weights.shape[0]
    options = {
        "version": FORMAT_VERSION, "kernel_size": int(dw_weights.shape[0]),
        "stride": int(dw.builtinOptions.strideH), "padding": _PADDINGS[dw.builtinOptions.padding],
        "in_channels": int(cin), "out_channels": int(cout),
        "dw_activation": _ACTIVATIONS[dw.builtinOptions.fusedActivationFunction],
        "pw_activation": _ACTIVATIONS[pw.builtinOptions.fusedActivationFunction],
        "input_layout": "nhwc", "output_layout": "nhwc",
    }
    return _Pair(depthwise, pointwise, np.ascontiguousarray(dw_weights), _bias(parsed, dw, cin),
                 np.ascontiguousarray(pw_weights), _bias(parsed, pw, cout), options)


# -- pointwise weights in the contract's format ------------------------------------------

def _encode(pair: _Pair, precision: str, block: int, dense_above: float) -> dict:
    """Choose the storage of the pointwise weights; fill the pair's options; the record's part."""
    w = pair.pw_weights
    cout = w.shape[0]
    why = ""
    if block == 4 and cout % 4:
        block, why = 1, f"out_channels {cout} is not a multiple of 4: plain CSR rows; "
    stored = _stored_fraction(w, block)
    fmt = "dense" if stored > dense_above else "csr"
    pair.options.update(precision=precision, format=fmt, block=block if fmt == "csr" else 1)
    return {"lowered": True, "precision": precision, "format": fmt, "block": pair.options["block"],
            "density": float(np.count_nonzero(w)) / w.size, "stored_density": stored,
            # What 4x1 blocks would store (None when Cout is no multiple of 4).
            "stored_density_4x1": None if cout % 4 else _stored_fraction(w, 4),
            "reason": why + (f"stored density {stored:.3f} {'>' if fmt == 'dense' else '<='} "
                             f"dense_above {dense_above}")}


def _stored_fraction(w: np.ndarray, block: int) -> float:
    """The fraction of weights CSR would store: non-zeros, or whole non-zero 4x1 blocks."""
    blocks = np.any(w.reshape(w.shape[0] // block, block, w.shape[1]) != 0, axis=1)
    return float(np.count_nonzero(blocks)) / blocks.size


def _encode_pointwise(w: np.ndarray, options: dict) -> list[tuple[str, np.ndarray]]:
    """pw_values, [pw_col_indices, pw_row_ptr,] [pw_scales] of W [Cout, Cin] per `options`."""
    scales = None
    values = w
    if options["precision"] == "int8":
        peak = np.abs(w).max(axis=1)
        # An all-zero channel keeps scale 1: the contract needs scales > 0.
        scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        values = np.clip(np.round(w / scales[:, None]), -127, 127).astype(np.int8)
    if options["format"] == "dense":
        arrays = [("pw_values", values)]
    else:
        arrays = _csr(values, w != 0, options["block"])
    return arrays + ([("pw_scales", scales)] if scales is not None else [])


def _csr(values: np.ndarray, nonzero: np.ndarray, block: int) -> list[tuple[str, np.ndarray]]:
    """CSR over block rows of `block` output channels; a block is kept if any weight is non-zero."""
    cout, cin = values.shape
    kept = np.any(nonzero.reshape(cout // block, block, cin), axis=1)  # [block rows, Cin]
    rows, cols = np.nonzero(kept)  # row-major: columns increase within each row
    row_ptr = np.zeros(cout // block + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=cout // block), out=row_ptr[1:])
    blocks = values.reshape(cout // block, block, cin)[rows, :, cols]  # [nnz_blocks, block]
    return [("pw_values", np.ascontiguousarray(blocks).reshape(-1)),
            ("pw_col_indices", cols.astype(np.uint16)), ("pw_row_ptr", row_ptr)]


# -- flatbuffer rewrite ------------------------------------------------------------------

def _rewrite(parsed: _Graph, pairs: list[_Pair], records: list[dict]) -> bytes:
    """Each pair's depthwise op becomes the custom op; its CONV_2D and dead inputs go."""
    graph = parsed.graph
    _set_layouts(parsed, pairs)
    code = add_custom_code(parsed.model, CUSTOM_CODE)
    by_op = {record["depthwise_op"]: record for record in records}
    for pair in pairs:
        dw, pw = graph.operators[pair.depthwise], graph.operators[pair.pointwise]
        by_op[pair.depthwise].update(input_layout=pair.options["input_layout"],
                                     output_layout=pair.options["output_layout"])
        prefix = by_op[pair.depthwise]["layer"] or f"separable_{pair.depthwise}"
        arrays = [("dw_weights", pair.dw_weights), ("dw_bias", pair.dw_bias)] \
            + _encode_pointwise(pair.pw_weights, pair.options) + [("pw_bias", pair.pw_bias)]
        # Absent inputs are left out, never -1 (LiteRT 2.3.0 crashes on -1 inputs).
        dw.inputs = [dw.inputs[0]] + [add_constant(parsed.model, graph, f"{prefix}/{name}", a)
                                   for name, a in arrays]
        dw.outputs = pw.outputs
        dw.opcodeIndex = code
        dw.builtinOptionsType, dw.builtinOptions = schema.BuiltinOptions.NONE, None
        dw.customOptions = list(flexbuffers.Dumps(pair.options))
        dw.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
        pw.outputs = []  # nothing reads it now: dropped with its DENSIFY and constants
    drop_dead_ops(graph)
    compact(parsed.model)
    return pack_model(parsed.model)


def _set_layouts(parsed: _Graph, pairs: list[_Pair]) -> None:
    """chw between two lowered ops when the first one's output feeds only the second."""
    by_output = {parsed.graph.operators[p.pointwise].outputs[0]: p for p in pairs}
    by_depthwise = {p.depthwise: p for p in pairs}
    outputs = set(_ints(parsed.graph.outputs))
    for tensor, pair in by_output.items():
        consumers = parsed.consumers.get(tensor, [])
        if len(consumers) != 1 or consumers[0] not in by_depthwise or tensor in outputs:
            continue
        pair.options["output_layout"] = by_depthwise[consumers[0]].options["input_layout"] = "chw"
        _transpose_shape(parsed.tensor(tensor))


def _transpose_shape(tensor: schema.TensorT) -> None:
    tensor.shape = [_ints(tensor.shape)[i] for i in _NHWC_TO_CHW]
    if len(_ints(tensor.shapeSignature)) == 4:
        tensor.shapeSignature = [_ints(tensor.shapeSignature)[i] for i in _NHWC_TO_CHW]
