"""The ai_edge_litert Interpreter runner (tflite/interpreter.py): batching and padding,
int8 I/O, timing helpers, user errors."""
import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras
from tflite.convert import convert_model
from tflite.interpreter import TfliteRunner

RNG = np.random.default_rng(2)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


@pytest.fixture(scope="module")
def batch3(model) -> bytes:
    return convert_model(model, "none", batch_size=3)


def test_batches_of_any_size_match_keras(model, batch3):
    runner = TfliteRunner(batch3)
    assert runner.batch_size == 3
    for n in (1, 3, 7):  # under, exactly, and over the model batch with a padded tail
        x = RNG.random((n, 6, 6, 2), dtype=np.float32)
        y = runner.predict(x)
        assert y.shape == (n, 3) and y.dtype == np.float32
        np.testing.assert_allclose(y, model(x, training=False).numpy(), atol=1e-5)
    assert runner.predict(np.zeros((0, 6, 6, 2), np.float32)).shape == (0, 3)


def test_int8_io_is_quantized_and_dequantized(model):
    data = convert_model(model, "int8", RNG.random((16, 6, 6, 2), dtype=np.float32), batch_size=2)
    runner = TfliteRunner(data)
    assert runner.input_details[0]["dtype"] == np.int8
    assert runner.output_details[0]["dtype"] == np.int8
    x = RNG.random((5, 6, 6, 2), dtype=np.float32)
    y = runner.predict(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=0.05)  # probabilities, not raw int8
    assert np.abs(y - model(x, training=False).numpy()).max() <= 0.05


def test_token_input_model_runs():
    inp = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(10, 3)(inp)
    x = keras.layers.GRU(2)(x)
    gru = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    runner = TfliteRunner(convert_model(gru, "none"))
    tokens = RNG.integers(0, 10, size=(3, 4)).astype(np.int32)
    np.testing.assert_allclose(runner.predict(tokens), gru(tokens, training=False).numpy(), atol=1e-5)
    runner.set_example_input()
    assert runner.invoke_timed() > 0


def test_wrong_input_shape_is_a_user_error(batch3):
    with pytest.raises(UserError, match="expects"):
        TfliteRunner(batch3).predict(np.zeros((2, 5, 5, 2), np.float32))


def test_timing_helpers(batch3, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(batch3)
    runner = TfliteRunner(path, num_threads=1)
    runner.set_example_input()
    assert runner.invoke_timed() > 0


def test_missing_file_and_garbage_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        TfliteRunner(tmp_path / "absent.tflite")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a TFLite flatbuffer"):
        TfliteRunner(garbage)


def test_unregistered_custom_op_is_a_user_error(batch3, with_custom_op):
    data = with_custom_op(batch3, "SOFTMAX", "EdgeSparseGru")
    with pytest.raises(UserError, match="EdgeSparseGru.*custom op"):
        TfliteRunner(data).predict(np.zeros((1, 6, 6, 2), np.float32))
