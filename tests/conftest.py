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
