"""Rewrites of a converted .tflite flatbuffer that conversion and lowering need."""
from __future__ import annotations

import flatbuffers
from ai_edge_litert import schema_py_generated as schema

from core.errors import UserError

# LiteRT hands a constant tensor to a custom op kernel only at this alignment.
ALIGNMENT = 64


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
