"""A variant's .tflite: the converter's output, with edgepipe's custom ops where the
config's `gru_lowering` and `separable_lowering` put them.

SparseGRU replaces Keras GRU layers before conversion (tflite/ops/sparse_gru_lowering.py);
SparseSeparableConv replaces depthwise-separable pairs in the converted flatbuffer
(tflite/ops/sparse_separable_lowering.py). `auto` applies to pruned variants only (a
dense model is never faster with the ops) and to the quantizations the ops serve; there
the measured choice of pipelines/lowering_choice.py decides.
"""
from __future__ import annotations

import numpy as np

from core.keras_env import keras
from pipelines.config import CUSTOM_OP_QUANTIZATIONS, ModelConfig
from pipelines.lowering_choice import auto_gru, auto_separable
from tflite.convert import convert_model
from tflite.ops import sparse_gru_lowering, sparse_separable_lowering
from tflite.ops.sparse_gru_lowering import (convert_with_sparse_gru, has_gru,
                                           lowering_problem)
from tflite.ops.sparse_separable_lowering import lower_separable_blocks

CONVERTER_QUANTIZATION = {"float32": "none", "dynamic_range": "dynamic_range",
                          "int8": "int8", "float16": "float16"}
# The custom ops' weight precision per variant: dynamic_range keeps activations float.
OP_PRECISION = {"float32": "float32", "dynamic_range": "int8"}
SPARSE_PHASES = ("pruned", "pqat", "channel_pruned_sparse")


def lowering_modes(config: ModelConfig, phase: str, quantization: str) -> dict[str, str]:
    """"builtin", the op's name (lower every block it can) or "auto", per lowering."""
    modes = {"gru": config.gru_lowering, "separable": config.separable_lowering}
    for key, mode in modes.items():
        if mode == "auto" and (phase not in SPARSE_PHASES
                               or quantization not in CUSTOM_OP_QUANTIZATIONS):
            modes[key] = "builtin"
    return modes


def lowering_versions(modes: dict[str, str]) -> dict[str, int]:
    """The custom ops' format versions a variant's file depends on."""
    versions = {"gru": sparse_gru_lowering.FORMAT_VERSION,
                "separable": sparse_separable_lowering.FORMAT_VERSION}
    return {key: versions[key] for key, mode in modes.items() if mode != "builtin"}


def convert_variant(model: keras.Model, phase: str, quantization: str, modes: dict[str, str],
                    representative_data: np.ndarray, threads: list[int]) -> tuple[bytes, dict]:
    """The variant's flatbuffer and, per lowering applied, what it did: SparseGRU's
    choice, and one record per depthwise op for SparseSeparableConv."""
    def builtin() -> bytes:
        return convert_model(model, CONVERTER_QUANTIZATION[quantization],
                             representative_data=representative_data,
                             sparse=phase in SPARSE_PHASES)

    def with_sparse_gru() -> bytes:
        return convert_with_sparse_gru(model, precision=OP_PRECISION[quantization],
                                       quantization_of_rest=CONVERTER_QUANTIZATION[quantization])

    lowering = {}
    if modes["gru"] == "sparse_gru":
        flatbuffer = with_sparse_gru()
        lowering["gru"] = {"mode": "sparse_gru", "lowered": True}
    elif modes["gru"] == "auto" and has_gru(model):
        problem = lowering_problem(model)
        if problem:
            flatbuffer = builtin()
            lowering["gru"] = {"mode": "auto", "lowered": False, "reason": problem}
        else:
            flatbuffer, lowering["gru"] = auto_gru(builtin(), with_sparse_gru, threads)
    else:
        flatbuffer = builtin()
    if modes["separable"] == "sparse_separable":
        flatbuffer, blocks = lower_separable_blocks(flatbuffer, OP_PRECISION[quantization])
        lowering["separable"] = {"mode": "sparse_separable", "blocks": blocks}
    elif modes["separable"] == "auto":
        lowered, decision = auto_separable(flatbuffer, OP_PRECISION[quantization], threads)
        if decision["blocks"]:
            flatbuffer, lowering["separable"] = lowered, decision
    return flatbuffer, lowering
