"""Conversion: parity with Keras per quantization, builtin-only GRU, sparse weights, errors."""
import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras
from tflite.convert import QUANTIZATIONS, convert_model
from tflite.inspect import inspect_model
from tflite.interpreter import TfliteRunner

RNG = np.random.default_rng(0)


def conv_model() -> keras.Model:
    """MobileNet-style block; the 1024-element Dense kernel is big enough to be quantized."""
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(64, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(16, activation="softmax")(x)
    return keras.Model(inp, out, name="tiny_conv")


def gru_model(variant: str) -> keras.Model:
    if variant == "embedding":
        inp = keras.Input((6,), dtype="int32")
        x = keras.layers.Embedding(20, 4)(inp)
    else:
        inp = keras.Input((6, 3))
        x = inp
    if variant == "two_layers":
        x = keras.layers.GRU(5, return_sequences=True)(x)
    x = keras.layers.GRU(5, reset_after=variant != "reset_after_false")(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inp, out, name=f"gru_{variant}")


def sample(model: keras.Model, n: int) -> np.ndarray:
    shape = (n, *model.inputs[0].shape[1:])
    if model.inputs[0].dtype == "int32":
        return RNG.integers(0, 20, size=shape).astype(np.int32)
    return RNG.random(shape, dtype=np.float32)


def max_error(model: keras.Model, tflite_bytes: bytes, x: np.ndarray) -> float:
    expected = model(x, training=False).numpy()
    return float(np.abs(TfliteRunner(tflite_bytes).predict(x) - expected).max())


GRU_VARIANTS = ["one_layer", "two_layers", "embedding", "reset_after_false"]


@pytest.fixture(scope="module")
def conv() -> keras.Model:
    return conv_model()


@pytest.mark.parametrize("variant", GRU_VARIANTS)
def test_gru_float_matches_keras_with_builtin_ops_only(variant):
    model = gru_model(variant)
    data = convert_model(model, "none")
    info = inspect_model(data)
    assert "WHILE" in info.op_counts
    assert not info.custom_ops  # Select TF ops would appear as CUSTOM:Flex...
    assert max_error(model, data, sample(model, 4)) <= 1e-5


def test_conv_float_matches_keras(conv):
    data = convert_model(conv, "none")
    assert max_error(conv, data, sample(conv, 4)) <= 1e-5
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(inspect_model(data).op_counts)


@pytest.mark.parametrize("quantization", ["dynamic_range", "float16"])
def test_conv_weight_quantization_is_close_and_smaller(conv, quantization):
    reference = convert_model(conv, "none")
    data = convert_model(conv, quantization)
    assert len(data) < len(reference)
    assert max_error(conv, data, sample(conv, 4)) <= 0.02


def test_gru_weight_quantization_is_close():
    model = gru_model("one_layer")
    x = sample(model, 4)
    for quantization in ("dynamic_range", "float16"):
        data = convert_model(model, quantization)
        assert not inspect_model(data).custom_ops
        assert max_error(model, data, x) <= 0.02


def test_conv_int8_has_int8_io_and_stays_close(conv):
    data = convert_model(conv, "int8", sample(conv, 32))
    info = inspect_model(data)
    assert info.inputs[0].dtype == "int8" and info.outputs[0].dtype == "int8"
    assert info.inputs[0].quantization is not None
    # Softmax over 16 classes: outputs live in [0, 1]; int8 steps are 1/256.
    assert max_error(conv, data, sample(conv, 8)) <= 0.05


@pytest.mark.parametrize("variant", ["two_layers", "embedding"])
def test_gru_int8_is_fully_integer_after_unrolling(variant):
    model = gru_model(variant)
    data = convert_model(model, "int8", sample(model, 16))
    info = inspect_model(data)
    assert "WHILE" not in info.op_counts  # unrolled: the calibrator crashes on WHILE loops
    assert not info.custom_ops
    expected_input = "int32" if variant == "embedding" else "int8"
    assert info.inputs[0].dtype == expected_input
    assert info.outputs[0].dtype == "int8"
    fc_weights = [t for t in info.tensors if t.is_constant and t.dtype == "int8"]
    assert fc_weights
    assert max_error(model, data, sample(model, 8)) <= 0.05


def test_qat_model_converts_to_int8_with_and_without_representative_data():
    import tensorflow_model_optimization as tfmot

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    qat = tfmot.quantization.keras.quantize_model(keras.Model(inp, out))
    x = sample(qat, 8)
    qat(x, training=False).numpy()
    for data in (convert_model(qat, "int8"), convert_model(qat, "int8", sample(qat, 8))):
        info = inspect_model(data)
        assert info.inputs[0].dtype == "int8"
        assert max_error(qat, data, x) <= 0.05


def test_sparse_encoding_shrinks_pruned_model():
    inp = keras.Input((4, 4, 8))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(x), name="pruned")
    for layer in model.layers:  # what strip_pruning leaves: 80% exact zeros in kernels
        weights = layer.get_weights()
        if weights:
            kernel = weights[0]
            kernel[RNG.random(kernel.shape) < 0.8] = 0.0
            layer.set_weights([kernel, *weights[1:]])
    dense = convert_model(model, "none")
    sparse = convert_model(model, "none", sparse=True)
    assert inspect_model(dense).weight_sparsity == pytest.approx(0.8, abs=0.03)
    info = inspect_model(sparse)
    assert info.sparse_tensors and "DENSIFY" in info.op_counts
    assert len(sparse) < 0.6 * len(dense)
    assert max_error(model, sparse, sample(model, 3)) <= 1e-5


def test_unknown_quantization_is_a_user_error(conv):
    with pytest.raises(UserError, match="unknown quantization 'int4'"):
        convert_model(conv, "int4")
    assert QUANTIZATIONS == ("none", "dynamic_range", "int8", "float16")


def test_int8_without_representative_data_is_a_user_error(conv):
    with pytest.raises(UserError, match="representative"):
        convert_model(conv, "int8")


def test_representative_data_of_wrong_shape_is_a_user_error(conv):
    with pytest.raises(UserError, match="representative data has shape"):
        convert_model(conv, "int8", np.zeros((4, 5, 5, 3), np.float32))
