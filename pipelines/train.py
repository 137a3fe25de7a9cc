"""Keras training shared by every phase: compile, fit with TensorBoard and progress,
and evaluate. The phases (float, pruning, QAT) only differ in model and callbacks."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.keras_env import keras, tf
from pipelines.data import Dataset


def set_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)


def steps_per_epoch(data: Dataset, batch_size: int) -> int:
    return math.ceil(len(data.x_train) / batch_size)


def compile_model(model: keras.Model, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
                  ) -> None:
    """Adam on sparse labels; models end in softmax, so the loss takes probabilities."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])


def fit(model: keras.Model, data: Dataset, *, epochs: int, batch_size: int,
        learning_rate: float, log_dir: Path, callbacks: list = ()) -> dict[str, list[float]]:
    """Train and return the history. Logs go to TensorBoard under `log_dir`.

    The learning rate follows a cosine decay to zero over the phase: short runs on
    small data settle much better than with a constant rate.
    """
    total_steps = epochs * steps_per_epoch(data, batch_size)
    compile_model(model, keras.optimizers.schedules.CosineDecay(learning_rate, total_steps))
    validation = (data.x_val, data.y_val) if len(data.x_val) else None
    history = model.fit(
        data.x_train, data.y_train, batch_size=batch_size, epochs=epochs,
        validation_data=validation, shuffle=True,
        callbacks=[*callbacks, keras.callbacks.TerminateOnNaN(),
                   keras.callbacks.TensorBoard(str(log_dir), write_graph=False)],
        verbose=1 if sys.stdout.isatty() else 2)
    history = {k: [float(v) for v in values] for k, values in history.history.items()}
    for name in ("loss", "val_loss", "accuracy", "val_accuracy"):
        bad = [v for v in history.get(name, []) if not math.isfinite(v)]
        if bad:
            raise UserError(
                f"training ({log_dir.name} phase): {name} became {bad[0]} during training, so the "
                f"model diverged; lower that phase's learning_rate (now {learning_rate:g}) or "
                "check the data for extreme values.")
    return history


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    probabilities = predict(model, x, batch_size)
    if not np.all(np.isfinite(probabilities)):
        raise UserError(f"model {model.name!r} outputs NaN or inf on the test set, so its accuracy "
                        "is meaningless; check the data and the learning rates for NaN, inf or "
                        "divergence.")
    return float(np.mean(np.argmax(probabilities, axis=-1) == y))


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Inference-mode outputs, batch by batch (no Keras progress output)."""
    outputs = [model(tf.constant(x[i:i + batch_size]), training=False).numpy()
               for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs)
