"""Read a .tflite flatbuffer without TensorFlow: ops, tensors, quantization, sparsity.

Uses only the generated schema accessors shipped with ai-edge-litert, so
`edgepipe inspect` stays fast and works where TensorFlow is not installed.

Weight sparsity counts what each op's contract says its prunable weights are:
for builtin ops, the dense constant float/quantized tensors of rank >= 2; for
the SparseGRU custom op (tflite/ops/SPARSE_GRU.md), its W [3U, F] and R [3U, U]
only (never the bias, scales or index arrays), sized from the op's custom
options. A figure is reported only when the file is consistent; otherwise the
sparsity is "unknown (inconsistent: ...)", never a number outside [0, 100]%.
"""
from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

from core.errors import UserError

_FILE_IDENTIFIER = b"TFL3"
_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_DTYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_DIM_FORMATS = {v: k for k, v in vars(schema.DimensionType).items() if not k.startswith("_")}
# Element types whose buffers the zero count understands (name -> numpy dtype).
_NUMERIC = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8}
# What the generated accessors raise on offsets that run past the end of the data.
_PARSE_ERRORS = (IndexError, struct.error, ValueError, TypeError, AttributeError,
                 UnicodeDecodeError, OverflowError)


@dataclass(frozen=True)
class QuantizationInfo:
    scales: list[float]
    zero_points: list[int]
    quantized_dimension: int


@dataclass(frozen=True)
class SparsityInfo:
    traversal_order: list[int]
    block_map: list[int]
    dim_formats: list[str]  # "DENSE" or "SPARSE_CSR", one per traversal dimension


@dataclass(frozen=True)
class TensorInfo:
    subgraph: int
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer_bytes: int
    is_constant: bool
    quantization: QuantizationInfo | None
    sparsity: SparsityInfo | None
    # Fraction of exact zeros (quantized: values equal to the zero point) in a
    # dense constant float/int8 tensor; None where it does not apply.
    zero_fraction: float | None


@dataclass(frozen=True)
class WeightCount:
    """Prunable weights of a model: how many there are, how many are exact zeros.

    `problems` lists why the counts cannot be trusted (inconsistent shapes,
    options or index arrays); when it is not empty no sparsity figure is given.
    """

    total: int = 0
    zeros: int = 0
    problems: tuple[str, ...] = ()

    def __add__(self, other: "WeightCount") -> "WeightCount":
        return WeightCount(self.total + other.total, self.zeros + other.zeros,
                           self.problems + other.problems)


@dataclass(frozen=True)
class SubgraphInfo:
    index: int
    name: str
    ops: list[str]
    tensors: list[TensorInfo]
    inputs: list[int]
    outputs: list[int]


@dataclass(frozen=True)
class ModelInfo:
    size_bytes: int
    version: int
    subgraphs: list[SubgraphInfo]
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    weight_count: WeightCount = field(default_factory=WeightCount)

    @property
    def subgraph_count(self) -> int:
        return len(self.subgraphs)

    @property
    def ops(self) -> list[list[str]]:
        """Operator names per subgraph, in execution order."""
        return [sg.ops for sg in self.subgraphs]

    @property
    def op_counts(self) -> dict[str, int]:
        """Operator name -> number of uses over all subgraphs."""
        return dict(Counter(op for sg in self.subgraphs for op in sg.ops))

    @property
    def tensors(self) -> list[TensorInfo]:
        return [t for sg in self.subgraphs for t in sg.tensors]

    @property
    def sparse_tensors(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.sparsity is not None]

    @property
    def custom_ops(self) -> list[str]:
        """Custom op names, sorted, each once."""
        return sorted({op[len("CUSTOM:"):] for op in self.op_counts if op.startswith("CUSTOM:")})

    @property
    def weight_sparsity(self) -> float | None:
        """Fraction of exact zeros over the prunable weights, in [0, 1].

        None when there are no countable weights or the file is inconsistent
        (see `weight_sparsity_problems`).
        """
        count = self.weight_count
        if count.problems or count.total <= 0 or not 0 <= count.zeros <= count.total:
            return None
        return count.zeros / count.total

    @property
    def weight_sparsity_problems(self) -> list[str]:
        """Why no sparsity figure can be given (empty when the counts are consistent)."""
        count = self.weight_count
        problems = list(count.problems)
        if not problems and not 0 <= count.zeros <= max(count.total, 0):
            problems.append(f"{count.zeros} zeros counted among {count.total} weights")
        return problems

    @property
    def weight_sparsity_text(self) -> str:
        """The figure as `edgepipe inspect` prints it: a percentage, n/a or unknown (...)."""
        problems = self.weight_sparsity_problems
        if problems:
            more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
            return f"unknown (inconsistent: {problems[0]}{more})"
        sparsity = self.weight_sparsity
        return "n/a" if sparsity is None else f"{sparsity:.1%}"


