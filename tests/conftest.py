"""Shared test set-up: a fixed random state and a small real .tflite model."""
import pytest

from core.keras_env import keras
from tflite.convert import convert_model


@pytest.fixture(autouse=True)
def seeded():
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def tiny_tflite_bytes() -> bytes:
    """A converted two-layer Dense classifier."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax")(hidden)
    return convert_model(keras.Model(inputs, outputs), "none")


@pytest.fixture(scope="session")
def with_custom_op():
    """Rename a model's builtin op to a custom op, as a model needing our kernels has."""

    def rename(data: bytes, builtin: str, custom: str) -> bytes:
        from ai_edge_litert import schema_py_generated as schema

        from tflite.flatbuffer_rewrite import pack_model

        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
        target = getattr(schema.BuiltinOperator, builtin)
        for code in model.operatorCodes:
            if max(code.builtinCode, code.deprecatedBuiltinCode) == target:
                code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
                code.customCode = custom
        return pack_model(model)

    return rename
