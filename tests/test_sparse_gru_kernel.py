"""The SparseGRU kernel through LiteRT (edgepipe's runtime), on models written here.

Each model is one SparseGRU op written straight to a flatbuffer from the contract
(tflite/ops/SPARSE_GRU.md), independent of the lowering, and its output is compared
with the NumPy reference (tflite/ops/sparse_gru_reference.py) and with a tf_keras
GRU holding the same weights.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

from core.errors import UserError
from core.keras_env import keras
from fixtures.fuzzing import (REPO, SPARSE_GRU_SOURCES, compile_all, fuzz_arrays, require_tool,
                              run_libfuzzer)
from tflite.flatbuffer_rewrite import align_constant_buffers, pack_model
from tflite.ops.sparse_gru_reference import StoredMatrix, dequantize, sparse_gru
from tflite.runtime.binding import LiteRtRunner

FLOAT_TOLERANCE = 1e-5       # kernel vs Keras on the same (dequantized) weights
# int8 per-row symmetric rounding moves each weight by at most scale/2 =
# max|row| / 254. A pre-activation a = sum_j w_j v_j then moves by at most
# sum_j |v_j| * max|row| / 254 <= n * max|v| * max|w| / 254, with |v| <= 1 for
# the state and the inputs drawn in [-1, 1), weights in [-0.5, 0.5): for the
# widest row here (n = 24) that is 24 * 0.5 / 254 ~ 0.047 per gate input.
# σ' <= 1/4, tanh' <= 1, and h' is a convex mix of h and n, so one step moves h
# by at most ~0.047 * (1/4 + 1 + 1/4) plus the carried error, which the
# convex mix (z <= 1) does not grow. The bound is reached only by adversarial
# sign patterns; random rounding errors cancel (observed ~1e-3), so the test
# uses the per-gate worst case 0.047 over a few steps: 0.1.
INT8_TOLERANCE = 0.1
INT8_SELF_TOLERANCE = 1e-5   # kernel vs the reference on the same dequantized weights


def to_csr(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [np.flatnonzero(row) for row in dense]
    cols = np.concatenate(rows).astype(np.uint16) if rows else np.zeros(0, np.uint16)
    row_ptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
    values = np.concatenate([dense[i, r] for i, r in enumerate(rows)])
    return values, cols, row_ptr


def store(dense: np.ndarray, precision: str, fmt: str) -> StoredMatrix:
    """W or R ([3U, cols], float32) as the op stores it."""
    scales = None
    values = dense
    if precision == "int8":
        scales = np.abs(dense).max(axis=1) / 127.0
        scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
        values = np.clip(np.round(dense / scales[:, None]), -127, 127).astype(np.int8)
    if fmt == "dense":
        return StoredMatrix(values=values, scales=scales)
    csr_values, cols, row_ptr = to_csr(values)
    return StoredMatrix(values=csr_values.astype(values.dtype), col_indices=cols,
                        row_ptr=row_ptr, scales=scales)


def options_bytes(**options) -> bytes:
    return bytes(flexbuffers.Dumps(options))


def build_model(x_shape: tuple[int, int, int], w: StoredMatrix, r: StoredMatrix,
                bias: np.ndarray, options: bytes | dict, out_shape: tuple[int, ...],
                extra_inputs: int = 0, drop_input: int | None = None,
                non_constant: str = "") -> bytes:
    """One SparseGRU op over a float32 input; constants 64-byte aligned (the
    array named `non_constant` is written without data, as a model input fed at
    run time)."""
    model = schema.ModelT()
    model.version = 3
    model.description = "SparseGRU kernel test"
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = "SparseGRU"
    code.version = 1
    model.operatorCodes = [code]
    model.buffers = [schema.BufferT()]
    tensors = []

    def add(name: str, shape, tensor_type: int, data: np.ndarray | None = None) -> int:
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type = name, list(shape), tensor_type
        tensor.buffer = 0
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = list(np.ascontiguousarray(data).tobytes())
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1
        tensors.append(tensor)
        return len(tensors) - 1

    types = {np.dtype(np.float32): schema.TensorType.FLOAT32,
             np.dtype(np.int8): schema.TensorType.INT8,
             np.dtype(np.uint16): schema.TensorType.UINT16,
             np.dtype(np.int32): schema.TensorType.INT32}

    fed = []

    def const(name: str, array: np.ndarray | None) -> int:
        if array is None:
            return -1
        index = add(name, array.shape, types[array.dtype], None if name == non_constant else array)
        if name == non_constant:
            fed.append(index)
        return index

    x = add("x", x_shape, schema.TensorType.FLOAT32)
    inputs = [x]
    for prefix, m in (("w", w), ("r", r)):
        inputs += [const(f"{prefix}_values", m.values),
                   const(f"{prefix}_col_indices", m.col_indices),
                   const(f"{prefix}_row_ptr", m.row_ptr),
                   const(f"{prefix}_scales", m.scales)]
    inputs.append(const("bias", bias))
    # Absent inputs are left out: LiteRT 2.3.0 crashes (SIGSEGV) running a
    # custom op with an input of index -1.
    inputs = [i for i in inputs if i >= 0]
    inputs += [const(f"extra{i}", np.zeros(1, np.float32)) for i in range(extra_inputs)]
    if drop_input is not None:
        del inputs[drop_input]
    y = add("y", out_shape, schema.TensorType.FLOAT32)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, inputs, [y]
    op.customOptions = list(options if isinstance(options, bytes) else options_bytes(**options))
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [x, *fed], [y], [op]
    graph.name = "main"
    model.subgraphs = [graph]
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs = [schema.TensorMapT() for _ in graph.inputs]
    for entry, index in zip(signature.inputs, graph.inputs):
        entry.name, entry.tensorIndex = tensors[index].name, index
    signature.outputs = [schema.TensorMapT()]
    signature.outputs[0].name, signature.outputs[0].tensorIndex = "y", y
    model.signatureDefs = [signature]
    return align_constant_buffers(pack_model(model))


class Case:
    """Random GRU weights pruned to `sparsity`, stored per the options."""

    def __init__(self, *, units=8, features=6, steps=5, batch=2, sparsity=0.8,
                 reset_after=True, return_sequences=True, precision="float32",
                 fmt="csr", seed=0):
        rng = np.random.default_rng(seed)
        self.units, self.features, self.steps, self.batch = units, features, steps, batch
        self.reset_after, self.return_sequences = reset_after, return_sequences
        self.options = dict(version=1, units=units, input_size=features,
                            reset_after=reset_after, return_sequences=return_sequences,
                            precision=precision, format=fmt)

        def pruned(shape):
            m = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
            m[rng.random(shape) < sparsity] = 0
            return m

        self.w_dense = pruned((3 * units, features))
        self.r_dense = pruned((3 * units, units))
        self.bias = rng.uniform(-0.5, 0.5, (2, 3 * units) if reset_after else (3 * units,)
                                ).astype(np.float32)
        self.w = store(self.w_dense, precision, fmt)
        self.r = store(self.r_dense, precision, fmt)
        self.x = rng.uniform(-1, 1, (batch, steps, features)).astype(np.float32)

    @property
    def out_shape(self):
        return ((self.batch, self.steps, self.units) if self.return_sequences
                else (self.batch, self.units))

    def model(self, **kwargs) -> bytes:
        return build_model(self.x.shape, self.w, self.r, self.bias,
                           kwargs.pop("options", self.options), self.out_shape, **kwargs)

    def run(self) -> np.ndarray:
        runner = LiteRtRunner(self.model())
        runner.set_input(self.x)
        runner._invoke()
        return runner.output()

    def reference(self) -> np.ndarray:
        return sparse_gru(self.x, self.w, self.r, self.bias, units=self.units,
                          reset_after=self.reset_after,
                          return_sequences=self.return_sequences)

    def keras(self, w_dense: np.ndarray, r_dense: np.ndarray) -> np.ndarray:
        layer = keras.layers.GRU(self.units, reset_after=self.reset_after,
                                 return_sequences=self.return_sequences)
        layer.build((None, self.steps, self.features))
        layer.set_weights([w_dense.T, r_dense.T, self.bias])
        return layer(self.x).numpy()


OPTION_GRID = [(reset_after, sequences, fmt)
               for reset_after in (True, False)
               for sequences in (True, False)
               for fmt in ("csr", "dense")]


@pytest.mark.parametrize("reset_after,return_sequences,fmt", OPTION_GRID)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_float32_matches_reference_and_keras(reset_after, return_sequences, fmt, sparsity):
    case = Case(reset_after=reset_after, return_sequences=return_sequences, fmt=fmt,
                sparsity=sparsity, seed=int(sparsity * 10))
    got = case.run()
    assert got.shape == case.out_shape
    np.testing.assert_allclose(got, case.reference(), atol=FLOAT_TOLERANCE, rtol=0)
    np.testing.assert_allclose(got, case.keras(case.w_dense, case.r_dense),
                               atol=FLOAT_TOLERANCE, rtol=0)


@pytest.mark.parametrize("reset_after,return_sequences,fmt", OPTION_GRID)
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_int8_matches_dequantized_reference_and_keras(reset_after, return_sequences, fmt,
                                                      sparsity):
    case = Case(reset_after=reset_after, return_sequences=return_sequences, fmt=fmt,
                sparsity=sparsity, precision="int8", units=16, features=8, seed=3)
    got = case.run()
    assert got.shape == case.out_shape
    np.testing.assert_allclose(got, case.reference(), atol=INT8_SELF_TOLERANCE, rtol=0)
    # Keras with the dequantized weights is the same float32 math; with the
    # original weights it differs by the quantization error only.
    w = dequantize(case.w, 3 * case.units, case.features)
    r = dequantize(case.r, 3 * case.units, case.units)
    np.testing.assert_allclose(got, case.keras(w, r), atol=FLOAT_TOLERANCE, rtol=0)
    assert np.abs(got - case.keras(case.w_dense, case.r_dense)).max() <= INT8_TOLERANCE


def test_fully_pruned_rows_and_long_sequence():
    case = Case(units=32, features=24, steps=40, batch=1, sparsity=0.97, seed=5,
                precision="int8")
    case.w_dense[:10] = 0  # whole rows empty
    case.w = store(case.w_dense, "int8", "csr")
    np.testing.assert_allclose(case.run(), case.reference(), atol=INT8_SELF_TOLERANCE, rtol=0)


def test_runs_again_with_new_input():
    case = Case(seed=9, precision="int8")
    runner = LiteRtRunner(case.model())
    for seed in range(3):
        case.x = np.random.default_rng(seed).uniform(-1, 1, case.x.shape).astype(np.float32)
        runner.set_input(case.x)
        runner._invoke()
        np.testing.assert_allclose(runner.output(), case.reference(),
                                   atol=INT8_SELF_TOLERANCE, rtol=0)


@pytest.mark.parametrize("precision,fmt,sparsity", [("float32", "dense", 0.0),
                                                     ("int8", "csr", 0.2)])
def test_threads_split_large_layers_without_changing_results(precision, fmt, sparsity):
    """Two and three threads share the work of a layer above the kernel's split size
    (units 128: 3 x 128 x 128 recurrent weights) and give the one-thread output."""
    case = Case(units=128, features=64, steps=6, batch=1, precision=precision, fmt=fmt,
                sparsity=sparsity, seed=13)
    outputs = []
    for threads in (1, 2, 3):
        runner = LiteRtRunner(case.model(), num_threads=threads)
        runner.set_input(case.x)
        runner._invoke()
        outputs.append(runner.output())
    np.testing.assert_array_equal(outputs[1], outputs[0])
    np.testing.assert_array_equal(outputs[2], outputs[0])
    tolerance = FLOAT_TOLERANCE if precision == "float32" else INT8_SELF_TOLERANCE
    np.testing.assert_allclose(outputs[0], case.reference(), atol=tolerance, rtol=0)


def refused(model: bytes) -> str:
    with pytest.raises(UserError) as error:
        LiteRtRunner(model)
    return str(error.value)


def test_malformed_options_are_refused_before_running():
    case = Case(precision="int8")
    bad = dict(case.options, units=9)
    assert "input 3 (w_row_ptr) has shape [25], expected rank 1 [28]" in refused(case.model(options=bad))
    assert "'format' is missing" in refused(
        case.model(options={k: v for k, v in case.options.items() if k != "format"}))
    assert "unknown custom option 'activation'" in refused(
        case.model(options=dict(case.options, activation="relu")))
    assert "'precision' is 'float16'" in refused(
        case.model(options=dict(case.options, precision="float16")))
    assert "'reset_after' must be a bool, got int" in refused(
        case.model(options=dict(case.options, reset_after=1)))
    assert "not a valid flexbuffer map" in refused(case.model(options=b"\x01\x02\x03\x04"))
    assert "custom options are missing" in refused(case.model(options=b""))


def test_malformed_arrays_are_refused_before_running():
    case = Case(sparsity=0.5, precision="int8")
    row_ptr = case.w.row_ptr.copy()
    case.w.row_ptr[3] = case.w.row_ptr[4] + 1
    assert "w_row_ptr) decreases at row 3" in refused(case.model())
    case.w.row_ptr = row_ptr
    cols = case.w.col_indices.copy()
    case.w.col_indices[0] = case.features
    assert "w_col_indices): column 6 in row 0 is out of range" in refused(case.model())
    case.w.col_indices = cols
    case.r.scales[2] = np.inf
    assert "r_scales): scale of row 2 is not finite" in refused(case.model())
    case.r.scales[2] = 1.0
    assert "expects 10 inputs for format 'csr' and precision 'int8'" in refused(
        case.model(extra_inputs=1))
    assert "(absent inputs left out), got 9" in refused(case.model(drop_input=9))


def test_non_constant_weights_are_refused():
    case = Case(precision="int8")
    assert "input 1 (w_values) must be a constant tensor" in refused(
        case.model(non_constant="w_values"))


# ---- fuzzing (tflite/ops/fuzz/sparse_gru_fuzz.cc) ----------------------------

# A fixed, seeded slice: about 20 s on the build machines.
FUZZ_RUNS = 200_000


def fuzz_seed(case: Case) -> bytes:
    """A valid op in the fuzz target's input layout (absent inputs left out)."""
    options = options_bytes(**case.options)
    out = struct.pack("<H", len(options)) + options
    arrays = [case.x]
    for m in (case.w, case.r):
        arrays += [m.values, m.col_indices, m.row_ptr, m.scales]
    arrays.append(case.bias)
    return out + fuzz_arrays(arrays) + b"\x01"


