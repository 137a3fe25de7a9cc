"""edgepipe's native LiteRT runtime (ctypes over libedgepipe_runtime.so) against
the ai_edge_litert Interpreter, on models made by the project's converter."""
import re
import subprocess

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from core.errors import UserError
from core.keras_env import keras
from fixtures.fuzzing import MODEL_CHECKS_SOURCES, REPO, generate_model_schema, run_libfuzzer
from tflite.convert import convert_model
from tflite.flatbuffer_rewrite import align_constant_buffers, pack_model
from tflite.interpreter import TfliteRunner
from tflite.ops.sparse_gru_lowering import convert_with_sparse_gru
from tflite.runtime import binding
from tflite.runtime.binding import LiteRtRunner

MODEL_CHECKS_FUZZ_RUNS = 300000


@pytest.fixture(scope="module")
def int8_model() -> bytes:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5)(x)
    data = np.random.default_rng(0).random((32, 6, 6, 1), dtype=np.float32)
    return convert_model(keras.Model(inputs, outputs), "int8", data)


def test_float_parity_with_interpreter(tiny_tflite_bytes):
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    ours = LiteRtRunner(tiny_tflite_bytes).predict(x)
    theirs = TfliteRunner(tiny_tflite_bytes).predict(x)
    assert ours.shape == (5, 4)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_int8_parity_with_interpreter(int8_model):
    runner = LiteRtRunner(int8_model, num_threads=2)
    assert runner.input_details[0]["dtype"] == np.int8
    scale, _ = runner.input_details[0]["quantization"]
    assert scale > 0
    x = np.random.default_rng(1).random((3, 6, 6, 1), dtype=np.float32)
    np.testing.assert_array_equal(runner.predict(x), TfliteRunner(int8_model).predict(x))


def test_raw_io_and_benchmark_members(tiny_tflite_bytes):
    runner = LiteRtRunner(tiny_tflite_bytes)
    assert runner.batch_size == 1
    runner.set_example_input(seed=3)
    assert runner.invoke_timed() > 0
    assert runner.output().dtype == np.float32
    with pytest.raises(UserError, match="input must be float32"):
        runner.set_input(np.zeros((1, 16), np.int32))
    assert set(runner.times_us) == {"load_us", "check_us", "compile_us"}


def test_custom_op_without_kernel_is_refused(tiny_tflite_bytes, with_custom_op):
    # SOFTMAX: the converter leaves FULLY_CONNECTED's bias -1, refused before the kernel lookup.
    model = with_custom_op(tiny_tflite_bytes, "SOFTMAX", "EdgepipeNoSuchOp")
    for variant in (model, align_constant_buffers(model)):
        with pytest.raises(UserError,
                           match=r"custom op 'EdgepipeNoSuchOp' .* has no kernel .*SparseGRU"):
            LiteRtRunner(variant)


def test_aligned_model_runs_the_same(tiny_tflite_bytes):
    aligned = align_constant_buffers(tiny_tflite_bytes)
    x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    np.testing.assert_array_equal(LiteRtRunner(aligned).predict(x),
                                  LiteRtRunner(tiny_tflite_bytes).predict(x))


def test_garbage_is_refused(tmp_path):
    path = tmp_path / "junk.tflite"
    path.write_bytes(b"\0\0\0\0TFL3" + b"\xa5" * 200)
    with pytest.raises(UserError, match="cannot run .*junk.tflite"):
        LiteRtRunner(path)


def test_missing_library_says_how_to_build(monkeypatch, tmp_path, tiny_tflite_bytes):
    monkeypatch.setattr(binding, "_library", None)
    monkeypatch.setenv("EDGEPIPE_RUNTIME_LIB", str(tmp_path / "none.so"))
    with pytest.raises(UserError, match="not built.*scripts/setup.sh.*bazel build"):
        LiteRtRunner(tiny_tflite_bytes)


# ---- operators LiteRT's C API hides (tflite/runtime/model_checks.cc) ----

@pytest.fixture(scope="module")
def sparse_gru_model() -> bytes:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4, 3), batch_size=1)
    outputs = keras.layers.GRU(5)(inputs)
    return convert_with_sparse_gru(keras.Model(inputs, outputs))


def edit_sparse_gru_inputs(data: bytes, edit, side: str = "inputs") -> bytes:
    """`data` with edit(indices, number of tensors) as its SparseGRU op's inputs (or
    outputs)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    edited = 0
    for graph in model.subgraphs:
        for op in graph.operators:
            if model.operatorCodes[op.opcodeIndex].customCode == b"SparseGRU":
                setattr(op, side, edit(list(getattr(op, side)), len(graph.tensors)))
                edited += 1
    assert edited == 1
    return repack(model)


def rename_sparse_gru(data: bytes, custom_code: bytes) -> bytes:
    """`data` with its SparseGRU op's custom code replaced (a damaged name)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    codes = [code for code in model.operatorCodes if code.customCode == b"SparseGRU"]
    assert len(codes) == 1
    codes[0].customCode = custom_code
    return repack(model)


def repack(model: schema.ModelT) -> bytes:
    return align_constant_buffers(pack_model(model))


