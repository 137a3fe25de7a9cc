"""What edgepipe's Python runners share: the members callers may use (`ModelRunner`),
reading a model, feeding any number of float samples through a fixed-batch model
(quantizing int8 inputs, dequantizing outputs), benchmark inputs, and the
benchmark_model syntax for choosing the shapes of dynamic inputs.

The runners are `tflite.interpreter.TfliteRunner` (the ai_edge_litert
Interpreter), `tflite.runtime.binding.LiteRtRunner` (edgepipe's native runtime)
and `tflite.runtime.isolated.IsolatedRunner` (that runtime in a worker process).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from core.errors import UserError

INTEGER_IO = (np.int8, np.uint8, np.int16)


class ModelRunner(Protocol):
    """What the validation and benchmark stages need from a runtime."""

    input_details: list[dict[str, Any]]
    output_details: list[dict[str, Any]]

    @property
    def batch_size(self) -> int: ...
    def predict(self, x: np.ndarray) -> np.ndarray: ...
    def set_example_input(self, seed: int = 0) -> None: ...
    def invoke_timed(self) -> float: ...


def model_label(model: str | os.PathLike | bytes) -> str:
    """How messages name a model: its path, or <bytes> for an in-memory model."""
    return "<bytes>" if isinstance(model, (bytes, bytearray)) else str(model)


def load_model(model: str | os.PathLike | bytes) -> bytes:
    """The model's bytes, refusing anything without the TFLite file identifier."""
    if isinstance(model, (bytes, bytearray)):
        content = bytes(model)
    else:
        path = Path(model)
        if not path.is_file():
            raise UserError(f"model file not found: {path}; check the path")
        content = path.read_bytes()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise UserError(
            f"not a TFLite flatbuffer: {model_label(model)} lacks the 'TFL3' file identifier; "
            "pass a .tflite file written by the converter"
        )
    return content


def predict_batched(x: np.ndarray, inp: dict[str, Any], out: dict[str, Any], batch: int,
                    label: str, run_batch: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Feed `x` (any number of samples) through a fixed-batch model in chunks of
    `batch`, padding the last chunk, with int8 inputs quantized and outputs
    dequantized, so callers always get float outputs. `run_batch` runs one chunk
    (already in the model's input type) and returns the raw output."""
    x = np.asarray(x)
    sample_shape = tuple(int(d) for d in inp["shape"][1:])
    if tuple(x.shape[1:]) != sample_shape:
        raise UserError(
            f"input shape {x.shape} does not fit {label}, which expects "
            f"(samples, {', '.join(map(str, sample_shape))})"
        )
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        count = len(chunk)
        if count < batch:  # pad the last chunk; the padded rows are dropped below
            padding = np.zeros((batch - count, *sample_shape), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, padding])
        results.append(to_float(run_batch(to_model_input(chunk, inp)), out)[:count])
    if not results:
        return np.zeros((0, *out["shape"][1:]), dtype=np.float32)
    return np.concatenate(results)


def example_input(shape: tuple[int, ...], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    """Random values of the input's dtype for benchmarking; integer inputs get 0 or 1,
    which stay valid as token indices too."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if dtype == np.bool_:
        return np.zeros(shape, dtype)
    return rng.integers(0, 2, size=shape).astype(dtype)


def to_model_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Quantize float input for integer-input models; otherwise just cast."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.type in INTEGER_IO and scale and np.issubdtype(x.dtype, np.floating):
        info = np.iinfo(dtype)
        q = np.round(x / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def to_float(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Dequantize integer outputs so callers always get float values."""
    scale, zero_point = detail["quantization"]
    if y.dtype.type in INTEGER_IO and scale:
        return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return y.astype(np.float32, copy=False)


# ---- input shapes in benchmark_model's syntax: names "a,b", shapes "1,224,224,3:1,20" ----

def input_layer_strings(shapes: Mapping[str, Sequence[int]] | None) -> tuple[str, str]:
    """(input_layer, input_layer_shape) for the native runtime and runner; ("", "")
    for none, which leaves every dynamic dimension at 1."""
    if not shapes:
        return "", ""
    for name, shape in shapes.items():
        if not name or any(c in name for c in ",:"):
            raise UserError(f"input name {name!r} cannot be written in benchmark_model's "
                            "syntax (names are comma-separated, shapes colon-separated); "
                            "rename the model's input")
        dims = list(shape)
        if not dims or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in dims):
            raise UserError(f"the shape of input {name!r} must be integers of at least 1, got "
                            f"{dims}")
    return (",".join(shapes),
            ":".join(",".join(str(int(d)) for d in shape) for shape in shapes.values()))


def parse_input_layers(input_layer: str, input_layer_shape: str) -> dict[str, tuple[int, ...]]:
    """The input shapes that benchmark_model's two strings choose, checked before
    anything runs; {} when both are empty."""
    example = "e.g. input_layer a,b with input_layer_shape 1,224,224,3:1,20"
    if bool(input_layer) != bool(input_layer_shape):
        given, missing = (("input_layer", "input_layer_shape") if input_layer
                          else ("input_layer_shape", "input_layer"))
        raise UserError(f"{given} is set but {missing} is not: give both, one shape per "
                        f"input name ({example})")
    if not input_layer:
        return {}
    names = input_layer.split(",")
    if not all(names):
        raise UserError(f"input_layer {input_layer!r}: input names are comma-separated and "
                        f"not empty ({example})")
    if len(set(names)) != len(names):
        raise UserError(f"input_layer {input_layer!r} names an input twice; name each once")
    shapes = []
    for text in input_layer_shape.split(":"):
        try:
            dims = tuple(int(d) for d in text.split(","))
        except ValueError:
            dims = ()
        if not dims or min(dims) < 1:
            raise UserError(f"input_layer_shape {input_layer_shape!r}: each shape is "
                            "comma-separated integers of at least 1, shapes are separated by "
                            f"':' ({example})")
        shapes.append(dims)
    if len(shapes) != len(names):
        raise UserError(f"input_layer names {len(names)} input(s) ({', '.join(names)}) but "
                        f"input_layer_shape gives {len(shapes)} shape(s); give one shape per "
                        f"name ({example})")
    return dict(zip(names, shapes))
