"""Keras model -> TFLite flatbuffer bytes, in one of the supported quantizations.

Conversion always goes through a fixed-batch concrete function: with a static
batch the converter unrolls nothing dynamic, so Keras GRU layers lower to a
builtin WHILE loop instead of TensorList ops that would need Select TF ops.
"""
from __future__ import annotations

import numpy as np

from absl import logging
from ai_edge_litert.interpreter import Interpreter

from core.errors import UserError
from core.keras_env import keras, tf

QUANTIZATIONS = ("none", "dynamic_range", "int8", "float16")

# Enough samples to calibrate activation ranges; more only costs time.
MAX_REPRESENTATIVE_SAMPLES = 200
# TFMOT's quantize-aware layers, by class name so TFMOT need not be imported here.
_QAT_LAYERS = {"QuantizeLayer", "QuantizeWrapper", "QuantizeWrapperV2"}


def convert_model(
    model: keras.Model,
    quantization: str,
    representative_data: np.ndarray | None = None,
    sparse: bool = False,
    batch_size: int = 1,
) -> bytes:
    """Convert `model` to a .tflite flatbuffer and return its bytes.

    `representative_data` (samples along axis 0, shaped like the model input
    without batch) is required for "int8" unless the model is quantization-aware
    trained. `sparse` asks the converter to encode sparse weights where it can.
    """
    if quantization not in QUANTIZATIONS:
        raise UserError(
            f"unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}"
        )
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if len(model.inputs) != 1:
        raise UserError(
            f"model {model.name!r} has {len(model.inputs)} inputs: only single-input models convert"
        )
    qat = is_quantization_aware(model)
    if quantization == "int8" and representative_data is None and not qat:
        raise UserError(
            "int8 quantization needs representative data to calibrate activations: "
            "pass representative_data (a few hundred training inputs)"
        )

    flatbuffer = _convert(model, quantization, representative_data, sparse, batch_size)
    if sparse:
        problem = _prepare_error(flatbuffer)
        if problem:
            logging.warning(
                "%s (%s): LiteRT cannot prepare the sparse-encoded weights (%s); the file keeps "
                "dense weights instead.", model.name, quantization, problem)
            flatbuffer = _convert(model, quantization, representative_data, False, batch_size)
    return flatbuffer


def _prepare_error(flatbuffer: bytes) -> str | None:
    """Why LiteRT (with its default XNNPACK delegate) cannot prepare the model, if it cannot.

    The converter's sparse encoding is not accepted everywhere: e.g. XNNPACK refuses
    a sparse dynamic-range FULLY_CONNECTED inside a GRU's WHILE loop.
    """
    try:
        Interpreter(model_content=flatbuffer).allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        return str(exc).splitlines()[0][:200]
    return None


def _convert(model: keras.Model, quantization: str, representative_data: np.ndarray | None,
             sparse: bool, batch_size: int) -> bytes:
    input_spec = fixed_batch_spec(model, batch_size)
    if quantization == "int8" and representative_data is not None:
        model = _unrolled(model)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(input_spec)
    # Without the trackable model the converter freezes the graph directly instead of
    # exporting a SavedModel first: the same flatbuffer, about 15x faster.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]

    optimizations: list = []
    if quantization != "none":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations

    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        _configure_int8(converter, input_spec, representative_data)

    try:
        return bytes(converter.convert())
    except Exception as exc:  # the converter raises several unrelated types
        raise UserError(
            f"converting {model.name!r} to TFLite ({quantization}) failed: "
            f"{converter_error_line(exc)}. Try quantization 'none' or 'dynamic_range' to see "
            "whether the float model converts, and check that every layer is a builtin TFLite "
            "op (no Select TF ops are enabled)"
        ) from None


def is_quantization_aware(model: keras.Model) -> bool:
    """True for a TFMOT quantize-aware model (its layers carry fake-quant wrappers)."""
    return any(type(layer).__name__ in _QAT_LAYERS for layer in model.layers)


def _unrolled(model: keras.Model) -> keras.Model:
    """A copy of `model` with its recurrent layers unrolled, for int8 calibration.

    The calibrator crashes the whole process (SIGSEGV, TF 2.14 and later) when it
    logs the tensors of a WHILE loop, which is what a rolled GRU becomes. With the
    fixed sequence length the loop unrolls into plain builtin ops that calibrate
    and quantize fully; the graph grows with the number of time steps.
    """
    top_level = {id(layer) for layer in model.layers}
    recurrent = [m for m in model.submodules if isinstance(m, keras.layers.RNN)]
    if not recurrent:
        return model
    nested = [m.name for m in recurrent if id(m) not in top_level]
    if nested:
        raise UserError(
            f"int8 calibration cannot run on model {model.name!r}: recurrent layer(s) "
            f"{', '.join(nested)} are nested inside other layers and cannot be unrolled, and the "
            "TFLite calibrator crashes on rolled recurrent loops. Put recurrent layers at the top "
            "level of the functional model, or for a quantization-aware model convert without "
            "representative_data"
        )

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.RNN):
            config["unroll"] = True
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def fixed_batch_spec(model: keras.Model, batch_size: int) -> tf.TensorSpec:
    """The input signature every conversion traces: the model's input at `batch_size`."""
    shape = model.inputs[0].shape
    if any(dim is None for dim in shape[1:]):
        raise UserError(
            f"model {model.name!r} input shape {tuple(shape)} has unknown dimensions "
            "besides the batch: build the model with a fully specified input shape"
        )
    return tf.TensorSpec([batch_size, *shape[1:]], model.inputs[0].dtype, name="input")


def _configure_int8(converter, input_spec: tf.TensorSpec, data: np.ndarray | None) -> None:
    """Full-integer quantization; integer token inputs stay int32 (they are indices)."""
    if data is not None:
        # Without calibration data (a quantization-aware model) the converter
        # refuses the int8 op set; the fake-quant ranges quantize the ops anyway.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            # Ops without an int8 kernel stay float instead of failing the conversion.
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
    if input_spec.dtype.is_floating:
        converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    if data is not None:
        samples = _representative_samples(data, input_spec)
        batch = input_spec.shape[0]
        converter.representative_dataset = lambda: (
            [samples[start:start + batch]] for start in range(0, len(samples) - batch + 1, batch)
        )


def _representative_samples(data: np.ndarray, spec: tf.TensorSpec) -> np.ndarray:
    """Checked, capped and cast calibration samples (fed one batch per call)."""
    data = np.asarray(data)
    expected = tuple(spec.shape[1:])
    if data.ndim != len(expected) + 1 or tuple(data.shape[1:]) != expected:
        raise UserError(
            f"representative data has shape {data.shape}, expected "
            f"(samples, {', '.join(map(str, expected))}): pass inputs shaped like the model input"
        )
    if len(data) < spec.shape[0]:
        raise UserError(
            f"representative data has {len(data)} samples, fewer than one batch of "
            f"{spec.shape[0]}: pass more samples or a smaller batch_size"
        )
    return data[:MAX_REPRESENTATIVE_SAMPLES].astype(spec.dtype.as_numpy_dtype)


def converter_error_line(exc: Exception) -> str:
    """The most telling line of a converter error (they are often pages long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "error:" in line.lower():
            return line[line.lower().index("error:") + len("error:"):].strip()
    return lines[0] if lines else type(exc).__name__
