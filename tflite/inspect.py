"""Read a .tflite flatbuffer without TensorFlow: ops, tensors, quantization, sparsity.

Uses only the generated schema accessors shipped with ai-edge-litert, so
`edgepipe inspect` stays fast and works where TensorFlow is not installed.
"""
from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

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
        """Fraction of exact zeros over dense constant weight tensors (rank >= 2)."""
        weights = [t for t in self.tensors if t.zero_fraction is not None and len(t.shape) >= 2]
        total = sum(int(np.prod(t.shape)) for t in weights)
        if not total:
            return None
        return sum(t.zero_fraction * int(np.prod(t.shape)) for t in weights) / total


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
    return ModelInfo(
        size_bytes=len(data),
        version=model.Version(),
        subgraphs=subgraphs,
        inputs=[main.tensors[i] for i in main.inputs],
        outputs=[main.tensors[i] for i in main.outputs],
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
    sparsity = info.weight_sparsity
    lines.append("  weight sparsity (exact zeros, dense weights): "
                 + ("n/a" if sparsity is None else f"{sparsity:.1%}"))

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
