"""Validation of a converted variant against the Keras model it came from."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from core.errors import UserError
from tflite.inspect import inspect_model
from tflite.interpreter import TfliteRunner
from tflite.runtime.binding import LiteRtRunner


class ValidationFailed(UserError):
    """A float32 variant whose outputs drifted from Keras: the conversion changed the math."""


def compare(tflite_outputs: np.ndarray, keras_outputs: np.ndarray, labels: np.ndarray) -> dict:
    """Max abs error and top-1 agreement against Keras, and accuracy on the labels."""
    tflite_top1 = np.argmax(tflite_outputs, axis=-1)
    keras_top1 = np.argmax(keras_outputs, axis=-1)
    return {
        "max_abs_error": float(np.max(np.abs(tflite_outputs.astype(np.float64) - keras_outputs))),
        "top1_agreement": float(np.mean(tflite_top1 == keras_top1)),
        "accuracy": float(np.mean(tflite_top1 == labels)),
        "keras_accuracy": float(np.mean(keras_top1 == labels)),
    }


def validate_variant(tflite_path: Path, keras_outputs: np.ndarray, x_test: np.ndarray,
                     y_test: np.ndarray) -> dict:
    """Run the .tflite over the held-out set with edgepipe's runtime (the one that
    registers our custom ops) and compare it with the Keras outputs.

    A model without custom ops also runs on the ai_edge_litert Interpreter as a
    cross-check of the runtime itself: `interpreter_max_abs_diff`. Both run in this
    process: every model validated here was converted by the pipeline (no .tflite
    from elsewhere enters a run), so tflite.runtime.isolated's worker is not needed.
    """
    outputs = LiteRtRunner(tflite_path).predict(x_test)
    if outputs.shape != keras_outputs.shape:
        raise ValidationFailed(f"{tflite_path.name}: TFLite output shape {outputs.shape} differs "
                               f"from the Keras output shape {keras_outputs.shape}.")
    result = compare(outputs, keras_outputs, y_test)
    if not inspect_model(tflite_path).custom_ops:
        reference = TfliteRunner(tflite_path).predict(x_test)
        result["interpreter_max_abs_diff"] = float(np.max(np.abs(outputs - reference)))
    check_finite(tflite_path.name, result, outputs, keras_outputs)
    return result


def check_finite(name: str, result: dict, outputs: np.ndarray | None = None,
                 keras_outputs: np.ndarray | None = None) -> None:
    """NaN or inf in a measurement is a failed validation, never a result: `nan > tol` is False,
    so without this a NaN error would pass every tolerance check."""
    for label, array in (("the TFLite model's", outputs), ("the Keras model's", keras_outputs)):
        if array is not None and not np.all(np.isfinite(array)):
            raise ValidationFailed(
                f"{name}: {label} outputs on the test set are not finite (NaN or inf), so "
                "the model cannot be validated; check the data and the learning rates for "
                "NaN, inf or divergence.")
    for key, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationFailed(
                f"{name}: {key} is {value}, not a finite number, so the model cannot be "
                "validated; check the data and the learning rates for NaN, inf or divergence.")


def check_float32(model: str, variant: str, result: dict, tolerance: float) -> None:
    """A float32 variant must match Keras within `tolerance`; anything else is a failed stage."""
    check_finite(f"model {model!r}, variant {variant!r}", result)
    if not result["max_abs_error"] <= tolerance:
        raise ValidationFailed(
            f"model {model!r}, variant {variant!r}: the float32 TFLite model differs from Keras by "
            f"{result['max_abs_error']:.3g} (allowed: {tolerance:g}), so the conversion changed "
            "the computation. Inspect it with `edgepipe inspect`; if the gap is expected, raise "
            "validation.float32_tolerance.")
