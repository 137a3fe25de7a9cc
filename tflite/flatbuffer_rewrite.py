"""Rewrites of a converted .tflite flatbuffer that conversion and lowering need."""
from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from core.errors import UserError

# LiteRT hands a constant tensor to a custom op kernel only at this alignment.
ALIGNMENT = 64
_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
TENSOR_TYPES = {np.dtype(np.float32): schema.TensorType.FLOAT32,
                np.dtype(np.int8): schema.TensorType.INT8,
                np.dtype(np.uint16): schema.TensorType.UINT16,
                np.dtype(np.int32): schema.TensorType.INT32}


def pack_model(model: schema.ModelT) -> bytes:
    """A model edited through the schema's object API, serialized as a .tflite file."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def align_constant_buffers(data: bytes) -> bytes:
    """Re-serialize a model so every constant buffer starts at a 64-byte file offset.

    LiteRT hands a constant tensor to a custom op kernel only when its bytes are
    64-byte aligned in memory; the converter does not align them. The buffers
    move behind the flatbuffer (the schema's offset/size fields, which LiteRT
    reads relative to the model's start), and the runtime loads the model at a
    64-byte aligned address, so the alignment holds in memory.
    """
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    payloads = {}
    for index, buffer in enumerate(model.buffers or []):
        if buffer.data is not None and len(buffer.data):
            payloads[index] = bytes(bytearray(buffer.data))
        elif buffer.offset > 1:  # already outside the flatbuffer
            payloads[index] = bytes(data[buffer.offset:buffer.offset + buffer.size])

    def pack(offsets: dict[int, int]) -> bytes:
        for index, payload in payloads.items():
            buffer = model.buffers[index]
            buffer.data, buffer.offset, buffer.size = None, offsets[index], len(payload)
        return pack_model(model)

    # Offsets are fixed-size fields: a first pass with non-zero placeholders
    # gives the flatbuffer's final length.
    head = pack({index: 1 for index in payloads})
    out = bytearray(head)
    offsets = {}
    for index, payload in payloads.items():
        out += b"\0" * (-len(out) % ALIGNMENT)
        offsets[index] = len(out)
        out += payload
    final = pack(offsets)
    if len(final) != len(head):
        raise UserError("re-serializing the model changed its layout; cannot align its buffers")
    out[:len(final)] = final
    return bytes(out)


def operator_name(code: schema.OperatorCodeT) -> str:
    """A custom op's custom code, else the builtin's name (e.g. "CONV_2D").

    Both code fields are read: files from older converters fill only the deprecated one.
    """
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode or ""
        return custom.decode() if isinstance(custom, bytes) else custom
    return _BUILTIN_NAMES.get(builtin, str(builtin))


def add_custom_code(model: schema.ModelT, custom_code: str) -> int:
    """Append an operator code for the custom op `custom_code`; return its index."""
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode, code.version = custom_code, 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def add_constant(model: schema.ModelT, graph: schema.SubGraphT, name: str,
                 array: np.ndarray) -> int:
    """Append `array` as a new constant tensor (with its own buffer); return its index."""
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = list(array.shape)
    tensor.type = TENSOR_TYPES[array.dtype]
    tensor.buffer = len(model.buffers) - 1
    tensor.name = name
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def drop_dead_ops(graph: schema.SubGraphT) -> None:
    """Keep only the ops the subgraph's outputs depend on."""
    needed = {int(t) for t in graph.outputs}
    kept = []
    for op in reversed(graph.operators):
        if any(int(t) in needed for t in op.outputs):
            kept.append(op)
            needed |= {int(t) for t in op.inputs if t >= 0}
    graph.operators = kept[::-1]


def extract_ops(model: schema.ModelT, op_indices: list[int]) -> bytes:
    """A model of the main subgraph's ops `op_indices` alone, with the ops that only
    decode their constants (DENSIFY, DEQUANTIZE of weights): it reads the other
    tensors they read and writes what they write that none of them reads. Edits
    `model`; used to measure one block of a model on its own."""
    graph = model.subgraphs[0]
    producer = {int(t): i for i, op in enumerate(graph.operators) for t in op.outputs}

    def is_constant(tensor: int) -> bool:
        if tensor in producer:
            return all(is_constant(int(t)) for t in graph.operators[producer[tensor]].inputs
                       if t >= 0)
        data = model.buffers[graph.tensors[tensor].buffer].data
        return data is not None and len(data) > 0

    kept, pending = set(), list(op_indices)
    while pending:
        index = pending.pop()
        if index not in kept:
            kept.add(index)
            pending += [producer[int(t)] for t in graph.operators[index].inputs
                        if t >= 0 and int(t) in producer and is_constant(int(t))]
    ops = [graph.operators[i] for i in sorted(kept)]
    written = {int(t) for op in ops for t in op.outputs}
    read = [int(t) for op in ops for t in op.inputs if t >= 0]
    graph.inputs = list(dict.fromkeys(t for t in read if t not in written and not is_constant(t)))
    graph.outputs = [t for t in dict.fromkeys(int(t) for op in ops for t in op.outputs)
                     if t not in read]
    graph.operators = ops
    model.subgraphs = [graph]
    model.signatureDefs = [_signature(graph)]
    compact(model)
    return pack_model(model)


def _signature(graph: schema.SubGraphT) -> schema.SignatureDefT:
    """serving_default over the subgraph's inputs and outputs, named by their tensors."""
    def entries(tensors) -> list[schema.TensorMapT]:
        result = []
        for t in tensors:
            entry = schema.TensorMapT()
            entry.name, entry.tensorIndex = graph.tensors[int(t)].name, int(t)
            result.append(entry)
        return result

    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs, signature.outputs = entries(graph.inputs), entries(graph.outputs)
    return signature


def compact(model: schema.ModelT) -> None:
    """Drop unused tensors of the main subgraph, unused buffers and operator codes."""
    graph = model.subgraphs[0]
    used = sorted({int(t) for op in graph.operators for t in list(op.inputs) + list(op.outputs)
                   if t >= 0} | {int(t) for t in graph.inputs} | {int(t) for t in graph.outputs})
    remap = {old: new for new, old in enumerate(used)}
    graph.tensors = [graph.tensors[i] for i in used]
    for op in graph.operators:
        op.inputs = [remap[int(t)] if t >= 0 else -1 for t in op.inputs]
        op.outputs = [remap[int(t)] for t in op.outputs]
    graph.inputs = [remap[int(t)] for t in graph.inputs]
    graph.outputs = [remap[int(t)] for t in graph.outputs]
    for signature in model.signatureDefs or []:
        for item in list(signature.inputs or []) + list(signature.outputs or []):
            item.tensorIndex = remap[item.tensorIndex]

    buffers = {0} | {t.buffer for g in model.subgraphs for t in g.tensors} \
        | {m.buffer for m in model.metadata or []}
    buffer_map = {old: new for new, old in enumerate(sorted(buffers))}
    model.buffers = [model.buffers[i] for i in sorted(buffers)]
    for g in model.subgraphs:
        for t in g.tensors:
            t.buffer = buffer_map[t.buffer]
    for m in model.metadata or []:
        m.buffer = buffer_map[m.buffer]

    codes = sorted({op.opcodeIndex for g in model.subgraphs for op in g.operators})
    code_map = {old: new for new, old in enumerate(codes)}
    model.operatorCodes = [model.operatorCodes[i] for i in codes]
    for g in model.subgraphs:
        for op in g.operators:
            op.opcodeIndex = code_map[op.opcodeIndex]
