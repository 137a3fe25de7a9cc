"""Writes the small .tflite models and reference numbers the C++ runtime tests use.

Run from the repository root with the project's .venv:
    .venv/bin/python android_bench/testdata/make_testdata.py
The outputs are committed (a few KB), so `bazel test` needs no TensorFlow.

- linear_float.tflite: y = x W^T + b, x of shape (1, 4), y of shape (1, 3),
  fixed weights; one FULLY_CONNECTED op with constant weights and bias.
- linear_int8.tflite: the same, full-int8 (int8 input and output).
- linear_custom.tflite: linear_float with its FULLY_CONNECTED op turned into
  the custom op "EdgepipeTestLinear" (the tests register a kernel for it).
- linear_custom_aligned.tflite: linear_custom with its constant buffers at
  64-byte file offsets (the converter's output is not aligned, and LiteRT only
  hands aligned constants to a custom op kernel).
- linear_custom_absent.tflite: linear_custom_aligned with a -1 (absent
  optional) input appended to its custom op, which LiteRT crashes on at run;
  the runtime must refuse it before compiling.
- expected.txt: lines "name v0 v1 ..." with the input and the Keras outputs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.keras_env import keras  # noqa: E402
from tflite.convert import convert_model  # noqa: E402
from tflite.litert_runtime import align_constant_buffers  # noqa: E402

HERE = Path(__file__).resolve().parent
CUSTOM_NAME = "EdgepipeTestLinear"


def as_custom(data: bytes, builtin: str, custom: str) -> bytes:
    """Turn every `builtin` op of a model into the custom op `custom`."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    target = getattr(schema.BuiltinOperator, builtin)
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == target:
            code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
            code.customCode = custom
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def with_absent_input(data: bytes) -> bytes:
    """Append a -1 input to every op of a model (buffers keep their offsets)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for graph in model.subgraphs:
        for op in graph.operators:
            op.inputs = list(op.inputs) + [-1]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def main() -> None:
    inputs = keras.Input((4,), batch_size=1)
    outputs = keras.layers.Dense(3)(inputs)
    model = keras.Model(inputs, outputs)
    weights = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0 - 0.5
    bias = np.array([0.25, -0.5, 1.0], dtype=np.float32)
    model.layers[-1].set_weights([weights, bias])

    x = np.array([[1.0, -2.0, 0.5, 3.0]], dtype=np.float32)
    y = model(x).numpy()
    calibration = np.random.default_rng(0).uniform(-3, 3, (64, 4)).astype(np.float32)

    float_model = convert_model(model, "none")
    (HERE / "linear_float.tflite").write_bytes(float_model)
    (HERE / "linear_int8.tflite").write_bytes(convert_model(model, "int8", calibration))
    custom = as_custom(float_model, "FULLY_CONNECTED", CUSTOM_NAME)
    (HERE / "linear_custom.tflite").write_bytes(custom)
    aligned = align_constant_buffers(custom)
    (HERE / "linear_custom_aligned.tflite").write_bytes(aligned)
    (HERE / "linear_custom_absent.tflite").write_bytes(
        align_constant_buffers(with_absent_input(aligned)))
    lines = [
        "input " + " ".join(f"{v:.9g}" for v in x.ravel()),
        "output " + " ".join(f"{v:.9g}" for v in y.ravel()),
    ]
    (HERE / "expected.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
