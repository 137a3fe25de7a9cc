"""Shared test set-up: every test starts from the same random state."""
import pytest

from core.keras_env import keras


@pytest.fixture(autouse=True)
def seeded():
    keras.utils.set_random_seed(0)