def test_sparse_gru_with_absent_input_is_refused_not_crashed(sparse_gru_model, tmp_path):
    LiteRtRunner(sparse_gru_model).predict(np.zeros((1, 4, 3), np.float32))
    absent = edit_sparse_gru_inputs(sparse_gru_model, lambda inputs, _: inputs[:2] + [-1] + inputs[2:])
    message = re.compile(r"subgraph 0, op \d+ \(custom op 'SparseGRU'\): input 2 is -1")
    with pytest.raises(UserError, match=message):
        LiteRtRunner(absent)
    path = tmp_path / "absent.tflite"
    path.write_bytes(absent)
    result = subprocess.run([str(REPO / ".native" / "litert_bench"), f"--graph={path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert message.search(result.stderr) and result.stdout == "", result.stderr


def test_damaged_custom_op_name_is_printed_escaped(sparse_gru_model, tmp_path):
    """A custom code that is not UTF-8 is named with \\xNN escapes by the runtime, the
    runner and the operator scan, so the messages stay readable text."""
    damaged = rename_sparse_gru(sparse_gru_model, b"SparseGR\xa7")
    also_absent = edit_sparse_gru_inputs(sparse_gru_model, lambda inputs, _: [-1] + inputs[1:])
    also_absent = rename_sparse_gru(also_absent, b"SparseGR\xa7")
    for model, message in (
            (damaged, "custom op 'SparseGR\\xa7' (subgraph 0, op 0) has no kernel"),
            (also_absent, "(custom op 'SparseGR\\xa7'): input 0 is -1")):
        with pytest.raises(UserError) as error:
            LiteRtRunner(model)
        assert message in str(error.value)
        path = tmp_path / "damaged.tflite"
        path.write_bytes(model)
        result = subprocess.run([str(REPO / ".native" / "litert_bench"), f"--graph={path}"],
                                capture_output=True, timeout=120)
        assert result.returncode == 1 and result.stdout == b"", result.stderr
        assert message in result.stderr.decode("ascii"), result.stderr


def test_sparse_gru_with_absent_output_is_refused_not_crashed(sparse_gru_model, tmp_path):
    """LiteRT's own loader refuses a -1 output, so the scan leaves outputs to it."""
    path = tmp_path / "no_output.tflite"
    path.write_bytes(edit_sparse_gru_inputs(sparse_gru_model, lambda outputs, _: [-1],
                                            side="outputs"))
    with pytest.raises(UserError, match="cannot parse"):
        LiteRtRunner(path.read_bytes())
    result = subprocess.run([str(REPO / ".native" / "litert_bench"), f"--graph={path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert "cannot parse" in result.stderr, result.stderr


def test_tensor_index_out_of_range_is_refused(sparse_gru_model):
    beyond = edit_sparse_gru_inputs(sparse_gru_model, lambda inputs, n: [n] + inputs[1:])
    with pytest.raises(UserError, match=r"input 0 is tensor (\d+), but subgraph 0 has \1 tensors"):
        LiteRtRunner(beyond)


def test_op_writing_another_ops_output_is_refused(int8_model):
    # LiteRT 2.3.0 crashes at run when two ops write one tensor.
    model = schema.ModelT.InitFromPackedBuf(bytearray(int8_model), 0)
    graph = model.subgraphs[0]
    graph.operators[-1].outputs = [graph.operators[0].outputs[0]]
    with pytest.raises(UserError, match=r"op \d+ \(\w+\): output 0 is tensor \d+ .* which op 0 "
                                        r"writes too; a tensor has one producer"):
        LiteRtRunner(repack(model))


def test_op_reading_a_tensor_nothing_writes_is_refused(int8_model):
    # LiteRT compiles such a model and fails only at the first run ("lacks data").
    model = schema.ModelT.InitFromPackedBuf(bytearray(int8_model), 0)
    graph = model.subgraphs[0]
    weights = graph.operators[0].inputs[1]  # CONV_2D's filter
    graph.tensors[weights].buffer = 0
    with pytest.raises(UserError, match=rf"op 0 \(CONV_2D\): input 1 is tensor {weights} .* neither an "
                                        r"input of the subgraph, a constant, a variable nor "
                                        r"written by an earlier op"):
        LiteRtRunner(repack(model))
    model = schema.ModelT.InitFromPackedBuf(bytearray(int8_model), 0)
    graph = model.subgraphs[0]
    graph.operators[0].inputs[0] = graph.outputs[0]  # the last op's output, read first
    with pytest.raises(UserError, match=r"op 0 \(\w+\): input 0 is tensor .* nor written by an "
                                        r"earlier op"):
        LiteRtRunner(repack(model))


def test_truncated_sparse_gru_model_is_refused(sparse_gru_model):
    for cut in range(8, len(sparse_gru_model), 97):
        with pytest.raises(UserError):
            LiteRtRunner(sparse_gru_model[:cut])


def test_fuzz_model_checks(tmp_path, sparse_gru_model, int8_model):
    """libFuzzer with AddressSanitizer and UBSan, a fixed number of seeded runs: no
    finding."""
    runtime = REPO / "tflite" / "runtime"
    seeds = [path.read_bytes() for path in sorted((runtime / "testdata").glob("*.tflite"))]
    seeds += [sparse_gru_model, int8_model]
    run_libfuzzer([runtime / "model_checks_fuzz.cc", *MODEL_CHECKS_SOURCES], seeds, tmp_path,
                  runs=MODEL_CHECKS_FUZZ_RUNS, max_len=max(map(len, seeds)),
                  include_dirs=(generate_model_schema(tmp_path),))