def inspect_model(source: str | os.PathLike | bytes) -> ModelInfo:
    """Parse a .tflite file (path or its bytes) into a ModelInfo."""
    data = _read(source)
    label = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise UserError(
            f"not a TFLite flatbuffer: {label} lacks the 'TFL3' file identifier; "
            "pass a .tflite file written by the converter"
        )
    try:
        return _parse(data)
    except _PARSE_ERRORS as exc:
        raise UserError(
            f"not a TFLite flatbuffer: {label} is damaged or truncated ({type(exc).__name__}: {exc}); "
            "convert the model again"
        ) from None


def _read(source: str | os.PathLike | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"model file not found: {path}; check the path")
    return path.read_bytes()


def _parse(data: bytes) -> ModelInfo:
    model = schema.Model.GetRootAs(data, 0)
    op_names = [_op_name(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
    buffers = [_buffer_bytes(model.Buffers(i), data) for i in range(model.BuffersLength())]
    subgraphs = [_subgraph(model.Subgraphs(i), i, op_names, buffers)
                 for i in range(model.SubgraphsLength())]
    if not subgraphs:
        raise ValueError("model has no subgraphs")
    main = subgraphs[0]
    weight_count = WeightCount()
    for i, sg in enumerate(subgraphs):
        weight_count += _weight_count(model.Subgraphs(i), sg, op_names, buffers)
    return ModelInfo(
        size_bytes=len(data),
        version=model.Version(),
        subgraphs=subgraphs,
        inputs=[main.tensors[i] for i in main.inputs],
        outputs=[main.tensors[i] for i in main.outputs],
        weight_count=weight_count,
    )


def _op_name(code: schema.OperatorCode) -> str:
    # Codes above 127 only fit the newer field; older files only fill the deprecated one.
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.CustomCode()
        return f"CUSTOM:{custom.decode('utf-8') if custom else '?'}"
    return _BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")


def _buffer_bytes(buffer: schema.Buffer, data: bytes) -> bytes:
    """A buffer's payload, inline or (for large models) at an offset past the flatbuffer."""
    if buffer.Offset() > 1:
        start, size = buffer.Offset(), buffer.Size()
        if start + size > len(data):
            raise ValueError(f"buffer at offset {start} runs past the end of the file")
        return data[start:start + size]
    if buffer.DataIsNone():
        return b""
    return buffer.DataAsNumpy().tobytes()


def _subgraph(sg: schema.SubGraph, index: int, op_names: list[str],
              buffers: list[bytes]) -> SubgraphInfo:
    ops = [op_names[sg.Operators(i).OpcodeIndex()] for i in range(sg.OperatorsLength())]
    tensors = [_tensor(sg.Tensors(i), index, i, buffers) for i in range(sg.TensorsLength())]
    name = sg.Name()
    return SubgraphInfo(
        index=index,
        name=name.decode("utf-8") if name else "",
        ops=ops,
        tensors=tensors,
        inputs=[int(i) for i in sg.InputsAsNumpy()] if not sg.InputsIsNone() else [],
        outputs=[int(i) for i in sg.OutputsAsNumpy()] if not sg.OutputsIsNone() else [],
    )


def _tensor(t: schema.Tensor, subgraph: int, index: int, buffers: list[bytes]) -> TensorInfo:
    payload = buffers[t.Buffer()] if t.Buffer() < len(buffers) else b""
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if not t.ShapeIsNone() else ()
    dtype = _DTYPE_NAMES.get(t.Type(), f"type_{t.Type()}")
    quant = _quantization(t.Quantization())
    sparsity = _sparsity(t.Sparsity())
    name = t.Name()
    return TensorInfo(
        subgraph=subgraph,
        index=index,
        name=name.decode("utf-8") if name else "",
        shape=shape,
        dtype=dtype,
        buffer_bytes=len(payload),
        is_constant=bool(payload),
        quantization=quant,
        sparsity=sparsity,
        zero_fraction=_zero_fraction(payload, dtype, quant) if sparsity is None else None,
    )


def _quantization(q: schema.QuantizationParameters | None) -> QuantizationInfo | None:
    if q is None or q.ScaleIsNone() or q.ScaleLength() == 0:
        return None
    zero_points = [int(z) for z in q.ZeroPointAsNumpy()] if not q.ZeroPointIsNone() else []
    return QuantizationInfo(
        scales=[float(s) for s in q.ScaleAsNumpy()],
        zero_points=zero_points,
        quantized_dimension=q.QuantizedDimension(),
    )


def _sparsity(s: schema.SparsityParameters | None) -> SparsityInfo | None:
    if s is None:
        return None
    return SparsityInfo(
        traversal_order=[int(v) for v in s.TraversalOrderAsNumpy()] if not s.TraversalOrderIsNone() else [],
        block_map=[int(v) for v in s.BlockMapAsNumpy()] if not s.BlockMapIsNone() else [],
        dim_formats=[_DIM_FORMATS.get(s.DimMetadata(i).Format(), "?") for i in range(s.DimMetadataLength())],
    )


def _zero_fraction(payload: bytes, dtype: str, quant: QuantizationInfo | None) -> float | None:
    """Exact zeros in a dense constant; integer tensors count only when quantized."""
    np_dtype = _NUMERIC.get(dtype)
    if not payload or np_dtype is None or len(payload) % np.dtype(np_dtype).itemsize:
        return None
    values = np.frombuffer(payload, dtype=np_dtype)
    if np.issubdtype(np_dtype, np.floating):
        return float(np.mean(values == 0))
    if quant is None or not quant.zero_points:
        return None
    if len(set(quant.zero_points)) != 1:
        return None  # per-channel zero points differ: the axis layout would be needed
    return float(np.mean(values == quant.zero_points[0]))


# -- prunable weights ------------------------------------------------------------------

_SPARSE_GRU = "CUSTOM:SparseGRU"
_SPARSE_GRU_DTYPES = {"float32": np.float32, "int8": np.int8}


def _weight_count(sg: schema.SubGraph, info: SubgraphInfo, op_names: list[str],
                  buffers: list[bytes]) -> WeightCount:
    """Prunable weights of one subgraph: SparseGRU's W and R, then the builtin weights."""
    count = WeightCount()
    claimed: set[int] = set()  # tensors a SparseGRU op reads as weights, indices, scales, bias
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if op_names[op.OpcodeIndex()] != _SPARSE_GRU:
            continue
        inputs = [int(t) for t in op.InputsAsNumpy()] if not op.InputsIsNone() else []
        claimed |= set(inputs[1:])
        options = bytes(op.CustomOptionsAsNumpy()) if not op.CustomOptionsIsNone() else b""
        count += _sparse_gru_count(f"SparseGRU op {i} of subgraph {info.index}", options,
                                   inputs, sg, buffers)
    for t in info.tensors:
        if t.index in claimed or t.zero_fraction is None or len(t.shape) < 2:
            continue
        count += _builtin_count(t)
    return count


def _builtin_count(t: TensorInfo) -> WeightCount:
    """A dense constant weight tensor: its zeros, if its shape matches its buffer."""
    where = f"tensor {t.subgraph}:{t.index} {t.name!r}"
    itemsize = np.dtype(_NUMERIC[t.dtype]).itemsize
    stored = t.buffer_bytes // itemsize
    if any(d < 0 for d in t.shape):
        return WeightCount(problems=(f"{where} has a negative dimension in shape {list(t.shape)}",))
    elements = int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1
    if elements != stored:
        return WeightCount(problems=(
            f"{where} has shape {list(t.shape)} ({elements} elements) but {stored} stored values",))
    return WeightCount(stored, int(round(t.zero_fraction * stored)))


def _sparse_gru_count(where: str, options_bytes: bytes, inputs: list[int], sg: schema.SubGraph,
                      buffers: list[bytes]) -> WeightCount:
    """W [3U, F] and R [3U, U] of one SparseGRU op, checked against its options."""
    def bad(problem: str) -> WeightCount:
        return WeightCount(problems=(f"{where}: {problem}",))

    try:
        options = flexbuffers.Loads(options_bytes) if options_bytes else None
    except Exception:  # flexbuffers raises assorted types on damaged bytes
        options = None
    if not isinstance(options, dict):
        return bad("custom options are not a readable flexbuffer map")
    units, input_size = options.get("units"), options.get("input_size")
    precision, fmt = options.get("precision"), options.get("format")
    for key, value in (("units", units), ("input_size", input_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return bad(f"option {key}={value!r} is not an integer >= 1")
    if precision not in _SPARSE_GRU_DTYPES:
        return bad(f"option precision={precision!r} is not float32 or int8")
    if fmt not in ("csr", "dense"):
        return bad(f"option format={fmt!r} is not csr or dense")
    per_matrix = (3 if fmt == "csr" else 1) + (1 if precision == "int8" else 0)
    expected = 2 + 2 * per_matrix  # x, W's and R's inputs, bias
    if len(inputs) != expected:
        return bad(f"{len(inputs)} inputs, but {fmt} {precision} has {expected}")

    def array(position: int, name: str, dtype) -> np.ndarray | str:
        index = inputs[position]
        if not 0 <= index < sg.TensorsLength():
            return f"{name} is tensor {index}, which does not exist"
        tensor = sg.Tensors(index)
        if _DTYPE_NAMES.get(tensor.Type()) != np.dtype(dtype).name:
            return f"{name} is {_DTYPE_NAMES.get(tensor.Type(), tensor.Type())}, not {np.dtype(dtype).name}"
        payload = buffers[tensor.Buffer()] if tensor.Buffer() < len(buffers) else b""
        if not payload:
            return f"{name} is not a constant"
        if len(payload) % np.dtype(dtype).itemsize:
            return f"{name} holds {len(payload)} bytes, not a whole number of {np.dtype(dtype).name}"
        values = np.frombuffer(payload, dtype=dtype)
        shape = [int(d) for d in tensor.ShapeAsNumpy()] if not tensor.ShapeIsNone() else []
        if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != values.size:
            return f"{name} has shape {shape} but {values.size} stored values"
        return values

    count = WeightCount()
    rows = 3 * units
    for m, (name, cols) in enumerate((("W", input_size), ("R", units))):
        base = 1 + m * per_matrix
        values = array(base, f"{name} values", _SPARSE_GRU_DTYPES[precision])
        if isinstance(values, str):
            return bad(values)
        dense_size = rows * cols
        if fmt == "dense":
            if values.size != dense_size:
                return bad(f"dense {name} holds {values.size} values, but [{rows}, {cols}] "
                           f"(units={units}, input_size={input_size}) has {dense_size}")
        else:
            problem = _csr_problem(name, values.size, rows, cols,
                                   array(base + 1, f"{name} column indices", np.uint16),
                                   array(base + 2, f"{name} row pointers", np.int32))
            if problem:
                return bad(problem)
        # Stored zeros (e.g. int8 values that round to 0) are zeros of the matrix too.
        count += WeightCount(dense_size, dense_size - int(np.count_nonzero(values)))
    return count


def _csr_problem(name: str, nnz: int, rows: int, cols: int, col_indices: np.ndarray | str,
                 row_ptr: np.ndarray | str) -> str | None:
    """Why a CSR matrix's arrays do not describe a [rows, cols] matrix with nnz values."""
    if nnz > rows * cols:
        return f"{name} stores {nnz} values, more than its [{rows}, {cols}] shape holds"
    for arr in (col_indices, row_ptr):
        if isinstance(arr, str):
            return arr
    if col_indices.size != nnz:
        return f"{name} has {col_indices.size} column indices for {nnz} values"
    if row_ptr.size != rows + 1:
        return f"{name} has {row_ptr.size} row pointers, not rows + 1 = {rows + 1}"
    lengths = np.diff(row_ptr.astype(np.int64))
    if row_ptr[0] != 0 or int(row_ptr[-1]) != nnz or np.any(lengths < 0) or np.any(lengths > cols):
        return f"{name} row pointers do not run monotonically from 0 to {nnz}"
    if nnz and int(col_indices.max()) >= cols:
        return f"{name} has a column index {int(col_indices.max())} >= {cols}"
    starts = np.zeros(nnz, bool)
    starts[row_ptr[:-1][lengths > 0]] = True
    steps = np.diff(col_indices.astype(np.int64))
    if np.any((steps <= 0) & ~starts[1:]):
        return f"{name} column indices are not strictly increasing within a row"
    return None


def format_model_info(info: ModelInfo) -> str:
    """A human-readable report for `edgepipe inspect`."""
    lines = [f"TFLite model: {info.size_bytes} bytes, schema version {info.version}, "
             f"{info.subgraph_count} subgraph(s)"]
    lines.append("")
    lines.append("Inputs:")
    lines += [f"  {_describe(t)}" for t in info.inputs]
    lines.append("Outputs:")
    lines += [f"  {_describe(t)}" for t in info.outputs]

    lines.append("")
    lines.append("Operators:")
    for sg in info.subgraphs:
        label = f" ({sg.name})" if sg.name else ""
        lines.append(f"  subgraph {sg.index}{label}: {len(sg.ops)} ops, {len(sg.tensors)} tensors")
    counts = sorted(info.op_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    width = max((len(name) for name, _ in counts), default=0)
    lines += [f"  {name:<{width}}  {count:>5}" for name, count in counts]

    lines.append("")
    lines.append("Quantization:")
    constants = [t for t in info.tensors if t.is_constant]
    by_dtype = Counter(t.dtype for t in constants)
    bytes_by_dtype = Counter()
    for t in constants:
        bytes_by_dtype[t.dtype] += t.buffer_bytes
    for dtype, n in sorted(by_dtype.items()):
        lines.append(f"  constants {dtype:<8} {n:>4} tensors  {bytes_by_dtype[dtype]:>10} bytes")
    quantized = [t for t in info.tensors if t.quantization is not None]
    per_channel = [t for t in quantized if len(t.quantization.scales) > 1]
    lines.append(f"  quantized tensors: {len(quantized)} ({len(per_channel)} per-channel)")
    lines.append("  weight sparsity (exact zeros of prunable weights): " + info.weight_sparsity_text)

    lines.append("")
    sparse = info.sparse_tensors
    lines.append(f"Sparse tensors: {len(sparse) or 'none'}")
    for t in sparse:
        s = t.sparsity
        lines.append(f"  [{t.subgraph}:{t.index}] {t.name} {list(t.shape)} {t.dtype} "
                     f"{t.buffer_bytes} bytes, order {s.traversal_order}, "
                     f"block map {s.block_map}, formats {s.dim_formats}")
    lines.append("Custom ops: " + (", ".join(info.custom_ops) or "none"))
    return "\n".join(lines) + "\n"


def _describe(t: TensorInfo) -> str:
    text = f"{t.name}: {t.dtype} {list(t.shape)}"
    if t.quantization is not None:
        q = t.quantization
        if len(q.scales) == 1:
            text += f" scale={q.scales[0]:.6g} zero_point={q.zero_points[0] if q.zero_points else 0}"
        else:
            text += f" per-channel ({len(q.scales)} scales, axis {q.quantized_dimension})"
    return text