def test_fuzz_options_and_validation(tmp_path):
    """libFuzzer with AddressSanitizer and UBSan for a bounded time: no finding."""
    ops = REPO / "tflite" / "ops"
    seeds = [Case(units=3, features=4, steps=3, batch=2, precision=precision, fmt=fmt,
                  reset_after=reset_after, return_sequences=reset_after, sparsity=0.5, seed=i)
             for i, (precision, fmt, reset_after) in enumerate(
                 (p, f, r) for p in ("float32", "int8") for f in ("csr", "dense")
                 for r in (True, False))]
    run_libfuzzer([ops / "fuzz" / "sparse_gru_fuzz.cc", *SPARSE_GRU_SOURCES],
                  [fuzz_seed(case) for case in seeds], tmp_path, runs=FUZZ_RUNS, max_len=4096)


GOOGLETEST = Path("/usr/src/googletest/googletest")  # Debian's googletest sources


def test_kernel_test_is_race_free_under_tsan(tmp_path):
    """The C++ kernel test (worker teams of 2-4 threads included) under ThreadSanitizer.

    GoogleTest is built from Debian's sources with the same -fsanitize=thread:
    the prebuilt libgtest.a is not instrumented, and TSan cannot see the
    synchronization inside code it did not instrument.
    """
    clang = require_tool("clang++")
    assert (GOOGLETEST / "src" / "gtest-all.cc").is_file(), \
        "googletest sources missing: scripts/setup.sh installs Debian's googletest"
    tsan = ["-std=c++17", "-O1", "-g", "-fsanitize=thread", "-pthread",
            f"-I{GOOGLETEST / 'include'}"]
    test_source = REPO / "tflite" / "ops" / "sparse_gru_kernel_test.cc"
    ours = [test_source, *SPARSE_GRU_SOURCES]
    gtest = [GOOGLETEST / "src" / "gtest-all.cc", GOOGLETEST / "src" / "gtest_main.cc"]
    objects = [tmp_path / f"{source.stem}.o" for source in (*ours, *gtest)]
    own_flags = ["-Wall", "-Wextra", "-Werror", f"-I{REPO}"]
    compile_all([[clang, *tsan, *([f"-I{GOOGLETEST}"] if source in gtest else own_flags), "-c",
                  str(source), "-o", str(target)]
                 for source, target in zip((*ours, *gtest), objects)], timeout=300)
    binary = tmp_path / "sparse_gru_kernel_test_tsan"
    compile_all([[clang, *tsan, *map(str, objects), "-o", str(binary)]], timeout=300)
    # A report fails the run even where TSan would only print it.
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-4000:]
    # Every TEST in the source ran and passed (a filter or a crash would not).
    declared = len(re.findall(r"^TEST(?:_F)?\(", test_source.read_text(), re.MULTILINE))
    assert declared >= 20
    assert f"[==========] {declared} tests from" in result.stdout, result.stdout[-4000:]
    assert f"[  PASSED  ] {declared} tests." in result.stdout, result.stdout[-4000:]
