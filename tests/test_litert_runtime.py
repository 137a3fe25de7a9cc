"""edgepipe's native LiteRT runtime (ctypes over libedgepipe_runtime.so) against
the ai_edge_litert Interpreter, on models made by the project's converter."""
import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras
from tflite import litert_runtime
from tflite.convert import convert_model
from tflite.litert_runtime import LiteRtRunner, align_constant_buffers
from tflite.runtime import TfliteRunner


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
    model = with_custom_op(tiny_tflite_bytes, "FULLY_CONNECTED", "EdgepipeNoSuchOp")
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
    monkeypatch.setattr(litert_runtime, "_library", None)
    monkeypatch.setenv("EDGEPIPE_RUNTIME_LIB", str(tmp_path / "none.so"))
    with pytest.raises(UserError, match="not built.*scripts/setup.sh.*bazel build"):
        LiteRtRunner(tiny_tflite_bytes)
