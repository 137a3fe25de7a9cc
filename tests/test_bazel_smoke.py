"""End-to-end smoke test of the toolchain: tf_keras -> TFLite flatbuffer -> LiteRT.

Runs under plain pytest and as the Bazel py_test //tests:bazel_smoke_test, where it
proves the Python toolchain really is the project's .venv (TensorFlow, tf_keras and
ai-edge-litert importable) and that workspace-relative imports resolve.
"""
import sys

import numpy as np
import pytest

from core.keras_env import keras, tf


def _tiny_model():
    """Dense -> ReLU -> Dense with fixed random weights (no training needed)."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(8,), batch_size=1, name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(hidden)
    return keras.Model(inputs, outputs)


def test_uses_keras_2():
    # tf_keras is Keras 2.x; Keras 3 would break TFMOT.
    assert keras.__version__.startswith("2."), keras.__version__


def test_float_model_matches_keras_under_litert():
    from ai_edge_litert.interpreter import Interpreter

    model = _tiny_model()
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    assert flatbuffer[4:8] == b"TFL3", "not a TFLite flatbuffer"

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    assert tuple(input_detail["shape"]) == (1, 8)
    assert tuple(output_detail["shape"]) == (1, 3)

    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.standard_normal((1, 8)).astype(np.float32)
        interpreter.set_tensor(input_detail["index"], x)
        interpreter.invoke()
        got = interpreter.get_tensor(output_detail["index"])
        want = model(x, training=False).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


if __name__ == "__main__":
    # Bazel's py_test runs this file as a script; delegate to pytest so the same
    # test functions run in both worlds.
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
