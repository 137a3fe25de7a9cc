"""Writes the small .tflite models and reference numbers the C++ runtime tests use.

Run from the repository root with the project's .venv:
    .venv/bin/python tflite/runtime/testdata/make_testdata.py
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
- linear_dynamic.tflite: the linear layer converted with
  tf.lite.TFLiteConverter.from_keras_model and nothing else, so its batch
  dimension is dynamic (-1); the runtime resizes it.
- gru_a.tflite, gru_b.tflite: a GRU layer lowered to one SparseGRU op
  (convert_with_sparse_gru, float32, csr: most weights are zero): a is
  x (1, 3, 4) -> 5 units, return_sequences, reset_after; b is x (1, 4, 3) ->
  6 units, last state only, reset_after false.
- gru_bad_output.tflite: gru_a with its SparseGRU output declared [1, 3, 6]
  (the options give [1, 3, 5]), edited in place so the buffers stay aligned.
- expected.txt: lines "name v0 v1 ..." with the inputs and the Keras outputs:
  input / output (the linear models), dynamic_x / dynamic_y (3 rows), and
  gru_a_x0, gru_a_y0, gru_a_x1, gru_a_y1 and the same for gru_b.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from core.keras_env import keras, tf  # noqa: E402
from tflite.convert import convert_model  # noqa: E402
from tflite.flatbuffer_rewrite import align_constant_buffers, pack_model  # noqa: E402
from tflite.ops.sparse_gru_lowering import convert_with_sparse_gru  # noqa: E402

HERE = Path(__file__).resolve().parent
CUSTOM_NAME = "EdgepipeTestLinear"


def as_custom(data: bytes, builtin: str, custom: str) -> bytes:
    """Turn every `builtin` op of a model into the custom op `custom`."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    target = getattr(schema.BuiltinOperator, builtin)
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == target:
            code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
            code.customCode = custom
    return pack_model(model)


def with_absent_input(data: bytes) -> bytes:
    """Append a -1 input to every op of a model (buffers keep their offsets)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for graph in model.subgraphs:
        for op in graph.operators:
            op.inputs = list(op.inputs) + [-1]
    return pack_model(model)


def with_custom_output_dim(data: bytes, custom: str, dim: int, size: int) -> bytes:
    """Declare dimension `dim` of the first `custom` op's output 0 as `size`.

    The shape vectors are overwritten where they are, so every other byte (and
    the 64-byte alignment of the constants) stays as it was.
    """
    from ai_edge_litert import schema_py_generated as schema

    out = bytearray(data)
    model = schema.Model.GetRootAs(out, 0)
    graph = model.Subgraphs(0)
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        code = model.OperatorCodes(op.OpcodeIndex())
        if code.CustomCode() != custom.encode():
            continue
        tensor = graph.Tensors(op.Outputs(0))
        for field in (4, 18):  # Tensor.shape, Tensor.shape_signature
            offset = tensor._tab.Offset(field)
            if offset == 0:
                continue
            vector = tensor._tab.Vector(offset)
            assert dim < tensor._tab.VectorLen(offset)
            struct.pack_into("<i", out, vector + 4 * dim, size)
        return bytes(out)
    raise ValueError(f"no {custom} op in the model")


def sparse_gru_model(name: str, steps: int, features: int, units: int, return_sequences: bool,
                     reset_after: bool, seed: int):
    """A one-GRU Keras model whose weights are 80% zeros (the lowering picks csr)."""
    inputs = keras.Input((steps, features), batch_size=1, name="x")
    outputs = keras.layers.GRU(units, return_sequences=return_sequences,
                               reset_after=reset_after, name=name)(inputs)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    weights = []
    for i, weight in enumerate(model.layers[-1].get_weights()):  # kernel, recurrent, bias
        values = rng.uniform(-0.8, 0.8, weight.shape).astype(np.float32)
        if i < 2:
            values[rng.uniform(size=weight.shape) < 0.8] = 0
        weights.append(values)
    model.layers[-1].set_weights(weights)
    return model


def line(name: str, values: np.ndarray) -> str:
    return name + " " + " ".join(f"{v:.9g}" for v in np.asarray(values).ravel())


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
    lines = [line("input", x), line("output", y)]

    # The same layer without a fixed batch: its input "x" is [-1, 4].
    dynamic_in = keras.Input((4,), name="x")
    dynamic = keras.Model(dynamic_in, keras.layers.Dense(3, name="y")(dynamic_in))
    dynamic.layers[-1].set_weights([weights, bias])
    (HERE / "linear_dynamic.tflite").write_bytes(
        tf.lite.TFLiteConverter.from_keras_model(dynamic).convert())
    dynamic_x = np.random.default_rng(1).uniform(-2, 2, (3, 4)).astype(np.float32)
    lines += [line("dynamic_x", dynamic_x), line("dynamic_y", dynamic(dynamic_x).numpy())]

    for name, (steps, features, units, sequences, reset_after) in {
            "gru_a": (3, 4, 5, True, True), "gru_b": (4, 3, 6, False, False)}.items():
        gru = sparse_gru_model(name, steps, features, units, sequences, reset_after,
                               seed=len(lines))
        data = convert_with_sparse_gru(gru, "float32")
        (HERE / f"{name}.tflite").write_bytes(data)
        if name == "gru_a":
            (HERE / "gru_bad_output.tflite").write_bytes(
                with_custom_output_dim(data, "SparseGRU", 2, units + 1))
        rng = np.random.default_rng(len(lines))
        for i in range(2):
            gx = rng.uniform(-1, 1, (1, steps, features)).astype(np.float32)
            lines += [line(f"{name}_x{i}", gx), line(f"{name}_y{i}", gru(gx).numpy())]
    (HERE / "expected.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
